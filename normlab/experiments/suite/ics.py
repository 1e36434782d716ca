"""Internal covariate shift as Ioffe & Szegedy (2015) showed it (their Figure 1):
the 3x100 sigmoid MLP on MNIST, batch 60, small Gaussian initialization, with and
without BatchNorm: test accuracy over steps, and the 15/50/85th percentiles of
the last hidden layer's sigmoid input over training."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import analysis
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Expectation, Experiment


class InternalCovariateShift(Experiment):
    name = "ics"
    title = "Internal covariate shift: the BatchNorm paper's network"
    description = (
        "The BatchNorm paper's Figure 1: the 3x100 sigmoid MLP, batch 60, small Gaussian "
        "init, with and without BatchNorm: test accuracy over steps and the 15/50/85th "
        "percentiles of a last-layer sigmoid input."
    )
    question = (
        "Ioffe & Szegedy argued that each layer's input distribution drifts while earlier "
        "layers learn, and that BatchNorm removes that drift. Their network: 3 hidden layers "
        "of 100 sigmoids on MNIST, batch 60, small Gaussian initial weights. Below, the last "
        "hidden layer's sigmoid input early and late in training, its 15th/50th/85th "
        "percentiles over training (their Figure 1 b, c), and test accuracy over steps."
    )
    default_norms = ("none", "batchnorm")
    base = RunConfig(steps=3000, eval_every=100, lr=0.5, init_std=0.1)
    quick = {"steps": 300, "eval_every": 50, "train_size": 1000}
    seeds = 3
    full = {"steps": 50000, "eval_every": 1000}
    section = "problem"
    order = 10

    def check(self, config: RunConfig) -> None:
        self.requires(config.monitor, "needs monitor=True (it follows activations)")
        self.requires(
            config.activation in ("sigmoid", "tanh"),
            f"follows a sigmoid or tanh input; activation={config.activation!r} has none",
        )

    def headline(self, store) -> pd.DataFrame:
        """Per norm (mean over seeds, with min and max of the accuracies): test accuracy
        at the first evaluation and at the end; the last hidden layer's sigmoid input:
        its mean and std at the first and last record, and the drift (last minus first)
        of its 15/50/85th percentiles; the mean |change| of every sigmoid input's mean
        and std over training."""
        rows = []
        for _, run in store.summaries().iterrows():
            acc = analysis.metric_series(store.metrics(run.run_id), "test_acc")
            early, final = analysis.first_last(acc)
            monitor = store.monitor(run.run_id)
            sites = analysis.saturating_sites(monitor)
            row = {"norm": run.norm, "early_test_acc": early, "final_test_acc": final}
            row |= dict.fromkeys(LAST_LAYER, math.nan)
            if sites:
                last = analysis.site_stats(monitor, sites[-1])
                for q in ("mean", "std"):
                    row[f"{q}_first"], row[f"{q}_last"] = analysis.first_last(last[q].dropna())
                for q in ("p15", "p50", "p85"):
                    first, final_q = analysis.first_last(last[q].dropna())
                    row[f"{q}_drift"] = final_q - first
                for q in ("mean", "std"):
                    moved = [
                        abs(b - a) for a, b in map(analysis.first_last, _moved(monitor, sites, q))
                    ]
                    row[f"layers_{q}_drift"] = analysis.nanmean(moved)
            rows.append(row)
        if not rows:
            return pd.DataFrame(columns=["norm", "early_test_acc", "final_test_acc", *LAST_LAYER])
        frame = pd.DataFrame(rows)
        table = frame.groupby("norm").mean()
        for column in ("early_test_acc", "final_test_acc"):
            table[f"{column}_min"] = frame.groupby("norm")[column].min()
            table[f"{column}_max"] = frame.groupby("norm")[column].max()
        table["seeds"] = frame.groupby("norm").size()
        return table.reset_index()

    def figures(self, store, headline):
        return [
            (
                _drift_figure(store),
                "The last hidden layer's sigmoid input, seed 0: its distribution at the "
                "first and last record (top), its percentiles over training (bottom).",
            ),
            (
                _colorful_figure(store),
                'fastai\'s "colorful dimension" of the same input, seed 0: at every recorded '
                "step (x) the histogram of its values (y, the same bins in both panels), the "
                "colour the fraction of the values in each bin on a log scale. A distribution "
                "that drifts draws a band that moves or widens; a steady one, a level band.",
            ),
            (_accuracy_figure(store), "Test accuracy over training steps."),
        ]

    def finding(self, headline: pd.DataFrame) -> str:
        h = headline.set_index("norm")
        parts = [
            f"{norm}: the last hidden layer's sigmoid input moved from mean {r.mean_first:.2f}, "
            f"std {r.std_first:.2f} to mean {r.mean_last:.2f}, std {r.std_last:.2f}; test "
            f"accuracy {_acc(r, 'early')} at the first evaluation, {_acc(r, 'final')} at the end"
            for norm, r in h.iterrows()
        ]
        text = "; ".join(parts) + "." if parts else ""
        if {"none", "batchnorm"} <= set(h.index):
            bn, plain = h.loc["batchnorm"], h.loc["none"]
            steadier = _steadier(bn, plain)
            text += (
                f" Both widened: std {bn.std_first:.2f} → {bn.std_last:.2f} with BatchNorm, "
                f"{plain.std_first:.2f} → {plain.std_last:.2f} without; the median moved "
                f"{bn.p50_drift:+.2f} with BatchNorm, {plain.p50_drift:+.2f} without. "
                + (
                    "BatchNorm held the distribution steadier (smaller change of both)."
                    if steadier
                    else "BatchNorm did not hold the distribution steadier here — its learned "
                    "scale γ widens what the sigmoid sees."
                )
            )
            for when in ("early", "final"):
                a, b = _range(bn, when), _range(plain, when)
                if a[0] > b[1] or b[0] > a[1]:
                    better = (
                        "BatchNorm"
                        if bn[f"{when}_test_acc"] > plain[f"{when}_test_acc"]
                        else "no normalization"
                    )
                    text += (
                        f" {when.capitalize()} accuracy: {better} is ahead beyond the seed spread."
                    )
                else:
                    text += f" {when.capitalize()} accuracy: no difference beyond the seed spread."
        return text

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        h = headline.set_index("norm")
        if not {"none", "batchnorm"} <= set(h.index):
            return []
        bn, plain = h.loc["batchnorm"], h.loc["none"]
        a, b = _range(bn, "early"), _range(plain, "early")
        several = bn.seeds > 1 and plain.seeds > 1
        return [
            Expectation(
                "BatchNorm reaches a higher accuracy early in training (Ioffe & Szegedy, 2015, "
                "Figure 1a)",
                (a[0] > b[1]) if several else None,
                f"first evaluation: batchnorm {_acc(bn, 'early')}, none {_acc(plain, 'early')}",
            ),
            Expectation(
                "With BatchNorm the last hidden layer's sigmoid input keeps its distribution "
                "while without it the distribution drifts (Figure 1b, c)",
                _steadier(bn, plain),
                f"std {bn.std_first:.2f} → {bn.std_last:.2f} with batchnorm, "
                f"{plain.std_first:.2f} → {plain.std_last:.2f} without; median drift "
                f"{bn.p50_drift:+.2f} and {plain.p50_drift:+.2f}",
            ),
        ]

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
        ordered = table["steps to 90%"].dropna().sort_values()
        unique = len(ordered) > 1 and ordered.iloc[0] < ordered.iloc[1]
        table["remark"] = [
            "fastest to 90% accuracy" if unique and s == ordered.iloc[0] else ""
            for s in table["steps to 90%"]
        ]
        return table


LAST_LAYER = (
    "mean_first",
    "mean_last",
    "std_first",
    "std_last",
    "p15_drift",
    "p50_drift",
    "p85_drift",
    "layers_mean_drift",
    "layers_std_drift",
)


def _steadier(bn, plain) -> bool:
    """BatchNorm's input moved less: a smaller absolute change of std and of median."""
    return abs(bn.std_last - bn.std_first) < 0.8 * abs(plain.std_last - plain.std_first) and abs(
        bn.p50_drift
    ) < abs(plain.p50_drift)


def _range(row, when: str) -> tuple[float, float]:
    return row[f"{when}_test_acc_min"], row[f"{when}_test_acc_max"]


def _acc(row, when: str) -> str:
    low, high = _range(row, when)
    mean = row[f"{when}_test_acc"]
    return f"{mean:.3f}" if row.seeds < 2 else f"{mean:.3f} ({low:.3f}–{high:.3f})"


def _moved(monitor, sites, quantity):
    """Each site's recorded ``quantity`` over steps, finite records only."""
    for site in sites:
        yield analysis.site_stats(monitor, site)[quantity].dropna()


def _drift_figure(store):
    """Per norm: the last sigmoid input's distribution early vs late (mean, std
    annotated), and its 15/50/85th percentiles over training."""
    from normlab.experiments.plots import density, plt

    table = store.summaries()
    table = table[table.seed == table.seed.min()] if not table.empty else table
    runs = [r for _, r in table.sort_values("norm").drop_duplicates("norm").iterrows()]
    runs = [(r, store.monitor(r.run_id)) for r in runs]
    runs = [(r, m) for r, m in runs if analysis.last_sigmoid_site(m) is not None]
    if not runs:
        return None
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.2), squeeze=False)
    for col, (run, monitor) in enumerate(runs):
        sites = analysis.saturating_sites(monitor)
        site = sites[-1]
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
            ax.set_title(f"{run.norm}: hidden layer {len(sites)}'s sigmoid input", fontsize=10)
            ax.set_xlabel("sigmoid input (pre-activation)")
            ax.set_ylabel("density")
            ax.legend(fontsize=8)
        else:
            ax.axis("off")
        band = axes[1, col]
        band.fill_between(stats.index, stats["p15"], stats["p85"], alpha=0.25, label="15th-85th")
        band.plot(stats.index, stats["p50"], label="median")
        band.set_xlabel("step")
        band.set_title(f"{run.norm}: its 15th, 50th, 85th percentiles", fontsize=10)
        band.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _colorful_figure(store):
    """Per norm (seed 0): the last sigmoid input's histogram at every recorded step,
    stacked over training, on one value range for all panels."""
    from normlab.monitor.pictures import colorful_dimension

    table = store.summaries()
    if table.empty:
        return None
    table = table[table.seed == table.seed.min()]
    panels = []
    for _, run in table.sort_values("norm").drop_duplicates("norm").iterrows():
        sites = analysis.saturating_sites(store.monitor(run.run_id))
        sketches = store.sketches(run.run_id)
        if sites and sketches is not None and (sketches.module == sites[-1]).any():
            title = f"{run.norm}: hidden layer {len(sites)}'s sigmoid input"
            panels.append((title, sketches, sites[-1]))
    if not panels:
        return None
    return colorful_dimension(panels, share_range=True)


def _accuracy_figure(store):
    """Test accuracy over steps per norm: the mean over seeds, the band min to max."""
    from normlab.experiments.plots import plt

    table = store.summaries()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for norm, runs in table.groupby("norm"):
        curves = pd.concat(
            [analysis.metric_series(store.metrics(r), "test_acc") for r in runs.run_id], axis=1
        )
        (line,) = ax.plot(curves.index, curves.mean(axis=1), marker=".", label=norm)
        if curves.shape[1] > 1:
            ax.fill_between(
                curves.index,
                curves.min(axis=1),
                curves.max(axis=1),
                alpha=0.2,
                color=line.get_color(),
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.legend(title="mean; band: seeds' range")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


EXPERIMENT = InternalCovariateShift()
