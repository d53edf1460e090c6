"""Pruning strategies: per-neuron scores -> the neurons each layer loses (same count in every layer), or, for the
single-layer deactivation strategies of the detrimental-neuron method, the neurons of one layer to zero."""

import torch

from prunekit.errors import PrunekitError

# Physical, uniform 128-aligned pruning; which scores each one ranks by (lowest removed first).
PHYSICAL = ("selective", "reverse", "random", "attribution", "selective_attribution", "wanda_sp", "flap", "contrastive")
# Zero the top-attributed (or random) neurons of ONE layer; the width is unchanged (arXiv 2507.09185).
DEACTIVATION = ("detrimental", "detrimental_random")
STRATEGIES = PHYSICAL + DEACTIVATION
# Strategies ranked from the activation capture (selectivity and/or the token-level importance statistics).
NEEDS_SELECTIVITY = ("selective", "reverse", "selective_attribution", "wanda_sp", "flap", "contrastive")
NEEDS_WEIGHTS = ("wanda_sp", "flap", "contrastive")  # importance baselines: activations x down_proj columns
NEEDS_ATTRIBUTION = ("attribution", "selective_attribution", "detrimental")


class StrategyError(PrunekitError):
    """An unknown strategy name or bad strategy option."""


def check_strategy(name: str) -> None:
    if name not in STRATEGIES:
        raise StrategyError(f"strategy.name='{name}': unknown strategy; allowed: {', '.join(STRATEGIES)}")


def check_options(strategy: dict) -> None:
    """Options only the importance baselines have (the attribution options are checked in attribution.py)."""
    if strategy.get("name") == "contrastive":
        w = strategy.get("weight", 0.5)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1:
            raise StrategyError(f"strategy.weight={w!r}: must be a number in [0, 1) for contrastive "
                                "(0 = target importance alone)")


def _lowest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Indices of the n_prune lowest scores per layer; ties go to the lower index (stable sort)."""
    order = torch.sort(scores, dim=1, stable=True).indices
    return order[:, :n_prune]


def ranking(name: str, selectivity: torch.Tensor | None = None, attribution: torch.Tensor | None = None, *,
            rank_by: str = "signed", weight: float = 0.5, stats: dict | None = None,
            down_weights=None) -> torch.Tensor:
    """The score whose LOWEST values a physical strategy removes first.

    ``stats`` are the capture statistics by set (``target``, ``distractor/<name>``) and ``down_weights`` the
    per-layer ``down_proj`` weights [hidden, d_ff], for the importance baselines.
    """
    from prunekit import attribution as ig  # torch-only import; kept local so strategies stay light
    from prunekit import scoring

    if name in NEEDS_WEIGHTS:
        if stats is None or down_weights is None:
            raise StrategyError(f"strategy.name='{name}' needs capture statistics and down_proj weights")
        if name == "wanda_sp":
            return scoring.wanda_sp(stats["target"], down_weights)
        if name == "flap":
            return scoring.flap(stats["target"], down_weights)
        return scoring.contrastive(stats["target"], [v for k, v in stats.items() if k != "target"], down_weights,
                                   weight)
    if name == "selective":
        return selectivity
    if name == "reverse":
        return -selectivity
    if name == "attribution":
        return attribution.abs() if rank_by == "abs" else attribution
    if name == "selective_attribution":
        return ig.combined_scores(selectivity, attribution, weight)
    raise StrategyError(f"strategy.name='{name}' does not rank by scores")


def pruned_indices(name: str, scores: torch.Tensor | None, n_prune: int, *, d_ff: int, layers: int, seed: int = 42):
    """Which neurons each layer loses: [layers, n_prune] indices.

    ``random`` draws a seeded uniform set per layer; every other physical strategy removes the lowest
    ``scores`` (for selective: selectivity; reverse: its negation; see ``ranking``).
    """
    check_strategy(name)
    if name == "random":
        gen = torch.Generator().manual_seed(int(seed))
        return torch.stack([torch.randperm(d_ff, generator=gen)[:n_prune] for _ in range(layers)])
    if name not in PHYSICAL:
        raise StrategyError(f"strategy.name='{name}' deactivates one layer; it has no uniform pruning set")
    if scores is None:
        raise StrategyError(f"strategy.name='{name}' needs scores")
    return _lowest(scores, n_prune)


def kept_indices(pruned: torch.Tensor, d_ff: int) -> list[torch.Tensor]:
    """Complement of the pruned indices, sorted, so survivors keep their original order."""
    keep = torch.ones(pruned.shape[0], d_ff, dtype=torch.bool)
    keep.scatter_(1, pruned, False)
    return [row.nonzero().squeeze(1) for row in keep]


def choose(name: str, scores: torch.Tensor | None, n_prune: int, *, d_ff: int, layers: int, seed: int = 42):
    """Kept indices per layer (sorted LongTensors) for a physical strategy, given its ranking scores."""
    return kept_indices(pruned_indices(name, scores, n_prune, d_ff=d_ff, layers=layers, seed=seed), d_ff)
