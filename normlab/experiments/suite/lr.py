"""Sensitivity to the learning rate: the outcome (trained, did not learn,
diverged) and final accuracy of the lab's CNN over a learning-rate grid, per norm."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import analysis, describe, plots, stats
from normlab.experiments.experiment import LAB_CNN, Expectation, Experiment


class LearningRate(Experiment):
    name = "lr"
    title = "Learning rate"
    description = "Outcome and final accuracy over a learning-rate grid, per norm."
    default_norms = ("none", "batchnorm", "layernorm_chw", "groupnorm")
    base = LAB_CNN.replace(epochs=1, batch_size=32)
    grid = {"lr": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)}
    quick = {"epochs": 1, "train_size": 256, "test_size": 200}
    full = {"epochs": 3}
    full_norms = (  # every technique for (N, C, H, W) but frozen BatchNorm (fine-tuning only)
        "none",
        "batchnorm",
        "layernorm_chw",
        "groupnorm",
        "instancenorm",
        "frn",
        "dyt",
        "layernorm",
        "rmsnorm",
        "lrn",
        "batchrenorm",
        "ghostbatchnorm",
        "evonorm_b0",
        "evonorm_s0",
        "switchable",
        "scalenorm",
        "derf",
        "rmsnorm_lm",
    )
    seeds = 3
    section = "problem"
    order = 30

    def lead(self, runs: pd.DataFrame) -> str:
        return (
            "Which learning rates does each technique train at? Final test accuracy (mean "
            f"over {describe.seed_count(runs)}) of {describe.model(runs)} trained with "
            f"{describe.training(runs)} on {describe.data(runs)}; ○ marks runs that did not "
            'learn (near chance), × runs that diverged. "Trained" means beyond chance + 10% '
            "of the way to perfect accuracy (0.19 for ten classes), not trained well."
        )

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store.summaries(), "lr")

    def figures(self, store, headline):
        return [(plots.heatmap(headline, "lr"), "Final test accuracy per norm and learning rate.")]

    def finding(self, headline: pd.DataFrame) -> str:
        return analysis.outcome_ranges(headline, "lr")

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        largest = largest_trained(headline)
        if not {"none", "batchnorm"} <= set(largest):
            return []
        enough = headline[headline.norm.isin(["none", "batchnorm"])].runs.min() >= stats.MIN_SEEDS
        return [
            Expectation(
                "BatchNorm trains at higher learning rates than no normalization "
                "(Ioffe & Szegedy, 2015; Santurkar et al., 2018)",
                largest["batchnorm"] > largest["none"] if enough else None,
                f"largest learning rate at which every seed trained (beyond chance) and the "
                f"mean accuracy is within 10% of the norm's best: batchnorm "
                f"{largest['batchnorm']:g}, none {largest['none']:g}",
                "" if enough else f"needs {stats.MIN_SEEDS} seeds",
            )
        ]

    def summary(self, store, headline) -> pd.DataFrame:
        largest = largest_trained(headline)
        table = pd.DataFrame({"norm": list(largest), "largest good lr": list(largest.values())})
        best = table["largest good lr"].max()
        table["remark"] = [
            f"trained at lr up to {lr:g}, the most of any technique" if lr >= best else ""
            for lr in table["largest good lr"]
        ]
        return table


def largest_trained(headline: pd.DataFrame) -> dict[str, float]:
    """norm -> the largest learning rate at which every seed trained and the mean
    accuracy is within 10% of the norm's best (a run just above chance counts as
    trained, not as a good lr)."""
    out = {}
    for norm, group in headline.groupby("norm"):
        best = group.test_acc.max()
        every = group.outcomes == f"{group.runs.iloc[0]} trained"
        ok = group[every & (group.test_acc >= 0.9 * best)]
        out[norm] = float(ok.lr.max()) if len(ok) else math.nan
    return out


EXPERIMENT = LearningRate()
