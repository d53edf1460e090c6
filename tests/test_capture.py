"""Capture equals a reference computed by hand from the gate/up weights, for every adapter."""

import pytest
import torch

from prunekit import capture
from prunekit.mlp import mlp_layers
from prunekit.models import tiny_model
from prunekit.scoring import RunningStats
from tests.helpers import PROMPTS, hand_reference, hooked_batch, mlp_inputs


def test_hook_equals_hand_reference(arch):
    model, mask, inputs, buffer = hooked_batch(arch)
    for i, mlp in enumerate(mlp_layers(model)):
        act = hand_reference(model, mlp, inputs[i]).abs()  # [B, T, F]
        for b in range(3):
            n = int(mask[b].sum())
            torch.testing.assert_close(buffer[i][b], act[b, :n].mean(0), rtol=1e-5, atol=1e-7)
    assert not any(h for m in mlp_layers(model) for h in m.down._forward_pre_hooks.values())  # hooks removed


@pytest.mark.parametrize("chat_template", [False, True])
def test_statistics_equal_per_prompt_reference(tokenizer, chat_template):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    side = tokenizer.padding_side
    settings = capture.CaptureSettings(max_length=64, batch_size=2, chat_template=chat_template)
    stats = capture.statistics(model, tokenizer, {"target": PROMPTS[:3], "distractor/x": PROMPTS[3:]}, settings)
    # Reference: one prompt at a time (no padding at all), hooks on the hand reference.
    per_prompt = []
    for p in PROMPTS[:3]:
        if chat_template:  # the template's own tokens, nothing added on top
            ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"][:, :64]
        else:
            ids = tokenizer(p, return_tensors="pt", truncation=True, max_length=64)["input_ids"]
        inputs = mlp_inputs(model, ids, torch.ones_like(ids))
        per_prompt.append(torch.stack([hand_reference(model, m, inputs[i]).abs()[0].mean(0)
                                       for i, m in enumerate(mlp_layers(model))]))
    ref = RunningStats.of(torch.stack(per_prompt))
    assert stats["target"].count == 3 and stats["distractor/x"].count == 2
    torch.testing.assert_close(stats["target"].mean, ref.mean, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(stats["target"].m2, ref.m2, rtol=1e-3, atol=1e-9)
    assert tokenizer.padding_side == side  # the tokenizer is left as it came


def test_skip_first_leaves_the_first_tokens_out_of_the_means(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[4]]  # each longer than the 2 tokens left out
    settings = capture.CaptureSettings(max_length=64, batch_size=2, skip_first=2)
    stats = capture.statistics(model, tokenizer, {"target": prompts}, settings)
    per_prompt = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt")["input_ids"]
        inputs = mlp_inputs(model, ids, torch.ones_like(ids))  # attention still sees the first tokens
        per_prompt.append(torch.stack([hand_reference(model, m, inputs[i]).abs()[0, 2:].mean(0)
                                       for i, m in enumerate(mlp_layers(model))]))
    torch.testing.assert_close(stats["target"].mean, RunningStats.of(torch.stack(per_prompt)).mean, rtol=1e-4, atol=1e-7)
    n_tokens = sum(len(ids) - 2 for ids in tokenizer(prompts)["input_ids"])
    assert stats["target"].tokens.count == n_tokens


def test_batch_size_does_not_change_statistics(tokenizer):
    model = tiny_model("qwen2", vocab_size=len(tokenizer))
    sets = {"target": PROMPTS}
    one = capture.statistics(model, tokenizer, sets, capture.CaptureSettings(max_length=32, batch_size=1))
    many = capture.statistics(model, tokenizer, sets, capture.CaptureSettings(max_length=32, batch_size=4))
    torch.testing.assert_close(one["target"].mean, many["target"].mean, rtol=1e-4, atol=1e-7)


def test_bad_capture_settings():
    with pytest.raises(ValueError, match=r"capture.max_length=0: must be an integer >= 1"):
        capture.CaptureSettings(max_length=0)


def _with_tokens(stats: RunningStats) -> RunningStats:
    from prunekit.scoring import TokenStats

    layers, d_ff = stats.mean.shape
    return RunningStats(stats.count, stats.mean, stats.m2,
                        TokenStats(7, torch.rand(layers, d_ff, dtype=torch.float64),
                                   torch.rand(layers, d_ff, dtype=torch.float64)))


def test_cache_round_trip(tmp_path):
    stats = {"target": _with_tokens(RunningStats.of(torch.rand(4, 2, 3)))}
    expected = {"sets": {"target": 4}, "layers": 2, "d_ff": 3}
    path = tmp_path / "k.pt"
    assert capture.load_cached(path, expected) is None
    capture.save_cached(path, stats)
    back = capture.load_cached(path, expected)
    assert back["target"].count == 4 and torch.equal(back["target"].mean, stats["target"].mean)
    assert torch.equal(back["target"].tokens.sumsq, stats["target"].tokens.sumsq)
    assert [p.name for p in tmp_path.iterdir()] == ["k.pt"]  # no temp files left behind


def test_capture_leaves_the_tokenizer_as_it_came(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    model = tiny_model("llama", vocab_size=len(tok))
    capture.statistics(model, tok, {"target": PROMPTS[:2]}, capture.CaptureSettings(max_length=16, batch_size=2))
    assert tok.pad_token is None and tok.padding_side == tokenizer.padding_side
