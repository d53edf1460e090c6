"""Self-data distillation (task.train.responses=source): the source model's answers against plain
`transformers` greedy decoding, their cache, the examples built from them and the train recipe that uses them."""

import json

import pytest
import torch

from prunekit import data, distill, models, recipes, training
from prunekit.errors import ConfigError
from prunekit.evaluation import generation
from tests.helpers import recipe_cfg

# Short questions, so that SmolLM2 ends some answers within the budget and the test sees both kinds.
PROMPTS = ["Reply with one word: what colour is a clear daytime sky?", "Say hello.",
           "Write a long story about a dragon, with many chapters."]
OPTIONS = {"chat": True, "loop_detection": True, "batch_size": 1, "max_batch_tokens": None,
           "drop_finished_every": 0, "kv_cache": "dynamic"}
BUDGET = 48


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, model_cache):
    cfg = recipe_cfg(tmp_path_factory.mktemp("cfg"), model_cache, "model=smollm2-135m", job="train")
    return models.load_model(models.resolve("pip:smollm2-135m-instruct"), cfg.model)


def hf_greedy(loaded, prompt: str) -> str | None:
    """The answer by `model.generate` alone (batch 1, no padding): the text before the first EOS, or None."""
    tokenizer = loaded.tokenizer
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=BUDGET, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    eos = set(generation.eos_ids(loaded.model, tokenizer))
    end = next((i for i, t in enumerate(new) if t in eos), None)
    return None if end is None else tokenizer.decode(new[:end], skip_special_tokens=True)


@pytest.mark.real_model
def test_source_answers_are_the_models_greedy_answers_and_are_cached(smollm2, tmp_path, monkeypatch):
    answers = distill.source_answers(smollm2, PROMPTS, BUDGET, OPTIONS, tmp_path / "answers")
    assert answers == [hf_greedy(smollm2, p) for p in PROMPTS]
    assert any(a is not None for a in answers) and answers[-1] is None  # the story never ends in 48 tokens
    [entry] = (tmp_path / "answers").glob("*.jsonl")
    rows = [json.loads(line) for line in entry.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS and rows[-1]["stop_reason"] != "eos"
    assert not list((tmp_path / "answers").glob("*.partial.jsonl"))  # the journal goes once the entry is written

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(generation, "generate_journaled", no_generation)
    assert distill.source_answers(smollm2, PROMPTS, BUDGET, OPTIONS, tmp_path / "answers") == answers
    with pytest.raises(AssertionError, match="generated again"):  # another budget is another entry
        distill.source_answers(smollm2, PROMPTS, BUDGET + 1, OPTIONS, tmp_path / "answers")
    entry.write_text(entry.read_text().splitlines()[0] + "\n")  # cut short: damaged, so built again
    with pytest.raises(AssertionError, match="generated again"):
        distill.source_answers(smollm2, PROMPTS, BUDGET, OPTIONS, tmp_path / "answers")


def test_source_answers_replace_the_dataset_answers_and_unfinished_ones_are_left_out(bpe_tokenizer):
    recs = [{"q": "one", "a": "dataset one"}, {"q": "two", "a": "dataset two"}, {"q": "three", "a": "dataset 3"}]
    fmt = {"prompt_template": "Q: {q}", "response_field": "a", "max_length": 64, "tokenizer": bpe_tokenizer}
    out = training.build_examples(recs, responses="source", answers=["own one", None, "own three"], **fmt)
    reference = training.build_examples([{"q": "one", "a": "own one"}, {"q": "three", "a": "own three"}], **fmt)
    assert list(out) == list(reference) and out.unfinished == 1
    with pytest.raises(ValueError, match="one source answer per record"):
        training.build_examples(recs, responses="source", answers=["x"], **fmt)
    with pytest.raises(ConfigError, match=r"task\.train\.responses='teacher': allowed: dataset, source"):
        training.TrainFormat.of({"prompt_template": "Q: {q}", "response_field": "a", "responses": "teacher"})
    # responses=source needs no dataset answer field
    assert training.TrainFormat.of({"prompt_template": "Q: {q}", "responses": "source"}).responses == "source"


@pytest.mark.real_model
def test_train_with_source_answers_trains_on_the_unpruned_models_answers(tmp_path, model_cache, monkeypatch):
    """train.py task.train.responses=source on SmolLM2 itself (unpruned: its own answers): the answers are
    generated once into cache_dir/answers, the examples are the answers that ended, and a rerun in another run
    directory reuses them."""
    args = ["model=smollm2-135m", "task.train.n=4", "+task.train.responses=source",  # math_offline: see its yaml
            "lora.max_length=160", "lora.epochs=1", "lora.effective_batch_size=2", "lora.per_device_batch_size=1",
            "evaluate=false"]
    metrics = recipes.train(recipe_cfg(tmp_path, model_cache, *args, job="train"), tmp_path / "run")
    [entry] = (tmp_path / "cache" / "answers").glob("*.jsonl")
    rows = [json.loads(line) for line in entry.read_text().splitlines()]
    spec = recipes.plain(recipe_cfg(tmp_path, model_cache, *args, job="train").task)["train"]
    records, fmt = data.load_records(spec, "task.train"), training.TrainFormat.of(spec)
    assert [r["prompt"] for r in rows] == [fmt.prompt(r, i) for i, r in enumerate(records)]
    ended = sum(r["stop_reason"] == "eos" for r in rows)
    assert metrics["train/unfinished_source_answers"] == len(rows) - ended
    assert metrics["train/n_examples"] == ended > 0  # every answer that ended fits in 160 tokens

    # Again in another run directory, evaluated against the unpruned model's outputs: the answers come from the
    # cache, and one load of the unpruned model serves both its reference outputs and the answers' cache key.
    generate, load = generation.generate_journaled, models.load_model
    loads = []
    monkeypatch.setattr(generation, "generate_journaled", lambda m, t, prompts, *a, **k: (
        pytest.fail("answers generated again") if prompts == [r["prompt"] for r in rows]
        else generate(m, t, prompts, *a, **k)))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a[0]) or load(*a, **k))
    similarity = ["evaluate=true", "eval.parts=[similarity]", "eval.similarity.max_new_tokens=4",
                  "task.eval.distractors.conversations.n=1", "task.eval.distractors.squad.n=1"]
    again = recipes.train(recipe_cfg(tmp_path, model_cache, *args[:-1], *similarity, job="train"), tmp_path / "run2")
    assert again["train/n_examples"] == metrics["train/n_examples"] and "distractor/sss" in again
    assert len(loads) == 2  # the unpruned source once (reference + answers), the model to train once

