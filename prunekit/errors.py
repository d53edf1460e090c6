"""One base for every user-facing prunekit error: bad options, data, models or files. The entry scripts and the
report catch this class (and only it) and print one line, `error: <message>`, with exit status 2."""


class PrunekitError(ValueError):
    """Bad input the user can fix; the message names the option or file and what is allowed."""


class ModelError(PrunekitError):
    """A model option that cannot be resolved or loaded."""


class DataError(PrunekitError):
    """A prompt-set spec or its data is unusable; the one-line message names the config option."""
