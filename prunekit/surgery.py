"""Neuron surgery on top of the gated-MLP adapter (`GatedMLP.keep` / `.zero` hold the layout
branch): uniform physical removal, one-layer zeroing, and the 128-aligned width arithmetic."""

import math
from fractions import Fraction

import torch

from prunekit.errors import PrunekitError
from prunekit.mlp import mlp_layers

ALIGN = 128


class SurgeryError(PrunekitError):
    """Bad input to neuron surgery: a layer or zeroing mode that does not exist."""


class RatioError(SurgeryError):
    """A pruning ratio that is out of range or leaves too few neurons."""


def pruned_count(d_ff: int, ratio: float, align: int = ALIGN) -> int:
    """Neurons removed per layer: ceil(ratio * d_ff / align) * align, computed exactly.

    ``Fraction(str(ratio))`` avoids float error: 0.1 * 8960 / 128 is exactly 7, not 7.000000000000001 -> 8.
    """
    if not 0 < ratio < 1:
        raise RatioError(f"ratio={ratio}: must be in the open interval (0, 1)")
    return math.ceil(Fraction(str(ratio)) * d_ff / align) * align


def check_ratio(d_ff: int, ratio: float, align: int = ALIGN) -> int:
    """Validate that pruning leaves at least ``align`` neurons per layer; return the pruned count."""
    k = pruned_count(d_ff, ratio, align)
    if d_ff - k < align:
        max_ratio = (d_ff - align) / d_ff
        raise RatioError(
            f"ratio={ratio}: removes {k} of {d_ff} neurons per layer and leaves {d_ff - k} < {align}; "
            f"allowed ratios for this model are in (0, {max_ratio:.4f}]"
        )
    return k


def real_ratio(d_ff: int, ratio: float, align: int = ALIGN) -> float:
    """The ratio actually removed after 128-alignment (paper Table 2)."""
    return pruned_count(d_ff, ratio, align) / d_ff


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
        raise SurgeryError(f"strategy.layer={layer}: out of range; allowed: integers 0..{len(mlps) - 1}")
    if where not in WHERE:
        raise SurgeryError(f"strategy.where='{where}': allowed: {', '.join(WHERE)}")
    mlps[layer].zero(neurons, where)
