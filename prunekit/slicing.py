"""Physical removal and zeroing of MLP neurons, and the 128-aligned width arithmetic."""

import math
from fractions import Fraction

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.mlp import GatedMLP, mlp_layers

ALIGN = 128


class RatioError(PrunekitError):
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


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    """Keep only ``rows`` of a linear's output features, in place (frees the old weight)."""
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, rows), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows), requires_grad=linear.bias.requires_grad)
    linear.out_features = rows.numel()


def _keep_columns(linear: nn.Linear, cols: torch.Tensor) -> None:
    """Keep only ``cols`` of a linear's input features, in place (its bias is untouched)."""
    linear.weight = nn.Parameter(linear.weight.data.index_select(1, cols), requires_grad=linear.weight.requires_grad)
    linear.in_features = cols.numel()


def slice_layer(mlp: GatedMLP, kept: torch.Tensor) -> None:
    """Shrink one MLP to the neurons ``kept`` (sorted indices), keeping their original order."""
    d_ff = mlp.d_ff
    kept = kept.to(mlp.down.weight.device)
    if mlp.layout == "fused":
        _keep_rows(mlp.module.gate_up_proj, torch.cat([kept, kept + d_ff]))
    else:
        _keep_rows(mlp.module.gate_proj, kept)
        _keep_rows(mlp.module.up_proj, kept)
    _keep_columns(mlp.down, kept)
    if hasattr(mlp.module, "intermediate_size"):
        mlp.module.intermediate_size = kept.numel()


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
        slice_layer(mlp, idx)
    model.config.intermediate_size = widths.pop()


@torch.no_grad()
def zero_neurons(model, layer: int, neurons: torch.Tensor) -> None:
    """Deactivate ``neurons`` of one layer by zeroing their ``down_proj`` columns (the checkpoint stays stock)."""
    mlp = mlp_layers(model)[layer]
    mlp.down.weight[:, neurons.to(mlp.down.weight.device)] = 0
