"""The experiment engine: configs, the runner, sweeps that resume, the atomic
results store under Ctrl-C and SIGKILL, executors, and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from conftest import TINY
from typer.testing import CliRunner

from normlab import experiments as E
from normlab.cli import app
from normlab.experiments import ConfigError, RunConfig, Sweep


def test_config_validation_names_the_field():
    with pytest.raises(
        ConfigError, match=r"norm: unknown normalization 'batchnrom'; did you mean 'batchnorm'"
    ):
        TINY.replace(norm="batchnrom")
    with pytest.raises(ConfigError, match=r"dataset: unknown value 'mnsit'; did you mean 'mnist'"):
        TINY.replace(dataset="mnsit")
    with pytest.raises(
        ConfigError, match="steps: Input should be greater than or equal to 1, got -3"
    ):
        TINY.replace(steps=-3)
    with pytest.raises(ConfigError, match="lr: Input should be greater than 0, got 0"):
        TINY.replace(lr=0)
    with pytest.raises(ConfigError, match=r"grid: unknown field 'nrom'; did you mean norm"):
        Sweep(TINY, {"nrom": ("batchnorm",)}).configs()
    with pytest.raises(ConfigError, match="unknown run config field"):
        RunConfig(**{"colour": "red"})


def test_run_id_is_a_hash_of_the_full_config():
    assert TINY.run_id == RunConfig(**json.loads(json.dumps(TINY.to_dict()))).run_id
    assert TINY.run_id != TINY.replace(seed=1).run_id
    assert (
        len({c.run_id for c in Sweep(TINY, {"norm": ("none", "batchnorm")}, (0, 1)).configs()}) == 4
    )


def test_run_trains_evaluates_and_summarizes():
    result = E.run(TINY.replace(norm="batchnorm"))
    acc = result.metrics[result.metrics.metric == "test_acc"]
    assert list(acc.step) == [10, 20] and acc.value.between(0, 1).all()
    assert result.summary["final_test_acc"] > 0.5  # a separable mixture
    assert result.summary["steps_done"] == 20 and not result.summary["diverged"]
    assert result.summary["activation_mb"] > 0 and result.summary["ms_per_step"] > 0
    assert set(result.monitor.quantity) >= {"mean", "p50", "grad_norm"}


def test_divergence_is_detected_not_crashed():
    result = E.run(TINY.replace(lr=1e6, steps=50, init_scale=10.0, monitor=False))
    assert result.summary["diverged"] and result.summary["steps_done"] < 50
    assert pd.isna(result.summary["final_test_acc"])


def test_epochs_set_the_number_of_steps():
    result = E.run(TINY.replace(epochs=2, batch_size=100, eval_every=1000, monitor=False))
    assert result.summary["steps_done"] == 2 * 1600 // 100


def test_sweep_resumes_and_reruns_only_missing_runs(tmp_path):
    sweep = Sweep(TINY.replace(monitor=False), {"norm": ("none", "batchnorm", "layernorm")})
    done = []
    store = E.run_sweep(sweep, tmp_path, E.LocalExecutor(1), lambda c, s: done.append(c.norm))
    assert sorted(done) == ["batchnorm", "layernorm", "none"] and len(store.ids()) == 3
    done.clear()
    E.run_sweep(sweep, tmp_path, E.LocalExecutor(1), lambda c, s: done.append(c.norm))
    assert done == []
    victim = next(c for c in sweep.configs() if c.norm == "layernorm")
    for f in (store.runs / victim.run_id).iterdir():
        f.unlink()
    (store.runs / victim.run_id).rmdir()
    E.run_sweep(sweep, tmp_path, E.LocalExecutor(1), lambda c, s: done.append(c.norm))
    assert done == ["layernorm"]
    table = store.summaries()
    assert len(table) == 3 and {"norm", "final_test_acc", "run_id"} <= set(table.columns)


def test_a_failing_write_leaves_no_half_record(tmp_path, monkeypatch):
    result = E.run(TINY.replace(monitor=False))
    store = E.ResultsStore(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write(result)
    assert store.ids() == [] and list(store.runs.iterdir()) == []


def test_parallel_executor_matches_in_process(tmp_path):
    sweep = Sweep(TINY.replace(monitor=False), {"norm": ("none", "batchnorm")}, (0, 1))
    one = E.run_sweep(sweep, tmp_path / "one", E.LocalExecutor(1)).summaries()
    two = E.run_sweep(sweep, tmp_path / "two", E.LocalExecutor(2)).summaries()
    merged = one.merge(two, on="run_id", suffixes=("_1", "_2"))
    assert len(merged) == 4
    assert (merged.final_test_acc_1 - merged.final_test_acc_2).abs().max() < 0.02


SWEEP_SCRIPT = textwrap.dedent(
    """
    import dataclasses, sys
    from normlab import experiments as E
    from normlab.experiments import RunConfig, Sweep
    base = RunConfig(dataset="synthetic", model="mlp", depth=2, width=64, activation="relu",
                     init="kaiming", lr=0.05, batch_size=32, steps=150, eval_every=50,
                     monitor=False)
    sweep = Sweep(base, {"norm": ("none", "batchnorm", "layernorm", "groupnorm", "rmsnorm", "dyt")})
    E.run_sweep(sweep, sys.argv[1], E.LocalExecutor(1))
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_sweep_loses_no_finished_run_and_resumes(tmp_path, sig):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    root = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, str(script), str(root)])
    runs = root / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        runs.is_dir() and any(not p.name.startswith(".") for p in runs.iterdir())
    ):
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    finished = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert 1 <= len(finished) < 6, "the sweep should be interrupted part-way"
    for run_dir in finished:  # every record is whole
        assert {"config.json", "summary.json", "metrics.parquet"} <= {
            f.name for f in run_dir.iterdir()
        }
        json.loads((run_dir / "summary.json").read_text())
    before = {p.name: (p / "summary.json").read_text() for p in finished}
    subprocess.run([sys.executable, str(script), str(root)], check=True, timeout=300)
    after = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert len(after) == 6 and not [p for p in runs.iterdir() if p.name.startswith(".")]
    for name, text in before.items():  # finished runs were kept, not redone
        assert (runs / name / "summary.json").read_text() == text


def test_cli_run_quick_experiment(tmp_path):
    result = CliRunner().invoke(
        app, ["run", "init", "--quick", "--jobs", "1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "init: 6 runs, 0 already done" in result.output
    headline = pd.read_csv(tmp_path / "init" / "headline.csv")
    assert set(headline.norm) == {"none", "batchnorm", "layernorm"}
    again = CliRunner().invoke(
        app, ["run", "init", "--quick", "--jobs", "1", "--out", str(tmp_path)]
    )
    assert "6 already done" in again.output


@pytest.mark.parametrize(
    "experiment, model, said, not_said",
    [
        ("lr", "transformer", "patch transformer", "CNN"),
        ("init", "transformer", "patch transformer", "MLP"),
        ("init", None, "an MLP of", "transformer"),
    ],
)
def test_cli_run_headline_title_names_the_model_that_ran(
    tmp_path, experiment, model, said, not_said
):
    """The headline's title names the model the runs trained, not the experiment's default."""
    args = ["run", experiment, "--quick", "--jobs", "1", "--norms", "none", "--seeds", "1"]
    args += ["--model", model] if model else []
    args += ["--set", "lr=0.1"] if experiment == "lr" else []
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    title = next(
        line
        for line in result.output.splitlines()
        if f"{experiment}: " in line and "Trained" in line
    )
    assert said in title and not_said not in title, title


def _flat(output: str) -> str:
    """The text of a Rich error box without its frame and line breaks."""
    return " ".join(output.replace("│", " ").split())


def test_cli_run_rejects_unknown_names(tmp_path):
    result = CliRunner().invoke(app, ["run", "icss", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'icss' is not one of 'ics'" in _flat(result.output)
    result = CliRunner().invoke(app, ["run", "ics", "--norms", "batchnrom", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "did you mean 'batchnorm'" in _flat(result.output)


def test_every_experiment_builds_a_valid_quick_sweep():
    for name, experiment in E.EXPERIMENTS.items():
        configs = experiment.sweep(quick=True).configs()
        assert configs, name


def test_cli_set_overrides_run_fields(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "run",
            "init",
            "--quick",
            "--jobs",
            "1",
            "--set",
            "steps=7",
            "--set",
            "width=8",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    table = E.ResultsStore(tmp_path / "init").summaries()
    assert set(table.steps) == {7} and set(table.width) == {8} and set(table.steps_done) == {7}
    bad = CliRunner().invoke(app, ["run", "init", "--set", "stepz=3", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "expected FIELD=VALUE" in _flat(bad.output)


def test_noisy_batchnorm_and_probes_in_the_runner():
    config = TINY.replace(norm="batchnorm", noise=1.0, probe_every=10, monitor=False)
    result = E.run(config)
    names = set(result.metrics.metric)
    assert {"loss_variation", "gradient_predictiveness", "beta_smoothness"} <= names
    assert any(n.startswith("ics_l2/") for n in names)
    assert sorted(result.metrics[result.metrics.metric == "beta_smoothness"].step) == [0, 10]
    plain = E.run(config.replace(noise=0.0))
    assert result.summary["final_train_loss"] != plain.summary["final_train_loss"]


def test_norm_specific_kwargs_reach_only_their_norm():
    from normlab.experiments.runner import norm_kwargs_for

    kwargs = (("eps", 1e-3), ("batchrenorm:warmup_steps", 0), ("gn:num_groups", 4))
    assert norm_kwargs_for(TINY.replace(norm="brn", norm_kwargs=kwargs)) == {
        "eps": 1e-3,
        "warmup_steps": 0,
    }
    assert norm_kwargs_for(TINY.replace(norm="groupnorm", norm_kwargs=kwargs)) == {
        "eps": 1e-3,
        "num_groups": 4,
    }
    assert norm_kwargs_for(TINY.replace(norm="layer", norm_kwargs=kwargs)) == {"eps": 1e-3}


def test_data_parallel_sync_batchnorm_equals_one_process_on_the_global_batch():
    """2 processes x batch 16 with SyncBatchNorm train exactly as 1 process x 32
    with BatchNorm (DDP averages the gradients, the statistics span both)."""
    base = TINY.replace(steps=12, eval_every=6, monitor=False, lr=0.05)
    one = E.run(base.replace(norm="batchnorm", batch_size=32))
    two = E.run(base.replace(norm="sync_bn", batch_size=16, nproc=2))
    a, b = one.metrics, two.metrics
    for metric in ("test_acc", "test_loss"):
        x = a[a.metric == metric].value.to_numpy()
        y = b[b.metric == metric].value.to_numpy()
        assert len(x) == len(y) == 2
        assert abs(x - y).max() < 1e-4, (metric, x, y)
    local = E.run(base.replace(norm="batchnorm", batch_size=16, nproc=2))
    assert local.summary["steps_done"] == 12  # per-process BatchNorm runs too


def test_data_parallel_config_errors():
    with pytest.raises(ConfigError, match="need nproc=1"):
        TINY.replace(nproc=2, probe_every=5)
    with pytest.raises(ConfigError, match="nproc: Input should be greater than or equal to 1"):
        TINY.replace(nproc=0)


def test_every_technique_is_compared_in_some_experiment():
    """A technique added to the registry reaches the lab: each is in some experiment's
    default or full comparison (FrozenBatchNorm, for fine-tuning, in none)."""
    from normlab.experiments import catalog
    from normlab.norms import registry

    compared = {
        registry.spec(name).name
        for experiment in catalog.EXPERIMENTS.values()
        for name in (*experiment.default_norms, *(experiment.full_norms or ()))
    }
    assert set(registry.available()) - compared == {"frozenbatchnorm"}
