"""The train/eval gap: accuracy with batch statistics (train mode) against
accuracy with running statistics (eval mode), and how it depends on the batch
size: where BatchNorm's two modes part ways."""

from __future__ import annotations

import pandas as pd

from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import LAB_CNN, Experiment


class TrainEval(Experiment):
    name = "train-eval"
    title = "Train mode against eval mode"
    description = (
        "The accuracy gap between train-mode (batch statistics) and eval-mode "
        "inference, and its dependence on batch size."
    )
    question = (
        "Test accuracy in eval mode (running statistics) and in train mode (statistics "
        "of each test batch, same batch size as in training), per batch size."
    )
    default_norms = ("batchnorm", "groupnorm")
    # the techniques whose train and eval modes differ, and GroupNorm as the control
    full_norms = (
        "batchnorm",
        "batchrenorm",
        "ghostbatchnorm",
        "evonorm_b0",
        "switchable",
        "groupnorm",
    )
    # The batch-size study's training (lr 0.05 x batch/32, warm-up); 992 test images, a
    # multiple of every batch size, so both modes are scored on the same images.
    base = LAB_CNN.replace(
        epochs=2, lr=0.05, lr_scaling=True, warmup_steps=50, train_mode_eval=True, test_size=992
    )
    grid = {"batch_size": (2, 4, 8, 32)}
    quick = {"epochs": 1, "train_size": 256, "test_size": 200}
    order = 60

    def check(self, config: RunConfig) -> None:
        self.requires(config.train_mode_eval, "needs train_mode_eval=True")

    def headline(self, store) -> pd.DataFrame:
        table = store.summaries()
        columns = ["final_test_acc", "final_test_acc_train_mode"]
        if table.empty:
            return pd.DataFrame(columns=["norm", "batch_size", *columns, "gap"])
        out = table.groupby(["norm", "batch_size"])[columns].mean()
        out["gap"] = out.final_test_acc_train_mode - out.final_test_acc
        return out.reset_index()

    def figures(self, store, headline):
        caption = "Test error in eval mode (solid) and train mode (dashed) against batch size."
        return [(_modes_figure(headline), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        parts = [
            f"{r.norm} at batch {r.batch_size}: eval {r.final_test_acc:.3f}, "
            f"train mode {r.final_test_acc_train_mode:.3f} (gap {r.gap:+.3f})"
            for r in headline.itertuples()
        ]
        return "; ".join(parts) + "." if parts else ""


def _modes_figure(headline: pd.DataFrame):
    from normlab.experiments.plots import plt

    if headline.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for norm, group in headline.groupby("norm"):
        group = group.sort_values("batch_size")
        (line,) = ax.plot(
            group.batch_size, 1 - group.final_test_acc, marker="o", label=f"{norm}, eval"
        )
        ax.plot(
            group.batch_size,
            1 - group.final_test_acc_train_mode,
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
