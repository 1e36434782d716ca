"""The results store: one directory per finished run, written atomically.

Layout: ``ROOT/runs/<run_id>/`` holding ``config.json``, ``summary.json``,
``metrics.parquet`` and (when monitored) ``monitor.parquet``. A run is written
into a temporary sibling directory and renamed into place in one step, so a
run directory either holds a complete record or does not exist: an
interrupted sweep (Ctrl-C, SIGKILL) loses no finished run and leaves no half
record; temporaries left by a killed writer are removed when the next sweep
starts (:meth:`ResultsStore.remove_partial`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from normlab.experiments.config import RunConfig


@dataclass
class RunResult:
    """What one run produced: a tidy metrics frame (step, metric, value), the
    monitor's frame (or None) and a summary of headline numbers."""

    config: RunConfig
    metrics: pd.DataFrame
    monitor: pd.DataFrame | None
    summary: dict
    sketches: pd.DataFrame | None = None  # the monitor's quantile sketches


class ResultsStore:
    """Finished runs under ``root``, keyed by run id."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)

    def remove_partial(self) -> int:
        """Delete temporaries left by writers that were killed; returns how many.
        Call it only when no writer is running (a sweep does, before it starts)."""
        stale = list(self.runs.glob(".tmp-*"))
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    def has(self, config: RunConfig) -> bool:
        return (self.runs / config.run_id / "summary.json").is_file()

    def write(self, result: RunResult) -> Path:
        """Persist one run atomically; returns its directory."""
        final = self.runs / result.config.run_id
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.runs))
        try:
            (tmp / "config.json").write_text(json.dumps(result.config.to_dict(), indent=2))
            result.metrics.to_parquet(tmp / "metrics.parquet", index=False)
            if result.monitor is not None:
                result.monitor.to_parquet(tmp / "monitor.parquet", index=False)
            if result.sketches is not None:
                result.sketches.to_parquet(tmp / "sketches.parquet", index=False)
            (tmp / "summary.json").write_text(json.dumps(result.summary, indent=2))
            if final.exists():  # the same config finished twice: keep the first
                shutil.rmtree(tmp)
                return final
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.runs.iterdir() if not p.name.startswith("."))

    def summaries(self) -> pd.DataFrame:
        """One row per finished run: its config fields and its summary."""
        rows = []
        for run_id in self.ids():
            directory = self.runs / run_id
            config = json.loads((directory / "config.json").read_text())
            summary = json.loads((directory / "summary.json").read_text())
            rows.append({"run_id": run_id, **config, **summary})
        return pd.DataFrame(rows)

    def metrics(self, run_id: str) -> pd.DataFrame:
        return pd.read_parquet(self.runs / run_id / "metrics.parquet")

    def monitor(self, run_id: str) -> pd.DataFrame | None:
        path = self.runs / run_id / "monitor.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    def sketches(self, run_id: str) -> pd.DataFrame | None:
        path = self.runs / run_id / "sketches.parquet"
        return pd.read_parquet(path) if path.is_file() else None
