"""Readers that turn a local file or directory and a hub dataset into indexable rows (len + getitem -> dict),
with one-line errors naming the option, and a streaming parser for a large or truncated JSON array.
prunekit.data selects prompt sets from these rows; prunekit.data.pip_datasets reads the pip-shipped sets.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prunekit.errors import DataError
from prunekit.packages import offline_mode

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv"}
ALLOWED_FILES = ".jsonl, .json, .csv (each optionally .gz)"
HUB_PROBE_TIMEOUT_S = 3.0


# ----------------------------------------------------------------------------------------------- local files
def _local_builder(path: Path, option: str) -> str:
    """datasets builder ('json'/'csv') for a local file, or DataError listing the allowed extensions."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    builder = LOCAL_SUFFIXES.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise DataError(f"{option}.path='{path}': unsupported file type; allowed: {ALLOWED_FILES}, "
                        "a dataset directory, a hub id or pip:<source>")
    return builder


@functools.lru_cache(maxsize=16)
def _load_local(path: str, name: str | None, split: str | None, stamp: tuple) -> Any:
    """A local file (datasets json/csv builder) or dataset directory as a datasets.Dataset; cached per process."""
    import datasets

    p = Path(path)
    if p.is_dir():
        return datasets.load_dataset(path, name, split=split or "train")
    builder = _local_builder(p, "spec")
    return datasets.load_dataset(builder, data_files=str(p), split="train")


@functools.lru_cache(maxsize=16)
def _text_problem(path: str, stamp: tuple) -> str | None:
    """Why a local text file (optionally .gz) cannot be prompt data, or None: not UTF-8 (pyarrow would only fail
    on the bad row, with a traceback), a truncated or damaged gzip stream, or nothing but blank lines. One
    streaming pass, cached per (size, mtime)."""
    import codecs
    import zlib

    opener = gzip.open if path.lower().endswith(".gz") else open
    decoder, offset, has_text = codecs.getincrementaldecoder("utf-8")(), 0, False
    try:
        with opener(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                has_text = bool(decoder.decode(block).strip()) or has_text
                offset += len(block)
            has_text = bool(decoder.decode(b"", final=True).strip()) or has_text
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {offset + e.start}: {e.reason}); save it as UTF-8"
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        return f"a truncated or damaged gzip file ({first_line(e)})"
    return None if has_text else "no records: the file holds only blank lines"


def local_rows(spec: dict, option: str) -> Any:
    """Rows of a local file or directory, with one-line errors naming the option."""
    shown = spec["path"]
    p = Path(os.path.expanduser(shown)).resolve()
    if not p.exists():
        raise DataError(f"{option}.path='{shown}': no such file")
    st = p.stat()
    if p.is_file():
        _local_builder(p, option)
        if st.st_size == 0:
            raise DataError(f"{option}.path='{shown}': empty file")
        problem = _text_problem(str(p), (st.st_size, st.st_mtime_ns))
        if problem:
            raise DataError(f"{option}.path='{shown}': {problem}")
    try:
        return _load_local(str(p), spec["name"], spec["split"], (st.st_size, st.st_mtime_ns))
    except DataError:
        raise
    except Exception as e:  # datasets/pyarrow raise many types; report the bad line, else the innermost reason
        reason = _bad_json_line(p) if p.is_file() else None
        if reason is None:
            inner = e
            while inner.__cause__ is not None or inner.__context__ is not None:
                inner = inner.__cause__ or inner.__context__
            reason = f"{type(inner).__name__}: {first_line(inner)}"
            if p.is_dir() and isinstance(inner, FileNotFoundError):  # datasets' message shows a functools.partial
                reason = (f"a directory without data files datasets can read; give a {ALLOWED_FILES} file or a "
                          "directory holding such files")
        raise DataError(f"{option}.path='{shown}': cannot be read ({reason})") from None


def _bad_json_line(path: Path) -> str | None:
    """For a JSON Lines file that datasets could not read: the first line that is not a JSON object, with its
    number (1-based) and json's reason, e.g. "line 2: Expecting ',' delimiter (column 12)"; None otherwise."""
    suffixes = [x.lower() for x in path.suffixes]
    if ".jsonl" not in suffixes:
        return None
    opener = gzip.open if suffixes[-1] == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.strip())
                except json.JSONDecodeError as e:
                    return f"line {n}: {e.msg} (column {e.colno})"
                if not isinstance(record, dict):
                    return f"line {n}: a JSON {type(record).__name__}, not an object"
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start}: {e.reason})"
    return None


def first_line(e: BaseException) -> str:
    """First non-empty line of an exception message, shortened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


# ----------------------------------------------------------------------------------------------- hub datasets

def _env_true(name: str) -> bool:
    """True if an environment variable is set to a truthy value."""
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@functools.lru_cache(maxsize=4)
def _hub_reachable(endpoint: str) -> bool:
    """One short TCP connect to the hub endpoint, so an offline machine fails in seconds instead of retrying."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides reachability; rely on the library's own timeouts
    u = urlparse(endpoint)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)),
                                      timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """True if hub datasets must come from the local cache: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE or no network."""
    import datasets

    if _env_true("HF_DATASETS_OFFLINE") or _env_true("HF_HUB_OFFLINE") or datasets.config.HF_HUB_OFFLINE:
        return True
    return not _hub_reachable(datasets.config.HF_ENDPOINT)



@functools.lru_cache(maxsize=16)
def _load_hub(path: str, name: str | None, split: str, offline: bool) -> Any:
    """A hub dataset split as a datasets.Dataset (from the local cache when offline); cached per process."""
    import datasets

    with offline_mode(offline):
        return datasets.load_dataset(path, name, split=split)


def hub_rows(spec: dict, option: str) -> Any:
    """Rows of a hub dataset; offline without a cached copy gives a one-line error suggesting a local path."""
    offline = hub_offline()
    try:
        return _load_hub(spec["path"], spec["name"], spec["split"], offline)
    except Exception as e:
        where = f"name={spec['name']!r}, split={spec['split']!r}"
        if offline:
            raise DataError(
                f"{option}.path='{spec['path']}': hub dataset cannot be loaded offline (no network or "
                f"HF_DATASETS_OFFLINE=1, and not in the local datasets cache; {where}); use a local copy, e.g. "
                f"{option}.path=/path/to/{spec['split'].split('[')[0]}.jsonl") from None
        raise DataError(f"{option}.path='{spec['path']}': cannot load hub dataset ({where}): "
                        f"{type(e).__name__}: {first_line(e)}") from None



# ----------------------------------------------------------------------------------------------- JSON arrays
def iter_json_array(stream, chunk_chars: int = 1 << 22):
    """Yield the complete objects of a (possibly truncated) top-level JSON array read from a text stream.

    Hand-written because no installed library parses a truncated array tolerantly: ``json.JSONDecoder.raw_decode``
    decodes object by object from a sliding window, so memory stays near one chunk plus the parsed objects.
    A trailing incomplete object is dropped with a warning."""
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,[":
            pos += 1
        if pos < len(buf) and buf[pos] == "]":
            return
        if pos >= len(buf):
            if eof:
                return
            buf, pos = stream.read(chunk_chars), 0
            eof = not buf
            continue
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError:
            if eof:
                log.warning("JSON array truncated: dropped an incomplete object of %d characters at the end",
                            len(buf) - pos)
                return
            more = stream.read(chunk_chars)
            eof = not more
            buf, pos = buf[pos:] + more, 0
            continue
        yield obj
        pos = end

