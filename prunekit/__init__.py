
from pathlib import Path as _Path

from omegaconf import OmegaConf as _OmegaConf

# `${prunekit_root:}` in conf/: the checkout prunekit runs from, so data_dir's default (shared/data beside it) does not
# depend on the working directory. Registered on import, so every composition (entry scripts, tests) has it.
_OmegaConf.register_new_resolver("prunekit_root", lambda: str(_Path(__file__).resolve().parents[1]), replace=True)

# The schemas (prunekit.config: eval, lora, capture, prompt sets) the YAML presets extend.
from prunekit import config as _config  # noqa: E402

_config.register()
