"""Atomic writes of run outputs: a failure mid-write never leaves a half-written file or checkpoint behind."""

import errno
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from prunekit.errors import DiskFullError, PrunekitError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _public(path: Path, is_dir: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give results the permissions of a normal write."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_UMASK)


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EDQUOT, or a library's own error (torch's "unexpected pos",
    safetensors' IoError) on a filesystem that is now (nearly) full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if os.strerror(errno.ENOSPC) in str(exc) or "os error 28" in str(exc):  # safetensors' Rust IoError text
        return True
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


@contextmanager
def _full_disk_is_one_line(path: Path):
    """Turn a write that ran out of space into one DiskFullError naming the path (other failures propagate)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless the disk is full
        if isinstance(exc, PrunekitError) or not _disk_full(exc, Path(path).parent):
            raise
        raise DiskFullError(f"no space left on the device writing {path} (free space there, or point "
                            "hydra.run.dir / cache_dir elsewhere); earlier files are intact") from None


@contextmanager
def _temp_path(path: Path, suffix: str = ""):
    """A temp file beside ``path`` (same filesystem) that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _full_disk_is_one_line(path):
            yield Path(tmp)
        _public(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with _temp_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj, path: Path) -> None:
    with _temp_path(path) as tmp:
        torch.save(obj, tmp)


@contextmanager
def atomic_dir(path: Path):
    """Yield a temp directory that replaces ``path`` (an old one is removed only after the swap)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        with _full_disk_is_one_line(path):
            yield tmp
        _public(tmp, is_dir=True)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# Temp names carry the writing process's id: `.<name>.<pid>.<random>.tmp`, `.<name>.old-<pid>`, `<name>.<pid>.tmp`.
_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$|^\..+\.old-(\d+)$|^\..+\.(\d+)\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder, recursive: bool = False, any_owner: bool = False) -> list[Path]:
    """Remove the temp files and dirs that killed processes left in ``folder`` (their pid no longer runs); a temp
    of a process still running (a parallel job on a shared cache) is left alone. ``any_owner``: every temp goes
    (a job's own run directory, which no other process writes). Returns what was removed."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.rglob(".*") if recursive else folder.glob(".*"):
        m = _TEMP.match(entry.name)
        if "wandb" in entry.relative_to(folder).parts:
            continue
        if any_owner and not m and (entry.name.endswith(".tmp") or ".old-" in entry.name):
            pass
        elif not m or _alive(int(next(g for g in m.groups() if g))):
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def move_aside(path: Path) -> Path:
    """Keep a damaged cache entry (file or dir) for inspection as ``<name>.bad-<time>``, so it is rebuilt; when it
    cannot be moved it is removed. Returns the name it was given."""
    aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
    try:
        os.replace(path, aside)
    except OSError:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return aside


def save_model(model, tokenizer, path: Path) -> None:
    """Save a stock Hugging Face checkpoint (weights, config, tokenizer) atomically."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)
