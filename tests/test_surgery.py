"""Width arithmetic (paper Table 2) and physical pruning on tiny models of every architecture."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit import strategies, surgery
from prunekit.errors import ConfigError, ModelError
from prunekit.mlp import check_architecture, mlp_layers
from prunekit.models import tiny_config, tiny_model

NOMINAL = [0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35]
TABLE2_7B = [5.41, 10.14, 15.54, 20.27, 25.00, 30.41, 35.14]
TABLE2_1_5B = [5.71, 10.00, 15.71, 20.00, 25.71, 30.00, 35.71]


@pytest.mark.parametrize("d_ff, expected", [(18944, TABLE2_7B), (8960, TABLE2_1_5B)])
def test_real_ratios_reproduce_table2(d_ff, expected):
    """The real ratio a prune run records in pruning.json: check_ratio's count, planned and recorded."""
    records = [strategies.get({"name": "random", "seed": 0}).plan(
        strategies.Scores(), n_prune=surgery.check_ratio(d_ff, r), d_ff=d_ff, layers=1, seed=0).record(r) for r in NOMINAL]
    assert [round(100 * rec["real_ratio"], 2) for rec in records] == expected
    assert all(rec["kept_width"] % 128 == 0 for rec in records)


def test_float_error_guard():
    # 0.14 * 6400 / 128 == 7.000000000000001 in floats; the exact answer is 7 blocks, not 8.
    assert 0.14 * 6400 / 128 > 7
    assert surgery.check_ratio(6400, 0.14) == 7 * 128
    assert surgery.check_ratio(8960, 0.1) == 7 * 128


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ConfigError, match=r"ratio=.*\(0, 1\)"):
        surgery.check_ratio(1536, ratio)


def test_ratio_leaving_too_few_neurons():
    with pytest.raises(ConfigError, match=r"keeps 0 of 384 .* \(0, 0.6666\]"):
        surgery.check_ratio(384, 0.9)
    assert surgery.check_ratio(384, 0.5) == 256


@pytest.mark.parametrize("d_ff, ratio, kept", [(320, 0.3, 128), (320, 0.6, 128), (320, 0.1, 256), (200, 0.36, 128),
                                               (130, 0.01, 128), (8960, 0.1, 8064)])
def test_kept_width_is_a_multiple_of_align_for_any_d_ff(d_ff, ratio, kept):
    # a regression: d_ff 320 at 0.3 kept 192, not a multiple of 128; the kept width is now the largest multiple of
    # 128 not above (1 - ratio) * d_ff, so at least `ratio` of the neurons go
    assert surgery.kept_width(d_ff, ratio) == kept
    assert surgery.check_ratio(d_ff, ratio) == d_ff - kept
    assert surgery.check_ratio(d_ff, ratio) / d_ff >= ratio


@pytest.mark.parametrize("d_ff, bad, top, shown", [(320, 0.61, 0.6, r"\(0, 0\.6000\]$"),
                                                   (200, 0.37, 0.36, r"\(0, 0\.3600\]$"),
                                                   (130, 0.02, 0.0153, r"\(0, 0\.0153\] \(1 - 128/130\)$")])
def test_allowed_ratios_printed_are_the_true_range(d_ff, bad, top, shown):
    # a regression: d_ff 320 printed (0, 0.6] while 0.41 was refused; 200 and 130 printed a range no ratio met
    with pytest.raises(ConfigError, match=shown):
        surgery.check_ratio(d_ff, bad)
    assert surgery.check_ratio(d_ff, top) == d_ff - 128  # the printed bound itself is allowed


@pytest.mark.parametrize("d_ff", [128, 100])
def test_width_at_or_below_align_has_no_ratio(d_ff):
    # d_ff 128 printed "(0, 0.0000]": no ratio keeps a positive multiple of 128 below 128
    with pytest.raises(ConfigError, match=f"d_ff {d_ff} cannot be pruned at prune.align=128.*smaller prune.align"):
        surgery.check_ratio(d_ff, 0.05)
    assert surgery.kept_width(d_ff, 0.5, align=32) == {128: 64, 100: 32}[d_ff]  # a smaller alignment can


def test_align_256_keeps_multiples_of_256():
    assert surgery.kept_width(8960, 0.1, 256) == 7936  # 31 x 256 (128-aligned: 8064, not a K-quant row length)
    assert surgery.check_ratio(1536, 0.05, 256) == 256


@pytest.mark.parametrize("align", [0, -128, 100, 48.0, True, "128"])
def test_bad_align_is_one_line(align):
    with pytest.raises(ConfigError, match=r"prune.align=.*positive multiple of 32"):
        surgery.check_align(align)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_pruning_zeroed_neurons_keeps_logits(arch, tmp_path):
    model = tiny_model(arch, vocab_size=256, d_ff=384)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    kept = [torch.sort(torch.randperm(384, generator=gen)[:256]).values for _ in mlp_layers(model)]
    # Zero the down_proj columns of the neurons to be removed: they contribute nothing any more.
    with torch.no_grad():
        for mlp, k in zip(mlp_layers(model), kept):
            dead = torch.ones(384, dtype=torch.bool)
            dead[k] = False
            mlp.down.weight[:, dead] = 0
    before = _logits(model, ids)
    surgery.prune_mlp(model, kept)
    assert model.config.intermediate_size == 256
    for mlp in mlp_layers(model):
        assert mlp.d_ff == 256
        for lin in mlp.input_linears():
            assert lin.out_features == lin.weight.shape[0] == (512 if mlp.layout == "fused" else 256)
    after = _logits(model, ids)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # stock loader, no prunekit code
    assert reloaded.config.intermediate_size == 256
    assert torch.equal(_logits(reloaded, ids), after)


def test_pruning_changes_logits_when_neurons_are_live():
    model = tiny_model("llama", vocab_size=256)
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    surgery.prune_mlp(model, [torch.arange(128, 384)] * 2)
    assert not torch.allclose(_logits(model, ids), before)


def test_biases_are_sliced():
    cfg = tiny_config("llama", 256)
    cfg.mlp_bias = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    mlp = mlp_layers(model)[0]
    keep = torch.arange(0, 384, 3)[:128]
    gate_bias = mlp.module.gate_proj.bias.detach().clone()
    down_bias = mlp.down.bias.detach().clone()
    surgery.prune_mlp(model, [keep, keep])
    assert torch.equal(mlp.module.gate_proj.bias, gate_bias[keep])
    assert torch.equal(mlp.down.bias, down_bias)  # the output bias is per hidden unit, not per neuron


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config

    with pytest.raises(ModelError, match="'gpt2'.*supported model types: gemma"):
        check_architecture(GPT2Config())
