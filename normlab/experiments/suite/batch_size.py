"""Sensitivity to the batch size, after Wu & He (2018, the GroupNorm paper's
Figure 1): the lab's CNN trained for the same number of epochs at batch sizes
2 to 64, the learning rate scaled linearly with the batch."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import analysis, plots
from normlab.experiments.experiment import LAB_CNN, Experiment


class BatchSize(Experiment):
    name = "batch-size"
    title = "Batch size"
    description = (
        "The GroupNorm paper's batch-size study in small: a CNN trained for the same number "
        "of epochs at batch sizes 2 to 64 (learning rate scaled linearly)."
    )
    question = (
        "Test error against batch size, same number of epochs, learning rate scaled with "
        "the batch (the GroupNorm paper's study, in small)."
    )
    default_norms = (
        "batchnorm",
        "groupnorm",
        "layernorm",
        "instancenorm",
        "batchrenorm",
        "frn",
        "evonorm_s0",
        "none",
    )
    base = LAB_CNN.replace(epochs=3, lr_scaling=True)
    grid = {"batch_size": (2, 4, 8, 16, 32, 64)}
    quick = {"epochs": 1, "train_size": 256, "test_size": 200}
    order = 20

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store, "batch_size")

    def figures(self, store, headline):
        return [(plots.error_vs(headline, "batch_size"), "Test error against batch size.")]

    def finding(self, headline: pd.DataFrame) -> str:
        return analysis.error_endpoints(headline, "batch_size")

    def summary(self, store, headline) -> pd.DataFrame:
        rows = []
        for norm, group in headline.groupby("norm"):
            acc = group.set_index("batch_size").test_acc.fillna(0.0)
            spread = float(acc.max() - acc.min())
            rows.append(
                {
                    "norm": norm,
                    "acc @ batch 2": acc.get(2, math.nan),
                    "batch-size spread": spread,
                    "remark": "insensitive to batch size"
                    if spread <= 0.05
                    else "sensitive to batch size",
                }
            )
        return pd.DataFrame(rows)


EXPERIMENT = BatchSize()
