"""Figure helpers the experiments share (matplotlib, off-screen). Each takes
analysed numbers, never a model, and returns a Figure or None."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def density(sketches: pd.DataFrame, site: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    """A site's distribution at ``step`` as a step density, from its recorded quantile
    sketch (evenly spaced quantiles: mass 1/(k-1) between neighbours)."""
    rows = sketches[(sketches.module == site) & (sketches.step == step)].sort_values("level")
    quantiles = rows.value.to_numpy()
    widths = np.maximum(np.diff(quantiles), 1e-9)
    return quantiles, np.append(1.0 / (len(quantiles) - 1) / widths, 0.0)


# Paul Tol's "muted" scheme and its "bright" extras: distinguishable with the common
# colour-vision deficiencies. Each technique keeps its colour in every figure.
PALETTE = (
    "#332288",
    "#88CCEE",
    "#44AA99",
    "#117733",
    "#999933",
    "#DDCC77",
    "#CC6677",
    "#882255",
    "#AA4499",
    "#4477AA",
    "#EE6677",
    "#228833",
    "#CCBB44",
    "#66CCEE",
    "#BB5566",
    "#004488",
    "#DDAA33",
    "#EE7733",
    "#0077BB",
    "#EE3377",
)


def color(norm: str) -> str:
    """The colour of technique ``norm`` in every figure (by its place in the registry;
    grey for no normalization)."""
    from normlab.norms import registry

    if norm == "none":
        return "#555555"
    names = [n for n in registry.available() if n != "none"]
    try:
        return PALETTE[names.index(registry.canonical(norm)) % len(PALETTE)]
    except (KeyError, ValueError):
        return "#000000"


def error_lines(ax, headline: pd.DataFrame, axis: str, log: bool = True) -> None:
    """Test error against ``axis`` on ``ax``, one line per norm (mean over seeds), the
    95% t-interval shaded where there are several seeds."""
    for norm, group in headline.groupby("norm"):
        group = group.sort_values(axis)
        ax.plot(group[axis], 1 - group.test_acc, marker="o", label=norm, color=color(norm))
        if "ci_low" in group and group.ci_low.notna().any():
            ax.fill_between(
                group[axis], 1 - group.ci_high, 1 - group.ci_low, color=color(norm), alpha=0.15
            )
    if log:
        ax.set_xscale("log", base=2)
        ticks = sorted(headline[axis].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel(axis.replace("_", " "))
    ax.set_ylabel("test error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)


def error_vs(headline: pd.DataFrame, axis: str, log: bool = True):
    """Test error against ``axis`` (e.g. batch size): :func:`error_lines` in a figure."""
    if headline.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    error_lines(ax, headline, axis, log)
    fig.tight_layout()
    return fig


MARKS = {"trained": "", "did not learn": "○", "diverged": "×"}


def heatmap(headline: pd.DataFrame, axis: str):
    """Mean accuracy as a norm x ``axis`` heatmap. Each cell prints the accuracy of a
    run that trained, ○ and the accuracy where it did not learn (near chance), × where
    it diverged; every mark on a white box, readable on any cell colour."""
    if headline.empty:
        return None
    acc = headline.pivot(index="norm", columns=axis, values="test_acc")
    outcome = headline.pivot(index="norm", columns=axis, values="outcome")
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.95 * acc.shape[1]), 1.3 + 0.55 * acc.shape[0]))
    image = ax.imshow(acc.fillna(0.0).to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            result, value = outcome.iat[i, j], acc.iat[i, j]
            if not isinstance(result, str):
                continue  # not run
            text = "×" if result == "diverged" else f"{MARKS[result]}{value:.2f}"
            box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "lw": 0}
            ax.text(j, i, text, ha="center", va="center", color="black", fontsize=9, bbox=box)
    ax.set_xticks(
        range(acc.shape[1]),
        [f"{v:g}" if isinstance(v, float | int) else str(v) for v in acc.columns],
    )
    ax.set_yticks(range(acc.shape[0]), acc.index)
    ax.set_xlabel(axis.replace("_", " "))
    fig.colorbar(image, ax=ax, label="test accuracy\n(mean over seeds)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.text(0.01, 0.01, "number: trained   ○: did not learn   ×: diverged", fontsize=8)
    return fig


def bars(frame: pd.DataFrame, label: str, columns: dict[str, str]):
    """Horizontal bars of ``columns`` (column -> axis label), one panel each."""
    if frame.empty:
        return None
    per_row = 2
    rows = -(-len(columns) // per_row)
    height = max(2.2, 0.8 + 0.32 * len(frame))
    fig, axes = plt.subplots(rows, per_row, figsize=(11, height * rows), squeeze=False)
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
    for i, (ax, (column, xlabel)) in enumerate(zip(axes.flat, columns.items(), strict=False)):
        ax.barh(frame[label], frame[column], color=colors[i % len(colors)])
        ax.set_xlabel(xlabel)
        if i % per_row:
            ax.set_yticks([])
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig
