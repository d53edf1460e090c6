"""Target NLL: the full-logits computation it replaced vs projecting only the answer positions, chunked.

Before: `model(...).logits` builds a [batch, sequence, vocab] tensor (for Qwen2.5's 151k vocabulary and 8 x 500
tokens, 2.4 GB in fp32) and then picks the answer positions. After (`nll.nll_sum`): the decoder's hidden states
are sliced to the answer positions first and go through the LM head 256 rows at a time. Same prompts, same
batches, one command: time, peak RSS above the loaded model (each variant in its own process), and the two NLLs
(they must agree).

    .venv/bin/python benchmarks/nll_memory.py [--model pip:smollm2-135m-instruct] [--n 32] [--batch-size 8]
"""

import argparse
import gc
import json
import resource
import subprocess
import sys
import time

import psutil
import torch
import torch.nn.functional as F

from prunekit import data, models
from prunekit.evaluation import nll
from prunekit.evaluation.benchmarks import gsm8k


@torch.inference_mode()
def full_logits_sum(model, input_ids, attention_mask, labels):
    """The earlier implementation: full logits, then the scored positions."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    target = labels[:, 1:]
    keep = target != nll.IGNORE
    return float(F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="sum")), int(keep.sum())


def run_variant(args) -> dict:
    """One variant in this (fresh) process: seconds, peak RSS above the loaded model (GB), mean NLL."""
    model, tok = models.load(models.resolve(args.model), "~/.cache/prunekit/models", dtype=args.dtype)
    records = data.load_records({"path": "pip:gsm_symbolic", "field": "question", "n": args.n}, "nll")
    pairs = [(gsm8k.build_prompt(r["question"]), r["metadata"]["answer_cot"]) for r in records]
    examples = [nll.build_example(tok, p, a, chat_template=True) for p, a in pairs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = [nll.collate(examples[i : i + args.batch_size], pad) for i in range(0, len(examples), args.batch_size)]
    fn = (lambda **b: full_logits_sum(model, **b)) if args.variant == "before" else (lambda **b: nll.nll_sum(model, **b))
    gc.collect()
    base = psutil.Process().memory_info().rss
    t, total, count = time.perf_counter(), 0.0, 0
    for batch in batches:
        s, n = fn(**batch)
        total, count = total + s, count + n
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB, over the process's lifetime
    return {"seconds": seconds, "peak_gb": max(peak - base, 0) / 1e9, "nll": total / count,
            "vocab": model.config.vocab_size, "dtype": str(next(model.parameters()).dtype),
            "tokens": max(b["input_ids"].numel() for b in batches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--variant", choices=["before", "now"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    # Each variant in its own process (peak RSS is per process), twice, interleaved; the faster run of each counts.
    results: dict = {}
    for _ in range(2):
        for variant in ("before", "now"):
            cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--n", str(args.n),
                   "--batch-size", str(args.batch_size), "--dtype", args.dtype]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            if variant not in results or out["seconds"] < results[variant]["seconds"]:
                results[variant] = out
    b, n = results["before"], results["now"]
    print(f"model={args.model} dtype={b['dtype']} vocab={b['vocab']} pairs={args.n} batch={args.batch_size} "
          f"tokens/batch={b['tokens']}")
    print(f"{'':28} {'seconds':>8} {'peak RSS +GB':>13} {'NLL':>8}")
    for name, r in (("full logits (before)", b), ("answer rows, chunked (now)", n)):
        print(f"{name:28} {r['seconds']:>8.2f} {r['peak_gb']:>13.3f} {r['nll']:>8.4f}")
    print(f"now / before: time {n['seconds'] / b['seconds']:.2f}, peak RSS above the model "
          f"{n['peak_gb'] / max(b['peak_gb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
