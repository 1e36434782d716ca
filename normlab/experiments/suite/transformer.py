"""Normalization in a transformer: LayerNorm, RMSNorm and Dynamic Tanh (Zhu et
al., 2025: "Transformers without Normalization"), in pre-norm and post-norm
blocks of a small patch transformer on MNIST."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import analysis, plots
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Expectation, Experiment


class Transformer(Experiment):
    name = "transformer"
    title = "In a transformer: LayerNorm, RMSNorm, DyT; pre- and post-norm"
    description = (
        "LayerNorm vs RMSNorm vs DyT, pre-norm vs post-norm blocks, on a small patch "
        "transformer (MNIST, 7x7 patches)."
    )
    question = (
        "Transformers normalize each token over its features. Does RMSNorm (no mean) match "
        "LayerNorm, and does Dynamic Tanh (an element-wise tanh, no statistics at all) match "
        "them, as Zhu et al. (2025) report? Final test accuracy of a 2-block patch "
        "transformer (dim 64, 300 Adam steps: a small, short run; Zhu et al. trained large "
        "models to convergence) with the norm before each sublayer (pre) or after each "
        "residual addition (post)."
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

    def headline(self, store) -> pd.DataFrame:
        return analysis.final_table(store, "norm_position")

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
                ln, rms = table.loc[("layernorm", position)], table.loc[("rmsnorm", position)]
                same = not analysis.differs(ln, rms)
                text += f" {position.capitalize()}-norm: RMSNorm " + (
                    "matches LayerNorm within the seed spread."
                    if same
                    else "differs from LayerNorm beyond the seed spread."
                )
        for norm in headline.norm.unique():
            if (norm, "pre") in table.index and (norm, "post") in table.index:
                pre, post = table.loc[(norm, "pre")], table.loc[(norm, "post")]
                if analysis.differs(pre, post):
                    better = "pre" if pre.test_acc > post.test_acc else "post"
                    text += f" {norm}: {better}-norm is better beyond the seed spread."
        return text

    def summary(self, store, headline) -> pd.DataFrame:
        pre = headline[headline.norm_position == "pre"].set_index("norm")
        if pre.empty:
            return pd.DataFrame(columns=["norm", "remark"])
        best = pre.test_acc.max()
        return pd.DataFrame(
            {
                "norm": pre.index,
                "transformer acc (pre-norm)": pre.test_acc.to_numpy(),
                "remark": [
                    "best in the transformer"
                    if a >= best
                    else f"transformer: {best - a:.2f} below the best"
                    for a in pre.test_acc
                ],
            }
        )

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        pre = headline[headline.norm_position == "pre"].set_index("norm")
        if not {"layernorm", "dyt"} <= set(pre.index):
            return []
        ln, dyt = pre.loc["layernorm"], pre.loc["dyt"]
        several = ln.seeds > 1 and dyt.seeds > 1
        return [
            Expectation(
                "Dynamic Tanh matches LayerNorm in a pre-norm transformer (Zhu et al., 2025; "
                "tested here in a small, short run)",
                (not analysis.differs(ln, dyt) or dyt.test_acc >= ln.test_acc) if several else None,
                f"pre-norm: layernorm {analysis.spread(ln)}, dyt {analysis.spread(dyt)}",
            )
        ]


EXPERIMENT = Transformer()
