"""The article's claims: computed from the numbers (change the numbers, the sentence
changes), three outcomes never conflated, per-Linear gradient flow, a batch-size
study whose only variable is the batch size, and cost measured one run at a time."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import TINY

from normlab import experiments as E
from normlab.experiments import analysis
from normlab.experiments.runner import DID_NOT_LEARN, DIVERGED, TRAINED, classify
from normlab.report import primer


def rows(axis, values):
    """A headline as final_table writes it, from (norm, value, acc, min, max, seeds, outcome)."""
    columns = ["norm", axis, "test_acc", "acc_min", "acc_max", "seeds", "outcome"]
    frame = pd.DataFrame(values, columns=columns)
    frame["diverged"] = (frame.outcome == "diverged").astype(float)
    return frame


def test_three_outcomes_from_the_loss_and_accuracy():
    assert classify(True, 2.3, math.nan, math.nan, 10) == DIVERGED  # non-finite
    assert classify(False, 2.3, 2.5, 0.5, 10) == DIVERGED  # ended above its start
    assert classify(False, 2.3, 2.2, 0.15, 10) == DID_NOT_LEARN  # finite, near chance
    assert classify(False, 2.3, 0.4, 0.333, 10) == TRAINED  # learning: not "diverged"
    assert (
        classify(False, 0.69, 0.6, 0.6, 2) == TRAINED
        and classify(False, 0.69, 0.6, 0.54, 2) == DID_NOT_LEARN
    )


def test_a_run_still_learning_is_not_called_diverged():
    result = E.run(TINY.replace(steps=3, eval_every=None, monitor=False, lr=0.01))
    assert result.summary["outcome"] in (TRAINED, DID_NOT_LEARN) and not result.summary["diverged"]
    blown = E.run(TINY.replace(lr=1e6, steps=30, init_scale=10.0, monitor=False))
    assert blown.summary["outcome"] == DIVERGED


def test_the_lr_claim_follows_the_numbers():
    lr = E.get("lr")
    held = rows(
        "lr",
        [
            ("batchnorm", 0.1, 0.9, 0.88, 0.92, 3, "trained"),
            ("batchnorm", 1.0, 0.9, 0.88, 0.92, 3, "trained"),
            ("none", 0.1, 0.9, 0.88, 0.92, 3, "trained"),
            ("none", 1.0, 0.1, 0.1, 0.1, 3, "diverged"),
        ],
    )
    (claim,) = lr.expectations(held)
    assert claim.held and "batchnorm 1, none 0.1" in claim.measured
    flipped = held.copy()
    flipped.loc[3, ["test_acc", "outcome"]] = (0.9, "trained")
    (claim,) = lr.expectations(flipped)
    assert claim.held is False and "batchnorm 1, none 1" in claim.measured
    assert "none trained at lr 0.1, 1" in lr.finding(flipped)
    assert "none trained at lr 0.1, diverged at lr 1" in lr.finding(held)


def test_batch_size_claims_use_the_spread_and_the_registry():
    bs = E.get("batch-size")
    headline = rows(
        "batch_size",
        [
            ("batchnorm", 2, 0.80, 0.78, 0.82, 2, "trained"),
            ("batchnorm", 32, 0.95, 0.94, 0.96, 2, "trained"),
            ("groupnorm", 2, 0.93, 0.90, 0.96, 2, "trained"),
            ("groupnorm", 32, 0.80, 0.79, 0.81, 2, "trained"),  # worse at 32: the optimization
        ],
    )
    text = bs.finding(headline)
    assert "batchnorm (uses the batch)" in text and "groupnorm (does not use the batch)" in text
    remarks = dict(zip(*bs.summary(None, headline)[["norm", "remark"]].T.values, strict=True))
    assert remarks["groupnorm"] == ""  # does not use the batch: never "batch-sensitive"
    assert remarks["batchnorm"] == "uses the batch: worse at batch 2"
    (claim,) = bs.expectations(headline)
    assert claim.held is True and "+0.130 at batch 2, -0.150 at 32" in claim.measured
    caught_up = headline.copy()
    caught_up.loc[0, ["test_acc", "acc_min", "acc_max"]] = (0.93, 0.91, 0.95)  # BN = GN at 2
    assert bs.expectations(caught_up)[0].held is False
    better_small = headline.copy()  # the sign: a batch user better at small batches
    better_small.loc[[0, 1], "test_acc"] = (0.95, 0.80)
    better_small.loc[[0, 1], ["acc_min", "acc_max"]] = [(0.94, 0.96), (0.78, 0.82)]
    remarks = dict(zip(*bs.summary(None, better_small)[["norm", "remark"]].T.values, strict=True))
    assert remarks["batchnorm"] == "uses the batch: worse at batch 32"
    within = headline.copy()
    within.loc[0, ["test_acc", "acc_min", "acc_max"]] = (0.94, 0.90, 0.97)  # overlaps
    assert "no difference beyond the seed spread" in bs.finding(within)
    one_seed = headline.assign(seeds=1)
    assert bs.expectations(one_seed)[0].held is None  # not testable on one seed


def test_the_batch_size_study_changes_only_the_batch_size():
    configs = E.get("batch-size").sweep(["batchnorm"]).configs()
    per_sample = {c.effective_lr / c.batch_size for c in configs}
    assert len(per_sample) == 1  # the same learning rate per sample
    assert {c.epochs for c in configs} == {3} and all(c.warmup_steps > 0 for c in configs)
    assert min(3 * 4000 // c.batch_size for c in configs) >= 375  # enough steps everywhere
    assert "layernorm_chw" in E.get("batch-size").default_norms  # the paper's LayerNorm


def test_the_paper_layernorm_normalizes_over_c_h_w():
    import normlab

    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    layer = normlab.create("layernorm_chw", 8).double()
    expected = (x - x.mean((1, 2, 3), keepdim=True)) / (
        x.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-5
    ).sqrt()
    assert torch.allclose(layer(x), expected, atol=1e-10)


def test_depth_counts_linear_layers_only(tmp_path):
    config = TINY.replace(norm="batchnorm", depth=3, monitor=True)
    store = E.run_sweep(E.Sweep(config, {}), tmp_path, E.LocalExecutor(1))
    run = store.summaries().iloc[0]
    per_layer = analysis.layer_gradient_norms(store.monitor(run.run_id), run.weight_layers)
    assert len(per_layer) == 4  # 3 hidden Linear + the classifier, no BatchNorm scales
    assert all(name.split(".")[0] in ("1", "4", "7", "10") for name in per_layer.index)
    headline = E.get("depth").headline(store)
    assert headline.first_to_last_grad_ratio.notna().all()


def test_the_ics_sentence_is_computed_from_the_numbers():
    ics = E.get("ics")
    base = {
        "early_test_acc": 0.8,
        "final_test_acc": 0.9,
        "mean_first": 0.0,
        "mean_last": 0.1,
        "seeds": 1,
        "early_test_acc_min": 0.8,
        "early_test_acc_max": 0.8,
        "final_test_acc_min": 0.9,
        "final_test_acc_max": 0.9,
    }
    headline = pd.DataFrame(
        [
            {"norm": "batchnorm", **base, "std_first": 1.0, "std_last": 1.3, "p50_drift": -0.05},
            {"norm": "none", **base, "std_first": 0.5, "std_last": 1.6, "p50_drift": -0.2},
        ]
    )
    text = ics.finding(headline)
    assert "std 1.00 → 1.30 with BatchNorm, 0.50 → 1.60 without" in text
    assert "held the distribution steadier" in text and ics.expectations(headline)[1].held is True
    headline.loc[0, "std_last"] = 2.2  # grew by 1.2, more than without (1.1)
    text = ics.finding(headline)
    assert "std 1.00 → 2.20" in text and "did not hold the distribution steadier" in text
    assert ics.expectations(headline)[1].held is False
    assert ics.expectations(headline)[0].held is None  # one seed: early accuracy untested


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


def test_the_worked_example_is_the_formula():
    x = primer.activation_example()
    table = primer.worked_example(x)
    bn = torch.tensor(table["batchnorm"].to_numpy())
    assert torch.allclose(
        bn, torch.nn.functional.batch_norm(x, None, None, training=True), atol=1e-9
    )
    ln = torch.tensor(table["layernorm"].to_numpy())
    assert torch.allclose(ln, torch.nn.functional.layer_norm(x, x.shape[1:]), atol=1e-9)


@pytest.mark.parametrize("name", ["ics", "batch-size", "lr", "init", "smoothness", "transformer"])
def test_every_anchor_states_its_published_finding(name):
    assert type(E.get(name)).expectations is not E.Experiment.expectations
