"""Typed config schemas that validate themselves (as peft's configs): every recipe turns the composed Hydra config
into these dataclasses first, so a value of the wrong type or range (`ratio=abc`, `seed=abc`,
`capture.batch_size=1.5`) is one line naming the option, before any data or model loads.

The YAML files stay the menu of defaults; the schemas say what each value must be. (Hydra's own structured-config
checking is not used: its errors are multi-line and name no allowed values.)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from prunekit.errors import PrunekitError


class ConfigError(PrunekitError):
    """A config value of the wrong type or out of range."""


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(value: Any, kind: type, option: str, hint: str | None = None) -> Any:
    """`value` as `kind` (an int is a valid float; nothing else converts); otherwise a one-line ConfigError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{option}={value!r}: must be {hint or _NAMES.get(kind, kind.__name__)}")
    return value


def _check_types(obj, prefix: str) -> None:
    """Check and coerce every field against its annotation (int, float, bool, str, or X | None)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind, value, option = hints[f.name], getattr(obj, f.name), f"{prefix}{f.name}"
        args = typing.get_args(kind)
        if type(None) in args:
            if value is None:
                continue
            kind = next(a for a in args if a is not type(None))
        if kind in _NAMES:
            setattr(obj, f.name, _coerce(value, kind, option, f.metadata.get("allowed")))


def from_mapping(cls, mapping, prefix: str):
    """`cls(**known keys of mapping)`: the schema checks what it knows; other keys belong to other readers."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(mapping or {}).items() if k in names}, _prefix=prefix)


@dataclass
class _Checked:
    _prefix: str = field(default="", repr=False, kw_only=True)

    def __post_init__(self):
        _check_types(self, self._prefix)
        self.check()

    def check(self) -> None:
        """Ranges and choices, after the types are right."""

    def _at_least(self, name: str, minimum, allow_none: bool = False) -> None:
        value = getattr(self, name)
        if value is None and allow_none:
            return
        if value < minimum:
            kind = "an integer" if isinstance(value, int) else "a number"
            raise ConfigError(f"{self._prefix}{name}={value!r}: must be {kind} >= {minimum}")


@dataclass
class JobConfig(_Checked):
    """The top-level keys every job has."""

    seed: int = 42
    evaluate: bool = True
    resume: bool = True
    ratio: float | None = field(default=None, metadata={"allowed": "a number in (0, 1)"})  # prune only

    # the range of ratio is checked against the model's width by slicing.check_ratio


@dataclass
class CaptureConfig(_Checked):
    """`capture.*`: how activations are recorded."""

    n: int = field(default=800, metadata={"allowed": "an integer >= 1"})
    max_length: int = field(default=1024, metadata={"allowed": "an integer >= 1"})
    batch_size: int = field(default=8, metadata={"allowed": "an integer >= 1"})
    chat_template: bool = False
    skip_first: int = field(default=0, metadata={"allowed": "an integer >= 0"})

    def check(self):
        from prunekit.capture import CaptureSettings  # its own range checks, with the same messages

        self._at_least("n", 1)
        CaptureSettings(max_length=self.max_length, batch_size=self.batch_size, chat_template=self.chat_template,
                        skip_first=self.skip_first)


@dataclass
class ModelConfig(_Checked):
    """`model.*`: which weights, in which dtype."""

    name_or_path: str = ""
    dtype: str = field(default="auto", metadata={"allowed": "auto, float32, bfloat16 or float16"})
    revision: str | None = None
    device_map: str | None = None
    trust_remote_code: bool = False


@dataclass
class StrategyConfig(_Checked):
    """`strategy.*` options that several strategies share (each strategy object checks its own ranges)."""

    name: str = "selective"
    seed: int | None = None
    weight: float | None = None
    layer: int | None = None
    percent: float | None = None
    samples: int | None = None
    steps: int | None = None


def check(cfg, job: str) -> None:
    """Validate the parts of `cfg` a `job` (prune | evaluate | train) reads, before anything loads."""
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    JobConfig(seed=get("seed", 42), evaluate=get("evaluate", True), resume=get("resume", True),
              ratio=get("ratio") if job == "prune" else None)
    from_mapping(ModelConfig, get("model"), "model.")
    if job == "prune":
        from_mapping(CaptureConfig, get("capture"), "capture.")
        from_mapping(StrategyConfig, get("strategy"), "strategy.")
