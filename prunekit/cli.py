"""Glue shared by the entry scripts (the only prunekit module that touches Hydra): run directories, and bad input
turned into a one-line error with exit status 2 instead of a traceback."""

import errno
import hashlib
import logging
import re
import sys

from omegaconf import OmegaConf

from prunekit.errors import PrunekitError

log = logging.getLogger("prunekit")


def sweep_id(argv: list[str] | None = None) -> str:
    """A sweep directory name that is the same whenever the same command is run again (so resume finds it):
    the sorted non-Hydra overrides, readable and shortened, plus a hash of them all."""
    args = sorted(a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith(("-", "hydra.", "hydra/")))
    readable = re.sub(r"[^A-Za-z0-9=,.+_-]+", "_", "_".join(args))[:80] or "defaults"
    return f"{readable}-{hashlib.sha1(chr(0).join(args).encode()).hexdigest()[:6]}"


# Keys that say where things are stored or how they are logged, not what a job computes: left out of job dir names.
NOT_IN_DIRNAME = ("cache_dir", "model.cache_dir", "capture.cache_dir", "eval.reference_cache_dir", "resume",
                  "experiment", "wandb.")
_SWEEP_VALUE = re.compile(r"^(range|choice|glob|interval)\(|,")


def swept_keys(argv: list[str] | None = None) -> list[str]:
    """Keys the multirun command sweeps (``key=a,b`` or ``key=range(...)``), in command-line order."""
    args = sys.argv[1:] if argv is None else argv
    return [a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a and _SWEEP_VALUE.search(a.split("=", 1)[1])]


def job_dirname(overrides, limit: int = 120, argv: list[str] | None = None) -> str:
    """A job's sub-directory from its overrides (``hydra.overrides.task``): the swept keys first, then the rest
    sorted; storage/logging keys left out; one path component; at most ``limit`` characters (a longer name keeps
    its start plus a hash, so different jobs never collide)."""
    items = [str(o).lstrip("+~") for o in overrides]
    items = [o for o in items if not o.split("=", 1)[0].startswith(NOT_IN_DIRNAME) and not o.startswith("hydra")]
    swept = swept_keys(argv)
    items.sort(key=lambda o: (swept.index(o.split("=", 1)[0]) if o.split("=", 1)[0] in swept else len(swept), o))
    name = ",".join(items).replace("/", "_") or "defaults"
    if len(name) <= limit:
        return name
    return f"{name[: limit - 8]}-{hashlib.sha1(name.encode()).hexdigest()[:7]}"


OmegaConf.register_new_resolver("sweep_id", sweep_id, replace=True)
OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


def hydra_dirs() -> dict:
    """``run_dir`` of this job and ``sweep_dir`` of its multirun (None for a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return {"run_dir": hc.runtime.output_dir, "sweep_dir": hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None}


def is_usage_error(exc: BaseException) -> bool:
    """Every prunekit error for bad input derives from PrunekitError (ConfigError, DataError, ModelError, RunError)."""
    return isinstance(exc, PrunekitError)


INTERRUPTED = 130  # the shell's status for a process ended by SIGINT (128 + 2)


def guarded(fn, *args, **kwargs):
    """Call a recipe; a usage error prints ``error: <message>`` and exits with status 2; Ctrl-C prints one line
    (what finished is kept: atomic writes, completion markers, generation journals) and exits with 130."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        message = ("interrupted: finished steps are kept; run the same command again to resume (resume=true, the "
                   "default)")
        log.warning("%s", message)
        print(message, file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a usage error or a full disk
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message = (f"no space left on the device writing {exc.filename or 'a file'} (free space there, or point "
                       "hydra.run.dir / cache_dir elsewhere)")
        elif is_usage_error(exc):
            message = str(exc)
        else:
            raise
        log.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
