"""Integrated-gradients attribution of gated-MLP neurons and the strategies built on it (method 2, arXiv 2507.09185).

Attribution of gate neuron i of layer l for one prompt: integrated gradients of the model's top output logit at
the last prompt position while the layer's gate pre-activations are scaled by alpha in [0, 1] (one straight path
per layer, all neurons of the layer scaled together, as the knowledge-neurons implementations do). Scaling the
output of ``gate_proj`` by a per-neuron scale s equals scaling the neuron's ``gate_proj`` weights, so IG runs over
s (input 1, baseline 0) with captum; neuron i's attribution is sum_t gate_{t,i} x mean_alpha dF/d(alpha gate_{t,i}).
Completeness: a layer's attributions sum to F(model) - F(model with that layer's gate zeroed), up to the quadrature.

Strategies: ``detrimental`` zeroes the top ``percent`` attributed neurons of ONE layer; ``detrimental_random`` is its
seeded control; ``attribution`` physically prunes the least attributed neurons (128-aligned, like ``selective``);
``selective_attribution`` ranks by a weighted sum of per-layer z-normalized selectivity and attribution.
"""

import logging
import math
import random
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager
from fractions import Fraction
from pathlib import Path

import torch
from captum.attr import IntegratedGradients
from tqdm.auto import tqdm

from prunekit import text
from prunekit.cache import ArtifactCache, Damaged, digest
from prunekit.checkpoint import atomic_torch_save
from prunekit.errors import ConfigError
from prunekit.mlp import GatedMLP, mlp_layers
from prunekit.surgery import WHERE

log = logging.getLogger(__name__)

# captum quadratures. riemann_trapezoid is left out on purpose: captum 0.9 samples it at linspace(0, 1, n) but
# weights the steps 1/n, so its sum is biased by (n - 1) / n and breaks completeness.
METHODS = ("riemann_middle", "riemann_left", "riemann_right", "gausslegendre")
DEFAULT_METHOD = "riemann_middle"  # a Riemann sum with second-order error (left/right are first-order)
RANK_BY = ("signed", "abs")


# ---------------------------------------------------------------------------------------------- validation
def check_layer(layer, n_layers: int) -> int:
    """``strategy.layer`` must be an integer in [0, n_layers - 1]."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ConfigError(f"strategy.layer={layer!r}: out of range; allowed: integers 0..{n_layers - 1} "
                               f"(the model has {n_layers} layers)")
    return layer


def check_percent(percent) -> float:
    """``strategy.percent`` is a fraction of the layer's neurons in (0, 1] (0.2 means 20 %)."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent <= 1:
        raise ConfigError(f"strategy.percent={percent!r}: must be a fraction in (0, 1], e.g. 0.2 for 20 %")
    return float(percent)


def check_samples(samples, available: int) -> int:
    """``strategy.samples`` prompts are drawn from the adaptation set, so it cannot exceed the set's size."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"strategy.samples={samples!r}: must be an integer >= 1")
    if samples > available:
        raise ConfigError(f"strategy.samples={samples}: larger than the adaptation set ({available} prompts); "
                               f"allowed: 1..{available}")
    return samples


def check_steps(steps, method: str = DEFAULT_METHOD) -> int:
    """``strategy.steps``: points on the IG path (captum's Riemann rules need at least 2)."""
    if method not in METHODS:
        raise ConfigError(f"strategy.method='{method}': unknown quadrature; allowed: {', '.join(METHODS)}")
    low = 1 if method == "gausslegendre" else 2
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < low:
        raise ConfigError(f"strategy.steps={steps!r}: must be an integer >= {low} for method '{method}'")
    return steps


def check_batch_size(batch_size) -> int | None:
    """``strategy.batch_size``: IG path steps per forward, an integer >= 1, or None for all steps at once."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"strategy.batch_size={batch_size!r}: must be an integer >= 1, or null (all steps "
                               f"of a prompt in one batch)")
    return batch_size


def check_weight(weight) -> float:
    """``strategy.weight`` of the attribution term in ``selective_attribution``, in [0, 1]."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ConfigError(f"strategy.weight={weight!r}: must be in [0, 1] (0 = selectivity only, "
                               f"1 = attribution only)")
    return float(weight)


def check_options(strategy: Mapping, *, n_layers: int, available: int | None = None) -> None:
    """Validate every attribution option present in a strategy mapping, before any weight or data loads."""
    method = strategy.get("method", DEFAULT_METHOD)
    if "steps" in strategy:
        check_steps(strategy["steps"], method)
    elif method not in METHODS:
        check_steps(2, method)
    if "layer" in strategy:
        check_layer(strategy["layer"], n_layers)
    if "percent" in strategy:
        check_percent(strategy["percent"])
    if "weight" in strategy:
        check_weight(strategy["weight"])
    if strategy.get("rank_by", "signed") not in RANK_BY:
        raise ConfigError(f"strategy.rank_by='{strategy['rank_by']}': allowed: {', '.join(RANK_BY)}")
    if strategy.get("where", "gate") not in WHERE:
        raise ConfigError(f"strategy.where='{strategy['where']}': allowed: {', '.join(WHERE)}")
    if "samples" in strategy:
        check_samples(strategy["samples"], strategy["samples"] if available is None else available)
    check_batch_size(strategy.get("batch_size"))


def sample_prompts(prompts: Sequence, n: int, seed: int) -> list:
    """``n`` prompts drawn without replacement with a seeded RNG (the paper averages ~10 training samples)."""
    check_samples(n, len(prompts))
    return random.Random(seed).sample(list(prompts), n)


# ---------------------------------------------------------------------------------------------- IG machinery
@contextmanager
def gate_scaling(mlp: GatedMLP):
    """Forward hook multiplying one layer's gate pre-activation by ``state["scale"]`` ([B, d_ff]) when it is set.

    Hooks the output of ``gate_proj`` (split layout) or the first half of ``gate_up_proj`` (Phi-3's fused layout).
    """
    state = {"scale": None}
    d_ff = mlp.d_ff

    def hook(_module, _args, out):
        scale = state["scale"]
        if scale is None:
            return None
        scale = scale.to(out.dtype).unsqueeze(1)  # [B, 1, d_ff]: the same scale at every position
        if mlp.layout == "fused":
            return torch.cat([out[..., :d_ff] * scale, out[..., d_ff:]], dim=-1)
        return out * scale

    handle = mlp.input_linears()[0].register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


@contextmanager
def frozen(model):
    """Parameters stop requiring grad for the block: backward then only reaches the scaled layer, never weights."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def last_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Float32 logits of the last position, [B, vocab] (``logits_to_keep=1`` skips the LM head elsewhere)."""
    return model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[:, -1, :].float()


def layer_ig(model, mlp: GatedMLP, state: dict, input_ids: torch.Tensor, target: int, *, steps: int,
             method: str = DEFAULT_METHOD, batch_size: int | None = None) -> torch.Tensor:
    """IG attribution [d_ff] of one layer's gate neurons for one prompt ([1, T] ids) toward logit ``target``.

    ``state`` is the dict yielded by ``gate_scaling(mlp)``; the path's steps run in batches of ``batch_size``.
    """
    device = input_ids.device

    def forward(scale: torch.Tensor) -> torch.Tensor:
        state["scale"] = scale
        try:
            return last_logits(model, input_ids.expand(scale.shape[0], -1))
        finally:
            state["scale"] = None

    ones = torch.ones(1, mlp.d_ff, device=device)
    attr = IntegratedGradients(forward).attribute(ones, baselines=torch.zeros_like(ones), target=target,
                                                  n_steps=steps, method=method, internal_batch_size=batch_size)
    return attr[0].detach().float().cpu()


def _as_ids(ids, device) -> torch.Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.numel() == 0:
        raise ConfigError(f"input_ids: each prompt must be a non-empty 1-D token id sequence, got shape "
                               f"{tuple(ids.shape)}")
    return ids.unsqueeze(0)


def ig_scores_from_ids(model, input_ids_list: Sequence, *, steps: int = 20, layers: Sequence[int] | None = None,
                       batch_size: int | None = None, method: str = DEFAULT_METHOD) -> torch.Tensor:
    """Mean IG attribution over prompts, [len(layers), d_ff] float32 on CPU (rows in ``layers`` order; all if None).

    Each prompt is pre-tokenized (1-D ids, no padding). ``batch_size`` bounds memory: path steps per forward
    (default: all ``steps`` of a prompt in one batch).
    """
    check_steps(steps, method)
    mlps = mlp_layers(model)
    layers = list(range(len(mlps))) if layers is None else [check_layer(layer, len(mlps)) for layer in layers]
    check_batch_size(batch_size)
    if not input_ids_list:
        raise ConfigError("strategy.samples: no prompts to attribute")
    device = next(model.parameters()).device
    prompts = [_as_ids(ids, device) for ids in input_ids_list]
    total = torch.zeros(len(layers), mlps[layers[0]].d_ff, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with frozen(model), tqdm(total=len(prompts) * len(layers), desc="integrated gradients") as bar:
            for p, ids in enumerate(prompts):
                with torch.no_grad():
                    target = int(last_logits(model, ids)[0].argmax())
                for row, layer in enumerate(layers):
                    with gate_scaling(mlps[layer]) as state:
                        total[row] += layer_ig(model, mlps[layer], state, ids, target, steps=steps, method=method,
                                               batch_size=batch_size).double()
                    bar.update()
                log.debug("prompt %d: %d tokens, target token %d", p, ids.shape[1], target)
    finally:
        model.train(was_training)
    log.info("IG over %d prompts x %d layers (%d steps, %s)", len(prompts), len(layers), steps, method)
    return (total / len(prompts)).float()


def ig_scores(model, tokenizer, prompts: Sequence[str], *, steps: int = 20, layers: Sequence[int] | None = None,
              batch_size: int | None = None, method: str = DEFAULT_METHOD, max_length: int = 1024,
              chat_template: bool = False) -> torch.Tensor:
    """Mean IG attribution over text prompts, [len(layers), d_ff] float32 on CPU (see ``ig_scores_from_ids``)."""
    ids = text.encode(tokenizer, prompts, chat_template, max_length)  # as capture encodes them
    return ig_scores_from_ids(model, ids, steps=steps, layers=layers, batch_size=batch_size, method=method)


# ---------------------------------------------------------------------------------------------- cache
def cache_key(model_identity: dict, prompts: Sequence[str], *, steps: int, method: str = DEFAULT_METHOD,
              max_length: int = 1024, chat_template: bool = False, dtype: str = "float32") -> str:
    """Key of the attribution cache: model identity + the sampled prompt texts + IG settings (not the batch size)."""
    payload = {
        "kind": "ig",
        "model": model_identity,
        "prompts": digest(list(prompts), None),
        "steps": steps,
        "method": method,
        "max_length": max_length,
        "chat_template": chat_template,
        "dtype": dtype,
        **text.key_note(chat_template),
    }
    return digest(payload)


# Bumped when a cached layer file changes layout (1: a manifest beside the scores).
CACHE_FORMAT = 1


class LayerScores(ArtifactCache):
    """``<cache_dir>/<key>/layerNNN.pt``: one layer's scores with a manifest (format, key, layer, width).

    One entry per layer, not one per key: a ``detrimental`` grid needs one layer and a full ``attribution`` run
    every layer, so each layer is looked up, verified, locked, moved aside and recomputed on its own (a damaged
    file never costs the other layers, and jobs attributing different layers of one key do not wait on each other).
    The key's folder is this cache's root.
    """

    kind = "attribution cache"
    version = CACHE_FORMAT
    suffix = ".pt"
    again = "computing again"
    log = log

    @staticmethod
    def name(layer: int) -> str:
        return f"layer{layer:03d}"

    def read(self, path: Path, expected: dict) -> torch.Tensor:
        data = torch.load(path, weights_only=True)
        if not isinstance(data, dict):
            raise TypeError(f"a {type(data).__name__}, not a dict with a manifest")
        manifest, row = data["_manifest"], data["scores"]
        want = self.manifest(**expected)
        if manifest != want:
            raise Damaged(f"manifest {manifest} != {want}")
        if tuple(row.shape) != (expected["d_ff"],):
            raise Damaged(f"scores of shape {tuple(row.shape)}")
        if not torch.isfinite(row).all():
            raise Damaged("non-finite scores")
        return row.float()

    def write(self, path: Path, row: torch.Tensor, expected: dict) -> None:
        atomic_torch_save({"_manifest": self.manifest(**expected), "scores": row.clone()}, path)


def cached_ig_scores(model, tokenizer, prompts: Sequence[str], *, key: str, cache_dir: str | Path,
                     layers: Sequence[int] | None = None, **ig_kwargs) -> tuple[torch.Tensor, list[int]]:
    """Like ``ig_scores`` but one cache file per layer (``<cache_dir>/<key>/layerNNN.pt``): only missing layers run.

    A ``detrimental`` grid over percents reuses its layer; a full ``attribution`` run fills every layer once.
    Parallel jobs needing the same layers wait on their locks (taken in layer order), so each layer is computed
    once. Returns (scores [len(layers), d_ff], the layers read from the cache).
    """
    mlps = mlp_layers(model)
    layers = list(range(len(mlps))) if layers is None else [check_layer(layer, len(mlps)) for layer in layers]
    cache = LayerScores(Path(cache_dir).expanduser() / key)
    expected = {layer: {"key": key, "layer": layer, "d_ff": mlps[layer].d_ff} for layer in layers}

    def lookup(wanted):
        found = {layer: cache.load(cache.name(layer), expected[layer]) for layer in wanted}
        return {layer: row for layer, row in found.items() if row is not None}

    rows = lookup(layers)
    hit = sorted(rows)
    missing = [layer for layer in layers if layer not in rows]
    if not missing:
        log.info("attribution cache %s: all %d layers cached", key, len(layers))
        return torch.stack([rows[layer] for layer in layers]), hit
    with ExitStack() as held:
        for layer in sorted(set(missing)):  # one order for every process: no two wait on each other
            held.enter_context(cache.lock(cache.name(layer)))
        waited = lookup(missing)  # computed by another process while this one waited
        rows.update(waited)
        hit = sorted(set(hit) | set(waited))
        missing = [layer for layer in missing if layer not in rows]
        if missing:
            log.info("attribution cache %s: computing layers %s", key, missing)
            fresh = ig_scores(model, tokenizer, prompts, layers=missing, **ig_kwargs)
            for layer, row in zip(missing, fresh):
                rows[layer] = row
                cache.save(cache.name(layer), row, expected[layer])
    return torch.stack([rows[layer] for layer in layers]), hit


# ---------------------------------------------------------------------------------------------- strategies
def n_detrimental(d_ff: int, percent: float) -> int:
    """Neurons deactivated: ceil(percent * d_ff), exact (``Fraction(str(.))`` avoids float error), at least 1."""
    return max(1, math.ceil(Fraction(str(check_percent(percent))) * d_ff))


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values (ties: lower index first), returned sorted."""
    order = torch.sort(-values, stable=True).indices
    return torch.sort(order[:k]).values


def detrimental_neurons(scores: torch.Tensor, layer: int, percent: float) -> torch.Tensor:
    """The top ``percent`` most attributed neurons of ``layer`` (sorted LongTensor; ties: lower index)."""
    check_layer(layer, scores.shape[0])
    row = scores[layer]
    return _top(row, n_detrimental(row.numel(), percent))


def random_neurons(d_ff: int, percent: float, seed: int) -> torch.Tensor:
    """The paper's control: as many neurons as ``detrimental_neurons`` would take, chosen uniformly (seeded)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.sort(torch.randperm(d_ff, generator=gen)[: n_detrimental(d_ff, percent)]).values


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """Per-layer z-normalization (population std; a constant layer maps to zeros)."""
    scores = scores.double()
    std = scores.std(dim=1, unbiased=False, keepdim=True)
    return ((scores - scores.mean(dim=1, keepdim=True)) / std.clamp(min=1e-12)).float()


def combined_scores(selectivity: torch.Tensor, attribution: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) z(selectivity) + weight z(attribution), z per layer; prune the lowest like ``selective``.

    weight 0 ranks exactly as selectivity, weight 1 exactly as attribution.
    """
    check_weight(weight)
    if selectivity.shape != attribution.shape:
        raise ConfigError(f"selective_attribution: selectivity {tuple(selectivity.shape)} and attribution "
                               f"{tuple(attribution.shape)} scores must have the same [layers, d_ff] shape "
                               f"(attribution must cover every layer)")
    return (1 - weight) * zscore(selectivity) + weight * zscore(attribution)


def select_best(results: Sequence[Mapping], metric: str, *, higher_is_better: bool = True) -> dict:
    """The (layer, percent) result with the best adaptation-split ``metric``; ties: smaller percent, lower layer."""
    if not results:
        raise ConfigError("select_best: no grid results to choose from")
    for r in results:
        missing = [k for k in ("layer", "percent", metric) if k not in r]
        if missing:
            raise ConfigError(f"select_best: result {dict(r)} lacks {missing}; metric='{metric}' must be one of "
                                   f"{sorted(k for k in r if k not in ('layer', 'percent'))}")
        if not isinstance(r[metric], (int, float)) or math.isnan(r[metric]):
            raise ConfigError(f"select_best: metric '{metric}'={r[metric]!r} at layer={r['layer']} "
                                   f"percent={r['percent']} is not a number")
    sign = -1 if higher_is_better else 1
    return dict(min(results, key=lambda r: (sign * r[metric], r["percent"], r["layer"])))
