"""The GroupNorm paper's real setting: data-parallel processes with a small batch
each, where BatchNorm's statistics are per process unless synchronized:
BatchNorm vs SyncBatchNorm vs GroupNorm over 2 gloo processes."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import analysis, describe, plots
from normlab.experiments.experiment import LAB_CNN, Experiment


class BatchSizeDataParallel(Experiment):
    name = "batch-size-ddp"
    title = "Batch size across processes: BatchNorm, SyncBatchNorm, GroupNorm"
    description = (
        "The GroupNorm paper's real setting: 2 data-parallel processes with a small "
        "batch each, BatchNorm with per-process statistics vs SyncBatchNorm vs GroupNorm."
    )
    default_norms = ("batchnorm", "sync_bn", "groupnorm")
    base = LAB_CNN.replace(nproc=2, epochs=2, lr_scaling=True)
    grid = {"batch_size": (2, 4, 8, 16)}
    quick = {"epochs": 1, "train_size": 256, "test_size": 200}
    in_suite = False
    order = 25

    def lead(self, runs: pd.DataFrame) -> str:
        return (
            f"Test error against the batch size per process, {int(describe.first(runs).nproc)} "
            "data-parallel processes: BatchNorm normalizes over each process's batch, "
            f"SyncBatchNorm over all of them; {describe.model(runs)} trained with "
            f"{describe.training(runs)} on {describe.data(runs)}, {describe.seed_count(runs)}."
        )

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store.summaries(), "batch_size")

    def figures(self, store, headline):
        caption = "Test error against the batch size per process (2 processes)."
        return [(plots.error_vs(headline, "batch_size"), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        return analysis.error_endpoints(headline, "batch_size", " per process")


EXPERIMENT = BatchSizeDataParallel()
