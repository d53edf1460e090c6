"""The CUDA checks: what only a GPU machine can show, run as one short script (a few minutes on one GPU).

    python scripts/cuda_check.py prepare DIR        # here, where the pip models and datasets are installed
    python scripts/cuda_check.py run DIR OUT        # on the GPU machine (DIR copied there; OUT: logs, records)

`prepare` writes what the GPU machine cannot install: a tiny random Qwen2 checkpoint with the offline default's
tokenizer (hidden 64, 2 layers, d_ff 384 = 3 x 128; 13 MB in bf16) and small JSONL slices of the offline task's pip
sets (CodeIO, SQuAD, chitchat, HumanEval), so the entry scripts run on local paths there. The real models cannot
travel (the 0.5B GGUF is 491 MB), so these checks are about devices, not accuracy. `run` checks, and exits 1 on
the first failure:

1. greedy generation on CUDA in fp32 equals the CPU's token for token, with both KV caches and with finished
   rows dropped mid-batch; capture statistics on CUDA equal the CPU's (fp32, rtol 1e-4);
2. `prune.py` on CUDA (model.dtype=auto -> bf16) end to end: capture, scoring, surgery, evaluation with HumanEval
   in the sandbox, CUDA peak memory; and `strategy=attribution` (integrated gradients, backward on CUDA);
3. `accelerate launch train.py` on the pruned run (mixed precision auto -> bf16 on CUDA): the loss curve, the
   merged checkpoint loading with stock `from_pretrained` at the pruned width, its record naming the pruned run;
4. `evaluate.py` on the recovered checkpoint.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROMPTS = ["def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "Hi!", "Write a haiku about the sea.",
           "What is the capital of France? Paris is on the Seine.", "List three prime numbers.",
           "for i in range(10):", "Explain recursion to a child in one sentence.", "x = [1, 2, 3]\nprint("]
SLICES = {"codeio": 260, "squad": 24, "chitchat": 24, "humaneval": 4}  # rows of each pip set to write


def prepare(out: Path) -> None:
    """The tiny checkpoint and the data slices, written under `out`."""
    import torch

    from prunekit import models
    from prunekit.data import pip_datasets

    cache = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")) / "models"
    tokenizer = models.load_tokenizer(models.TOKENIZER_SOURCE, cache)
    model = models.tiny_model("qwen2", len(tokenizer)).to(torch.bfloat16)  # half the bytes to carry
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, n in SLICES.items():
        rows = pip_datasets.lookup(f"pip:{name}", "prepare").rows({"seed": None})
        with open(out / "data" / f"{name}.jsonl", "w") as f:
            for row in list(rows)[:n]:
                f.write(json.dumps(dict(row)) + "\n")
    print(f"prepared {out}: model, " + ", ".join(f"{k} {v} rows" for k, v in SLICES.items()))


def check(ok: bool, what: str) -> None:
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        sys.exit(1)


def same_on_cuda_and_cpu(prepared: Path) -> None:
    """Check 1: generation and capture on CUDA equal the CPU's, in fp32 (TF32 off)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunekit import capture
    from prunekit.evaluation.generation import generate

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    tok = AutoTokenizer.from_pretrained(prepared / "model")
    cpu = AutoModelForCausalLM.from_pretrained(prepared / "model", dtype=torch.float32).eval()
    gpu = AutoModelForCausalLM.from_pretrained(prepared / "model", dtype=torch.float32).eval().to("cuda")
    want = [g.token_ids for g in generate(cpu, tok, PROMPTS, max_new_tokens=24, batch_size=3, progress=False)]
    for kv, drop in (("dynamic", 0), ("preallocated", 0), ("dynamic", 4), ("preallocated", 4)):
        got = [g.token_ids for g in generate(gpu, tok, PROMPTS, max_new_tokens=24, batch_size=3, progress=False,
                                             kv_cache=kv, drop_finished_every=drop)]
        check(got == want, f"generation on CUDA (fp32, kv_cache={kv}, drop_finished_every={drop}) == CPU")
    sets = {"target": PROMPTS[:5], "distractor/x": PROMPTS[3:]}
    settings = capture.CaptureSettings(max_length=32, batch_size=2)
    on_cpu, on_gpu = capture.statistics(cpu, tok, sets, settings), capture.statistics(gpu, tok, sets, settings)
    for name in sets:
        a, b = on_cpu[name], on_gpu[name]
        close = all(torch.allclose(x.cpu(), y.cpu(), rtol=1e-4, atol=1e-7) for x, y in ((a.mean, b.mean), (a.m2, b.m2)))
        check(a.count == b.count and close, f"capture statistics on CUDA == CPU ({name}, {a.count} prompts)")


def entry(args: list[str], log: Path, launcher: list[str] | None = None) -> float:
    """Run an entry script; its output goes to `log`; a failure stops the check with the log's tail."""
    start = time.perf_counter()
    cmd = (launcher or [sys.executable]) + [str(REPO / args[0]), *args[1:]]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ,
                            "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}).returncode
    if rc:
        print(log.read_text()[-4000:])
    check(rc == 0, f"{' '.join(args[:1])} exits 0 ({time.perf_counter() - start:.0f} s, log {log.name})")
    return time.perf_counter() - start


def task_overrides(prepared: Path) -> list[str]:
    """The offline code task on the prepared slices, small enough for seconds per step."""
    d = prepared / "data"
    return [f"model.name_or_path={prepared / 'model'}", f"task.target.path={d}/codeio.jsonl", "task.target.n=16",
            f"task.distractors.squad.path={d}/squad.jsonl", "task.distractors.squad.n=8",
            f"task.distractors.conversations.path={d}/chitchat.jsonl", "task.distractors.conversations.n=8",
            f"task.eval.target.path={d}/humaneval.jsonl", "task.eval.target.n=4",
            f"task.eval.distractors.squad.path={d}/squad.jsonl", "task.eval.distractors.squad.n=4",
            "task.eval.distractors.squad.offset=16",
            f"task.eval.distractors.conversations.path={d}/chitchat.jsonl", "task.eval.distractors.conversations.n=4",
            "task.eval.distractors.conversations.offset=16", "eval.max_new_tokens=48",
            "eval.parts=[task,traps,resources,nll]", "wandb.mode=disabled"]


def pipeline_on_cuda(prepared: Path, out: Path) -> None:
    """Checks 2-4: prune.py, accelerate launch train.py, evaluate.py on CUDA."""
    cache = [f"cache_dir={out}/cache", f"model.cache_dir={out}/cache/models"]
    common = task_overrides(prepared) + cache
    run = out / "prune"
    entry(["prune.py", *common, "strategy=contrastive", "ratio=0.3", f"hydra.run.dir={run}"], out / "prune.log")
    metrics = json.loads((run / "metrics.json").read_text())
    pruning = json.loads((run / "pruning.json").read_text())
    check(pruning["kept_width"] == 256 and "humaneval/pass@1" in metrics,
          f"prune.py on CUDA: kept width {pruning['kept_width']}, pass@1 {metrics.get('humaneval/pass@1')}")
    loaded = [line for line in (out / "prune.log").read_text().splitlines() if "prunekit.models.load" in line]
    check(any("as torch.bfloat16 on cuda" in line for line in loaded), f"model.dtype=auto: {loaded[:1]}")
    peak = metrics.get("resources/peak_mem_gb")
    check(peak is not None and 0 < peak < 2, f"CUDA peak memory recorded: {peak} GiB")
    entry(["prune.py", *common, "strategy=attribution", "ratio=0.3", f"hydra.run.dir={out}/attribution"],
          out / "attribution.log")

    train = out / "train"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    entry(["train.py", *[o for o in common if not o.startswith("model.name_or_path=")],
           f"model.name_or_path={run}/model", f"task.train.path={prepared / 'data' / 'codeio.jsonl'}",
           "task.train.n=32", "lora=code", "lora.epochs=1", "lora.max_length=384", "lora.overlong=truncate",
           "lora.effective_batch_size=8", "lora.per_device_batch_size=4",
           "evaluate=false", f"hydra.run.dir={train}"], out / "train.log", launcher)
    training = json.loads((train / "training.json").read_text())
    print(f"     training: mixed precision {training.get('mixed_precision')}, loss curve {training['loss_curve']}")
    check(training["mixed_precision"] == "bf16", "lora.mixed_precision=auto trains in bf16 on CUDA")
    check(training["recovered_from"] == str(run.resolve()), "training.json names the pruned run it recovered")

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(train / "model")
    check(merged.config.intermediate_size == 256, "the merged checkpoint loads with stock from_pretrained (d_ff 256)")
    entry(["evaluate.py", *[o for o in common if not o.startswith("model.name_or_path=")],
           f"model.name_or_path={train}/model", f"hydra.run.dir={out}/eval"], out / "evaluate.log")
    print("recovered:", json.loads((out / "eval" / "metrics.json").read_text()).get("humaneval/pass@1"))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "prepare":
        return prepare(Path(sys.argv[2]))
    if len(sys.argv) != 4 or sys.argv[1] != "run":
        sys.exit("usage: cuda_check.py prepare DIR | run DIR OUT")
    import torch

    check(torch.cuda.is_available(), f"CUDA available (torch {torch.__version__})")
    print(f"     {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}", flush=True)
    prepared, out = Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    same_on_cuda_and_cpu(prepared)
    pipeline_on_cuda(prepared, out)
    print("all CUDA checks passed")


if __name__ == "__main__":
    main()
