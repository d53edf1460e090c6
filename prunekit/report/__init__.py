"""The paper's tables and figures rebuilt from local run records: ``records`` finds and reads the runs, ``tables``
computes the numbers (beside the paper's, from ``paper.yaml``), ``figures`` draws them, ``build`` writes
``report.md`` and is the command line (``python -m prunekit.report``); ``summary`` holds what a job itself prints
or picks (the before -> after table, the best run of a detrimental grid)."""

from prunekit.report.build import build_report, log_to_wandb, main, render_section
from prunekit.report.records import (
    PRIMARY_METRICS,
    Run,
    RunError,
    find_run_dirs,
    load_run,
    load_runs,
    sections,
)
from prunekit.report.summary import before_after, best_of_grid
from prunekit.report.tables import (
    PAPER_RATIOS,
    PAPER_SIZES,
    PAPER_TABLE2,
    PAPER_TABLE3,
    PAPER_TABLE4,
    PAPER_TABLE5,
    detrimental_grid,
    grid_metric,
    number,
    paper_column,
    paper_value,
    primary_metric,
    section_tables,
)

__all__ = ["PAPER_RATIOS", "PAPER_SIZES", "PAPER_TABLE2", "PAPER_TABLE3", "PAPER_TABLE4", "PAPER_TABLE5",
           "PRIMARY_METRICS", "RunError", "Run", "before_after", "best_of_grid", "build_report", "detrimental_grid",
           "find_run_dirs", "grid_metric",
           "load_run", "load_runs", "log_to_wandb", "main", "number", "paper_column", "paper_value", "primary_metric",
           "render_section", "section_tables", "sections"]
