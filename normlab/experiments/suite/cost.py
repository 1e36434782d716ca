"""Cost: time per training step and the activation memory one step keeps for its
backward pass, per norm, on the same CNN and batch. Runs one at a time (nothing
else on the machine's cores), each seed a repeat: the median step time of each
run, then the median and range over repeats."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import describe, plots
from normlab.experiments.experiment import LAB_CNN, Experiment


class Cost(Experiment):
    name = "cost"
    title = "Cost"
    description = "Time per training step and activation memory per norm, same CNN and batch."
    default_norms = (
        "none",
        "batchnorm",
        "layernorm",
        "layernorm_chw",
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
        "derf",
        "rmsnorm_lm",
    )
    base = LAB_CNN.replace(channels=(16, 32), steps=40, batch_size=64)
    quick = {"steps": 5, "train_size": 256, "test_size": 100}
    seeds = 3
    exclusive = True
    order = 90

    def lead(self, runs: pd.DataFrame) -> str:
        run = describe.first(runs)
        return (
            "What does each technique cost? Median time of a training step (forward, "
            f"backward, SGD step) of {describe.model(runs)} at batch {int(run.batch_size)} on "
            f"{describe.image_size(runs) or 'its'} inputs, runs one at a time, "
            f"{describe.seeds(runs)} repeats (the range over repeats in brackets), and the "
            "activation memory one step keeps for backward. These are eager-mode CPU "
            "timings of a small CNN: techniques torch fuses (BatchNorm, LayerNorm, "
            "GroupNorm) run one kernel, the others (RMSNorm2d, DyT, EvoNorm, ...) several "
            "composed ops, so the ranking is normlab's CPU implementation, not the "
            "techniques' inherent cost (compiled, or with fused GPU kernels, the "
            "ranking changes: docs/performance.md)."
        )

    def headline(self, store) -> pd.DataFrame:
        table = store.summaries()
        columns = [
            "norm",
            "ms_per_step",
            "ms_min",
            "ms_max",
            "x_none",
            "activation_mb",
            "parameters",
        ]
        if table.empty:
            return pd.DataFrame(columns=columns)
        grouped = table.groupby("norm")
        out = grouped[["ms_per_step", "activation_mb", "parameters"]].median()
        out["ms_min"] = grouped.ms_per_step.min()
        out["ms_max"] = grouped.ms_per_step.max()
        base = out.ms_per_step.get("none", math.nan)
        out["x_none"] = out.ms_per_step / base
        return out.reset_index()[columns].sort_values("ms_per_step")

    def figures(self, store, headline):
        columns = {
            "ms_per_step": "ms per training step (median)",
            "activation_mb": "activation memory (MB)",
        }
        machines = ", ".join(sorted(set(store.summaries().get("machine", pd.Series(["?"])))))
        caption = f"Time per step and activation memory; measured on {machines}."
        return [(plots.bars(headline, "norm", columns), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        if headline.empty:
            return ""
        return (
            "Fastest to slowest (median ms per step, range over repeats, × no normalization): "
            + ", ".join(
                f"{r.norm} {r.ms_per_step:.1f} ({r.ms_min:.1f}–{r.ms_max:.1f}, {r.x_none:.2f}×)"
                for r in headline.itertuples()
            )
            + "."
        )

    def summary(self, store, headline) -> pd.DataFrame:
        table = headline[["norm", "x_none"]].rename(columns={"x_none": "cost (x none)"})
        table["remark"] = [
            f"costs {c:.1f}× no normalization per step" if not math.isnan(c) and n != "none" else ""
            for n, c in zip(table.norm, table["cost (x none)"], strict=True)
        ]
        return table


EXPERIMENT = Cost()
