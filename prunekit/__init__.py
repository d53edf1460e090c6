
from pathlib import Path as _Path

from omegaconf import OmegaConf as _OmegaConf

# `${prunekit_root:}` in conf/: the checkout prunekit runs from, so data_dir's default (shared/data beside it) does not
# depend on the working directory. Registered on import, so every composition (entry scripts, tests) has it.
_OmegaConf.register_new_resolver("prunekit_root", lambda: str(_Path(__file__).resolve().parents[1]), replace=True)

# The schemas the YAML presets extend (eval, lora, capture, prompt sets) are the owners' dataclasses, registered by
# importing prunekit.config (the entries, the recipes and tests/conftest.py do): `import prunekit` itself stays
# light (no torch), so a data or report tool does not pay for the model stack.
