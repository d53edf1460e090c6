"""Real models from pip packages: SmolLM2-135M (the quick real-model tests) through capture, scoring and pruning;
the README's main job on the offline default, Qwen2.5-Coder-0.5B (slow)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit import capture, data, models, scoring, strategies, surgery

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.real_model
def test_smollm2_prunes_to_a_stock_checkpoint_with_identical_logits(tmp_path, model_cache):
    model, tokenizer = models.load(models.resolve("pip:smollm2-135m-instruct"), model_cache)
    assert model.config.model_type == "llama" and model.config.intermediate_size == 1536
    target = data.load_prompts({"path": "pip:gsm_symbolic", "field": "question", "n": 6}, "target")
    chat = data.load_prompts({"path": "pip:sharegpt", "field": "conversations.0.value", "n": 6}, "distractor")
    stats = capture.statistics(model, tokenizer, {"target": target, "distractor/chat": chat},
                               capture.CaptureSettings(max_length=64, batch_size=4))
    s = scoring.selectivity(stats["target"], [stats["distractor/chat"]])
    assert s.shape == (30, 1536) and torch.isfinite(s).all()
    n_prune = surgery.check_ratio(1536, 0.1)
    assert n_prune == 256  # ceil(153.6 / 128) * 128
    before = sum(p.numel() for p in model.parameters())
    strategies.get({"name": "selective"}).plan(strategies.Scores(selectivity=s), n_prune=n_prune, d_ff=1536, layers=30,
                                               seed=0).apply(model)
    assert before - sum(p.numel() for p in model.parameters()) == 30 * 256 * 576 * 3

    ids = tokenizer(target[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        in_memory = model(**ids).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.intermediate_size == 1280
    with torch.no_grad():
        assert torch.equal(reloaded(**ids).logits, in_memory)


@pytest.mark.slow
def test_readme_main_job_runs_offline(tmp_path):
    """`python prune.py` exactly as the README runs it (about an hour on 2 AVX2 cores): prune + evaluate, offline."""
    out = subprocess.run([sys.executable, str(REPO / "prune.py"), f"hydra.run.dir={tmp_path}/run",
                          "wandb.mode=offline"], cwd=tmp_path, capture_output=True, text=True, timeout=4 * 3600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.intermediate_size == 4608  # the default: contrastive, ratio 0.05 -> 256 of 4864 removed
    assert "before -> after" in out.stdout and "humaneval/pass@1" in out.stdout
    assert "target NLL (own answers)" in out.stdout
    assert (run / "metrics.json").exists() and (run / "generations.jsonl").exists()
