"""Does a cheap target proxy rank pruned models the way the task metric does?

Reads the runs under the given directories (prune.py / evaluate.py outputs with metrics.json), adds the unpruned
model's row from their `original/...` metrics, and prints, per (model, task): every run's task metric beside each
NLL proxy, then Kendall's tau-b between each proxy (lower is better, so it is negated) and the task metric over
those rows, with the number of concordant / discordant / tied pairs. tau = 1: the proxy orders every pair of
models as the task metric does; 0: no better than chance; -1: backwards.

    python benchmarks/proxy_agreement.py ~/prunekit-runs/qwen-code3
"""

import argparse
import itertools
import math
import sys
from pathlib import Path

from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prunekit import report  # noqa: E402
from prunekit.evaluation import benchmarks  # noqa: E402

PROXIES = ("nll", "nll_gold")  # the unpruned model's own correct answers; the dataset's gold solutions


def rows_of(runs: list) -> list[dict]:
    """One row per run (label, task metric, proxies), plus the unpruned model once, from `original/...`."""
    rows, original = [], None
    for run in runs:
        metric = next((m for m in benchmarks.primary_metrics() if m in run.metrics), None)
        if metric is None:
            continue
        bench = metric.split("/")[0]
        label = "original" if run.strategy == "original" else f"{run.strategy} {run.ratio:.2f}"
        rows.append({"label": label, "metric": metric, "task": run.metrics[metric],
                     **{p: run.metrics.get(f"{bench}/{p}") for p in PROXIES}})
        if original is None and f"original/{metric}" in run.metrics:
            original = {"label": "original", "metric": metric, "task": run.metrics[f"original/{metric}"],
                        **{p: run.metrics.get(f"original/{bench}/{p}") for p in PROXIES}}
    if original is not None and not any(r["label"] == "original" for r in rows):
        rows.insert(0, original)
    return rows


def agreement(rows: list[dict], proxy: str) -> tuple[float, int, int, int, int]:
    """(tau-b, n, concordant, discordant, tied pairs) of -proxy against the task metric."""
    have = [r for r in rows if isinstance(r.get(proxy), (int, float))]
    pairs = list(itertools.combinations(have, 2))
    conc = sum((a["task"] - b["task"]) * (b[proxy] - a[proxy]) > 0 for a, b in pairs)
    disc = sum((a["task"] - b["task"]) * (b[proxy] - a[proxy]) < 0 for a, b in pairs)
    tau = kendalltau([-r[proxy] for r in have], [r["task"] for r in have]).statistic if len(have) > 1 else math.nan
    return tau, len(have), conc, disc, len(pairs) - conc - disc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="sweep or run directories")
    args = ap.parse_args()
    for (model, task), runs in report.sections(report.load_runs(args.dirs)).items():
        rows = sorted(rows_of(runs), key=lambda r: -r["task"])
        if not rows:
            continue
        print(f"\n## {model} / {task} ({rows[0]['metric']})\n")
        print("| run | " + rows[0]["metric"] + " | " + " | ".join(f"{p} (lower better)" for p in PROXIES) + " |")
        print("|---|---|" + "---|" * len(PROXIES))
        for r in rows:
            cells = [f"{r[p]:.4f}" if isinstance(r[p], (int, float)) else "-" for p in PROXIES]
            print(f"| {r['label']} | {r['task']:.4f} | " + " | ".join(cells) + " |")
        print()
        for p in PROXIES:
            tau, n, conc, disc, tied = agreement(rows, p)
            print(f"{p}: Kendall tau-b {tau:+.3f} over {n} models ({conc} pairs ordered as the task metric, "
                  f"{disc} reversed, {tied} tied)")


if __name__ == "__main__":
    main()
