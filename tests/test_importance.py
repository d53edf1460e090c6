"""Importance baselines (wanda_sp, flap, contrastive): capture's token statistics against a hand reference, the
scores against hand-computed values, and the strategies end to end on a tiny model."""

import json
import math

import pytest
import torch

from prunekit import capture, models, recipes, strategies
from prunekit.errors import ConfigError
from prunekit.mlp import mlp_layers
from prunekit.models import tiny_model
from prunekit.scoring import RunningStats, TokenStats, contrastive, flap, merge_all, wanda_sp
from tests.helpers import hand_reference, hooked_batch
from tests.helpers import prune_cfg as _cfg


def _tokens(x: torch.Tensor) -> RunningStats:
    """Statistics of one set whose tokens are the rows of x [tokens, d_ff] (one layer)."""
    x = x.double()
    t = TokenStats(x.shape[0], x.sum(0, keepdim=True), (x * x).sum(0, keepdim=True))
    return RunningStats(1, torch.zeros(1, x.shape[1]), torch.zeros(1, x.shape[1]), t)


# Two neurons, two target tokens: neuron 0 sees 1 and -2, neuron 1 sees 0 and 3.
X = torch.tensor([[1.0, 0.0], [-2.0, 3.0]])
W_DOWN = [torch.tensor([[1.0, -1.0], [2.0, 0.5]])]  # [hidden 2, d_ff 2]: column L1 3, 1.5; squared L2 5, 1.25


def test_wanda_sp_by_hand():
    # ||x_0|| = sqrt(5), ||x_1|| = 3  ->  3 * sqrt(5), 1.5 * 3
    torch.testing.assert_close(wanda_sp(_tokens(X), W_DOWN), torch.tensor([[3 * math.sqrt(5), 4.5]]))


def test_flap_by_hand():
    # Var(1, -2) = 2.25, Var(0, 3) = 2.25  ->  2.25 * 5, 2.25 * 1.25
    torch.testing.assert_close(flap(_tokens(X), W_DOWN), torch.tensor([[11.25, 2.8125]]))


def test_contrastive_by_hand_and_never_drops_a_target_neuron_for_distractor_activity():
    w = [torch.ones(1, 3)]  # column L1 = 1 for every neuron: importance = RMS of x
    target = _tokens(torch.tensor([[3.0, 1.0, 1.0]]))       # RMS 3, 1, 1   -> / mean 5/3: 1.8, 0.6, 0.6
    distractor = _tokens(torch.tensor([[9.0, 0.0, 3.0]]))   # RMS 9, 0, 3   -> / mean 4:   2.25, 0, 0.75
    got = contrastive(target, [distractor], w, weight=0.5)
    # I_t - 0.5 * min(I_d, I_t): 1.8 - 0.9, 0.6 - 0, 0.6 - 0.3
    torch.testing.assert_close(got, torch.tensor([[0.9, 0.6, 0.3]]))
    assert int(got.argmin()) == 2  # neuron 0, the target's most used, is kept although distractors use it more
    torch.testing.assert_close(contrastive(target, [distractor], w, weight=0.0), torch.tensor([[1.8, 0.6, 0.6]]))


def test_token_statistics_merge_exactly():
    x = torch.randn(10, 4)
    whole = _tokens(x).tokens
    parts = merge_all([_tokens(x[:3]), _tokens(x[3:])]).tokens
    torch.testing.assert_close(parts.sum, whole.sum)
    torch.testing.assert_close(parts.sumsq, whole.sumsq)
    assert parts.count == 10
    torch.testing.assert_close(whole.var, x.double().var(0, unbiased=False).unsqueeze(0))


def test_capture_token_sums_equal_hand_reference(arch):
    model, mask, inputs, buffer = hooked_batch(arch, seed=1)
    for i, mlp in enumerate(mlp_layers(model)):
        x = hand_reference(model, mlp, inputs[i])[mask.bool()].double()  # [real tokens, F]
        s, sq = buffer[("tokens", i)]
        torch.testing.assert_close(s, x.sum(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sq, (x * x).sum(0), rtol=1e-5, atol=1e-6)


def test_capture_statistics_carry_token_counts(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    prompts = ["Tom has 3 apples.", "Hi!", "What is the capital of France?"]
    stats = capture.statistics(model, tokenizer, {"target": prompts}, capture.CaptureSettings(batch_size=2))
    n_tokens = sum(len(ids) for ids in tokenizer(prompts)["input_ids"])
    assert stats["target"].tokens.count == n_tokens
    assert stats["target"].tokens.sum.shape == (2, model.config.intermediate_size)


@pytest.mark.parametrize("name", ["wanda_sp", "flap", "contrastive"])
def test_strategy_prunes_its_lowest_scores(tmp_path, model_cache, name):
    recipes.prune(_cfg(tmp_path, model_cache, f"strategy={name}", "ratio=0.3", "evaluate=false"), tmp_path / name)
    record = json.loads((tmp_path / name / "pruning.json").read_text())
    counts = {"target": 6, "distractor/conversations": 6, "distractor/squad": 6}
    stats = capture.load_cached(tmp_path / "cache" / "activations" / f"{record['capture_cache_key']}.pt",
                                {"sets": counts, "layers": 2, "d_ff": 384})
    source, _ = models.load(models.resolve("tiny:llama"), model_cache)  # the same seeded weights the run pruned
    down = [m.down.weight for m in mlp_layers(source)]
    # the lowest 128 of the strategy's own scores go in every layer; survivors keep their order
    scores = strategies.get({"name": name, "weight": 0.5}).scores(strategies.Scores(stats=stats, down_weights=down))
    lowest = [set(torch.argsort(row, stable=True)[:128].tolist()) for row in scores]
    assert record["kept_indices"] == [sorted(set(range(384)) - low) for low in lowest]
    assert record["kept_width"] == 256


def test_contrastive_weight_is_checked_before_loading(tmp_path, model_cache):
    with pytest.raises(ConfigError, match=r"strategy.weight=1.*\[0, 1\)"):
        recipes.prune(_cfg(tmp_path, model_cache, "strategy=contrastive", "strategy.weight=1"), tmp_path / "r")
