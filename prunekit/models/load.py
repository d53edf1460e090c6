"""Loading what a model source names: the dtype decision (the process and its device: prunekit.dist), the
``from_pretrained`` calls with the source's load arguments, and the one-time GGUF -> checkpoint conversion cache.

Nothing here asks which kind of source it has: each source (prunekit.models.sources) says how it is read.
"""

import json
import logging
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prunekit import dist
from prunekit.cache import ArtifactCache, Damaged
from prunekit.checkpoint import atomic_dir
from prunekit.errors import ModelError
from prunekit.schema import Checked

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSettings(Checked):
    """`model.*`: which weights, in which dtype (the source itself is resolved by `sources.resolve`)."""

    name_or_path: str = ""
    dtype: str = field(default="auto", metadata={"allowed": "auto, float32, bfloat16 or float16"})
    # dtype of the saved checkpoint: null = the source's stored dtype (whatever `dtype` computes in)
    save_dtype: str | None = field(default=None, metadata={"allowed": "null, float32, bfloat16 or float16"})
    revision: str | None = None
    device_map: str | None = None
    trust_remote_code: bool = False
    cache_dir: str | None = None  # converted pip/GGUF models (the preset: ${cache_dir}/models)
    _prefix: str = field(default="model.", repr=False, kw_only=True, compare=False)

    def check(self):
        if self.save_dtype is not None and self.save_dtype not in DTYPES:
            raise self.error(f"{self._prefix}save_dtype={self.save_dtype!r}: unknown dtype; allowed: null (the "
                             f"source's stored dtype), {', '.join(DTYPES)}")


# ---------------------------------------------------------------------------------------------- dtypes
def resolve_dtype(name: str, on: torch.device | None = None) -> torch.dtype:
    """``auto`` means bfloat16 on CUDA and on CPUs with native bf16 (measured by benchmarks/bf16_cpu.py: faster
    capture and decoding with the same pruning choices, see the README), float32 elsewhere."""
    if name == "auto":
        dev = on or dist.device()
        return torch.bfloat16 if dev.type == "cuda" or (dev.type == "cpu" and dist.cpu_has_bf16()) else torch.float32
    if name not in DTYPES:
        raise ModelError(f"model.dtype='{name}': unknown dtype; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


# ---------------------------------------------------------------------------------------------- from_pretrained
@contextmanager
def readable(source, what: str):
    """Any failure to read a model's files becomes one ModelError line naming the path and the reason (a missing
    or truncated weight file, a config that is not a JSON object, an unknown model_type, shapes that disagree)."""
    try:
        yield
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers/safetensors/gguf raise many types for damaged files
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        if isinstance(e, OSError):
            reason += source.not_found_hint
        raise ModelError(f"model.name_or_path='{source.value}': cannot load its {what} ({type(e).__name__}: "
                         f"{reason})") from e


def pretrained_config(source, cache_dir: str | Path, revision: str | None = None):
    path, extra = source.load_args(cache_dir)
    with readable(source, "config"):
        return AutoConfig.from_pretrained(path, revision=revision, **extra)


def pretrained_tokenizer(source, cache_dir: str | Path, revision: str | None = None):
    path, extra = source.load_args(cache_dir)
    with readable(source, "tokenizer"):
        return AutoTokenizer.from_pretrained(path, revision=revision, **extra)


def pretrained_weights(source, cache_dir: str | Path, **kwargs):
    """``from_pretrained`` with the source's load arguments; a GGUF is dequantized and its quantization config
    dropped, so it saves as a stock checkpoint."""
    path, extra = source.load_args(cache_dir)
    with readable(source, "weights"):
        model = AutoModelForCausalLM.from_pretrained(path, **extra, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None and "gguf_file" in extra:
        model.hf_quantizer.remove_quantization_config(model)
    return model


# ---------------------------------------------------------------------------------------------- public loaders
def load_config(source, cache_dir: str | Path, revision: str | None = None):
    """Only the config (cheap): lets the architecture and width be checked before weights load."""
    return source.config(cache_dir, revision)


def load_tokenizer(source, cache_dir: str | Path, revision: str | None = None):
    return source.tokenizer(cache_dir, revision)


def stored_dtype(source, config) -> torch.dtype | None:
    """The dtype a source's weights are stored in (None when its config names none)."""
    return source.stored_dtype(config)


def load_stored(source, cache_dir: str | Path, dtype: torch.dtype | None, *, revision: str | None = None,
                trust_remote_code: bool = False):
    """The source's weights on the CPU in ``dtype`` (None: as stored), no tokenizer: what a checkpoint saved in
    another dtype than the computation's is cut from (the pruning plan is applied to it again)."""
    return source.weights(cache_dir, dtype=dtype or source.as_stored, revision=revision,
                          trust_remote_code=trust_remote_code).eval()


def load(source, cache_dir: str | Path, *, dtype: str = "auto", device_map: str | None = None,
         revision: str | None = None, trust_remote_code: bool = False):
    """Load (model, tokenizer) in eval mode, placed on this process's device or by an Accelerate device_map."""
    tokenizer = load_tokenizer(source, cache_dir, revision)
    on = dist.device()
    torch_dtype = resolve_dtype(dtype, on)
    placement = {"device_map": device_map} if device_map else {}  # Accelerate's big-model placement
    model = source.weights(cache_dir, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code,
                           tokenizer=tokenizer, **placement)
    if not device_map:
        model.to(on)
    model.eval()
    log.info("loaded %s (%s) as %s on %s", source.value, source.kind, torch_dtype, on)
    return model, tokenizer


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded once for a job, with what every cache key and the checkpoint save read from it: the source
    it came from, the source's identity (ids and versions, or local files' sizes and mtimes) and the dtype it
    computes in (bf16 and fp32 give different numbers, so ``str(dtype)`` enters the capture, attribution,
    reference and source-evaluation keys)."""

    model: Any
    tokenizer: Any
    source: Any  # a prunekit.models.sources.ModelSource
    identity: dict
    dtype: torch.dtype


def load_model(source, settings) -> LoadedModel:
    """Load ``source`` (a resolved ModelSource) with the model group's ``settings`` (cache_dir, dtype, device_map,
    revision, trust_remote_code) into one LoadedModel."""
    model, tokenizer = load(source, settings.cache_dir, dtype=settings.dtype, device_map=settings.device_map,
                            revision=settings.revision, trust_remote_code=settings.trust_remote_code)
    return LoadedModel(model, tokenizer, source, source.identity(settings.revision), next(model.parameters()).dtype)


# ---------------------------------------------------------------------------------------------- GGUF conversion
MANIFEST = "prunekit-manifest.json"


@contextmanager
def _one_gguf_parse():
    """Within the block, every ``gguf.GGUFReader(path)`` of one path returns the same reader.

    transformers converts a GGUF by reading it three times (its config, its tokenizer, its weights), each through a
    new ``GGUFReader``, and gguf-py parses the metadata in Python: for Qwen2.5-Coder-0.5B's 151,936 tokens and
    151,387 merges that is about 6 s a parse, a third of the conversion (40 s -> 27 s on 2 cores with one parse,
    benchmarks/gguf_conversion.py). The reader is a read-only memory map, so sharing it changes no value (the
    converted logits equal those of the GGUF read directly: tests/test_code_offline.py). transformers imports the
    class from ``gguf`` inside the function that reads a file; were it to bind the name at import, this would only
    stop saving time."""
    import gguf

    stock, readers = gguf.GGUFReader, {}

    def shared_reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = stock(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = stock


def _gguf_to_dir(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF once and save it as a stock checkpoint (later loads take a fraction of a second)."""
    log.info("converting %s into %s (one time)", gguf, out)
    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model until the quantization config is dropped (weights are dense).
    model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp)


def _write_manifest(folder: Path) -> None:
    """Record every file's size, so a later truncation is noticed before the files are loaded."""
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"files": sizes}))


def _converted_ok(out: Path) -> bool:
    """A converted pip model is used only when every file its manifest lists has the size it was written with.
    A conversion made before manifests existed is checked once by reading its safetensors headers (which fails
    for a truncated file) and then given a manifest."""
    try:
        files = json.loads((out / MANIFEST).read_text())["files"]
        return all((out / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    weights = list(out.glob("*.safetensors")) if (out / "config.json").is_file() else []
    if not weights:
        return False
    try:
        from safetensors import safe_open

        for w in weights:
            with safe_open(str(w), framework="pt") as f:
                f.keys()
        _write_manifest(out)
        return True
    except Exception:  # noqa: BLE001 - any unreadable header means a damaged conversion
        return False


class ConvertedModels(ArtifactCache):
    """``<cache_dir>/<name>-<version>/``: a pip model's GGUF converted once into a stock checkpoint, used while its
    files match their manifest. The conversion writes the folder itself (atomically) and a failed one is an error:
    unlike the other caches, the run cannot go on without its entry."""

    kind = "converted model cache"
    again = "converting again"
    log = log

    def read(self, path: Path, expected=None) -> Path:
        if not _converted_ok(path):
            raise Damaged("files differ from its manifest")
        return path

    def write(self, path: Path, value, expected=None) -> None:
        """Nothing left to write: the conversion saved the folder."""


def converted(gguf: Callable[[], Path], out: Path) -> Path:
    """``out``: the GGUF that ``gguf()`` names, converted into a stock checkpoint once and reused while its files
    match their manifest. ``gguf`` is called only when a conversion is due (it may join a split file first); one
    process converts, the others wait on the entry's lock and then find it done."""
    out = Path(out)

    def convert() -> Path:
        _gguf_to_dir(gguf(), out)
        return out

    return ConvertedModels(out.parent).get(out.name, convert)[0]


def concat_parts(parts: list[Path], out: Path) -> None:
    """Concatenate a GGUF split across packages into one file (atomic).

    The temp name is unique per process: two processes materialising the same model at once each write their
    own copy and the second rename replaces the first with identical bytes (a shared name raced).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                while chunk := src.read(1 << 24):
                    f.write(chunk)
    os.replace(tmp, out)
