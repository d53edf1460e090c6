"""Pruned-model speed (paper Table 5): batch-1 greedy tokens/s of the unpruned model and of physically pruned copies.

Each ratio removes `surgery.check_ratio` neurons (128-aligned) from every MLP layer, picked at random (which
neurons go does not change the speed), via `surgery.prune_mlp`. Timing reuses `resources.throughput` (the
evaluation's own Table 5 metric, chat template, greedy) on the same GSM8K-style prompts for every model.
Repeats are interleaved (each repeat times every model in turn) so background load hits all models alike;
the median of the repeats is reported. The ideal speed-up is params_before / params_after (decode reads every
weight once per token, tied LM head included); only the MLP share of the parameters shrinks, which caps it.
Models may stop at EOS after different lengths; tokens/s normalises for that (longer runs pay a bit more attention).

    .venv/bin/python benchmarks/pruned_speed.py                      # offline default: SmolLM2-135M (pip)
    .venv/bin/python benchmarks/pruned_speed.py --ratios 0.5 --dtype bfloat16 --threads 2 --repeats 5
    .venv/bin/python benchmarks/pruned_speed.py --model pip:qwen2.5-coder-0.5b-instruct --json   # + a JSON line

Peak memory (`--memory`, on by default) is measured per variant in fresh processes of this script: one prunes and
saves the pruned checkpoint (`--save-pruned RATIO --to DIR`; ratio 0: the unpruned model, in the same dtype), the
next (`--peak-of RATIO --from DIR`) loads only that checkpoint, generates the same prompts once and reads the peak
RSS (Linux VmHWM; CUDA: torch's peak allocation):
what a user of the pruned model pays. A shared process could not tell the variants' peaks apart, and one that
pruned in memory would report the unpruned model's load.
"""

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile

import torch

from prunekit import data, models, strategies, surgery
from prunekit.evaluation.resources import count_parameters, peak_memory_gb, throughput
from prunekit.mlp import mlp_layers


def pruned_copy(model, ratio: float, seed: int):
    """A deep copy of ``model`` with ``ratio`` of every layer's MLP neurons physically removed (random, seeded)."""
    pruned = copy.deepcopy(model)
    layers = mlp_layers(pruned)
    d_ff = layers[0].d_ff
    strategies.get({"name": "random", "seed": seed}).plan(
        strategies.Scores(), n_prune=surgery.check_ratio(d_ff, ratio), d_ff=d_ff, layers=len(layers), seed=seed
    ).apply(pruned)
    return pruned


def mlp_parameters(model) -> int:
    return sum(p.numel() for mlp in mlp_layers(model) for p in mlp.module.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:smollm2-135m-instruct")
    ap.add_argument("--ratios", default="0.1,0.25,0.5", help="comma-separated pruning ratios")
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--prompts", type=int, default=4, help="first N GSM-symbolic questions (seed 42)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    ap.add_argument("--seed", type=int, default=42, help="seed of the random neuron choice")
    ap.add_argument("--cache-dir", default="~/.cache/prunekit/models")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the rows (benchmarks/paper_tables.py)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the per-variant peak-memory runs")
    # internal (peak_of): save one pruned variant; load a checkpoint alone and read its peak
    ap.add_argument("--save-pruned", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--to", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--peak-of", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--from", dest="from_dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base, tok = models.load(models.resolve(args.from_dir or args.model), args.cache_dir, dtype=args.dtype)
    if args.save_pruned is not None:
        # ratio 0 saves the unpruned model the same way: every row then loads a checkpoint in the same dtype (the
        # cached source conversion is fp32 on disk, and loading it peaked at 4.0 GB against 1.5 GB for bf16 5 %)
        (pruned_copy(base, args.save_pruned, args.seed) if args.save_pruned else base).save_pretrained(args.to)
        tok.save_pretrained(args.to)
        return
    prompts = data.load_prompts({"path": "pip:gsm_symbolic", "seed": 42, "field": "question", "n": args.prompts},
                                "bench")
    if args.peak_of is not None:  # `base` is the saved checkpoint (--from): pruned, or at ratio 0 the unpruned one
        throughput(base, tok, prompts, max_new_tokens=args.new_tokens, warmup=0, chat_template=True, progress=False)
        print(json.dumps({"peak_gb": peak_memory_gb(next(base.parameters()).device)}))
        return
    d_ff = mlp_layers(base)[0].d_ff
    ratios = [float(r) for r in args.ratios.split(",")]
    variants = {0.0: base} | {r: pruned_copy(base, r, args.seed) for r in ratios}
    params = {r: count_parameters(m) for r, m in variants.items()}

    tps = {r: [] for r in variants}
    decode = {r: [] for r in variants}
    for rep in range(args.repeats):  # interleaved: every model is timed in each repeat
        for r, m in variants.items():
            out = throughput(m, tok, prompts, max_new_tokens=args.new_tokens, warmup=1 if rep == 0 else 0,
                             chat_template=True, progress=False)
            tps[r].append(out["resources/tokens_per_s"])
            decode[r].append(out["resources/decode_tokens_per_s"])
            print(f"  repeat {rep + 1}/{args.repeats} ratio {r:.2f}: {tps[r][-1]:.1f} tok/s "
                  f"({out['resources/new_tokens']} new tokens)", flush=True)

    med = {r: statistics.median(v) for r, v in tps.items()}
    mlp_share = mlp_parameters(base) / params[0.0]
    print(f"model={args.model} dtype={args.dtype} d_ff={d_ff} prompts={len(prompts)} new_tokens={args.new_tokens} "
          f"threads={torch.get_num_threads()} median of {args.repeats} interleaved repeats")
    print(f"MLP share of parameters: {mlp_share:.1%} (pruning ratio r removes at most r x this share)")
    print(f"{'ratio':>6}{'real':>8}{'params':>13}{'tok/s':>9}{'decode':>9}{'speed-up':>10}{'ideal':>8}"
          f"{'achieved/ideal':>16}")
    del variants, base
    peaks = {r: peak_of(args, r) if args.memory else None for r in tps}
    rows = []
    for r in tps:
        real = surgery.check_ratio(d_ff, r) / d_ff if r else 0.0
        speedup, ideal = med[r] / med[0.0], params[0.0] / params[r]
        rows.append({"ratio": r, "real": real, "params": params[r], "peak_rss_gb": peaks[r], "tokens_per_s": med[r],
                     "decode_tokens_per_s": statistics.median(decode[r]), "speedup": speedup, "ideal": ideal})
        peak = f"{peaks[r]:.2f}" if peaks[r] is not None else "-"
        print(f"{r:>6.2f}{real:>8.3f}{params[r]:>13,}{med[r]:>9.1f}{statistics.median(decode[r]):>9.1f}"
              f"{speedup:>9.2f}x{ideal:>7.2f}x{speedup / ideal:>16.2f}{peak:>10} GB peak")
    if args.json:
        print(json.dumps(rows))


def peak_of(args, ratio: float) -> float:
    """One variant's peak memory: its saved checkpoint loaded alone in a fresh process (see the module docstring)."""
    cmd = [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype, "--prompts", str(args.prompts),
           "--new-tokens", str(args.new_tokens), "--seed", str(args.seed), "--cache-dir", args.cache_dir,
           *(["--threads", str(args.threads)] if args.threads else [])]
    with tempfile.TemporaryDirectory(prefix="pruned-speed-") as saved:
        subprocess.run([*cmd, "--save-pruned", str(ratio), "--to", saved], check=True, stdout=subprocess.DEVNULL)
        done = subprocess.run([*cmd, "--peak-of", str(ratio), "--from", saved],
                              stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_gb"]


if __name__ == "__main__":
    main()
