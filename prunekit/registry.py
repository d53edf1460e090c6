"""The one registry pattern for prunekit's extension points (strategies, benchmarks): a class registers itself by
its `name`, and a config names it; an unknown name is a one-line error listing the registered ones."""

from __future__ import annotations

from collections.abc import Callable


class Registry(dict):
    """name -> class. ``option`` is the config key that names an entry (used in the error message)."""

    def __init__(self, kind: str, option: str, error: type[Exception], load: Callable[[], None] | None = None,
                 sort: bool = False):
        super().__init__()
        self.kind, self.option, self.error, self._load, self.sort = kind, option, error, load, sort

    def register(self, cls: type) -> type:
        """Class decorator: register ``cls`` under ``cls.name`` (a second class of the same name is a bug)."""
        if cls.name in self and self[cls.name] is not cls:
            raise ValueError(f"two entries named {cls.name!r}: {self[cls.name].__qualname__}, {cls.__qualname__}")
        self[cls.name] = cls
        return cls

    def lookup(self, name) -> type:
        """The class registered as ``name``, or the one-line error naming the option and the allowed names."""
        self.load()
        if name not in self:
            raise self.error(f"{self.option}={name!r}: unknown {self.kind}; allowed: {', '.join(self.names())}")
        return self[name]

    def names(self) -> list[str]:
        """Registered names: sorted, or in registration order (strategies: the paper's first)."""
        self.load()
        return sorted(self) if self.sort else list(self)

    def load(self) -> None:
        """Import the modules that register the built-in entries (lazily: they may be heavy)."""
        if self._load is not None:
            self._load()
