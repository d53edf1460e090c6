"""Strategies: selective and reverse take opposite ends, random is seeded, ties go by index."""

import pytest
import torch

from prunekit import strategies
from prunekit.errors import ConfigError


def _scores(layers=3, d_ff=512, seed=0):
    return torch.randn(layers, d_ff, generator=torch.Generator().manual_seed(seed))


def _plan(options, scores=None, n_prune=128, d_ff=512, layers=3, seed=42, **given):
    """The plan strategy ``options`` makes, as the prune recipe asks for it."""
    scores = scores if scores is not None else strategies.Scores(**given)
    return strategies.get(options).plan(scores, n_prune=n_prune, d_ff=d_ff, layers=layers, seed=seed)


def _lowest(scores, n):
    """The n lowest scores' indices per layer, ties to the lower index (what a physical strategy removes)."""
    return [set(torch.argsort(row, stable=True)[:n].tolist()) for row in scores]


def test_selective_and_reverse_pick_opposite_ends():
    scores = _scores()
    sel = _plan({"name": "selective"}, selectivity=scores).removed()
    rev = _plan({"name": "reverse"}, selectivity=scores).removed()
    for layer in range(3):
        s = scores[layer]
        assert s[sel[layer]].max() < s[rev[layer]].min()
        assert set(sel[layer].tolist()) == set(torch.argsort(s)[:128].tolist())
        assert set(rev[layer].tolist()) == set(torch.argsort(s, descending=True)[:128].tolist())


def test_kept_indices_are_sorted_complement():
    scores = _scores()
    plan = _plan({"name": "selective"}, selectivity=scores)
    for k, p, lowest in zip(plan.kept, plan.removed(), _lowest(scores, 128)):
        assert k.numel() == 384
        assert torch.equal(k, torch.sort(k).values)
        assert set(k.tolist()).isdisjoint(p.tolist()) and set(p.tolist()) == lowest
        assert len(set(k.tolist()) | set(p.tolist())) == 512


def test_ties_broken_by_index():
    scores = torch.zeros(1, 256)
    for name in ("selective", "reverse"):
        plan = _plan({"name": name}, selectivity=scores, d_ff=256, layers=1)
        assert plan.removed()[0].tolist() == list(range(128)) and plan.kept[0].tolist() == list(range(128, 256))


def test_random_is_reproducible_per_seed_and_differs_across_seeds():
    a = _plan({"name": "random", "seed": 42}, layers=2).kept
    b = _plan({"name": "random"}, layers=2, seed=42).kept  # strategy.seed unset: the run's seed
    c = _plan({"name": "random", "seed": 33}, layers=2, seed=42).kept  # strategy.seed wins over the run's
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[1])  # layers draw different sets


def test_unknown_strategy_is_named():
    with pytest.raises(ConfigError, match="strategy.name='best'.*allowed: selective, reverse, random, attribution"):
        strategies.get({"name": "best"})


def test_attribution_rankings():
    s, a = _scores(seed=1), _scores(seed=2)
    assert [set(r.tolist()) for r in _plan({"name": "attribution"}, attribution=a).removed()] == _lowest(a, 128)
    removed = _plan({"name": "attribution", "rank_by": "abs"}, attribution=a).removed()
    assert [set(r.tolist()) for r in removed] == _lowest(a.abs(), 128)
    both = _plan({"name": "selective_attribution", "weight": 0.0}, selectivity=s, attribution=a)
    assert torch.equal(both.removed(), _plan({"name": "selective"}, selectivity=s).removed())


def test_deactivation_strategies_have_no_uniform_set():
    """detrimental zeroes the top-attributed neurons of one layer: a ZeroPlan, the width unchanged."""
    a = _scores(layers=1, seed=3)  # attribution of the one layer asked for
    strategy = strategies.get({"name": "detrimental", "layer": 2, "percent": 0.25, "where": "gate"})
    assert not strategy.physical and strategy.attribution_layers(3) == [2]
    plan = strategy.plan(strategies.Scores(attribution=a), n_prune=0, d_ff=512, layers=3, seed=0)
    assert isinstance(plan, strategies.ZeroPlan) and plan.layer == 2
    assert set(plan.neurons.tolist()) == set(torch.argsort(a[0], descending=True)[:128].tolist())
    assert plan.record(0.0)["kept_width"] == 512 and plan.record(0.0)["real_ratio"] == 0.0


def test_every_registered_strategy_has_a_config_and_declares_its_needs():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf" / "strategy"
    for name, cls in strategies.REGISTRY.items():
        assert (conf / f"{name}.yaml").is_file(), f"conf/strategy/{name}.yaml missing"
        assert cls.needs <= {"capture", "attribution", "weights"}
    assert strategies.get({"name": "wanda_sp"}).needs == {"capture", "weights"}
    assert not strategies.get({"name": "random", "seed": 1}).needs


def test_plans_say_what_changes():
    scores = strategies.Scores(selectivity=_scores(layers=2, d_ff=256))
    plan = strategies.get({"name": "selective"}).plan(scores, n_prune=128, d_ff=256, layers=2, seed=0)
    rec = plan.record(0.5)
    assert rec["kept_width"] == 128 and rec["real_ratio"] == 0.5 and len(rec["kept_indices"]) == 2
    zero = strategies.get({"name": "detrimental_random", "layer": 1, "percent": 0.25, "seed": 3, "where": "gate"})
    rec = zero.plan(strategies.Scores(), n_prune=0, d_ff=256, layers=2, seed=0).record(0.0)
    assert rec["layer"] == 1 and len(rec["deactivated"]) == 64 and rec["kept_width"] == 256


def test_one_registry_for_strategies_and_benchmarks():
    from prunekit.evaluation import benchmarks
    from prunekit.registry import Registry

    assert isinstance(strategies.REGISTRY, Registry) and isinstance(benchmarks.REGISTRY, Registry)
    with pytest.raises(ConfigError, match=r"^task.eval.metric='bleu': unknown benchmark; allowed: .*mbpp"):
        benchmarks.get("bleu")
    with pytest.raises(ConfigError, match=r"^strategy.name='best': unknown strategy; allowed: selective"):
        strategies.get({"name": "best"})

    class Twin(strategies.Strategy):
        name = "selective"

    with pytest.raises(ValueError, match="two entries named 'selective'"):
        strategies.register(Twin)
