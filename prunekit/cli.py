"""What the entry scripts share: bad input becomes a one-line error and exit code 2, not a traceback."""

import logging
import sys

log = logging.getLogger("prunekit")


def is_usage_error(exc: BaseException) -> bool:
    """prunekit raises ValueError subclasses (RatioError, DataError, ModelError, ...) for bad options."""
    return isinstance(exc, ValueError) and type(exc).__module__.startswith("prunekit")


def guarded(fn, *args, **kwargs):
    """Call a recipe; a usage error prints ``error: <message>`` and exits with status 2."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a usage error
        if not is_usage_error(exc):
            raise
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
