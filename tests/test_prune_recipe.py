"""The prune recipe end to end on a tiny model: a 2x2 multirun of prune.py captures once and resumes; each strategy
writes a stock checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit import checkpoint, recipes
from tests.helpers import REPO, TINY
from tests.helpers import prune_cfg as _cfg
from tests.helpers import subprocess_env as _env


def _run_sweep(tmp_path, model_cache):
    cmd = [sys.executable, str(REPO / "prune.py"), "-m", "ratio=0.1,0.5", "strategy=selective,reverse", *TINY,
           f"hydra.sweep.dir={tmp_path}/sweep", f"cache_dir={tmp_path}/cache", f"model.cache_dir={model_cache}"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_sweep_runs_four_jobs_and_one_capture_then_resumes(tmp_path, model_cache):
    _run_sweep(tmp_path, model_cache)
    runs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 4
    metrics = {r.name: json.loads((r / "metrics.json").read_text()) for r in runs}
    assert sorted(m["capture/cached"] for m in metrics.values()) == [False, True, True, True]
    assert len(list((tmp_path / "cache" / "activations").glob("*.pt"))) == 1
    assert all("ratio=" in r.name and "strategy=" in r.name for r in runs)  # readable job directories
    records = {}
    for run in runs:
        rec = json.loads((run / "pruning.json").read_text())
        records[(rec["ratio"], rec["strategy"])] = rec
        kept_width = 256 if rec["ratio"] == 0.1 else 128  # d_ff 384: 10 % -> 128 removed, 50 % -> 256 removed
        assert rec["kept_width"] == kept_width and all(len(k) == kept_width for k in rec["kept_indices"])
        model = AutoModelForCausalLM.from_pretrained(run / "model")
        assert model.config.intermediate_size == kept_width
        assert model.model.layers[0].mlp.down_proj.weight.shape[1] == kept_width
    assert len(records) == 4
    sel = records[(0.5, "selective")]["kept_indices"]
    rev = records[(0.5, "reverse")]["kept_indices"]
    assert all(set(a).isdisjoint(b) for a, b in zip(sel, rev))  # 128 lowest-S kept by reverse vs 128 highest by selective
    index = (tmp_path / "sweep" / "runs.jsonl").read_text().splitlines()
    assert len(index) == 4

    # Re-running the same sweep skips the finished jobs (resume=true): nothing is rewritten.
    stamps = {r.name: (r / "model" / "model.safetensors").stat().st_mtime_ns for r in runs}
    _run_sweep(tmp_path, model_cache)
    assert {r.name: (r / "model" / "model.safetensors").stat().st_mtime_ns for r in runs} == stamps
    logs = "".join(p.read_text() for p in (tmp_path / "sweep").glob("*/prune.log"))
    assert logs.count("already complete") == 4


def test_random_strategy_needs_no_capture_and_is_seeded(tmp_path, model_cache):
    for seed, sub in ((42, "a"), (42, "b"), (33, "c")):
        recipes.prune(_cfg(tmp_path, model_cache, "strategy=random", f"strategy.seed={seed}"), tmp_path / sub)
    kept = {s: json.loads((tmp_path / s / "pruning.json").read_text())["kept_indices"] for s in "abc"}
    assert kept["a"] == kept["b"] != kept["c"]
    assert not (tmp_path / "cache" / "activations").exists()


def test_detrimental_random_zeroes_one_layer_and_keeps_width(tmp_path, model_cache):
    metrics = recipes.prune(_cfg(tmp_path, model_cache, "strategy=detrimental_random", "strategy.layer=1",
                                  "strategy.percent=0.25"), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "pruning.json").read_text())
    assert metrics["prune/params_after"] == metrics["prune/params_before"]
    assert len(record["deactivated"]) == 96 and record["layer"] == 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    gate = model.model.layers[1].mlp.gate_proj.weight
    assert torch.count_nonzero(gate[record["deactivated"]]) == 0 and torch.count_nonzero(gate) > 0


def test_failed_rerun_keeps_earlier_weights_and_leaves_no_stale_numbers(tmp_path, model_cache, monkeypatch):
    run = tmp_path / "run"
    recipes.prune(_cfg(tmp_path, model_cache, "resume=false"), run)
    weights = (run / "model" / "model.safetensors").read_bytes()
    pruning = (run / "pruning.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint, "save_model", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        recipes.prune(_cfg(tmp_path, model_cache, "resume=false", "ratio=0.5"), run)
    assert (run / "model" / "model.safetensors").read_bytes() == weights  # atomic writes: never half-written
    assert (run / "pruning.json").read_text() == pruning
    # The redone job cleared the earlier attempt's numbers: nothing can report the 0.1 model as the 0.5 run.
    assert not (run / "metrics.json").exists() and not list(run.glob("complete-*.json"))
    assert not list(run.glob(".*.tmp"))


def _fp32_source(tmp_path, model_cache) -> Path:
    """A tiny llama checkpoint stored in float32 (a stock directory, as a user's source model would be)."""
    from prunekit import models

    tokenizer = models.load_tokenizer(models.TOKENIZER_SOURCE, model_cache)
    src = tmp_path / "src"
    models.tiny_model("llama", len(tokenizer), seed=3).save_pretrained(src)
    tokenizer.save_pretrained(src)
    return src


def _sliced(src: Path, kept: list[list[int]]):
    """The source in float32 with every layer cut to the recorded kept neurons."""
    from prunekit import surgery

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    surgery.prune_mlp(model, [torch.tensor(k) for k in kept])
    return model


def test_checkpoint_keeps_the_sources_stored_dtype_when_computing_in_bf16(tmp_path, model_cache, monkeypatch, caplog):
    import logging

    from safetensors.torch import load_file

    from prunekit import dist

    src = _fp32_source(tmp_path, model_cache)
    monkeypatch.setattr(dist, "cpu_has_bf16", lambda: True)  # model.dtype=auto computes in bf16, as on such CPUs
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="prunekit.models"):
        recipes.prune(_cfg(tmp_path, model_cache, f"model.name_or_path={src}", "model.dtype=auto", "evaluate=false"),
                       run)
    assert any(f"loaded {src} (dir) as torch.bfloat16" in r.getMessage() for r in caplog.records)  # computed in bf16
    kept = json.loads((run / "pruning.json").read_text())["kept_indices"]
    assert json.loads((run / "model" / "config.json").read_text())["dtype"] == "float32"
    saved, expected = load_file(run / "model" / "model.safetensors"), _sliced(src, kept).state_dict()
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert all(torch.equal(saved[k], expected[k]) for k in saved)  # the source's values, sliced, not bf16-rounded
    ids = torch.tensor([[1, 5, 9, 200, 17, 3]])
    with torch.no_grad():
        dlogit = (AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32)(ids).logits
                  - _sliced(src, kept)(ids).logits).abs().max().item()
    assert dlogit < 1e-5
    # model.save_dtype asks for another dtype; a bad value is one line naming the option and the allowed values.
    recipes.prune(_cfg(tmp_path, model_cache, f"model.name_or_path={src}", "model.save_dtype=bfloat16",
                        "evaluate=false"), tmp_path / "bf16")
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model" / "model.safetensors").values()} == {torch.bfloat16}
    from prunekit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model\.save_dtype='fp8': unknown dtype; allowed: null \(the source's "
                                          r"stored dtype\), float32, bfloat16, float16$"):
        recipes.prune(_cfg(tmp_path, model_cache, f"model.name_or_path={src}", "model.save_dtype=fp8"), tmp_path / "x")
