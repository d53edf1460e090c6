"""The paper's tables and figures rebuilt from local run records (never from W&B).

Usage: ``python -m prunekit.report <sweep dirs...> [--out DIR] [--paper] [--wandb]``. Each run directory holds
``metrics.json`` (+ ``pruning.json``, ``config.yaml``, ``training.json``); runs of different model/task are
reported in separate sections. Accuracy-like metrics are stored as fractions and shown in percent.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

import pandas as pd

from prunekit.checkpoint import atomic_write_text
from prunekit.errors import PrunekitError
from prunekit.report.figures import figures
from prunekit.report.records import Run, load_runs, sections
from prunekit.report.tables import (
    NA,
    PAPER_RATIOS,
    PAPER_SIZES,
    PAPER_TABLE2,
    PAPER_TABLE3,
    PAPER_TABLE4,
    PAPER_TABLE5,
    _cell_table,
    _fmt_df,
    _markdown,
    detrimental_grid,
    fmt,
    paper_column,
    paper_value,
    section_tables,
)
from prunekit.runs import wandb as mirror

log = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def render_section(key: tuple[str, str], runs: list[Run], out: Path, paper: bool, prefix: str) -> tuple[str, dict, dict]:
    """Markdown for one (model, task) section, its figure files and its tables (numbers)."""
    t = section_tables(runs)
    metric, col = t["metric"], paper_column(t["d_ff"], t["metric"])
    figs = figures(t, out, prefix)
    kinds = ", ".join(f"{k}: {sum(r.kind == k for r in runs)}" for k in ("prune", "evaluate", "train"))
    md = [f"## {key[0]} / task {key[1]}", "", f"{len(runs)} runs ({kinds}); task metric: {metric or NA}; "
          f"d_ff: {t['d_ff'] or NA}" + (f"; paper column: {col}" if paper else ""), ""]
    if paper and col is None:
        md += [f"(the paper has no numbers for this model/benchmark: d_ff {t['d_ff']}, {metric})", ""]

    t2 = t["table2"].copy()
    if paper and not t2.empty:
        ref = dict(zip(PAPER_RATIOS, PAPER_TABLE2.get(t["d_ff"], ())))
        t2["paper real %"] = [ref.get(r) for r in t2.index]
    md += ["### Table 2: requested vs real pruning ratio", "", _markdown(_fmt_df(t2)), ""]

    p3 = {r: paper_value(PAPER_TABLE3, col, r, True) for r in set(t["accuracy"].index) | {0.0}} if paper else None
    md += [f"### Table 3: {metric or 'task metric'} % (trap %) per ratio and strategy", "",
           _markdown(_cell_table(t["accuracy"], t["trap"], p3)) if metric else NA, ""]
    if not t["finetuned"].empty:
        p4 = {r: paper_value(PAPER_TABLE4, col, r, False) for r in t["finetuned"].index} if paper else None
        md += ["### Table 4: after LoRA fine-tuning, % (trap %)", "",
               _markdown(_cell_table(t["finetuned"], t["finetuned_trap"], p4)), ""]
    else:
        md += ["### Table 4: after LoRA fine-tuning", "", f"{NA}: no fine-tuning runs (train/*, training.json)", ""]

    t5 = t["table5"].copy()
    if paper and not t5.empty and PAPER_SIZES.get(t["d_ff"]):
        vram, tps = PAPER_TABLE5[PAPER_SIZES[t["d_ff"]]]
        ratios = (0.0,) + PAPER_RATIOS
        t5["paper VRAM GB"] = [dict(zip(ratios, vram)).get(r) for r in t5.index]
        t5["paper tokens/s"] = [dict(zip(ratios, tps)).get(r) for r in t5.index]
    md += ["### Table 5: resources per ratio (batch size 1)", "", _markdown(_fmt_df(t5)), ""]

    sections_md = [
        ("Relative accuracy loss % (eq. 3, Fig. 1)", t["relative_loss"], "fig1",
         f"{NA}: needs an evaluation of the original model (ratio 0) in the sweep"),
        ("Relative gain after fine-tuning % (eq. 4, Fig. 2)", t["relative_gain"], "fig2",
         f"{NA}: needs fine-tuned runs and the same ratio/strategy before fine-tuning"),
        ("ΔA selective − random, points (eq. 5, Fig. 3)", t["delta"], "fig3",
         f"{NA}: needs selective and random runs with the task metric"),
        ("Selective vs reverse (Fig. 4)", pd.DataFrame(), "fig4", f"{NA}: needs selective or reverse runs"),
        ("Distractor similarity per strategy (Fig. 5)", t["sss"], "fig5", f"{NA}: no distractor/sss metric"),
        ("Layer-wise neuron distribution (Fig. 6)", t["layers"], "fig6",
         f"{NA}: no selectivity_summary in pruning.json"),
    ]
    for title, df, fig, missing in sections_md:
        md += [f"### {title}", ""]
        if not df.empty:
            md += [_markdown(_fmt_df(df, 3 if fig == "fig5" else 2)), ""]
        md += [f"![{fig}]({figs[fig].name})" if fig in figs else missing, ""]
    grid, best, grid_by = detrimental_grid(runs)
    t["detrimental_grid"], t["detrimental_best"] = grid, best
    if best is not None:
        md += ["### Detrimental-neuron grid (method 2): " + f"{grid_by} per layer x percent (adaptation split)", "",
               _markdown(_fmt_df(grid, 4)), "",
               f"Best setting: layer {best['layer']}, percent {best['percent']} ({grid_by} = {fmt(best[grid_by], 4)}). "
               "Evaluate it on the test split:", "",
               f"    python evaluate.py model.name_or_path={best['run']}/model task={key[1]}", ""]
    return "\n".join(md), figs, t


def build_report(sweep_dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                 paper: bool = False) -> dict:
    """Write ``report.md`` and the PNG figures; returns {"markdown": path, "figures": {...}, "tables": {...}}."""
    runs = load_runs(sweep_dirs)
    out = Path(out_dir) if out_dir else Path(sweep_dirs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    groups = sections(runs)
    md = ["# prunekit report", "", "Built from local run records in: " + ", ".join(map(str, sweep_dirs)), ""]
    if len(groups) > 1:
        md += [f"**Note:** these runs come from {len(groups)} different model/task combinations; they are "
               "reported in separate sections below and never compared with each other.", ""]
    figs, tables = {}, {}
    for i, (key, group_runs) in enumerate(sorted(groups.items())):
        prefix = f"s{i + 1}-{_slug(key[0].split('/')[-1])}-{_slug(key[1])}_" if len(groups) > 1 else ""
        md.append("")
        md[-1], figs[key], tables[key] = render_section(key, group_runs, out, paper, prefix)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    log.info("report: %d runs in %d section(s) -> %s", len(runs), len(groups), path)
    return {"markdown": path, "figures": figs, "tables": tables, "runs": runs}


def log_to_wandb(result: dict, sweep_dirs: list, mode: str, project: str = "prunekit") -> None:
    """Log the report's figures and markdown to W&B (in the sweep's group); never fails the report."""
    import wandb

    out = result["markdown"].parent
    with mirror.start({"report": {"sweeps": [str(s) for s in sweep_dirs]}}, job_type="report", run_dir=out,
                      mode=mode, project=project, group=mirror.group({}, sweep_dirs[0]),
                      name=f"report/{Path(sweep_dirs[0]).name}") as t:
        for key, figs in result["figures"].items():
            for name, path in figs.items():
                t.log_chart(f"report/{_slug(key[0])}/{_slug(key[1])}/{name}", wandb.Image(str(path)))
        t.log_chart("report/markdown", wandb.Html(f"<pre>{result['markdown'].read_text()}</pre>"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prunekit.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", help="sweep (multirun) or run directories")
    parser.add_argument("--out", help="output directory (default: <first sweep dir>/report)")
    parser.add_argument("--paper", action="store_true", help="print the paper's numbers beside ours")
    parser.add_argument("--wandb", action="store_true", help="also log the figures to W&B")
    parser.add_argument("--wandb-mode", default=os.environ.get("WANDB_MODE", "online"),
                        help="online | offline | disabled (default: $WANDB_MODE or online)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.wandb:
            mirror.check_mode(args.wandb_mode)
        result = build_report(args.sweep_dirs, args.out, paper=args.paper)
    except PrunekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.wandb:
        log_to_wandb(result, args.sweep_dirs, args.wandb_mode)
    print(result["markdown"])
    return 0
