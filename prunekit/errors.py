"""The user-facing prunekit errors: bad options, data, models or run directories. The entry scripts and the report
catch the base class (and only it) and print one line, `error: <message>`, with exit status 2. Four kinds are
enough to tell what to fix; the message says which option or file and what is allowed."""


class PrunekitError(ValueError):
    """Bad input the user can fix; the message names the option or file and what is allowed."""


class ConfigError(PrunekitError):
    """A setting of the wrong type, out of range or unknown (checked before any model or data loads)."""


class DataError(PrunekitError):
    """A prompt-set spec, a data file or an evaluation record that cannot be used."""


class ModelError(PrunekitError):
    """A model option that cannot be resolved, loaded, pruned or exported."""


class RunError(PrunekitError):
    """A run directory, record, report input or tracking option that cannot be used."""


class DiskFullError(RunError):
    """A write failed because its filesystem is full (the temp is removed; what was there before is intact). Its
    own class: the caches catch it to warn and go on without the entry."""
