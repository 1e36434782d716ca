"""Depth: trainability and gradient flow through ReLU MLPs 4 to 32 layers deep,
per norm. "Per layer" means per linear map: the weight-gradient norm of every
Linear, input to output (the norms' own scales are not layers)."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import analysis
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import FEATURE_TECHNIQUES, Experiment


class Depth(Experiment):
    name = "depth"
    title = "Gradients through depth"
    description = (
        "Gradient norm per Linear layer and trainability of ReLU MLPs 4 to 32 layers "
        "deep, per norm (vanishing and exploding gradients)."
    )
    question = (
        "Do gradients vanish or explode through depth, and does normalization keep deep "
        "networks trainable? The median weight-gradient norm of every Linear layer in the "
        "deepest networks, and final accuracy against depth."
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
    full_norms = FEATURE_TECHNIQUES
    seeds = 3
    section = "problem"
    order = 50

    def check(self, config: RunConfig) -> None:
        self.requires(config.monitor, "needs monitor=True (it reads gradient norms)")

    def headline(self, store) -> pd.DataFrame:
        """Per norm and depth, over seeds: final accuracy (mean, min, max), outcome, and
        the ratio of the first to the last hidden Linear layer's weight-gradient norm
        (median over records; geometric mean over seeds): far below 1 means vanishing,
        far above 1 exploding gradients toward the input."""
        table = analysis.final_table(store, "depth")
        ratios = []
        for _, run in store.summaries().iterrows():
            per_layer = analysis.layer_gradient_norms(
                store.monitor(run.run_id), run.get("weight_layers", "")
            )
            ratio = math.nan
            if len(per_layer) > 2:
                first, last = float(per_layer.iloc[0]), float(per_layer.iloc[-2])
                ratio = first / last if last > 0 else math.inf if first > 0 else math.nan
            # a gradient that vanished to exactly 0 (dead ReLUs) is a ratio of 0, not an error
            log_ratio = math.log10(ratio) if ratio > 0 else -math.inf if ratio == 0 else math.nan
            ratios.append({"norm": run.norm, "depth": run.depth, "log_ratio": log_ratio})
        if ratios:
            geo = pd.DataFrame(ratios).groupby(["norm", "depth"]).log_ratio.mean().reset_index()
            geo["first_to_last_grad_ratio"] = 10**geo.log_ratio
            table = table.merge(geo.drop(columns="log_ratio"), on=["norm", "depth"], how="left")
        return table

    def finding(self, headline: pd.DataFrame) -> str:
        if headline.empty:
            return ""
        deepest = headline[headline.depth == headline.depth.max()].set_index("norm")
        depth = int(headline.depth.max())
        parts = [
            f"At depth {depth}: "
            + "; ".join(
                f"{norm} {analysis.spread(row)}, {row.outcome}, first/last hidden Linear gradient "
                f"ratio {row.get('first_to_last_grad_ratio', math.nan):.3g}"
                for norm, row in deepest.iterrows()
            )
            + "."
        ]
        if "none" in deepest.index:
            plain = deepest.loc["none"]
            for norm, row in deepest.iterrows():
                if norm == "none":
                    continue
                if row.outcome != plain.outcome:
                    verdict = f"{row.outcome}, where no normalization {plain.outcome}"
                elif analysis.differs(row, plain):
                    verdict = "better" if row.test_acc > plain.test_acc else "worse"
                    verdict += " than no normalization beyond the seed spread"
                else:
                    verdict = "no difference from no normalization beyond the seed spread"
                parts.append(f"{norm} at depth {depth}: {verdict}.")
        return " ".join(parts)

    def figures(self, store, headline):
        caption = (
            "Median weight-gradient norm of each Linear layer (input to output) in the "
            "deepest network of each norm, seed 0; a falling line toward the input means "
            "vanishing gradients."
        )
        return [(_gradient_flow(store), caption)]


def _gradient_flow(store):
    from normlab.experiments.plots import plt

    table = store.summaries()
    deepest = table[(table.depth == table.depth.max()) & (table.seed == table.seed.min())]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for _, run in deepest.sort_values("norm").iterrows():
        per_layer = analysis.layer_gradient_norms(
            store.monitor(run.run_id), run.get("weight_layers", "")
        )
        ax.plot(range(1, len(per_layer) + 1), per_layer.to_numpy(), marker=".", label=run.norm)
    ax.set_yscale("log")
    ax.set_xlabel(f"Linear layer (1 = input side), depth {int(deepest.depth.max())}")
    ax.set_ylabel("weight-gradient norm (median)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


EXPERIMENT = Depth()
