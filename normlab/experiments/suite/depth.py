"""Depth: trainability and gradient flow through plain ReLU MLPs 4 to 32 layers
deep, per norm, from PyTorch's default initialization (what a user gets) and from
Kaiming's (He et al., 2015; the plain network's control), each technique at the
learning rate a small sweep chose for it. "Per layer" means per linear map: the
weight-gradient norm of every Linear, input to output (the norms' own scales are
not layers).

The learning rate is chosen per norm, depth and initialization as the one with the
lowest mean final *training* loss among those where no seed diverged (never on the
test set); a technique is judged where it trains best, not at one lr for all."""

from __future__ import annotations

import math

import pandas as pd

from normlab.experiments import analysis, describe, stats
from normlab.experiments.config import RunConfig
from normlab.experiments.experiment import Expectation, Experiment, Recipe
from normlab.experiments.outcomes import DIVERGED, TRAINED

GROUPS = 8  # GroupNorm and EvoNorm-S0 on 64 features: 8 values per group, not 2


class Depth(Experiment):
    name = "depth"
    title = "Gradients through depth"
    description = (
        "Gradient norm per Linear layer and trainability of ReLU MLPs 4 to 32 layers deep, "
        "per norm, from PyTorch's default and Kaiming's initialization, each at its best lr."
    )
    default_norms = ("none", "batchnorm", "layernorm")
    base = RunConfig(
        activation="relu",
        init="default",
        lr=0.01,
        optimizer="momentum",
        steps=400,
        eval_every=None,
        width=64,
        norm_kwargs=(("groupnorm:num_groups", GROUPS), ("evonorm_s0:groups", GROUPS)),
    )
    grid = {"depth": (4, 16, 32), "init": ("default", "kaiming"), "lr": (0.001, 0.01, 0.1)}
    quick = {"steps": 20, "train_size": 256, "test_size": 200}
    full = {}
    full_grid = {
        "depth": (4, 16, 32),
        "init": ("default", "kaiming"),
        "lr": (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1),
    }
    full_norms = ("none", "batchnorm", "layernorm", "groupnorm", "rmsnorm", "dyt")
    seeds = 3
    section = "problem"
    order = 50

    def check(self, config: RunConfig) -> None:
        self.requires(config.monitor, "needs monitor=True (it reads gradient norms)")

    def lead(self, runs: pd.DataFrame) -> str:
        lrs = ", ".join(f"{v:g}" for v in describe.values(runs, "lr"))
        return (
            "Do gradients vanish or explode through depth, and does normalization keep deep "
            f"networks trainable? {describe.capital(describe.model(runs))}, trained "
            f"{describe.number(describe.first(runs).steps_planned)} steps with "
            f"{describe.training(runs).split(', lr')[0]} on {describe.data(runs)}, from "
            "PyTorch's default initialization (weights of variance 1/(3·fan-in): a ReLU "
            "signal shrinks about √6-fold per layer) and from Kaiming's (variance "
            "2/fan-in, made for ReLU). Each technique runs at the learning rate, of "
            f"{lrs}, with the lowest final training loss where no seed diverged; "
            f"{describe.seed_count(runs)}, each seed's outcome reported."
        )

    def recipe(self, runs: pd.DataFrame) -> list[Recipe]:
        return [
            Recipe(
                "initialization",
                "Glorot & Bengio (2010) and He et al. (2015): a plain deep network trains "
                "only from an initialization that keeps the signal's scale",
                "PyTorch's default, and Kaiming-normal as the control",
            ),
            Recipe(
                "learning rate",
                "tuned per network in practice",
                "per technique, depth and initialization: the lowest final training loss of "
                + ", ".join(f"{v:g}" for v in describe.values(runs, "lr")),
            ),
            Recipe(
                "grouped norms",
                "GroupNorm: 32 groups",
                f"{GROUPS} groups of {int(describe.first(runs).width) // GROUPS} features",
                "on 64 features, 32 groups hold 2 values each, which normalize to ±1",
            ),
        ]

    def headline(self, store) -> pd.DataFrame:
        """Per norm, depth and initialization, at the chosen learning rate (``lr``; see
        the module): :func:`analysis.final_table`'s accuracy statistics and every seed's
        outcome, the lrs tried, and the ratio of the first to the last hidden Linear
        layer's weight-gradient norm (median over records; geometric mean over the
        seeds that did not diverge): far below 1 means vanishing, far above 1 exploding
        gradients toward the input."""
        runs = store.summaries()
        if runs.empty:
            return pd.DataFrame(columns=["norm", "depth", "init", "lr", "test_acc", "outcome"])
        runs = runs.assign(setting=list(zip(runs.depth, runs.init, runs.lr, strict=True)))
        table = analysis.final_table(runs, "setting")
        table[["depth", "init", "lr"]] = pd.DataFrame(table.setting.tolist(), index=table.index)
        losses = runs.groupby(["norm", "setting"]).final_train_loss.mean()
        table["train_loss"] = [
            losses[(n, s)] for n, s in zip(table.norm, table.setting, strict=True)
        ]
        chosen = _best_lr(table)
        chosen["lrs_tried"] = len(describe.values(runs, "lr"))
        chosen["first_to_last_grad_ratio"] = [
            _gradient_ratio(store, runs[(runs.norm == r.norm) & (runs.setting == r.setting)])
            for r in chosen.itertuples()
        ]
        return chosen.drop(columns="setting").reset_index(drop=True)

    def finding(self, headline: pd.DataFrame) -> str:
        if headline.empty:
            return ""
        depth = int(headline.depth.max())
        parts = []
        for init, rows in headline[headline.depth == depth].groupby("init"):
            cells = "; ".join(_cell(r) for _, r in rows.iterrows())
            parts.append(f"At depth {depth}, {_init(init)}: {cells}.")
        return " ".join(parts)

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        depth = headline.depth.max() if len(headline) else None
        deepest = {(r.norm, r.init): r for _, r in headline[headline.depth == depth].iterrows()}
        out = []
        if {("none", "default"), ("batchnorm", "default")} <= set(deepest):
            plain, bn = deepest[("none", "default")], deepest[("batchnorm", "default")]
            every = plain.runs >= stats.MIN_SEEDS and bn.runs >= stats.MIN_SEEDS
            held = _none_trained(plain) and _all_trained(bn)
            out.append(
                Expectation(
                    f"From PyTorch's default initialization a {int(depth)}-layer plain ReLU "
                    "network does not train (its gradients vanish: Glorot & Bengio, 2010), "
                    "and with BatchNorm it does (Ioffe & Szegedy, 2015)",
                    held if every else None,
                    f"{_cell(plain)}; {_cell(bn)}",
                    "" if every else f"needs {stats.MIN_SEEDS} seeds",
                )
            )
        if ("none", "kaiming") in deepest:
            plain = deepest[("none", "kaiming")]
            every = plain.runs >= stats.MIN_SEEDS
            out.append(
                Expectation(
                    f"From Kaiming's initialization a {int(depth)}-layer plain ReLU network "
                    "trains without normalization (He et al., 2015)",
                    _all_trained(plain) if every else None,
                    _cell(plain),
                    "" if every else f"needs {stats.MIN_SEEDS} seeds",
                )
            )
        return out

    def figures(self, store, headline):
        caption = (
            "Median weight-gradient norm of each Linear layer (input to output) in the "
            "deepest network, seed 0, each technique at its chosen learning rate; only runs "
            "that trained are drawn (the others are listed under each panel). A line falling "
            "toward the input means vanishing gradients."
        )
        return [(_gradient_flow(store, headline), caption)]


def _best_lr(table: pd.DataFrame) -> pd.DataFrame:
    """Per norm, depth and initialization, the row of the learning rate with the lowest
    mean final training loss among those where no seed diverged (where every lr had a
    diverged seed, the lowest loss among them)."""
    ordered = table.assign(_unsafe=table.diverged > 0).sort_values(
        ["_unsafe", "train_loss", "lr"], na_position="last"
    )
    return ordered.drop_duplicates(["norm", "depth", "init"]).drop(columns="_unsafe")


def _cell(row) -> str:
    """One technique at one depth and init: its chosen lr, every seed's outcome, its
    accuracy and its gradient ratio."""
    where = f"at its lowest-loss lr {row.lr:g}"
    ratio = row.first_to_last_grad_ratio
    flow = (
        "the first layer's gradient vanished (exactly 0)"
        if ratio == 0
        else f"gradient ratio {ratio:.3g}"
    )
    return f"{row.norm} {where}: {row.outcomes}, accuracy {analysis.spread(row)}, {flow}"


def _none_trained(row) -> bool:
    return TRAINED not in str(row.outcomes)


def _all_trained(row) -> bool:
    return row.outcome == TRAINED and str(row.outcomes) == f"{int(row.runs)} {TRAINED}"


def _init(init: str) -> str:
    return {"default": "PyTorch's default initialization", "kaiming": "Kaiming's"}.get(init, init)


def _gradient_ratio(store, runs: pd.DataFrame) -> float:
    """Geometric mean over the runs that did not diverge of first / last hidden Linear
    layer's median weight-gradient norm."""
    logs = []
    for _, run in runs[runs.outcome != DIVERGED].iterrows():
        per_layer = analysis.layer_gradient_norms(store.monitor(run.run_id), run.weight_layers)
        if len(per_layer) > 2:
            first, last = float(per_layer.iloc[0]), float(per_layer.iloc[-2])
            if first > 0 and last > 0:
                logs.append(math.log10(first / last))
            elif last > 0:
                logs.append(-math.inf)  # vanished to exactly 0 (dead ReLUs)
    return 10 ** (sum(logs) / len(logs)) if logs else math.nan


def _gradient_flow(store, headline: pd.DataFrame):
    from normlab.experiments.plots import color, plt

    if headline.empty:
        return None
    depth = headline.depth.max()
    inits = sorted(headline.init.unique())
    runs = store.summaries()
    fig, axes = plt.subplots(1, len(inits), figsize=(5.5 * len(inits), 4.2), squeeze=False)
    for ax, init in zip(axes[0], inits, strict=True):
        absent = []
        for row in headline[(headline.depth == depth) & (headline.init == init)].itertuples():
            run = runs[
                (runs.norm == row.norm)
                & (runs.depth == depth)
                & (runs.init == init)
                & (runs.lr == row.lr)
                & (runs.seed == runs.seed.min())
            ]
            if run.empty or run.outcome.iloc[0] != TRAINED:
                absent.append(f"{row.norm} ({run.outcome.iloc[0] if len(run) else 'not run'})")
                continue
            run = run.iloc[0]
            per_layer = analysis.layer_gradient_norms(store.monitor(run.run_id), run.weight_layers)
            ax.plot(
                range(1, len(per_layer) + 1),
                per_layer.to_numpy(),
                marker=".",
                color=color(row.norm),
                label=f"{row.norm} (lr {row.lr:g})",
            )
        ax.set_yscale("log")
        ax.set_xlabel(f"Linear layer (1 = input side)\nnot drawn: {', '.join(absent) or 'none'}")
        ax.set_title(f"depth {int(depth)}, {_init(init)}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("weight-gradient norm (median)")
    fig.tight_layout()
    return fig


EXPERIMENT = Depth()
