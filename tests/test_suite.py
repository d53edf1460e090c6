"""Evaluation suite: end to end on a tiny model, re-scoring with known answers, similarity, reference cache, errors."""

import json
from pathlib import Path

import pytest
import yaml

from prunekit import data, models
from prunekit.errors import ConfigError, DataError
from prunekit.evaluation import baseline, generation, parts, suite
from prunekit.evaluation.benchmarks import gsm8k
from prunekit.evaluation.generation import Generation

REPO = Path(__file__).resolve().parents[1]

QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = <<3+4=7>>7\n#### 7"),
    ("A box holds 12 pens. How many pens are in 2 boxes?", "12 * 2 = <<12*2=24>>24\n#### 24"),
    ("Sara reads 5 pages a day for 6 days. How many pages?", "5 * 6 = <<5*6=30>>30\n#### 30"),
    ("A shirt costs $1,200 and is discounted by $200. What is the price?", "1200 - 200 = 1000\n#### 1,000"),
    ("Ann had 9 cookies and ate 4. How many are left?", "9 - 4 = 5\n#### 5"),
]


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def math_task(tmp_path) -> dict:
    """A tiny local math task: 5 GSM8K-style questions, a SQuAD-like and a conversation distractor set."""
    target = _jsonl(tmp_path / "test.jsonl", [{"question": q, "answer": a} for q, a in QUESTIONS])
    squad = _jsonl(tmp_path / "squad.jsonl", [
        {"context": "Paris is the capital of France.", "question": "What is the capital of France?"},
        {"context": "Water boils at 100 degrees Celsius.", "question": "When does water boil?"},
        {"context": "The Nile is a river in Africa.", "question": "Where is the Nile?"},
    ])
    conv = _jsonl(tmp_path / "conv.jsonl", [{"text": "Hi! How was your weekend?"}, {"text": "Any plans for dinner?"},
                                            {"text": "I just adopted a cat."}])
    return {"name": "tiny_math", "eval": {
        "metric": "gsm8k", "max_new_tokens": 24,
        "target": {"path": target, "field": "question", "n": 4, "offset": 1, "gold_field": "answer"},
        "distractors": {"squad": {"path": squad, "template": "{context}\n{question}", "n": 3},
                        "conversations": {"path": conv, "field": "text", "n": 3}},
    }}


@pytest.fixture
def code_task() -> dict:
    return {"name": "code", "eval": {"metric": "humaneval", "target": {
        "path": "pip:humaneval", "field": "prompt", "n": 5, "gold_field": "test"}}}


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return models.tiny_model("llama", len(tokenizer))


FAST = {"batch_size": 2, "throughput": {"prompts": 1, "max_new_tokens": 4}, "similarity": {"max_new_tokens": 12}}


def test_evaluate_math_end_to_end(tiny, tokenizer, math_task, tmp_path):
    settings = {**FAST, "parts": ["task", "traps", "resources", "nll"]}
    m = suite.evaluate(tiny, tokenizer, math_task, settings, run_dir=tmp_path / "run").metrics
    for key in ("gsm8k/em", "gsm8k/em_strict", "gsm8k/n", "gsm8k/boxed_rate", "gsm8k/fallback_number",
                "gsm8k/no_answer", "gsm8k/trap_rate", "gsm8k/trap_type1", "gsm8k/trap_type2", "gsm8k/nll",
                "gsm8k/new_tokens", "resources/params", "resources/peak_mem_gb", "resources/tokens_per_s",
                "resources/prefill_tokens_per_s", "resources/decode_tokens_per_s", "time/eval_s"):
        assert key in m, key
    assert m["gsm8k/n"] == 4 and m["gsm8k/max_new_tokens"] == 24
    assert m["resources/params"] == sum(p.numel() for p in tiny.parameters())
    assert m["gsm8k/nll"] > 0
    rows = generation.read_generations(tmp_path / "run" / "generations.jsonl")
    assert [r["id"] for r in rows] == [1, 2, 3, 4]  # position in the eval set, offset included
    assert [r["prompt"] for r in rows] == [gsm8k.build_prompt(q) for q, _ in QUESTIONS[1:]]
    for r in rows:
        assert {"output", "n_tokens", "stop_reason", "correct", "extracted", "trap", "trap_type"} <= set(r)
        assert 0 < r["n_tokens"] <= 24 or r["stop_reason"] == "eos"
    golds = {i: gsm8k.gold_answer(a) for i, (_, a) in enumerate(QUESTIONS)}
    recomputed = sum(gsm8k.score(r["output"], golds[r["id"]])["correct"] for r in rows) / len(rows)
    assert m["gsm8k/em"] == recomputed
    assert m["gsm8k/traps"] == sum(r["trap"] for r in rows)
    assert m["gsm8k/new_tokens"] == sum(r["n_tokens"] for r in rows)
    samples = generation.read_generations(tmp_path / "run" / "samples.jsonl")
    assert [s["id"] for s in samples] == [1, 2, 3, 4] and "output" not in samples[0]


def _fake_generate(outputs: dict[str, tuple[str, str]]):
    """A stand-in for the engine that returns fixed outputs per prompt (text, stop_reason)."""

    def fake(model, tokenizer, prompts, *, max_new_tokens, **kw):
        out = []
        for p in prompts:
            text, reason = outputs[p]
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(Generation(p, text, ids, len(ids), reason))
        return out

    return fake


LOOP = "Step: add the numbers again.\n"


def test_evaluate_scores_known_outputs(tokenizer, tiny, math_task, tmp_path, monkeypatch):
    """With fixed outputs the suite's EM, Type 1 / Type 2 counts are exact (Type 1 answers count as correct)."""
    prompts = [gsm8k.build_prompt(q) for q, _ in QUESTIONS[1:]]
    outputs = {
        prompts[0]: ("2 boxes of 12 is \\boxed{24}.", "eos"),               # right
        prompts[1]: ("That makes \\boxed{31}.", "eos"),                      # wrong
        prompts[2]: ("So \\boxed{1000}\n" + LOOP * 6, "criterion"),         # Type 1 trap, right answer
        prompts[3]: ("Let me think.\n" + LOOP * 6, "criterion"),            # Type 2 trap
    }
    monkeypatch.setattr(suite.generation, "generate", _fake_generate(outputs))
    m = suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["task", "traps"]}, run_dir=tmp_path).metrics
    assert m["gsm8k/em"] == 0.5 and m["gsm8k/em_strict"] == 0.25
    assert (m["gsm8k/traps"], m["gsm8k/trap_type1"], m["gsm8k/trap_type2"]) == (2, 1, 1)
    assert m["gsm8k/boxed_rate"] == 0.75 and m["gsm8k/stop_criterion"] == 2


def test_evaluate_returns_the_rows_it_writes(tokenizer, tiny, math_task, tmp_path):
    result = suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["task", "traps"]}, run_dir=tmp_path)
    assert result.rows == generation.read_generations(tmp_path / "generations.jsonl")
    assert [r["id"] for r in result.rows] == [1, 2, 3, 4] and all("correct" in r and "trap" in r for r in result.rows)
    assert suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["similarity"]}, run_dir=tmp_path).rows is None


class PromptChars(parts.EvalPart):
    """A part defined in a test: it needs no generations."""

    name, order, data = "prompt_chars", 45, ("target",)
    runs = 0

    def run(self, ctx):
        type(self).runs += 1
        return {"prompt_chars/total": sum(len(s["prompt"]) for s in ctx.samples)}


class OutputChars(parts.EvalPart):
    """A part defined in a test that scores the target generations."""

    name, order, data, scores_generations = "output_chars", 15, ("target",), True

    def row_metrics(self, metric, rows):
        return {f"{metric}/output_chars": sum(len(r["output"]) for r in rows)}


@pytest.fixture
def extra_parts(monkeypatch):
    PromptChars.runs = 0
    for cls in (PromptChars, OutputChars):
        monkeypatch.setitem(parts.REGISTRY, cls.name, cls)  # registered for this test only


def test_a_registered_part_is_run_by_the_suite(extra_parts, tokenizer, tiny, math_task, tmp_path, monkeypatch):
    monkeypatch.setattr(suite.generation, "generate", lambda *a, **k: pytest.fail("generation started"))
    result = suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["prompt_chars"]}, run_dir=tmp_path)
    samples = suite.target_samples(math_task, suite.resolve_settings({}))
    assert result.metrics["prompt_chars/total"] == sum(len(s["prompt"]) for s in samples) > 0
    assert "time/eval_prompt_chars_s" in result.metrics and result.rows is None


def test_a_registered_scoring_part_gets_the_generations(extra_parts, tokenizer, tiny, math_task, tmp_path):
    result = suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["output_chars"]}, run_dir=tmp_path)
    assert result.metrics["gsm8k/output_chars"] == sum(len(r["output"]) for r in result.rows)
    assert "gsm8k/em" not in result.metrics and "gsm8k/trap_rate" not in result.metrics


def test_the_source_evaluation_caches_a_registered_part(extra_parts, tokenizer, tiny, math_task, tmp_path):
    loaded = models.LoadedModel(tiny, tokenizer, models.TinySource("llama"), {"name": "tiny"},
                                next(tiny.parameters()).dtype)
    settings = {**FAST, "parts": ["task", "prompt_chars", "similarity"]}
    first, rows = baseline.source_evaluation(loaded, math_task, settings, tmp_path)
    again, rows_again = baseline.source_evaluation(loaded, math_task, settings, tmp_path)
    assert PromptChars.runs == 1 and first == again and rows == rows_again and len(rows) == 4
    assert "prompt_chars/total" in first and "gsm8k/em" in first and not any(k.startswith("distractor/") for k in first)
    assert [p.name for p in (tmp_path).glob("*/metrics-v*-prompt_chars.json")] == ["metrics-v2-prompt_chars.json"]


def test_a_damaged_source_evaluation_file_is_moved_aside_and_built_again(tokenizer, tiny, math_task, tmp_path, caplog):
    loaded = models.LoadedModel(tiny, tokenizer, models.TinySource("llama"), {"name": "tiny"},
                                next(tiny.parameters()).dtype)
    settings = {**FAST, "parts": ["task"]}
    first, rows = baseline.source_evaluation(loaded, math_task, settings, tmp_path)
    (target,) = tmp_path.glob("*/target.json")
    target.write_text("{torn")
    again, rows_again = baseline.source_evaluation(loaded, math_task, settings, tmp_path)
    assert again == first and rows_again == rows
    assert len(list(target.parent.glob("target.json.bad-*"))) == 1 and target.is_file()
    assert any(str(target) in r.message and "evaluating again" in r.message for r in caplog.records)


def test_an_unknown_part_is_one_line_naming_the_option_and_the_parts(math_task):
    with pytest.raises(ConfigError) as e:
        suite.check_settings({"parts": ["task", "speed"]}, math_task)
    assert str(e.value) == "eval.parts: unknown part 'speed'; allowed: task, traps, similarity, resources, nll, lm_eval"


def test_the_parts_declare_what_stays_out_of_the_source_generation_key():
    assert set(parts.not_generation()) == {"parts", "reference_cache_dir", "similarity", "lm_eval", "throughput",
                                           "nll", "code"}
    assert parts.generating() == ["task", "traps"]


def test_rescore_math_known_outputs(math_task, tmp_path):
    math_task["eval"]["target"].update(n=5, offset=0)  # ids 0..4
    gens = _jsonl(tmp_path / "gens.jsonl", [
        {"id": 1, "output": "12 * 2 = 24, so \\boxed{24}"},                                  # right
        {"id": 2, "output": "\\boxed{31}"},                                                  # wrong
        {"id": 3, "output": "The price is \\boxed{\\$1,000}.\n" + LOOP * 5},                 # Type 1, right
        {"id": 4, "output": "Hmm.\n" + LOOP * 5},                                            # Type 2
        {"id": "0", "output": "3 + 4 = \\boxed{7} and then some more", "n_tokens": 24},     # limit hit: Type 1
    ])
    m = suite.rescore(math_task, {}, gens, tmp_path / "run")
    assert m["gsm8k/n"] == 5
    assert m["gsm8k/correct"] == 3 and m["gsm8k/em"] == 3 / 5
    assert (m["gsm8k/traps"], m["gsm8k/trap_type1"], m["gsm8k/trap_type2"]) == (3, 2, 1)
    assert m["gsm8k/em_strict"] == 1 / 5
    rows = {r["id"]: r for r in generation.read_generations(tmp_path / "run" / "samples.jsonl")}
    assert rows[0]["trap_reason"] == "length" and rows[3]["trap_reason"] == "line_loop"
    assert rows[2]["correct"] is False and rows[2]["extracted"] == "31"


def test_rescore_rejects_unknown_ids_and_missing_fields(math_task, tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": 1, "output": "x"}, {"id": 77, "output": "y"}])
    with pytest.raises(DataError, match=r"not in task.eval.target, e.g. \[77\].*\[1, 2, 3, 4\]"):
        suite.rescore(math_task, {}, bad, tmp_path)
    missing = _jsonl(tmp_path / "missing.jsonl", [{"id": 1, "text": "x"}])
    with pytest.raises(DataError, match="line 1 .* needs fields id and output"):
        suite.rescore(math_task, {}, missing, tmp_path)
    dup = _jsonl(tmp_path / "dup.jsonl", [{"id": 1, "output": "x"}, {"id": "1", "output": "y"}])
    with pytest.raises(DataError, match="appears twice"):
        suite.rescore(math_task, {}, dup, tmp_path)


def test_rescore_humaneval_canonical_and_empty(code_task, tmp_path):
    problems = data.load_records({"path": "pip:humaneval", "field": "prompt", "n": 5})
    good = _jsonl(tmp_path / "good.jsonl", [{"id": p["task_id"], "output": p["canonical_solution"]} for p in problems])
    m = suite.rescore(code_task, {"parts": ["task", "traps"]}, good, tmp_path / "good")
    assert m["humaneval/pass@1"] == 1.0 and m["humaneval/n"] == 5
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": p["task_id"], "output": "    pass\n"} for p in problems])
    m = suite.rescore(code_task, {"parts": ["task", "traps"]}, bad, tmp_path / "bad")
    assert m["humaneval/pass@1"] == 0.0
    rows = generation.read_generations(tmp_path / "bad" / "samples.jsonl")
    assert [r["id"] for r in rows] == [p["task_id"] for p in problems]
    assert all(r["correct"] is False for r in rows)


def test_evaluate_humaneval_tiny(tiny, tokenizer, code_task, tmp_path):
    settings = {**FAST, "n": 2, "max_new_tokens": 8, "parts": ["task", "traps"]}
    m = suite.evaluate(tiny, tokenizer, code_task, settings, run_dir=tmp_path).metrics
    assert m["humaneval/n"] == 2 and m["humaneval/pass@1"] == 0.0 and "humaneval/trap_rate" in m
    rows = generation.read_generations(tmp_path / "generations.jsonl")
    assert [r["id"] for r in rows] == ["HumanEval/0", "HumanEval/1"] and "status" in rows[0]


def test_similarity_against_identical_reference_and_cache(tiny, tokenizer, math_task, tmp_path, monkeypatch):
    refs = baseline.reference_generations(tiny, tokenizer, math_task, FAST, tmp_path / "cache", model_id="tiny-0")
    assert set(refs) == {"squad", "conversations"} and len(refs["squad"]["outputs"]) == 3
    m = suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["similarity"]}, run_dir=tmp_path / "run",
                       reference_outputs=refs).metrics
    assert m["distractor/sss"] == pytest.approx(1.0, abs=1e-4)
    assert m["distractor/squad_bertscore"] == pytest.approx(1.0, abs=1e-4)
    assert m["distractor/conversations_sbert"] == pytest.approx(1.0, abs=1e-4)
    assert len(generation.read_generations(tmp_path / "run" / "distractor_generations.jsonl")) == 6

    def boom(*a, **k):
        raise AssertionError("generation ran although the reference is cached")

    monkeypatch.setattr(suite.generation, "generate", boom)
    assert baseline.reference_generations(tiny, tokenizer, math_task, FAST, tmp_path / "cache", model_id="tiny-0") == refs
    with pytest.raises(AssertionError, match="cached"):  # another model identity is another key
        baseline.reference_generations(tiny, tokenizer, math_task, FAST, tmp_path / "cache", model_id="tiny-1")


def test_similarity_against_different_reference_is_lower(tiny, tokenizer, math_task, tmp_path):
    refs = baseline.reference_generations(tiny, tokenizer, math_task, FAST)
    other = {k: {"prompts": v["prompts"], "outputs": ["The weather is sunny and warm today."] * len(v["outputs"])}
             for k, v in refs.items()}
    m = suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["similarity"]}, run_dir=tmp_path,
                       reference_outputs=other).metrics
    assert m["distractor/sss"] < 0.9


def test_similarity_skipped_without_reference_and_checked_with_one(tiny, tokenizer, math_task, tmp_path):
    m = suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["similarity"]}, run_dir=tmp_path).metrics
    assert not any(k.startswith("distractor/") for k in m)
    wrong = {"squad": {"prompts": ["other"], "outputs": ["x"]}, "conversations": {"prompts": [], "outputs": []}}
    with pytest.raises(DataError, match=r"reference_outputs\['squad'\]: prompts differ"):
        suite.evaluate(tiny, tokenizer, math_task, {**FAST, "parts": ["similarity"]}, run_dir=tmp_path,
                       reference_outputs=wrong)


def test_reference_cache_needs_model_id(tiny, tokenizer, math_task, tmp_path):
    with pytest.raises(ConfigError, match="model_id"):
        baseline.reference_generations(tiny, tokenizer, math_task, FAST, tmp_path)


@pytest.mark.parametrize("settings, task_edit, match", [
    ({"parts": ["task", "speed"]}, None, r"unknown part 'speed'; allowed: task, traps"),
    ({"parts": "task"}, None, "must be a list"),
    ({"max_new_tokens": 0}, None, r"eval.max_new_tokens=0: must be an integer >= 1"),
    ({"batch_size": 0}, None, r"eval.batch_size=0"),
    ({"drop_finished_every": -1}, None, r"eval.drop_finished_every=-1: must be an integer >= 0 \(0: off\)"),
    ({"drop_finished_every": "16"}, None, r"eval.drop_finished_every='16'"),
    ({"kv_cache": "static"}, None, r"eval.kv_cache='static': allowed: dynamic, preallocated"),
    ({"n": -1}, None, r"eval.n=-1"),
    ({"chat_template": "yes"}, None, "allowed: true, false, auto"),
    ({"throughput": {"prompts": 0}}, None, r"eval.throughput.prompts=0"),
    ({"code": {"timeout_s": 0}}, None, r"eval.code.timeout_s=0"),
    ({"nll": {"gold": "yes"}}, None, r"eval.nll.gold='yes': must be true or false"),
    ({"nll": {"max_length": 1}}, None, r"eval.nll.max_length=1: must be an integer >= 2"),
    ({"nll": {"max_batch_tokens": 0}}, None, r"eval.nll.max_batch_tokens=0: must be an integer >= 1 or null"),
    ({"temperature": 0.7}, None, r"eval.temperature: unknown setting; allowed: parts"),
    ({"similarity": {"model": "x"}}, None, r"eval.similarity.model: unknown setting"),
    ({}, lambda t: t["eval"].update(metric="bleu"),
     r"task.eval.metric='bleu': unknown benchmark; allowed: gsm8k, humaneval, mbpp"),
    ({}, lambda t: t["eval"].pop("target"), "task.eval.target"),
    ({}, lambda t: t.pop("eval"), "task.eval.target"),
    ({}, lambda t: t["eval"].update(max_new_tokens=0), r"task.eval.max_new_tokens=0"),
    ({}, lambda t: t["eval"]["distractors"].update(code={"path": "x.jsonl", "field": "a"}), "unknown distractor"),
    ({"stop_on_answer": True}, lambda t: t["eval"].update(metric="humaneval"), "allowed only with task.eval.metric"),
])
def test_bad_settings(math_task, settings, task_edit, match):
    if task_edit is not None:
        task_edit(math_task)
    with pytest.raises(ConfigError, match=match):
        suite.check_settings(settings, math_task)


def test_bad_settings_fail_before_generation(tiny, tokenizer, math_task, tmp_path, monkeypatch):
    monkeypatch.setattr(suite.generation, "generate", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(ConfigError):
        suite.evaluate(tiny, tokenizer, math_task, {"max_new_tokens": 0}, run_dir=tmp_path)


def test_missing_gold_field_is_clear(math_task):
    math_task["eval"]["target"]["gold_field"] = "solution"
    with pytest.raises(DataError, match=r"gold_field='solution': record 0 has no such field; fields: question"):
        suite.target_samples(math_task, suite.resolve_settings({}))


def test_max_new_tokens_precedence(math_task):
    ev = math_task["eval"]
    assert suite.max_new_tokens(suite.resolve_settings({}), ev) == 24
    assert suite.max_new_tokens(suite.resolve_settings({"max_new_tokens": 7}), ev) == 7
    ev.pop("max_new_tokens")
    assert suite.max_new_tokens(suite.resolve_settings({}), ev) == 1024


def test_the_eval_preset_is_the_schema_plus_its_reference_cache(monkeypatch, compose_config):
    from omegaconf import OmegaConf

    monkeypatch.setenv("PRUNEKIT_CACHE", "/tmp/prunekit-compose")
    composed = OmegaConf.to_container(compose_config("evaluate").eval, resolve=True)
    assert composed == {**suite.DEFAULTS, "reference_cache_dir": "/tmp/prunekit-compose/references"}
    assert set(composed["parts"]) == set(suite.PARTS)
    assert suite.check_settings(composed, {"eval": {"metric": "gsm8k", "target": {"path": "x", "field": "q"}}})


@pytest.mark.parametrize("name, metric", [("math", "gsm8k"), ("math_offline", "gsm8k"), ("code", "humaneval")])
def test_task_presets_name_their_metric(name, metric):
    ev = yaml.safe_load((REPO / "conf" / "task" / f"{name}.yaml").read_text())["eval"]
    assert ev["metric"] == metric and ev["max_new_tokens"] >= 1 and ev["target"]["gold_field"]


def test_decode_options_reach_the_engine(tiny, tokenizer, monkeypatch):
    seen = []
    real = suite.generation.generate

    def spy(*a, **k):
        seen.append((k["drop_finished_every"], k["kv_cache"]))
        return real(*a, **k)

    monkeypatch.setattr(suite.generation, "generate", spy)
    settings = suite.resolve_settings({"drop_finished_every": 4, "kv_cache": "preallocated", "chat_template": False})
    gens = suite._generate(tiny, tokenizer, ["a b", "c"], settings, 3, stop_on_answer=False, desc="t")
    assert seen == [(4, "preallocated")] and len(gens) == 2
