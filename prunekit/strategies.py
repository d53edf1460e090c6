"""Pruning strategies as registered objects (as Torch-Pruning's importance objects handed to a pruner).

A strategy declares the scores it needs (`needs`: activation capture, integrated-gradients attribution, down_proj
weights), validates its options before anything loads, and turns the computed scores into a plan: a
`PhysicalPlan` (the neurons every layer keeps, same count per layer, 128-aligned) or a `ZeroPlan` (neurons of one
layer to zero, arXiv 2507.09185). `recipes.prune` computes what `needs` says and applies the plan; it names no
strategy. A new strategy is one subclass registered here plus one YAML file in conf/strategy/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunekit import attribution as ig
from prunekit import scoring, surgery
from prunekit.errors import ConfigError
from prunekit.registry import Registry
from prunekit.schema import Checked, check_seed


@dataclass
class StrategyOptions(Checked):
    """The types of the `strategy.*` options several strategies share; each strategy checks its own ranges and the
    options only it has (`Strategy.check_options`, `Strategy.check`)."""

    name: str = "selective"
    seed: int | None = None
    weight: float | None = None
    layer: int | None = None
    percent: float | None = None
    samples: int | None = None
    steps: int | None = None
    _prefix: str = field(default="strategy.", repr=False, kw_only=True, compare=False)

    def check(self):
        check_seed(self.seed, f"{self._prefix}seed")


REGISTRY = Registry("strategy", "strategy.name", ConfigError)
register = REGISTRY.register


def get(options: dict) -> Strategy:
    """The strategy `options["name"]` with its options checked (cheap: before any model loads)."""
    strategy = REGISTRY.lookup(options.get("name"))(dict(options))
    strategy.check_options()
    return strategy


# ---------------------------------------------------------------------------------------------- inputs and plans
@dataclass
class Scores:
    """What the prune recipe computed because a strategy needed it."""

    stats: dict | None = None                 # capture statistics by set: target, distractor/<name>
    selectivity: torch.Tensor | None = None   # [layers, d_ff], paper eq. 2
    attribution: torch.Tensor | None = None   # [layers or 1, d_ff], integrated gradients
    down_weights: list | None = None          # per layer down_proj weight [hidden, d_ff]

    def distractors(self) -> list:
        return [v for k, v in self.stats.items() if k != "target"]


@dataclass
class PhysicalPlan:
    """Uniform physical pruning: the sorted neuron indices every layer keeps."""

    kept: list[torch.Tensor]
    d_ff: int

    def apply(self, model) -> None:
        surgery.prune_mlp(model, self.kept)

    def removed(self) -> torch.Tensor:
        """[layers, pruned per layer]: the indices every layer loses, sorted (for analyses of what a plan takes)."""
        keep = torch.zeros(len(self.kept), self.d_ff, dtype=torch.bool)
        for row, kept in zip(keep, self.kept):
            row[kept] = True
        return torch.stack([(~row).nonzero().squeeze(1) for row in keep])

    def record(self, ratio: float) -> dict:
        n_prune = self.d_ff - int(self.kept[0].numel())
        return {"ratio": ratio, "real_ratio": n_prune / self.d_ff, "pruned_per_layer": n_prune,
                "kept_width": self.d_ff - n_prune, "kept_indices": [k.tolist() for k in self.kept]}


@dataclass
class ZeroPlan:
    """Deactivation of some neurons of one layer; the width (and the stock checkpoint format) is unchanged."""

    layer: int
    neurons: torch.Tensor
    where: str
    percent: float
    d_ff: int = field(default=0)

    def apply(self, model) -> None:
        surgery.deactivate(model, self.layer, self.neurons, self.where)

    def record(self, ratio: float) -> dict:
        return {"ratio": 0.0, "real_ratio": 0.0, "kept_width": self.d_ff, "layer": self.layer,
                "percent": self.percent, "where": self.where, "deactivated": self.neurons.tolist()}


# ---------------------------------------------------------------------------------------------- index helpers
def _lowest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Indices of the n_prune lowest scores per layer; ties go to the lower index (stable sort)."""
    return torch.sort(scores, dim=1, stable=True).indices[:, :n_prune]


def _random(n_prune: int, d_ff: int, layers: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randperm(d_ff, generator=gen)[:n_prune] for _ in range(layers)])


def kept_indices(pruned: torch.Tensor, d_ff: int) -> list[torch.Tensor]:
    """Complement of the pruned indices, sorted, so survivors keep their original order."""
    keep = torch.ones(pruned.shape[0], d_ff, dtype=torch.bool)
    keep.scatter_(1, pruned, False)
    return [row.nonzero().squeeze(1) for row in keep]


# ---------------------------------------------------------------------------------------------- strategies
class Strategy:
    """Physical, uniform, 128-aligned pruning of the lowest `scores` (subclasses define them)."""

    name = ""
    needs: frozenset[str] = frozenset()  # any of: capture, attribution, weights
    physical = True

    def __init__(self, options: dict):
        self.options = options

    def check_options(self) -> None:
        """Options only this strategy has (the attribution options are checked by attribution.check_options)."""

    def check(self, *, n_layers: int, available: int | None) -> None:
        """Options that need the model's depth or the prompt count, before any weights load."""
        ig.check_options(self.options, n_layers=n_layers, available=available)

    def attribution_layers(self, n_layers: int) -> list[int] | None:
        """Layers whose attribution is needed (None: all)."""
        return None

    def scores(self, s: Scores) -> torch.Tensor:
        """[layers, d_ff]; the LOWEST are removed first."""
        raise NotImplementedError

    def pruned(self, s: Scores, n_prune: int, d_ff: int, layers: int, seed: int) -> torch.Tensor:
        return _lowest(self.scores(s), n_prune)

    def plan(self, s: Scores, *, n_prune: int, d_ff: int, layers: int, seed: int) -> PhysicalPlan:
        return PhysicalPlan(kept_indices(self.pruned(s, n_prune, d_ff, layers, seed), d_ff), d_ff)


@register
class Selective(Strategy):
    """The paper's method: the lowest selectivity S (least specific to the target) go first."""

    name = "selective"
    needs = frozenset({"capture"})

    def scores(self, s):
        return s.selectivity


@register
class Reverse(Strategy):
    """The paper's control: the highest S (most target-specific) go first."""

    name = "reverse"
    needs = frozenset({"capture"})

    def scores(self, s):
        return -s.selectivity


@register
class Random(Strategy):
    """A seeded uniformly random set per layer (paper seeds: 42 and 33)."""

    name = "random"

    def pruned(self, s, n_prune, d_ff, layers, seed):
        return _random(n_prune, d_ff, layers, self.options.get("seed", seed))


@register
class Attribution(Strategy):
    """The least attributed neurons (integrated gradients), signed or by magnitude."""

    name = "attribution"
    needs = frozenset({"attribution"})

    def scores(self, s):
        return s.attribution.abs() if self.options.get("rank_by", "signed") == "abs" else s.attribution


@register
class SelectiveAttribution(Strategy):
    """(1 - weight) z(S) + weight z(attribution), z per layer; the lowest go first."""

    name = "selective_attribution"
    needs = frozenset({"capture", "attribution"})

    def scores(self, s):
        return ig.combined_scores(s.selectivity, s.attribution, self.options.get("weight", 0.5))


@register
class WandaSp(Strategy):
    """Structured Wanda: sum_i |W_down[i, j]| x ||x_j||_2 over target tokens."""

    name = "wanda_sp"
    needs = frozenset({"capture", "weights"})

    def scores(self, s):
        return scoring.wanda_sp(s.stats["target"], s.down_weights)


@register
class Flap(Strategy):
    """FLAP's fluctuation metric: Var(x_j) over target tokens x ||W_down[:, j]||^2."""

    name = "flap"
    needs = frozenset({"capture", "weights"})

    def scores(self, s):
        return scoring.flap(s.stats["target"], s.down_weights)


@register
class Contrastive(Strategy):
    """Target importance minus weight x min(distractor importance, target importance), per layer normalised."""

    name = "contrastive"
    needs = frozenset({"capture", "weights"})

    def check_options(self):
        w = self.options.get("weight", 0.5)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1:
            raise ConfigError(f"strategy.weight={w!r}: must be a number in [0, 1) for contrastive "
                                "(0 = target importance alone)")

    def check(self, *, n_layers, available):
        pass  # `weight` here is not the attribution weight (which allows 1)

    def scores(self, s):
        return scoring.contrastive(s.stats["target"], s.distractors(), s.down_weights, self.options.get("weight", 0.5))


class _OneLayer(Strategy):
    """Method 2's deactivation: some neurons of one `layer` are zeroed; subclasses say which."""

    physical = False

    def neurons(self, s: Scores, d_ff: int) -> torch.Tensor:
        raise NotImplementedError

    def plan(self, s, *, n_prune, d_ff, layers, seed):
        o = self.options
        return ZeroPlan(o["layer"], self.neurons(s, d_ff), o["where"], o["percent"], d_ff)


@register
class Detrimental(_OneLayer):
    """Method 2: zero the top `percent` most attributed neurons of one `layer`."""

    name = "detrimental"
    needs = frozenset({"attribution"})

    def attribution_layers(self, n_layers):
        return [self.options["layer"]]

    def neurons(self, s, d_ff):
        return ig.detrimental_neurons(s.attribution, 0, self.options["percent"])


@register
class DetrimentalRandom(_OneLayer):
    """Method 2's control: as many neurons of the same layer, chosen at random (seeded)."""

    name = "detrimental_random"

    def neurons(self, s, d_ff):
        return ig.random_neurons(d_ff, self.options["percent"], self.options["seed"])
