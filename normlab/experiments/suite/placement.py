"""Norm placement in a deep transformer: pre-norm, post-norm, sandwich, Peri-LN,
DeepNorm and LayerNorm Scaling, each with LayerNorm, RMSNorm, DyT and Derf, in a
12-block patch transformer trained with a large learning rate and no warm-up, the
setting where post-norm is known to struggle; pre- and post-norm are also run at a
small learning rate and at depth 4, to tell which of the two the trouble needs.

Why this setting: Xiong et al. (2020, "On Layer Normalization in the Transformer
Architecture") show that at initialization Post-LN's gradients near the output are
large whatever the depth, while Pre-LN's shrink as 1/√L, so Post-LN needs a learning-
rate warm-up and Pre-LN trains without one; Liu et al. (2020, "Understanding the
Difficulty of Training Transformers") show that Post-LN's dependence on its residual
branches amplifies parameter updates with depth (their 6-layer Post-LN trains, their
18-layer one diverges). Adam at lr 0.01 without warm-up, 12 blocks, is where this
small model shows it (found by trying lr 0.001 and 0.01 at depths 2, 4 and 12)."""

from __future__ import annotations

import typing

import pandas as pd

from normlab.experiments import analysis, describe, plots, stats
from normlab.experiments.config import NormPosition, RunConfig
from normlab.experiments.experiment import Expectation, Experiment

PLACEMENTS = typing.get_args(NormPosition)  # the transformer's, in the builder's order
LARGE_LR, SMALL_LR = 0.01, 0.001
DEEP, SHALLOW = 12, 4
STEPS = 100
COLUMNS = ["norm", "norm_position", "lr", "depth", "steps", *analysis.FINAL_COLUMNS[1:]]


class Placement(Experiment):
    name = "placement"
    title = "Where the norm goes in a deep transformer: pre, post, sandwich, Peri-LN, DeepNorm, LNS"
    description = (
        f"Six norm placements x LayerNorm, RMSNorm, DyT, Derf in a {DEEP}-block patch "
        f"transformer (MNIST, Adam lr {LARGE_LR:g}, no warm-up); pre and post also at lr "
        f"{SMALL_LR:g} and at depth {SHALLOW}."
    )
    default_norms = ("layernorm", "rmsnorm", "dyt", "derf")
    base = RunConfig(
        model="transformer",
        optimizer="adam",
        lr=LARGE_LR,
        init="default",
        depth=DEEP,
        width=32,
        batch_size=64,
        steps=STEPS,
        eval_every=None,
        monitor=False,
    )
    grid = {"norm_position": PLACEMENTS, "lr": (LARGE_LR, SMALL_LR), "depth": (DEEP, SHALLOW)}
    quick = {"steps": 10, "width": 16, "batch_size": 16, "train_size": 256, "test_size": 200}
    seeds = 3
    # 120 runs, about 6 minutes on 2 cores: with `normlab compare`'s 6 minutes it would
    # pass the suite's 10-minute budget. Run it with `normlab run placement`.
    in_suite = False
    section = "compare"
    order = 75

    def lead(self, runs: pd.DataFrame) -> str:
        depth, lr = max(describe.values(runs, "depth")), max(describe.values(runs, "lr"))
        return (
            "Post-norm transformers are hard to train deep without a learning-rate warm-up "
            "(Xiong et al., 2020; Liu et al., 2020); the later placements — sandwich (Ding et "
            "al., 2021), Peri-LN (Kim et al., 2025), DeepNorm (Wang et al., 2022), LayerNorm "
            "Scaling (Sun et al., 2025) — were proposed to keep deep stacks stable. Final test "
            f"accuracy of {describe.model(runs)} trained with {describe.training(runs)}, no "
            f"warm-up, on {describe.data(runs)}, {describe.seed_count(runs)} (× marks a "
            "diverged run, ○ one that did not learn), per norm and placement at depth "
            f"{int(depth)} and lr {lr:g}; pre- against post-norm also at the other "
            "depth and learning rate, which tell whether post-norm's trouble needs the large "
            "learning rate, the depth, or both."
        )

    def keep(self, config: RunConfig) -> bool:
        """Every placement, except at the controls (the small learning rate, the shallow
        depth), which run pre and post only, one control at a time."""
        small, shallow = config.lr == SMALL_LR, config.depth == SHALLOW
        if small and shallow:
            return False
        return not (small or shallow) or config.norm_position in ("pre", "post")

    def check(self, config: RunConfig) -> None:
        self.requires(config.model == "transformer", "needs model='transformer'")

    def headline(self, store) -> pd.DataFrame:
        """Per norm, placement, learning rate and depth, over seeds: final accuracy (mean,
        min, max), the fraction of diverged runs and the typical outcome."""
        runs = store.summaries()
        if runs.empty:
            return pd.DataFrame(columns=COLUMNS)
        parts = [
            analysis.final_table(group, "norm_position").assign(
                lr=lr, depth=depth, steps=int(group.steps_planned.max())
            )
            for (lr, depth), group in runs.groupby(["lr", "depth"])
        ]
        table = pd.concat(parts, ignore_index=True)[COLUMNS]
        rank = table.norm_position.map({p: i for i, p in enumerate(PLACEMENTS)})
        order = table.assign(_rank=rank).sort_values(
            ["norm", "_rank", "depth", "lr"], ascending=[True, True, False, False]
        )
        return order.drop(columns="_rank").reset_index(drop=True)

    def figures(self, store, headline):
        main, controls = _split(headline)
        if main.empty:
            return []
        ordered = main.assign(norm_position=_ordered(main.norm_position))
        caption = (
            f"Final test accuracy per norm and placement, depth {int(main.depth.iloc[0])}, "
            f"lr {main.lr.iloc[0]:g}, no warm-up (mean over seeds)."
        )
        out = [(plots.heatmap(ordered, "norm_position"), caption)]
        if not controls.empty:
            both = pd.concat([main[main.norm_position.isin(["pre", "post"])], controls])
            both = both.assign(
                _main=both.index.isin(main.index), _rank=both.norm_position.map(PLACEMENTS.index)
            )
            both = both.sort_values(
                ["_rank", "_main", "depth", "lr"], ascending=[True, False, False, False]
            )
            both = both.assign(setting=[_setting(r) for r in both.itertuples()])
            labels = list(dict.fromkeys(both.setting))
            both["setting"] = pd.Categorical(both.setting, categories=labels, ordered=True)
            caption = (
                "Pre- and post-norm: deep at the large learning rate, then one of the two changed."
            )
            out.append((plots.heatmap(both, "setting"), caption))
        return out

    def finding(self, headline: pd.DataFrame) -> str:
        main, controls = _split(headline)
        if main.empty:
            return ""
        depth, lr = int(main.depth.iloc[0]), main.lr.iloc[0]
        parts = []
        for position in PLACEMENTS:
            rows = main[main.norm_position == position]
            if rows.empty:
                continue
            cells = ", ".join(_cell(r) for _, r in rows.iterrows())
            parts.append(f"{position}: {cells}")
        text = f"At depth {depth}, lr {lr:g} without warm-up — " + "; ".join(parts) + "."
        if not controls.empty:
            lines = []
            for (c_lr, c_depth), group in controls.groupby(["lr", "depth"], sort=False):
                cells = "; ".join(
                    f"{position}: " + ", ".join(_cell(r) for _, r in rows.iterrows())
                    for position, rows in group.groupby("norm_position", sort=False)
                )
                lines.append(f"at depth {int(c_depth)}, lr {c_lr:g} — {cells}")
            text += " Controls: " + "; ".join(lines) + "."
        text += " " + _reading(main, controls)
        return text

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        main, controls = _split(headline)
        if main.empty:
            return []
        lr, depth = main.lr.iloc[0], main.depth.iloc[0]
        steps = f"after {int(main.steps.iloc[0])} steps" if "steps" in main else ""
        cell = _cells(main, "layernorm")
        out = []
        pre, post = cell.get("pre"), cell.get("post")
        calm = controls[(controls.lr < lr) & (controls.depth == depth)]
        if pre is not None and post is not None:
            out.append(_warmup(pre, post, _cells(calm, "layernorm"), lr, depth))
        shallow = controls[(controls.lr == lr) & (controls.depth < depth)]
        shallow_post = _cells(shallow, "layernorm").get("post")
        if post is not None and shallow_post is not None:
            out.append(
                Expectation(
                    "Post-LN's trouble grows with depth: at the same learning rate a shallow "
                    "stack trains and a deep one does not (Liu et al., 2020)",
                    _testable(post, shallow_post)
                    and shallow_post.outcome == "trained"
                    and _worse(post, shallow_post),
                    f"post at depth {int(shallow.depth.iloc[0])} {_cell(shallow_post)}, "
                    f"at depth {int(depth)} {_cell(post)}, lr {lr:g}, {steps}",
                )
            )
        if post is not None and "deepnorm" in cell:
            row = cell["deepnorm"]
            out.append(
                Expectation(
                    "DeepNorm trains the deep post-norm stack that plain Post-LN fails to "
                    "(Wang et al., 2022)",
                    _testable(row, post) and row.outcome == "trained" and _worse(post, row),
                    f"deepnorm {_cell(row)}, post {_cell(post)}, lr {lr:g}, {steps}",
                )
            )
        claims = {
            "peri": "Peri-LN does at least as well as Pre-LN (Kim et al., 2025: better, in "
            "400M–3.2B language models)",
            "lns": "LayerNorm Scaling does at least as well as Pre-LN (Sun et al., 2025: "
            "better, in 130M–7B language models)",
        }
        for position, claim in claims.items():
            if position in cell and pre is not None:
                out.append(_at_least_as_good(claim, main, position, steps))
        return out

    def summary(self, store, headline) -> pd.DataFrame:
        main, _ = _split(headline)
        if main.empty:
            return pd.DataFrame(columns=["norm", "remark"])
        rows = []
        for norm, group in main.groupby("norm"):
            best = group.loc[group.test_acc.idxmax()]
            failed = group[group.outcome != "trained"].norm_position.tolist()
            where = f"a {int(best.depth)}-block transformer at lr {best.lr:g}"
            rows.append(
                {
                    "norm": norm,
                    "remark": f"did not train in {where}: {', '.join(failed)}" if failed else "",
                }
            )
        return pd.DataFrame(rows)


def _split(headline: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the main setting: the learning rate and depth every placement ran at, the
    controls: the other settings). The main one is the setting with most placements."""
    if headline.empty:
        return headline, headline
    counts = headline.groupby(["lr", "depth"]).norm_position.nunique()
    key = max(counts.index, key=lambda k: (counts[k], k[1], k[0]))
    main = (headline.lr == key[0]) & (headline.depth == key[1])
    return headline[main], headline[~main]


def _ordered(positions: pd.Series) -> pd.Categorical:
    used = [p for p in PLACEMENTS if p in set(positions)]
    return pd.Categorical(positions, categories=used, ordered=True)


def _setting(row) -> str:
    return f"{row.norm_position}\ndepth {int(row.depth)}\nlr {row.lr:g}"


def _cells(frame: pd.DataFrame, norm: str) -> dict:
    return {r.norm_position: r for _, r in frame[frame.norm == norm].iterrows()}


def _cell(row) -> str:
    """'layernorm 0.692 (0.690–0.694, 2 seeds)', with the outcome where it did not train."""
    note = "" if row.outcome == "trained" else f", {row.outcome}"
    return f"{row.norm} {analysis.spread(row)}{note}"


def _worse(a, b) -> bool:
    """Whether row ``a`` did worse than row ``b``: a worse typical outcome, or the same
    outcome and an accuracy resolved below b's (:func:`analysis.compare`)."""
    rank = analysis.OUTCOMES.index
    if rank(a.outcome) != rank(b.outcome):
        return rank(a.outcome) > rank(b.outcome)
    return analysis.compare(a, b).verdict == stats.LOWER


def _warmup(pre, post, calm: dict, lr: float, depth: int) -> Expectation:
    """Xiong et al.: Post-LN needs a warm-up where Pre-LN does not. Our runs have no
    warm-up arm: what they show is where post-norm fails without one, at this lr and
    at a smaller one."""
    claim = (
        "Post-LN needs a learning-rate warm-up where Pre-LN does not (Xiong et al., 2020; "
        f"LayerNorm, a {int(depth)}-block patch transformer, no warm-up)"
    )
    measured = f"lr {lr:g}: pre {_cell(pre)}, post {_cell(post)}"
    calm_pre, calm_post = calm.get("pre"), calm.get("post")
    if calm_pre is not None and calm_post is not None:
        measured += (
            f"; lr {calm_post.lr:g}: pre {_cell(calm_pre)}, post {_cell(calm_post)} "
            f"(post − pre {analysis.compare(calm_post, calm_pre)})"
        )
    testable = _testable(pre, post)
    if not testable:
        return Expectation(claim, None, measured, f"needs {stats.MIN_SEEDS} seeds")
    fails = pre.outcome == "trained" and _worse(post, pre)
    if not fails:
        return Expectation(claim, False, measured, "post-norm trained without warm-up")
    if calm_post is not None and calm_pre is not None and not _worse(calm_post, calm_pre):
        return Expectation(
            claim,
            None,
            measured,
            f"post-norm failed only at lr {lr:g}, ten times Adam's usual; at "
            f"{calm_post.lr:g} it trained as well as pre-norm without warm-up, and no run "
            "here had a warm-up, so whether a warm-up rescues it is not tested",
        )
    return Expectation(claim, True, measured, "no run here had a warm-up")


def _at_least_as_good(claim: str, main: pd.DataFrame, position: str, steps: str):
    """LayerNorm's verdict: the placement's accuracy minus pre-norm's within the margin
    or above it (an unresolved deficit is no evidence of parity); the other norms'
    differences are given beside it."""
    rows = {n: _cells(main, n) for n in sorted(main.norm.unique())}
    ln = rows["layernorm"]
    gap = analysis.compare(ln[position], ln["pre"])
    others = "; ".join(
        f"{norm} {analysis.compare(cells[position], cells['pre'])}"
        for norm, cells in rows.items()
        if norm != "layernorm" and position in cells and "pre" in cells
    )
    measured = (
        f"{position} {_cell(ln[position])}, pre {_cell(ln['pre'])}: {position} − pre {gap}"
        + (f"; with the other norms, {position} − pre: {others}" if others else "")
        + f" ({steps})"
    )
    if not _testable(ln[position], ln["pre"]):
        return Expectation(claim, None, measured, f"needs {stats.MIN_SEEDS} seeds")
    held = {stats.SAME: True, stats.HIGHER: True, stats.LOWER: False}.get(gap.verdict)
    if ln[position].outcome != "trained":
        held = False
    note = (
        f"'at least as well': the difference within ±{stats.MARGIN:g} or above it; a short "
        "run ranks early training, not the final loss the papers report"
    )
    return Expectation(claim, held, measured, note)


def _testable(*rows) -> bool | None:
    """None (not testable) unless every row has the seeds a verdict needs."""
    return True if all(r.runs >= stats.MIN_SEEDS for r in rows) else None


def _reading(main: pd.DataFrame, controls: pd.DataFrame) -> str:
    """Where post-norm failed, where it trained once one condition was relaxed, and what
    that does and does not show."""
    post = main[main.norm_position == "post"]
    if post.empty:
        return ""
    failed = post[post.outcome != "trained"].norm.tolist()
    if not failed:
        return (
            "Post-norm trained here with every norm: this setting did not reproduce its "
            "trouble, so the other placements' rescue of it is not tested."
        )
    depth, lr = int(main.depth.iloc[0]), main.lr.iloc[0]
    text = f"Post-norm did not train at depth {depth}, lr {lr:g} with {', '.join(failed)}"
    relaxed = controls[(controls.norm_position == "post") & controls.norm.isin(failed)]
    rescued = {norm: set() for norm in failed}  # the settings where it trained
    for (c_lr, c_depth), group in relaxed.groupby(["lr", "depth"], sort=False):
        trained = group[group.outcome == "trained"].norm.tolist()
        for norm in trained:
            rescued[norm].add((c_lr, c_depth))
        text += f"; at depth {int(c_depth)}, lr {c_lr:g} it trained with " + (
            ", ".join(trained) if trained else "none"
        )
    text += "."
    settings = set(zip(relaxed.lr, relaxed.depth, strict=True))
    both = [norm for norm in failed if settings and rescued[norm] == settings]
    if both:
        text += (
            f" With {', '.join(both)} its failure needs both the depth and the large learning "
            "rate: the instability Xiong et al. (2020) and Liu et al. (2020) describe, not a "
            "lower ceiling."
        )
    deep_only = [
        norm for norm in failed if rescued[norm] and all(d < depth for _, d in rescued[norm])
    ]
    if deep_only:
        text += (
            f" With {', '.join(deep_only)} it trained only when shallow: at depth {depth} the "
            "small learning rate did not save it."
        )
    return text + (
        " One learning rate for all placements, one short run per seed, a small model on "
        "MNIST: this ranks the placements' stability in one hard setting, "
        "not their accuracy when each is tuned, and it does not test Peri-LN's or LayerNorm "
        "Scaling's claims about large language models."
    )


EXPERIMENT = Placement()
