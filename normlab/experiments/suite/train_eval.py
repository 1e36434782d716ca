"""The train/eval gap: accuracy with batch statistics (train mode) against
accuracy with running statistics (eval mode), and how it depends on the batch
size: where BatchNorm's two modes part ways."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import analysis, describe, stats
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import LAB_CNN, Experiment


class TrainEval(Experiment):
    name = "train-eval"
    title = "Train mode against eval mode"
    description = (
        "The accuracy gap between train-mode (batch statistics) and eval-mode "
        "inference, and its dependence on batch size."
    )
    default_norms = ("batchnorm", "groupnorm")
    # the techniques whose train and eval modes differ, and GroupNorm as the control
    full_norms = (
        "batchnorm",
        "batchrenorm",
        "ghostbatchnorm",
        "evonorm_b0",
        "switchable",
        "cross_iteration_bn",
        "groupnorm",
    )
    # The batch-size study's training (lr 0.05 x batch/32, warm-up); 992 test images, a
    # multiple of every batch size, so both modes are scored on the same images.
    base = LAB_CNN.replace(
        epochs=2, lr=0.05, lr_scaling=True, warmup_steps=50, train_mode_eval=True, test_size=992
    )
    grid = {"batch_size": (2, 4, 8, 32)}
    quick = {"epochs": 1, "train_size": 256, "test_size": 200}
    seeds = 2
    order = 60

    def check(self, config: RunConfig) -> None:
        self.requires(config.train_mode_eval, "needs train_mode_eval=True")

    def lead(self, runs: pd.DataFrame) -> str:
        return (
            "Test accuracy in eval mode (running statistics) and in train mode (statistics "
            "of each test batch, of the training batch size), per batch size: "
            f"{describe.model(runs)} trained with {describe.training(runs)} on "
            f"{describe.data(runs)}, {describe.seed_count(runs)}. A constant learning rate "
            "keeps the weights moving until the end, so running averages, which lag the "
            "weights, are tested at their hardest."
        )

    def headline(self, store) -> pd.DataFrame:
        """Per norm and batch size, over seeds (mean and sd): eval-mode and train-mode
        accuracy and their gap (train mode minus eval mode)."""
        table = store.summaries()
        if table.empty:
            return pd.DataFrame(columns=["norm", "batch_size", "eval_acc", "train_acc", "gap"])
        frame = pd.DataFrame(
            {
                "norm": table.norm,
                "batch_size": table.batch_size,
                "eval_acc": table.final_test_acc,
                "train_acc": table.final_test_acc_train_mode,
                "gap": table.final_test_acc_train_mode - table.final_test_acc,
            }
        )
        return analysis.seed_table(frame, ["norm", "batch_size"], ["eval_acc", "train_acc", "gap"])

    def figures(self, store, headline):
        caption = "Test error in eval mode (solid) and train mode (dashed) against batch size."
        return [(_modes_figure(headline), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        parts = []
        for norm, rows in headline.groupby("norm"):
            apart = []
            for _, r in rows.sort_values("batch_size").iterrows():
                gap = stats.summarize(r.gap, r.gap_sd, int(r.seeds))
                if gap.low > 0 or gap.high < 0:  # the interval excludes no gap
                    apart.append(f"batch {int(r.batch_size)} {gap}")
            parts.append(
                f"{norm}: the modes differ at "
                + (", ".join(apart) if apart else "no batch size (beyond the seeds' spread)")
            )
        return "Gap, train mode minus eval mode: " + "; ".join(parts) + "." if parts else ""


def _modes_figure(headline: pd.DataFrame):
    from normlab.experiments.plots import plt

    if headline.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for norm, group in headline.groupby("norm"):
        group = group.sort_values("batch_size")
        (line,) = ax.plot(group.batch_size, 1 - group.eval_acc, marker="o", label=f"{norm}, eval")
        ax.plot(
            group.batch_size,
            1 - group.train_acc,
            marker="x",
            linestyle="--",
            color=line.get_color(),
            label=f"{norm}, train mode",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("test error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


EXPERIMENT = TrainEval()
