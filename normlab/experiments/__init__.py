"""The comparison lab's engine: run configurations, sweeps over them, a results
store that resumes, executors, and the catalog of experiments."""

from normlab.experiments.catalog import EXPERIMENTS, Experiment, get
from normlab.experiments.config import ConfigError, RunConfig, Sweep
from normlab.experiments.executors import Executor, LocalExecutor
from normlab.experiments.ray_executor import RayExecutor
from normlab.experiments.runner import RunResult, run
from normlab.experiments.store import ResultsStore
from normlab.experiments.sweep import run_sweep

__all__ = [
    "EXPERIMENTS",
    "ConfigError",
    "Executor",
    "Experiment",
    "LocalExecutor",
    "RayExecutor",
    "ResultsStore",
    "RunConfig",
    "RunResult",
    "Sweep",
    "get",
    "run",
    "run_sweep",
]
