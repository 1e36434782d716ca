"""Sensitivity to the initialization: the outcome and final accuracy of a ReLU
MLP whose initial weights are Kaiming's times 0.1 to 10, per norm."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import analysis, describe, plots, stats
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import (
    BATCH_RENORM_SHORT,
    FEATURE_TECHNIQUES,
    Expectation,
    Experiment,
)


class Initialization(Experiment):
    name = "init"
    title = "Initialization"
    description = (
        "Sensitivity to the scale of the initial weights (x0.1 to x10 of Kaiming), per norm."
    )
    default_norms = ("none", "batchnorm", "layernorm")
    base = RunConfig(
        activation="relu",
        init="kaiming",
        lr=0.05,
        optimizer="momentum",
        steps=500,
        eval_every=None,
        width=100,
        monitor=False,
        # groups of 10 features (the default, 25 groups of 100, holds 4 values each)
        norm_kwargs=(
            *BATCH_RENORM_SHORT,
            ("groupnorm:num_groups", 10),
            ("evonorm_s0:groups", 10),
        ),
    )
    grid = {"init_scale": (0.1, 0.3, 1.0, 3.0, 10.0)}
    quick = {"steps": 30, "train_size": 256, "test_size": 200}
    full_norms = FEATURE_TECHNIQUES
    seeds = 3
    section = "problem"
    order = 40

    def lead(self, runs: pd.DataFrame) -> str:
        scales = ", ".join(f"{v:g}" for v in describe.values(runs, "init_scale"))
        return (
            "How sensitive is training to the scale of the initial weights? Final test "
            f"accuracy of {describe.model(runs)} whose Kaiming-normal weights are multiplied "
            f"by {scales}, trained with {describe.training(runs)} on {describe.data(runs)}, "
            f"{describe.seed_count(runs)}; ○: did not learn, ×: diverged."
        )

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store.summaries(), "init_scale")

    def figures(self, store, headline):
        caption = "Final test accuracy per norm and scale of the initial weights."
        return [(plots.heatmap(headline, "init_scale"), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        return analysis.outcome_ranges(headline, "init_scale")

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        every = {
            norm: int((group.outcomes == f"{group.runs.iloc[0]} trained").sum())
            for norm, group in headline.groupby("norm")
        }
        if not {"none", "batchnorm"} <= set(every):
            return []
        scales = headline.init_scale.nunique()
        enough = headline[headline.norm.isin(["none", "batchnorm"])].runs.min() >= stats.MIN_SEEDS
        bn = headline[headline.norm == "batchnorm"].set_index("init_scale").test_acc
        return [
            Expectation(
                "With BatchNorm, training tolerates the scale of the initial weights "
                "(Ioffe & Szegedy, 2015: BatchNorm makes a layer invariant to its weights' scale)",
                every["batchnorm"] == scales and every["none"] < scales if enough else None,
                f"every seed trained at {every['batchnorm']} of {scales} scales with batchnorm "
                f"(mean accuracy {bn.min():.3f} to {bn.max():.3f}), at {every['none']} of "
                f"{scales} without",
                (
                    "one learning rate for every scale: larger weights multiply the plain "
                    "network's logits, so a smaller lr might train it (not swept). "
                    "BatchNorm's accuracy still moves with the scale because its layers are "
                    "scale-invariant: a step's effect on a weight w is about η/‖w‖², so "
                    "large weights learn slowly (van Laarhoven, 2017; Hoffer et al., 2018); "
                    "LayerNorm, RMSNorm, GroupNorm and ScaleNorm share the invariance"
                )
                if enough
                else f"needs {stats.MIN_SEEDS} seeds",
            )
        ]


EXPERIMENT = Initialization()
