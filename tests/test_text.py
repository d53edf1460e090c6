"""The one text layer: encoding rule, length batches, the collator, and that the tokenizer is never changed."""

import copy

import pytest

from prunekit import text
from prunekit.errors import ConfigError


@pytest.fixture(scope="module")
def tok(tokenizer):
    return tokenizer  # conftest's: converted into the test cache (PRUNEKIT_TEST_CACHE), never the user's cache


def test_raw_prompts_get_special_tokens_and_chat_prompts_only_the_templates(tok):
    raw = text.encode(tok, ["What is 2 + 2?"], chat_template=False)[0]
    assert raw == tok("What is 2 + 2?")["input_ids"]  # the tokenizer's own rule for raw text
    chat = text.encode(tok, ["What is 2 + 2?"], chat_template=True)[0]
    expected = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                       return_dict=True)["input_ids"]
    assert chat == list(expected)  # exactly the template's tokens, nothing added on top
    long = "one two three four five six"
    assert text.encode(tok, [long], False, max_length=3)[0] == tok(long)["input_ids"][:3]


def test_a_missing_chat_template_is_one_clear_error(tok):
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(ConfigError, match="chat_template=true but the tokenizer has no chat template"):
        text.format_prompt(bare, "hi", chat_template=True)
    assert text.format_prompt(bare, "hi", chat_template=False) == "hi"


def test_pad_id_falls_back_without_touching_the_tokenizer(tok):
    bare = copy.deepcopy(tok)
    bare.pad_token = None
    assert text.pad_id(bare) == bare.eos_token_id and bare.pad_token is None


@pytest.mark.parametrize("order, expected", [
    ("longest", [[1, 3], [5, 4], [2, 0]]), ("shortest", [[0, 2], [4, 5], [3, 1]]), ("given", [[0, 1], [2, 3], [4, 5]])])
def test_length_batches_orders(order, expected):
    lengths = [3, 50, 4, 49, 5, 48]
    assert text.length_batches(lengths, 2, order=order) == expected


def test_length_batches_keep_ties_in_input_order_and_cut_padding():
    lengths = [7, 7, 7, 2]
    assert text.length_batches(lengths, 2) == [[0, 1], [2, 3]]

    def waste(batches):
        return sum(max(lengths_[i] for i in b) - lengths_[i] for b in batches for i in b)

    lengths_ = [3, 50, 4, 49, 5, 48]
    assert waste(text.length_batches(lengths_, 2)) < waste(text.length_batches(lengths_, 2, order="given"))


def test_length_batches_cap_padded_tokens():
    lengths = [10, 3000, 20, 900, 15, 30]
    batches = text.length_batches(lengths, 4, max_tokens=2048)
    assert batches[0] == [1] and batches[1] == [3, 5]  # 2048 // 900 = 2 rows
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 2048 or len(b) == 1 for b in batches)
    assert text.length_batches(lengths, 4) == [[1, 3, 5, 2], [4, 0]]
    with pytest.raises(ConfigError, match="order='random': allowed: longest, shortest, given"):
        text.length_batches(lengths, 4, order="random")


def test_collate_right_with_labels_and_left_for_generation():
    b = text.collate([[5, 6, 7], [5, 8]], 0, labels=[[-100, 6, 7], [-100, 8]])
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 8, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [-100, 8, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    left = text.collate([[5, 6, 7], [5, 8]], 9, left=True)
    assert left["input_ids"].tolist() == [[5, 6, 7], [9, 5, 8]] and "labels" not in left
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]


def test_collate_left_equals_the_tokenizers_own_left_padding(tok):
    ids = text.encode(tok, ["a short one", "a much longer prompt than the other one"], False)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        ref = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side
    mine = text.collate(ids, tok.pad_token_id, left=True)
    assert mine["input_ids"].tolist() == ref["input_ids"].tolist()
    assert mine["attention_mask"].tolist() == ref["attention_mask"].tolist()
