"""Sweeps on a Ray cluster: each run a Ray task, results stored by the driver.

``RayExecutor(address)`` connects to a cluster (``"auto"``: the one this
machine belongs to; ``"ray://HEAD:10001"``: through Ray Client; ``None``:
``RAY_ADDRESS`` if set, else a new local instance) and runs each configuration
as a task with as many CPUs as the run has processes (``nproc``, at least
``cpus_per_run``), torch set to that many threads. The worker nodes need not
see the driver's disk: each task sends its result back and the driver writes
it into the results store as it arrives, so resuming works exactly as with
:class:`~normlab.experiments.executors.LocalExecutor`. A local instance the
executor starts stays up for later sweeps of the same process (Ray shuts it
down at exit).

Ray is an optional dependency: ``pip install 'normlab[ray]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch

from normlab.experiments.config import RunConfig


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(
            "the ray executor needs Ray: pip install 'normlab[ray]' (or pip install ray)"
        ) from e
    return ray


def _task(fn: Callable[[RunConfig], object], config: RunConfig, threads: int) -> object:
    """What runs on a Ray worker: ``fn(config)`` with torch on ``threads`` threads."""
    torch.set_num_threads(threads)
    return fn(config)


class RayExecutor:
    """Runs configurations as Ray tasks; yields their results in completion order."""

    # Results come back to the driver, which stores them (workers may be other machines).
    shares_files = False

    def __init__(
        self, address: str | None = None, cpus_per_run: int = 1, init_kwargs: dict | None = None
    ) -> None:
        if cpus_per_run < 1:
            raise ValueError(f"RayExecutor: cpus_per_run must be >= 1, got {cpus_per_run}")
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.init_kwargs = dict(init_kwargs or {})

    def _connect(self, ray) -> None:
        """Join (or start) the cluster unless already connected."""
        if ray.is_initialized():
            return
        kwargs = {"include_dashboard": False, "logging_level": logging.WARNING}
        kwargs.update(self.init_kwargs)
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = self.address or "a new local instance"
            raise RuntimeError(f"ray executor: could not connect to {where}: {e}") from e

    def map(self, fn: Callable[[RunConfig], object], configs: list[RunConfig]) -> Iterator:
        """Yield fn(config) for each config, in completion order."""
        if not configs:
            return
        ray = _import_ray()
        self._connect(ray)
        task = ray.remote(_task)
        pending = []
        for config in configs:
            cpus = max(self.cpus_per_run, config.nproc)
            pending.append(task.options(num_cpus=cpus).remote(fn, config, cpus))
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    yield ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None
        finally:  # interrupted, failed or finished: nothing left running for this sweep
            for ref in pending:
                ray.cancel(ref, force=True)
