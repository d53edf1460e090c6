"""Resource measurements: hand-counted parameters, checkpoint bytes, CPU peak memory, batch-1 throughput."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from prunekit.errors import ConfigError
from prunekit.evaluation import generation as G
from prunekit.evaluation import resources as R
from tests.helpers import word_tokenizer

PROMPTS = ["the cat sat on the mat", "a dog", "the dog and the cat sat on the mat and the dog ran"]
H, FF, L, HEADS, KV = 64, 256, 2, 4, 2


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(PROMPTS)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                      num_attention_heads=HEADS, num_key_value_heads=KV, eos_token_id=2, bos_token_id=1,
                      pad_token_id=3, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_count_parameters_by_hand(model, tok):
    v, kv_dim = len(tok), KV * (H // HEADS)
    attn = H * H + 2 * H * kv_dim + H * H  # q, k, v, o (no bias)
    mlp = 3 * H * FF  # gate, up, down
    per_layer = attn + mlp + 2 * H  # + input and post-attention RMSNorm
    expected = v * H + L * per_layer + H + H * v  # embeddings, layers, final norm, untied lm_head
    assert R.count_parameters(model) == expected


def test_checkpoint_size_equals_weight_files(model, tmp_path):
    model.save_pretrained(tmp_path)
    weights = sorted(tmp_path.glob("*.safetensors"))
    assert weights and (tmp_path / "config.json").exists()
    size = R.checkpoint_size_bytes(tmp_path)
    assert size == sum(p.stat().st_size for p in weights)
    tensor_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert tensor_bytes <= size < tensor_bytes + 64 * 1024  # safetensors adds only a JSON header
    assert R.checkpoint_size_bytes(weights[0]) == weights[0].stat().st_size
    assert R.model_resources(model, tmp_path)["resources/checkpoint_gb"] == pytest.approx(size / 2**30)


def test_checkpoint_bad_paths(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        R.checkpoint_size_bytes(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no weight files"):
        R.checkpoint_size_bytes(tmp_path)


def test_cpu_peak_memory_grows_with_a_big_tensor():
    reset = R.reset_peak_memory("cpu")
    before = R.peak_memory_gb("cpu")
    cur_before = R.current_memory_gb("cpu")
    big = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MiB, every page written
    during = R.peak_memory_gb("cpu")
    assert R.current_memory_gb("cpu") >= cur_before + 0.2
    del big
    assert during >= before + 0.2  # GiB
    # The peak stays when memory is freed (Linux updates the high-water mark lazily: allow a few pages).
    assert R.peak_memory_gb("cpu") >= during - 0.01
    if reset:  # Linux: a new window starts below the old peak once the tensor is gone
        R.reset_peak_memory("cpu")
        assert R.peak_memory_gb("cpu") < during - 0.1


def _expected_new_tokens(model, tok, max_new_tokens):
    """Tokens each prompt really generates at batch 1 (the EOS token counts: it cost a step)."""
    gens = G.generate(model, tok, PROMPTS, max_new_tokens=max_new_tokens, batch_size=1, progress=False)
    return sum(g.n_tokens + (g.stop_reason == "eos") for g in gens), gens


KEYS = {"resources/tokens_per_s", "resources/prefill_tokens_per_s", "resources/decode_tokens_per_s",
        "resources/new_tokens", "resources/prompt_tokens", "resources/throughput_prompts"}


def test_throughput_keys_and_counts(model, tok):
    out = R.throughput(model, tok, PROMPTS, max_new_tokens=6, warmup=1, progress=False)
    assert set(out) == KEYS
    for k in ("resources/tokens_per_s", "resources/prefill_tokens_per_s", "resources/decode_tokens_per_s"):
        assert math.isfinite(out[k]) and out[k] > 0, k
    expected, _ = _expected_new_tokens(model, tok, 6)
    assert out["resources/new_tokens"] == expected
    assert out["resources/prompt_tokens"] == sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert out["resources/throughput_prompts"] == len(PROMPTS)


def test_throughput_counts_follow_early_eos(model, tok):
    _, gens = _expected_new_tokens(model, tok, 6)
    m = copy.deepcopy(model)
    m.generation_config.eos_token_id = [2, gens[0].token_ids[1]]  # prompt 0 now stops after 2 tokens
    expected, gens2 = _expected_new_tokens(m, tok, 6)
    assert gens2[0].stop_reason == "eos" and expected < 6 * len(PROMPTS)
    out = R.throughput(m, tok, PROMPTS, max_new_tokens=6, warmup=0, progress=False)
    assert out["resources/new_tokens"] == expected


@pytest.mark.parametrize("kw", [{"max_new_tokens": 0}, {"warmup": -1}])
def test_throughput_bad_input(model, tok, kw):
    with pytest.raises(ConfigError, match="max_new_tokens|warmup"):
        R.throughput(model, tok, PROMPTS, progress=False, **kw)
    with pytest.raises(ConfigError, match="prompt"):
        R.throughput(model, tok, [], progress=False)


def test_model_resources_keys(model):
    out = R.model_resources(model)
    assert out["resources/params"] == R.count_parameters(model)
    assert out["resources/peak_mem_gb"] > 0 and out["resources/current_mem_gb"] > 0
