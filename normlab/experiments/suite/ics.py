"""Internal covariate shift as Ioffe & Szegedy (2015) showed it (their Figure 1):
the 3x100 sigmoid MLP on MNIST, batch 60, small Gaussian initial weights, with and
without BatchNorm: test accuracy over steps (evaluated densely early), and the
15/50/85th percentiles of the last hidden layer's sigmoid input over training.

"Small random Gaussian values" is all the paper says of the initialization. We read
it as N(0, 0.01²), the conventional "small" Gaussian of the time (Hinton's 2010
practical guide; AlexNet), and run N(0, 0.1²) as the control: 0.1 is 1/√fan-in for a
100-unit layer, an ordinary scale at which the plain network is already well
conditioned, so it cannot show what the figure is about."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import analysis, describe, stats
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Expectation, Experiment, Recipe

THRESHOLD = 0.9  # "steps to 90% test accuracy": how fast a network trains


class InternalCovariateShift(Experiment):
    name = "ics"
    title = "Internal covariate shift: the BatchNorm paper's network"
    description = (
        "The BatchNorm paper's Figure 1: the 3x100 sigmoid MLP, batch 60, small Gaussian "
        "init (and an ordinary one as control), with and without BatchNorm: test accuracy "
        "over steps and the percentiles of a last-layer sigmoid input."
    )
    default_norms = ("none", "batchnorm")
    base = RunConfig(steps=3000, eval_every=250, eval_schedule="log", lr=0.5)
    grid = {"init_std": (0.01, 0.1)}
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

    def lead(self, runs: pd.DataFrame) -> str:
        stds = " and ".join(f"N(0, {s:g}²)" for s in describe.values(runs, "init_std"))
        return (
            "Ioffe & Szegedy argued that each layer's input distribution drifts while earlier "
            "layers learn, and that BatchNorm removes that drift. We train their network — "
            f"{describe.model(runs)}, {describe.training(runs)} — on {describe.data(runs)}, "
            f'from {stds} initial weights (the paper says only "small random Gaussian '
            f'values"), over {describe.seed_count(runs)}. Below: test accuracy over steps '
            "(their Figure 1a, evaluated densely early), and the last hidden layer's "
            "sigmoid input, its 15th/50th/85th percentiles over training (Figure 1b, c)."
        )

    def recipe(self, runs: pd.DataFrame) -> list[Recipe]:
        run = describe.first(runs)
        stds = ", ".join(f"{s:g}" for s in describe.values(runs, "init_std"))
        epochs = run.steps_planned * run.batch_size / run.train_examples
        return [
            Recipe(
                "model",
                "3 fully connected hidden layers of 100 sigmoids, BatchNorm before each "
                "sigmoid (§4.1)",
                describe.model(runs) + ", the norm before each activation",
            ),
            Recipe(
                "data",
                "MNIST, 60,000 training images (28×28 binary input); held-out test data",
                describe.data(runs) + ", standardized grey levels",
                "only 5,000 MNIST digits ship offline: the run makes "
                f"{epochs:.0f} passes over its training set where the paper made 50, so late "
                "training is deep in overfitting",
            ),
            Recipe(
                "initialization",
                '"small random Gaussian values"; no scale given',
                f"N(0, σ²), σ = {stds}",
                "0.01 is the usual meaning of small then (Hinton 2010; AlexNet); 0.1 "
                "(1/√fan-in of a 100-unit layer) is the control",
            ),
            Recipe(
                "optimizer, learning rate",
                "not stated",
                describe.training(runs),
                "plain SGD at one learning rate for both networks, as nothing else is given",
            ),
            Recipe(
                "batch, steps",
                "60 examples per step, 50,000 steps",
                f"{run.batch_size} per step, {describe.number(run.steps_planned)} steps",
            ),
            Recipe(
                "evaluation",
                "test accuracy over training (Figure 1a; interval not stated)",
                "the whole test split, densely (log-spaced) early, then every "
                f"{describe.number(run.eval_every)} steps",
            ),
            Recipe(
                "what is followed",
                'the input of "one typical" sigmoid of the last hidden layer, '
                "15/50/85th percentiles",
                "every input of the last hidden layer's sigmoids together (the Monitor's "
                "percentiles of all 100 units' inputs)",
                "a pooled distribution drifts like its units' when they move together; a "
                "single unit can move more",
            ),
        ]

    def headline(self, store) -> pd.DataFrame:
        """Per norm and initial scale, over seeds (mean and sd): the final test accuracy
        (median of the last tenth's evaluations), log10 of the steps to 90% test
        accuracy (∞ where a seed never got there), and the last hidden layer's
        sigmoid input: its mean and std at the first and the last record, the shift of
        its mean and the change of its std between them, and the 15/50/85th
        percentiles' drift."""
        rows = [self._per_seed(store, run) for _, run in store.summaries().iterrows()]
        if not rows:
            return pd.DataFrame(columns=["norm", "init_std", "seeds"])
        frame = pd.DataFrame(rows)
        columns = [c for c in frame.columns if c not in ("norm", "init_std", "seed", "reached")]
        table = analysis.seed_table(frame, ["norm", "init_std"], columns)
        reached = frame.groupby(["norm", "init_std"]).reached
        table["reached_90"] = reached.sum().to_numpy()
        return table

    @staticmethod
    def _per_seed(store, run) -> dict:
        acc = analysis.metric_series(store.metrics(run.run_id), "test_acc")
        hit = acc[acc >= THRESHOLD]
        row = {
            "norm": run.norm,
            "init_std": run.init_std,
            "seed": run.seed,
            "acc": run.final_test_acc_tail,
            "reached": len(hit) > 0,
            "log_steps_to_90": math.log10(hit.index[0]) if len(hit) else math.inf,
        }
        monitor = store.monitor(run.run_id)
        sites = analysis.saturating_sites(monitor)
        if sites:
            last = analysis.site_stats(monitor, sites[-1])
            for q in ("mean", "std", "p15", "p50", "p85"):
                row[f"{q}_first"], row[f"{q}_last"] = analysis.first_last(last[q].dropna())
            row["mean_shift"] = abs(row["mean_last"] - row["mean_first"])
            row["std_change"] = row["std_last"] - row["std_first"]
            row["abs_std_change"] = abs(row["std_change"])
        return row

    def figures(self, store, headline):
        anchor = _anchor(headline)
        return [
            (
                _drift_figure(store, anchor),
                f"The last hidden layer's sigmoid input (initial weights N(0, {anchor:g}²), "
                "seed 0): its distribution at the first and last record (top; log density, "
                "so a narrow start does not hide the end), its percentiles over training "
                "(bottom).",
            ),
            (
                _colorful_figure(store, anchor),
                'fastai\'s "colorful dimension" of the same input, seed 0: at every recorded '
                "step (x) the histogram of its values (y, the same bins in every panel), the "
                "colour the fraction of the values in each bin on a log scale. A drifting "
                "distribution draws a band that moves or widens; a steady one, a level band.",
            ),
            (
                _accuracy_figure(store),
                "Test accuracy over training steps (log scale), one panel per initial "
                "scale; line: mean over seeds, band: the seeds' range.",
            ),
        ]

    def finding(self, headline: pd.DataFrame) -> str:
        parts = []
        for _, r in headline.sort_values(["init_std", "norm"]).iterrows():
            reached = (
                f"reached {THRESHOLD:.0%} test accuracy at step ~{10**r.log_steps_to_90:,.0f}"
                if r.reached_90 == r.seeds
                else f"reached {THRESHOLD:.0%} in {int(r.reached_90)} of {int(r.seeds)} seeds"
            )
            parts.append(
                f"{_label(r.norm)}, N(0, {r.init_std:g}²): {reached}, final accuracy "
                f"{_estimate(r, 'acc')}; the sigmoid input went from mean {r.mean_first:.2f}, "
                f"std {r.std_first:.2f} to mean {r.mean_last:.2f}, std {r.std_last:.2f}"
            )
        return "; ".join(parts) + "." if parts else ""

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        rows = _pair(headline, _anchor(headline))
        if rows is None:
            return []
        bn, plain = rows
        scale = f"initial weights N(0, {bn.init_std:g}²)"
        claims = [
            _faster(bn, plain, scale),
            _more_accurate(bn, plain, scale),
            _steadier(bn, plain, scale),
        ]
        control = _pair(headline, float(headline.init_std.max()))
        if control is None or control[0].init_std == bn.init_std:
            return claims
        at = [
            _faster(*control, ""),
            _more_accurate(*control, ""),
            _steadier(*control, ""),
        ]
        words = {True: "it holds", False: "it does not", None: "not decided"}
        return [
            Expectation(
                c.claim,
                c.held,
                c.measured,
                (c.note + "; " if c.note else "")
                + f"from the ordinary N(0, {control[0].init_std:g}²) init (the control): "
                + f"{words[a.held]} ({a.measured.split(': ', 1)[-1]})",
            )
            for c, a in zip(claims, at, strict=True)
        ]

    def summary(self, store, headline) -> pd.DataFrame:
        anchor = _anchor(headline)
        rows = headline[headline.init_std == anchor]
        return pd.DataFrame(
            {
                "norm": rows.norm,
                f"steps to 90% (ics, N(0, {anchor:g}²) init)": [
                    10**s if math.isfinite(s) else math.nan for s in rows.log_steps_to_90
                ],
                "remark": "",
            }
        )


def _anchor(headline: pd.DataFrame) -> float:
    """The smallest initial scale run: the paper's "small" Gaussian."""
    return float(headline.init_std.min()) if len(headline) else math.nan


def _pair(headline: pd.DataFrame, init_std: float):
    table = headline[headline.init_std == init_std].set_index("norm")
    if not {"none", "batchnorm"} <= set(table.index):
        return None
    return table.loc["batchnorm"], table.loc["none"]


def _label(norm: str) -> str:
    return {"none": "no normalization", "batchnorm": "BatchNorm"}.get(norm, norm)


def _estimate(row, column: str) -> str:
    return str(stats.summarize(row[column], row[f"{column}_sd"], int(row.seeds)))


def _enough(*rows) -> bool:
    return all(r.seeds >= stats.MIN_SEEDS for r in rows)


def _faster(bn, plain, scale: str) -> Expectation:
    claim = "BatchNorm trains faster (Ioffe & Szegedy, 2015, Figure 1a)"
    measured = (
        f"steps to {THRESHOLD:.0%} test accuracy, {scale}: BatchNorm "
        f"{_steps(bn)}, no normalization {_steps(plain)}"
    )
    if not _enough(bn, plain):
        return Expectation(claim, None, measured, f"needs {stats.MIN_SEEDS} seeds")
    if bn.reached_90 == bn.seeds and plain.reached_90 < plain.seeds:
        note = "no normalization did not get there in every seed"
        return Expectation(claim, True, measured, note)
    if bn.reached_90 < bn.seeds:  # BatchNorm itself did not get there every time
        return Expectation(claim, False if plain.reached_90 == plain.seeds else None, measured)
    gap = stats.row_difference(bn, plain, "log_steps_to_90", margin=0.05)
    held = {stats.LOWER: True, stats.HIGHER: False, stats.SAME: False}.get(gap.verdict)
    note = "a log10 ratio within ±0.05 (12%) counts as the same speed"
    return Expectation(claim, held, measured + f"; log10 ratio {gap}", note)


def _steps(row) -> str:
    if row.reached_90 < row.seeds:
        return f"not reached in {int(row.seeds - row.reached_90)} of {int(row.seeds)} seeds"
    return f"~{10**row.log_steps_to_90:,.0f}"


def _more_accurate(bn, plain, scale: str) -> Expectation:
    claim = "BatchNorm ends at a higher test accuracy (Figure 1a)"
    gap = stats.row_difference(bn, plain, "acc")
    measured = (
        f"final accuracy, {scale}: BatchNorm {_estimate(bn, 'acc')}, no normalization "
        f"{_estimate(plain, 'acc')}; difference {gap}"
    )
    if not _enough(bn, plain):
        return Expectation(claim, None, measured, f"needs {stats.MIN_SEEDS} seeds")
    held = {stats.HIGHER: True, stats.LOWER: False, stats.SAME: False}.get(gap.verdict)
    note = {
        stats.SAME: f"the same within ±{stats.MARGIN:g}",
        stats.UNRESOLVED: "the seeds do not resolve the difference",
    }.get(gap.verdict, "")
    return Expectation(claim, held, measured, note)


def _steadier(bn, plain, scale: str) -> Expectation:
    """BatchNorm's sigmoid input moves less: its mean shifts less and its std changes
    less (both differences resolved by the seeds)."""
    claim = (
        "Without BatchNorm the sigmoid input's distribution changes in mean and variance; "
        "with it, it is much more stable (Figure 1b, c)"
    )
    mean_gap = stats.row_difference(bn, plain, "mean_shift", margin=0.05)
    std_gap = stats.row_difference(bn, plain, "abs_std_change", margin=0.05)
    measured = (
        f"{scale}: mean {bn.mean_first:+.2f} → {bn.mean_last:+.2f} with BatchNorm, "
        f"{plain.mean_first:+.2f} → {plain.mean_last:+.2f} without (|shift| difference "
        f"{mean_gap}); std {bn.std_first:.2f} → {bn.std_last:.2f} with BatchNorm, "
        f"{plain.std_first:.2f} → {plain.std_last:.2f} without (|change| difference {std_gap})"
    )
    note = "differences within ±0.05 count as the same"
    if bn.std_last > 1.2 * bn.std_first:
        note += (
            "; BatchNorm fixes the mean and variance over the batch before its learned "
            "scale γ and shift β, and the sigmoid sees γx̂ + β, which widens as γ grows"
        )
    if not _enough(bn, plain):
        return Expectation(claim, None, measured, f"needs {stats.MIN_SEEDS} seeds")
    verdicts = {mean_gap.verdict, std_gap.verdict}
    if verdicts == {stats.LOWER}:
        held = True
    elif verdicts & {stats.HIGHER, stats.SAME}:
        held = False
    else:
        held = None
    return Expectation(claim, held, measured, note)


def _first_seed(store, init_std: float) -> list:
    table = store.summaries()
    if table.empty:
        return []
    table = table[(table.init_std == init_std) & (table.seed == table.seed.min())]
    return [r for _, r in table.sort_values("norm").drop_duplicates("norm").iterrows()]


def _drift_figure(store, init_std: float):
    """Per norm: the last sigmoid input's distribution early vs late (mean, std
    annotated), and its 15/50/85th percentiles over training."""
    from normlab.experiments.plots import density, plt

    runs = [(r, store.monitor(r.run_id)) for r in _first_seed(store, init_std)]
    runs = [(r, m) for r, m in runs if analysis.last_sigmoid_site(m) is not None]
    if not runs:
        return None
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.2), squeeze=False)
    for col, (run, monitor) in enumerate(runs):
        sites = analysis.saturating_sites(monitor)
        site = sites[-1]
        stats_ = analysis.site_stats(monitor, site)
        sketches = store.sketches(run.run_id)
        ax = axes[0, col]
        steps = [] if sketches is None else sorted(sketches[sketches.module == site].step.unique())
        for step, color in ((steps[0], "#888"), (steps[-1], "#d62728")) if steps else ():
            x, d = density(sketches, site, step)
            mean, std = stats_.loc[step, "mean"], stats_.loc[step, "std"]
            label = f"step {step}: mean {mean:.2f}, std {std:.2f}"
            ax.step(x, d, where="post", color=color, label=label)
        if steps:
            title = f"{_label(run.norm)}: hidden layer {len(sites)}'s sigmoid input"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("sigmoid input (pre-activation)")
            ax.set_ylabel("density (log)")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.axis("off")
        band = axes[1, col]
        band.fill_between(stats_.index, stats_["p15"], stats_["p85"], alpha=0.25, label="15th–85th")
        band.plot(stats_.index, stats_["p50"], label="median")
        band.set_xlabel("step")
        band.set_title(f"{_label(run.norm)}: its 15th, 50th, 85th percentiles", fontsize=10)
        band.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _colorful_figure(store, init_std: float):
    """Per norm (seed 0): the last sigmoid input's histogram at every recorded step,
    stacked over training, on one value range for all panels."""
    from normlab.monitor.pictures import colorful_dimension

    panels = []
    for run in _first_seed(store, init_std):
        sites = analysis.saturating_sites(store.monitor(run.run_id))
        sketches = store.sketches(run.run_id)
        if sites and sketches is not None and (sketches.module == sites[-1]).any():
            title = f"{_label(run.norm)}: hidden layer {len(sites)}'s sigmoid input"
            panels.append((title, sketches, sites[-1]))
    if not panels:
        return None
    return colorful_dimension(panels, share_range=True)


def _accuracy_figure(store):
    """Test accuracy over steps per norm, one panel per initial scale: the mean over
    seeds, the band min to max; log-scaled steps show the early phase."""
    from normlab.experiments.plots import plt

    table = store.summaries()
    if table.empty:
        return None
    scales = sorted(table.init_std.unique())
    fig, axes = plt.subplots(
        1, len(scales), figsize=(5.2 * len(scales), 3.8), squeeze=False, sharey=True
    )
    for ax, scale in zip(axes[0], scales, strict=True):
        for norm, runs in table[table.init_std == scale].groupby("norm"):
            curves = pd.concat(
                [analysis.metric_series(store.metrics(r), "test_acc") for r in runs.run_id],
                axis=1,
            )
            (line,) = ax.plot(curves.index, curves.mean(axis=1), label=_label(norm))
            if curves.shape[1] > 1:
                ax.fill_between(
                    curves.index,
                    curves.min(axis=1),
                    curves.max(axis=1),
                    alpha=0.2,
                    color=line.get_color(),
                )
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"initial weights N(0, {scale:g}²)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, 0].legend(loc="lower right")
    fig.tight_layout()
    return fig


EXPERIMENT = InternalCovariateShift()
