"""The experiments: each a sweep over norms (and one more axis) of one model,
with a ``headline`` that reduces the stored runs to the numbers that matter.

Default sizes fit a 2-core CPU; ``quick=True`` shrinks every one to a smoke
test. Papers reproduced in small: Ioffe & Szegedy 2015 (Figure 1: ``ics``),
Wu & He 2018 (batch size: ``batch-size``), and the sensitivity studies that
follow them (``lr``, ``init``, ``depth``), plus ``cost`` and ``train-eval``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normlab._names import did_you_mean
from normlab.experiments.config import RunConfig, Sweep
from normlab.experiments.store import ResultsStore


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    default_norms: tuple[str, ...]
    base: RunConfig
    grid: dict[str, tuple]
    quick: dict
    headline: Callable[[ResultsStore], pd.DataFrame]

    def sweep(
        self,
        norms: tuple[str, ...] | None = None,
        seeds: int = 1,
        quick: bool = False,
        **overrides,
    ) -> Sweep:
        """The sweep: the grid crossed with ``norms`` and ``seeds`` seeds."""
        base = dataclasses.replace(self.base, **{**(self.quick if quick else {}), **overrides})
        grid = {"norm": tuple(norms or self.default_norms), **self.grid}
        if quick:
            grid = {k: v[:2] if k != "norm" else v for k, v in grid.items()}
        return Sweep(base, grid, tuple(range(seeds)))


def _final(store: ResultsStore, axis: str) -> pd.DataFrame:
    """Mean final test accuracy (and divergence) per norm and ``axis`` value."""
    table = store.summaries()
    if table.empty:
        return table
    grouped = table.groupby(["norm", axis], dropna=False)
    out = grouped.agg(
        test_acc=("final_test_acc", "mean"),
        diverged=("diverged", "mean"),
        runs=("run_id", "count"),
    )
    return out.reset_index()


def last_sigmoid_site(monitor: pd.DataFrame) -> str:
    """The deepest sigmoid input a monitor frame holds (the sites with 'saturated')."""
    sites = monitor[monitor.quantity == "saturated"].module.unique()
    return max(sites, key=lambda m: int(str(m).split("#")[0].split(".")[-1]))


def layer_gradient_norms(monitor: pd.DataFrame) -> pd.Series:
    """Median weight-gradient norm per layer, ordered from input to output."""
    grads = monitor[(monitor.quantity == "grad_norm") & monitor.module.str.endswith(".weight")]
    per_layer = grads.groupby("module").value.median()
    return per_layer[sorted(per_layer.index, key=lambda m: int(m.split(".")[0]))]


def _ics_headline(store: ResultsStore) -> pd.DataFrame:
    """Per norm: early and final accuracy, the drift of the 15/50/85th percentiles
    of the last hidden layer's sigmoid input (last minus first record), and the
    mean absolute change of every sigmoid input's mean and std over training."""
    rows = []
    for _, run in store.summaries().iterrows():
        metrics = store.metrics(run.run_id)
        acc = metrics[metrics.metric == "test_acc"].sort_values("step").value.to_numpy()
        monitor = store.monitor(run.run_id)
        sigmoid_sites = monitor[monitor.quantity == "saturated"].module.unique()
        site = monitor[monitor.module == last_sigmoid_site(monitor)].pivot(
            index="step", columns="quantity", values="value"
        )
        drift = {f"{q}_drift": site[q].iloc[-1] - site[q].iloc[0] for q in ("p15", "p50", "p85")}
        layers = monitor[monitor.module.isin(sigmoid_sites)]
        moved = layers.pivot_table(index="step", columns=["module", "quantity"], values="value")
        first, last = moved.iloc[0], moved.iloc[-1]
        change = (last - first).abs()
        rows.append(
            {
                "norm": run.norm,
                "seed": run.seed,
                "early_test_acc": acc[0],
                "final_test_acc": acc[-1],
                **drift,
                "abs_drift": float(np.mean(np.abs(list(drift.values())))),
                "layers_mean_drift": float(change.xs("mean", level="quantity").mean()),
                "layers_std_drift": float(change.xs("std", level="quantity").mean()),
            }
        )
    return pd.DataFrame(rows).drop(columns="seed").groupby("norm").mean().reset_index()


def _smoothness_headline(store: ResultsStore) -> pd.DataFrame:
    """Per norm and noise level: Santurkar et al.'s measures averaged over training —
    ICS (||G - G'|| and cos(G, G') of the deepest layer), loss variation,
    gradient predictiveness, effective beta-smoothness — and the final accuracy."""
    rows = []
    for _, run in store.summaries().iterrows():
        metrics = store.metrics(run.run_id)
        means = metrics.groupby("metric").value.mean()
        ics = [m for m in means.index if m.startswith("ics_l2/")]
        deepest = max(ics, key=lambda m: int(m.split("/")[1].split(".")[0]))
        rows.append(
            {
                "norm": run.norm,
                "noise": run.noise,
                "ics_l2": means[deepest],
                "ics_cosine": means[deepest.replace("ics_l2", "ics_cosine")],
                "loss_variation": means["loss_variation"],
                "gradient_predictiveness": means["gradient_predictiveness"],
                "beta_smoothness": means["beta_smoothness"],
                "test_acc": run.final_test_acc,
            }
        )
    return pd.DataFrame(rows).groupby(["norm", "noise"]).mean().reset_index()


def _cost_headline(store: ResultsStore) -> pd.DataFrame:
    table = store.summaries()
    return (
        table.groupby("norm")[["ms_per_step", "activation_mb", "parameters"]].mean().reset_index()
    )


def _train_eval_headline(store: ResultsStore) -> pd.DataFrame:
    table = store.summaries()
    out = table.groupby(["norm", "batch_size"])[
        ["final_test_acc", "final_test_acc_train_mode"]
    ].mean()
    out["gap"] = out.final_test_acc_train_mode - out.final_test_acc
    return out.reset_index()


def _depth_headline(store: ResultsStore) -> pd.DataFrame:
    """Per norm and depth: final accuracy and the ratio of the first to the last
    hidden layer's weight-gradient norm (median over records): far from 1 means
    vanishing (< 1) or exploding (> 1) gradients."""
    rows = []
    for _, run in store.summaries().iterrows():
        monitor = store.monitor(run.run_id)
        per_layer = layer_gradient_norms(monitor)
        ratio = per_layer.iloc[0] / per_layer.iloc[-2] if len(per_layer) > 2 else float("nan")
        rows.append(
            {
                "norm": run.norm,
                "depth": run.depth,
                "test_acc": run.final_test_acc,
                "first_to_last_grad_ratio": ratio,
            }
        )
    return pd.DataFrame(rows).groupby(["norm", "depth"]).mean().reset_index()


_CNN = RunConfig(
    model="cnn",
    activation="relu",
    init="kaiming",
    channels=(16, 32, 64),
    optimizer="momentum",
    lr=0.1,
    monitor=False,
    # Batch Renorm's paper schedule (5k/40k/25k steps) would never leave warm-up
    # in runs this short: relax r_max and d_max over the first 200 steps.
    norm_kwargs=(
        ("batchrenorm:warmup_steps", 50),
        ("batchrenorm:r_max_steps", 200),
        ("batchrenorm:d_max_steps", 200),
    ),
)

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "ics",
            "The BatchNorm paper's Figure 1: the 3x100 sigmoid MLP, batch 60, small "
            "Gaussian init, with and without BatchNorm: test accuracy over steps and the "
            "15/50/85th percentiles of a last-layer sigmoid input.",
            ("none", "batchnorm"),
            RunConfig(steps=3000, eval_every=100, lr=0.5, init_std=0.1),
            {},
            {"steps": 300, "eval_every": 50, "train_size": 1000},
            _ics_headline,
        ),
        Experiment(
            "batch-size",
            "The GroupNorm paper's batch-size study in small: a CNN trained for the same "
            "number of epochs at batch sizes 2 to 64 (learning rate scaled linearly).",
            (
                "batchnorm",
                "groupnorm",
                "layernorm",
                "instancenorm",
                "batchrenorm",
                "frn",
                "evonorm_s0",
                "none",
            ),
            dataclasses.replace(_CNN, epochs=3, lr_scaling=True, eval_every=10**9),
            {"batch_size": (2, 4, 8, 16, 32, 64)},
            {"epochs": 1, "train_size": 256, "test_size": 200},
            lambda store: _final(store, "batch_size"),
        ),
        Experiment(
            "lr",
            "Final accuracy and divergence over a learning-rate grid, per norm (CNN).",
            ("none", "batchnorm", "layernorm", "groupnorm"),
            dataclasses.replace(_CNN, epochs=2, eval_every=10**9, batch_size=32),
            {"lr": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)},
            {"epochs": 1, "train_size": 256, "test_size": 200},
            lambda store: _final(store, "lr"),
        ),
        Experiment(
            "init",
            "Sensitivity to the scale of the initial weights (x0.1 to x10 of Kaiming), "
            "per norm (ReLU MLP).",
            ("none", "batchnorm", "layernorm"),
            RunConfig(
                activation="relu",
                init="kaiming",
                lr=0.05,
                optimizer="momentum",
                steps=500,
                eval_every=10**9,
                width=100,
                monitor=False,
            ),
            {"init_scale": (0.1, 0.3, 1.0, 3.0, 10.0)},
            {"steps": 30, "train_size": 256, "test_size": 200},
            lambda store: _final(store, "init_scale"),
        ),
        Experiment(
            "depth",
            "Gradient norm per layer and trainability of ReLU MLPs 4 to 32 layers deep, "
            "per norm (vanishing and exploding gradients).",
            ("none", "batchnorm", "layernorm"),
            RunConfig(
                activation="relu",
                init="kaiming",
                lr=0.02,
                optimizer="momentum",
                steps=400,
                eval_every=10**9,
                width=64,
            ),
            {"depth": (4, 8, 16, 32)},
            {"steps": 20, "train_size": 256, "test_size": 200},
            _depth_headline,
        ),
        Experiment(
            "smoothness",
            "Santurkar et al.'s internal covariate shift and loss-landscape smoothness over "
            "training, with and without BatchNorm, and 'noisy' BatchNorm (random per-channel "
            "scale and shift after each BatchNorm, resampled every step).",
            ("none", "batchnorm"),
            RunConfig(
                activation="relu",
                init="kaiming",
                lr=0.1,
                steps=1000,
                eval_every=250,
                probe_every=50,
                monitor=False,
            ),
            {"noise": (0.0, 1.0)},
            {"steps": 20, "probe_every": 10, "eval_every": 10, "train_size": 256, "test_size": 200},
            _smoothness_headline,
        ),
        Experiment(
            "batch-size-ddp",
            "The GroupNorm paper's real setting: 2 data-parallel processes with a small "
            "batch each, BatchNorm with per-process statistics vs SyncBatchNorm vs GroupNorm.",
            ("batchnorm", "sync_bn", "groupnorm"),
            dataclasses.replace(_CNN, nproc=2, epochs=2, lr_scaling=True, eval_every=10**9),
            {"batch_size": (2, 4, 8, 16)},
            {"epochs": 1, "train_size": 256, "test_size": 200},
            lambda store: _final(store, "batch_size"),
        ),
        Experiment(
            "cost",
            "Time per training step and activation memory per norm, same CNN and batch.",
            (
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
            ),
            dataclasses.replace(_CNN, channels=(16, 32), steps=60, eval_every=10**9, batch_size=64),
            {},
            {"steps": 5, "train_size": 256, "test_size": 100},
            _cost_headline,
        ),
        Experiment(
            "train-eval",
            "The accuracy gap between train-mode (batch statistics) and eval-mode "
            "inference, and its dependence on batch size.",
            ("batchnorm", "groupnorm"),
            dataclasses.replace(
                _CNN, epochs=2, lr_scaling=True, eval_every=10**9, train_mode_eval=True
            ),
            {"batch_size": (2, 4, 8, 32)},
            {"epochs": 1, "train_size": 256, "test_size": 200},
            _train_eval_headline,
        ),
    )
}


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        hint = did_you_mean(name, EXPERIMENTS)
        raise KeyError(f"unknown experiment {name!r}{hint} (available: {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[name]
