"""Neuron surgery on top of the gated-MLP adapter (`GatedMLP.keep` / `.zero` hold the layout
branch): uniform physical removal, one-layer zeroing, and the aligned width arithmetic (`prune.align`, 128 by default)."""

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from prunekit.errors import ConfigError
from prunekit.mlp import mlp_layers
from prunekit.schema import Checked

ALIGN = 128  # the paper's kept-width multiple; `prune.align` overrides it (e.g. 256 for GGUF K-quants)
ALIGN_BLOCK = 32  # prune.align must be a multiple of this: the smallest GGUF quant block (Q8_0, Q4_0, Q5_0)


@dataclass
class PruneSettings(Checked):
    """`prune.*`: how physical pruning rounds the kept width (the largest multiple of align <= (1 - ratio) * d_ff,
    `kept_width`). The range of `ratio` (a top-level key) is checked against the model's width by `check_ratio`."""

    align: int = field(default=ALIGN, metadata={"allowed": f"a positive multiple of {ALIGN_BLOCK}"})
    _prefix: str = field(default="prune.", repr=False, kw_only=True, compare=False)

    def check(self):
        check_align(self.align)


def check_align(align) -> int:
    """`prune.align`: a positive multiple of 32, so every aligned width also splits into whole GGUF blocks."""
    if isinstance(align, bool) or not isinstance(align, int) or align < ALIGN_BLOCK or align % ALIGN_BLOCK:
        raise ConfigError(f"prune.align={align!r}: must be a positive multiple of {ALIGN_BLOCK} "
                         f"(e.g. 128, the paper's, or 256 for K-quants)")
    return align


def _check_range(ratio: float) -> Fraction:
    if ratio is None:  # the schema allows null (jobs without a ratio), physical pruning does not
        raise ConfigError("ratio=null: physical pruning needs a number in the open interval (0, 1)")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ConfigError(f"ratio={ratio}: must be in the open interval (0, 1)")
    return Fraction(str(ratio))


def kept_width(d_ff: int, ratio: float, align: int = ALIGN) -> int:
    """Neurons kept per layer: the largest multiple of ``align`` not above ``(1 - ratio) * d_ff``, computed exactly.

    So at least ``ratio`` of the neurons go, and the kept width is a multiple of ``align`` whatever ``d_ff`` is
    (for a ``d_ff`` that is a multiple of ``align`` this is the paper's ``d_ff - ceil(ratio * d_ff / align) * align``).
    ``Fraction(str(ratio))`` avoids float error: 0.1 * 8960 / 128 is exactly 7, not 7.000000000000001 -> 8.
    """
    return math.floor((1 - _check_range(ratio)) * d_ff / align) * align


def max_ratio(d_ff: int, align: int = ALIGN) -> Fraction | None:
    """The largest ratio that still keeps ``align`` neurons (``1 - align / d_ff``); None when no ratio in (0, 1)
    can keep a positive multiple of ``align`` below ``d_ff`` (``d_ff <= align``)."""
    return 1 - Fraction(align, d_ff) if d_ff > align else None


def check_ratio(d_ff: int, ratio: float, align: int = ALIGN) -> int:
    """Validate that pruning keeps a positive multiple of ``align`` neurons per layer; return the pruned count."""
    _check_range(ratio)
    top = max_ratio(d_ff, align)
    if top is None:
        raise ConfigError(f"ratio={ratio}: d_ff {d_ff} cannot be pruned at prune.align={align}: the kept width must be a "
                         f"positive multiple of {align} below {d_ff}; use a smaller prune.align")
    kept = kept_width(d_ff, ratio, align)
    if kept < align:
        # floor to 4 decimals, so the printed bound is itself an allowed ratio
        shown = Fraction(math.floor(top * 10_000), 10_000)
        exact = "" if shown == top else f" (1 - {align}/{d_ff})"
        raise ConfigError(f"ratio={ratio}: keeps {kept} of {d_ff} neurons per layer; the kept width must be a positive "
                         f"multiple of prune.align={align}; allowed ratios for this model are in (0, {float(shown):.4f}]{exact}")
    return d_ff - kept


def prune_mlp(model, kept: list[torch.Tensor]) -> None:
    """Physically remove every neuron not in ``kept[layer]`` and update ``config.intermediate_size``.

    Works layer by layer, so peak extra memory is one layer's MLP, never a second copy of the model.
    """
    layers = mlp_layers(model)
    if len(kept) != len(layers):
        raise ValueError(f"kept indices for {len(kept)} layers, model has {len(layers)}")
    widths = {int(k.numel()) for k in kept}
    if len(widths) != 1:
        raise ValueError(f"kept widths differ across layers: {sorted(widths)}; config.intermediate_size needs one")
    for mlp, idx in zip(layers, kept):
        mlp.keep(idx)
    model.config.intermediate_size = widths.pop()


WHERE = ("gate", "down")  # how one-layer deactivation zeroes a neuron: its gate row or its down_proj column


def deactivate(model, layer: int, neurons: torch.Tensor, where: str = "gate") -> None:
    """Zero ``neurons`` of one layer in place (arXiv 2507.09185); shapes are unchanged, so the checkpoint stays
    stock-loadable."""
    mlps = mlp_layers(model)
    if not 0 <= layer < len(mlps):
        raise ConfigError(f"strategy.layer={layer}: out of range; allowed: integers 0..{len(mlps) - 1}")
    if where not in WHERE:
        raise ConfigError(f"strategy.where='{where}': allowed: {', '.join(WHERE)}")
    mlps[layer].zero(neurons, where)
