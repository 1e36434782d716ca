"""The catalog: every experiment, found as the ``EXPERIMENT`` of each module in
:mod:`normlab.experiments.suite`, in report order."""

from __future__ import annotations

import importlib
import pkgutil

from normlab._names import did_you_mean
from normlab.experiments import suite
from normlab.experiments.experiment import Experiment


def _discover() -> dict[str, Experiment]:
    found = []
    for info in pkgutil.iter_modules(suite.__path__):
        module = importlib.import_module(f"{suite.__name__}.{info.name}")
        experiment = getattr(module, "EXPERIMENT", None)
        if not isinstance(experiment, Experiment):
            raise TypeError(f"{module.__name__} defines no EXPERIMENT (an Experiment instance)")
        found.append(experiment)
    found.sort(key=lambda e: (e.order, e.name))
    names = [e.name for e in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two experiments share a name: {names}")
    return {e.name: e for e in found}


EXPERIMENTS: dict[str, Experiment] = _discover()
SUITE: tuple[str, ...] = tuple(name for name, e in EXPERIMENTS.items() if e.in_suite)


def get(name: str) -> Experiment:
    """The experiment called ``name``; KeyError with close matches otherwise."""
    if name not in EXPERIMENTS:
        hint = did_you_mean(name, EXPERIMENTS)
        raise KeyError(f"unknown experiment {name!r}{hint} (available: {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[name]
