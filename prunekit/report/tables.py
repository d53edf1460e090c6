"""The paper's tables as numbers and as markdown cells, for one (model, task) section; the paper's own numbers
come from ``paper.yaml`` beside this module."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import pandas as pd
import yaml

from prunekit.evaluation import benchmarks
from prunekit.report.records import PRIMARY_METRICS, Run

NA = "n/a"


# ------------------------------------------------------------------------------------ the paper's numbers
@cache
def paper() -> dict:
    """``paper.yaml``: the paper's ratios, sizes and Tables 2-5 (method 1, percent)."""
    with open(Path(__file__).with_name("paper.yaml")) as f:
        return yaml.safe_load(f)


def _rows(table: dict) -> dict:
    return {column: [tuple(cell) for cell in cells] for column, cells in table.items()}


PAPER_RATIOS = tuple(paper()["ratios"])
PAPER_SIZES = dict(paper()["sizes"])                                            # d_ff -> "7B" | "1.5B"
PAPER_TABLE2 = {d_ff: tuple(v) for d_ff, v in paper()["table2"].items()}        # d_ff -> real % per ratio
PAPER_TABLE3 = _rows(paper()["table3"])   # column -> [(metric %, trap %)]; the first row is the original model
PAPER_TABLE4 = _rows(paper()["table4"])   # column -> [(metric %, trap %)] per ratio
PAPER_TABLE5 = {size: (tuple(v["vram_gb"]), tuple(v["tokens_per_s"]))            # for ratios 0, 0.05 ... 0.35
                for size, v in paper()["table5"].items()}


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


# ------------------------------------------------------------------------------------- numbers (tables)
def number(v) -> float | None:
    """A metric as a float, or None where it is missing, failed (NaN, inf) or not a number (a bool)."""
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
    rows = [{"ratio": r.ratio, "strategy": r.strategy, "value": number(r.metrics.get(key))} for r in runs]
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

    res = [{"ratio": r.ratio, "peak mem GB": number(r.metrics.get("resources/peak_mem_gb")),
            "tokens/s": number(r.metrics.get("resources/tokens_per_s")),
            "params": number(r.metrics.get("resources/params"))} for r in pruned]
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
    v = number(v) if not isinstance(v, str) else v
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
            out.loc[label, c] = NA if number(v) is None and number(tr) is None else f"{fmt(v)} ({fmt(tr)})"
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
    rows = [{"layer": r.pruning["layer"], "percent": r.pruning["percent"], metric: number(r.metrics.get(metric)),
             "run": str(r.path)} for r in grid if metric and number(r.metrics.get(metric)) is not None]
    if not rows:
        return pd.DataFrame(), None, metric
    table = pd.DataFrame(rows).pivot_table(index="layer", columns="percent", values=metric, aggfunc="last")
    return table, select_best(rows, metric), metric
