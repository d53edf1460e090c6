"""Robustness: another job's run directory is refused, edited local files are never
served from a stale cache or resume, damaged records do not pass as complete, bad input is one line, and the
messages say what is wrong."""

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from prunekit import cli, data, models, recipes, report, training
from prunekit.errors import ConfigError
from prunekit.evaluation import baseline, suite
from prunekit.runs import store
from tests.helpers import make_sweep, write_checkpoint
from tests.helpers import recipe_cfg as _cfg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, model_cache):
    """A finished prune run of the tiny model (no evaluation): (tmp dir, run dir)."""
    tmp = tmp_path_factory.mktemp("pruned")
    recipes.prune(_cfg(tmp, model_cache, "evaluate=false"), tmp / "run")
    return tmp, tmp / "run"


def _rescore_cfg(tmp_path, model_cache, generations, *overrides):
    return _cfg(tmp_path, model_cache, "model.name_or_path=/no/model/needed", f"generations={generations}",
                "eval.parts=[task,traps]", *overrides, job="evaluate")


def _answers(tmp_path, model_cache, path, right: int):
    """A generations file answering the first ``right`` of the 4 eval ids right and the others wrong."""
    cfg = _rescore_cfg(tmp_path, model_cache, path)
    samples = suite.target_samples(recipes.plain(cfg.task), recipes.plain(cfg.eval))
    path.write_text("".join(json.dumps({"id": s["id"], "output": "\\boxed{" + (s["gold"] if i < right else "-1")
                                        + "}"}) + "\n" for i, s in enumerate(samples)))


# ---------------------------------------------------------------------------------- 4. another job's directory
@pytest.mark.parametrize("resume", [True, False])
def test_another_jobs_run_directory_is_refused_and_left_intact(pruned_run, model_cache, resume):
    tmp, run = pruned_run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    gens = tmp / f"g-{resume}.jsonl"
    _answers(tmp, model_cache, gens, right=2)
    with pytest.raises(store.RunError, match=r"holds a prune run, not a evaluate run"):
        recipes.evaluate(_rescore_cfg(tmp, model_cache, gens, f"resume={str(resume).lower()}"), run)
    with pytest.raises(store.RunError, match=r"holds a prune run, not a train run"):
        store.check_resume(run, "train", {"lora": {"r": 8}}, resume)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing overwritten or deleted


def test_an_unfinished_run_of_another_job_is_refused_too(tmp_path):
    store.record_config(tmp_path, {"ratio": 0.1}, "prune")  # a prune killed before its marker
    with pytest.raises(store.RunError, match="holds a prune run"):
        store.check_resume(tmp_path, "train", {"ratio": 0.1}, resume=False)
    assert store.check_resume(tmp_path, "prune", {"ratio": 0.1}, resume=True) is False  # its own job redoes it


# ---------------------------------------------------------------------------------- 5. content, not paths
def test_rescoring_an_edited_generations_file_is_not_skipped(tmp_path, model_cache):
    gens, out = tmp_path / "g.jsonl", tmp_path / "rescore"
    _answers(tmp_path, model_cache, gens, right=4)
    assert recipes.evaluate(_rescore_cfg(tmp_path, model_cache, gens), out)["gsm8k/em"] == 1.0
    _answers(tmp_path, model_cache, gens, right=2)  # the same path, other content
    assert recipes.evaluate(_rescore_cfg(tmp_path, model_cache, gens), out)["gsm8k/em"] == 0.5
    assert json.loads((out / "metrics.json").read_text())["gsm8k/em"] == 0.5
    stamp = (out / "metrics.json").stat().st_mtime_ns
    os.utime(gens)  # the same bytes again: still complete
    assert recipes.evaluate(_rescore_cfg(tmp_path, model_cache, gens), out)["gsm8k/em"] == 0.5
    assert (out / "metrics.json").stat().st_mtime_ns == stamp


def test_the_source_evaluation_key_follows_the_eval_files_content(tmp_path, compose_config):
    from prunekit import models

    target = tmp_path / "E.jsonl"

    def key():
        cfg = compose_config("prune", f"task.eval.target.path={target}", "cache_dir=/C")
        settings = suite.check_settings(recipes.plain(cfg.eval), recipes.plain(cfg.task))
        return baseline.source_key(models.identity(models.TinySource("llama")), "torch.float32",
                                   recipes.plain(cfg.task), settings)

    target.write_text('{"question": "1+1?", "answer": "2"}\n')
    first = key()
    os.utime(target, ns=(1, 1))  # another mtime, the same questions: the same key (no re-evaluation)
    assert key() == first
    target.write_text('{"question": "2+2?", "answer": "4"}\n')
    assert key() != first


# ---------------------------------------------------------------------------------- 9. damaged records
def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [lambda m: (m / "model.safetensors").unlink(), lambda m: _truncate(m / "model.safetensors"),
                                    lambda m: (m / "config.json").write_text("[1, 2]")],
                         ids=["weights deleted", "weights truncated", "config not an object"])
def test_a_damaged_checkpoint_is_not_complete(tmp_path, damage):
    run = tmp_path / "run"
    write_checkpoint(run / "model")
    for name in ("pruning.json", "metrics.json"):
        (run / name).write_text("{}")
    store.mark_complete(run, "prune")
    assert store.is_complete(run, "prune")
    damage(run / "model")
    assert not store.is_complete(run, "prune")
    assert store.is_complete(run, "prune", checkpoint=False)  # the results are still there for the report
    with pytest.raises(RuntimeError, match="model"):
        store.mark_complete(run, "prune")


def test_a_run_without_its_weights_is_redone_by_resume(tmp_path, model_cache):
    run = tmp_path / "run"
    recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false"), run)
    (run / "model" / "model.safetensors").unlink()
    recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false"), run)
    assert AutoModelForCausalLM.from_pretrained(run / "model").config.intermediate_size == 256


def test_report_warns_about_damaged_metrics_and_writes_the_rest(tmp_path, caplog):
    sweep = make_sweep(tmp_path / "sweep")
    truncated = sweep / "ratio=0.1,strategy=reverse,seed=42" / "metrics.json"
    listed = sweep / "ratio=0.2,strategy=reverse,seed=42" / "metrics.json"
    truncated.write_text(truncated.read_text()[:20])
    listed.write_text("[1, 2, 3]")
    with caplog.at_level(logging.WARNING, logger="prunekit.report"):
        result = report.build_report([sweep], tmp_path / "out")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(truncated) in w for w in warnings) and any(str(listed) in w for w in warnings)
    ((_, tables),) = result["tables"].items()
    assert tables["accuracy"].loc[0.1, "selective"] == pytest.approx(70.0)  # the other runs are reported
    assert result["markdown"].is_file()


def test_report_cli_exits_0_with_a_damaged_run(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "ratio=0.2,strategy=reverse,seed=42" / "metrics.json").write_text("[]")
    out = subprocess.run([sys.executable, "-m", "prunekit.report", str(sweep), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "WARNING" in out.stderr and "ratio=0.2,strategy=reverse,seed=42" in out.stderr


# ---------------------------------------------------------------------------------- 10. one line, not a traceback
def _latin1(path):
    path.write_bytes('{"q": "caf\xe9 au lait"}\n'.encode("latin-1"))


def _truncated_gz(path):
    blob = gzip.compress("".join(json.dumps({"q": f"question {i} " * 8}) + "\n" for i in range(2000)).encode())
    path.write_bytes(blob[: len(blob) // 2])


def _blank_lines(path):
    path.write_text("\n  \n\n")


@pytest.mark.parametrize("name, write, reason", [
    ("latin1.jsonl", _latin1, r"not UTF-8 text \(byte 10"),
    ("cut.jsonl.gz", _truncated_gz, "truncated or damaged gzip file"),
    ("blank.jsonl", _blank_lines, "only blank lines"),
    ("folder", lambda p: p.mkdir(), "a directory without data files"),
])
def test_unreadable_prompt_files_are_one_line(tmp_path, name, write, reason):
    path = tmp_path / name
    write(path)
    with pytest.raises(data.DataError, match=reason) as err:
        data.load_prompts({"path": str(path), "field": "q", "n": 1}, "task.target")
    message = str(err.value)
    assert message.startswith(f"task.target.path='{path}'") and "\n" not in message
    assert "functools" not in message and "Instruction" not in message


def _no_model(monkeypatch):
    def load_model(*a, **k):
        raise AssertionError("a model was loaded before the bad input was noticed")
    monkeypatch.setattr(models, "load_model", load_model)


@pytest.mark.parametrize("overrides, error, match", [
    (["ratio=null"], ConfigError, "ratio=null: physical pruning needs a number"),
    (["strategy=random", "strategy.seed=99999999999999999999"], ConfigError, r"strategy.seed=\d+: must be an integer in 0\.\."),
    (["seed=99999999999999999999"], ConfigError, r"^seed=\d+: must be an integer in 0\.\."),
])
def test_bad_prune_values_fail_before_any_model_loads(tmp_path, model_cache, monkeypatch, overrides, error, match):
    _no_model(monkeypatch)
    with pytest.raises(error, match=match):
        recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false", *overrides), tmp_path / "run")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_learning_rate_fails_before_any_model_loads(tmp_path, model_cache, monkeypatch, value):
    _no_model(monkeypatch)
    with pytest.raises(ConfigError, match=f"lora.lr must be a finite number, got {value}"):
        recipes.train(_cfg(tmp_path, model_cache, f"lora.lr={value}", "evaluate=false", job="train"), tmp_path / "t")


def test_resume_from_a_checkpoint_of_another_model_is_one_line(tmp_path):
    from tests.helpers import examples, lora, make_tok
    from tests.helpers import tiny_llama as tiny_model

    tok = make_tok()
    ex = examples(tok, 16)
    training.train_lora(tiny_model(), tok, ex, lora(save_every_steps=1), out_dir=tmp_path, progress=False,
                        base_model="A/model")
    step = tmp_path / "checkpoints" / "step-1"
    with pytest.raises(ConfigError, match="was trained from A/model, not from model.name_or_path=B"):
        training.check_resume_checkpoint(step, "B/model")
    training.check_resume_checkpoint(step, "A/model")  # its own base: fine
    wider = tiny_model()
    wider = type(wider)(type(wider.config)(**{**wider.config.to_dict(), "intermediate_size": 384}))
    with pytest.raises(ConfigError, match=r"checkpoint of another model .*has shape \[") as err:
        training.train_lora(wider, tok, ex, lora(save_every_steps=1), out_dir=tmp_path, resume_from=step,
                            progress=False)
    assert "\n" not in str(err.value)


def test_a_cache_directory_that_is_a_file_is_one_line(tmp_path, model_cache, monkeypatch):
    _no_model(monkeypatch)
    blocker = tmp_path / "cache-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"cache_dir=.*cache-file: .* is a file, not a directory"):
        recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false", f"cache_dir={blocker}"), tmp_path / "run")


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    try:
        cli.guarded(interrupted)
    except SystemExit as exit_:
        code = exit_.code
    except KeyboardInterrupt:  # caught here, or it would stop the whole test session
        pytest.fail("Ctrl-C escaped as a KeyboardInterrupt traceback")
    assert code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run the same command again to resume" in err[0]


def test_a_file_as_model_path_says_so(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(models.ModelError, match="is a file, not a model"):
        models.resolve(str(path))


# ---------------------------------------------------------------------------------- 11. messages that say what is wrong
def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_short_dialogues_are_reported_as_such(tmp_path, caplog):
    turns = [{"role": "user", "content": f"hi {i}"} for i in range(3)]
    path = _jsonl(tmp_path / "dialogues.jsonl", [{"messages": turns}, {"messages": turns[:2]}, {"messages": turns}])
    spec = {"path": str(path), "template": "{messages[0][content]} {messages[2][content]}", "n": 2}
    with caplog.at_level(logging.WARNING, logger="prunekit.data"):
        assert len(data.load_prompts(spec, "task.distractors.conversations")) == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "1 records skipped" in warning and "list item the template indexes" in warning
    assert "list index out of range" not in warning
    with pytest.raises(data.DataError, match="list item the template indexes") as err:
        data.render({"messages": turns[:1]}, spec, "task.distractors.conversations")
    assert "list index out of range" not in str(err.value)


def _eval_task(tmp_path):
    target = _jsonl(tmp_path / "test.jsonl", [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(3)])
    squad = _jsonl(tmp_path / "squad.jsonl", [{"context": f"passage {i}", "question": "who?"} for i in range(8)])
    return {"name": "t", "eval": {"metric": "gsm8k", "target": {"path": str(target), "field": "question",
                                                               "gold_field": "answer"},
                                  "distractors": {"squad": {"path": str(squad), "template": "{context}\n{question}",
                                                            "n": 6}}}}


def test_eval_n_larger_than_the_set_names_eval_n(tmp_path):
    task = _eval_task(tmp_path)
    with pytest.raises(data.DataError, match=r"^eval.n=5 but only 3 records"):
        suite.target_samples(task, suite.check_settings({"n": 5}, task))


def test_eval_n_caps_the_distractor_sets(tmp_path):
    task = _eval_task(tmp_path)
    assert [len(p) for p in suite.distractor_prompts(task, suite.check_settings({"n": 2}, task)).values()] == [2]
    assert [len(p) for p in suite.distractor_prompts(task, suite.check_settings({}, task)).values()] == [6]
    assert [len(p) for p in suite.distractor_prompts(task, suite.check_settings({"n": 50}, task)).values()] == [6]


def test_a_source_that_writes_only_whitespace_still_saves_the_prune_and_counts_prompts(tmp_path, model_cache,
                                                                                      monkeypatch, caplog):
    """The nll part is skipped with a warning (nothing to score), the checkpoint and the other numbers are saved;
    duplicate capture prompts and prompts cut at capture.max_length are counted in the log and pruning.json."""
    import dataclasses

    generate = suite._generate
    monkeypatch.setattr(suite, "_generate", lambda *a, **k: [dataclasses.replace(g, output=" \n ")
                                                             for g in generate(*a, **k)])
    questions = ["What is one plus one?"] * 3 + ["How many legs has a cat?", "Name a colour.",
                                                  "Count: " + " ".join(str(i) for i in range(60))]
    target = _jsonl(tmp_path / "target.jsonl", [{"question": q} for q in questions])
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        metrics = recipes.prune(_cfg(tmp_path, model_cache, f"task.target.path={target}", "task.target.split=null"),
                                 run)
    assert store.is_complete(run, "prune") and AutoModelForCausalLM.from_pretrained(run / "model")
    assert "gsm8k/nll" not in metrics and "gsm8k/nll_answers" in metrics and "gsm8k/em" in metrics
    assert any("gsm8k/nll skipped" in r.getMessage() for r in caplog.records)
    checks = json.loads((run / "pruning.json").read_text())["prompt_checks"]["target"]
    assert checks == {"prompts": 6, "duplicates": 2, "truncated": 1}
    messages = [r.getMessage() for r in caplog.records]
    assert any("target: 2 of 6 prompts repeat" in m for m in messages)
    assert any("target: 1 of 6 prompts are longer than capture.max_length=48" in m for m in messages)
