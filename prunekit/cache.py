"""Content-addressed caches of derived artifacts (activation statistics, attribution scores, converted models, ...).

Each cache is one ``ArtifactCache`` subclass: its kind (the words its log lines use), the format version of an
entry, how an entry is read and verified, and how it is written. The class holds what every cache does alike:

- the key: ``digest`` of a JSON payload names an entry, ``<root>/<key><suffix>`` (a file, or a folder);
- verify: an entry is used only when ``read`` accepts it; a damaged or mismatched one is logged with its path,
  moved aside for inspection (``<name>.bad-<time>``) and built again, so it can never change a result;
- lock: processes that need the same entry wait on one file lock (``<entry>.lock``): one builds, the others read;
- warn-and-continue: a write that fails (full disk, read-only cache) is a warning and the built value is returned,
  since a cache only saves time.
"""

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object
from filelock import FileLock

from prunekit.checkpoint import DiskFullError, move_aside
from prunekit.dist import process_state

_MISSING = object()


class Damaged(Exception):
    """Raised by ``ArtifactCache.read``: the entry is there but cannot be used (the message says why)."""


def digest(payload, length: int | None = 20) -> str:
    """The sha256 of ``payload`` as sorted JSON (non-JSON values as their ``str``), cut to ``length`` hex digits
    (None: all 64). Every cache key is made here, so the same payload always names the same entry."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _why(exc: BaseException) -> str:
    """One short line for an entry that failed to read: a truncated zip, garbage bytes, an empty file, ..."""
    if isinstance(exc, Damaged):
        return str(exc)
    first = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"unreadable ({type(exc).__name__}: {first})"


class ArtifactCache:
    """A folder of entries named by key. Subclasses set the class attributes and implement ``read``/``write``."""

    kind = "cache"           # what the log calls it: "activation cache", "attribution cache", ...
    version = 1              # format of an entry: bump when its layout or meaning changes
    suffix = ""              # an entry's file name ending ("": the entry is a folder)
    damaged = "is damaged"   # the log's verb phrase for an unusable entry
    again = "building again"  # what happens next, for the log
    hit_message: str | None = None    # logged with the entry's path when it is used (None: nothing)
    saved_message: str | None = None  # logged with the entry's path when it is written (None: nothing)
    log = logging.getLogger(__name__)  # subclasses log under their owner's logger, as before

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    # ------------------------------------------------------------------------------------------ per kind
    def read(self, path: Path, expected) -> Any:
        """The value stored at ``path``, checked against ``expected``; raise ``Damaged`` (or let any read error
        through) when it cannot be used."""
        raise NotImplementedError

    def write(self, path: Path, value, expected) -> None:
        """Store ``value`` at ``path`` atomically (a failure leaves no half-written entry)."""
        raise NotImplementedError

    def manifest(self, **fields) -> dict:
        """What an entry records about itself beside its data: the format version and ``fields``."""
        return {"format": self.version, **fields}

    # ------------------------------------------------------------------------------------------ shared
    def path(self, key: str) -> Path:
        return self.root / f"{key}{self.suffix}"

    def lock(self, key: str):
        """The file lock of one entry: hold it to build the entry while other processes wait for it."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path(key)) + ".lock")

    def _lookup(self, path: Path, expected):
        """(value, None) for a usable entry; (_MISSING, None) when there is none; (_MISSING, why) when damaged."""
        if not path.exists():
            return _MISSING, None
        try:
            return self.read(path, expected), None
        except Exception as exc:  # noqa: BLE001 - any failure to read or verify means "build again"
            return _MISSING, _why(exc)

    def _put_aside(self, path: Path, problem: str) -> None:
        self.log.warning("%s %s %s (%s): moved to %s, %s", self.kind, path, self.damaged, problem, move_aside(path),
                         self.again)

    def load(self, key: str, expected=None):
        """The verified entry of ``key``, or None when absent; a damaged one is moved aside (and None returned)."""
        path = self.path(key)
        value, problem = self._lookup(path, expected)
        if problem is not None:
            self._put_aside(path, problem)
        return None if value is _MISSING else self._hit(path, value)

    def save(self, key: str, value, expected=None) -> bool:
        """Write an entry; a failed write is a warning and the run goes on (returns whether it was written)."""
        path = self.path(key)
        try:
            self.write(path, value, expected)
        except (OSError, DiskFullError) as exc:
            self.log.warning("could not write the %s %s (%s); continuing without it", self.kind, path, exc)
            return False
        if self.saved_message:
            self.log.info(self.saved_message, path)
        return True

    def get(self, key: str, build: Callable[[], Any], expected=None, *, collective: bool = False) -> tuple[Any, bool]:
        """(value, was_cached): the entry of ``key`` when it is usable, else ``build()`` stored under ``key``.

        Concurrent processes (a sweep's parallel jobs) wait on the entry's lock, so one builds and the others read.
        ``collective``: under ``accelerate launch`` every rank takes part in ``build()`` (a sharded capture or
        generation). Then no lock is taken (a rank waiting on it while the others wait for it in a collective is a
        deadlock), the ranks agree to read only when every one of them found the entry, and the main one writes.
        """
        if collective and (state := process_state()).num_processes > 1:
            return self._get_together(key, build, expected, state)
        path = self.path(key)
        value, problem = self._lookup(path, expected)  # a usable entry needs no lock: entries are written atomically
        if value is not _MISSING:
            return self._hit(path, value), True
        with self.lock(key):
            value, problem = self._lookup(path, expected)  # another process may have built it while this one waited
            if value is not _MISSING:
                return self._hit(path, value), True
            if problem is not None:
                self._put_aside(path, problem)
            value = build()
            self.save(key, value, expected)
        return value, False

    def _get_together(self, key: str, build: Callable[[], Any], expected, state) -> tuple[Any, bool]:
        path = self.path(key)
        value, problem = self._lookup(path, expected)
        if all(gather_object([value is not _MISSING])):  # one rank's miss (a damaged read) makes all build
            return self._hit(path, value), True
        if problem is not None and state.is_main_process:
            self._put_aside(path, problem)
        value = build()
        if state.is_main_process:
            self.save(key, value, expected)
        return value, False

    def _hit(self, path: Path, value):
        if self.hit_message:
            self.log.info(self.hit_message, path)
        return value
