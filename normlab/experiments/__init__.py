"""The comparison lab's engine: run configurations, sweeps over them, a results
store that resumes, executors, and the experiments (one module each, in
:mod:`normlab.experiments.suite`).

Names are imported on first use, so that reading results (the report) never
loads the training side (runner, models, data)."""

from __future__ import annotations

import importlib

_WHERE = {
    "EXPERIMENTS": "catalog",
    "Experiment": "experiment",
    "get": "catalog",
    "ConfigError": "config",
    "RunConfig": "config",
    "Sweep": "config",
    "Executor": "executors",
    "LocalExecutor": "executors",
    "RayExecutor": "ray_executor",
    "RunResult": "store",
    "ResultsStore": "store",
    "run": "runner",
    "run_sweep": "sweep",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'normlab.experiments' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"normlab.experiments.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
