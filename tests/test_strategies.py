"""Strategies: selective and reverse take opposite ends, random is seeded, ties go by index."""

import pytest
import torch

from prunekit import strategies


def _scores(layers=3, d_ff=512, seed=0):
    return torch.randn(layers, d_ff, generator=torch.Generator().manual_seed(seed))


def test_selective_and_reverse_pick_opposite_ends():
    scores = _scores()
    sel = strategies.pruned_indices("selective", strategies.ranking("selective", scores), 128, d_ff=512, layers=3)
    rev = strategies.pruned_indices("reverse", strategies.ranking("reverse", scores), 128, d_ff=512, layers=3)
    for layer in range(3):
        s = scores[layer]
        assert s[sel[layer]].max() < s[rev[layer]].min()
        assert set(sel[layer].tolist()) == set(torch.argsort(s)[:128].tolist())
        assert set(rev[layer].tolist()) == set(torch.argsort(s, descending=True)[:128].tolist())


def test_kept_indices_are_sorted_complement():
    scores = _scores()
    kept = strategies.choose("selective", scores, 128, d_ff=512, layers=3)
    pruned = strategies.pruned_indices("selective", scores, 128, d_ff=512, layers=3)
    for k, p in zip(kept, pruned):
        assert k.numel() == 384
        assert torch.equal(k, torch.sort(k).values)
        assert set(k.tolist()).isdisjoint(p.tolist())
        assert len(set(k.tolist()) | set(p.tolist())) == 512


def test_ties_broken_by_index():
    scores = torch.zeros(1, 256)
    assert strategies.pruned_indices("selective", scores, 128, d_ff=256, layers=1)[0].tolist() == list(range(128))
    rev = strategies.ranking("reverse", scores)
    assert strategies.pruned_indices("reverse", rev, 128, d_ff=256, layers=1)[0].tolist() == list(range(128))


def test_random_is_reproducible_per_seed_and_differs_across_seeds():
    a = strategies.choose("random", None, 128, d_ff=512, layers=2, seed=42)
    b = strategies.choose("random", None, 128, d_ff=512, layers=2, seed=42)
    c = strategies.choose("random", None, 128, d_ff=512, layers=2, seed=33)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[1])  # layers draw different sets


def test_unknown_strategy_is_named():
    with pytest.raises(strategies.StrategyError, match="strategy.name='best'.*allowed: selective, reverse, random, attribution"):
        strategies.choose("best", _scores(), 128, d_ff=512, layers=3)


def test_attribution_rankings():
    s, a = _scores(seed=1), _scores(seed=2)
    assert torch.equal(strategies.ranking("attribution", attribution=a), a)
    assert torch.equal(strategies.ranking("attribution", attribution=a, rank_by="abs"), a.abs())
    both = strategies.ranking("selective_attribution", s, a, weight=0.0)
    assert torch.equal(torch.argsort(both, dim=1, stable=True), torch.argsort(s, dim=1, stable=True))


def test_deactivation_strategies_have_no_uniform_set():
    with pytest.raises(strategies.StrategyError, match="deactivates one layer"):
        strategies.choose("detrimental", _scores(), 128, d_ff=512, layers=3)


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
    with pytest.raises(benchmarks.BenchmarkError, match=r"^task.eval.metric='bleu': unknown benchmark; allowed: .*mbpp"):
        benchmarks.get("bleu")
    with pytest.raises(strategies.StrategyError, match=r"^strategy.name='best': unknown strategy; allowed: selective"):
        strategies.get({"name": "best"})

    class Twin(strategies.Strategy):
        name = "selective"

    with pytest.raises(ValueError, match="two entries named 'selective'"):
        strategies.register(Twin)
