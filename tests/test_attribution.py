"""Attribution (integrated gradients over gate scaling) and the detrimental / attribution strategies.

Tiny random models with vocab 256 and random token ids: captum vs a hand-written value x gradient Riemann sum,
IG completeness per layer, deactivation == removal, the in-process grid search and select_best, bad input.
"""

import copy

import pytest
import torch

from prunekit import attribution as A
from prunekit import models, strategies, surgery
from prunekit.errors import ConfigError
from prunekit.mlp import mlp_layers

VOCAB = 256
D_FF = 384
LAYOUT_ARCHS = ("llama", "phi3")  # split layout and Phi-3's fused gate_up_proj


def _ids(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def _model(arch: str, *, sharpen: float = 1.0, layers: int = 2):
    """A tiny model; ``sharpen`` > 1 scales MLP weights so each layer's effect is large and clearly nonlinear."""
    model = models.tiny_model(arch, VOCAB, layers=layers, d_ff=D_FF)
    with torch.no_grad():
        for mlp in mlp_layers(model):
            for lin in mlp.input_linears():
                lin.weight.mul_(sharpen)
            mlp.down.weight.mul_(sharpen)
    return model


def _gate_zeroed_logits(model, layer: int, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), A.gate_scaling(mlp_layers(model)[layer]) as state:
        state["scale"] = torch.zeros(1, D_FF)
        return A.last_logits(model, ids[None])[0]


def _reference_ig(model, layer: int, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Hand-written IG (midpoint Riemann sum), independent of captum: value x gradient on the gate output itself.

    For each alpha, a hook replaces the gate output z by alpha * z (a leaf kept for its gradient); the attribution
    of neuron i is sum over positions of z[t, i] * mean_alpha dF/d(alpha z)[t, i].
    """
    mlp = mlp_layers(model)[layer]
    with torch.no_grad():
        target = int(A.last_logits(model, ids[None])[0].argmax())
    seen = {}

    def hook(_m, _a, out):
        gate = out[..., :D_FF] if mlp.layout == "fused" else out
        scaled = (seen["alpha"] * gate.detach()).requires_grad_(True)
        seen["z"], seen["scaled"] = gate.detach(), scaled
        return torch.cat([scaled, out[..., D_FF:]], dim=-1) if mlp.layout == "fused" else scaled

    total = torch.zeros(D_FF, dtype=torch.float64)
    handle = mlp.input_linears()[0].register_forward_hook(hook)
    try:
        for k in range(steps):
            seen["alpha"] = (k + 0.5) / steps
            logit = A.last_logits(model, ids[None])[0, target]
            (grad,) = torch.autograd.grad(logit, seen["scaled"])
            total += (seen["z"] * grad)[0].sum(0).double()
    finally:
        handle.remove()
    return (total / steps).float()


# ------------------------------------------------------------------------------------------ IG correctness
@pytest.mark.parametrize("arch", LAYOUT_ARCHS)
def test_captum_equals_hand_written_reference(arch):
    model = _model(arch, sharpen=4.0)
    ids = _ids()
    got = A.ig_scores_from_ids(model, [ids], steps=10, method="riemann_middle")
    for layer in range(2):
        ref = _reference_ig(model, layer, ids, steps=10)
        assert ref.abs().max() > 1e-4  # not trivially zero
        torch.testing.assert_close(got[layer], ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", LAYOUT_ARCHS)
def test_ig_completeness_error_shrinks_with_steps(arch):
    """Sum of a layer's attributions -> F(model) - F(layer's gate zeroed); the midpoint rule's error falls ~4x per
    doubling of steps once the path is resolved (coarse grids can be lucky, so the sequence starts at 16)."""
    model = _model(arch, sharpen=4.0)
    ids = _ids(seed=1)
    with torch.no_grad():
        full = A.last_logits(model, ids[None])[0]
    target = int(full.argmax())
    diffs = [float(full[target] - _gate_zeroed_logits(model, layer, ids)[target]) for layer in range(2)]
    errors = []
    for steps in (16, 32, 64, 128):
        scores = A.ig_scores_from_ids(model, [ids], steps=steps, method="riemann_middle")
        errors.append([abs(float(scores[layer].sum()) - diffs[layer]) for layer in range(2)])
    for layer in range(2):
        assert abs(diffs[layer]) > 1e-2
        seq = [e[layer] for e in errors]
        assert all(b < a for a, b in zip(seq, seq[1:])), (layer, seq)
        assert seq[-1] <= 0.01 * abs(diffs[layer]), (layer, seq, diffs[layer])


def test_scores_average_prompts_and_batching_does_not_change_them():
    model = _model("llama", sharpen=2.0)
    a, b = _ids(10, seed=2), _ids(14, seed=3)
    both = A.ig_scores_from_ids(model, [a, b], steps=6)
    each = (A.ig_scores_from_ids(model, [a], steps=6) + A.ig_scores_from_ids(model, [b], steps=6)) / 2
    torch.testing.assert_close(both, each, rtol=1e-5, atol=1e-7)
    chunked = A.ig_scores_from_ids(model, [a, b], steps=6, batch_size=4)
    torch.testing.assert_close(both, chunked, rtol=1e-4, atol=1e-6)
    only_1 = A.ig_scores_from_ids(model, [a, b], steps=6, layers=[1])
    assert only_1.shape == (1, D_FF)
    torch.testing.assert_close(only_1[0], both[1])
    assert all(p.requires_grad for p in model.parameters())  # frozen() restored the flags


def test_ig_scores_from_text_and_layer_cache(tokenizer, tmp_path):
    model = models.tiny_model("qwen2", len(tokenizer), layers=2, d_ff=D_FF)
    prompts = ["Tom has 3 apples and buys 4 more. How many apples?", "What is 12 times 7?"]
    direct = A.ig_scores(model, tokenizer, prompts, steps=4)
    key = A.cache_key({"tiny": "qwen2"}, prompts, steps=4)
    assert key != A.cache_key({"tiny": "qwen2"}, prompts, steps=5)
    one, hit = A.cached_ig_scores(model, tokenizer, prompts, key=key, cache_dir=tmp_path, layers=[1], steps=4)
    assert hit == [] and (tmp_path / key / "layer001.pt").exists()
    torch.testing.assert_close(one[0], direct[1])
    # Poison the cached row (a valid entry): a cache hit must return it instead of recomputing.
    entry = torch.load(tmp_path / key / "layer001.pt", weights_only=True)
    torch.save({**entry, "scores": torch.full((D_FF,), 7.0)}, tmp_path / key / "layer001.pt")
    full, hit = A.cached_ig_scores(model, tokenizer, prompts, key=key, cache_dir=tmp_path, steps=4)
    assert hit == [1]
    torch.testing.assert_close(full[0], direct[0])
    assert torch.all(full[1] == 7.0)


# ------------------------------------------------------------------------------------------ deactivation
@pytest.mark.parametrize("arch", LAYOUT_ARCHS)
@pytest.mark.parametrize("where", surgery.WHERE)
def test_deactivate_equals_removing_the_neurons(arch, where):
    model = _model(arch, sharpen=2.0)
    ids = _ids()[None]
    neurons = torch.tensor([3, 50, 200, 383])
    removed = copy.deepcopy(model)
    mlp_layers(removed)[1].keep(strategies.kept_indices(neurons[None], D_FF)[0])
    with torch.no_grad():
        original = A.last_logits(model, ids)
        expected = A.last_logits(removed, ids)
    assert not torch.allclose(original, expected)  # the neurons mattered
    surgery.deactivate(model, 1, neurons, where)
    with torch.no_grad():
        torch.testing.assert_close(A.last_logits(model, ids), expected, rtol=1e-5, atol=1e-5)


def test_deactivated_checkpoint_is_stock_loadable(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _model("llama")
    surgery.deactivate(model, 0, torch.tensor([1, 2, 3]))
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.intermediate_size == D_FF
    with torch.no_grad():
        torch.testing.assert_close(A.last_logits(again, _ids()[None]), A.last_logits(model, _ids()[None]))
    assert torch.all(mlp_layers(again)[0].module.gate_proj.weight[[1, 2, 3]] == 0)


# ------------------------------------------------------------------------------------------ selections
def test_detrimental_takes_top_percent_of_one_layer_ties_by_index():
    scores = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    top = A.detrimental_neurons(scores, 2, 0.2)
    assert top.tolist() == sorted(torch.argsort(scores[2], descending=True)[:20].tolist())
    assert A.detrimental_neurons(torch.zeros(1, 10), 0, 0.3).tolist() == [0, 1, 2]
    assert A.n_detrimental(1536, 0.05) == 77 and A.n_detrimental(8960, 0.1) == 896 and A.n_detrimental(10, 1) == 10


def test_random_control_is_seeded_and_same_size():
    a, b, c = A.random_neurons(512, 0.1, 42), A.random_neurons(512, 0.1, 42), A.random_neurons(512, 0.1, 33)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.numel() == A.n_detrimental(512, 0.1) and torch.equal(a, torch.sort(a).values)


def test_combined_scores_interpolate_between_the_two_rankings():
    gen = torch.Generator().manual_seed(0)
    sel, attr = torch.randn(2, 300, generator=gen) * 5 + 2, torch.randn(2, 300, generator=gen) * 0.01
    for w, alone in ((0.0, sel), (1.0, attr)):
        c = A.combined_scores(sel, attr, w)
        assert torch.equal(torch.argsort(c, dim=1, stable=True), torch.argsort(alone, dim=1, stable=True))
    half = A.combined_scores(sel, attr, 0.5)
    torch.testing.assert_close(half, 0.5 * A.zscore(sel) + 0.5 * A.zscore(attr))
    z = A.zscore(attr)
    torch.testing.assert_close(z.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(1, unbiased=False), torch.ones(2))


# ------------------------------------------------------------------------------------------ grid search
def test_select_best_picks_the_argmax_of_deactivated_copies():
    model = _model("llama", sharpen=3.0, layers=3)
    adapt = [_ids(8, seed=s) for s in range(3)]
    scores = A.ig_scores_from_ids(model, adapt[:2], steps=4)

    def adaptation_metric(m) -> float:  # a stand-in metric: mean top logit on the adaptation prompts
        with torch.no_grad():
            return float(torch.stack([A.last_logits(m, ids[None]).max() for ids in adapt]).mean())

    results = []
    for layer in (0, 1, 2):
        for p in (0.05, 0.2, 0.5):
            m = copy.deepcopy(model)
            surgery.deactivate(m, layer, A.detrimental_neurons(scores, layer, p))
            results.append({"layer": layer, "percent": p, "adapt/score": adaptation_metric(m)})
    brute = {(r["layer"], r["percent"]): r["adapt/score"] for r in results}
    best = A.select_best(results, "adapt/score")
    assert (best["layer"], best["percent"]) == max(brute, key=brute.get)
    worst = A.select_best(results, "adapt/score", higher_is_better=False)
    assert (worst["layer"], worst["percent"]) == min(brute, key=brute.get)
    assert len(set(brute.values())) > 1  # the settings differ, so the choice is not a tie-break


def test_select_best_ties_prefer_smaller_percent_then_lower_layer():
    results = [{"layer": 3, "percent": 0.2, "acc": 0.8}, {"layer": 1, "percent": 0.5, "acc": 0.8},
               {"layer": 2, "percent": 0.2, "acc": 0.8}, {"layer": 0, "percent": 0.05, "acc": 0.7}]
    assert A.select_best(results, "acc") == {"layer": 2, "percent": 0.2, "acc": 0.8}


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, message", [
    (lambda: A.check_layer(24, 24), r"strategy.layer=24: out of range; allowed: integers 0..23"),
    (lambda: A.check_layer(-1, 24), r"strategy.layer=-1: out of range; allowed: integers 0..23"),
    (lambda: A.check_percent(0), r"strategy.percent=0: must be a fraction in \(0, 1\]"),
    (lambda: A.check_percent(1.5), r"strategy.percent=1.5: must be a fraction in \(0, 1\]"),
    (lambda: A.check_samples(10, 4),
     r"strategy.samples=10: larger than the adaptation set \(4 prompts\); allowed: 1..4"),
    (lambda: A.sample_prompts(["a", "b"], 3, 0), r"strategy.samples=3: larger than the adaptation set"),
    (lambda: A.check_steps(1), r"strategy.steps=1: must be an integer >= 2"),
    (lambda: A.check_steps(20, "riemann_trapezoid"), r"strategy.method='riemann_trapezoid'.*allowed: riemann_middle"),
    (lambda: A.check_weight(1.2), r"strategy.weight=1.2: must be in \[0, 1\]"),
    (lambda: A.check_options({"layer": 30, "percent": 0.2}, n_layers=30), r"strategy.layer=30.*0..29"),
    (lambda: A.check_options({"samples": 11}, n_layers=2, available=10), r"strategy.samples=11"),
    (lambda: A.check_options({"batch_size": 0}, n_layers=2), r"strategy.batch_size=0: must be an integer >= 1"),
    (lambda: A.check_options({"rank_by": "x"}, n_layers=2), r"strategy.rank_by='x': allowed: signed, abs"),
    (lambda: A.combined_scores(torch.zeros(2, 8), torch.zeros(1, 8), 0.5), r"same \[layers, d_ff\] shape"),
    (lambda: A.select_best([], "acc"), r"no grid results"),
    (lambda: A.select_best([{"layer": 0, "percent": 0.1, "em": 1.0}], "acc"), r"lacks \['acc'\].*\['em'\]"),
    (lambda: A.detrimental_neurons(torch.zeros(2, 8), 2, 0.1),
     r"strategy.layer=2: out of range; allowed: integers 0..1"),
])
def test_bad_input_names_the_option(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_bad_input_to_ig_and_deactivate():
    model = _model("llama")
    with pytest.raises(ConfigError, match=r"strategy.layer=5: out of range; allowed: integers 0..1"):
        A.ig_scores_from_ids(model, [_ids()], steps=4, layers=[5])
    with pytest.raises(ConfigError, match=r"strategy.where='up': allowed: gate, down"):
        surgery.deactivate(model, 0, torch.tensor([1]), where="up")
    with pytest.raises(ConfigError, match=r"strategy.layer=2: out of range; allowed: integers 0..1"):
        surgery.deactivate(model, 2, torch.tensor([1]))
    with pytest.raises(ConfigError, match=r"input_ids: each prompt must be a non-empty 1-D"):
        A.ig_scores_from_ids(model, [torch.zeros(0, dtype=torch.long)], steps=4)
    A.check_options({"layer": 0, "percent": 1.0, "steps": 20, "samples": 10, "weight": 0}, n_layers=2, available=10)


@pytest.mark.parametrize("option", ["attribution", "detrimental", "detrimental_random", "selective_attribution"])
def test_strategy_configs_compose_and_pass_validation(option, monkeypatch, compose_config):
    from omegaconf import OmegaConf

    monkeypatch.setenv("PRUNEKIT_CACHE", "/tmp/prunekit-compose")
    cfg = compose_config("prune", f"strategy={option}", "strategy.seed=7")
    strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
    assert strategy["name"] == option and strategy["seed"] == 7
    A.check_options(strategy, n_layers=30, available=10)
    if option.startswith("detrimental"):
        assert 0 <= strategy["layer"] and 0 < strategy["percent"] <= 1
