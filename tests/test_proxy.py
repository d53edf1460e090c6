"""The validated target proxy (NLL of the source model's own answers), the resumable generation journal, the cached
source evaluation and the before -> after table."""

import json
import subprocess
from pathlib import Path

import pytest

from prunekit import models, recipes, report
from prunekit.errors import DataError
from prunekit.evaluation import baseline, generation, resources, suite
from tests.helpers import prune_cfg as _cfg


def _samples():
    return [{"id": i, "prompt": f"question {i}"} for i in range(4)]


def test_own_answer_pairs_keep_correct_answers_in_the_models_format():
    rows = [{"id": 0, "output": "a \\boxed{1}", "correct": True}, {"id": 1, "output": "wrong", "correct": False},
            {"id": 2, "output": "   ", "correct": True}, {"id": 3, "output": "b \\boxed{4}", "correct": True},
            {"id": 99, "output": "not in the eval set", "correct": True}]
    pairs, correct_only = suite.own_answer_pairs(_samples(), rows)
    assert correct_only and pairs == [("question 0", "a \\boxed{1}"), ("question 3", "b \\boxed{4}")]


def test_own_answer_pairs_fall_back_to_all_outputs_when_too_few_are_correct():
    rows = [{"id": 0, "output": "x", "correct": False}, {"id": 1, "output": "y", "correct": None}]
    pairs, correct_only = suite.own_answer_pairs(_samples(), rows)
    assert not correct_only and [a for _, a in pairs] == ["x", "y"]
    many = [{"id": i, "output": f"o{i}", "correct": i == 0} for i in range(40)]
    samples = [{"id": i, "prompt": f"q{i}"} for i in range(40)]
    pairs, correct_only = suite.own_answer_pairs(samples, many)  # 1 correct of 40: too small a sample
    assert not correct_only and len(pairs) == 40
    with pytest.raises(DataError, match="no non-empty output"):
        suite.own_answer_pairs(_samples(), [{"id": 0, "output": "", "correct": True}])


SETTINGS = suite.resolve_settings({"batch_size": 2, "chat_template": False})


def test_generation_journal_resumes_without_regenerating(tokenizer, tmp_path, monkeypatch):
    model = models.tiny_model("llama", len(tokenizer))
    prompts = ["Tom has 3 apples.", "Hi!", "What is the capital of France?", "Compute 12 * 7."]
    journal = tmp_path / "journal.jsonl"
    first = suite._generate(model, tokenizer, prompts, SETTINGS, 6, stop_on_answer=False, desc="t", journal=journal)
    assert len(journal.read_text().splitlines()) == 4
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed while writing the last line
    calls = []
    real = generation.generate

    def counting(model, tokenizer, prompts, **kw):
        calls.append(list(prompts))
        return real(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(generation, "generate", counting)
    again = suite._generate(model, tokenizer, prompts, SETTINGS, 6, stop_on_answer=False, desc="t", journal=journal)
    assert [g.output for g in again] == [g.output for g in first]
    assert sum(map(len, calls)) == 1  # only the prompt whose line was torn is generated again
    other_budget = suite._generate(model, tokenizer, prompts, SETTINGS, 5, stop_on_answer=False, desc="t",
                                   journal=journal)
    assert sum(map(len, calls)) == 5 and len(other_budget) == 4  # a different budget reuses nothing


def test_prune_records_the_source_model_once_and_prints_before_after(tmp_path, model_cache, capsys):
    overrides = ["eval.parts=[task,traps,nll]", "eval.nll.gold=true", "eval.n=2", "eval.max_new_tokens=8",
                 "task.eval.target.offset=10000"]
    m1 = recipes.prune(_cfg(tmp_path, model_cache, *overrides), tmp_path / "a")
    sources = list((tmp_path / "cache" / "sources").iterdir())
    assert len(sources) == 1 and (sources[0] / "target.json").is_file()
    for key in ("gsm8k/nll", "gsm8k/nll_gold", "gsm8k/trap_rate", "resources/params"):
        assert f"original/{key}" in m1 and key in m1
    assert m1["original/resources/params"] > m1["resources/params"]
    out = capsys.readouterr().out
    assert "before -> after" in out and "target NLL (own answers)" in out
    stamp = (sources[0] / "target.json").stat().st_mtime_ns
    m2 = recipes.prune(_cfg(tmp_path, model_cache, *overrides, "strategy=reverse"), tmp_path / "b")
    assert (sources[0] / "target.json").stat().st_mtime_ns == stamp  # cached: the source is evaluated once
    assert m2["original/gsm8k/nll"] == m1["original/gsm8k/nll"]
    rows = [json.loads(x) for x in (sources[0] / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # eval.nll.gold off (the default): the source's cached metrics made with it on are not reused for the table
    m3 = recipes.prune(_cfg(tmp_path, model_cache, *overrides[:1], *overrides[2:]), tmp_path / "c")
    assert "gsm8k/nll_gold" not in m3 and "original/gsm8k/nll_gold" not in m3
    assert m3["original/gsm8k/nll"] == m1["original/gsm8k/nll"] and m3["gsm8k/nll"] == m1["gsm8k/nll"]


def test_before_after_table_lists_both_columns():
    text = report.before_after({"gsm8k/em": 0.5, "original/gsm8k/em": 0.75, "resources/params": 1000,
                                  "original/resources/params": 2000, "distractor/sss": 0.4})
    lines = text.splitlines()
    assert lines[0].split() == ["before", "after"]
    assert lines[1].split() == ["gsm8k/em", "0.750", "0.500"]
    assert "distractor similarity" in text and "1,000" in text and "2,000" in text


def _benchmark(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_proxy_agreement_counts_pairs_against_the_task_metric():
    mod = _benchmark("proxy_agreement")
    rows = [{"task": 0.66, "nll": 0.06, "nll_gold": 0.29}, {"task": 0.60, "nll": 0.10, "nll_gold": 0.34},
            {"task": 0.55, "nll": 0.12, "nll_gold": 0.28}, {"task": 0.20, "nll": 0.50, "nll_gold": 0.25}]
    tau, n, conc, disc, tied = mod.agreement(rows, "nll")
    assert (n, conc, disc, tied) == (4, 6, 0, 0) and tau == pytest.approx(1.0)
    tau, n, conc, disc, tied = mod.agreement(rows, "nll_gold")  # hand count: only the top pair agrees
    assert (conc, disc, tied) == (1, 5, 0) and tau == pytest.approx((1 - 5) / 6)
    rows.append({"task": 0.4, "nll": None, "nll_gold": 0.3})
    assert mod.agreement(rows, "nll")[1] == 4  # a run without the proxy is left out


BATCH8 = ("eval.batch_size=8", "eval.max_batch_tokens=4096")  # the batch before 16 and 20 (benchmarks/paper_tables.py's)
PLAIN_DECODE = (*BATCH8, "eval.drop_finished_every=0", "eval.kv_cache=dynamic")  # and before those options existed


@pytest.mark.parametrize("task, plain_key, batch8_key, key", [
    ("math_offline", "6449b65ddf27a92a417f", "608fd3e0969f7d468f44", "4cdb28aa2febd31ca546"),
    ("code_local", "eb15d7b5f1e47de71336", "2c832275f9fd9706d613", "112dccb7d72c916a637c"),
    ("math", "d2977cb57f4be22601fa", "f0709a3db2f157d124d3", "9bb7848b26e537144378"),
    ("code_offline", "1e04ce01147fb1a4c905", "fe0c428e963197d42e86", "f3e7175eae3a5386f2e5")])  # the offline default task
def test_the_source_evaluation_cache_key_does_not_move_by_accident(task, plain_key, batch8_key, key, compose_config):
    """A new key re-evaluates every unpruned model (1.5 h for Qwen2.5-Coder-1.5B on 2 cores). The plain keys are
    the stop-13 code's, which the plain decode (PLAIN_DECODE) still reaches; the default keys moved twice, when
    eval.drop_finished_every=16 and eval.kv_cache=preallocated became the default (batch8_key, which the paper
    tables' runner still reaches) and when eval.batch_size went from 8 to 16, then to 20. A deliberate change bumps
    baseline.SOURCE_EVAL_VERSION and updates them here."""
    for extra, want in (((), key), (BATCH8, batch8_key), (PLAIN_DECODE, plain_key)):
        cfg = compose_config("prune", f"task={task}", "data_dir=/D", "cache_dir=/C", *extra)
        settings = suite.check_settings(recipes.plain(cfg.eval), recipes.plain(cfg.task))
        assert baseline.source_key(models.identity(models.TinySource("llama")), "torch.float32",
                                   recipes.plain(cfg.task), settings) == want, extra


def test_reference_outputs_are_cached_per_dtype(tmp_path, model_cache):
    """The unpruned model's distractor outputs differ between fp32 and bf16: each dtype gets its own cache entry."""
    import dataclasses

    import torch

    cfg = _cfg(tmp_path, model_cache, "eval.parts=[similarity]", "eval.similarity.max_new_tokens=4",
               "task.eval.distractors.conversations.n=1", "task.eval.distractors.squad.n=1")
    loaded = models.load_model(models.resolve(cfg.model.name_or_path), cfg.model)
    for dtype in (torch.float32, torch.bfloat16, torch.float32):  # the last: a cache hit, no third entry
        cast = dataclasses.replace(loaded, model=loaded.model.to(dtype), dtype=dtype)
        baseline.reference_outputs(cast, recipes.plain(cfg.task), recipes.plain(cfg.eval))
    assert len(list((tmp_path / "cache" / "references").glob("*.json"))) == 2


def test_fidelity_runs_any_random_seed_and_summarises_the_random_draws():
    fidelity = _benchmark("fidelity")
    assert fidelity.strategy_overrides("random_s7") == ["strategy=random", "strategy.seed=7"]
    assert fidelity.strategy_overrides("selective") == ["strategy=selective"]
    orig = {"original/gsm8k/nll": 0.3}
    results = {("selective", 0.05): {"gsm8k/nll": 0.7, **orig}, ("random-s1", 0.05): {"gsm8k/nll": 0.6},
               ("random-s2", 0.05): {"gsm8k/nll": 0.9}, ("random-s1", 0.1): {"gsm8k/nll": 1.2}}
    rows = {line.split()[0] + line.split()[1]: line for line in fidelity.table("x", results, "gsm8k").splitlines()[3:]}
    assert rows["original0.00"].split()[3] == "0.300"
    assert "0.75 [0.60-0.90]" in rows["random" + "x2"]  # mean and range over the two seeds at 0.05 only
    assert sum(line.startswith("random x") for line in rows.values()) == 1
    assert fidelity.spread([None, float("nan")]) == "-"


def test_the_source_models_speed_is_measured_in_every_run_not_cached(tmp_path, model_cache, monkeypatch):
    """Tokens/s depends on the machine's load at the time: the unpruned model's is measured again beside the pruned
    one's, while its other metrics come from the cache."""
    calls = []

    def fake_throughput(model, tokenizer, prompts, **kw):
        calls.append(resources.count_parameters(model))
        return {"resources/tokens_per_s": float(len(calls))}

    monkeypatch.setattr(resources, "throughput", fake_throughput)
    overrides = ["eval.parts=[task,resources]", "eval.n=2", "eval.max_new_tokens=4", "task.eval.target.offset=10000"]
    m1 = recipes.prune(_cfg(tmp_path, model_cache, *overrides), tmp_path / "a")
    m2 = recipes.prune(_cfg(tmp_path, model_cache, *overrides), tmp_path / "b")
    assert calls[0] > calls[1] and calls[2] > calls[3]  # unpruned first, then the pruned model, in each run
    assert len(calls) == 4
    assert (m1["original/resources/tokens_per_s"], m1["resources/tokens_per_s"]) == (1.0, 2.0)
    assert (m2["original/resources/tokens_per_s"], m2["resources/tokens_per_s"]) == (3.0, 4.0)
    assert m2["original/gsm8k/em"] == m1["original/gsm8k/em"]


def test_fidelity_qwen_runs_each_job_in_order_with_the_extra_overrides(tmp_path):
    """The Qwen runner's job list and overrides, with a stand-in interpreter that records its arguments."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "py"
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity_qwen.sh"
    env = {"PATH": "/usr/bin:/bin", "PY": str(fake), "RUNS": str(tmp_path / "runs"), "PARTS": "[nll]",
           "JOBS": "original random_s33:0.05 contrastive:0.15"}
    out = subprocess.run(["bash", str(script), "task.target.n=800"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 3 and all("task.target.n=800" in c and "eval.parts=[nll]" in c for c in calls)
    assert calls[0].startswith("evaluate.py ") and f"hydra.run.dir={tmp_path}/runs/original" in calls[0]
    assert "strategy=random ++strategy.seed=33 ratio=0.05" in calls[1] and calls[1].endswith("random_s33_r0.05")
    assert "strategy=contrastive ++strategy.seed=42 ratio=0.15" in calls[2]
    assert out.stdout.count("done in") == 3


@pytest.mark.parametrize("key, off, on", [("drop_finished_every", 0, 16), ("kv_cache", "dynamic", "preallocated")])
def test_decode_options_key_the_source_cache_only_when_on(compose_config, key, off, on):
    """Off (0, dynamic) the pinned keys above hold; on, the batch changes shape mid-decode or attention reads a
    strided view of the cache (other rounding on some devices), so the source model's generations get their own
    cache entry."""
    keys = []
    for value in (off, on):
        cfg = compose_config("prune", "task=math_offline", "data_dir=/D", "cache_dir=/C", *PLAIN_DECODE,
                             f"eval.{key}={value}")
        settings = suite.check_settings(recipes.plain(cfg.eval), recipes.plain(cfg.task))
        keys.append(baseline.source_key(models.identity(models.TinySource("llama")), "torch.float32",
                                        recipes.plain(cfg.task), settings))
    assert keys[0] == "6449b65ddf27a92a417f" and keys[1] != keys[0]
