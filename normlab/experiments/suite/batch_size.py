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
        "Does a technique's accuracy depend on the batch size? As in Wu & He's protocol, the "
        "same number of epochs and the same learning rate per sample at every size (lr 0.05 "
        "× batch/32, warmed up over 50 steps), so smaller batches take more, smaller steps. "
        "The paper's claim is about the gap between BatchNorm and GroupNorm as the batch "
        "shrinks. Note that BatchNorm's statistic spans N × H × W values per channel: even at "
        "batch 2 that is 1,568 values in the first layer of this 28×28 CNN, far more than in "
        "the paper's detection-sized batches of 1–2 large images. The band spans the seeds. "
        "Cross-Iteration BatchNorm (Yao et al., 2021) pools the statistics of the last 4 "
        "steps' batches, each compensated for the weights' change since, to keep BatchNorm's "
        "accuracy at small batches (in the --full run, with the layer's default: no burn-in)."
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
        "cross_iteration_bn",
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
        if not {"batchnorm", "groupnorm"} <= set(ends):
            return []
        (bn_s, bn_l), (gn_s, gn_l) = ends["batchnorm"], ends["groupnorm"]
        gap_small = gn_s.test_acc - bn_s.test_acc  # > 0: BatchNorm behind
        gap_large = gn_l.test_acc - bn_l.test_acc
        several = min(bn_s.seeds, gn_s.seeds) > 1
        return [
            Expectation(
                "BatchNorm falls behind GroupNorm as the batch shrinks to 2 (Wu & He, 2018, "
                "Figure 1)",
                (gap_small > gap_large + 0.01 and analysis.differs(gn_s, bn_s))
                if several
                else None,
                f"GroupNorm minus BatchNorm accuracy: {gap_small:+.3f} at batch "
                f"{int(bn_s.batch_size)}, {gap_large:+.3f} at {int(bn_l.batch_size)}",
            )
        ]

    def summary(self, store, headline) -> pd.DataFrame:
        rows = []
        for norm, (small, large) in _ends(headline).items():
            remark = ""
            if _batch_dependent(norm) and analysis.differs(small, large):
                worse = small.test_acc < large.test_acc
                where = int(small.batch_size if worse else large.batch_size)
                remark = f"uses the batch: worse at batch {where}"
            elif _batch_dependent(norm):
                remark = "uses the batch, yet no difference between batch sizes measured here"
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
