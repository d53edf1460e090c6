"""Capture: per-prompt mean |SwiGLU intermediate| (the input of ``down_proj``) and streaming per-neuron statistics.

Hooks read the tensor ``down_proj`` already receives, so nothing is recomputed. The forward runs through the
decoder only (``model.get_decoder()``): the LM head's logits are never needed for capture.
"""

import dataclasses
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from prunekit import text
from prunekit.cache import ArtifactCache, Damaged, digest
from prunekit.checkpoint import atomic_torch_save
from prunekit.dist import process_state
from prunekit.mlp import mlp_layers
from prunekit.schema import Checked
from prunekit.scoring import RunningStats, TokenStats, merge_all

log = logging.getLogger(__name__)


# Bumped when the cached statistics change shape or meaning (2: token-level sums for the importance baselines).
FORMAT = 2


@dataclass
class CaptureSettings(Checked):
    """`capture.*`: how activations are recorded (the defaults are the paper's). Its defaults are the
    `capture_schema` node (config.register) that prune.yaml's `capture` extends. What changes the captured numbers
    enters the cache key (batch size does not, beyond float rounding)."""

    # prompts per capture set: null keeps each task preset's own counts (math/code: 800 each, the paper's;
    # math_offline and the *_local presets: 200 target + 100 per distractor set); an integer sets every capture
    # set's n (the presets read it as `${capture_n:<their own n>}`)
    n: int | None = field(default=None, metadata={"allowed": "null or an integer >= 1"})
    # tokens per prompt (longer prompts are truncated)
    max_length: int = field(default=1024, metadata={"allowed": "an integer >= 1"})
    # prompts per forward pass (does not change the statistics)
    batch_size: int = field(default=8, metadata={"allowed": "an integer >= 1"})
    # false: raw prompts, as the paper; true: wrap each prompt in the model's chat template
    chat_template: bool = False
    # leave each prompt's first k tokens out of the statistics (0: all tokens, as the paper)
    skip_first: int = field(default=0, metadata={"allowed": "an integer >= 0"})
    # where the activation statistics are cached (the preset: ${cache_dir}/activations); not part of the key
    cache_dir: str | None = None
    _prefix: str = field(default="capture.", repr=False, kw_only=True, compare=False)

    def check(self):
        self._at_least("n", 1, allow_none=True)
        self._at_least("max_length", 1)
        self._at_least("skip_first", 0)
        self._at_least("batch_size", 1)


@contextmanager
def down_proj_inputs(model):
    """Hooks that record, per layer, the per-prompt masked mean of |down_proj input| for the current batch.

    Yields ``(buffer, set_mask)``: call ``set_mask(attention_mask)`` before each forward; afterwards
    ``buffer[layer]`` holds a [batch, d_ff] float32 tensor and ``buffer[("tokens", layer)]`` the batch's
    token-level sums of x and x^2 over non-padding tokens ([d_ff] each, float64), for the importance baselines.
    """
    state = {"mask": None, "weights": None}
    buffer: dict = {}

    def set_mask(mask: torch.Tensor) -> None:
        mask = mask.float()
        state["mask"] = mask.unsqueeze(1)  # [B, 1, T]
        state["weights"] = (mask / mask.sum(1, keepdim=True).clamp(min=1)).unsqueeze(1)  # [B, 1, T]
        buffer.clear()

    def make_hook(layer: int):
        def hook(_module, args):
            x = args[0].float()
            # [B,1,T] @ [B,T,F] -> [B,F]: mean over non-padding tokens, in fp32 whatever the model dtype.
            w, m = state["weights"].to(device=x.device), state["mask"].to(device=x.device)
            buffer[layer] = torch.bmm(w, x.abs()).squeeze(1)
            buffer[("tokens", layer)] = (torch.bmm(m, x).sum((0, 1)).double(), torch.bmm(m, x * x).sum((0, 1)).double())

        return hook

    handles = [mlp.down.register_forward_pre_hook(make_hook(i)) for i, mlp in enumerate(mlp_layers(model))]
    try:
        yield buffer, set_mask
    finally:
        for h in handles:
            h.remove()


def _batches(tokenizer, prompts: list[str], settings: CaptureSettings):
    """Right-padded batches (real tokens keep their unpadded positions), shortest first: padding waste stays low,
    and the order does not change the statistics."""
    ids = text.encode(tokenizer, prompts, settings.chat_template, settings.max_length)
    pad = text.pad_id(tokenizer)
    for group in text.length_batches([len(x) for x in ids], settings.batch_size, order="shortest"):
        yield text.collate([ids[i] for i in group], pad)


def gather_stats(local: RunningStats) -> RunningStats:
    """Combine every process's statistics (counts, means, M2: never per-prompt tensors) in rank order."""
    state = process_state()
    if state.num_processes == 1:
        return local
    return merge_all(gather_object([local]))


@torch.no_grad()
def statistics(model, tokenizer, prompt_sets: dict[str, list[str]], settings: CaptureSettings) -> dict[str, RunningStats]:
    """Streaming statistics per prompt set (e.g. ``target``, ``distractor/squad``), shapes [layers, d_ff].

    Under ``accelerate launch --num_processes N`` each process captures a contiguous shard of every set and the
    statistics are merged exactly, so every process ends with the same result as one process would.
    """
    state = process_state()
    layers = mlp_layers(model)
    d_ff = layers[0].d_ff
    decoder = model.get_decoder()
    device = next(model.parameters()).device
    results = {}
    with down_proj_inputs(model) as (buffer, set_mask):
        for name, all_prompts in prompt_sets.items():
            stats = RunningStats.empty(len(layers), d_ff)
            with state.split_between_processes(list(all_prompts)) as prompts:
                n_batches = -(-len(prompts) // settings.batch_size)
                batches = _batches(tokenizer, prompts, settings) if prompts else []
            for batch in tqdm(batches, total=n_batches, desc=f"capture {name}", disable=not state.is_local_main_process):
                batch = {k: v.to(device) for k, v in batch.items()}
                counted = batch["attention_mask"].clone()
                counted[:, : settings.skip_first] = 0  # right padding: a prompt's first tokens are columns 0..k-1
                set_mask(counted)
                decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                values = torch.stack([buffer[i].cpu() for i in range(len(layers))], dim=1)  # [B, L, F]
                tokens = TokenStats(int(counted.sum()),
                                    torch.stack([buffer[("tokens", i)][0].cpu() for i in range(len(layers))]),
                                    torch.stack([buffer[("tokens", i)][1].cpu() for i in range(len(layers))]))
                stats = stats.merge(dataclasses.replace(RunningStats.of(values), tokens=tokens))
            results[name] = stats = gather_stats(stats)
            log.info("captured %d prompts of set '%s'", stats.count, name)
    return results


def cache_key(model_identity: dict, prompt_sets: dict[str, list[str]], specs: dict, settings: CaptureSettings, dtype: str) -> str:
    """Key of the activation cache: model identity + prompt-set specs and texts + capture settings."""
    payload = {
        "format": FORMAT,
        "model": model_identity,
        "specs": specs,
        "texts": digest(prompt_sets, None),
        "max_length": settings.max_length,
        "chat_template": settings.chat_template,
        "skip_first": settings.skip_first,
        **text.key_note(settings.chat_template),
        "dtype": dtype,
    }
    return digest(payload)


def _problem(data, expected: dict) -> str | None:
    """Why a loaded cache entry cannot be used for ``expected`` ({"sets": {name: prompts}, "layers", "d_ff"}),
    or None. A loadable-but-wrong file (other shapes, a missing set, NaN, count 0) must never change the pruning."""
    if not isinstance(data, dict):
        return f"not a mapping of prompt sets ({type(data).__name__})"
    manifest = data.get("_manifest") or {}
    if manifest.get("format") != FORMAT:
        return f"format {manifest.get('format')!r}, expected {FORMAT}"
    sets = {k: v for k, v in data.items() if k != "_manifest"}
    if sorted(sets) != sorted(expected["sets"]):
        return f"prompt sets {sorted(sets)}, expected {sorted(expected['sets'])}"
    shape = (expected["layers"], expected["d_ff"])
    for name, d in sets.items():
        try:
            stats = RunningStats.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            return f"set {name!r} is malformed ({e})"
        if stats.count != expected["sets"][name]:
            return f"set {name!r} holds {stats.count} prompts, expected {expected['sets'][name]}"
        if stats.tokens is None or stats.tokens.count < 1:
            return f"set {name!r} has no token statistics"
        tensors = [stats.mean, stats.m2, stats.tokens.sum, stats.tokens.sumsq]
        if any(not isinstance(t, torch.Tensor) or tuple(t.shape) != shape for t in tensors):
            return f"set {name!r} has shapes {[tuple(getattr(t, 'shape', ())) for t in tensors]}, expected {shape}"
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            return f"set {name!r} holds NaN or infinite values"
    return None


class ActivationCache(ArtifactCache):
    """``<root>/<key>.pt``: the statistics of every prompt set, with a manifest (format, sets and counts, shape)."""

    kind = "activation cache"
    version = FORMAT
    suffix = ".pt"
    damaged = "is damaged or does not match this run"
    again = "capturing again"
    hit_message = "loaded activation statistics from cache %s"
    saved_message = "saved activation statistics to cache %s"
    log = log

    def read(self, path: Path, expected: dict) -> dict[str, RunningStats]:
        data = torch.load(path, weights_only=True)
        problem = _problem(data, expected)
        if problem is not None:
            raise Damaged(problem)
        return {name: RunningStats.from_dict(d) for name, d in data.items() if name != "_manifest"}

    def write(self, path: Path, stats: dict[str, RunningStats], expected=None) -> None:
        first = next(iter(stats.values()))
        manifest = self.manifest(sets={n: s.count for n, s in stats.items()}, shape=list(first.mean.shape))
        atomic_torch_save({"_manifest": manifest, **{name: s.to_dict() for name, s in stats.items()}}, path)


def expected_entry(model, sets: dict[str, list[str]]) -> dict:
    """What a cache entry for ``sets`` on ``model`` must hold: the sets with their prompt counts, and the shape."""
    layers = mlp_layers(model)
    return {"sets": {n: len(p) for n, p in sets.items()}, "layers": len(layers), "d_ff": layers[0].d_ff}


def cached_statistics(model, tokenizer, sets: dict[str, list[str]], key: str, settings: CaptureSettings,
                      cache_dir: str | Path) -> tuple[dict[str, RunningStats], bool]:
    """``statistics`` from the activation cache when its entry for ``key`` is usable, else captured now and
    cached. Returns (stats, was_cached). Parallel jobs of a sweep wait on the entry's lock, so a set is captured
    once; under ``accelerate launch`` every rank takes part in the capture (no lock) and the main one writes."""

    def capture():
        log.info("capturing activations (cache key %s)", key)
        return statistics(model, tokenizer, sets, settings)

    return ActivationCache(cache_dir).get(key, capture, expected_entry(model, sets), collective=True)


def load_cached(path: Path, expected: dict) -> dict[str, RunningStats] | None:
    """Statistics saved at ``path`` (``<cache_dir>/<key>.pt``), verified against ``expected``; None when absent.
    A damaged or mismatched entry is logged with its path, moved aside and None is returned."""
    path = Path(path)
    return ActivationCache(path.parent).load(path.name.removesuffix(ActivationCache.suffix), expected)


def save_cached(path: Path, stats: dict[str, RunningStats]) -> None:
    """Write the statistics at ``path``; a failed write (full disk) is logged and leaves the run going."""
    path = Path(path)
    ActivationCache(path.parent).save(path.name.removesuffix(ActivationCache.suffix), stats)
