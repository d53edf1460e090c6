"""The paper's figures 1-6 for one section, drawn from its tables (matplotlib, PNG files only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from prunekit.report.tables import _strategy_order


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
