"""The train/eval gap: accuracy with batch statistics (train mode) against
accuracy with running statistics (eval mode), and how it depends on the batch
size: where BatchNorm's two modes part ways."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import plots
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
    base = LAB_CNN.replace(epochs=2, lr_scaling=True, train_mode_eval=True)
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
        frame = headline.rename(columns={"final_test_acc": "test_acc"})
        caption = "Eval-mode test error against batch size."
        return [(plots.error_vs(frame, "batch_size"), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        parts = [
            f"{r.norm} at batch {r.batch_size}: eval {r.final_test_acc:.3f}, "
            f"train mode {r.final_test_acc_train_mode:.3f} (gap {r.gap:+.3f})"
            for r in headline.itertuples()
        ]
        return "; ".join(parts) + "." if parts else ""


EXPERIMENT = TrainEval()
