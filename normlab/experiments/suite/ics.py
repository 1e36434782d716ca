"""Internal covariate shift as Ioffe & Szegedy (2015) showed it (their Figure 1):
the 3x100 sigmoid MLP on MNIST, batch 60, small Gaussian initialization, with and
without BatchNorm: test accuracy over steps, and the 15/50/85th percentiles of
the last hidden layer's sigmoid input over training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from normlab.experiments import analysis
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Experiment


class InternalCovariateShift(Experiment):
    name = "ics"
    title = "Why: internal covariate shift"
    description = (
        "The BatchNorm paper's Figure 1: the 3x100 sigmoid MLP, batch 60, small Gaussian "
        "init, with and without BatchNorm: test accuracy over steps and the 15/50/85th "
        "percentiles of a last-layer sigmoid input."
    )
    question = (
        "The distribution of the last hidden layer's sigmoid input early and late in "
        "training, its 15th/50th/85th percentiles over training (the BatchNorm paper's "
        "Figure 1 b/c), and test accuracy over training steps."
    )
    default_norms = ("none", "batchnorm")
    base = RunConfig(steps=3000, eval_every=100, lr=0.5, init_std=0.1)
    quick = {"steps": 300, "eval_every": 50, "train_size": 1000}
    order = 10

    def check(self, config: RunConfig) -> None:
        self.requires(config.monitor, "needs monitor=True (it follows activations)")
        self.requires(
            config.activation in ("sigmoid", "tanh"),
            f"follows a sigmoid or tanh input; activation={config.activation!r} has none",
        )

    def headline(self, store) -> pd.DataFrame:
        """Per norm: early and final accuracy, the drift of the 15/50/85th percentiles
        of the last sigmoid input (last minus first record), and the mean absolute
        change of every sigmoid input's mean and std over training."""
        rows = []
        for _, run in store.summaries().iterrows():
            acc = analysis.metric_series(store.metrics(run.run_id), "test_acc")
            early, final = analysis.first_last(acc)
            monitor = store.monitor(run.run_id)
            sites = analysis.saturating_sites(monitor)
            drift = {f"{q}_drift": math.nan for q in ("p15", "p50", "p85")}
            mean_drift = std_drift = math.nan
            if sites:
                last = analysis.site_stats(monitor, sites[-1])[["p15", "p50", "p85"]].dropna()
                if len(last):
                    drift = {q: last[q[:3]].iloc[-1] - last[q[:3]].iloc[0] for q in drift}
                change = {
                    q: [abs(b - a) for a, b in map(analysis.first_last, _moved(monitor, sites, q))]
                    for q in ("mean", "std")
                }
                mean_drift = analysis.nanmean(change["mean"])
                std_drift = analysis.nanmean(change["std"])
            rows.append(
                {
                    "norm": run.norm,
                    "early_test_acc": early,
                    "final_test_acc": final,
                    **drift,
                    "abs_drift": analysis.nanmean(np.abs(list(drift.values()))),
                    "layers_mean_drift": mean_drift,
                    "layers_std_drift": std_drift,
                }
            )
        columns = ["norm", "early_test_acc", "final_test_acc", "p15_drift", "p50_drift"]
        if not rows:
            return pd.DataFrame(columns=columns)
        return pd.DataFrame(rows).groupby("norm").mean().reset_index()

    def figures(self, store, headline):
        return [
            (
                _drift_figure(store),
                "The last hidden layer's sigmoid input: its distribution early and late "
                "(top), its percentiles over training (bottom).",
            ),
            (_accuracy_figure(store), "Test accuracy over training steps."),
        ]

    def finding(self, headline: pd.DataFrame) -> str:
        parts = [
            f"{r.norm}: {r.early_test_acc:.3f} test accuracy after the first evaluation, "
            f"sigmoid inputs' means moved {r.layers_mean_drift:.2f} and stds "
            f"{r.layers_std_drift:.2f} over training"
            for r in headline.itertuples()
        ]
        return "; ".join(parts) + "." if parts else ""

    def summary(self, store, headline) -> pd.DataFrame:
        rows = []
        for _, run in store.summaries().iterrows():
            acc = analysis.metric_series(store.metrics(run.run_id), "test_acc")
            reached = acc[acc >= 0.9]
            rows.append(
                {
                    "norm": run.norm,
                    "final acc (ics)": run.final_test_acc,
                    "steps to 90%": float(reached.index[0]) if len(reached) else math.nan,
                }
            )
        table = pd.DataFrame(rows).groupby("norm").mean().reset_index()
        fastest = table["steps to 90%"].min()
        table["remark"] = [
            "fastest to 90% accuracy" if s <= fastest else "" for s in table["steps to 90%"]
        ]
        return table


def _moved(monitor, sites, quantity):
    """Each site's recorded ``quantity`` over steps, finite records only."""
    for site in sites:
        yield analysis.site_stats(monitor, site)[quantity].dropna()


def _drift_figure(store):
    """Per norm: the last sigmoid input's distribution early vs late (mean, std
    annotated), and its 15/50/85th percentiles over training."""
    from normlab.experiments.plots import density, plt

    table = store.summaries()
    runs = [r for _, r in table.sort_values("norm").drop_duplicates("norm").iterrows()]
    runs = [(r, store.monitor(r.run_id)) for r in runs]
    runs = [(r, m) for r, m in runs if analysis.last_sigmoid_site(m) is not None]
    if not runs:
        return None
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.2), squeeze=False)
    for col, (run, monitor) in enumerate(runs):
        site = analysis.last_sigmoid_site(monitor)
        stats = analysis.site_stats(monitor, site)
        sketches = store.sketches(run.run_id)
        ax = axes[0, col]
        steps = [] if sketches is None else sorted(sketches[sketches.module == site].step.unique())
        for step, color in ((steps[0], "#888"), (steps[-1], "#d62728")) if steps else ():
            x, d = density(sketches, site, step)
            mean, std = stats.loc[step, "mean"], stats.loc[step, "std"]
            label = f"step {step}: mean {mean:.2f}, std {std:.2f}"
            ax.step(x, d, where="post", color=color, label=label)
        if steps:
            ax.set_title(f"{run.norm}: input of sigmoid '{site}'")
            ax.set_xlabel("pre-activation")
            ax.legend(fontsize=8)
        else:
            ax.axis("off")
        band = axes[1, col]
        band.fill_between(stats.index, stats["p15"], stats["p85"], alpha=0.25, label="15th-85th")
        band.plot(stats.index, stats["p50"], label="median")
        band.set_xlabel("step")
        band.set_title(f"{run.norm}: percentiles over training")
        band.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _accuracy_figure(store):
    """Test accuracy over steps, one line per norm."""
    from normlab.experiments.plots import plt

    table = store.summaries()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for _, run in table.sort_values("norm").iterrows():
        acc = analysis.metric_series(store.metrics(run.run_id), "test_acc")
        ax.plot(acc.index, acc.to_numpy(), label=run.norm, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


EXPERIMENT = InternalCovariateShift()
