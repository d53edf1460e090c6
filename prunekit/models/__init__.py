"""Models: where one comes from (``sources``: a class per form of ``model.name_or_path``) and how it loads
(``load``: the dtype, ``from_pretrained``, the GGUF conversion cache). ``mlp`` (prunekit.mlp) reads its MLP layers.

This module re-exports what the rest of prunekit calls, so ``from prunekit import models`` is the one import.
``models.load`` is the loading function; the module of that name is ``prunekit.models.load`` (import names from it).
"""

from prunekit.errors import ModelError
from prunekit.models.load import (
    DTYPES,
    LoadedModel,
    ModelSettings,
    load,
    load_config,
    load_model,
    load_stored,
    load_tokenizer,
    resolve_dtype,
    stored_dtype,
)
from prunekit.models.sources import (
    PATH_SOURCES,
    PIP_ENCODERS,
    PIP_MODELS,
    SOURCES,
    TINY_ARCHS,
    TOKENIZER_SOURCE,
    DirSource,
    GgufSource,
    HubSource,
    ModelSource,
    PipModel,
    PipSource,
    TinySource,
    gguf_file,
    identity,
    materialize,
    register,
    resolve,
    tiny_config,
    tiny_model,
)

__all__ = [
    "DTYPES", "PATH_SOURCES", "PIP_ENCODERS", "PIP_MODELS", "SOURCES", "TINY_ARCHS", "TOKENIZER_SOURCE", "DirSource",
    "GgufSource", "HubSource", "LoadedModel", "ModelError", "ModelSettings", "ModelSource", "PipModel", "PipSource",
    "TinySource", "gguf_file", "identity", "load", "load_config", "load_model", "load_stored", "load_tokenizer",
    "materialize", "register", "resolve",
    "resolve_dtype", "stored_dtype", "tiny_config", "tiny_model",
]
