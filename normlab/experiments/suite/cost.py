"""Cost: time per training step and the activation memory one step keeps for
its backward pass, per norm, on the same CNN and batch."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import plots
from normlab.experiments.experiment import LAB_CNN, Experiment


class Cost(Experiment):
    name = "cost"
    title = "Cost"
    description = "Time per training step and activation memory per norm, same CNN and batch."
    question = "Time per training step and activation memory on the same CNN and batch."
    default_norms = (
        "none",
        "batchnorm",
        "layernorm",
        "groupnorm",
        "instancenorm",
        "rmsnorm",
        "batchrenorm",
        "ghostbatchnorm",
        "frn",
        "evonorm_b0",
        "evonorm_s0",
        "switchable",
        "scalenorm",
        "dyt",
    )
    base = LAB_CNN.replace(channels=(16, 32), steps=60, batch_size=64)
    quick = {"steps": 5, "train_size": 256, "test_size": 100}
    order = 90

    def headline(self, store) -> pd.DataFrame:
        table = store.summaries()
        columns = ["ms_per_step", "activation_mb", "parameters"]
        if table.empty:
            return pd.DataFrame(columns=["norm", *columns])
        return table.groupby("norm")[columns].mean().reset_index()

    def figures(self, store, headline):
        frame = headline.sort_values("ms_per_step")
        columns = {"ms_per_step": "ms per training step", "activation_mb": "activation memory (MB)"}
        return [(plots.bars(frame, "norm", columns), "Time per step and activation memory.")]

    def finding(self, headline: pd.DataFrame) -> str:
        ordered = headline.sort_values("ms_per_step")
        if ordered.empty:
            return ""
        return (
            "Fastest to slowest: "
            + ", ".join(f"{r.norm} {r.ms_per_step:.1f} ms" for r in ordered.itertuples())
            + "."
        )

    def summary(self, store, headline) -> pd.DataFrame:
        cost = headline.set_index("norm").ms_per_step
        base = cost.get("none", math.nan)
        table = pd.DataFrame({"norm": cost.index, "cost (x none)": (cost / base).to_numpy()})
        table["remark"] = [
            f"costs {c:.1f}x no normalization per step" if not math.isnan(c) else ""
            for c in table["cost (x none)"]
        ]
        return table


EXPERIMENT = Cost()
