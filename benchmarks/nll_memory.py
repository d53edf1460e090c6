"""Target NLL: the full-logits computation it replaced vs projecting only the answer positions, chunked.

Before: `model(...).logits` builds a [batch, sequence, vocab] tensor (for Qwen2.5's 151k vocabulary and 8 x 500
tokens, 2.4 GB in fp32) and then picks the answer positions. After (`nll.nll_sum`): the decoder's hidden states
are sliced to the answer positions first and go through the LM head 256 rows at a time. Same prompts, same
batches, one run: time, peak RSS growth of each, and the two NLLs (they must agree).

    .venv/bin/python benchmarks/nll_memory.py [--model pip:smollm2-135m-instruct] [--n 32] [--batch-size 8]
"""

import argparse
import time

import psutil
import torch
import torch.nn.functional as F

from prunekit import data, models
from prunekit.evaluation import math, nll


@torch.inference_mode()
def full_logits_sum(model, input_ids, attention_mask, labels):
    """The earlier implementation: full logits, then the scored positions."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    target = labels[:, 1:]
    keep = target != nll.IGNORE
    return float(F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="sum")), int(keep.sum())


def measure(fn, batches):
    """Seconds, peak RSS growth (GB, sampled after each batch) and mean NLL of fn over the batches."""
    proc = psutil.Process()
    base, peak = proc.memory_info().rss, 0
    t, total, count = time.perf_counter(), 0.0, 0
    for batch in batches:
        s, n = fn(**batch)
        total, count = total + s, count + n
        peak = max(peak, proc.memory_info().rss - base)
    return time.perf_counter() - t, peak / 1e9, total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    model, tok = models.load(models.resolve(args.model), "~/.cache/prunekit/models", dtype=args.dtype)
    records = data.load_records({"path": "pip:gsm_symbolic", "field": "question", "n": args.n}, "nll")
    pairs = [(math.build_prompt(r["question"]), r["metadata"]["answer_cot"]) for r in records]
    examples = [nll.build_example(tok, p, a, chat_template=True) for p, a in pairs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = [nll.collate(examples[i : i + args.batch_size], pad) for i in range(0, len(examples), args.batch_size)]
    print(f"model={args.model} dtype={next(model.parameters()).dtype} vocab={model.config.vocab_size} "
          f"pairs={args.n} batch={args.batch_size} tokens/batch={max(b['input_ids'].numel() for b in batches)}")
    # Interleaved, best of two: the first call of each warms up allocations.
    results = {}
    for _ in range(2):
        for name, fn in (("full logits (before)", lambda **b: full_logits_sum(model, **b)),
                         ("answer rows, chunked (now)", lambda **b: nll.nll_sum(model, **b))):
            t, mem, value = measure(fn, batches)
            old = results.get(name, (float("inf"), float("inf"), value))
            results[name] = (min(t, old[0]), min(mem, old[1]) if old[1] != float("inf") else mem, value)
    print(f"{'':28} {'seconds':>8} {'peak RSS +GB':>13} {'NLL':>8}")
    for name, (t, mem, value) in results.items():
        print(f"{name:28} {t:>8.2f} {mem:>13.3f} {value:>8.4f}")
    (t0, m0, _), (t1, m1, _) = results.values()
    print(f"now / before: time {t1 / t0:.2f}, peak RSS growth {m1 / max(m0, 1e-9):.2f}")


if __name__ == "__main__":
    main()
