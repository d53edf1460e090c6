"""Trap detection: token and line loops, Type 1/2 labels, summary, online stopping criteria."""

import random

import pytest
import torch
from transformers import StoppingCriteriaList

from prunekit.errors import ConfigError
from prunekit.evaluation.benchmarks.gsm8k import has_complete_answer
from prunekit.evaluation.traps import (
    AnswerStoppingCriteria,
    LoopStoppingCriteria,
    TrapVerdict,
    classify,
    find_loop,
    find_repeated_lines,
    summarize,
)

TH = dict(max_period=8, min_repeats=3, min_span=12)  # small thresholds keep the synthetic sequences short


def _prefix(n, seed=0):
    """Non-repeating filler tokens (distinct ids, so no accidental period)."""
    return list(range(1000 + 100 * seed, 1000 + 100 * seed + n))


@pytest.mark.parametrize("period", [1, 3, 7])
def test_find_loop_detects_trailing_block(period):
    block = list(range(1, period + 1))
    head = _prefix(10)
    seq = head + block * (max(3, -(-12 // period)) + 1) + block[:1]  # ends mid-copy, as a limit hit does
    assert find_loop(seq, **TH) == len(head)


@pytest.mark.parametrize(
    "seq",
    [
        _prefix(10) + [5] * 11,  # period 1 but below min_span (12)
        _prefix(10) + [1, 2, 3, 4, 5, 6, 7] * 2 + [1, 2, 3],  # period 7: 17 tokens < 3 copies (21)
        _prefix(10) + [1, 2, 3] * 6 + [9],  # the loop was left: not trailing
        _prefix(10) + [1, 2, 3, 4, 5, 6, 7, 8, 9] * 4,  # period 9 > max_period
        _prefix(40),  # no repetition at all
        [],
        [7],
    ],
)
def test_find_loop_near_misses(seq):
    assert find_loop(seq, **TH) is None


def test_find_loop_start_and_thresholds():
    seq = _prefix(5) + [1, 2, 3] * 5  # 15 tokens of period 3
    assert find_loop(seq, **TH) == 5
    assert find_loop(seq, max_period=8, min_repeats=3, min_span=16) is None  # span floor
    assert find_loop(seq, max_period=8, min_repeats=6, min_span=12) is None  # copies floor
    assert find_loop(seq, max_period=2, min_repeats=3, min_span=12) is None  # period too long
    # a prefix that matches the tail of the block extends the loop backwards
    assert find_loop(_prefix(5) + [3] + [1, 2, 3] * 5, **TH) == 5
    with pytest.raises(ConfigError, match="min_repeats"):
        find_loop(seq, min_repeats=1)
    with pytest.raises(ConfigError, match="max_period"):
        find_loop(seq, max_period=0)


def test_find_loop_defaults_ignore_normal_number_runs():
    # 1,000,000 tokenised digit by digit: six zeros, far from a loop with default thresholds
    seq = _prefix(30) + [1, 11, 0, 0, 0, 11, 0, 0, 0] + _prefix(5, seed=1)
    assert find_loop(seq) is None
    assert find_loop(_prefix(30) + [0] * 39) is None
    assert find_loop(_prefix(30) + [0] * 40) == 30


def test_find_repeated_lines():
    head = "Step 1: 3 + 4 = 7\nStep 2: 7 * 2 = 14\n"
    loop = "The answer is 14.\n"
    text = head + loop * 5 + "The ans"  # cut mid-copy
    assert find_repeated_lines(text, min_repeats=4) == len(head)
    assert find_repeated_lines(head + (loop + "\n") * 4, min_repeats=4) == len(head)  # blank separators
    assert find_repeated_lines(head + loop * 3, min_repeats=4) is None
    assert find_repeated_lines(head + loop * 5 + "Done.\n", min_repeats=4) is None  # not trailing
    assert find_repeated_lines("", min_repeats=4) is None
    # indentation matters: different closing lines are not one repeated line
    assert find_repeated_lines("a\n      }\n    }\n  }\n}\n", min_repeats=4) is None


class CharTokenizer:
    """One token per character (id = code point), enough to map token positions to text."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


TOK = CharTokenizer()


def _classify(text, hit_limit, **kw):
    return classify(text, TOK.encode(text), hit_limit=hit_limit, has_answer=has_complete_answer, tokenizer=TOK, **kw)


def test_classify_no_trap():
    text = "3 + 4 = 7, so \\boxed{7}."
    assert _classify(text, hit_limit=False) == TrapVerdict(False, None, None, None)


def test_classify_type1_token_loop():
    head = "3 + 4 = 7, so \\boxed{7}. "
    text = head + "!" * 80
    v = _classify(text, hit_limit=True)
    assert v == TrapVerdict(True, 1, "token_loop", len(head))


def test_classify_type1_when_the_answer_itself_repeats():
    head = "So we get 7\n"
    text = head + "The answer is \\boxed{7}. " * 6  # period 25 chars, loop starts at the first copy
    v = _classify(text, hit_limit=True, max_period=64)
    assert v.trap and v.kind == 1 and v.reason == "token_loop" and v.loop_start == len(head)


def test_classify_type2_token_loop_before_answer():
    head = "First, 3 + 4 ="
    text = head + "7 + " * 30
    v = _classify(text, hit_limit=False)
    assert v == TrapVerdict(True, 2, "token_loop", len(head))


def test_classify_line_loop_longer_than_max_period():
    head = "Let me compute.\n"
    line = "We need to find how many eggs Janet sells at the market every single day of the week.\n"
    text = head + line * 4
    v = _classify(text, hit_limit=False, max_period=16)  # line is 86 tokens: only the line rule sees it
    assert v == TrapVerdict(True, 2, "line_loop", len(head))
    v1 = _classify("\\boxed{5}\n" + line * 4, hit_limit=False, max_period=16)
    assert v1.kind == 1 and v1.reason == "line_loop"


def test_classify_length_trap_without_loop():
    text = "".join(f"step {i}: {i} + 1 = {i + 1}. " for i in range(40))
    assert _classify(text, hit_limit=True) == TrapVerdict(True, 2, "length", None)
    with_answer = "So \\boxed{3}. Let me double check: " + text
    assert _classify(with_answer, hit_limit=True) == TrapVerdict(True, 1, "length", None)


def test_classify_text_only_and_token_to_char():
    text = "x\n" + "same line again\n" * 4
    v = classify(text, None, hit_limit=False, has_answer=has_complete_answer)
    assert v.reason == "line_loop"
    ids = TOK.encode("ab" + "z" * 50)
    v2 = classify("AB" + "z" * 50, ids, hit_limit=False, has_answer=has_complete_answer, token_to_char=lambda i: i)
    assert v2.loop_start == 2
    with pytest.raises(ConfigError, match="tokenizer"):
        classify("z" * 50, ids, hit_limit=False, has_answer=has_complete_answer)


def test_summarize_counts_and_rates():
    verdicts = [
        TrapVerdict(False, None, None, None),
        TrapVerdict(False, None, None, None),
        TrapVerdict(True, 1, "token_loop", 10),
        TrapVerdict(True, 2, "length", None),
        TrapVerdict(True, 2, "line_loop", 3),
    ]
    s = summarize(verdicts)
    assert s == {"n": 5, "traps": 3, "trap_rate": 0.6, "trap_type1": 1, "trap_type2": 2,
                 "trap_type1_rate": 0.2, "trap_type2_rate": 0.4}
    with pytest.raises(ValueError, match="empty"):
        summarize([])


def _simulate(criteria, rows, prompt_len, pad=0):
    """Feed generated rows token by token as `generate` does; return the step at which each row stopped."""
    prompt = torch.arange(1, prompt_len + 1).repeat(len(rows), 1)
    stop_step = [None] * len(rows)
    ids = prompt
    for t in range(max(len(r) for r in rows)):
        col = torch.tensor([r[t] if t < len(r) else pad for r in rows])[:, None]
        ids = torch.cat([ids, col], dim=1)
        done = criteria(ids, None)
        assert done.dtype == torch.bool and done.shape == (len(rows),)
        for b in range(len(rows)):
            if done[b] and stop_step[b] is None:
                stop_step[b] = t + 1
    return stop_step


def _first_detection(row):
    """Smallest prefix length at which the offline detector sees a trailing loop."""
    return next((n for n in range(1, len(row) + 1) if find_loop(row[:n], **TH) is not None), None)


def test_loop_criterion_flags_exactly_the_looping_rows():
    rng = random.Random(0)
    rows = [
        _prefix(6) + [5] * 34,  # period 1
        _prefix(16, seed=1) + [1, 2, 3] * 8,  # period 3
        _prefix(12, seed=2) + [1, 2, 3, 4, 5, 6, 7] * 4,  # period 7
        [rng.randrange(50, 60000) for _ in range(40)],  # random text: no loop
        _prefix(23, seed=3) + [1, 2, 3, 4, 5, 6, 7] * 2 + [1, 2, 3],  # near miss: 2.4 copies
        _prefix(5, seed=4) + [8, 8, 8, 8] + _prefix(31, seed=5),  # a short run, then moves on
    ]
    assert {len(r) for r in rows} == {40}  # one batch, no padding needed
    crit = LoopStoppingCriteria(prompt_length=5, **TH)
    steps = _simulate(crit, rows, prompt_len=5)
    assert [s is not None for s in steps] == [True, True, True, False, False, False]
    assert steps == [_first_detection(r) for r in rows]
    assert crit.flagged_at.tolist() == [-1 if s is None else s for s in steps]
    for row, step in zip(rows, steps):
        if step is not None:  # the truncated output keeps the trap label offline
            assert find_loop(row[:step], **TH) is not None


def test_loop_criterion_in_stopping_list_and_catch_up():
    row = _prefix(6) + [4, 2] * 10
    crit = LoopStoppingCriteria(prompt_length=3, **TH)
    ids = torch.tensor([[1, 2, 3] + row, [1, 2, 3] + _prefix(len(row), seed=7)])
    out = StoppingCriteriaList([crit])(ids, None)  # one call seeing all tokens at once
    assert out.tolist() == [True, False]
    assert crit.flagged_at.tolist() == [_first_detection(row), -1]
    # a new batch (shorter input) resets the state
    assert crit(torch.tensor([[1, 2, 3, 9]]), None).tolist() == [False]


def test_loop_criterion_ignores_padding_after_eos():
    eos = 2
    rows = [_prefix(5) + [eos], _prefix(5, seed=1) + [7] * 19]
    crit = LoopStoppingCriteria(prompt_length=2, eos_token_id=[eos], **TH)
    steps = _simulate(crit, rows, prompt_len=2, pad=eos)  # finished rows are padded with EOS
    assert steps == [None, _first_detection(rows[1])]


def test_loop_criterion_rejects_bad_thresholds():
    with pytest.raises(ConfigError, match="min_span"):
        LoopStoppingCriteria(prompt_length=4, min_span=0)
    with pytest.raises(ConfigError, match="prompt_length"):
        LoopStoppingCriteria(prompt_length=-1)


def test_answer_criterion_stops_on_closed_box():
    texts = ["We get 3 + 4 = 7 so \\boxed{7} and more text", "no answer here, only words " * 2, "\\boxed{1"]
    rows = [TOK.encode(t) for t in texts]
    crit = AnswerStoppingCriteria(TOK, has_complete_answer, prompt_length=3, chunk=4)
    steps = _simulate(crit, rows, prompt_len=3, pad=ord(" "))
    assert steps == [texts[0].index("\\boxed{7}") + len("\\boxed{7}"), None, None]
    assert crit.stopped.tolist() == [True, False, False]


def test_loop_criterion_inside_real_generate_agrees_with_offline_detector():
    """Batched greedy `generate` on a tiny random Llama (which loops a lot): each row stops exactly where the
    offline detector first sees a loop in the full-length run of the same row."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(3, 97, (6, 8))
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=80, do_sample=False, pad_token_id=0,
              eos_token_id=None)
    with torch.no_grad():
        full = model.generate(input_ids=ids, **kw)[:, 8:].tolist()
        crit = LoopStoppingCriteria(prompt_length=8, **TH)
        early = model.generate(input_ids=ids, stopping_criteria=StoppingCriteriaList([crit]), **kw)[:, 8:]
    expected = [_first_detection(r) for r in full]
    assert any(e is not None for e in expected)
    assert crit.flagged_at.tolist() == [-1 if e is None else e for e in expected]
    for row_full, row_early, stop in zip(full, early.tolist(), expected):
        if stop is not None:
            assert row_early[:stop] == row_full[:stop]
    if all(e is not None for e in expected):
        assert early.shape[1] == max(expected) < 80  # the whole batch ended early
