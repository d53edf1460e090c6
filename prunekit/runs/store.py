"""The local record of a run directory: completion markers, the config hash and resume, the sweep's runs index,
and what counts as a damaged record. Every function takes plain values (dicts, paths), no Hydra, no W&B."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from prunekit.checkpoint import atomic_write_json, clean_stale_temps, read_json
from prunekit.errors import RunError
from prunekit.runs.layout import (
    CONFIG_FILE,
    FINAL_FILES,
    INDEX_FILE,
    JOB_TYPES,
    JOURNAL_FILE,
    MARKER_GLOB,
    MODEL_CONFIG,
    MODEL_DIR,
    PRUNING_FILE,
    RESULT_FILES,
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
    marker_job,
    marker_name,
)

log = logging.getLogger(__name__)


def check_job_type(job_type: str) -> str:
    if job_type not in JOB_TYPES:
        raise RunError(f"job_type={job_type!r} is not supported; allowed values: {', '.join(JOB_TYPES)}")
    return job_type


def flatten(config: Mapping, prefix: str = "") -> dict:
    """Nested dict -> ``{"model.name_or_path": ..., "task.target.n": ...}``: the config hash's input, and one
    dashboard column per key in W&B."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------- records
def checkpoint_problem(model_dir) -> str | None:
    """Why ``model_dir`` is not a loadable stock checkpoint (None when it is): config.json must be a JSON object,
    and the safetensors weights (one file, or every shard its index names) must have a whole header and data
    (safetensors' own reader checks that the file covers what its header declares; no tensor is read)."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    try:
        config = read_json(model_dir / "config.json")
    except (OSError, ValueError) as exc:
        return f"{model_dir / 'config.json'}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not isinstance(config, dict):
        return f"{model_dir / 'config.json'}: not a JSON object"
    if (model_dir / WEIGHTS_INDEX).is_file():
        try:
            shards = sorted(set(read_json(model_dir / WEIGHTS_INDEX)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"{model_dir / WEIGHTS_INDEX}: unreadable ({type(exc).__name__})"
    else:
        shards = [WEIGHTS_FILE]
    for shard in shards:
        try:
            with safe_open(str(model_dir / shard), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type, OSError, ...
            return f"{model_dir / shard}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def pruning_record_of(model_path) -> dict | None:
    """``pruning.json`` of a checkpoint written by prune.py/train.py (beside its ``model/``, or in the dir given)."""
    text = str(model_path) if isinstance(model_path, (str, os.PathLike)) else ""
    if not text or text.startswith(("pip:", "tiny:")):
        return None
    path = Path(model_path).expanduser()
    # Our checkpoints are `<run>/model` (the records stay readable after the weights are deleted); any other path
    # must be an existing directory: a hub id such as Qwen/Qwen2.5-Math-1.5B-Instruct is never read as a run.
    if not path.is_dir() and path.name != MODEL_DIR:
        return None
    for base in (path.parent, path):
        if (base / PRUNING_FILE).is_file():
            return read_json(base / PRUNING_FILE)
    return None


# ---------------------------------------------------------------------------------------------- runs index
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
               status: str, job_type: str | None = None, name: str | None = None) -> dict:
    """Append one line for this run to ``<sweep_dir>/runs.jsonl`` (append-only index); returns the entry.
    ``name``: the run's name (``runs.wandb.run_name``), the same as in W&B."""
    sweep_dir, run_dir = Path(sweep_dir), Path(run_dir)
    try:
        rel = str(run_dir.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        rel = str(run_dir.resolve())
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": rel, "job_type": job_type, "status": status,
             "name": name, "metrics": dict(metrics), "config": dict(config)}
    _append_line(sweep_dir / INDEX_FILE, json.dumps(entry, default=str))
    return entry


# ---------------------------------------------------------------------------------------------- completion
def marker_path(run_dir: str | os.PathLike, job_type: str) -> Path:
    return Path(run_dir) / marker_name(check_job_type(job_type))


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
    if name == MODEL_CONFIG:
        return checkpoint_problem(run_dir / MODEL_DIR) is None
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
    return [name for name in FINAL_FILES[job_type] if (checkpoint or not name.startswith(f"{MODEL_DIR}/"))
            and not _final_file_ok(Path(run_dir), name)]


def is_complete(run_dir: str | os.PathLike, job_type: str, checkpoint: bool = True) -> bool:
    """A job is complete when its completion marker and all its final files exist and parse, its checkpoint's
    config and weights included.

    checkpoint=False leaves out the saved model (``model/...``): a finished run whose checkpoint the user deleted
    to free disk still has complete results for the report, while resume (checkpoint=True) redoes it."""
    return _marked_complete(Path(run_dir), job_type) and not damaged_files(run_dir, job_type, checkpoint)


def completed_jobs(run_dir: str | os.PathLike, checkpoint: bool = True) -> list[str]:
    """The jobs whose completion marker ``run_dir`` holds and that are complete (see ``is_complete``)."""
    jobs = [marker_job(m) for m in sorted(Path(run_dir).glob(MARKER_GLOB))]
    return [job for job in jobs if job in JOB_TYPES and is_complete(run_dir, job, checkpoint)]


def marked_complete_but_damaged(run_dir: str | os.PathLike) -> list[str]:
    """Final files (paths) of a job whose completion marker says complete but that are missing or unreadable now:
    a damaged record (the report warns about these), as opposed to a job that never finished."""
    run_dir = Path(run_dir)
    return [str(run_dir / name) for job in JOB_TYPES if _marked_complete(run_dir, job)
            for name in damaged_files(run_dir, job, checkpoint=False)]


# ---------------------------------------------------------------------------------------------- config hash
# Keys that say where things are kept or how they are logged, not what a job computes: not in the config hash.
# capture.n too: all it changes is the task's prompt-set counts, which are hashed (a run made when its default was
# 800 still resumes).
NOT_HASHED = ("resume", "wandb.", "cache_dir", "model.cache_dir", "capture.cache_dir", "eval.reference_cache_dir",
              "eval.code.workers", "hydra.", "capture.n")
# Keys added after runs were recorded, with the default every earlier run had implicitly (which behaves as before
# the key existed): left out of the hash while at it, so a finished run of before the key existed still resumes
# (is skipped) instead of being refused.
LATER_KEYS = {"prune.align": 128, "model.save_dtype": None, "task.train.drop_response_lines": None,
              "eval.kv_cache": "dynamic", "task.train.responses": "dataset", "eval.nll.max_batch_tokens": None}


def config_hash(config: Mapping) -> tuple[str, dict]:
    """sha256 of the settings that decide a job's results, and those settings flattened."""
    flat = {k: v for k, v in flatten(config).items()
            if not k.startswith(NOT_HASHED) and not (k in LATER_KEYS and v == LATER_KEYS[k])}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16], flat


# ---------------------------------------------------------------------------------------------- resume
def other_job(run_dir: str | os.PathLike, job_type: str) -> str | None:
    """The job of another type that ``run_dir`` holds (its completion marker, or the job its run-config.json was
    recorded for), or None."""
    run_dir = Path(run_dir)
    for marker in sorted(run_dir.glob(MARKER_GLOB)):
        other = marker_job(marker)
        if other in JOB_TYPES and other != job_type:
            return other
    try:
        recorded = json.loads((run_dir / CONFIG_FILE).read_text()).get("job_type")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if recorded in JOB_TYPES and recorded != job_type else None


def _shown(settings: Mapping, key: str) -> str:
    return repr(settings[key]) if key in settings else "(absent)"


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
        raise RunError(f"{run_dir} holds a {other} run, not a {job_type} run; a {job_type} job never writes "
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
            diff = [f"{k}: {_shown(before, k)} -> {_shown(flat, k)}" for k in sorted(set(before) | set(flat))
                    if k not in before or k not in flat or before[k] != flat[k]]  # one side only: a difference
            raise RunError(f"{run_dir} holds a {job_type} run with other settings ({'; '.join(diff[:3])}"
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
