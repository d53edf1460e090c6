"""Pruning strategies: per-neuron scores -> the neuron indices each layer keeps (same count in every layer)."""

import torch

# Strategies that rank neurons by selectivity scores, and the one that ignores them.
SCORE_STRATEGIES = ("selective", "reverse")
STRATEGIES = SCORE_STRATEGIES + ("random",)


class StrategyError(ValueError):
    """An unknown strategy name or bad strategy option."""


def check_strategy(name: str) -> None:
    if name not in STRATEGIES:
        raise StrategyError(f"strategy.name='{name}': unknown strategy; allowed: {', '.join(STRATEGIES)}")


def _lowest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Indices of the n_prune lowest scores per layer; ties go to the lower index (stable sort)."""
    order = torch.sort(scores, dim=1, stable=True).indices
    return order[:, :n_prune]


def pruned_indices(name: str, scores: torch.Tensor | None, n_prune: int, *, d_ff: int, layers: int, seed: int = 42):
    """Which neurons each layer loses: [layers, n_prune] indices.

    selective: lowest selectivity (least task-specific); reverse: highest; random: seeded uniform choice.
    """
    check_strategy(name)
    if name == "random":
        gen = torch.Generator().manual_seed(int(seed))
        return torch.stack([torch.randperm(d_ff, generator=gen)[:n_prune] for _ in range(layers)])
    if scores is None:
        raise StrategyError(f"strategy.name='{name}' needs scores")
    return _lowest(scores if name == "selective" else -scores, n_prune)


def kept_indices(pruned: torch.Tensor, d_ff: int) -> list[torch.Tensor]:
    """Complement of the pruned indices, sorted, so survivors keep their original order."""
    keep = torch.ones(pruned.shape[0], d_ff, dtype=torch.bool)
    keep.scatter_(1, pruned, False)
    return [row.nonzero().squeeze(1) for row in keep]


def choose(name: str, scores: torch.Tensor | None, n_prune: int, *, d_ff: int, layers: int, seed: int = 42):
    """Kept indices per layer (sorted LongTensors) for a strategy."""
    return kept_indices(pruned_indices(name, scores, n_prune, d_ff=d_ff, layers=layers, seed=seed), d_ff)
