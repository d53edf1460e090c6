"""What a job prints or picks from run records: the before -> after table `prune.py` ends with, and the best run
of a detrimental grid (`evaluate.py best_of=<sweep>`)."""

from __future__ import annotations

import logging

from prunekit.errors import RunError
from prunekit.evaluation import benchmarks
from prunekit.report.records import load_runs
from prunekit.report.tables import detrimental_grid

log = logging.getLogger(__name__)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"


def before_after(metrics: dict) -> str:
    """The short before -> after table of one run's metrics: its ``original/`` metrics (the unpruned model)
    against the pruned model's."""
    task = next((m for m in benchmarks.primary_metrics() if m in metrics or f"original/{m}" in metrics),
                "gsm8k/em")
    metric = task.split("/")[0]
    rows = [(task, task), ("target NLL (own answers)", f"{metric}/nll"), ("trap rate", f"{metric}/trap_rate"),
            ("distractor similarity", "distractor/sss"), ("parameters", "resources/params"),
            ("tokens/s (batch 1)", "resources/tokens_per_s")]
    before = {"distractor/sss": 1.0, **{k[len("original/"):]: v for k, v in metrics.items() if k.startswith("original/")}}
    lines = [f"{'':26} {'before':>12} {'after':>12}"]
    lines += [f"{label:26} {_cell(before.get(key)):>12} {_cell(metrics.get(key)):>12}" for label, key in rows
              if key in metrics or key in before]
    return "\n".join(lines)


def best_of_grid(sweep_dir) -> dict:
    """The best (layer, percent) run of a ``strategy=detrimental`` grid sweep, by its runs' own metrics (method 2's
    adaptation split); ties go to the smaller percent, then the lower layer. Its row, with ``metric`` naming the
    metric it was chosen by."""
    _, best, metric = detrimental_grid(load_runs([sweep_dir]))
    if best is None:
        raise RunError(f"best_of={sweep_dir}: no strategy=detrimental runs with a task or lm-eval metric")
    log.info("best_of: layer %s, percent %s (%s = %s on the grid's adaptation split): %s", best["layer"],
             best["percent"], metric, best[metric], best["run"])
    return {**best, "metric": metric}
