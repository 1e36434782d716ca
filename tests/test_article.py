"""The article's science. Verdicts are computed from the numbers and tested on tables
where their claim is true, false and unresolved; statistics against scipy's; outcomes
stable on runs at chance; the prose read from the stored configs (change a value, the
sentence changes); the recipes that once confounded the conclusions (a "small" init
that was not small, a constant lr, a GroupNorm that was InstanceNorm, noisy BatchNorm
scored on a distribution it never saw) held against their sources."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from scipy import stats as scipy_stats
from torch import nn

from normlab import experiments as E
from normlab.experiments import analysis, schedule, stats
from normlab.experiments.outcomes import DID_NOT_LEARN, DIVERGED, TRAINED, classify
from normlab.report import guide, primer

# ----------------------------------------------------------------- statistics


def test_welch_interval_matches_scipy():
    rng = np.random.default_rng(0)
    for n_a, n_b in ((3, 3), (3, 5), (8, 4)):
        a, b = rng.normal(0.9, 0.01, n_a), rng.normal(0.88, 0.03, n_b)
        ours = stats.difference((a.mean(), a.std(ddof=1), n_a), (b.mean(), b.std(ddof=1), n_b))
        test = scipy_stats.ttest_ind(a, b, equal_var=False)
        low, high = test.confidence_interval(0.95)
        assert math.isclose(ours.low, low, rel_tol=1e-9)
        assert math.isclose(ours.high, high, rel_tol=1e-9)
    one = stats.interval([0.9, 0.91, 0.95])
    low, high = scipy_stats.t.interval(
        0.95, 2, loc=np.mean([0.9, 0.91, 0.95]), scale=scipy_stats.sem([0.9, 0.91, 0.95])
    )
    assert math.isclose(one.low, low) and math.isclose(one.high, high)


def test_a_difference_is_called_only_when_resolved_and_sameness_only_within_the_margin():
    assert stats.difference((0.95, 0.002, 3), (0.90, 0.002, 3)).verdict == stats.HIGHER
    assert stats.difference((0.90, 0.002, 3), (0.95, 0.002, 3)).verdict == stats.LOWER
    assert stats.difference((0.900, 0.001, 3), (0.901, 0.001, 3)).verdict == stats.SAME
    assert stats.difference((0.90, 0.05, 3), (0.91, 0.05, 3)).verdict == stats.UNRESOLVED
    assert stats.difference((0.95, 0.0, 1), (0.5, 0.0, 1)).verdict == stats.UNRESOLVED
    assert math.isclose(stats.binomial_se(0.93, 1000), math.sqrt(0.93 * 0.07 / 1000))


def test_two_equal_techniques_are_rarely_called_different():
    """The range-overlap test this replaces separated two equal 2-seed groups one time in
    three; Welch's 95% interval errs about one time in twenty."""
    rng = np.random.default_rng(1)
    called = 0
    for _ in range(2000):
        a, b = rng.normal(0.9, 0.01, 3), rng.normal(0.9, 0.01, 3)
        gap = stats.difference((a.mean(), a.std(ddof=1), 3), (b.mean(), b.std(ddof=1), 3))
        called += gap.verdict in (stats.HIGHER, stats.LOWER)
    assert called / 2000 < 0.07


# ----------------------------------------------------------------- outcomes


def test_a_run_at_chance_never_flips_to_diverged_on_one_noisy_batch():
    rng = np.random.default_rng(0)
    for _ in range(200):
        losses = 2.303 + rng.normal(0, 0.08, 400)  # at chance, noisy, first batch random
        assert classify(False, losses, 0.1, 10) == DID_NOT_LEARN


def test_outcomes_from_the_losses_and_accuracy():
    falling = np.linspace(2.3, 0.3, 400)
    assert classify(False, falling, 0.9, 10) == TRAINED
    assert classify(False, falling, 0.15, 10) == DID_NOT_LEARN  # finite, near chance
    assert classify(True, falling[:50], math.nan, 10) == DIVERGED  # non-finite
    assert classify(False, [*falling[:200], math.inf], 0.9, 10) == DIVERGED
    growing = np.linspace(2.3, 9.0, 400)  # finite, but the loss grew clearly
    assert classify(False, growing, 0.1, 10) == DIVERGED
    assert classify(False, np.linspace(2.3, 2.9, 400), 0.1, 10) == DID_NOT_LEARN
    assert classify(False, np.linspace(0.69, 0.6, 50), 0.6, 2) == TRAINED
    assert classify(False, np.linspace(0.69, 0.6, 50), 0.54, 2) == DID_NOT_LEARN


def test_a_run_still_learning_is_not_called_diverged():
    result = E.run(TINY.replace(steps=3, eval_every=None, monitor=False, lr=0.01))
    assert result.summary["outcome"] in (TRAINED, DID_NOT_LEARN) and not result.summary["diverged"]
    blown = E.run(TINY.replace(lr=1e6, steps=30, init_scale=10.0, monitor=False))
    assert blown.summary["outcome"] == DIVERGED


# ----------------------------------------------------------------- schedules


def test_learning_rate_schedules_follow_their_formulas():
    config = TINY.replace(lr=0.1, warmup_steps=10, lr_schedule="step")
    assert schedule.learning_rate(config, 5, 1000) == pytest.approx(0.05)
    assert schedule.learning_rate(config, 300, 1000) == pytest.approx(0.1)
    assert schedule.learning_rate(config, 301, 1000) == pytest.approx(0.01)
    assert schedule.learning_rate(config, 601, 1000) == pytest.approx(0.001)
    assert schedule.learning_rate(config, 1000, 1000) == pytest.approx(1e-4)
    cosine = TINY.replace(lr=0.1, lr_schedule="cosine")
    assert schedule.learning_rate(cosine, 500, 1000) == pytest.approx(0.05, rel=1e-2)
    assert schedule.learning_rate(TINY.replace(lr=0.1), 999, 1000) == 0.1


def test_a_run_evaluates_densely_early_when_asked():
    config = TINY.replace(eval_every=1000, eval_schedule="log")
    steps = schedule.evaluation_steps(config, 50000)
    assert steps[0] == 1 and len([s for s in steps if s <= 50]) >= 10
    assert {1000, 25000, 50000} <= set(steps)
    tail = schedule.evaluation_steps(TINY.replace(eval_schedule="tail"), 1000)
    assert tail == [500, 900, 950, 1000]


def test_weight_decay_and_the_schedule_reach_the_optimizer():
    result = E.run(TINY.replace(steps=30, lr_schedule="step", weight_decay=0.5, monitor=False))
    ordinary = E.run(TINY.replace(steps=30, monitor=False))
    assert result.summary["final_train_loss"] != ordinary.summary["final_train_loss"]


# ----------------------------------------------------------------- recipes


def test_noisy_batchnorm_is_scored_as_the_network_its_noise_averages_to():
    """Santurkar et al.'s noise has mean scale E[σ] = 1.125 and mean shift E[μ] = 0: in
    eval mode the noisy network applies that expectation, not nothing (which scored it
    on activations 1/1.125 of what it trained on; the old U(1, 2) noise, 1/1.5)."""
    from normlab.experiments.runner import add_noise

    torch.manual_seed(0)
    bn = nn.BatchNorm1d(32)
    model = nn.Sequential(bn)
    x = torch.randn(512, 32)
    clean = nn.functional.batch_norm(x, None, None, training=True)
    handles = add_noise(model, 1.0)
    slopes, intercepts = [], []
    for _ in range(300):  # the noise's law changes every step: average over steps
        noisy = model(x).flatten()
        slope, intercept = np.polyfit(clean.flatten().numpy(), noisy.detach().numpy(), 1)
        slopes.append(slope)
        intercepts.append(intercept)
    assert np.mean(slopes) == pytest.approx(1.125, abs=0.01)  # E[s] = E[σ], σ ~ U(1, 1.25)
    assert np.mean(intercepts) == pytest.approx(0.0, abs=0.05)  # E[m] = E[μ], μ ~ U(±0.5)
    assert np.std(intercepts) == pytest.approx(1 / math.sqrt(12), rel=0.2)  # U(−0.5, 0.5)
    model.eval()
    scored = model(x)
    for handle in handles:
        handle.remove()
    assert torch.allclose(scored, model(x) * 1.125)


def test_the_ics_anchor_starts_from_a_small_init_with_the_control_beside_it():
    ics = E.get("ics")
    stds = {c.init_std for c in ics.sweep().configs()}
    assert stds == {0.01, 0.1}  # 0.01: the paper's "small"; 0.1 = 1/sqrt(100), the control
    for config in ics.sweep(full=True).configs():
        assert config.steps == 50000 and config.batch_size == 60
        steps = schedule.evaluation_steps(config, config.steps)
        assert min(steps) <= 50  # the early phase Figure 1a is about


def test_the_batch_size_study_runs_the_papers_protocol():
    bs = E.get("batch-size")
    configs = bs.sweep(["batchnorm"], full=True).configs()
    assert {c.batch_size for c in configs} == {2, 4, 8, 16, 32}
    assert len({c.effective_lr / c.batch_size for c in configs}) == 1  # lr ∝ batch
    assert all(c.lr_schedule == "step" and c.weight_decay == 1e-4 for c in configs)
    assert len({c.epochs for c in configs}) == 1 and all(c.test_size is None for c in configs)
    assert len(bs.sweep(full=True).seeds) >= 3
    assert "none" in bs.default_norms and "none" in bs.full_norms  # the control


@pytest.mark.parametrize("name", ["batch-size", "depth"])
def test_groupnorm_in_the_lab_is_never_instancenorm_or_pairs(name):
    """GroupNorm with one channel per group is InstanceNorm; on an MLP's features,
    groups of two values normalize to ±1."""
    from normlab.experiments.runner import _dataset, build_model

    experiment = E.get(name)
    for config in experiment.sweep(["groupnorm", "evonorm_s0"], quick=True).configs()[:4]:
        dataset = _dataset(config.dataset, 0, config.train_size, config.test_size)
        model = build_model(config, dataset)
        for module in model.modules():
            groups = getattr(module, "num_groups", None) or getattr(module, "groups", None)
            channels = getattr(module, "num_channels", None) or getattr(
                module, "num_features", None
            )
            if isinstance(groups, int) and channels and type(module).__name__ != "Conv2d":
                per_group = channels // groups
                assert per_group >= (2 if config.model == "cnn" else 4), (module, config.model)


def test_every_verdict_experiment_runs_three_seeds_at_full():
    for name, experiment in E.EXPERIMENTS.items():
        if type(experiment).expectations is not E.Experiment.expectations:
            assert len(experiment.sweep(full=True).seeds) >= stats.MIN_SEEDS, name


def test_depth_chooses_each_techniques_lr_by_training_loss_and_runs_the_users_init():
    depth = E.get("depth")
    configs = depth.sweep().configs()
    assert {c.init for c in configs} == {"default", "kaiming"}
    assert len({c.lr for c in configs}) >= 3
    table = pd.DataFrame(
        {
            "norm": ["none"] * 3,
            "depth": [32] * 3,
            "init": ["default"] * 3,
            "lr": [0.001, 0.01, 0.1],
            "train_loss": [1.0, 0.5, 0.2],
            "diverged": [0.0, 0.0, 1 / 3],  # the lowest loss had a diverged seed
        }
    )
    from normlab.experiments.suite.depth import _best_lr

    assert _best_lr(table).lr.tolist() == [0.01]


# ----------------------------------------------------------------- verdicts


def headline(axis, rows):
    """A final_table headline from (norm, value, mean, sd, seeds, outcomes)."""
    frame = pd.DataFrame(rows, columns=["norm", axis, "test_acc", "acc_sd", "seeds", "outcome"])
    frame["runs"] = frame.seeds
    frame["outcomes"] = [f"{s} {o}" for s, o in zip(frame.seeds, frame.outcome, strict=True)]
    frame["diverged"] = (frame.outcome == DIVERGED).astype(float)
    bounds = [
        stats.summarize(m, s, n)
        for m, s, n in zip(frame.test_acc, frame.acc_sd, frame.seeds, strict=True)
    ]
    frame["ci_low"] = [b.low for b in bounds]
    frame["ci_high"] = [b.high for b in bounds]
    frame["acc_min"], frame["acc_max"] = frame.test_acc, frame.test_acc
    return frame


def batch_rows(bn, gn, none=(0.8, 0.8), sd=0.003, seeds=3):
    """BN, GN and no normalization at batch 2 and 32 (accuracies (small, large))."""
    return headline(
        "batch_size",
        [
            (norm, size, acc, sd, seeds, TRAINED)
            for norm, pair in (("batchnorm", bn), ("groupnorm", gn), ("none", none))
            for size, acc in zip((2, 32), pair, strict=True)
        ],
    )


def test_batch_size_verdicts_true_false_unresolved():
    bs = E.get("batch-size")
    held = {
        e.claim.split(" (")[0]: e.held
        for e in bs.expectations(batch_rows((0.70, 0.90), (0.89, 0.89)))
    }
    assert list(held.values()) == [True, True, True]
    # a user's model where BatchNorm beats GroupNorm by 0.44 at every size: nothing of the
    # paper's holds (the old verdict said "reproduced")
    user = bs.expectations(batch_rows((0.848, 0.85), (0.406, 0.41), sd=0.001))
    assert [e.held for e in user] == [False, True, False]  # GroupNorm flat, but far behind
    noisy = bs.expectations(batch_rows((0.80, 0.85), (0.84, 0.85), sd=0.08))
    assert [e.held for e in noisy] == [None, None, None]
    few = bs.expectations(batch_rows((0.70, 0.90), (0.89, 0.89), seeds=2))
    assert all(e.held is None and "seeds" in e.note for e in few)
    # GroupNorm as BatchNorm's reference: what the protocol does to both cancels
    both_lifted = bs.expectations(batch_rows((0.93, 0.90), (0.93, 0.90), none=(0.93, 0.90)))
    assert both_lifted[0].held is False  # the gap did not grow
    assert "no normalization changed by +0.030" in both_lifted[1].measured  # the control


def test_the_guide_never_recommends_against_its_own_numbers():
    def advice(table):
        return {a.situation: a for a in guide.advice({"batch-size": table})}

    small = next(s for s in advice(batch_rows((0.7, 0.9), (0.89, 0.89))) if "small" in s)
    user = advice(batch_rows((0.844, 0.85), (0.406, 0.41)))[small]
    assert "did not fall behind in these runs" in user.evidence and "behind" in user.evidence
    assert "Wu & He" in user.evidence  # the recommendation rests on the paper, and says so
    paper = advice(batch_rows((0.7, 0.9), (0.89, 0.89)))[small]
    assert paper.technique.startswith("GroupNorm") and "ahead" in paper.evidence
    assert "did not fall behind" not in paper.evidence
    unresolved = advice(batch_rows((0.80, 0.85), (0.84, 0.85), sd=0.08))[small]
    assert "not resolved by the seeds" in unresolved.evidence
    assert all("nan" not in a.evidence for a in guide.advice({}))  # nothing measured: said so


def ics_row(norm, **values):
    base = {
        "norm": norm,
        "init_std": 0.01,
        "seeds": 3,
        "reached_90": 3,
        "acc": 0.93,
        "acc_sd": 0.002,
        "log_steps_to_90": 3.0,
        "log_steps_to_90_sd": 0.02,
        "mean_first": 0.0,
        "mean_last": 0.0,
        "std_first": 1.0,
        "std_last": 1.0,
        "mean_shift": 0.05,
        "mean_shift_sd": 0.01,
        "abs_std_change": 0.1,
        "abs_std_change_sd": 0.02,
    }
    return base | values


def test_ics_verdicts_true_false_unresolved():
    ics = E.get("ics")
    paper = pd.DataFrame(
        [
            ics_row("batchnorm", log_steps_to_90=2.0, acc=0.95),
            ics_row("none", log_steps_to_90=3.5, acc=0.93, mean_shift=2.0, abs_std_change=1.0),
        ]
    )
    assert [e.held for e in ics.expectations(paper)] == [True, True, True]
    reversed_ = pd.DataFrame(
        [
            ics_row("batchnorm", log_steps_to_90=3.5, acc=0.90, abs_std_change=0.9),
            ics_row("none", log_steps_to_90=2.0, acc=0.93, abs_std_change=0.2),
        ]
    )
    assert [e.held for e in ics.expectations(reversed_)] == [False, False, False]
    loose = pd.DataFrame(
        [
            ics_row(
                "batchnorm",
                log_steps_to_90_sd=1.0,
                acc_sd=0.05,
                mean_shift_sd=3.0,
                abs_std_change_sd=3.0,
            ),
            ics_row(
                "none",
                log_steps_to_90=3.2,
                log_steps_to_90_sd=1.0,
                acc=0.94,
                acc_sd=0.05,
                mean_shift=0.5,
                mean_shift_sd=3.0,
                abs_std_change_sd=3.0,
            ),
        ]
    )
    assert [e.held for e in ics.expectations(loose)] == [None, None, None]
    never = pd.DataFrame(
        [ics_row("batchnorm"), ics_row("none", reached_90=1, log_steps_to_90=math.inf)]
    )
    assert ics.expectations(never)[0].held is True


def smooth_row(norm, noise=0.0, **values):
    base = {
        "norm": norm,
        "noise": noise,
        "seeds": 3,
        "acc": 0.93,
        "acc_sd": 0.003,
        "train_loss": 0.1,
    }
    for m in ("loss_variation", "gradient_predictiveness", "beta_smoothness"):
        for prefix in ("", "early_"):
            base[f"{prefix}{m}"], base[f"{prefix}{m}_sd"] = 1.0, 0.02
    base |= {"ics_cosine": 0.5, "ics_cosine_sd": 0.01, "ics_l2": 0.1, "ics_l2_sd": 0.01}
    base |= {"early_ics_cosine": 0.5, "early_ics_cosine_sd": 0.01}
    return base | values


def test_smoothness_is_reproduced_only_when_every_measure_agrees():
    smooth = E.get("smoothness")
    agree = pd.DataFrame(
        [
            smooth_row(
                "batchnorm", loss_variation=0.3, gradient_predictiveness=0.3, beta_smoothness=0.5
            ),
            smooth_row("none"),
        ]
    )
    assert smooth.expectations(agree)[0].held is True
    beta_against = pd.DataFrame(
        [
            smooth_row(
                "batchnorm",
                loss_variation=0.3,
                gradient_predictiveness=0.3,
                beta_smoothness=2.0,
                early_beta_smoothness=0.5,
            ),
            smooth_row("none"),
        ]
    )
    (claim, *_) = smooth.expectations(beta_against)
    assert claim.held is None  # against over the run, for it early: phase-dependent
    assert "β-smoothness" in claim.note and "first fifth" in claim.note
    late_and_early = pd.DataFrame(
        [
            smooth_row(
                "batchnorm",
                loss_variation=0.3,
                gradient_predictiveness=0.3,
                beta_smoothness=2.0,
                early_beta_smoothness=2.0,
            ),
            smooth_row("none"),
        ]
    )
    assert smooth.expectations(late_and_early)[0].held is False
    unresolved = pd.DataFrame(
        [
            smooth_row(
                "batchnorm",
                loss_variation=0.9,
                loss_variation_sd=0.5,
                gradient_predictiveness=0.3,
                beta_smoothness=0.5,
            ),
            smooth_row("none", loss_variation_sd=0.5),
        ]
    )
    assert smooth.expectations(unresolved)[0].held is None


def test_the_shift_verdict_weighs_both_phases():
    smooth = E.get("smoothness")

    def shift(**bn):
        rows = pd.DataFrame([smooth_row("batchnorm", **bn), smooth_row("none")])
        return smooth.expectations(rows)[1].held

    assert shift() is True  # the same in both phases: not reduced
    assert shift(early_ics_cosine=0.8) is None  # reduced early, not late: undecided
    assert shift(early_ics_cosine=0.6, early_ics_cosine_sd=0.2) is None  # early unresolved
    assert shift(ics_cosine=0.8, early_ics_cosine=0.8) is False  # reduced throughout


def test_noisy_batchnorm_verdict_needs_equal_accuracy_and_more_shift():
    smooth = E.get("smoothness")
    rows = [smooth_row("batchnorm"), smooth_row("none")]
    noisy = smooth_row("batchnorm", 1.0, ics_cosine=0.2)
    (*_, claim) = smooth.expectations(pd.DataFrame([*rows, noisy]))
    assert claim.held is True
    worse = smooth_row("batchnorm", 1.0, ics_cosine=0.2, acc=0.75)  # the old scoring's gap
    assert smooth.expectations(pd.DataFrame([*rows, worse]))[-1].held is False


def test_transformer_verdict_reads_the_interval():
    tr = E.get("transformer")
    rows = [
        ("layernorm", "pre", 0.925, 0.003, 3, TRAINED),
        ("dyt", "pre", 0.897, 0.003, 3, TRAINED),
    ]
    assert tr.expectations(headline("norm_position", rows))[0].held is False
    rows[1] = ("dyt", "pre", 0.924, 0.001, 3, TRAINED)
    assert tr.expectations(headline("norm_position", rows))[0].held is True
    rows[1] = ("dyt", "pre", 0.90, 0.05, 3, TRAINED)
    assert tr.expectations(headline("norm_position", rows))[0].held is None


def test_the_lr_claim_follows_the_numbers():
    lr = E.get("lr")
    held = headline(
        "lr",
        [
            ("batchnorm", 0.1, 0.9, 0.01, 3, TRAINED),
            ("batchnorm", 1.0, 0.9, 0.01, 3, TRAINED),
            ("none", 0.1, 0.9, 0.01, 3, TRAINED),
            ("none", 1.0, 0.1, 0.0, 3, DIVERGED),
        ],
    )
    (claim,) = lr.expectations(held)
    assert claim.held and "batchnorm 1, none 0.1" in claim.measured
    flipped = held.copy()
    flipped.loc[3, ["test_acc", "outcome", "outcomes"]] = (0.9, TRAINED, "3 trained")
    assert lr.expectations(flipped)[0].held is False
    assert lr.expectations(held.assign(seeds=2, runs=2))[0].held is None


# ----------------------------------------------------------------- words from the runs


def fake_runs(experiment, **override) -> pd.DataFrame:
    """The summaries a store would hold for the experiment's default sweep (configs as
    run, summary fields invented), with ``override`` applied to every config."""
    rows = []
    for config in experiment.sweep(overrides=override or None).configs():
        fields = config.to_dict()
        steps = config.steps if config.epochs is None else config.epochs * 4000 // config.batch_size
        rows.append(
            {
                "run_id": config.run_id,
                **fields,
                "steps_planned": steps,
                "train_examples": 4000,
                "test_examples": 1000,
                "input_shape": [1, 28, 28],
                "final_test_acc": 0.9,
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("name", "field", "value", "words"),
    [
        ("transformer", "depth", 4, "4-block"),
        ("transformer", "steps", 1500, "1,500 steps"),
        ("lr", "epochs", 3, "3 epochs"),
        ("batch-size", "epochs", 6, "6 epochs"),
        ("ics", "steps", 50000, "50,000 steps"),
        ("depth", "steps", 700, "700 steps"),
        ("cost", "batch_size", 16, "batch 16"),
        ("train-eval", "epochs", 4, "4 epochs"),
    ],
)
def test_the_prose_says_what_ran(name, field, value, words):
    experiment = E.get(name)
    assert words not in experiment.lead(fake_runs(experiment))
    assert words in experiment.lead(fake_runs(experiment, **{field: value}))


def test_every_experiment_writes_its_lead_and_recipe_from_the_runs():
    for experiment in E.EXPERIMENTS.values():
        runs = fake_runs(experiment)
        assert "nan" not in experiment.lead(runs), experiment.name
        for line in experiment.recipe(runs):
            assert line.paper and line.here and "nan" not in line.here, experiment.name


# ----------------------------------------------------------------- kept from before


def test_depth_counts_linear_layers_only(tmp_path):
    config = TINY.replace(norm="batchnorm", depth=3, monitor=True)
    store = E.run_sweep(E.Sweep(config, {}), tmp_path, E.LocalExecutor(1))
    run = store.summaries().iloc[0]
    per_layer = analysis.layer_gradient_norms(store.monitor(run.run_id), run.weight_layers)
    assert len(per_layer) == 4  # 3 hidden Linear + the classifier, no BatchNorm scales
    assert all(name.split(".")[0] in ("1", "4", "7", "10") for name in per_layer.index)
    headline = E.get("depth").headline(store)
    assert headline.first_to_last_grad_ratio.notna().all()


def test_cost_runs_one_at_a_time(monkeypatch, tmp_path):
    import normlab.cli as cli
    from normlab.experiments import sweep as sweep_module

    seen = []
    monkeypatch.setattr(sweep_module, "run_sweep", lambda s, root, ex, cb: seen.append(ex.jobs))
    plans = [
        (E.get("cost"), E.get("cost").sweep(["none"], quick=True)),
        (E.get("init"), E.get("init").sweep(["none"], quick=True)),
    ]
    cli._sweep_all(plans, tmp_path, E.LocalExecutor(2))
    assert seen == [1, 2]
    assert E.get("cost").seeds >= 3  # repeats, whose median and range the article shows


def test_the_paper_layernorm_normalizes_over_c_h_w():
    import normlab

    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    layer = normlab.create("layernorm_chw", 8).double()
    expected = (x - x.mean((1, 2, 3), keepdim=True)) / (
        x.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-5
    ).sqrt()
    assert torch.allclose(layer(x), expected, atol=1e-10)


def test_the_worked_example_is_the_formula():
    x = primer.activation_example()
    table = primer.worked_example(x)
    bn = torch.tensor(table["batchnorm"].to_numpy())
    assert torch.allclose(
        bn, torch.nn.functional.batch_norm(x, None, None, training=True), atol=1e-9
    )
    ln = torch.tensor(table["layernorm"].to_numpy())
    assert torch.allclose(ln, torch.nn.functional.layer_norm(x, x.shape[1:]), atol=1e-9)


@pytest.mark.parametrize(
    "name", ["ics", "batch-size", "lr", "init", "smoothness", "transformer", "depth"]
)
def test_every_anchor_states_its_published_finding(name):
    assert type(E.get(name)).expectations is not E.Experiment.expectations


def test_the_init_claim_true_false_undecided():
    init = E.get("init")
    rows = [
        (norm, scale, acc, 0.01, 3, outcome)
        for norm, outcomes in (
            ("batchnorm", [TRAINED] * 3),
            ("none", [TRAINED, TRAINED, DIVERGED]),
        )
        for scale, outcome, acc in zip((0.1, 1.0, 10.0), outcomes, (0.9, 0.9, 0.9), strict=True)
    ]
    assert init.expectations(headline("init_scale", rows))[0].held is True
    tolerant = headline("init_scale", [(n, s, a, sd, k, TRAINED) for n, s, a, sd, k, _ in rows])
    assert init.expectations(tolerant)[0].held is False  # no normalization tolerated it too
    assert init.expectations(tolerant.assign(runs=2))[0].held is None


def depth_row(norm, init, outcomes, acc=0.9, ratio=1.0):
    runs = sum(int(part.split()[0]) for part in outcomes.split(", "))
    return {
        "norm": norm,
        "depth": 32,
        "init": init,
        "lr": 0.01,
        "test_acc": acc,
        "acc_sd": 0.01,
        "ci_low": acc - 0.02,
        "ci_high": acc + 0.02,
        "acc_min": acc - 0.03,
        "acc_max": acc + 0.03,
        "seeds": runs,
        "runs": runs,
        "outcome": outcomes.split(", ")[0].split(" ", 1)[1],
        "outcomes": outcomes,
        "first_to_last_grad_ratio": ratio,
    }


def test_the_depth_claims_true_false_undecided():
    depth = E.get("depth")
    paper = pd.DataFrame(
        [
            depth_row("none", "default", "3 did not learn", 0.1, 1e-5),
            depth_row("batchnorm", "default", "3 trained"),
            depth_row("none", "kaiming", "3 trained"),
        ]
    )
    assert [e.held for e in depth.expectations(paper)] == [True, True]
    against = pd.DataFrame(
        [
            depth_row("none", "default", "2 trained, 1 did not learn"),
            depth_row("batchnorm", "default", "3 trained"),
            depth_row("none", "kaiming", "1 trained, 2 diverged"),
        ]
    )
    assert [e.held for e in depth.expectations(against)] == [False, False]
    few = pd.DataFrame(
        [
            depth_row("none", "default", "2 did not learn"),
            depth_row("batchnorm", "default", "2 trained"),
        ]
    )
    assert [e.held for e in depth.expectations(few)] == [None]


def test_the_placement_claims_true_false_undecided():
    placement = E.get("placement")

    def table(post_outcome, post_acc, seeds=3):
        rows = [
            ("layernorm", "pre", 0.6, 0.01, seeds, TRAINED),
            ("layernorm", "post", post_acc, 0.01, seeds, post_outcome),
        ]
        return headline("norm_position", rows).assign(lr=0.01, depth=12)

    (pre_ln,) = placement.expectations(table(DID_NOT_LEARN, 0.1))
    assert pre_ln.held is True
    assert placement.expectations(table(TRAINED, 0.6))[0].held is False
    assert placement.expectations(table(DID_NOT_LEARN, 0.1, seeds=2))[0].held is None


def test_the_small_batch_remedies_are_judged_against_batchnorm():
    bs = E.get("batch-size")

    def remedy(acc, sd=0.003):
        rows = batch_rows((0.86, 0.86), (0.85, 0.85))
        extra = headline(
            "batch_size",
            [
                ("cross_iteration_bn", 2, acc, sd, 3, TRAINED),
                ("cross_iteration_bn", 32, 0.86, sd, 3, TRAINED),
            ],
        )
        found = bs.expectations(pd.concat([rows, extra], ignore_index=True))
        return next(e for e in found if e.claim.startswith("Cross-Iteration"))

    assert remedy(0.862).held is True
    behind = remedy(0.85)
    assert behind.held is False and "burn-in" in behind.note
    assert remedy(0.85, sd=0.05).held is None
