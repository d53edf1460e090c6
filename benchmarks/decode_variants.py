"""Candidate speed-ups of the evaluation's greedy decode, side by side in one run, against the plain
decode (transformers' DynamicCache, one generate call per batch).

    python benchmarks/decode_variants.py --model smollm2 --n 32 --max-new-tokens 128
    python benchmarks/decode_variants.py --model /path/to/Qwen2.5-Coder-0.5B-Instruct --variants plain,drop16

Each variant runs the evaluation's own generation path (suite._generate: chat template, loop detector, length-sorted
batches) on the first --n HumanEval prompts (pip:humaneval). Variants run interleaved (A B C A B C ...) so load
changes on a shared machine hit all of them alike; the fastest repeat of each is kept. Every variant's tokens are
compared with the plain decode's, row by row: a speed-up only counts if `identical` is True.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from prunekit import data, models
from prunekit.evaluation import suite
from prunekit.evaluation.benchmarks import humaneval

SMOLLM2 = "pip:smollm2-135m-instruct"


def compiled_decode():
    """transformers' own compiled decode step (a static cache + torch.compile of the forward): generate compiles it
    only on accelerators unless the CompileConfig asks for every device (its `_compile_all_devices` flag, the
    documented way to test it on a CPU). mode="default": "reduce-overhead" means CUDA graphs."""
    from transformers import CompileConfig

    config = CompileConfig(mode="default")
    config._compile_all_devices = True
    return config


# The reference every variant is compared with: transformers' DynamicCache, each batch in one generate call (the
# evaluation's decode before eval.kv_cache and eval.drop_finished_every existed).
PLAIN = {"kv_cache": "dynamic", "drop_finished_every": 0}
# name -> (eval.* overrides on PLAIN, generation_config overrides)
VARIANTS = {
    "plain": ({}, {}),
    "drop16": ({"drop_finished_every": 16}, {}),
    "static": ({}, {"cache_implementation": "static"}),
    "b16": ({"batch_size": 16, "max_batch_tokens": 16384}, {}),
    "b16+drop16": ({"batch_size": 16, "max_batch_tokens": 16384, "drop_finished_every": 16}, {}),
    "b32+drop16": ({"batch_size": 32, "max_batch_tokens": 32768, "drop_finished_every": 16}, {}),
    "compile": ({}, {"cache_implementation": "static", "compile_config": compiled_decode}),  # built when used
    "prealloc": ({"kv_cache": "preallocated"}, {}),
    "prealloc+drop16": ({"kv_cache": "preallocated", "drop_finished_every": 16}, {}),
    "b16+prealloc+drop16": ({"batch_size": 16, "max_batch_tokens": 16384, "kv_cache": "preallocated",
                             "drop_finished_every": 16}, {}),
    # the default's 40 problems as two batches of 20 or in one batch (fewer decode steps at a fixed cost each)
    "b20+prealloc+drop16": ({"batch_size": 20, "max_batch_tokens": 16384, "kv_cache": "preallocated",  # the default
                             "drop_finished_every": 16}, {}),
    "b40+prealloc+drop16": ({"batch_size": 40, "max_batch_tokens": 32768, "kv_cache": "preallocated",
                             "drop_finished_every": 16}, {}),
}


def humaneval_prompts(n: int, instruction: bool = False) -> list[str]:
    """The first n HumanEval prompts through prunekit's data layer, as the code task's eval target reads them;
    ``instruction``: behind the paper's instruction, as the evaluation asks them (humaneval.build_prompt)."""
    spec = {"path": "pip:humaneval", "split": None, "n": n}
    return [humaneval.build_prompt(r) if instruction else r["prompt"] for r in data.load_records(spec, "benchmark")]


def load(which: str, dtype: str):
    source = SMOLLM2 if which == "smollm2" else which
    return models.load(models.resolve(source), os.path.expanduser("~/.cache/prunekit/models"), dtype=dtype)


def run_variant(model, tok, prompts, budget: int, settings: dict, gen_overrides: dict):
    """(seconds, generations) of one variant; the model's generation_config is restored afterwards."""
    saved = {k: getattr(model.generation_config, k, None) for k in gen_overrides}
    for k, v in gen_overrides.items():
        setattr(model.generation_config, k, v() if callable(v) else v)
    try:
        t0 = time.perf_counter()
        gens = suite._generate(model, tok, prompts, settings, budget, stop_on_answer=False, desc="bench")
        return time.perf_counter() - t0, gens
    finally:
        for k, v in saved.items():
            setattr(model.generation_config, k, v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 (the pip default) or a model directory / hub id")
    ap.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16")
    ap.add_argument("--n", type=int, default=32, help="first n HumanEval problems")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="HumanEval's budget is 512")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--instruction", action="store_true",
                    help="prompts as the evaluation asks them (the paper's instruction + the HumanEval prompt); "
                         "default: the bare HumanEval prompts (the earlier measurements)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    names = ["plain"] + [v for v in args.variants.split(",") if v != "plain"]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; allowed: {', '.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load(args.model, args.dtype)
    prompts = humaneval_prompts(args.n, args.instruction)
    base = suite.resolve_settings({})
    runs: dict[str, list] = {v: [] for v in names}
    for _ in range(args.repeats):
        for v in names:  # interleaved
            overrides, gen = VARIANTS[v]
            runs[v].append(run_variant(model, tok, prompts, args.max_new_tokens, {**base, **PLAIN, **overrides}, gen))
            print(f"  {v}: {runs[v][-1][0]:.1f} s", flush=True)
    ref = min(runs["plain"], key=lambda r: r[0])[1]
    base_tps = sum(g.n_tokens for g in ref) / min(r[0] for r in runs["plain"])
    print(f"model={args.model} dtype={model.dtype} device={model.device} threads={torch.get_num_threads()} "
          f"HumanEval n={len(prompts)} instruction={args.instruction} max_new_tokens={args.max_new_tokens} "
          f"repeats={args.repeats} (fastest kept); "
          f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'variant':<14}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'vs plain':>12}  identical")
    for v in names:
        s, gens = min(runs[v], key=lambda r: r[0])
        same = all(a.token_ids == b.token_ids and a.stop_reason == b.stop_reason for a, b in zip(ref, gens))
        tokens = sum(g.n_tokens for g in gens)
        print(f"{v:<14}{tokens:>8}{s:>10.1f}{tokens / s:>10.2f}{tokens / s / base_tps:>11.2f}x  {same}")


if __name__ == "__main__":
    main()
