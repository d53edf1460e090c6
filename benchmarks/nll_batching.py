"""The NLL proxy's forward batches: rows only (padded to the longest of eval.batch_size rows) vs a padded-token cap.

The forward pass costs its padded tokens. The default scores its unpruned model's correct answers to the 40 HumanEval
problems (32 here) in batches of `eval.batch_size` = 20, length-sorted: the longest answers pad 20 rows to ~590
tokens. `eval.nll.max_batch_tokens` caps the padded tokens per batch instead. Same pairs, same model, one run, each
variant twice, interleaved (the faster run counts): seconds, padded and real tokens, and the NLL (they must agree
up to bf16 rounding).

The answers are the canonical solutions written as whole functions (the official prompt + its canonical body), the
shape the model's own answers have, so nothing needs generating first.

    .venv/bin/python benchmarks/nll_batching.py [--model pip:qwen2.5-coder-0.5b-instruct] [--n 32] [--caps 1024,2048]
"""

import argparse
import time

from prunekit import data, models, text
from prunekit.evaluation import nll
from prunekit.evaluation.benchmarks.humaneval import build_prompt


def padded_tokens(lengths: list[int], batch_size: int, cap: int | None) -> int:
    return sum(len(g) * max(lengths[i] for i in g) for g in text.length_batches(lengths, batch_size, max_tokens=cap))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--n", type=int, default=32, help="(prompt, answer) pairs: the first n HumanEval problems")
    ap.add_argument("--batch-size", type=int, default=20, help="eval.batch_size (rows per batch)")
    ap.add_argument("--caps", default="1024,2048", help="eval.nll.max_batch_tokens values to compare with no cap")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    model, tok = models.load(models.resolve(args.model), "~/.cache/prunekit/models", dtype=args.dtype)
    problems = data.load_records({"path": "pip:humaneval", "field": "prompt", "n": args.n}, "nll")
    pairs = [(build_prompt(p), p["prompt"] + p["canonical_solution"]) for p in problems]
    lengths = [len(nll.build_example(tok, p, a, chat_template=True)[0]) for p, a in pairs]
    caps = [None] + [int(c) for c in args.caps.split(",")]
    best: dict = {}
    for _ in range(2):
        for cap in caps:
            t = time.perf_counter()
            value = nll.target_nll(model, tok, pairs, batch_size=args.batch_size, max_batch_tokens=cap,
                                   chat_template=True, progress=False)
            seconds = time.perf_counter() - t
            if cap not in best or seconds < best[cap][0]:
                best[cap] = (seconds, value)
    base = best[None][0]
    print(f"{len(pairs)} pairs, {sum(lengths)} real tokens, longest {max(lengths)}, batch {args.batch_size}, "
          f"{next(model.parameters()).dtype}")
    print(f"{'max_batch_tokens':>16} {'padded tokens':>14} {'seconds':>8} {'speed-up':>9} {'nll':>9}")
    for cap in caps:
        seconds, value = best[cap]
        print(f"{str(cap):>16} {padded_tokens(lengths, args.batch_size, cap):>14} {seconds:>8.1f} "
              f"{base / seconds:>8.2f}x {value:>9.5f}")


if __name__ == "__main__":
    main()
