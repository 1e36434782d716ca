"""Sensitivity to the batch size, after Wu & He (2018, the GroupNorm paper's
Figure 1): the lab's CNN trained at batch sizes 2 to 32 with the batch size the
only variable — the same learning rate per sample (linear scaling, Goyal et al.
2017), the same number of epochs, a warm-up, and at least 375 steps at every size.
LayerNorm is the paper's, over (C, H, W)."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import analysis, plots
from normlab.experiments.experiment import LAB_CNN, Expectation, Experiment
from normlab.norms import registry

# Same epochs at every size: batch 32 sees 3 x 4,000 / 32 = 375 steps, batch 2 6,000.
GRID = (2, 4, 8, 16, 32)


class BatchSize(Experiment):
    name = "batch-size"
    title = "Batch size"
    description = (
        "The GroupNorm paper's batch-size study in small: a CNN at batch sizes 2 to 32, "
        "the same epochs and learning rate per sample, with warm-up."
    )
    question = (
        "Does a technique's accuracy depend on the batch size, when the batch size is the "
        "only thing that changes? Test error against batch size at the same number of "
        "epochs and the same learning rate per sample (lr 0.05 × batch/32, warmed up over "
        "50 steps); the band spans the seeds."
    )
    default_norms = ("batchnorm", "groupnorm", "layernorm_chw", "none")
    base = LAB_CNN.replace(epochs=3, lr=0.05, lr_scaling=True, warmup_steps=50)
    grid = {"batch_size": GRID}
    quick = {"epochs": 1, "train_size": 256, "test_size": 200, "warmup_steps": 5}
    full = {"dataset": "fashion-mnist", "train_size": 10000, "test_size": 2000}
    full_norms = (
        "batchnorm",
        "groupnorm",
        "layernorm_chw",
        "instancenorm",
        "batchrenorm",
        "frn",
        "evonorm_s0",
        "none",
    )
    seeds = 2
    order = 20

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store, "batch_size")

    def figures(self, store, headline):
        caption = "Test error against batch size (band: best to worst seed)."
        return [(plots.error_vs(headline, "batch_size"), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        parts = []
        for norm, row in _ends(headline).items():
            small, large = row
            verdict = (
                "differs beyond the seed spread"
                if analysis.differs(small, large)
                else "no difference beyond the seed spread"
            )
            uses = "uses the batch" if _batch_dependent(norm) else "does not use the batch"
            parts.append(
                f"{norm} ({uses}): {1 - small.test_acc:.3f} error at batch "
                f"{int(small.batch_size)}, {1 - large.test_acc:.3f} at {int(large.batch_size)} "
                f"({verdict})"
            )
        return "; ".join(parts) + "." if parts else ""

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        ends = _ends(headline)
        if "batchnorm" not in ends:
            return []
        small, large = ends["batchnorm"]
        rises = small.test_acc < large.test_acc and analysis.differs(small, large)
        flat = [n for n in ("groupnorm", "layernorm_chw") if n in ends]
        flat_held = all(not analysis.differs(*ends[n]) for n in flat)
        measured = "; ".join(
            f"{n}: error {1 - ends[n][0].test_acc:.3f} at batch {int(ends[n][0].batch_size)}, "
            f"{1 - ends[n][1].test_acc:.3f} at {int(ends[n][1].batch_size)}"
            for n in ("batchnorm", *flat)
        )
        held = None if small.seeds < 2 else rises and flat_held
        return [
            Expectation(
                "BatchNorm's error rises at batch 2–4 while GroupNorm and LayerNorm stay flat "
                "(Wu & He, 2018, Figure 1)",
                held,
                measured,
            )
        ]

    def summary(self, store, headline) -> pd.DataFrame:
        rows = []
        for norm, (small, large) in _ends(headline).items():
            if not _batch_dependent(norm):
                remark = "does not use the batch"
            elif analysis.differs(small, large):
                remark = f"batch-sensitive: worse at batch {int(small.batch_size)}"
            else:
                remark = "uses the batch, yet no loss at small batches measured here"
            rows.append(
                {
                    "norm": norm,
                    f"acc @ batch {int(small.batch_size)}": small.test_acc,
                    "remark": remark,
                }
            )
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["norm", "remark"])


def _batch_dependent(norm: str) -> bool:
    return registry.spec(norm).batch_dependent


def _ends(headline: pd.DataFrame) -> dict[str, tuple]:
    """norm -> (row at the smallest batch, row at the largest)."""
    return {
        norm: (group.sort_values("batch_size").iloc[0], group.sort_values("batch_size").iloc[-1])
        for norm, group in headline.groupby("norm")
    }


EXPERIMENT = BatchSize()
