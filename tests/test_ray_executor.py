"""Sweeps on Ray: the same results and resume semantics as the local executor.

A local Ray instance with 2 CPUs is started once for the module. The oracle is
the local executor: both run every task on one torch thread (LocalExecutor(2)
on this 2-core machine, a 1-CPU Ray task), so the runs must agree exactly.
"""

from __future__ import annotations

import logging
import sys

import pandas as pd
import pytest
from conftest import TINY
from typer.testing import CliRunner

from normlab import experiments as E
from normlab.cli import app
from normlab.experiments import Sweep

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'normlab[ray]'")

# Wall-clock measurements differ between any two runs.
TIMINGS = ["ms_per_step", "ms_per_step_iqr", "wall_seconds", "machine"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _sweep(monitor: bool) -> Sweep:
    return Sweep(TINY.replace(monitor=monitor), {"norm": ("none", "batchnorm")}, (0, 1))


def test_ray_sweep_stores_exactly_what_the_local_executor_does(tmp_path, local_ray):
    sweep = _sweep(monitor=True)
    local = E.run_sweep(sweep, tmp_path / "local", E.LocalExecutor(2))
    seen = []
    on_ray = E.run_sweep(
        sweep, tmp_path / "ray", E.RayExecutor(), lambda c, s: seen.append(c.run_id)
    )
    assert sorted(seen) == sorted(local.ids()) and len(seen) == 4
    for run_id in local.ids():
        pd.testing.assert_frame_equal(on_ray.metrics(run_id), local.metrics(run_id))
        ours, theirs = (store.runs / run_id for store in (on_ray, local))
        pd.testing.assert_frame_equal(
            pd.read_parquet(ours / "monitor.parquet"), pd.read_parquet(theirs / "monitor.parquet")
        )
    key = ["run_id"]
    pd.testing.assert_frame_equal(
        on_ray.summaries().drop(columns=TIMINGS).sort_values(key).reset_index(drop=True),
        local.summaries().drop(columns=TIMINGS).sort_values(key).reset_index(drop=True),
    )


def test_ray_sweep_resumes_and_reruns_only_missing_runs(tmp_path, local_ray):
    sweep = _sweep(monitor=False)
    done = []
    store = E.run_sweep(sweep, tmp_path, E.RayExecutor(), lambda c, s: done.append(c.run_id))
    assert len(done) == 4
    done.clear()
    E.run_sweep(sweep, tmp_path, E.RayExecutor(), lambda c, s: done.append(c.run_id))
    assert done == []
    victim = sweep.configs()[1]
    for f in (store.runs / victim.run_id).iterdir():
        f.unlink()
    (store.runs / victim.run_id).rmdir()
    (store.runs / ".tmp-killed-writer").mkdir()  # left by a driver killed mid-write
    E.run_sweep(sweep, tmp_path, E.RayExecutor(), lambda c, s: done.append(c.run_id))
    assert done == [victim.run_id] and len(store.ids()) == 4
    assert not (store.runs / ".tmp-killed-writer").exists()


def test_a_failing_run_raises_its_own_error_on_the_driver(tmp_path, local_ray):
    broken = TINY.replace(monitor=False, batch_size=10**6)  # valid, fails in the worker
    with pytest.raises(ValueError, match="batch_size 1000000 exceeds the 1600 training examples"):
        E.run_sweep(Sweep(broken, {}), tmp_path, E.RayExecutor())
    assert E.ResultsStore(tmp_path).ids() == []


def test_cli_run_and_compare_on_ray(tmp_path, local_ray):
    args = ["run", "init", "--quick", "--executor", "ray", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "init" / "headline.csv").is_file()
    report = tmp_path / "report"
    args = [
        "compare",
        "--quick",
        "--experiments",
        "init",
        "--executor",
        "ray",
        "--out",
        str(report),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (report / "index.html").is_file() and (report / "results" / "init" / "runs").is_dir()


def test_cli_rejects_mismatched_executor_options(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["run", "init", "--quick", "--address", "auto", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--address needs --executor ray" in result.output
    result = runner.invoke(
        app, ["run", "init", "--quick", "--executor", "slurm", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "'slurm' is not one of 'local', 'ray'" in result.output
    args = ["run", "init", "--quick", "--executor", "ray", "--jobs", "2", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--jobs is for --executor local" in result.output


def test_missing_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'normlab\[ray\]'"):
        E.run_sweep(_sweep(monitor=False), tmp_path, E.RayExecutor())


def test_bad_cpus_per_run_is_refused():
    with pytest.raises(ValueError, match="cpus_per_run must be >= 1"):
        E.RayExecutor(cpus_per_run=0)
