"""The local run records a report is built from (never W&B): finding the finished runs under sweep directories
and reading each one's metrics, config and pruning record."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from prunekit.data import get_path
from prunekit.errors import RunError
from prunekit.evaluation import benchmarks
from prunekit.runs import store
from prunekit.runs.layout import (
    CONFIG_YAML,
    METRICS_FILE,
    MODEL_DIR,
    PRUNING_FILE,
    TRAINING_FILE,
    WANDB_DIR,
    strategy_label,
)
from prunekit.runs.store import pruning_record_of

log = logging.getLogger(__name__)

# Task metric (fraction) per registered benchmark, e.g. gsm8k/em; its trap rate is ``<benchmark>/trap_rate``.
PRIMARY_METRICS = tuple(benchmarks.primary_metrics())
# Folders under a sweep that hold no run records of their own (checkpoints, W&B files, the report itself).
SKIP_PARTS = {WANDB_DIR, MODEL_DIR, "checkpoints", ".hydra", "report"}


@dataclass
class Run:
    """One run directory's records, with what the report groups by."""
    path: Path
    metrics: dict
    config: dict
    pruning: dict | None
    kind: str                       # prune | evaluate | train
    model: str                      # source model (hub id / path / pip name)
    task: str
    strategy: str                   # selective | reverse | random-s<seed> | original | ...
    ratio: float
    d_ff: int | None = None
    extra: dict = field(default_factory=dict)


def _read_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from exc


def _read_config(run_dir: Path) -> dict:
    for path in (run_dir / CONFIG_YAML, run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            with open(path) as f:
                data = yaml.safe_load(f)
            return data if isinstance(data, dict) else {}
    return {}


def _complete(run_dir: Path) -> bool:
    """A finished job: a completion marker (written after every result file) says so; a dir whose job was redone
    and failed keeps no metrics.json of the earlier attempt, and an unfinished one has no marker. Its checkpoint
    may since have been deleted to free disk: the results are still complete."""
    return bool(store.completed_jobs(run_dir, checkpoint=False))


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every directory under ``sweep_dir`` holding a complete job's ``metrics.json`` (not inside model/, wandb/)."""
    found = []
    for path in sorted(Path(sweep_dir).rglob(METRICS_FILE)):
        rel = path.relative_to(sweep_dir).parts[:-1]
        if any(p in SKIP_PARTS or p.startswith(".") for p in rel):
            continue
        if not _complete(path.parent):
            damaged = store.marked_complete_but_damaged(path.parent)
            if damaged:  # a finished job's record was damaged since (truncated, deleted): the user must know
                log.warning("report: %s left out: its job completed, but %s is missing or unreadable",
                            path.parent, ", ".join(damaged))
            else:
                log.info("report: %s skipped (its job did not complete)", path.parent)
            continue
        found.append(path.parent)
    return found


def _pruning_record(run_dir: Path, config: dict) -> dict | None:
    """``pruning.json`` of the run, or of the pruned model it evaluated/trained (``<prune run>/model``)."""
    if (run_dir / PRUNING_FILE).is_file():
        return _read_json(run_dir / PRUNING_FILE)
    return pruning_record_of(get_path(config, "model.name_or_path"))


def _task_of(config: dict, metrics: dict) -> str:
    name = get_path(config, "task.name")
    if name:
        return str(name)
    for metric in PRIMARY_METRICS:
        if metric in metrics:
            return metric.split("/")[0]
    return "unknown-task"


def load_run(run_dir: Path) -> Run:
    metrics = _read_json(run_dir / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise RunError(f"{run_dir / METRICS_FILE} is not a JSON object of metrics")
    config = _read_config(run_dir)
    pruning = _pruning_record(run_dir, config)
    trained = (run_dir / TRAINING_FILE).is_file() or any(k.startswith("train/") for k in metrics)
    kind = "train" if trained else ("prune" if (run_dir / PRUNING_FILE).is_file() else "evaluate")
    if pruning is not None:
        model = str(pruning.get("source_model"))
        strategy = strategy_label(str(pruning.get("strategy")), pruning.get("seed"))
        ratio, d_ff = float(pruning.get("ratio", metrics.get("prune/ratio", math.nan))), pruning.get("d_ff")
        extra = {"real_ratio": pruning.get("real_ratio", metrics.get("prune/real_ratio")),
                 "kept_width": pruning.get("kept_width"), "selectivity": pruning.get("selectivity_summary")}
    else:  # an evaluation of the unpruned model: the baseline (ratio 0)
        model = str(get_path(config, "model.name_or_path", "unknown-model"))
        strategy, ratio, d_ff, extra = "original", 0.0, metrics.get("model/d_ff"), {}
    return Run(run_dir, metrics, config, pruning, kind, model, _task_of(config, metrics), strategy, round(ratio, 4),
               d_ff, extra)


def load_runs(sweep_dirs: list[str | os.PathLike]) -> list[Run]:
    """All runs under the given sweep directories; a directory with none is an error."""
    runs = []
    for sweep in map(Path, sweep_dirs):
        if not sweep.is_dir():
            raise RunError(f"sweep directory {sweep} does not exist")
        dirs = find_run_dirs(sweep)
        if not dirs:
            raise RunError(f"no runs in {sweep}: expected run directories with a metrics.json "
                              "(written by prune.py / evaluate.py / train.py)")
        for d in dirs:
            try:
                runs.append(load_run(d))
            except RunError as exc:  # one damaged record must not cost the whole report
                log.warning("report: %s left out: %s", d, exc)
    return runs


def sections(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by (source model, task): numbers of different models/tasks are never mixed."""
    out: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        out.setdefault((run.model, run.task), []).append(run)
    return out
