"""The report's pictures, each drawn from a results store (never from a model).

Every function takes the store of one experiment and returns a matplotlib
Figure, or None when the store holds nothing to draw.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from normlab.experiments.catalog import last_sigmoid_site, layer_gradient_norms
from normlab.experiments.store import ResultsStore


def _density(quantiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A step density from evenly spaced quantiles: mass 1/(k-1) between neighbours."""
    widths = np.maximum(np.diff(quantiles), 1e-9)
    return quantiles, np.append(1.0 / (len(quantiles) - 1) / widths, 0.0)


def drift(store: ResultsStore):
    """The BatchNorm paper's Figure 1 b/c: per norm, the last hidden layer's
    sigmoid-input distribution early vs late (mean, std annotated), and its
    15/50/85th percentiles over training."""
    table = store.summaries()
    if table.empty:
        return None
    runs = table.sort_values("norm").drop_duplicates("norm")
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.2), squeeze=False)
    for col, (_, run) in enumerate(runs.iterrows()):
        monitor, sketches = store.monitor(run.run_id), store.sketches(run.run_id)
        site = last_sigmoid_site(monitor)
        stats = monitor[monitor.module == site].pivot(
            index="step", columns="quantity", values="value"
        )
        ax = axes[0, col]
        if sketches is None:  # stored before sketches were kept: percentiles only
            ax.axis("off")
            steps = []
        else:
            steps = sorted(sketches[sketches.module == site].step.unique())
        for step, color in ((steps[0], "#888"), (steps[-1], "#d62728")) if steps else ():
            q = sketches[(sketches.module == site) & (sketches.step == step)].sort_values("level")
            x, d = _density(q.value.to_numpy())
            mean, std = stats.loc[step, "mean"], stats.loc[step, "std"]
            ax.step(
                x,
                d,
                where="post",
                color=color,
                label=f"step {step}: mean {mean:.2f}, std {std:.2f}",
            )
        if steps:
            ax.set_title(f"{run.norm}: input of sigmoid '{site}'")
            ax.set_xlabel("pre-activation")
            ax.legend(fontsize=8)
        band = axes[1, col]
        band.fill_between(stats.index, stats["p15"], stats["p85"], alpha=0.25, label="15th-85th")
        band.plot(stats.index, stats["p50"], label="median")
        band.set_xlabel("step")
        band.set_title(f"{run.norm}: percentiles over training")
        band.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_curves(store: ResultsStore):
    """Test accuracy over steps, one line per norm."""
    table = store.summaries()
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for _, run in table.sort_values("norm").iterrows():
        metrics = store.metrics(run.run_id)
        acc = metrics[metrics.metric == "test_acc"]
        ax.plot(acc.step, acc.value, label=run.norm, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def error_vs(headline: pd.DataFrame, axis: str, log: bool = True):
    """Test error against ``axis`` (batch size), one line per norm."""
    if headline.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for norm, group in headline.groupby("norm"):
        group = group.sort_values(axis)
        ax.plot(group[axis], 1 - group.test_acc.fillna(0.0), marker="o", label=norm)
    if log:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(axis.replace("_", " "))
    ax.set_ylabel("test error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def heatmap(headline: pd.DataFrame, axis: str):
    """Accuracy as a norm x ``axis`` heatmap; diverged runs marked with x."""
    if headline.empty:
        return None
    acc = headline.pivot(index="norm", columns=axis, values="test_acc")
    div = headline.pivot(index="norm", columns=axis, values="diverged")
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * acc.shape[1], 0.8 + 0.55 * acc.shape[0]))
    image = ax.imshow(acc.fillna(0.0).to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            value = acc.iat[i, j]
            text = "×" if div.iat[i, j] > 0 else f"{value:.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                color="white" if value < 0.6 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(acc.shape[1]), [f"{v:g}" for v in acc.columns])
    ax.set_yticks(range(acc.shape[0]), acc.index)
    ax.set_xlabel(axis.replace("_", " ") + "   (× = diverged)")
    fig.colorbar(image, ax=ax, label="test accuracy")
    fig.tight_layout()
    return fig


def gradient_flow(store: ResultsStore):
    """Weight-gradient norm per layer (median over training) for the deepest
    network of each norm: vanishing or exploding gradients through depth."""
    table = store.summaries()
    if table.empty:
        return None
    deepest = table[table.depth == table.depth.max()]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for _, run in deepest.sort_values("norm").iterrows():
        per_layer = layer_gradient_norms(store.monitor(run.run_id))
        ax.plot(range(1, len(per_layer) + 1), per_layer.to_numpy(), marker=".", label=run.norm)
    ax.set_yscale("log")
    ax.set_xlabel(f"layer (input -> output), depth {int(deepest.depth.max())}")
    ax.set_ylabel("weight-gradient norm (median)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def cost(headline: pd.DataFrame):
    """Time per step and activation memory per norm, as bars."""
    if headline.empty:
        return None
    data = headline.sort_values("ms_per_step")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.6 + 0.32 * len(data)))
    left.barh(data.norm, data.ms_per_step, color="#1f77b4")
    left.set_xlabel("ms per training step")
    right.barh(data.norm, data.activation_mb, color="#ff7f0e")
    right.set_xlabel("activation memory (MB)")
    right.set_yticks([])
    fig.tight_layout()
    return fig
