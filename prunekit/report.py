"""The paper's tables and figures rebuilt from local run records (never from W&B).

Usage: ``python -m prunekit.report <sweep dirs...> [--out DIR] [--paper] [--wandb]``. Each run directory holds
``metrics.json`` (+ ``pruning.json``, ``config.yaml``, ``training.json``); runs of different model/task are
reported in separate sections. Accuracy-like metrics are stored as fractions and shown in percent.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from prunekit import tracking
from prunekit.checkpoint import atomic_write_text, pruning_record_of
from prunekit.data import get_path
from prunekit.errors import PrunekitError
from prunekit.evaluation import benchmarks

log = logging.getLogger(__name__)

# Task metric (fraction) per registered benchmark, e.g. gsm8k/em; its trap rate is ``<benchmark>/trap_rate``.
PRIMARY_METRICS = tuple(benchmarks.primary_metrics())
SKIP_PARTS = {"wandb", "model", "checkpoints", ".hydra", "report"}
NA = "n/a"


class ReportError(PrunekitError):
    """Bad report input (no runs found, unreadable records)."""


# ------------------------------------------------------------------------------------ the paper's numbers
# From ../shared/PAPER-NOTES.md (method 1, arXiv 2604.27115): Tables 2-5, selective pruning, percent.
PAPER_RATIOS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35)
PAPER_TABLE2 = {18944: (5.41, 10.14, 15.54, 20.27, 25.00, 30.41, 35.14),
                8960: (5.71, 10.00, 15.71, 20.00, 25.71, 30.00, 35.71)}
# column -> {ratio: (metric %, trap %)}; ratio 0 is the original model
PAPER_TABLE3 = {
    "Qwen-7B Math": [(94.47, 0.45), (93.25, 0.68), (92.19, 2.43), (89.16, 16.91), (85.67, 27.52), (82.87, 45.72),
                     (68.69, 99.7), (57.85, 99.55)],
    "Qwen-1.5B Math": [(84.0, 0.91), (82.49, 1.21), (82.11, 1.44), (76.5, 4.4), (68.92, 5.61), (63.0, 10.61),
                       (47.38, 28.05), (22.37, 58.53)],
    "Qwen-7B Code": [(85.37, 0.0), (81.71, 0.0), (79.27, 2.0), (74.39, 1.5), (65.85, 6.0), (59.76, 7.5),
                     (51.22, 11.5), (43.29, 13.0)],
    "Qwen-1.5B Code": [(62.80, 0.0), (47.56, 0.0), (45.12, 2.5), (38.41, 7.5), (32.93, 18.0), (21.95, 52.5),
                       (19.51, 54.0), (6.71, 92.0)],
}
PAPER_TABLE4 = {
    "Qwen-7B Math": [(93.1, 0.83), (92.57, 2.5), (90.3, 10.39), (88.25, 5.38), (86.05, 5.91), (80.59, 22.82),
                     (73.84, 18.12)],
    "Qwen-1.5B Math": [(82.64, 1.14), (82.18, 1.21), (78.7, 1.14), (74.37, 2.27), (69.52, 3.49), (63.46, 4.17),
                       (51.25, 10.54)],
    "Qwen-7B Code": [(82.93, 0.0), (82.32, 0.5), (82.93, 0.0), (78.05, 0.0), (78.05, 0.0), (71.95, 0.5),
                     (68.29, 0.0)],
    "Qwen-1.5B Code": [(48.78, 0.0), (50.61, 0.5), (51.22, 0.5), (44.51, 0.5), (43.29, 0.5), (32.32, 1.0),
                       (31.10, 1.5)],
}
PAPER_TABLE5 = {  # size -> (VRAM GB, tokens/s) for ratios 0, 0.05 ... 0.35
    "7B": ((14.26, 13.65, 13.15, 12.64, 12.16, 11.69, 11.06, 10.56), (35.83, 37.52, 38.50, 39.27, 39.94, 40.34,
                                                                      40.92, 42.70)),
    "1.5B": ((2.90, 2.78, 2.71, 2.56, 2.55, 2.39, 2.26, 2.14), (46.21, 46.50, 47.31, 48.15, 48.81, 49.01, 49.39,
                                                               50.07)),
}
PAPER_SIZES = {18944: "7B", 8960: "1.5B"}


def paper_column(d_ff: int | None, metric: str | None) -> str | None:
    """The paper's table column for this model width and benchmark, or None when the paper has none."""
    size = PAPER_SIZES.get(d_ff)
    bench = benchmarks.get(metric.split("/")[0]) if metric else None
    domain = bench.domain if bench is not None and bench.in_paper else None
    return f"Qwen-{size} {domain}" if size and domain else None


def paper_value(table: dict, column: str | None, ratio: float, with_original: bool):
    if column is None or column not in table:
        return None
    ratios = ((0.0,) if with_original else ()) + PAPER_RATIOS
    for r, v in zip(ratios, table[column]):
        if math.isclose(r, ratio, abs_tol=1e-6):
            return v
    return None


# -------------------------------------------------------------------------------------------- records
@dataclass
class Run:
    """One run directory's records, with what the report groups by."""
    path: Path
    metrics: dict
    config: dict
    pruning: dict | None
    kind: str                       # prune | evaluate | train
    model: str                      # source model (hub id / path / pip name)
    task: str
    strategy: str                   # selective | reverse | random-s<seed> | original | ...
    ratio: float
    d_ff: int | None = None
    extra: dict = field(default_factory=dict)


def _read_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc


def _read_config(run_dir: Path) -> dict:
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            with open(path) as f:
                data = yaml.safe_load(f)
            return data if isinstance(data, dict) else {}
    return {}


def _complete(run_dir: Path) -> bool:
    """A finished job: a completion marker (written after every result file) says so; a dir whose job was redone
    and failed keeps no metrics.json of the earlier attempt, and an unfinished one has no marker. Its checkpoint
    may since have been deleted to free disk: the results are still complete."""
    return any(tracking.is_complete(run_dir, marker.stem.split("-", 1)[1], checkpoint=False)
               for marker in run_dir.glob("complete-*.json")
               if marker.stem.split("-", 1)[1] in tracking.JOB_TYPES)


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every directory under ``sweep_dir`` holding a complete job's ``metrics.json`` (not inside model/, wandb/)."""
    found = []
    for path in sorted(Path(sweep_dir).rglob("metrics.json")):
        rel = path.relative_to(sweep_dir).parts[:-1]
        if any(p in SKIP_PARTS or p.startswith(".") for p in rel):
            continue
        if not _complete(path.parent):
            damaged = tracking.marked_complete_but_damaged(path.parent)
            if damaged:  # a finished job's record was damaged since (truncated, deleted): the user must know
                log.warning("report: %s left out: its job completed, but %s is missing or unreadable",
                            path.parent, ", ".join(damaged))
            else:
                log.info("report: %s skipped (its job did not complete)", path.parent)
            continue
        found.append(path.parent)
    return found


def _pruning_record(run_dir: Path, config: dict) -> dict | None:
    """``pruning.json`` of the run, or of the pruned model it evaluated/trained (``<prune run>/model``)."""
    if (run_dir / "pruning.json").is_file():
        return _read_json(run_dir / "pruning.json")
    return pruning_record_of(get_path(config, "model.name_or_path"))


def _task_of(config: dict, metrics: dict) -> str:
    name = get_path(config, "task.name")
    if name:
        return str(name)
    for metric in PRIMARY_METRICS:
        if metric in metrics:
            return metric.split("/")[0]
    return "unknown-task"


def load_run(run_dir: Path) -> Run:
    metrics = _read_json(run_dir / "metrics.json")
    if not isinstance(metrics, dict):
        raise ReportError(f"{run_dir / 'metrics.json'} is not a JSON object of metrics")
    config = _read_config(run_dir)
    pruning = _pruning_record(run_dir, config)
    trained = (run_dir / "training.json").is_file() or any(k.startswith("train/") for k in metrics)
    kind = "train" if trained else ("prune" if (run_dir / "pruning.json").is_file() else "evaluate")
    if pruning is not None:
        model = str(pruning.get("source_model"))
        strategy = str(pruning.get("strategy"))
        if strategy == "random":
            strategy = f"random-s{pruning.get('seed')}"
        ratio, d_ff = float(pruning.get("ratio", metrics.get("prune/ratio", math.nan))), pruning.get("d_ff")
        extra = {"real_ratio": pruning.get("real_ratio", metrics.get("prune/real_ratio")),
                 "kept_width": pruning.get("kept_width"), "selectivity": pruning.get("selectivity_summary")}
    else:  # an evaluation of the unpruned model: the baseline (ratio 0)
        model = str(get_path(config, "model.name_or_path", "unknown-model"))
        strategy, ratio, d_ff, extra = "original", 0.0, metrics.get("model/d_ff"), {}
    return Run(run_dir, metrics, config, pruning, kind, model, _task_of(config, metrics), strategy, round(ratio, 4),
               d_ff, extra)


def load_runs(sweep_dirs: list[str | os.PathLike]) -> list[Run]:
    """All runs under the given sweep directories; a directory with none is an error."""
    runs = []
    for sweep in map(Path, sweep_dirs):
        if not sweep.is_dir():
            raise ReportError(f"sweep directory {sweep} does not exist")
        dirs = find_run_dirs(sweep)
        if not dirs:
            raise ReportError(f"no runs in {sweep}: expected run directories with a metrics.json "
                              "(written by prune.py / evaluate.py / train.py)")
        for d in dirs:
            try:
                runs.append(load_run(d))
            except ReportError as exc:  # one damaged record must not cost the whole report
                log.warning("report: %s left out: %s", d, exc)
    return runs


def sections(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by (source model, task): numbers of different models/tasks are never mixed."""
    out: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        out.setdefault((run.model, run.task), []).append(run)
    return out


# ------------------------------------------------------------------------------------- numbers (tables)
def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def primary_metric(runs: list[Run]) -> str | None:
    for metric in PRIMARY_METRICS:
        if any(metric in r.metrics for r in runs):
            return metric
    return None


def _latest(runs: list[Run]) -> list[Run]:
    """One run per (kind, ratio, strategy): the most recently written one (a redone job replaces the old)."""
    best: dict[tuple, Run] = {}
    for run in sorted(runs, key=lambda r: (r.path / "metrics.json").stat().st_mtime_ns):
        best[(run.kind == "train", run.ratio, run.strategy)] = run
    return list(best.values())


def _pivot(runs: list[Run], key: str, scale: float = 1.0) -> pd.DataFrame:
    rows = [{"ratio": r.ratio, "strategy": r.strategy, "value": _num(r.metrics.get(key))} for r in runs]
    rows = [row for row in rows if row["value"] is not None]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).pivot_table(index="ratio", columns="strategy", values="value", aggfunc="last")
    return df[_strategy_order(df.columns)].sort_index() * scale


def _strategy_order(columns) -> list[str]:
    order = {"original": 0, "selective": 1, "reverse": 2}
    return sorted(columns, key=lambda c: (order.get(c, 3), c))


def section_tables(runs: list[Run]) -> dict[str, pd.DataFrame | pd.Series | str | None]:
    """Every table of the report for one (model, task) section, as numbers (percent where the paper uses %)."""
    runs = _latest(runs)
    metric = primary_metric(runs)
    trap = metric.split("/")[0] + "/trap_rate" if metric else None
    pruned = [r for r in runs if r.kind != "train"]
    trained = [r for r in runs if r.kind == "train"]
    d_ff = next((r.d_ff for r in runs if r.d_ff), None)
    t = {"metric": metric, "d_ff": d_ff}

    rows = {}
    for r in pruned:
        if r.pruning is not None:
            rows.setdefault(r.ratio, {"requested %": 100 * r.ratio, "real %": 100 * float(r.extra["real_ratio"]),
                                      "d_ff": r.d_ff, "kept width": r.extra.get("kept_width")})
    t["table2"] = pd.DataFrame.from_dict(rows, orient="index").sort_index() if rows else pd.DataFrame()

    t["accuracy"] = _pivot(pruned, metric, 100) if metric else pd.DataFrame()
    t["trap"] = _pivot(pruned, trap, 100) if trap else pd.DataFrame()
    base = t["accuracy"]["original"].get(0.0) if "original" in t["accuracy"] else None
    t["baseline"] = base

    acc = t["accuracy"].drop(columns=["original"], errors="ignore").dropna(how="all")
    t["relative_loss"] = (base - acc) / base * 100 if base else pd.DataFrame()          # eq. 3

    t["finetuned"] = _pivot(trained, metric, 100) if metric else pd.DataFrame()
    t["finetuned_trap"] = _pivot(trained, trap, 100) if trap else pd.DataFrame()
    before = acc.reindex(index=t["finetuned"].index, columns=t["finetuned"].columns) if not t["finetuned"].empty \
        else pd.DataFrame()
    t["relative_gain"] = (t["finetuned"] - before) / before * 100 if not before.empty else pd.DataFrame()  # eq. 4

    randoms = [c for c in acc.columns if c.startswith("random")]
    if "selective" in acc and randoms:                                                    # eq. 5
        t["delta"] = pd.DataFrame({"selective": acc["selective"], "random mean": acc[randoms].mean(axis=1),
                                   "random seeds": acc[randoms].notna().sum(axis=1)})
        t["delta"]["ΔA"] = t["delta"]["selective"] - t["delta"]["random mean"]
    else:
        t["delta"] = pd.DataFrame()

    res = [{"ratio": r.ratio, "peak mem GB": _num(r.metrics.get("resources/peak_mem_gb")),
            "tokens/s": _num(r.metrics.get("resources/tokens_per_s")),
            "params": _num(r.metrics.get("resources/params"))} for r in pruned]
    res_df = pd.DataFrame(res)
    t["table5"] = res_df.groupby("ratio").mean().sort_index().dropna(how="all") if not res_df.empty \
        else pd.DataFrame()
    t["sss"] = _pivot(pruned, "distractor/sss")

    with_summary = sorted((r for r in runs if r.extra.get("selectivity")), key=lambda r: r.strategy != "selective")
    if with_summary:
        layers = pd.DataFrame(with_summary[0].extra["selectivity"]).set_index("layer")
        t["layers"] = layers[["target_dominant", "distractor_dominant"]]
    else:
        t["layers"] = pd.DataFrame()
    return t


# --------------------------------------------------------------------------------------------- render
def fmt(v, digits: int = 2) -> str:
    v = _num(v) if not isinstance(v, str) else v
    return NA if v is None else (v if isinstance(v, str) else f"{v:.{digits}f}")


def _ratio_label(r: float) -> str:
    return "original" if r == 0 else f"{100 * r:g} %"


def _markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(disable_numparse=True) if not df.empty else NA  # keep our number formatting


def _cell_table(values: pd.DataFrame, traps: pd.DataFrame, paper: dict | None = None) -> pd.DataFrame:
    """``metric (trap)`` cells per ratio x strategy, plus a paper column when asked."""
    index = sorted(set(values.index) | set(traps.index))
    columns = [c for c in _strategy_order(set(values.columns) | set(traps.columns)) if c != "original"] or ["original"]
    out = pd.DataFrame(index=[_ratio_label(r) for r in index], columns=columns, dtype=object)
    for r, label in zip(index, out.index):
        for c in columns:
            src = "original" if r == 0 else c  # every strategy starts from the same original model
            v = values[src].get(r) if src in values else None
            tr = traps[src].get(r) if src in traps else None
            out.loc[label, c] = NA if _num(v) is None and _num(tr) is None else f"{fmt(v)} ({fmt(tr)})"
        if paper is not None:
            pv = paper.get(r)
            out.loc[label, "paper (selective)"] = f"{pv[0]} ({pv[1]})" if pv else NA
    out.index.name = "pruning"
    return out


INT_COLUMNS = {"d_ff", "kept width", "params", "random seeds", "target_dominant", "distractor_dominant"}


def _fmt_df(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    if df.empty:
        return df
    out = pd.DataFrame({c: df[c].map(lambda v, d=(0 if c in INT_COLUMNS else digits): fmt(v, d)) for c in df.columns},
                       index=df.index)
    if not out.empty:
        out.index = [_ratio_label(r) if isinstance(r, float) else r for r in out.index]
        out.index.name = "pruning" if all(isinstance(r, float) for r in df.index) else df.index.name
    return out


def _figure(path: Path, title: str, xlabel: str, ylabel: str, draw) -> Path:
    import matplotlib  # only figures need it (evaluate.py best_of=... reads the records without plotting)

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _lines(df: pd.DataFrame, columns=None):
    def draw(ax):
        for c in _strategy_order(columns or df.columns):
            s = df[c].dropna()
            ax.plot(100 * s.index.to_numpy(), s.to_numpy(), marker="o", label=c)
    return draw


def figures(t: dict, out: Path, prefix: str) -> dict[str, Path]:
    """The paper's figures 1-6 for one section (a figure whose numbers are n/a is skipped)."""
    figs = {}
    if not t["relative_loss"].empty:
        figs["fig1"] = _figure(out / f"{prefix}fig1_relative_loss.png", "Relative accuracy loss (eq. 3)",
                               "pruning ratio %", "loss %", _lines(t["relative_loss"]))
    if not t["relative_gain"].empty and t["relative_gain"].notna().any().any():
        figs["fig2"] = _figure(out / f"{prefix}fig2_relative_gain.png", "Relative gain after fine-tuning (eq. 4)",
                               "pruning ratio %", "gain %", _lines(t["relative_gain"]))
    if not t["delta"].empty and t["delta"]["ΔA"].notna().any():
        d = t["delta"]["ΔA"].dropna()
        figs["fig3"] = _figure(out / f"{prefix}fig3_delta_selective_random.png",
                               "ΔA = selective − random (eq. 5)", "pruning ratio %", "ΔA (points)",
                               lambda ax: ax.bar(100 * d.index.to_numpy(), d.to_numpy(), width=2.5))
    acc = t["accuracy"]
    curves = [c for c in ("selective", "reverse") if c in acc]
    if curves:
        def draw4(ax):
            for c in curves:
                s = acc[c].copy()
                if t["baseline"] is not None:
                    s.loc[0.0] = t["baseline"]
                s = s.dropna().sort_index()
                ax.plot(100 * s.index.to_numpy(), s.to_numpy(), marker="o", label=c)
        figs["fig4"] = _figure(out / f"{prefix}fig4_selective_vs_reverse.png", "Selective vs reverse pruning",
                               "pruning ratio %", f"{t['metric']} %", draw4)
    if not t["sss"].empty:
        figs["fig5"] = _figure(out / f"{prefix}fig5_distractor_similarity.png", "Distractor similarity (eq. 6)",
                               "pruning ratio %", "similarity", _lines(t["sss"]))
    if not t["layers"].empty:
        layers = t["layers"]

        def draw6(ax):
            x = layers.index.to_numpy()
            ax.bar(x - 0.2, layers["target_dominant"].to_numpy(), width=0.4, label="target-dominant (S>0)")
            ax.bar(x + 0.2, layers["distractor_dominant"].to_numpy(), width=0.4, label="distractor-dominant (S<0)")
        figs["fig6"] = _figure(out / f"{prefix}fig6_layer_distribution.png", "Layer-wise neuron distribution",
                               "layer", "neurons", draw6)
    return figs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def grid_metric(runs: list[Run]) -> str | None:
    """The metric a detrimental grid is judged by: the task metric, else the first lm-eval accuracy."""
    metric = primary_metric(runs)
    if metric:
        return metric
    keys = sorted({k for r in runs for k in r.metrics if k.startswith("lmeval/") and k.endswith("/acc")})
    return keys[0] if keys else None


def detrimental_grid(runs: list[Run]) -> tuple[pd.DataFrame, dict | None, str | None]:
    """Method 2's grid search: metric per (layer, percent) of the ``detrimental`` runs, and the best setting
    (``attribution.select_best``: ties go to the smaller percent, then the lower layer)."""
    from prunekit.attribution import select_best

    grid = [r for r in runs if r.pruning and r.pruning.get("strategy") == "detrimental"]
    metric = grid_metric(grid)
    rows = [{"layer": r.pruning["layer"], "percent": r.pruning["percent"], metric: _num(r.metrics.get(metric)),
             "run": str(r.path)} for r in grid if metric and _num(r.metrics.get(metric)) is not None]
    if not rows:
        return pd.DataFrame(), None, metric
    table = pd.DataFrame(rows).pivot_table(index="layer", columns="percent", values=metric, aggfunc="last")
    return table, select_best(rows, metric), metric


def render_section(key: tuple[str, str], runs: list[Run], out: Path, paper: bool, prefix: str) -> tuple[str, dict, dict]:
    """Markdown for one (model, task) section, its figure files and its tables (numbers)."""
    t = section_tables(runs)
    metric, col = t["metric"], paper_column(t["d_ff"], t["metric"])
    figs = figures(t, out, prefix)
    kinds = ", ".join(f"{k}: {sum(r.kind == k for r in runs)}" for k in ("prune", "evaluate", "train"))
    md = [f"## {key[0]} / task {key[1]}", "", f"{len(runs)} runs ({kinds}); task metric: {metric or NA}; "
          f"d_ff: {t['d_ff'] or NA}" + (f"; paper column: {col}" if paper else ""), ""]
    if paper and col is None:
        md += [f"(the paper has no numbers for this model/benchmark: d_ff {t['d_ff']}, {metric})", ""]

    t2 = t["table2"].copy()
    if paper and not t2.empty:
        ref = dict(zip(PAPER_RATIOS, PAPER_TABLE2.get(t["d_ff"], ())))
        t2["paper real %"] = [ref.get(r) for r in t2.index]
    md += ["### Table 2: requested vs real pruning ratio", "", _markdown(_fmt_df(t2)), ""]

    p3 = {r: paper_value(PAPER_TABLE3, col, r, True) for r in set(t["accuracy"].index) | {0.0}} if paper else None
    md += [f"### Table 3: {metric or 'task metric'} % (trap %) per ratio and strategy", "",
           _markdown(_cell_table(t["accuracy"], t["trap"], p3)) if metric else NA, ""]
    if not t["finetuned"].empty:
        p4 = {r: paper_value(PAPER_TABLE4, col, r, False) for r in t["finetuned"].index} if paper else None
        md += ["### Table 4: after LoRA fine-tuning, % (trap %)", "",
               _markdown(_cell_table(t["finetuned"], t["finetuned_trap"], p4)), ""]
    else:
        md += ["### Table 4: after LoRA fine-tuning", "", f"{NA}: no fine-tuning runs (train/*, training.json)", ""]

    t5 = t["table5"].copy()
    if paper and not t5.empty and PAPER_SIZES.get(t["d_ff"]):
        vram, tps = PAPER_TABLE5[PAPER_SIZES[t["d_ff"]]]
        ratios = (0.0,) + PAPER_RATIOS
        t5["paper VRAM GB"] = [dict(zip(ratios, vram)).get(r) for r in t5.index]
        t5["paper tokens/s"] = [dict(zip(ratios, tps)).get(r) for r in t5.index]
    md += ["### Table 5: resources per ratio (batch size 1)", "", _markdown(_fmt_df(t5)), ""]

    sections_md = [
        ("Relative accuracy loss % (eq. 3, Fig. 1)", t["relative_loss"], "fig1",
         f"{NA}: needs an evaluation of the original model (ratio 0) in the sweep"),
        ("Relative gain after fine-tuning % (eq. 4, Fig. 2)", t["relative_gain"], "fig2",
         f"{NA}: needs fine-tuned runs and the same ratio/strategy before fine-tuning"),
        ("ΔA selective − random, points (eq. 5, Fig. 3)", t["delta"], "fig3",
         f"{NA}: needs selective and random runs with the task metric"),
        ("Selective vs reverse (Fig. 4)", pd.DataFrame(), "fig4", f"{NA}: needs selective or reverse runs"),
        ("Distractor similarity per strategy (Fig. 5)", t["sss"], "fig5", f"{NA}: no distractor/sss metric"),
        ("Layer-wise neuron distribution (Fig. 6)", t["layers"], "fig6",
         f"{NA}: no selectivity_summary in pruning.json"),
    ]
    for title, df, fig, missing in sections_md:
        md += [f"### {title}", ""]
        if not df.empty:
            md += [_markdown(_fmt_df(df, 3 if fig == "fig5" else 2)), ""]
        md += [f"![{fig}]({figs[fig].name})" if fig in figs else missing, ""]
    grid, best, grid_by = detrimental_grid(runs)
    t["detrimental_grid"], t["detrimental_best"] = grid, best
    if best is not None:
        md += ["### Detrimental-neuron grid (method 2): " + f"{grid_by} per layer x percent (adaptation split)", "",
               _markdown(_fmt_df(grid, 4)), "",
               f"Best setting: layer {best['layer']}, percent {best['percent']} ({grid_by} = {fmt(best[grid_by], 4)}). "
               "Evaluate it on the test split:", "",
               f"    python evaluate.py model.name_or_path={best['run']}/model task={key[1]}", ""]
    return "\n".join(md), figs, t


def build_report(sweep_dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                 paper: bool = False) -> dict:
    """Write ``report.md`` and the PNG figures; returns {"markdown": path, "figures": {...}, "tables": {...}}."""
    runs = load_runs(sweep_dirs)
    out = Path(out_dir) if out_dir else Path(sweep_dirs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    groups = sections(runs)
    md = ["# prunekit report", "", "Built from local run records in: " + ", ".join(map(str, sweep_dirs)), ""]
    if len(groups) > 1:
        md += [f"**Note:** these runs come from {len(groups)} different model/task combinations; they are "
               "reported in separate sections below and never compared with each other.", ""]
    figs, tables = {}, {}
    for i, (key, group_runs) in enumerate(sorted(groups.items())):
        prefix = f"s{i + 1}-{_slug(key[0].split('/')[-1])}-{_slug(key[1])}_" if len(groups) > 1 else ""
        md.append("")
        md[-1], figs[key], tables[key] = render_section(key, group_runs, out, paper, prefix)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    log.info("report: %d runs in %d section(s) -> %s", len(runs), len(groups), path)
    return {"markdown": path, "figures": figs, "tables": tables, "runs": runs}


def log_to_wandb(result: dict, sweep_dirs: list, mode: str, project: str = "prunekit") -> None:
    """Log the report's figures and markdown to W&B (in the sweep's group); never fails the report."""
    import wandb

    out = result["markdown"].parent
    with tracking.start({"report": {"sweeps": [str(s) for s in sweep_dirs]}}, job_type="report", run_dir=out,
                        mode=mode, project=project, group=tracking.group({}, sweep_dirs[0]),
                        name=f"report/{Path(sweep_dirs[0]).name}") as t:
        for key, figs in result["figures"].items():
            for name, path in figs.items():
                t.log_chart(f"report/{_slug(key[0])}/{_slug(key[1])}/{name}", wandb.Image(str(path)))
        t.log_chart("report/markdown", wandb.Html(f"<pre>{result['markdown'].read_text()}</pre>"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prunekit.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", help="sweep (multirun) or run directories")
    parser.add_argument("--out", help="output directory (default: <first sweep dir>/report)")
    parser.add_argument("--paper", action="store_true", help="print the paper's numbers beside ours")
    parser.add_argument("--wandb", action="store_true", help="also log the figures to W&B")
    parser.add_argument("--wandb-mode", default=os.environ.get("WANDB_MODE", "online"),
                        help="online | offline | disabled (default: $WANDB_MODE or online)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.wandb:
            tracking.check_mode(args.wandb_mode)
        result = build_report(args.sweep_dirs, args.out, paper=args.paper)
    except PrunekitError as exc:  # by class: as `python -m prunekit.report` this module is __main__
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.wandb:
        log_to_wandb(result, args.sweep_dirs, args.wandb_mode)
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
