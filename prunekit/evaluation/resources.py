"""Resource measurements for the paper's Table 5: parameters, checkpoint size, peak memory, tokens/s at batch 1.

Sizes are reported in GiB (2**30 bytes), as `torch.cuda.max_memory_allocated() / 1024**3` gives in the paper.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import torch
from tqdm.auto import tqdm
from transformers.generation.streamers import BaseStreamer

from prunekit import text
from prunekit.errors import ConfigError
from prunekit.evaluation.generation import eos_ids, greedy_config

log = logging.getLogger(__name__)

GIB = 2**30
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once, as `model.parameters()` deduplicates)."""
    return sum(p.numel() for p in model.parameters())


def weight_files(path: str | Path) -> list[Path]:
    """Weight files of a saved checkpoint: the file itself, or the *.safetensors/*.bin/*.pt/*.pth/*.gguf in a dir."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"checkpoint path {str(path)!r} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ConfigError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in checkpoint dir {str(path)!r}")
    return files


def checkpoint_size_bytes(path: str | Path) -> int:
    """Total bytes of the weight files of a saved checkpoint (config, tokenizer and index files excluded)."""
    return sum(p.stat().st_size for p in weight_files(path))


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def _proc_status_kib(field: str) -> int | None:
    """A `VmXXX:  N kB` value of /proc/self/status (Linux), None where /proc is not available."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory(device=None) -> bool:
    """Start a new peak-memory window; returns whether the platform could reset it.

    CUDA: `torch.cuda.reset_peak_memory_stats`. CPU on Linux: writing 5 to /proc/self/clear_refs resets the
    peak RSS (VmHWM). Elsewhere (e.g. macOS) ru_maxrss cannot be reset: the peak then covers the whole process.
    """
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return True
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        log.warning("peak RSS cannot be reset on this platform: peak memory covers the whole process lifetime")
        return False


def peak_memory_gb(device=None) -> float:
    """Peak memory in GiB: CUDA peak allocated by torch, or on CPU the peak RSS of this process since the last reset."""
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) / GIB
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024 / GIB
    # ru_maxrss: kilobytes on Linux, bytes on macOS; never reset.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024) / GIB


def current_memory_gb(device=None) -> float:
    """Memory in use now, in GiB: CUDA allocated by torch, or on CPU the current RSS (e.g. right after loading)."""
    dev = _device(device)
    if dev.type == "cuda":
        return torch.cuda.memory_allocated(dev) / GIB
    return psutil.Process().memory_info().rss / GIB


class _TokenClock(BaseStreamer):
    """Streamer that timestamps each new token pushed by `model.generate` (the first push is the prompt)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []
        self.n_tokens = 0
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:  # generate pushes the prompt once before decoding starts
            self._prompt_seen = True
            return
        _sync(self.device)
        self.times.append(time.perf_counter())
        self.n_tokens += value.numel()

    def end(self):
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def throughput(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 64, warmup: int = 1,
               chat_template: bool = False, progress: bool = True) -> dict:
    """Batch-1 greedy generation speed over a fixed prompt set (paper Table 5), with a prefill/decode split.

    tokens_per_s = new tokens / total generate time; prefill = prompt tokens / time of one forward over each
    prompt; decode = tokens after the first / time from the first new token to the last. New tokens include
    the EOS token when the model emits one (it cost a decoding step).
    """
    if not prompts:
        raise ConfigError("throughput needs at least one prompt")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be a non-negative integer, got {warmup!r}")
    dev = model.device
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    cfg = greedy_config(model, max_new_tokens, pad, eos)
    encoded = [torch.tensor([ids], device=dev) for ids in text.encode(tokenizer, list(prompts), chat_template)]
    for _ in range(warmup):
        model.generate(input_ids=encoded[0], attention_mask=torch.ones_like(encoded[0]), generation_config=cfg)
    prompt_tokens = new_tokens = decode_tokens = 0
    prefill_s = generate_s = decode_s = 0.0
    for ids in tqdm(encoded, desc="throughput", disable=not progress, unit="prompt"):
        mask = torch.ones_like(ids)
        _sync(dev)
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, use_cache=True)
        _sync(dev)
        prefill_s += time.perf_counter() - t0
        clock = _TokenClock(dev)
        _sync(dev)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg, streamer=clock)
        _sync(dev)
        t1 = time.perf_counter()
        generate_s += t1 - t0
        n_new = out.shape[1] - ids.shape[1]
        if n_new != clock.n_tokens:  # both count the same decoding steps; disagreement means a transformers change
            raise RuntimeError(f"streamer saw {clock.n_tokens} new tokens but generate returned {n_new}")
        prompt_tokens += ids.shape[1]
        new_tokens += n_new
        if n_new > 1:
            decode_tokens += n_new - 1
            decode_s += clock.times[-1] - clock.times[0]
    if decode_tokens == 0:
        log.warning("every generation stopped after one token: decode_tokens_per_s is undefined (nan)")
    return {
        "resources/tokens_per_s": new_tokens / generate_s,
        "resources/prefill_tokens_per_s": prompt_tokens / prefill_s,
        "resources/decode_tokens_per_s": decode_tokens / decode_s if decode_tokens else math.nan,
        "resources/new_tokens": new_tokens,
        "resources/prompt_tokens": prompt_tokens,
        "resources/throughput_prompts": len(prompts),
    }


def model_resources(model, checkpoint: str | Path | None = None) -> dict:
    """Static resource metrics: parameter count, checkpoint size (if saved) and memory now / peak since reset."""
    dev = model.device
    out = {
        "resources/params": count_parameters(model),
        "resources/peak_mem_gb": peak_memory_gb(dev),
        "resources/current_mem_gb": current_memory_gb(dev),
    }
    if checkpoint is not None:
        out["resources/checkpoint_gb"] = checkpoint_size_bytes(checkpoint) / GIB
    return out


__all__ = [
    "GIB", "count_parameters", "weight_files", "checkpoint_size_bytes",
    "reset_peak_memory", "peak_memory_gb", "current_memory_gb", "throughput", "model_resources",
]
