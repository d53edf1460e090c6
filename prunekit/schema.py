"""The base every settings dataclass builds on (as peft's configs): a field's annotation is its type check, and
`check` holds the ranges and choices, both run once in `__post_init__`. Each module that uses a setting owns its
dataclass (capture.CaptureSettings, training.LoraSettings, data.spec.PromptSetSpec, evaluation.settings.EvalSettings);
config.py only composes them. Errors are one line naming the option, `<prefix><field>`.

Hydra's own structured-config checking is not used: its errors are multi-line and name no allowed values.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from prunekit.errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}

# Seeds go to torch generators, random.Random and numpy (accelerate's set_seed); numpy takes 0..2**32-1.
SEED_MAX = 2**32 - 1


def _coerce(value: Any, kind: type, option: str, hint: str | None, error: type[Exception]) -> Any:
    """`value` as `kind` (an int is a valid float; nothing else converts); otherwise a one-line error."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise error(f"{option}={value!r}: must be {hint or _NAMES.get(kind, kind.__name__)}")
    return value


def check_types(obj, prefix: str, error: type[Exception] = ConfigError) -> None:
    """Check and coerce every field against its annotation (int, float, bool, str, or X | None); other
    annotations (Any, list, dict, nested settings) are left to the class's `check`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name.startswith("_"):
            continue
        kind, value, option = hints[f.name], getattr(obj, f.name), f"{prefix}{f.name}"
        args = typing.get_args(kind)
        if type(None) in args:
            if value is None:
                continue
            kind = next(a for a in args if a is not type(None))
        if kind in _NAMES:
            setattr(obj, f.name, _coerce(value, kind, option, f.metadata.get("allowed"), error))


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def from_mapping(cls, mapping, prefix: str):
    """`cls(**known keys of mapping)`: the schema checks what it knows; other keys belong to other readers."""
    names = set(field_names(cls))
    return cls(**{str(k): v for k, v in dict(mapping or {}).items() if k in names}, _prefix=prefix)


def as_dict(obj) -> dict:
    """The fields as plain containers, without the bookkeeping ones (`_prefix`)."""
    return {k: v for k, v in dataclasses.asdict(obj).items() if not k.startswith("_")}


def defaults(schema) -> dict:
    """A schema's fields and defaults as plain containers (the ConfigStore nodes), read from the field
    definitions: no instance is built, so no check runs (and nothing heavy is imported) at registration."""
    out = {}
    for f in dataclasses.fields(schema):
        if f.name.startswith("_"):
            continue
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def check_seed(seed, option: str) -> None:
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{option}={seed}: must be an integer in 0..{SEED_MAX}")


@dataclass
class Checked:
    """Types, then `check`, once, when the object is built. `_prefix` is the option path in messages
    (`capture.`); `error` the class a module's checks raise."""

    _prefix: str = field(default="", repr=False, kw_only=True, compare=False)
    error: typing.ClassVar[type[Exception]] = ConfigError

    def __post_init__(self):
        check_types(self, self._prefix, self.error)
        self.check()

    def check(self) -> None:
        """Ranges and choices, after the types are right."""

    def _at_least(self, name: str, minimum, allow_none: bool = False) -> None:
        value = getattr(self, name)
        if value is None and allow_none:
            return
        if value < minimum:
            kind = "an integer" if isinstance(value, int) else "a number"
            raise self.error(f"{self._prefix}{name}={value!r}: must be {kind} >= {minimum}")
