"""Sensitivity to the learning rate: final accuracy and divergence of the lab's
CNN over a learning-rate grid, per norm."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import analysis, plots
from normlab.experiments.experiment import LAB_CNN, Experiment


class LearningRate(Experiment):
    name = "lr"
    title = "Learning rate"
    description = "Final accuracy and divergence over a learning-rate grid, per norm (CNN)."
    question = "Final accuracy over a learning-rate grid; × marks divergence."
    default_norms = ("none", "batchnorm", "layernorm", "groupnorm")
    base = LAB_CNN.replace(epochs=2, batch_size=32)
    grid = {"lr": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)}
    quick = {"epochs": 1, "train_size": 256, "test_size": 200}
    order = 30

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store, "lr")

    def figures(self, store, headline):
        return [(plots.heatmap(headline, "lr"), "Final test accuracy per norm and learning rate.")]

    def finding(self, headline: pd.DataFrame) -> str:
        return analysis.stable_ranges(headline, "lr")

    def summary(self, store, headline) -> pd.DataFrame:
        rows = []
        for norm, group in headline.groupby("norm"):
            ok = group[(group.diverged == 0) & (group.test_acc >= 0.8)]
            rows.append(
                {"norm": norm, "largest good lr": float(ok.lr.max()) if len(ok) else math.nan}
            )
        table = pd.DataFrame(rows)
        best = table["largest good lr"].max()
        table["remark"] = [
            "tolerates the largest learning rates" if lr >= best else ""
            for lr in table["largest good lr"]
        ]
        return table


EXPERIMENT = LearningRate()
