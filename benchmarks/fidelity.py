"""The paper's comparison, offline, in one command: does pruning keep the target task?

For each data mix, prunes SmolLM2-135M (the earlier default) with every strategy at each ratio and evaluates the
result against the unpruned model: target NLL of the unpruned model's own answers (`<task>/nll`, the validated
proxy), the older gold-solution NLL (`<task>/nll_gold`), trap rate and distractor similarity. One activation
capture per mix (the cache is shared by its jobs); every job resumes (finished jobs are skipped on a re-run).

    python benchmarks/fidelity.py                        # both mixes, 7 strategies x ratios 0.05, 0.1 (~45 min)
    python benchmarks/fidelity.py --mixes default --ratios 0.05 --strategies selective,random_s42
    python benchmarks/fidelity.py --strategies random_s1,random_s2,random_s3     # more random draws (any seed)

Mixes: `default` = the earlier offline default task (math_offline, pip-shipped data); `paper` = the paper's mix from
local files (task=math_local: GSM8K train questions vs SQuAD context+question and everyday conversations,
`../shared/data` or $PRUNEKIT_DATA). Prints one table per mix and writes the report (tables + figures) into
<out>/<mix>/report.
"""

import argparse
import json
import logging
import re
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir

from prunekit import recipes, report

REPO = Path(__file__).resolve().parents[1]
# The paper mix's presets evaluate similarity on 200 + 200 distractor prompts; 8 + 8 here, as the default mix.
MIXES = {"default": ["model=smollm2-135m", "task=math_offline"],
         "paper": ["model=smollm2-135m", "task=math_local", "task.eval.distractors.squad.n=8",
                   "task.eval.distractors.conversations.n=8"]}
STRATEGIES = "selective,random_s42,random_s33,reverse,wanda_sp,flap,contrastive"


def strategy_overrides(strategy: str) -> list[str]:
    """`random_s<N>` is `random` with seed N (any N, so the random spread can be measured with more draws than the
    paper's two seeds); every other name is a conf/strategy option."""
    seeded = re.fullmatch(r"random_s(\d+)", strategy)
    return ["strategy=random", f"strategy.seed={seeded[1]}"] if seeded else [f"strategy={strategy}"]


def job_config(mix: str, strategy: str, ratio: float, extra: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("prune", overrides=[*MIXES[mix], *strategy_overrides(strategy), f"ratio={ratio}",
                                            "wandb.mode=disabled", *extra])


def cell(metrics: dict, key: str, digits: int = 3) -> str:
    v = report.number(metrics.get(key))
    return "-" if v is None else f"{v:.{digits}f}"


def table(mix: str, results: dict, metric: str) -> str:
    """Rows: original, then strategy x ratio; columns: the proxies, traps and distractor similarity."""
    keys = [(f"{metric}/nll", "NLL own"), (f"{metric}/nll_gold", "NLL gold"), (f"{metric}/trap_rate", "traps"),
            ("distractor/sss", "distractor sim")]
    head = f"{'strategy':14} {'ratio':>6} {'real':>6} " + " ".join(f"{label:>14}" for _, label in keys)
    lines = [f"mix: {mix}", head, "-" * len(head)]
    first = next(iter(results.values()))
    orig = {k[len("original/"):]: v for k, v in first.items() if k.startswith("original/")}
    orig["distractor/sss"] = 1.0
    lines.append(f"{'original':14} {0:>6.2f} {0:>6.3f} " + " ".join(f"{cell(orig, k):>14}" for k, _ in keys))
    for (strategy, ratio), m in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"{strategy:14} {ratio:>6.2f} {m.get('prune/real_ratio', 0):>6.3f} "
                     + " ".join(f"{cell(m, k):>14}" for k, _ in keys))
    for ratio in sorted({r for _, r in results}):
        draws = [m for (s, r), m in results.items() if r == ratio and s.startswith("random-s")]
        if len(draws) > 1:  # the random baseline is a distribution: its mean and range over the seeds run
            lines.append(f"{f'random x{len(draws)}':14} {ratio:>6.2f} {'mean':>6} "
                         + " ".join(f"{spread([d.get(k) for d in draws]):>14}" for k, _ in keys))
    return "\n".join(lines)


def spread(values: list) -> str:
    """'mean [min-max]' over the finite values (the random seeds), '-' when none is."""
    vals = [v for v in map(report.number, values) if v is not None]
    return f"{statistics.fmean(vals):.2f} [{min(vals):.2f}-{max(vals):.2f}]" if vals else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixes", default="default,paper")
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--ratios", default="0.05,0.1")
    ap.add_argument("--out", default="multirun/fidelity")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job, e.g. eval.n=32")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # 32 evaluation prompts with 256 new tokens on both mixes (the paper mix's GSM8K preset would allow 1024).
    extra = ["eval.parts=[traps,similarity,nll]", "eval.nll.gold=true", "eval.n=32", "task.eval.max_new_tokens=256",
             *args.overrides]
    for mix in args.mixes.split(","):
        results = {}
        for ratio in map(float, args.ratios.split(",")):
            for strategy in args.strategies.split(","):
                run_dir = Path(args.out) / mix / f"{strategy}_r{ratio:g}"
                cfg = job_config(mix, strategy, ratio, extra)
                label = strategy.replace("random_s", "random-s")
                results[(label, ratio)] = recipes.prune(cfg, run_dir, sweep_dir=Path(args.out) / mix)
        metric = "humaneval" if any("humaneval/nll" in m for m in results.values()) else "gsm8k"
        text = table(mix, results, metric)
        print("\n" + text, flush=True)
        (Path(args.out) / mix / "fidelity.txt").write_text(text + "\n")
        (Path(args.out) / mix / "fidelity.json").write_text(json.dumps(
            {f"{s}@{r}": m for (s, r), m in results.items()}, indent=1, default=str))
        report.build_report([Path(args.out) / mix])


if __name__ == "__main__":
    main()
