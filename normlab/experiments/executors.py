"""Executors run a list of configurations and yield each result as it finishes.

``LocalExecutor(jobs)`` uses worker processes on this machine (one per core
by default; ``jobs=1`` runs in-process). A cluster executor implements the
same ``map`` (see :class:`Executor`); :class:`~normlab.experiments.ray_executor.RayExecutor`
runs on Ray.

Worker processes exit on their own when the process that started them dies
(:func:`exit_with_parent`): killing a sweep leaves nothing running.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Protocol

import torch

from normlab.experiments.config import RunConfig


class Executor(Protocol):
    """Runs ``fn`` on each configuration, yielding the results as they finish.

    ``shares_files``: whether the workers see this machine's disk. If so, each
    worker writes its run into the results store itself; if not, results come
    back and the sweep writes them.
    """

    shares_files: bool

    def map(self, fn: Callable[[RunConfig], object], configs: list[RunConfig]) -> Iterator: ...


def exit_with_parent(parent: int) -> None:
    """Exit this process (``os._exit``) soon after its parent, pid ``parent``, dies.

    A daemon thread polls ``os.getppid()``: once it is no longer ``parent`` (the
    orphan was adopted by init), nothing is left to take this process's result.
    Without it a pool worker whose parent was SIGKILLed waits for work forever.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(threads: int, parent: int) -> None:
    exit_with_parent(parent)
    torch.set_num_threads(threads)


class LocalExecutor:
    """Worker processes on this machine; each gets cores // jobs threads."""

    shares_files = True

    def __init__(self, jobs: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.jobs = jobs or cores
        if self.jobs < 1:
            raise ValueError(f"LocalExecutor: jobs must be >= 1, got {self.jobs}")
        self.threads = max(1, cores // self.jobs)

    def map(self, fn, configs: list[RunConfig]) -> Iterator:
        """Yield fn(config) for each config, in completion order."""
        if self.jobs == 1 or len(configs) <= 1:
            for config in configs:
                yield fn(config)
            return
        # spawn, not fork: a forked child of a process whose thread pools already ran
        # (torch, gloo) can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            self.jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self.threads, os.getpid()),
        ) as pool:
            pending = {pool.submit(fn, c) for c in configs}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
