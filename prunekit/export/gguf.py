"""Pruned checkpoint -> one GGUF file that llama.cpp (and ollama) load, written with the `gguf` package.

What goes in:
- The architecture's metadata, with `<arch>.feed_forward_length` = the kept width. For a GGUF-sourced model
  (`pip:` or a `.gguf` path, named by the run's `pruning.json`) the source file's own metadata is the start:
  general.*, tokenizer (tokens, merges, pre-tokenizer, special ids, chat template) and the architecture keys are
  copied, and only what pruning changed is replaced. A `tiny:` model (tests) takes its tokenizer from the GGUF its
  tokenizer came from; a hub or directory source takes it from the checkpoint's Hugging Face tokenizer files.
- Every tensor of the checkpoint under llama.cpp's names (gguf.TensorNameMap), in the chosen type; 1-D tensors
  (norms, biases) stay F32 as llama.cpp's converter keeps them. Llama-layout q/k rows are permuted into the order
  llama.cpp's rotary embedding expects (transformers' GGUF reader undoes it on load).

The `gguf` package quantizes F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 in Python, not the K-quants (Q4_K_M, ...):
those come from llama.cpp's own quantizer run on an f16 export, here through llama-cpp-python's binding of
`llama_model_quantize` when it is installed (an optional extra, built from its sdist), else with the
`llama-quantize` command. K-quants need rows that are a multiple of 256; the report's `k_quant_fallbacks` lists
the tensors the quantizer stores in another type instead.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from prunekit.errors import ModelError, PrunekitError

# torch, transformers and prunekit.checkpoint are imported where used: a bad option is refused in about a second
# instead of after torch's ~10 s import (on a busy 2-core machine)

log = logging.getLogger(__name__)


# transformers model_type -> llama.cpp architecture. Mistral is llama in llama.cpp (its converter does the same);
# transformers' GGUF reader maps it back to mistral when general.name says "mistral".
ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
         "qwen3": gguf.MODEL_ARCH.QWEN3}
# Architectures prunekit prunes (prunekit/mlp.py) that this exporter does not write yet, and why.
NOT_EXPORTED = {
    "gemma": "llama.cpp needs Gemma's norm weights shifted by +1 and transformers' GGUF reader has no gemma (v1) "
             "loader to check a round trip against",
    "gemma2": "Gemma 2's norm shift and soft-capping keys are not written yet",
    "gemma3_text": "Gemma 3's norm shift and sliding-window keys are not written yet",
    "phi3": "Phi-3's fused qkv/gate_up tensors and its sliding-window and LongRoPE factor keys are not written yet",
}
PERMUTED_QK = {"llama", "mistral"}  # HF rotary layout (halves) -> llama.cpp's (interleaved pairs)

TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
         "q5_0": Q.Q5_0, "q5_1": Q.Q5_1}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
              "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1}
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
# Written from the checkpoint, never copied from the source file: the tensors' type, and what pruning changed.
_NOT_COPIED = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE, gguf.Keys.General.QUANTIZATION_VERSION)


def check_type(name: str) -> Q | None:
    """`--type`: a type the gguf package writes, or (None) a K-quant that llama.cpp's quantizer writes, which needs
    llama-cpp-python; without it the error gives the llama-quantize command."""
    if name in K_QUANTS:
        if _llama_cpp() is None:
            raise ModelError(f"--type {name}: the gguf package ({importlib.metadata.version('gguf')}) cannot quantize "
                              f"to K-quants in Python (it writes {', '.join(TYPES)}) and llama-cpp-python is not "
                              f"installed; install it (pip install llama-cpp-python==0.3.36, built from its sdist), or "
                              f"export --type f16 and run llama.cpp's `llama-quantize model-f16.gguf "
                              f"model-{name}.gguf {name.upper()}`")
        return None
    if name not in TYPES:
        raise ModelError(f"--type {name}: unknown type; allowed: {', '.join(TYPES)}, {', '.join(K_QUANTS)} "
                          f"(K-quants with llama-cpp-python installed)")
    return TYPES[name]


def _llama_cpp():
    """llama-cpp-python, or None: an optional dependency (no wheel on the registry; its sdist builds llama.cpp)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


def amx_backend_problem(llama_cpp) -> str | None:
    """Why this llama-cpp-python build cannot be trusted to run a model in-process, or None. ggml's AMX backend,
    compiled in when llama.cpp is built with GGML_NATIVE=ON on a CPU with AMX, segfaults in the first matmul of a
    quantized model on some machines (llama.cpp #20824, unfixed upstream): seen here on 2 cores of an AMX Xeon,
    2026-12-03, for Q4_K_M exports of a tiny model and of Qwen2.5-Coder-0.5B. A segfault takes the whole Python
    process with it, so callers check first. The quantizer itself (_llama_quantize) does not use the backend."""
    if "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode():
        return None
    return ("this llama-cpp-python was built with ggml's AMX backend, which segfaults on quantized models "
            "(llama.cpp #20824); rebuild it without AMX as docs/export.md#llamacpp-from-the-package-registry shows")


def _llama_quantize(src: Path, out: Path, name: str) -> None:
    """llama.cpp's own quantizer (what `llama-quantize` runs), through llama-cpp-python's binding: the gguf
    package has no K-quant encoder, and a hand-written one would be a second implementation of llama.cpp's format
    to keep in step with it."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}")
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise ModelError(f"--type {name}: llama.cpp's quantizer failed on {src} (see its log above)")


@dataclass
class ExportReport:
    """What was written: the file, per-tensor types, and the tensors K-quants would not cover."""

    path: Path
    arch: str
    kept_width: int
    type: str
    tensors: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)  # name -> (type, numpy shape)
    fell_back: list[str] = field(default_factory=list)  # row length not a multiple of the block: stored as F16
    k_quant_fallbacks: list[str] = field(default_factory=list)  # row length not a multiple of 256

    def summary(self) -> str:
        kinds = collections.Counter(kind for kind, _ in self.tensors.values())
        lines = [f"wrote {self.path} ({self.arch}, feed_forward_length {self.kept_width}, {self.type}, "
                 f"{len(self.tensors)} tensors, {self.path.stat().st_size / 2**20:.1f} MiB)",
                 "tensor types: " + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())]
        if self.fell_back:
            lines.append(f"stored as F16 (row length not a multiple of the {self.type} block): {_names(self.fell_back)}")
        if self.k_quant_fallbacks and self.type in K_QUANTS:  # the type counts above show what they became
            lines.append(f"not K-quant (rows not a multiple of {gguf.QK_K}, so llama.cpp's quantizer chose another "
                         f"type): {_names(self.k_quant_fallbacks)}")
        elif self.k_quant_fallbacks:
            lines.append(f"K-quants (llama-quantize Q4_K_M etc.) need rows that are a multiple of {gguf.QK_K}; these "
                         f"{len(self.k_quant_fallbacks)} tensors would fall back to another type: "
                         f"{_names(self.k_quant_fallbacks)}")
        else:
            lines.append(f"every 2-D tensor's row length is a multiple of {gguf.QK_K}: K-quants apply to all of them")
        return "\n".join(lines)


def _names(names: list[str], limit: int = 6) -> str:
    kinds = sorted({n.split(".")[2] if n.startswith("blk.") else n.rsplit(".", 1)[0] for n in names})
    return f"{', '.join(kinds[:limit])}{' ...' if len(kinds) > limit else ''} ({len(names)} tensors)"


# ---------------------------------------------------------------------------------------------- sources
def _source_gguf(record: dict | None, cache_dir: str | Path) -> tuple[Path | None, bool]:
    """(the GGUF whose metadata to start from, whether it is the model's own file or only its tokenizer's)."""
    from prunekit import models

    name = str((record or {}).get("source_model") or "")
    if not name.startswith(("pip:", "tiny:")) and not name.endswith(".gguf"):
        return None, False  # a hub id or a directory: the checkpoint's own tokenizer files are the source
    try:
        source = models.resolve(name)
    except PrunekitError as e:
        raise ModelError(f"pruning.json names source_model={name!r}, whose GGUF metadata cannot be read: {e}") from None
    own = source.gguf_file(cache_dir)
    if own is not None:
        return own, True
    return source.tokenizer_source.gguf_file(cache_dir), False  # a tiny model: its tokenizer's GGUF


def _load_state(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir}: no *.safetensors weights (is it a prunekit <run>/model directory?)")
    state = {}
    for f in files:
        state.update(load_file(f))
    return state


# ---------------------------------------------------------------------------------------------- metadata
@functools.lru_cache(maxsize=4)
def _source_fields(path: str, size: int, mtime_ns: int) -> dict[str, tuple]:
    """The source file's key/values: name -> (value, type, sub_type). Cached per file version in the process:
    GGUFReader parses a 49k-token vocabulary string by string (~14 s here), the tensors are not read."""
    reader = gguf.GGUFReader(path)
    return {f.name: (f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
            for f in reader.fields.values() if not f.name.startswith("GGUF.")}


def read_fields(path: Path) -> dict[str, tuple]:
    stat = path.stat()
    return _source_fields(str(path), stat.st_size, stat.st_mtime_ns)


def _copy_fields(writer: gguf.GGUFWriter, fields: dict[str, tuple], keep) -> None:
    """Copy the source file's key/values that `keep(name)` accepts (as gguf's own gguf_new_metadata script does)."""
    for name, (value, vtype, sub_type) in fields.items():
        if name not in _NOT_COPIED and keep(name):
            writer.add_key_value(name, value, vtype, sub_type=sub_type)


def _field(fields: dict[str, tuple], key: str):
    return fields[key][0] if key in fields else None


def _check_same_model(reader: dict[str, tuple], arch: str, config) -> None:
    """The source file must describe this checkpoint apart from the MLP width (else its metadata would lie)."""
    expect = {"block_count": config.num_hidden_layers, "embedding_length": config.hidden_size,
              "attention.head_count": config.num_attention_heads,
              "attention.head_count_kv": config.num_key_value_heads}
    for key, value in expect.items():
        got = _field(reader, f"{arch}.{key}")
        if got is not None and got != value:
            raise ModelError(f"the source GGUF says {arch}.{key}={got} but the checkpoint has {value}: "
                              "pruning.json's source_model is not this checkpoint's source")


def _write_arch_params(writer: gguf.GGUFWriter, config, name: str) -> None:
    """The architecture keys llama.cpp's loaders read, from the transformers config (as llama.cpp's converter)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)


def _rope_theta(config) -> float:
    # transformers 5 keeps rope_theta and any scaling in rope_parameters (rope_scaling is an alias of it)
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ModelError(f"rope scaling {kind!r} is not exported yet; only plain RoPE models (rope_type default)")
    return float(theta)


def _write_hf_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer from Hugging Face files, with gguf.vocab (no pre-tokenizer name: llama.cpp then
    uses its default pre-tokenizer and says so)."""
    try:
        vocab = gguf.vocab.BpeVocab(model_dir)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ModelError(f"{model_dir}: no byte-level BPE tokenizer gguf can read ({e}); only GGUF-sourced models "
                          "and BPE tokenizers are exported") from None
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text)
        types.append(kind)
    if len(tokens) > vocab_size:
        raise ModelError(f"{model_dir}: tokenizer has {len(tokens)} tokens, the embedding {vocab_size} rows")
    for i in range(len(tokens), vocab_size):  # embedding rows no token uses (as llama.cpp's converter pads)
        tokens.append(f"[PAD{i}]".encode())
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)
    log.warning("tokenizer taken from %s without a llama.cpp pre-tokenizer name (tokenizer.ggml.pre): llama.cpp "
                "uses its default pre-tokenizer, which may split some text differently", model_dir)


# ---------------------------------------------------------------------------------------------- tensors
def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (first half, second half of each head) -> llama.cpp's (interleaved pairs), per head; the
    inverse of transformers' LlamaTensorProcessor._reverse_permute_weights."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_data(name: str, w: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q, bool]:
    """(data, type, fell back): 1-D tensors F32; a row length the block does not divide: F16 (as llama.cpp's
    converter does)."""
    if w.ndim == 1 or qtype == Q.F32:
        return w.astype(np.float32), Q.F32, False
    if qtype == Q.F16:
        return w.astype(np.float16), Q.F16, False
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block:
        return w.astype(np.float16), Q.F16, True
    return gguf.quants.quantize(w, qtype), qtype, False


def _tensors(state: dict, config, arch) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every checkpoint tensor, llama q/k permuted; an unknown tensor is an error
    (never dropped silently)."""
    import torch

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for hf_name, t in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"checkpoint tensor {hf_name} has no llama.cpp name for {gguf.MODEL_ARCH_NAMES[arch]}")
        w = t.to(torch.float32).numpy()
        if config.model_type in PERMUTED_QK and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            w = _permute_qk(w, config.num_attention_heads)
        elif config.model_type in PERMUTED_QK and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            w = _permute_qk(w, config.num_key_value_heads)
        out.append((name, w))
    return out


# ---------------------------------------------------------------------------------------------- export
def default_out(model_dir: Path, type_name: str) -> Path:
    """`<run>/model-<type>.gguf`, beside the checkpoint."""
    return model_dir.parent / f"{model_dir.name}-{type_name}.gguf"


def export(model_dir: str | Path, type_name: str = "f16", out: str | Path | None = None,
           cache_dir: str | Path | None = None) -> ExportReport:
    """Write `model_dir` (a prunekit checkpoint) as one GGUF file; returns what was written."""
    type_name = str(type_name).lower()  # Q8_0 as llama.cpp spells it, or q8_0
    qtype = check_type(type_name)
    model_dir = Path(model_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a checkpoint directory (no config.json); pass <run>/model")
    out = Path(out).expanduser() if out else default_out(model_dir, type_name)
    if out.suffix != ".gguf":
        raise ModelError(f"--out {out}: must end in .gguf")
    if qtype is None:
        return _export_k_quant(model_dir, type_name, out, cache_dir)
    from transformers import AutoConfig

    from prunekit.checkpoint import read_json
    from prunekit.runs.layout import PRUNING_FILE

    config = AutoConfig.from_pretrained(model_dir)
    model_type = config.model_type
    if model_type in NOT_EXPORTED:
        raise ModelError(f"{model_dir}: architecture '{model_type}' is not exported to GGUF: "
                          f"{NOT_EXPORTED[model_type]}; exported: {', '.join(ARCHS)}")
    if model_type not in ARCHS:
        raise ModelError(f"{model_dir}: architecture '{model_type}' has no GGUF export; exported: {', '.join(ARCHS)}")
    arch = ARCHS[model_type]
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    record_file = model_dir.parent / PRUNING_FILE
    record = read_json(record_file) if record_file.is_file() else None
    cache_dir = cache_dir or os.environ.get("PRUNEKIT_CACHE", "~/.cache/prunekit")
    source, own = _source_gguf(record, Path(cache_dir).expanduser() / "models")

    state = _load_state(model_dir)
    kept_width = config.intermediate_size
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, arch_name)
    if source is not None:
        reader = read_fields(source)
        if own and _field(reader, gguf.Keys.General.ARCHITECTURE) == arch_name:
            _check_same_model(reader, arch_name, config)
            _copy_fields(writer, reader, lambda k: k != f"{arch_name}.feed_forward_length")
        else:  # a tiny model, or a source of another architecture name: only the tokenizer is the source's
            _write_arch_params(writer, config, _name(model_type, record))
            _copy_fields(writer, reader, lambda k: k.startswith("tokenizer."))
    else:
        _write_arch_params(writer, config, _name(model_type, record))
        _write_hf_tokenizer(writer, model_dir, config.vocab_size)
    writer.add_feed_forward_length(kept_width)
    writer.add_file_type(FILE_TYPES[type_name])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    report = ExportReport(out, arch_name, kept_width, type_name)
    for name, w in _tensors(state, config, arch):
        data, written, fell_back = _tensor_data(name, w, qtype)
        writer.add_tensor(name, data, raw_dtype=written)
        report.tensors[name] = (written.name, tuple(w.shape))
        if fell_back:
            report.fell_back.append(name)
        if w.ndim == 2 and w.shape[-1] % gguf.QK_K:
            report.k_quant_fallbacks.append(name)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)  # a failed or killed export never leaves a half-written FILE under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _export_k_quant(model_dir: Path, type_name: str, out: Path, cache_dir) -> ExportReport:
    """An f16 export (temporary), then llama.cpp's quantizer into `out`; the report lists the types it chose."""
    f16 = out.with_name(f".{out.name}.{os.getpid()}.f16.gguf")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        base = export(model_dir, "f16", f16, cache_dir)
        _llama_quantize(f16, tmp, type_name)
        os.replace(tmp, out)  # as export(): never a half-written file under the final name
    finally:
        f16.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    report = ExportReport(out, base.arch, base.kept_width, type_name, k_quant_fallbacks=base.k_quant_fallbacks)
    for t in gguf.GGUFReader(out).tensors:  # GGUF lists dimensions innermost first; the report uses numpy's order
        report.tensors[t.name] = (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)))
    return report


def _name(model_type: str, record: dict | None) -> str:
    """general.name; it keeps the model type's name in it (transformers' reader tells mistral from llama by it)."""
    source = str((record or {}).get("source_model") or model_type).split(":")[-1].rstrip("/").split("/")[-1]
    return f"{source} pruned" if model_type in source.lower() else f"{model_type} {source} pruned"
