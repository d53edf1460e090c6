"""Capture, generation and prune.py with evaluation sharded over 2 CPU processes (accelerate launch, gloo) equal
one process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from prunekit import capture, models, recipes
from prunekit.evaluation.generation import generate
from tests.helpers import PROMPTS, REPO, SMALL, recipe_cfg, subprocess_env

# `accelerate launch --multi_gpu` starts processes through torchrun; without CUDA they form a gloo CPU group.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
          "1", "--mixed_precision", "no", "--dynamo_backend", "no"]

SCRIPT = textwrap.dedent("""
    import atexit, sys, torch
    # Registered before prunekit's own hook, so it runs after it (atexit is last-in, first-out).
    atexit.register(lambda: print(f"group alive at exit: {torch.distributed.is_initialized()}", flush=True))
    from prunekit import capture, models, dist
    from prunekit.evaluation.generation import generate
    tokenizer = models.load_tokenizer(models.TOKENIZER_SOURCE, sys.argv[2])
    model = models.tiny_model("llama", len(tokenizer))
    prompts = {"target": %r, "distractor/x": %r}
    stats = capture.statistics(model, tokenizer, prompts, capture.CaptureSettings(max_length=32, batch_size=2))
    state = dist.process_state()
    with state.split_between_processes(prompts["target"]) as shard:
        print(f"rank {state.process_index}/{state.num_processes} captured {len(shard)} target prompts", flush=True)
    generations = generate(model, tokenizer, prompts["target"], max_new_tokens=6, batch_size=2)
    if state.is_main_process:
        out = {k: s.to_dict() for k, s in stats.items()}
        out["generations"] = [g.token_ids for g in generations]
        torch.save(out, sys.argv[1])
""")


def test_two_process_capture_and_generation_equal_one_process(tmp_path, tokenizer, model_cache):
    prompts = {"target": PROMPTS * 2 + ["One more."], "distractor/x": PROMPTS[::-1]}
    script = tmp_path / "cap.py"
    script.write_text(SCRIPT % (prompts["target"], prompts["distractor/x"]))
    out = tmp_path / "stats.pt"
    cmd = [*LAUNCH, str(script), str(out), str(model_cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 0/2 captured 6 target prompts" in run.stdout and "rank 1/2 captured 5 target prompts" in run.stdout
    # Every rank leaves its gloo group destroyed before interpreter teardown (a live one aborted a rank at exit).
    assert run.stdout.count("group alive at exit: False") == 2, run.stdout[-2000:]
    two = torch.load(out, weights_only=True)

    model = models.tiny_model("llama", len(tokenizer))
    one = capture.statistics(model, tokenizer, prompts, capture.CaptureSettings(max_length=32, batch_size=2))
    for name in prompts:
        assert two[name]["count"] == one[name].count == len(prompts[name])
        torch.testing.assert_close(two[name]["mean"], one[name].mean, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(two[name]["m2"], one[name].m2, rtol=1e-4, atol=1e-9)
    # Whole batches go to each process, so the gathered generations are exactly the one-process ones.
    single = generate(model, tokenizer, prompts["target"], max_new_tokens=6, batch_size=2)
    assert two["generations"] == [g.token_ids for g in single]


def _measured(metrics: dict) -> dict:
    """The measurements that do not depend on the machine's load (no timings, speeds or memory) nor on the cache."""
    return {k: v for k, v in metrics.items()
            if not (k.startswith("time/") or "mem_gb" in k or "tokens_per_s" in k or k == "capture/cached")}


def test_two_process_prune_with_evaluation_equals_one_process(tmp_path, model_cache):
    """prune.py under `accelerate launch` with evaluation on: every cached stage built with all ranks taking part
    (the unpruned model's evaluation and distractor outputs, once a deadlock: one rank waited on the cache's file
    lock while the other waited for it in the sharded generation), then read from the caches by all ranks."""
    args = [*SMALL, "strategy=selective", "ratio=0.1", f"cache_dir={tmp_path}/cache2", f"model.cache_dir={model_cache}"]
    two = {}
    for name in ("built", "cached"):
        cmd = [*LAUNCH, str(REPO / "prune.py"), *args, f"hydra.run.dir={tmp_path / name}"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        two[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert not two["built"]["capture/cached"] and two["cached"]["capture/cached"]
    one = recipes.prune(recipe_cfg(tmp_path, model_cache, "strategy=selective", "ratio=0.1"), tmp_path / "one")
    assert _measured(two["built"]) == _measured(two["cached"]) == _measured(json.loads(json.dumps(one)))
