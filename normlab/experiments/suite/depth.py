"""Depth: trainability and the weight-gradient norm per layer of ReLU MLPs 4 to
32 layers deep, per norm (vanishing and exploding gradients)."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import analysis
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Experiment


class Depth(Experiment):
    name = "depth"
    title = "Depth"
    description = (
        "Gradient norm per layer and trainability of ReLU MLPs 4 to 32 layers deep, "
        "per norm (vanishing and exploding gradients)."
    )
    question = (
        "Weight-gradient norm per layer in the deepest networks: vanishing or exploding gradients."
    )
    default_norms = ("none", "batchnorm", "layernorm")
    base = RunConfig(
        activation="relu",
        init="kaiming",
        lr=0.02,
        optimizer="momentum",
        steps=400,
        eval_every=None,
        width=64,
    )
    grid = {"depth": (4, 8, 16, 32)}
    quick = {"steps": 20, "train_size": 256, "test_size": 200}
    order = 50

    def check(self, config: RunConfig) -> None:
        self.requires(config.monitor, "needs monitor=True (it reads gradient norms)")

    def headline(self, store) -> pd.DataFrame:
        """Per norm and depth: final accuracy and the ratio of the first to the last
        hidden layer's weight-gradient norm (median over records): far from 1 means
        vanishing (< 1) or exploding (> 1) gradients."""
        rows = []
        for _, run in store.summaries().iterrows():
            per_layer = analysis.layer_gradient_norms(store.monitor(run.run_id))
            ratio = per_layer.iloc[0] / per_layer.iloc[-2] if len(per_layer) > 2 else math.nan
            rows.append(
                {
                    "norm": run.norm,
                    "depth": run.depth,
                    "test_acc": run.final_test_acc,
                    "first_to_last_grad_ratio": ratio,
                }
            )
        if not rows:
            return pd.DataFrame(columns=["norm", "depth", "test_acc", "first_to_last_grad_ratio"])
        return pd.DataFrame(rows).groupby(["norm", "depth"]).mean().reset_index()

    def finding(self, headline: pd.DataFrame) -> str:
        parts = []
        for norm, group in headline.groupby("norm"):
            deepest = group.sort_values("depth").iloc[-1]
            parts.append(
                f"{norm} at depth {int(deepest.depth)}: test accuracy {deepest.test_acc:.3f}, "
                f"first-to-last gradient ratio {deepest.first_to_last_grad_ratio:.3g}"
            )
        return "; ".join(parts) + "." if parts else ""

    def figures(self, store, headline):
        caption = "Median weight-gradient norm per layer in the deepest network of each norm."
        return [(_gradient_flow(store), caption)]


def _gradient_flow(store):
    """Weight-gradient norm per layer (median over training) for the deepest
    network of each norm."""
    from normlab.experiments.plots import plt

    table = store.summaries()
    deepest = table[table.depth == table.depth.max()]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for _, run in deepest.sort_values("norm").iterrows():
        per_layer = analysis.layer_gradient_norms(store.monitor(run.run_id))
        ax.plot(range(1, len(per_layer) + 1), per_layer.to_numpy(), marker=".", label=run.norm)
    ax.set_yscale("log")
    ax.set_xlabel(f"layer (input -> output), depth {int(deepest.depth.max())}")
    ax.set_ylabel("weight-gradient norm (median)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


EXPERIMENT = Depth()
