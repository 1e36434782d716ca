"""Sensitivity to the initialization: final accuracy of a ReLU MLP whose initial
weights are Kaiming's times 0.1 to 10, per norm."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import analysis, plots
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Experiment


class Initialization(Experiment):
    name = "init"
    title = "Initialization"
    description = (
        "Sensitivity to the scale of the initial weights (x0.1 to x10 of Kaiming), "
        "per norm (ReLU MLP)."
    )
    question = "Final accuracy against the scale of the initial weights."
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
    )
    grid = {"init_scale": (0.1, 0.3, 1.0, 3.0, 10.0)}
    quick = {"steps": 30, "train_size": 256, "test_size": 200}
    order = 40

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store, "init_scale")

    def figures(self, store, headline):
        caption = "Final test accuracy per norm and scale of the initial weights."
        return [(plots.heatmap(headline, "init_scale"), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        return analysis.stable_ranges(headline, "init_scale")


EXPERIMENT = Initialization()
