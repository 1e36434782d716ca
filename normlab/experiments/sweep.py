"""Running a sweep: skip what is finished, run the rest, store each run as it ends."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from normlab.experiments.config import RunConfig, Sweep
from normlab.experiments.executors import Executor, LocalExecutor
from normlab.experiments.runner import run
from normlab.experiments.store import ResultsStore


def _run_and_store(config: RunConfig, root: str) -> tuple[str, dict]:
    """Train one run and write it, in the worker: a finished run is on disk even if
    the sweep's parent process is killed a moment later."""
    result = run(config)
    ResultsStore(root).write(result)
    return config.run_id, result.summary


def _results(executor: Executor, store: ResultsStore, todo: list[RunConfig]):
    """(run_id, summary) of each finished run, stored by the worker or here."""
    if getattr(executor, "shares_files", True):
        worker = functools.partial(_run_and_store, root=str(store.root))
        yield from executor.map(worker, todo)
        return
    for result in executor.map(run, todo):
        store.write(result)
        yield result.config.run_id, result.summary


def run_sweep(
    sweep: Sweep,
    root: str | Path,
    executor: Executor | None = None,
    on_result: Callable[[RunConfig, dict], None] | None = None,
) -> ResultsStore:
    """Run every configuration of ``sweep`` not already in the store at ``root``.

    Re-running the same sweep resumes it: finished runs (same config, same id)
    are skipped, interrupted or damaged ones run again. The sweep becomes the
    store's current one: its analyses read this sweep's runs only. ``on_result(config, summary)``
    is called as each run finishes (progress bars hook in here). The sweep holds
    the store's lock throughout: a second sweep on the same ``root`` raises
    :class:`~normlab.experiments.store.StoreBusyError`.
    """
    store = ResultsStore(root)
    with store.lock():
        store.remove_partial()
        configs = sweep.configs()
        store.set_current([c.run_id for c in configs], sweep.size)
        todo = list({c.run_id: c for c in configs if not store.has(c)}.values())
        by_id = {c.run_id: c for c in todo}
        executor = executor or LocalExecutor()
        for run_id, summary in _results(executor, store, todo):
            if on_result is not None:
                on_result(by_id[run_id], summary)
    return store
