"""Normalization in a transformer: LayerNorm, RMSNorm and Dynamic Tanh (Zhu et
al., 2025: "Transformers without Normalization"), in pre-norm and post-norm
blocks of a small patch transformer on MNIST."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import analysis, describe, plots, stats
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Expectation, Experiment, Recipe


class Transformer(Experiment):
    name = "transformer"
    title = "In a transformer: LayerNorm, RMSNorm, DyT; pre- and post-norm"
    description = (
        "LayerNorm vs RMSNorm vs DyT, pre-norm vs post-norm blocks, on a small patch "
        "transformer (MNIST, 7x7 patches)."
    )
    default_norms = ("layernorm", "rmsnorm", "dyt")
    base = RunConfig(
        model="transformer",
        optimizer="adam",
        lr=1e-3,
        init="default",
        depth=2,
        width=64,
        batch_size=64,
        steps=300,
        eval_every=None,
        monitor=False,
    )
    grid = {"norm_position": ("pre", "post")}
    quick = {"steps": 20, "depth": 2, "train_size": 256, "test_size": 200}
    full = {"steps": 1500, "depth": 4}
    full_norms = ("layernorm", "rmsnorm", "dyt", "derf")  # Derf: DyT's successor
    seeds = 2
    order = 70

    def lead(self, runs: pd.DataFrame) -> str:
        return (
            "Transformers normalize each token over its features. Does RMSNorm (no mean) "
            "match LayerNorm, and does Dynamic Tanh (an element-wise tanh, no statistics at "
            "all) match them, as Zhu et al. (2025) report? Final test accuracy of "
            f"{describe.model(runs)} trained with {describe.training(runs)} on "
            f"{describe.data(runs)}, {describe.seed_count(runs)}, with the norm before "
            "each sublayer (pre) or after each residual addition (post): a small, short "
            "run, where Zhu et al. trained large models to convergence."
        )

    def recipe(self, runs: pd.DataFrame) -> list[Recipe]:
        return [
            Recipe(
                "models",
                "ViT, ConvNeXt, DiT, LLaMA 7B–70B and others, each with its published recipe",
                describe.model(runs),
                "a CPU budget: a tiny ViT-like model",
            ),
            Recipe(
                "DyT",
                "γ tanh(αx) + β replacing every norm, the final one included; α₀ = 0.5 "
                "outside language models",
                "the same replacement; α₀ = 0.5 (the layer's default)",
            ),
            Recipe(
                "training",
                "the original recipes, unchanged: AdamW with weight decay, warm-up and cosine "
                "decay, hundreds of epochs",
                describe.training(runs),
                "the same lr for every norm, as the paper keeps the baseline's; no warm-up, "
                "decay or weight decay, and a single final evaluation, which a short run "
                "under a constant lr leaves noisy",
            ),
            Recipe(
                "initialization",
                "the models' own (ViT: truncated normal, std 0.02)",
                describe.init(describe.first(runs)),
                "DyT's α₀ = 0.5 assumes activations of a certain scale, which the "
                "initialization sets",
            ),
        ]

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store.summaries(), "norm_position")

    def figures(self, store, headline):
        caption = "Final test accuracy per norm, pre-norm and post-norm blocks."
        return [(plots.heatmap(headline, "norm_position"), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        parts = [
            f"{r.norm} {r.norm_position}-norm {analysis.spread(r)}"
            for _, r in headline.sort_values(["norm_position", "norm"]).iterrows()
        ]
        text = "; ".join(parts) + "." if parts else ""
        table = headline.set_index(["norm", "norm_position"])
        for position in ("pre", "post"):
            if ("layernorm", position) in table.index and ("rmsnorm", position) in table.index:
                gap = analysis.compare(
                    table.loc[("rmsnorm", position)], table.loc[("layernorm", position)]
                )
                text += f" {position.capitalize()}-norm, RMSNorm − LayerNorm {gap}: " + {
                    stats.SAME: f"the same within ±{stats.MARGIN:g}.",
                    stats.HIGHER: "RMSNorm ahead.",
                    stats.LOWER: "RMSNorm behind.",
                }.get(gap.verdict, "not resolved by the seeds.")
        for norm in headline.norm.unique():
            if (norm, "pre") in table.index and (norm, "post") in table.index:
                gap = analysis.compare(table.loc[(norm, "pre")], table.loc[(norm, "post")])
                if gap.verdict in (stats.HIGHER, stats.LOWER):
                    better = "pre" if gap.verdict == stats.HIGHER else "post"
                    text += f" {norm}: {better}-norm is better (pre − post {gap})."
        return text

    def summary(self, store, headline) -> pd.DataFrame:
        pre = headline[headline.norm_position == "pre"]
        if pre.empty:
            return pd.DataFrame(columns=["norm", "remark"])
        best = pre.loc[pre.test_acc.idxmax()]
        remarks = []
        for _, row in pre.iterrows():
            gap = analysis.compare(row, best)
            remarks.append(
                f"transformer: behind {best.norm} ({gap})" if gap.verdict == stats.LOWER else ""
            )
        return pd.DataFrame(
            {
                "norm": pre.norm,
                "transformer acc (pre-norm)": pre.test_acc.to_numpy(),
                "remark": remarks,
            }
        )

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        pre = headline[headline.norm_position == "pre"].set_index("norm")
        if not {"layernorm", "dyt"} <= set(pre.index):
            return []
        ln, dyt = pre.loc["layernorm"], pre.loc["dyt"]
        gap = analysis.compare(dyt, ln)
        enough = min(ln.seeds, dyt.seeds) >= stats.MIN_SEEDS
        held = {stats.SAME: True, stats.HIGHER: True, stats.LOWER: False}.get(gap.verdict)
        return [
            Expectation(
                "Dynamic Tanh matches LayerNorm in a pre-norm transformer (Zhu et al., 2025; "
                "tested here in a small, short run)",
                held if enough else None,
                f"pre-norm: layernorm {analysis.spread(ln)}, dyt {analysis.spread(dyt)}; "
                f"DyT − LayerNorm {gap}",
                f"'matches': within ±{stats.MARGIN:g} or ahead; at this scale, with a constant "
                "Adam lr and PyTorch's default initialization (the recipe table lists the "
                "differences)"
                if enough
                else f"needs {stats.MIN_SEEDS} seeds",
            )
        ]


EXPERIMENT = Transformer()
