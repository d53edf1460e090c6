"""Experiment tracking: W&B runs that never fail a job, the local results store, and resume markers.

The local record (``metrics.json``, ``config.yaml``, ``runs.jsonl``, completion markers) is the source of
truth; W&B is a mirror of it. Every function takes plain values (dicts, paths), no Hydra.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import netrc
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse

from prunekit.checkpoint import atomic_write_json, checkpoint_problem, clean_stale_temps
from prunekit.data import get_path
from prunekit.errors import PrunekitError

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
JOB_TYPES = ("prune", "train", "evaluate", "report")
INDEX_FILE = "runs.jsonl"
# Files that must exist and parse before a job counts as finished (besides its completion marker).
FINAL_FILES = {
    "prune": ("model/config.json", "pruning.json", "metrics.json"),
    "train": ("model/config.json", "metrics.json"),
    "evaluate": ("metrics.json",),
    "report": (),
}

_offline_fallback_logged = False


class TrackingError(PrunekitError):
    """Bad tracking option (unknown wandb.mode or job type)."""


# --------------------------------------------------------------------------------------------- options
def check_mode(mode: str) -> str:
    """Validate ``wandb.mode`` before any work is done."""
    if mode not in MODES:
        raise TrackingError(f"wandb.mode={mode!r} is not supported; allowed values: {', '.join(MODES)}")
    return mode


def check_job_type(job_type: str) -> str:
    if job_type not in JOB_TYPES:
        raise TrackingError(f"job_type={job_type!r} is not supported; allowed values: {', '.join(JOB_TYPES)}")
    return job_type


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
def flatten(config: Mapping, prefix: str = "") -> dict:
    """Nested dict -> ``{"model.name_or_path": ..., "task.target.n": ...}`` so every key is a dashboard column."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


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
    return name, (f"random-s{seed}" if name == "random" else name), ratio


def strategy_label(cfg: Mapping, record: Mapping | None = None, job_type: str = "prune") -> str:
    """Strategy name, with the seed for ``random`` (its seeds are separate runs)."""
    return _pruned_as(cfg, record, job_type)[1]


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


# ---------------------------------------------------------------------------------- local results store
def _append_line(path: Path, line: str) -> None:
    """Append one whole line: O_APPEND + an exclusive flock, one write() call, so parallel jobs never interleave."""
    data = (line.rstrip("\n") + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            written = os.write(fd, data)
            while written < len(data):  # a short write is rare on local files; finish it while still locked
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def record_run(sweep_dir: str | os.PathLike, run_dir: str | os.PathLike, metrics: Mapping, config: Mapping,
               status: str, job_type: str | None = None, record: Mapping | None = None) -> dict:
    """Append one line for this run to ``<sweep_dir>/runs.jsonl`` (append-only index); returns the entry.
    ``record``: an evaluated/trained checkpoint's pruning.json, which names the run (see ``run_name``)."""
    sweep_dir, run_dir = Path(sweep_dir), Path(run_dir)
    try:
        rel = str(run_dir.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        rel = str(run_dir.resolve())
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": rel, "job_type": job_type, "status": status,
             "name": run_name(config, record, job_type or "prune"),
             "metrics": dict(metrics), "config": dict(config)}
    _append_line(sweep_dir / INDEX_FILE, json.dumps(entry, default=str))
    return entry

def marker_path(run_dir: str | os.PathLike, job_type: str) -> Path:
    return Path(run_dir) / f"complete-{check_job_type(job_type)}.json"


def _parses(path: Path) -> bool:
    try:
        if path.suffix == ".json":
            with open(path) as f:
                json.load(f)
        return path.is_file()
    except (OSError, ValueError):
        return False


def _final_file_ok(run_dir: Path, name: str) -> bool:
    """A final file exists and parses; ``model/config.json`` stands for the whole checkpoint, whose config and
    weights must load (a finished run whose model.safetensors was deleted or cut short is not complete)."""
    if name == "model/config.json":
        return checkpoint_problem(run_dir / "model") is None
    return _parses(run_dir / name)


def _marked_complete(run_dir: Path, job_type: str) -> bool:
    marker = marker_path(run_dir, job_type)
    if not _parses(marker):
        return False
    try:
        with open(marker) as f:
            return json.load(f).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def damaged_files(run_dir: str | os.PathLike, job_type: str, checkpoint: bool = True) -> list[str]:
    """The final files of a job that are missing or do not parse (``model/config.json`` stands for the whole
    checkpoint); checkpoint=False leaves out the saved model."""
    return [name for name in FINAL_FILES[job_type] if (checkpoint or not name.startswith("model/"))
            and not _final_file_ok(Path(run_dir), name)]


def is_complete(run_dir: str | os.PathLike, job_type: str, checkpoint: bool = True) -> bool:
    """A job is complete when its completion marker and all its final files exist and parse, its checkpoint's
    config and weights included.

    checkpoint=False leaves out the saved model (``model/...``): a finished run whose checkpoint the user deleted
    to free disk still has complete results for the report, while resume (checkpoint=True) redoes it."""
    return _marked_complete(Path(run_dir), job_type) and not damaged_files(run_dir, job_type, checkpoint)


def marked_complete_but_damaged(run_dir: str | os.PathLike) -> list[str]:
    """Final files (paths) of a job whose completion marker says complete but that are missing or unreadable now:
    a damaged record (the report warns about these), as opposed to a job that never finished."""
    run_dir = Path(run_dir)
    return [str(run_dir / name) for job in JOB_TYPES if _marked_complete(run_dir, job)
            for name in damaged_files(run_dir, job, checkpoint=False)]


# Keys that say where things are kept or how they are logged, not what a job computes: not in the config hash.
# capture.n too: all it changes is the task's prompt-set counts, which are hashed (a run made when its default was
# 800 still resumes).
NOT_HASHED = ("resume", "wandb.", "cache_dir", "model.cache_dir", "capture.cache_dir", "eval.reference_cache_dir",
              "eval.code.workers", "hydra.", "capture.n")
# Keys added after runs were recorded, with the default every earlier run had implicitly (which behaves as before
# the key existed): left out of the hash while at it, so a finished run of before the key existed still resumes
# (is skipped) instead of being refused.
LATER_KEYS = {"prune.align": 128, "model.save_dtype": None}
CONFIG_FILE = "run-config.json"
# Results of an attempt: cleared when a job (re)starts, so a failure can never leave another attempt's numbers.
RESULT_FILES = ("metrics.json", "generations.jsonl", "samples.jsonl", "distractor_generations.jsonl")
JOURNAL_FILE = "generations.partial.jsonl"  # finished generation batches of a killed evaluation (same config only)


def config_hash(config: Mapping) -> tuple[str, dict]:
    """sha256 of the settings that decide a job's results, and those settings flattened."""
    flat = {k: v for k, v in flatten(config).items()
            if not k.startswith(NOT_HASHED) and not (k in LATER_KEYS and v == LATER_KEYS[k])}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16], flat


def other_job(run_dir: str | os.PathLike, job_type: str) -> str | None:
    """The job of another type that ``run_dir`` holds (its completion marker, or the job its run-config.json was
    recorded for), or None."""
    run_dir = Path(run_dir)
    for marker in sorted(run_dir.glob("complete-*.json")):
        other = marker.stem.split("-", 1)[1]
        if other in JOB_TYPES and other != job_type:
            return other
    try:
        recorded = json.loads((run_dir / CONFIG_FILE).read_text()).get("job_type")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if recorded in JOB_TYPES and recorded != job_type else None


def check_resume(run_dir: str | os.PathLike, job_type: str, config: Mapping, resume: bool,
                 inputs: Mapping | None = None) -> bool:
    """Whether the job may be skipped; raises when ``run_dir`` holds a run of another job (resume or not: its
    model and results are never overwritten by another job), or of other settings with resume on.

    resume=true: a complete run with the same config hash and the same ``inputs`` (content stamps of the local
    files it reads, see ``data.local_inputs``) is skipped; a different hash is refused with a one-line error naming
    the settings that differ; changed inputs redo it. resume=false: the earlier attempt's results are dropped and
    redone.
    """
    run_dir = Path(run_dir)
    other = other_job(run_dir, job_type)
    if other is not None:
        raise TrackingError(f"{run_dir} holds a {other} run, not a {job_type} run; a {job_type} job never writes "
                            f"into another job's run directory (resume=false neither): use another hydra.run.dir")
    digest, flat = config_hash(config)
    saved = run_dir / CONFIG_FILE
    try:
        old = json.loads(saved.read_text()) if saved.is_file() else None
    except (OSError, ValueError):
        old = None
    if old is not None and old.get("hash") != digest:
        if resume:
            before = old.get("config") or {}
            diff = [f"{k}: {before.get(k)!r} -> {flat.get(k)!r}" for k in sorted(set(before) | set(flat))
                    if before.get(k) != flat.get(k)]
            raise TrackingError(f"{run_dir} holds a {job_type} run with other settings ({'; '.join(diff[:3])}"
                                f"{' ...' if len(diff) > 3 else ''}); use another hydra.run.dir, or resume=false "
                                "to redo it there")
        (run_dir / JOURNAL_FILE).unlink(missing_ok=True)  # generations of the other config: never reused
        return False
    # A record written before inputs were recorded ("inputs" absent) is taken as matching.
    changed = old is not None and "inputs" in old and old["inputs"] != json.loads(json.dumps(dict(inputs or {})))
    if changed:
        names = sorted(k for k in set(old["inputs"]) | set(inputs or {})
                       if old["inputs"].get(k) != (inputs or {}).get(k))
        log.info("%s: the content of %s changed since the earlier %s run: redoing it", run_dir, ", ".join(names),
                 job_type)
        (run_dir / JOURNAL_FILE).unlink(missing_ok=True)  # generations of other data: never reused
    return resume and old is not None and not changed and is_complete(run_dir, job_type)


def record_config(run_dir: str | os.PathLike, config: Mapping, job_type: str | None = None,
                  inputs: Mapping | None = None) -> None:
    """run-config.json: the config hash, the flattened settings, the job it is for and its inputs' stamps."""
    digest, flat = config_hash(config)
    atomic_write_json(Path(run_dir) / CONFIG_FILE, {"hash": digest, "config": flat, "job_type": job_type,
                                                   "inputs": dict(inputs or {})})


def begin(run_dir: str | os.PathLike, job_type: str) -> None:
    """Start (or redo) a job: drop its completion marker, the results of an earlier attempt (the report must never
    read them as this run's) and temp files a killed earlier attempt left behind."""
    run_dir = Path(run_dir)
    marker_path(run_dir, job_type).unlink(missing_ok=True)
    if not run_dir.is_dir():
        return
    for name in RESULT_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for tmp in clean_stale_temps(run_dir, recursive=True, any_owner=True):
        log.info("removed a temp a killed earlier attempt left: %s", tmp)


def mark_complete(run_dir: str | os.PathLike, job_type: str) -> Path:
    """Write the completion marker LAST, after every final file of the job is in place (atomic)."""
    run_dir = Path(run_dir)
    missing = [n for n in FINAL_FILES[check_job_type(job_type)] if not _final_file_ok(run_dir, n)]
    if missing:
        raise RuntimeError(f"{job_type} job in {run_dir} is not finished: missing or unreadable {missing}")
    path = marker_path(run_dir, job_type)
    atomic_write_json(path, {"status": "complete", "job_type": job_type,
                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return path
