"""The train/eval gap: accuracy with batch statistics (train mode) against
accuracy with running statistics (eval mode), and how it depends on the batch
size: where BatchNorm's two modes part ways."""

from __future__ import annotations

import pandas as pd

from normlab.experiments import analysis, describe, stats
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import LAB_CNN, Experiment


class TrainEval(Experiment):
    name = "train-eval"
    title = "Train mode against eval mode"
    description = (
        "The accuracy gap between train-mode (batch statistics) and eval-mode "
        "inference, and its dependence on batch size."
    )
    default_norms = ("batchnorm", "groupnorm")
    # the techniques whose train and eval modes differ, and GroupNorm as the control
    full_norms = (
        "batchnorm",
        "batchrenorm",
        "ghostbatchnorm",
        "evonorm_b0",
        "switchable",
        "cross_iteration_bn",
        "groupnorm",
    )
    # The batch-size study's training (lr 0.05 x batch/32, warm-up); 992 test images, a
    # multiple of every batch size, so both modes are scored on the same images.
    base = LAB_CNN.replace(
        epochs=2, lr=0.05, lr_scaling=True, warmup_steps=50, train_mode_eval=True, test_size=992
    )
    grid = {"batch_size": (2, 4, 8, 32)}
    quick = {"epochs": 1, "train_size": 256, "test_size": 200}
    seeds = 2
    order = 60

    def check(self, config: RunConfig) -> None:
        self.requires(config.train_mode_eval, "needs train_mode_eval=True")

    def lead(self, runs: pd.DataFrame) -> str:
        return (
            "Test accuracy in eval mode (running statistics) and in train mode (statistics "
            "of each test batch, of the training batch size), per batch size: "
            f"{describe.model(runs)} trained with {describe.training(runs)} on "
            f"{describe.data(runs)}, {describe.seed_count(runs)}. A constant learning rate "
            "keeps the weights moving until the end, so running averages, which lag the "
            "weights, are tested at their hardest."
        )

    def headline(self, store) -> pd.DataFrame:
        """Per norm and batch size, over seeds (mean and sd): eval-mode and train-mode
        accuracy and their gap (train mode minus eval mode)."""
        table = store.summaries()
        if table.empty:
            return pd.DataFrame(columns=["norm", "batch_size", "eval_acc", "train_acc", "gap"])
        frame = pd.DataFrame(
            {
                "norm": table.norm,
                "batch_size": table.batch_size,
                "eval_acc": table.final_test_acc,
                "train_acc": table.final_test_acc_train_mode,
                "gap": table.final_test_acc_train_mode - table.final_test_acc,
            }
        )
        table = analysis.seed_table(frame, ["norm", "batch_size"], ["eval_acc", "train_acc", "gap"])
        ahead = frame.assign(ahead=frame.gap > 0).groupby(["norm", "batch_size"]).ahead.sum()
        table["train_ahead"] = ahead.to_numpy()  # seeds whose train mode beat eval mode
        return table

    def figures(self, store, headline):
        caption = (
            "Test error in eval mode (running statistics, solid, 95% band over seeds) and "
            "train mode (batch statistics, dashed) against batch size, one panel per technique."
        )
        return [(_modes_figure(headline), caption)]

    def finding(self, headline: pd.DataFrame) -> str:
        parts = []
        for norm, rows in headline.groupby("norm"):
            apart, one_way = [], []
            for _, r in rows.sort_values("batch_size").iterrows():
                gap = stats.summarize(r.gap, r.gap_sd, int(r.seeds))
                if gap.low > 0 or gap.high < 0:  # the interval excludes no gap
                    apart.append(f"batch {int(r.batch_size)} {gap}")
                elif r.seeds >= stats.MIN_SEEDS and r.train_ahead in (0, r.seeds) and r.gap:
                    side = "above" if r.train_ahead else "below"
                    one_way.append(
                        f"batch {int(r.batch_size)} (train mode {side} eval mode in every "
                        f"seed, mean {r.gap:+.3f})"
                    )
            text = f"{norm}: the modes differ at " + (
                ", ".join(apart) if apart else "no batch size (beyond the seeds' spread)"
            )
            if one_way:
                text += "; one way in every seed, unresolved: " + ", ".join(one_way)
            parts.append(text)
        return "Gap, train mode minus eval mode: " + "; ".join(parts) + "." if parts else ""


def _modes_figure(headline: pd.DataFrame):
    """Test error in eval mode (solid, 95% band) and train mode (dashed) per batch size,
    one panel per technique beside GroupNorm's (the control)."""
    from normlab.experiments.plots import color, plt

    if headline.empty:
        return None
    norms = list(headline.norm.unique())
    cols = min(4, len(norms))
    rows_ = -(-len(norms) // cols)
    fig, axes = plt.subplots(
        rows_, cols, figsize=(3.4 * cols, 2.9 * rows_), squeeze=False, sharex=True, sharey=True
    )
    for ax, norm in zip(axes.flat, norms, strict=False):
        group = headline[headline.norm == norm].sort_values("batch_size")
        for column, style, label in (("eval_acc", "-", "eval"), ("train_acc", "--", "train mode")):
            band = [
                stats.summarize(m, sd, int(n))
                for m, sd, n in zip(group[column], group[f"{column}_sd"], group.seeds, strict=True)
            ]
            ax.plot(
                group.batch_size,
                1 - group[column],
                style,
                marker="o",
                color=color(norm),
                label=label,
            )
            if all(b.n >= 2 for b in band):
                ax.fill_between(
                    group.batch_size,
                    [1 - b.high for b in band],
                    [1 - b.low for b in band],
                    color=color(norm),
                    alpha=0.12,
                )
        ax.set_title(norm, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(norms) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("batch size")
    for ax in axes[:, 0]:
        ax.set_ylabel("test error")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


EXPERIMENT = TrainEval()
