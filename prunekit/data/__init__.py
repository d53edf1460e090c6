"""Prompt sets: a spec (hub dataset id, local JSONL/JSON/CSV file, or a pip-shipped source) -> records -> prompts.
The rows come from ``readers`` (local files, hub datasets) and ``pip_datasets`` (the ``pip:<name>`` registry).

A spec is a plain mapping (an OmegaConf DictConfig works too):
  path            hub id (``openai/gsm8k``), local file (``.jsonl``/``.json``/``.csv``, optionally ``.gz``) or
                  directory, or ``pip:<source>`` (see ``pip_datasets.PIP_DATASETS``)
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
import hashlib
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from prunekit.data import pip_datasets, readers
from prunekit.data.spec import PromptSetSpec, as_dict
from prunekit.errors import DataError  # noqa: F401 (re-exported: prunekit.data.DataError)

log = logging.getLogger(__name__)


class MissingField(KeyError):
    """A record lacks a field/template key; carries the keys that exist at that level. ``key`` is None when the
    template indexes past the end of a list (e.g. a dialogue with fewer turns than ``{messages[2]}`` needs)."""

    def __init__(self, key: str | None, available: list[str]):
        super().__init__(key)
        self.key, self.available = key, available

    @property
    def lacks(self) -> str:
        """What the record lacks, for messages: the key, or the list item the template indexes."""
        return repr(self.key) if self.key is not None else "a list item the template indexes (the list is shorter)"


# ----------------------------------------------------------------------------------------------- spec handling


def normalise(spec: Any, option: str = "spec") -> dict:
    """The spec checked (PromptSetSpec) and normalised, as the readers and cache keys take it; raises DataError
    naming the option on bad values."""
    return PromptSetSpec.of(spec, option).normalised()


def spec_fingerprint(spec: Any) -> dict:
    """The normalised spec: every setting that decides which prompts are loaded (for the activation-cache key)."""
    s = normalise(spec)
    if s["kind"] == "local":
        s["path"] = str(Path(os.path.expanduser(s["path"])).resolve())
    if s["exclude"]:
        s["exclude"] = [spec_fingerprint(e) for e in s["exclude"]]
    return dict(sorted(s.items()))


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes; memoised per (size, mtime), so a sweep hashes each file once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_stamp(path: str | os.PathLike) -> dict | None:
    """What identifies a local file's content in a cache or resume key: its size and the sha256 of its bytes
    (size and mtime only decide whether it is hashed again: a copy or a `touch` of the same bytes keeps the key).
    None when ``path`` is not an existing file (a hub id, pip:<source>, a directory)."""
    p = Path(os.path.expanduser(str(path)))
    try:
        if not p.is_file():
            return None
        st = p.stat()
        return {"size": st.st_size, "sha256": _sha256(str(p.resolve()), st.st_size, st.st_mtime_ns)}
    except OSError:
        return None


def local_inputs(config: Any, prefix: str = "") -> dict:
    """{dotted option: content stamp} of every local file a config (plain dict) names as a prompt set's ``path``
    (exclude lists too) or as ``generations``: what a resume or cache key must cover besides the settings."""
    out = {}
    if isinstance(config, Mapping):
        for key, value in config.items():
            name = f"{prefix}{key}"
            if key in ("path", "generations") and isinstance(value, str):
                stamp = content_stamp(value)
                if stamp is not None:
                    out[name] = stamp
            else:
                out.update(local_inputs(value, f"{name}."))
    elif isinstance(config, Sequence) and not isinstance(config, (str, bytes)):
        for i, value in enumerate(config):
            out.update(local_inputs(value, f"{prefix.rstrip('.')}[{i}]."))
    return out


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
    except IndexError:
        raise MissingField(None, [str(k) for k in record]) from None
    except (TypeError, AttributeError) as e:
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
        raise DataError(f"{option}.{what}: record has no {m.lacks}; fields: {', '.join(m.available) or '(none)'}") \
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


# ----------------------------------------------------------------------------------------------- selection
_ROWS = {"pip": pip_datasets.rows, "local": readers.local_rows, "hub": readers.hub_rows}  # spec kind -> reader


def rows(spec: dict, option: str) -> Sequence:
    """Indexable rows (len + getitem -> dict) of a normalised spec's source."""
    return _ROWS[spec["kind"]](spec, option)



def _select(spec: dict, option: str, need_text: bool, n_option: str | None = None) -> tuple[list[dict], list[str]]:
    """Records (and their texts) after where/filter, shuffle, offset and n; one-line errors when too few, naming
    ``n_option`` when another option than ``<option>.n`` set n (eval.n)."""
    table = rows(spec, option)
    total = len(table)
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
        rec = table[i]
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
        log.warning("%s: %d records skipped: they lack %s", option, missing, first_missing.lacks)
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
        asked = f"{n_option or option + '.n'}={n}" if n is not None else f"{option}.offset={offset}"
        raise DataError(f"{asked} but only {len(records)} records{cond}")
    return records, texts


def _empty_reason(spec, option, total, missing, empty, first_missing) -> str:
    """Why no record survived: field missing everywhere, filter matched none, all texts empty."""
    if missing == total and first_missing is not None:
        what = f"field={spec['field']!r}" if spec["field"] is not None else f"template={spec['template']!r}"
        return (f"{option}.{what}: {first_missing.lacks} missing in all {total} records; fields: "
                f"{', '.join(first_missing.available) or '(none)'}")
    if spec["filter_contains"]:
        return f"{option}.filter_contains={spec['filter_contains']!r}: matched none of {total} records (empty set)"
    if spec["where"]:
        return f"{option}.where={spec['where']}: matched none of {total} records (empty set)"
    return f"{option}: empty set ({empty} of {total} records have empty text, {missing} lack the field)"


# ----------------------------------------------------------------------------------------------- public API


def load_records(spec: Any, option: str = "spec", n_option: str | None = None) -> list[dict]:
    """Raw records of a prompt set (where/filter, then shuffle, offset and n applied); ``n_option``: the option
    that set n, when not the spec's own (for the messages)."""
    s = normalise(spec, option)
    return _select(s, option, need_text=s["field"] is not None or s["template"] is not None, n_option=n_option)[0]


def load_prompts(spec: Any, option: str = "spec", n_option: str | None = None) -> list[str]:
    """Prompt texts of a prompt set (exactly one of field/template required)."""
    s = normalise(spec, option)
    if s["field"] is None and s["template"] is None:
        raise DataError(f"{option}: give exactly one of field (dotted path, e.g. question) or template "
                        "(e.g. '{context}\\n{question}')")
    texts = _select(s, option, need_text=True, n_option=n_option)[1]
    log.info("%s: %d prompts from %s", option, len(texts), s["path"])
    return texts


def prompt_sets(task: Any) -> dict:
    """{"target": prompts, "distractors": {name: prompts}} for a task mapping with ``target`` and ``distractors``."""
    t = as_dict(task, "task")
    if t.get("target") is None:
        raise DataError("task.target: missing; give a prompt-set spec (path, n, field or template)")
    distractors = t.get("distractors")
    if distractors is None or not as_dict(distractors, "task.distractors"):
        raise DataError("task.distractors: missing or empty; give at least one name -> prompt-set spec")
    return {
        "target": load_prompts(t["target"], "task.target"),
        "distractors": {str(name): load_prompts(spec, f"task.distractors.{name}")
                        for name, spec in as_dict(distractors, "task.distractors").items()},
    }
