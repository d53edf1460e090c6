"""Issue 19, defects 4, 5, 9, 10 and 11: another job's run directory is refused, edited local files are never
served from a stale cache or resume, damaged records do not pass as complete, bad input is one line, and the
messages say what is wrong."""

import json
import logging
import os
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from prunekit import pipeline, report, tracking
from prunekit.evaluation import suite
from tests.test_recipes import _cfg
from tests.test_report import make_sweep
from tests.test_tracking import write_checkpoint

REPO = pipeline.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, model_cache):
    """A finished prune run of the tiny model (no evaluation): (tmp dir, run dir)."""
    tmp = tmp_path_factory.mktemp("pruned")
    pipeline.prune(_cfg(tmp, model_cache, "evaluate=false"), tmp / "run")
    return tmp, tmp / "run"


def _rescore_cfg(tmp_path, model_cache, generations, *overrides):
    return _cfg(tmp_path, model_cache, "model.name_or_path=/no/model/needed", f"generations={generations}",
                "eval.parts=[task,traps]", *overrides, job="evaluate")


def _answers(tmp_path, model_cache, path, right: int):
    """A generations file answering the first ``right`` of the 4 eval ids right and the others wrong."""
    cfg = _rescore_cfg(tmp_path, model_cache, path)
    samples = suite.target_samples(pipeline.plain(cfg.task), pipeline.plain(cfg.eval))
    path.write_text("".join(json.dumps({"id": s["id"], "output": "\\boxed{" + (s["gold"] if i < right else "-1")
                                        + "}"}) + "\n" for i, s in enumerate(samples)))


# ---------------------------------------------------------------------------------- 4. another job's directory
@pytest.mark.parametrize("resume", [True, False])
def test_another_jobs_run_directory_is_refused_and_left_intact(pruned_run, model_cache, resume):
    tmp, run = pruned_run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    gens = tmp / f"g-{resume}.jsonl"
    _answers(tmp, model_cache, gens, right=2)
    with pytest.raises(tracking.TrackingError, match=r"holds a prune run, not a evaluate run"):
        pipeline.evaluate(_rescore_cfg(tmp, model_cache, gens, f"resume={str(resume).lower()}"), run)
    with pytest.raises(tracking.TrackingError, match=r"holds a prune run, not a train run"):
        tracking.check_resume(run, "train", {"lora": {"r": 8}}, resume)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing overwritten or deleted


def test_an_unfinished_run_of_another_job_is_refused_too(tmp_path):
    tracking.record_config(tmp_path, {"ratio": 0.1}, "prune")  # a prune killed before its marker
    with pytest.raises(tracking.TrackingError, match="holds a prune run"):
        tracking.check_resume(tmp_path, "train", {"ratio": 0.1}, resume=False)
    assert tracking.check_resume(tmp_path, "prune", {"ratio": 0.1}, resume=True) is False  # its own job redoes it


# ---------------------------------------------------------------------------------- 5. content, not paths
def test_rescoring_an_edited_generations_file_is_not_skipped(tmp_path, model_cache):
    gens, out = tmp_path / "g.jsonl", tmp_path / "rescore"
    _answers(tmp_path, model_cache, gens, right=4)
    assert pipeline.evaluate(_rescore_cfg(tmp_path, model_cache, gens), out)["gsm8k/em"] == 1.0
    _answers(tmp_path, model_cache, gens, right=2)  # the same path, other content
    assert pipeline.evaluate(_rescore_cfg(tmp_path, model_cache, gens), out)["gsm8k/em"] == 0.5
    assert json.loads((out / "metrics.json").read_text())["gsm8k/em"] == 0.5
    stamp = (out / "metrics.json").stat().st_mtime_ns
    os.utime(gens)  # the same bytes again: still complete
    assert pipeline.evaluate(_rescore_cfg(tmp_path, model_cache, gens), out)["gsm8k/em"] == 0.5
    assert (out / "metrics.json").stat().st_mtime_ns == stamp


def test_the_source_evaluation_key_follows_the_eval_files_content(tmp_path):
    from hydra import compose, initialize_config_dir

    from prunekit import models

    target = tmp_path / "E.jsonl"

    def key():
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("prune", overrides=[f"task.eval.target.path={target}", "cache_dir=/C"])
        settings = suite.check_settings(pipeline.plain(cfg.eval), pipeline.plain(cfg.task))
        return pipeline.source_key(cfg, models.Source("tiny", "llama"), "torch.float32", settings)

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
    tracking.mark_complete(run, "prune")
    assert tracking.is_complete(run, "prune")
    damage(run / "model")
    assert not tracking.is_complete(run, "prune")
    assert tracking.is_complete(run, "prune", checkpoint=False)  # the results are still there for the report
    with pytest.raises(RuntimeError, match="model"):
        tracking.mark_complete(run, "prune")


def test_a_run_without_its_weights_is_redone_by_resume(tmp_path, model_cache):
    run = tmp_path / "run"
    pipeline.prune(_cfg(tmp_path, model_cache, "evaluate=false"), run)
    (run / "model" / "model.safetensors").unlink()
    pipeline.prune(_cfg(tmp_path, model_cache, "evaluate=false"), run)
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
