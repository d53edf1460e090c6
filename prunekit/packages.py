"""What this Python environment holds: installed pip packages, found without importing them (the one finder of
pip-shipped models, encoders and datasets), and the one Hugging Face offline switch."""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from prunekit.errors import ConfigError


def installed_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (its __init__ may be heavy or broken)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_dir(package: str, option: str) -> Path:
    """``installed_dir``, or a one-line error naming the option and the pip command that installs the package
    (the one pip-package finder: pip datasets, pip models, pip similarity encoders)."""
    found = installed_dir(package)
    if found is None:
        dist = package.replace("_", "-")
        raise ConfigError(f"{option}: needs the pip package '{dist}', which is not installed "
                          f"(pip install --no-deps {dist})")
    return found


@contextmanager
def offline_mode(active: bool):
    """Force Hugging Face offline mode for the block, so a local load never tries the network (the one switch).

    huggingface_hub and datasets read HF_HUB_OFFLINE once at import; transformers asks ``is_offline_mode()``,
    which reads huggingface_hub's constant. So the variable and both constants are set here, and restored.
    """
    if not active:
        yield
        return
    import huggingface_hub.constants as hub_constants

    ds_config = sys.modules["datasets"].config if "datasets" in sys.modules else None
    old_env, old_hub = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    old_ds = ds_config.HF_HUB_OFFLINE if ds_config is not None else None
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    if ds_config is not None:
        ds_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_hub
        if ds_config is not None:
            ds_config.HF_HUB_OFFLINE = old_ds
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
