"""Santurkar et al. (2018), "How does batch normalization help optimization?":
internal covariate shift as the change of a layer's gradient when the layers
before it take their step (||G - G'|| and cos(G, G')), and the smoothness of the
loss landscape along the gradient (loss variation, gradient predictiveness,
effective beta-smoothness), with and without BatchNorm, and for "noisy"
BatchNorm (random per-channel scale and shift after each norm, every step)."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import plots
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Expectation, Experiment

MEASURES = {
    "ics_l2": "ICS ||G − G′|| (lower: less shift)",
    "ics_cosine": "ICS cos(G, G′)",
    "loss_variation": "loss variation (lower: smoother)",
    "gradient_predictiveness": "gradient change (lower: more predictive)",
    "beta_smoothness": "β-smoothness (lower: smoother)",
}


class Smoothness(Experiment):
    name = "smoothness"
    title = "Covariate shift and smoothness, measured as Santurkar et al. did"
    description = (
        "Santurkar et al.'s internal covariate shift and loss-landscape smoothness over "
        "training, with and without BatchNorm, and 'noisy' BatchNorm (random per-channel "
        "scale and shift after each BatchNorm, resampled every step)."
    )
    question = (
        "Santurkar et al.'s measures averaged over training: ICS of the deepest layer "
        "(||G − G′||, cos(G, G′)), loss variation and gradient change along the gradient "
        "(lower is smoother), and the final accuracy; noise > 0 is 'noisy BatchNorm'."
    )
    default_norms = ("none", "batchnorm")
    base = RunConfig(
        activation="relu",
        init="kaiming",
        lr=0.1,
        steps=1000,
        eval_every=250,
        probe_every=50,
        monitor=False,
    )
    grid = {"noise": (0.0, 1.0)}
    quick = {"steps": 20, "probe_every": 10, "eval_every": 10, "train_size": 256, "test_size": 200}
    seeds = 2
    full = {"steps": 5000, "probe_every": 250, "eval_every": 1000}
    section = "why"
    order = 15

    def keep(self, config: RunConfig) -> bool:
        """Noise is injected after normalization layers: without any, noise > 0 would
        repeat the noise-free run."""
        return config.noise == 0 or config.norm != "none"

    def check(self, config: RunConfig) -> None:
        self.requires(config.probe_every > 0, "needs probe_every > 0 (it runs the probes)")

    def headline(self, store) -> pd.DataFrame:
        """Per norm and noise level: the measures averaged over training, final accuracy."""
        rows = []
        for _, run in store.summaries().iterrows():
            means = store.metrics(run.run_id).groupby("metric").value.mean()
            ics = [m for m in means.index if m.startswith("ics_l2/")]
            row = {"norm": run.norm, "noise": run.noise}
            if ics:
                deepest = max(ics, key=lambda m: int(m.split("/")[1].split(".")[0]))
                row["ics_l2"] = means[deepest]
                row["ics_cosine"] = means[deepest.replace("ics_l2", "ics_cosine")]
            for key in ("loss_variation", "gradient_predictiveness", "beta_smoothness"):
                row[key] = means.get(key)
            row["test_acc"] = run.final_test_acc
            rows.append(row)
        if not rows:
            return pd.DataFrame(columns=["norm", "noise", *MEASURES, "test_acc"])
        frame = pd.DataFrame(rows)
        table = frame.groupby(["norm", "noise"]).mean()
        table["seeds"] = frame.groupby(["norm", "noise"]).size()
        return table.reset_index()

    def figures(self, store, headline):
        frame = headline.assign(
            label=[f"{r.norm}, noise {r.noise:g}" for r in headline.itertuples()]
        )
        columns = {k: v for k, v in MEASURES.items() if k in frame and k != "ics_cosine"}
        caption = "Santurkar et al.'s measures, averaged over the probes of each run."
        return [(plots.bars(frame, "label", columns), caption)]

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        h = headline.set_index(["norm", "noise"])
        out = []
        if ("batchnorm", 0.0) in h.index and ("none", 0.0) in h.index:
            bn, plain = h.loc[("batchnorm", 0.0)], h.loc[("none", 0.0)]
            out.append(
                Expectation(
                    "BatchNorm makes the loss landscape smoother: the loss and its gradient "
                    "change less along the gradient (Santurkar et al., 2018, Figure 4)",
                    bn.loss_variation < 0.8 * plain.loss_variation
                    and bn.gradient_predictiveness < 0.8 * plain.gradient_predictiveness,
                    f"loss variation {bn.loss_variation:.3g} with batchnorm, "
                    f"{plain.loss_variation:.3g} without; gradient change "
                    f"{bn.gradient_predictiveness:.3g} and {plain.gradient_predictiveness:.3g} "
                    f"(β-smoothness {bn.beta_smoothness:.3g} and {plain.beta_smoothness:.3g}); "
                    f"means of {int(bn.seeds)} seed(s)",
                )
            )
            out.append(
                Expectation(
                    "BatchNorm does not reduce internal covariate shift measured as the change "
                    "of a layer's gradient when the layers before it step (Santurkar et al., "
                    "2018, Figure 3)",
                    bn.ics_l2 >= 0.8 * plain.ics_l2,
                    f"||G − G′|| {bn.ics_l2:.3g} with batchnorm, {plain.ics_l2:.3g} without; "
                    f"cos(G, G′) {bn.ics_cosine:.3g} and {plain.ics_cosine:.3g}",
                )
            )
        noisy = [k for k in h.index if k[0] == "batchnorm" and k[1] > 0]
        if ("batchnorm", 0.0) in h.index and noisy:
            bn, nz = h.loc[("batchnorm", 0.0)], h.loc[noisy[0]]
            out.append(
                Expectation(
                    "Noisy BatchNorm trains about as well as BatchNorm although its internal "
                    "covariate shift is larger (Santurkar et al., 2018, Figure 2; our noise: "
                    f"per-channel scale U(1, {1 + noisy[0][1]:g}), shift U(±{noisy[0][1]:g}), "
                    "possibly stronger than theirs)",
                    abs(nz.test_acc - bn.test_acc) <= 0.02 and nz.ics_l2 > bn.ics_l2,
                    f"test accuracy {nz.test_acc:.3f} noisy, {bn.test_acc:.3f} plain; ICS "
                    f"||G − G′|| {nz.ics_l2:.3g} noisy, {bn.ics_l2:.3g} plain",
                )
            )
        return out

    def finding(self, headline: pd.DataFrame) -> str:
        parts = [
            f"{r.norm} (noise {r.noise:g}): ICS ||G − G′|| {r.ics_l2:.3g}, loss variation "
            f"{r.loss_variation:.3g}, gradient change {r.gradient_predictiveness:.3g}, "
            f"β-smoothness {r.beta_smoothness:.3g} (lower is smoother), "
            f"test accuracy {r.test_acc:.3f}"
            for r in headline.itertuples()
        ]
        return "; ".join(parts) + "." if parts else ""


EXPERIMENT = Smoothness()
