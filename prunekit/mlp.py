"""Architecture adapters: where the gated MLP's gate, up and down projections live in each decoder layer.

A gated MLP computes ``down(act(gate(x)) * up(x))``; the neurons prunekit scores and removes are the
``d_ff`` channels between ``act(gate(x)) * up(x)`` and ``down_proj``. Two weight layouts exist:
``split`` (separate ``gate_proj`` / ``up_proj``: Llama, Qwen2/2.5, Qwen3, Mistral, Gemma's GeGLU) and
``fused`` (one ``gate_up_proj`` whose first half of rows is the gate: Phi-3).
"""

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import ModelError

# model_type (config.model_type) -> weight layout
LAYOUTS = {
    "llama": "split",
    "mistral": "split",
    "qwen2": "split",
    "qwen3": "split",
    "gemma": "split",
    "gemma2": "split",
    "gemma3_text": "split",
    "phi3": "fused",
}


def check_architecture(config) -> str:
    """Return the MLP layout of a transformers config, or raise naming the architecture (before weights load)."""
    model_type = getattr(config, "model_type", None)
    if model_type in LAYOUTS:
        return LAYOUTS[model_type]
    archs = ", ".join(getattr(config, "architectures", None) or []) or "unknown"
    raise ModelError(
        f"model.name_or_path: architecture '{model_type}' ({archs}) has no gated-MLP adapter; "
        f"supported model types: {', '.join(sorted(LAYOUTS))}"
    )


@dataclass
class GatedMLP:
    """One decoder layer's MLP: the module, its layout and its current width."""

    module: nn.Module
    layout: str

    @property
    def down(self) -> nn.Linear:
        return self.module.down_proj

    @property
    def d_ff(self) -> int:
        return self.down.in_features

    def input_linears(self) -> list[nn.Linear]:
        """The linears whose output rows are neurons (gate and up, or the fused one)."""
        if self.layout == "fused":
            return [self.module.gate_up_proj]
        return [self.module.gate_proj, self.module.up_proj]

    # Neuron surgery: the only place that knows how each layout stores a neuron.
    def keep(self, kept: torch.Tensor) -> None:
        """Shrink to the neurons ``kept`` (sorted indices), keeping their order: gate/up rows, down columns."""
        kept = kept.to(self.down.weight.device)
        rows = torch.cat([kept, kept + self.d_ff]) if self.layout == "fused" else kept
        for linear in self.input_linears():
            _keep_rows(linear, rows)
        _keep_columns(self.down, kept)
        if hasattr(self.module, "intermediate_size"):
            self.module.intermediate_size = kept.numel()

    @torch.no_grad()
    def zero(self, neurons: torch.Tensor, where: str = "gate") -> None:
        """Deactivate ``neurons`` in place, shapes unchanged: their gate rows (act(0) = 0 for SiLU/GELU; a fused
        layer's gate is its first d_ff rows) or their down_proj columns."""
        idx = neurons.to(self.down.weight.device, torch.long)
        if where == "down":
            self.down.weight.index_fill_(1, idx, 0)
            return
        gate = self.input_linears()[0]
        gate.weight.index_fill_(0, idx, 0)
        if gate.bias is not None:
            gate.bias.index_fill_(0, idx, 0)


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


def decoder_layers(model) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (``model.model.layers`` for every supported family)."""
    return model.get_decoder().layers


def mlp_layers(model) -> list[GatedMLP]:
    """Adapters for every layer's MLP, in layer order."""
    layout = check_architecture(model.config)
    return [GatedMLP(layer.mlp, layout) for layer in decoder_layers(model)]
