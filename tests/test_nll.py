"""Target NLL equals an explicit log_softmax reference, scores answer tokens only, and does not depend on batching."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from prunekit.errors import ConfigError
from prunekit.evaluation import nll as N
from tests.helpers import word_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIRS = [
    ("Question : what is two plus two ? Answer :", "two plus two is four"),
    ("Question : a very long question about apples and pears and the number of apples that are left when "
     "some apples are eaten by the friends of the farmer ? Answer :", "four apples are left"),
    ("Q :", "one"),
    ("Write a function that adds two numbers :", "def add ( a , b ) : return a + b"),
]


def _tokenizer(texts):
    return word_tokenizer(texts)


def _model(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, bos_token_id=1, pad_token_id=3)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return _tokenizer([t for pair in PAIRS for t in pair])


@pytest.fixture(scope="module")
def model(tok):
    return _model(tok)


def _reference(model, tok, pairs):
    """One pair at a time: -log_softmax at each answer position, summed over all answer tokens, then averaged."""
    total, count = 0.0, 0
    for prompt, answer in pairs:
        p = tok(prompt)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        for j in range(max(len(p), 1), len(p) + len(a)):
            total -= logp[j - 1, ids[0, j]].item()
            count += 1
    return total / count


def test_equals_hand_reference(model, tok):
    got = N.target_nll(model, tok, PAIRS, batch_size=3, progress=False)
    ref = _reference(model, tok, PAIRS)
    assert math.isfinite(got) and got > 0
    assert got == pytest.approx(ref, rel=1e-6)


def test_batched_equals_unbatched(model, tok):
    one = N.target_nll(model, tok, PAIRS, batch_size=1, progress=False)
    many = N.target_nll(model, tok, PAIRS, batch_size=len(PAIRS), progress=False)
    assert many == pytest.approx(one, rel=1e-6)


def test_token_cap_bounds_every_forward_and_keeps_the_value(model, tok, monkeypatch):
    examples = [N.build_example(tok, p, a) for p, a in PAIRS]
    longest = max(len(ids) for ids, _ in examples)
    cap = longest + 1  # room for one longest row only, so the batches of len(PAIRS) rows must be split
    shapes, forward = [], N.nll_sum

    def recording(model, input_ids, **kw):
        shapes.append(tuple(input_ids.shape))
        return forward(model, input_ids, **kw)

    monkeypatch.setattr(N, "nll_sum", recording)
    capped = N.target_nll(model, tok, PAIRS, batch_size=len(PAIRS), max_batch_tokens=cap, progress=False)
    assert len(shapes) > 1 and all(rows * width <= cap or rows == 1 for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == len(PAIRS)
    assert capped == pytest.approx(_reference(model, tok, PAIRS), rel=1e-6)


def test_labels_mask_prompt_and_padding(tok):
    examples = [N.build_example(tok, p, a) for p, a in PAIRS]
    batch = N.collate(examples, pad_id=tok.pad_token_id)
    for row, (ids, n_prompt) in enumerate(examples):
        labels = batch["labels"][row]
        assert (labels[:n_prompt] == N.IGNORE).all()
        assert labels[n_prompt : len(ids)].tolist() == ids[n_prompt:]
        assert (labels[len(ids) :] == N.IGNORE).all()
        assert batch["attention_mask"][row].sum() == len(ids)
        assert batch["input_ids"][row, : len(ids)].tolist() == ids  # right padding


def test_only_answer_tokens_carry_loss(model, tok):
    examples = [N.build_example(tok, p, a) for p, a in PAIRS]
    batch = N.collate(examples, pad_id=tok.pad_token_id)
    s, n = N.nll_sum(model, **batch)
    assert n == sum(len(ids) - n_prompt for ids, n_prompt in examples)
    assert s / n == pytest.approx(_reference(model, tok, PAIRS), rel=1e-6)
    # Labelling the prompt too would change the result: the masking is what keeps prompts out.
    full = batch["labels"].clone()
    full[batch["attention_mask"].bool()] = batch["input_ids"][batch["attention_mask"].bool()]
    s_full, n_full = N.nll_sum(model, batch["input_ids"], batch["attention_mask"], full)
    assert n_full == n + sum(n_prompt for _, n_prompt in examples) - len(examples)  # first token has no context
    assert s_full > s
    # Changing one answer label changes the loss.
    ids0, n_prompt0 = examples[0]
    changed = batch["labels"].clone()
    changed[0, n_prompt0] = (changed[0, n_prompt0] + 1) % len(tok)
    assert N.nll_sum(model, batch["input_ids"], batch["attention_mask"], changed)[0] != pytest.approx(s, rel=1e-9)
    # Changing a word of the answer text changes target_nll.
    a0 = N.target_nll(model, tok, PAIRS[:1], progress=False)
    other = [(PAIRS[0][0], PAIRS[0][1].replace("four", "two"))]
    assert N.target_nll(model, tok, other, progress=False) != pytest.approx(a0, rel=1e-9)


def test_truncation_keeps_answer_start_and_prompt_end(tok):
    ids, n_prompt = N.build_example(tok, PAIRS[1][0], PAIRS[1][1], max_length=8)
    p = tok(PAIRS[1][0])["input_ids"]
    a = tok(PAIRS[1][1], add_special_tokens=False)["input_ids"]
    assert len(ids) == 8 and ids[n_prompt:] == a and ids[:n_prompt] == p[-n_prompt:]
    ids, n_prompt = N.build_example(tok, PAIRS[1][0], PAIRS[1][1], max_length=3)
    assert n_prompt == 1 and ids[1:] == a[:2]


def test_bad_input(model, tok):
    with pytest.raises(ConfigError, match="at least one"):
        N.target_nll(model, tok, [], progress=False)
    with pytest.raises(ConfigError, match="answer"):
        N.target_nll(model, tok, [("Q :", "")], progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        N.target_nll(model, tok, PAIRS, batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="max_length"):
        N.target_nll(model, tok, PAIRS, max_length=1, progress=False)
    for bad in (0, -5, 2.5, True):  # a cap <= 0 used to slip through and act as one row per batch
        with pytest.raises(ConfigError, match="max_batch_tokens"):
            N.target_nll(model, tok, PAIRS, max_batch_tokens=bad, progress=False)


def test_real_gsm8k_solutions_batched_equals_reference():
    """Gold GSM8K solutions (real lengths, long answers) against the one-at-a-time reference."""
    path = DATA / "gsm8k" / "test.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    with open(path) as f:
        rows = [json.loads(next(f)) for _ in range(6)]
    pairs = [(r["question"], r["answer"]) for r in rows]
    tok = _tokenizer([t for pair in pairs for t in pair])
    model = _model(tok)
    got = N.target_nll(model, tok, pairs, batch_size=4, progress=False)
    assert got == pytest.approx(_reference(model, tok, pairs), rel=1e-6)


def test_chunked_lm_head_equals_full_logits(model, tok):
    """Only scored positions go through the LM head, a few rows at a time: same sum as the full-logits cross entropy."""
    batch = N.collate([N.build_example(tok, p, a) for p, a in PAIRS], pad_id=3)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:]
    keep = target != N.IGNORE
    full = torch.nn.functional.cross_entropy(logits[:, :-1][keep].double(), target[keep], reduction="sum")
    for chunk in (1, 3, 256):
        total, count = N.nll_sum(model, **batch, chunk=chunk)
        assert count == int(keep.sum())
        assert math.isclose(total, float(full), rel_tol=1e-5)
