"""The W&B mirror of a run: start (with the offline fallback), names, tags, groups, and tables that never fail a
job. The local record (``runs.store``) is the source of truth; nothing here writes it."""

from __future__ import annotations

import hashlib
import logging
import math
import netrc
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse

from prunekit.data import get_path
from prunekit.runs.layout import strategy_label
from prunekit.runs.store import RunError, check_job_type, flatten

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")

_offline_fallback_logged = False


# --------------------------------------------------------------------------------------------- options
def check_mode(mode: str) -> str:
    """Validate ``wandb.mode`` before any work is done."""
    if mode not in MODES:
        raise RunError(f"wandb.mode={mode!r} is not supported; allowed values: {', '.join(MODES)}")
    return mode


def has_api_key() -> bool:
    """True when W&B can authenticate without a prompt: ``WANDB_API_KEY`` or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:  # stdlib netrc honours $NETRC and ~/.netrc, as wandb does
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def effective_mode(mode: str) -> str:
    """``online`` without an API key becomes ``offline`` (said once per process); other modes unchanged."""
    global _offline_fallback_logged
    check_mode(mode)
    if mode == "online" and not has_api_key():
        if not _offline_fallback_logged:
            log.warning("wandb.mode=online but no W&B API key (WANDB_API_KEY or netrc): logging offline; "
                        "upload later with `wandb sync <run_dir>/wandb/offline-run-*`")
            _offline_fallback_logged = True
        return "offline"
    return mode


# ------------------------------------------------------------------------------------ names, tags, group
def model_name(cfg: Mapping) -> str:
    """Short model name: the preset's ``model.name``, else the last part of ``model.name_or_path``."""
    name = get_path(cfg, "model.name") or str(get_path(cfg, "model.name_or_path", "model")).rstrip("/").split("/")[-1]
    name = name.split(":")[-1]  # pip:<name>, tiny:<arch>
    return str(name).lower()


def task_name(cfg: Mapping) -> str:
    return str(get_path(cfg, "task.name") or "task")


def _pruned_as(cfg: Mapping, record: Mapping | None, job_type: str) -> tuple[str, str, float | None]:
    """(strategy name, label, ratio) of what the run's model IS: for prune, the config; for evaluate and train,
    the checkpoint's pruning.json (`record`), and "unpruned" when it has none (the config's strategy/ratio
    defaults say nothing about a checkpoint)."""
    if job_type == "prune":
        name, seed, ratio = get_path(cfg, "strategy.name") or "none", get_path(cfg, "strategy.seed"), get_path(cfg, "ratio")
        seed = seed if seed is not None else get_path(cfg, "seed")
    elif record:
        name, seed, ratio = record.get("strategy") or "none", record.get("seed"), record.get("ratio")
    else:
        return "unpruned", "unpruned", None
    name = str(name)
    return name, strategy_label(name, seed), ratio


def run_name(cfg: Mapping, record: Mapping | None = None, job_type: str = "prune") -> str:
    """Human-readable run name, e.g. ``smollm2-135m/selective/r0.10``, ``smollm2-135m/unpruned/evaluate``."""
    _, label, ratio = _pruned_as(cfg, record, job_type)
    model = model_name({"model": {"name_or_path": record["source_model"]}}) if record and record.get(
        "source_model") and job_type != "prune" else model_name(cfg)
    parts = [model, label] + ([f"r{float(ratio):.2f}"] if ratio else [])
    return "/".join(parts + ([job_type] if job_type != "prune" else []))


def tags(cfg: Mapping, record: Mapping | None = None, job_type: str = "prune") -> list[str]:
    """W&B tags for filtering: model, task, strategy, ratio, job."""
    name, _, ratio = _pruned_as(cfg, record, job_type)
    return [f"model:{model_name(cfg)}", f"task:{task_name(cfg)}", f"strategy:{name}",
            f"ratio:{float(ratio):.2f}" if ratio else "ratio:none", f"job:{job_type}"]


def group(cfg: Mapping, sweep_dir: str | os.PathLike | None, run_dir: str | os.PathLike | None = None) -> str:
    """W&B group: one per multirun sweep directory (same for every job and launcher); a single run gets its own.

    Derived only from the (absolute) directory, so joblib/submitit jobs of one ``-m`` call agree on it.
    """
    base = sweep_dir if sweep_dir is not None else run_dir
    if base is None:
        return f"single/{run_name(cfg)}"
    path = Path(base).expanduser().resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:6]
    kind = "sweep" if sweep_dir is not None else "single"
    return f"{kind}/{path.parent.name}/{path.name}-{digest}"


# --------------------------------------------------------------------------------------------- Tracker
def _clean(metrics: Mapping) -> dict:
    """Drop values W&B cannot chart (None); keep numbers, bools and strings."""
    return {k: v for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


class Tracker:
    """One W&B run (or none). Every call is a no-op when inactive and only warns when W&B fails.

    Use as a context manager: the run is always finished, also on error, so a later run in the same process
    never receives this run's metrics.
    """

    def __init__(self, run=None, mode: str = "disabled"):
        self.run = run
        self.mode = mode

    @property
    def active(self) -> bool:
        return self.run is not None

    def _safe(self, what: str, fn, *args, **kwargs):
        if self.run is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - W&B must never fail the run; the local record stays
            log.warning("W&B %s failed (%s: %s); continuing, the local record is unaffected",
                        what, type(exc).__name__, exc)
            return None

    def log(self, metrics: Mapping, step: int | None = None) -> None:
        self._safe("log", lambda: self.run.log(_clean(metrics), step=step))

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        def _do():
            import wandb
            self.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})
        self._safe(f"table {key}", _do)

    def log_chart(self, key: str, chart) -> None:
        """Log a ready-made ``wandb.plot`` chart or ``wandb.Image``."""
        self._safe(f"chart {key}", lambda: self.run.log({key: chart}))

    def summary(self, metrics: Mapping) -> None:
        self._safe("summary", lambda: self.run.summary.update(_clean(metrics)))

    def finish(self, exit_code: int | None = None) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B finish failed (%s: %s)", type(exc).__name__, exc)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)


def start(config: Mapping, *, job_type: str, run_dir: str | os.PathLike, mode: str = "offline",
          project: str = "prunekit", entity: str | None = None, group: str | None = None, name: str | None = None,
          tags: Iterable[str] | None = None, settings: Mapping | None = None) -> Tracker:
    """Start a W&B run for one job; files go to ``<run_dir>/wandb``. Never raises for W&B failures.

    ``mode``: online | offline | disabled (checked first). ``disabled`` touches neither W&B nor the disk.
    """
    check_mode(mode)
    check_job_type(job_type)
    if mode == "disabled":
        return Tracker(None, "disabled")
    mode = effective_mode(mode)
    run_dir = Path(run_dir).expanduser().resolve()
    try:
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=project, entity=entity, group=group, job_type=job_type, name=name,
            tags=list(tags) if tags else None, config=flatten(config), dir=str(run_dir), mode=mode,
            reinit="finish_previous",  # a run left open by a crashed job is closed, never reused
            settings=wandb.Settings(**{"disable_git": True, **(settings or {})}),
        )
    except Exception as exc:  # noqa: BLE001 - W&B must never fail the run
        log.warning("W&B init failed (%s: %s); continuing without W&B, the local record is unaffected",
                    type(exc).__name__, exc)
        return Tracker(None, "disabled")
    return Tracker(run, mode)


# ------------------------------------------------------------------------------------ logging helpers
SELECTIVITY_COLUMNS = ["layer", "mean", "std", "min", "max", "target_dominant", "distractor_dominant"]


def log_selectivity(tracker: Tracker, pruning_record: Mapping) -> None:
    """Per-layer selectivity table and the layer-wise target/distractor-dominant counts (paper Fig. 6)."""
    summary = pruning_record.get("selectivity_summary")
    if not summary or not tracker.active:
        return
    rows = [[row.get(c) for c in SELECTIVITY_COLUMNS] for row in summary]
    tracker.log_table("selectivity/layers", SELECTIVITY_COLUMNS, rows)

    def _chart():
        import wandb
        return wandb.plot.line_series(
            xs=[r["layer"] for r in summary],
            ys=[[r["target_dominant"] for r in summary], [r["distractor_dominant"] for r in summary]],
            keys=["target-dominant (S>0)", "distractor-dominant (S<0)"],
            title="Layer-wise neuron distribution (Fig. 6)", xname="layer")
    chart = tracker._safe("selectivity chart", _chart)
    if chart is not None:
        tracker.log_chart("selectivity/layer_distribution", chart)
    tracker.summary({"selectivity/target_dominant": sum(r["target_dominant"] for r in summary),
                     "selectivity/distractor_dominant": sum(r["distractor_dominant"] for r in summary)})


GENERATION_COLUMNS = ["id", "prompt", "output", "correct", "trap", "trap_type"]


def _is_trapped(record: Mapping) -> bool:
    return bool(record.get("trap") or record.get("trapped") or record.get("trap_type"))


def log_generations(tracker: Tracker, records: Iterable[Mapping], limit: int = 50,
                    key: str = "samples/generations") -> None:
    """A table of up to ``limit`` sample generations, trapped ones first so they always appear."""
    if not tracker.active:
        return
    records = list(records)
    chosen = [r for r in records if _is_trapped(r)][: limit // 2]
    chosen += [r for r in records if not _is_trapped(r)][: limit - len(chosen)]
    chosen += [r for r in records if _is_trapped(r) and r not in chosen][: limit - len(chosen)]
    rows = [[str(r.get("id")), r.get("prompt"), r.get("output"), r.get("correct"), _is_trapped(r),
             r.get("trap_type")] for r in chosen]
    tracker.log_table(key, GENERATION_COLUMNS, rows)
