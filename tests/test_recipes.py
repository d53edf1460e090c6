"""prune (with evaluation), evaluate, re-score and train recipes end to end on a tiny model; W&B offline sweep."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from prunekit import recipes
from prunekit.data import DataError
from prunekit.evaluation import suite
from tests.helpers import REPO, SMALL, inspect_run
from tests.helpers import recipe_cfg as _cfg


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def pruned(tmp_path, model_cache):
    run = tmp_path / "prune"
    metrics = recipes.prune(_cfg(tmp_path, model_cache), run)
    return run, metrics


def test_prune_evaluates_its_result(pruned, tmp_path):
    run, metrics = pruned
    for key in ("gsm8k/em", "gsm8k/trap_rate", "gsm8k/trap_type1", "gsm8k/trap_type2", "gsm8k/nll",
                "distractor/sss", "resources/params", "resources/peak_mem_gb", "resources/tokens_per_s"):
        assert key in metrics, key
    generations = _lines(run / "generations.jsonl")
    assert len(generations) == 4 and all({"id", "prompt", "output", "stop_reason"} <= set(g) for g in generations)
    samples = _lines(run / "samples.jsonl")
    assert metrics["gsm8k/em"] == sum(bool(s["correct"]) for s in samples) / len(samples)
    assert json.loads((run / "metrics.json").read_text())["gsm8k/em"] == metrics["gsm8k/em"]
    assert len(list((tmp_path / "cache" / "references").glob("*.json"))) == 1  # unpruned model's distractor outputs


def test_evaluate_a_pruned_checkpoint_reuses_reference_outputs(pruned, tmp_path, model_cache):
    run, _ = pruned
    refs = sorted((tmp_path / "cache" / "references").glob("*.json"))
    stamp = refs[0].stat().st_mtime_ns
    metrics = recipes.evaluate(_cfg(tmp_path, model_cache, f"model.name_or_path={run}/model", job="evaluate"), tmp_path / "eval")
    assert metrics["prune/real_ratio"] == json.loads((run / "pruning.json").read_text())["real_ratio"]
    assert sorted((tmp_path / "cache" / "references").glob("*.json")) == refs and refs[0].stat().st_mtime_ns == stamp
    assert (tmp_path / "eval" / "complete-evaluate.json").exists()


def test_rescore_needs_no_model(pruned, tmp_path, model_cache):
    run, _ = pruned
    cfg = _cfg(tmp_path, model_cache, "model.name_or_path=/no/model/needed", job="evaluate")
    gold = {s["id"]: s["gold"] for s in suite.target_samples(recipes.plain(cfg.task), recipes.plain(cfg.eval))}
    ids = [g["id"] for g in _lines(run / "generations.jsonl")]
    assert sorted(ids) == sorted(gold)
    # Right answers for the first three ids (from another engine), a wrong one for the last.
    outputs = [{"id": i, "output": "so the answer is \\boxed{" + (gold[i] if n < 3 else "-1") + "}"}
               for n, i in enumerate(ids)]
    path = tmp_path / "outside.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in outputs))
    metrics = recipes.evaluate(_cfg(tmp_path, model_cache, "model.name_or_path=/no/model/needed",
                                     f"generations={path}", job="evaluate"), tmp_path / "rescore")
    assert metrics["gsm8k/em"] == 0.75 and metrics["gsm8k/trap_rate"] == 0.0


def test_rescore_with_the_hub_presets_reads_only_what_it_scores_offline(tmp_path, model_cache):
    """The README's `evaluate.py task=code|math generations=<file>` with no network (conftest: HF offline): the
    distractor sets are hub ids, but re-scoring generates nothing, so only the file and the eval target count."""
    from prunekit.data.pip_datasets import _humaneval

    problems = _humaneval()[:4]
    code_out = tmp_path / "code.jsonl"
    code_out.write_text("".join(json.dumps({"id": p["task_id"], "output": p["canonical_solution"]}) + "\n"
                                for p in problems))
    metrics = recipes.evaluate(_cfg(tmp_path, model_cache, "task=code", f"generations={code_out}",
                                     job="evaluate"), tmp_path / "code")
    assert metrics["humaneval/pass@1"] == 1.0 and metrics["humaneval/n"] == 4
    gsm8k = tmp_path / "gsm8k-test.jsonl"  # a local copy of the eval target (the hub one is not cached here)
    gsm8k.write_text("".join(json.dumps({"question": f"{i} + {i}?", "answer": f"{i} + {i}\n#### {2 * i}"}) + "\n"
                             for i in range(4)))
    math_out = tmp_path / "math.jsonl"
    math_out.write_text("".join(json.dumps({"id": i, "output": f"\\boxed{{{2 * i if i else 7}}}"}) + "\n"
                                for i in range(4)))
    cfg = _cfg(tmp_path, model_cache, "task=math", f"task.eval.target.path={gsm8k}", f"generations={math_out}",
               job="evaluate")
    assert recipes.evaluate(cfg, tmp_path / "math")["gsm8k/em"] == 0.75
    # What it does read is still checked before anything runs: the hub eval target cannot be loaded offline.
    with pytest.raises(DataError, match=r"^task\.eval\.target\.path='openai/gsm8k': hub dataset cannot"):
        recipes.evaluate(_cfg(tmp_path, model_cache, "task=math", f"generations={math_out}", job="evaluate"),
                          tmp_path / "math-hub")


def test_train_recovers_and_saves_a_stock_merged_checkpoint(pruned, tmp_path, model_cache):
    run, _ = pruned
    out = tmp_path / "train"
    # Cut answers (overlong=truncate): the small max_length keeps this fast, and GSM-style answers are longer.
    metrics = recipes.train(_cfg(tmp_path, model_cache, f"model.name_or_path={run}/model", "task.train.n=8",
                                  "lora.max_length=96", "lora.overlong=truncate", "lora.epochs=1",
                                  "lora.effective_batch_size=4", "lora.per_device_batch_size=2", "evaluate=false",
                                  job="train"), out)
    assert metrics["train/steps"] == 2 and metrics["train/final_loss"] > 0
    assert json.loads((out / "pruning.json").read_text()) == json.loads((run / "pruning.json").read_text())
    training = json.loads((out / "training.json").read_text())
    assert training["source_model"] == f"{run}/model" and training["recovered_from"] == str(run.resolve())
    assert metrics["train/recovered_from"] == str(run.resolve())  # metrics.json and the W&B run name the pruned run
    assert json.loads((out / "metrics.json").read_text())["train/recovered_from"] == str(run.resolve())
    assert [step for step, _ in training["loss_curve"]] == [1, 2] and training["loss_curve"][-1][1] > 0
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    assert merged.config.intermediate_size == json.loads((run / "pruning.json").read_text())["kept_width"]
    assert (out / "adapter" / "adapter_config.json").exists()


def test_train_killed_in_its_evaluation_resumes_without_training_again(pruned, tmp_path, model_cache, monkeypatch):
    """A train job that dies after training (in its evaluation) leaves training.json and the merged model/; the same
    command with resume=true evaluates that model (no second training) and gets the uninterrupted run's numbers."""
    from prunekit import training

    train_recipe = importlib.import_module("prunekit.recipes.train")  # the module (recipes.train is the function)

    run, _ = pruned
    args = [f"model.name_or_path={run}/model", "task.train.n=8", "lora.max_length=96", "lora.overlong=truncate",
            "lora.epochs=1", "lora.effective_batch_size=4", "lora.per_device_batch_size=2", "eval.parts=[task,traps]"]
    uninterrupted = recipes.train(_cfg(tmp_path, model_cache, *args, job="train"), tmp_path / "whole")

    out = tmp_path / "killed"
    real_evaluation = train_recipe.evaluation
    with monkeypatch.context() as m:
        m.setattr(train_recipe, "evaluation", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            recipes.train(_cfg(tmp_path, model_cache, *args, job="train"), out)
    trained = json.loads((out / "training.json").read_text())
    assert not (out / "complete-train.json").exists() and (out / "model" / "config.json").exists()

    def no_training(*args, **kwargs):
        raise RuntimeError("trained again")

    monkeypatch.setattr(training, "train_lora", no_training)
    monkeypatch.setattr(train_recipe, "evaluation", real_evaluation)
    metrics = recipes.train(_cfg(tmp_path, model_cache, *args, job="train"), out)  # resume=true is the default
    assert json.loads((out / "training.json").read_text()) == trained
    for key in ("gsm8k/em", "gsm8k/trap_rate", "train/steps", "train/n_examples"):
        assert metrics[key] == uninterrupted[key], key
    assert metrics["train/final_loss"] == trained["final_loss"]
    assert (out / "complete-train.json").exists()

    with pytest.raises(RuntimeError, match="trained again"):  # resume=false trains again
        with monkeypatch.context() as m:
            m.setattr(train_recipe, "evaluation", lambda *a, **k: pytest.fail("evaluated without training"))
            recipes.train(_cfg(tmp_path, model_cache, *args, "resume=false", job="train"), out)


def test_train_rejects_bad_lora_before_training(pruned, tmp_path, model_cache):
    run, _ = pruned
    with pytest.raises(ValueError, match="lora.r must be a positive integer"):
        recipes.train(_cfg(tmp_path, model_cache, f"model.name_or_path={run}/model", "lora.r=0", "evaluate=false",
                            "task.train.n=4", job="train"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before the run directory, let alone the model


def test_wandb_offline_sweep_runs_are_distinct(tmp_path, model_cache, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "NETRC": str(tmp_path / "no-netrc"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wb"), "WANDB_CACHE_DIR": str(tmp_path / "wb"),
           "WANDB_DATA_DIR": str(tmp_path / "wb")}
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, str(REPO / "prune.py"), "-m", "ratio=0.1,0.5", "strategy=selective", *SMALL, "evaluate=false",
           "wandb.mode=offline", f"hydra.sweep.dir={tmp_path}/sweep", f"cache_dir={tmp_path}/cache",
           f"model.cache_dir={model_cache}"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    seen = []
    for run in runs:
        local = json.loads((run / "metrics.json").read_text())
        wb = inspect_run(run)
        assert wb["job_type"] == "prune"
        for key, value in local.items():
            if value is not None:
                assert wb["summary"][key] == pytest.approx(value), key
        assert wb["config"]["ratio"] == local["prune/ratio"]
        assert wb["config"]["model.name_or_path"] == "tiny:llama"
        seen.append(wb)
    assert seen[0]["run_group"] == seen[1]["run_group"]
    assert seen[0]["run_id"] != seen[1]["run_id"]
    assert seen[0]["summary"]["prune/kept_width"] != seen[1]["summary"]["prune/kept_width"]


def test_detrimental_grid_then_best_setting_on_the_test_split(tmp_path, model_cache):
    grid = tmp_path / "grid"
    adaptation = ["evaluate=true", "eval.parts=[task,traps]", "eval.n=2", "strategy.samples=2", "strategy.steps=4"]
    for layer, percent in ((1, 0.5), (0, 0.25), (1, 0.25)):
        recipes.prune(_cfg(tmp_path, model_cache, "strategy=detrimental", f"strategy.layer={layer}",
                            f"strategy.percent={percent}", *adaptation), grid / f"layer={layer},percent={percent}")
    metrics = recipes.evaluate(_cfg(tmp_path, model_cache, f"best_of={grid}", "eval.parts=[task,traps]",
                                     "eval.n=3", job="evaluate"), tmp_path / "test")
    # Every grid run scores the same EM on this random model: the tie goes to the smaller percent, then the lower layer.
    assert (metrics["select/layer"], metrics["select/percent"]) == (0, 0.25)
    assert metrics["gsm8k/n"] == 3 and "select/adaptation/gsm8k/em" in metrics
    with pytest.raises(ValueError, match="no strategy=detrimental runs"):
        recipes.evaluate(_cfg(tmp_path, model_cache, f"best_of={tmp_path / 'test'}", job="evaluate"), tmp_path / "test2")


def test_a_hub_id_is_never_read_as_a_local_run(tmp_path, monkeypatch):
    from prunekit.runs.store import pruning_record_of

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "pruning.json").write_text('{"strategy": "reverse"}')  # a stray file beside the cwd
    assert pruning_record_of("Qwen/Qwen2.5-Math-1.5B-Instruct") is None
    (tmp_path / "Qwen" / "model").mkdir()
    assert pruning_record_of("Qwen/model") == {"strategy": "reverse"}  # a real local checkpoint dir still is
