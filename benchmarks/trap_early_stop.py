"""Online loop detector vs full-length generation on GSM8K-style prompts: tokens saved, trap labels compared.

Runs greedy generation twice on the same prompts, once with the online loop detector (trapped samples stop early)
and once without (every sample may use the whole budget), then prints tokens generated in each, tokens saved
(overall and on the samples that are traps in the full-length run) and how often the trap labels agree.
Targets: >= 50 % tokens saved on trapped samples, >= 95 % label agreement.

    python benchmarks/trap_early_stop.py                                  # the offline default model
    python benchmarks/trap_early_stop.py outputs/prune/<run>/model --n 32  # a pruned checkpoint (e.g. 35 %)
    python benchmarks/trap_early_stop.py --data ../shared/data/gsm8k/test.jsonl
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import Counter
from pathlib import Path

import torch

from prunekit import data, models
from prunekit.evaluation import generation, suite, traps
from prunekit.evaluation.benchmarks import gsm8k

log = logging.getLogger("trap_early_stop")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="pip:smollm2-135m-instruct",
                   help="hub id | checkpoint dir | .gguf | pip:<name> (default: the offline default model)")
    p.add_argument("--data", default="pip:gsm_symbolic",
                   help="GSM8K-style questions: pip:gsm_symbolic (offline) or a JSONL with a `question` field")
    p.add_argument("--offset", type=int, default=10000, help="first row (gsm_symbolic eval rows start at 10000)")
    p.add_argument("--n", type=int, default=16, help="prompts")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="budget per prompt (paper: 1024)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-chat-template", action="store_true", help="raw prompts instead of the chat template")
    p.add_argument("--cache-dir", default=os.environ.get("PRUNEKIT_CACHE", "~/.cache/prunekit"))
    return p.parse_args()


def run(model, tokenizer, prompts, args, detector: bool):
    """(generations, seconds) of one pass, with or without the online loop detector."""
    eos = generation.eos_ids(model, tokenizer)
    factory = (lambda plen: [traps.LoopStoppingCriteria(plen, eos_token_id=eos)]) if detector else None
    t0 = time.perf_counter()
    gens = generation.generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, chat_template=not args.no_chat_template,
                               stopping_criteria_factory=factory, desc="with detector" if detector else "full length")
    return gens, time.perf_counter() - t0


def labels(gens, golds, tokenizer) -> list[dict]:
    """Trap verdicts as the suite computes them (token loops, line loops, length limit)."""
    return [suite.verdict("gsm8k", g.output, {"gold": gold}, token_ids=g.token_ids, tokenizer=tokenizer,
                          hit_limit=g.stop_reason == "length") for g, gold in zip(gens, golds)]


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    model, tokenizer = models.load(models.resolve(args.model), Path(args.cache_dir).expanduser() / "models")
    spec = {"path": args.data, "field": "question", "n": args.n, "offset": args.offset}
    records = data.load_records(spec, "--data")
    prompts = [gsm8k.build_prompt(r["question"]) for r in records]
    golds = [gsm8k.gold_of(r.get("answer", "")) for r in records]

    early, t_early = run(model, tokenizer, prompts, args, detector=True)
    full, t_full = run(model, tokenizer, prompts, args, detector=False)
    v_early, v_full = labels(early, golds, tokenizer), labels(full, golds, tokenizer)

    tok_early = sum(g.n_tokens for g in early)
    tok_full = sum(g.n_tokens for g in full)
    trapped = [i for i, v in enumerate(v_full) if v["trap"]]
    tt_early = sum(early[i].n_tokens for i in trapped)
    tt_full = sum(full[i].n_tokens for i in trapped)
    confusion = Counter((bool(a["trap"]), bool(b["trap"])) for a, b in zip(v_early, v_full))
    agree = confusion[(True, True)] + confusion[(False, False)]
    type_agree = sum(a["trap_type"] == b["trap_type"] for a, b in zip(v_early, v_full))
    em_early = sum(v["correct"] for v in v_early) / len(prompts)
    em_full = sum(v["correct"] for v in v_full) / len(prompts)

    print(f"\nmodel {args.model}, {len(prompts)} prompts from {args.data}, max_new_tokens {args.max_new_tokens}, "
          f"batch {args.batch_size}")
    print(f"{'':28s}{'with detector':>16s}{'full length':>16s}")
    print(f"{'tokens generated':28s}{tok_early:16d}{tok_full:16d}")
    print(f"{'seconds':28s}{t_early:16.1f}{t_full:16.1f}")
    print(f"{'traps':28s}{sum(bool(v['trap']) for v in v_early):16d}{len(trapped):16d}")
    print(f"{'EM':28s}{em_early:16.3f}{em_full:16.3f}")
    print(f"{'stopped by detector':28s}{sum(g.stop_reason == 'criterion' for g in early):16d}{'-':>16s}")
    saved_all = 1 - tok_early / tok_full if tok_full else 0.0
    print(f"tokens saved overall: {tok_full - tok_early} ({saved_all:.1%}); time saved {1 - t_early / t_full:.1%}")
    if trapped:
        print(f"tokens saved on the {len(trapped)} samples trapped in the full run: {tt_full - tt_early} "
              f"({1 - tt_early / tt_full:.1%}; target >= 50 %)")
    else:
        print("no sample is trapped in the full run: tokens saved on trapped samples is undefined "
              "(try a pruned checkpoint, e.g. 35 %)")
    print("trap labels, early-stopped (rows) vs full length (columns):")
    print(f"{'':16s}{'full trap':>12s}{'full no trap':>14s}")
    print(f"{'early trap':16s}{confusion[(True, True)]:12d}{confusion[(True, False)]:14d}")
    print(f"{'early no trap':16s}{confusion[(False, True)]:12d}{confusion[(False, False)]:14d}")
    print(f"label agreement {agree}/{len(prompts)} = {agree / len(prompts):.1%} (target >= 95 %); "
          f"trap type agreement {type_agree}/{len(prompts)} = {type_agree / len(prompts):.1%}")


if __name__ == "__main__":
    main()
