"""One prompt set of a task preset: where its records come from and which of them are taken. `PromptSetSpec`
checks itself when built; `normalised()` is the form the readers and the cache keys use (the kind of source
resolved, name/split kept only where they mean something, defaults filled in). Its defaults are the `prompt_set`
node (config.register) that every set in conf/task/ extends, so each states only what differs. Consumers' keys
(gold_field, prompt_template, response_field) are stated where they are used and ignored here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.data import pip_datasets
from prunekit.data.pip_datasets import PIP_DATASETS
from prunekit.data.readers import ALLOWED_FILES
from prunekit.errors import DataError
from prunekit.schema import Checked, field_names

# Suffixes that mark a path as a file even if it does not exist (so "data/x.txt" is not taken for a hub id).
_FILE_LIKE = {".txt", ".tsv", ".parquet", ".arrow", ".xml", ".yaml", ".yml", ".zip", ".tar", ".bz2", ".xz", ".gz",
              ".jsonl", ".json", ".csv", ".xlsx", ".md"}


def as_dict(spec: Any, option: str) -> dict:
    """Plain dict from any mapping (incl. an OmegaConf DictConfig, by duck typing)."""
    if spec is None or not (isinstance(spec, Mapping) or hasattr(spec, "items")):
        raise DataError(f"{option}: expected a mapping with path, n and field or template; got {type(spec).__name__}")
    return {str(k): v for k, v in spec.items()}


def source_kind(path: str) -> str:
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


@dataclass
class PromptSetSpec(Checked):
    """A prompt set: hub dataset, local file or directory, or pip-shipped source, and which records to take.
    path, field, template and filter_contains have their own messages (a hint of what to give), so their types
    are checked in `check`."""

    path: Any = None                   # hub id | local .jsonl/.json/.csv (optionally .gz) or dataset dir | pip:<source>
    name: str | None = None            # hub config name
    split: str | None = "train"        # hub split (ignored for local files and pip sources)
    field: Any = None                  # exactly one of field (a dotted path, e.g. messages.0.content) ...
    template: Any = None               # ... or a str.format template over the record ("{context}\n{question}")
    n: int | None = None               # how many records; null = all
    offset: int | None = 0             # skip the first matching records (the paper takes the first rows)
    shuffle_seed: int | None = None    # null keeps file order; an int shuffles before the offset
    filter_contains: Any = None        # a substring (case-insensitive) the rendered text must contain
    where: Any = None                  # {dotted field: value} equalities a record must satisfy, e.g. {lang: python}
    exclude: Any = None                # (evaluation sets) specs whose texts must not appear, e.g. the capture set
    seed: int | None = None            # generator seed of a generated pip set (pip:gsm_symbolic; its default 42)
    _prefix: str = dataclasses.field(default="spec.", repr=False, kw_only=True, compare=False)
    error = DataError

    # `exclude` and `seed` stay out of the `prompt_set` node: only evaluation sets and generated sets use them (and
    # state them), and a null in every spec would change the composed configs and the cache keys that hash them.
    NOT_IN_NODE = ("exclude", "seed")

    @classmethod
    def of(cls, spec: Any, option: str = "spec") -> PromptSetSpec:
        """The checked spec of a mapping (keys it does not know belong to the consumers)."""
        if isinstance(spec, PromptSetSpec):
            return spec
        names = set(field_names(cls))
        return cls(**{k: v for k, v in as_dict(spec, option).items() if k in names}, _prefix=f"{option}.")

    @property
    def option(self) -> str:
        return self._prefix.rstrip(".")

    def check(self) -> None:
        option = self.option
        path = self.path
        if not isinstance(path, str) or not path.strip():
            raise DataError(f"{option}.path={path!r}: give a hub dataset id, a local {ALLOWED_FILES} file, "
                            f"or pip:<{'|'.join(PIP_DATASETS)}>")
        self.path = path.strip()
        self.kind = source_kind(self.path)
        if self.field is not None and self.template is not None:
            raise DataError(f"{option}: give exactly one of field or template, not both "
                            f"(field={self.field!r}, template={self.template!r})")
        for key in ("field", "template", "filter_contains"):
            val = getattr(self, key)
            if val is not None and (not isinstance(val, str) or not val):
                raise DataError(f"{option}.{key}={val!r}: must be a non-empty string or null")
        if self.where is not None:
            self.where = as_dict(self.where, f"{option}.where")
        if self.exclude is not None:
            many = isinstance(self.exclude, Sequence) and not isinstance(self.exclude, str)  # a list or one spec
            self.exclude = [PromptSetSpec.of(e, f"{option}.exclude[{i}]")
                            for i, e in enumerate(self.exclude if many else [self.exclude])] or None
        self._at_least_or_null("n", 1)
        self._at_least_or_null("offset", 0)
        self.offset = self.offset or 0
        if self.kind == "pip":
            entry = pip_datasets.lookup(self.path, option)
            if entry.default_seed is not None and self.seed is None:  # a generated set: its seed decides the rows
                self.seed = entry.default_seed

    def _at_least_or_null(self, key: str, minimum: int) -> None:
        value = getattr(self, key)
        if value is not None and value < minimum:
            what = "a positive integer (or null for all records)" if minimum == 1 else f"an integer >= {minimum}"
            raise DataError(f"{self.option}.{key}={value}: must be {what}")

    def normalised(self) -> dict:
        """The spec as the readers and the cache keys take it: name and split only for hub sets and local dataset
        directories, `seed` only for generated pip sets."""
        where = self.kind == "hub" or self.kind == "local" and Path(os.path.expanduser(self.path)).is_dir()
        out = {
            "path": self.path,
            "kind": self.kind,
            "name": self.name if where else None,
            "split": (self.split or "train") if where else None,
            "field": self.field,
            "template": self.template,
            "n": self.n,
            "offset": self.offset,
            "shuffle_seed": self.shuffle_seed,
            "filter_contains": self.filter_contains,
            "where": self.where,
            "exclude": [e.normalised() for e in self.exclude] if self.exclude else None,
        }
        if self.kind == "pip" and pip_datasets.lookup(self.path, self.option).default_seed is not None:
            out["seed"] = self.seed
        return out
