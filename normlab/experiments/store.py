"""The results store: one directory per finished run, written atomically.

Layout: ``ROOT/runs/<run_id>/`` (a run id is 16 lowercase hex digits) holding
``config.json``, ``summary.json``, ``metrics.parquet`` and (when monitored)
``monitor.parquet`` and ``sketches.parquet``. A run is written into a temporary
sibling directory and renamed into place in one step, so a run directory
either holds a complete record or does not exist: an interrupted sweep
(Ctrl-C, SIGKILL) loses no finished run and leaves no half record;
temporaries left by a killed writer are removed when the next sweep starts
(:meth:`ResultsStore.remove_partial`).

A run is finished only if every one of its files reads back: a damaged one
(a file emptied, truncated or not what it should be) counts as unfinished,
with a :class:`DamagedRunWarning` naming the file, and the next sweep redoes
it. Anything else under ``ROOT`` is ignored. A sweep holds ``ROOT/.lock``
while it writes (:meth:`ResultsStore.lock`), so two sweeps cannot share a root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from normlab.experiments.config import RunConfig
from normlab.norms import registry

RUN_ID = re.compile(r"[0-9a-f]{16}")
_REQUIRED = ("config.json", "summary.json", "metrics.parquet")
_OPTIONAL = ("monitor.parquet", "sketches.parquet")
# Keys a record must hold to count as finished (an empty JSON object does not).
_KEYS = {
    "config.json": ("dataset", "model", "norm", "seed"),
    "summary.json": ("final_test_acc", "diverged", "steps_done"),
}


class ResultsStoreError(ValueError):
    """A results store's root cannot be used (a file, under a file, not writable)."""


class StoreBusyError(RuntimeError):
    """Another sweep holds the results store's lock."""


class DamagedRunWarning(UserWarning):
    """A run directory with a file that does not read back: the run counts as unfinished."""


@dataclass
class RunResult:
    """What one run produced: a tidy metrics frame (step, metric, value), the
    monitor's frame (or None) and a summary of headline numbers."""

    config: RunConfig
    metrics: pd.DataFrame
    monitor: pd.DataFrame | None
    summary: dict
    sketches: pd.DataFrame | None = None  # the monitor's quantile sketches


def _json_object(path: Path) -> dict:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    missing = [key for key in _KEYS.get(path.name, ()) if key not in value]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    return value


# Columns a run's tables must have; summary fields that must be numbers (bools where
# named so).
_COLUMNS = {"metrics.parquet": {"step", "metric", "value"}}
_NUMBERS = ("final_test_acc", "steps_done")
_BOOLS = ("diverged",)


def _check_content(directory: Path, config: dict, summary: dict) -> None:
    """Raise ValueError naming what does not hold: the config hashes to the run id
    (an edited or copied run directory does not), its norm is a technique, the
    summary's numbers are numbers."""
    text = json.dumps(config, sort_keys=True, default=str)
    if hashlib.sha256(text.encode()).hexdigest()[:16] != directory.name:
        raise ValueError(
            f"{directory / 'config.json'} does not hash to its run id {directory.name} "
            "(edited, or copied from another run)"
        )
    try:
        registry.canonical(str(config["norm"]))
    except KeyError as e:
        raise ValueError(f"{directory / 'config.json'}: {e.args[0]}") from None
    for key in _NUMBERS:
        value = summary[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{directory / 'summary.json'}: {key} is {value!r}, not a number")
    for key in _BOOLS:
        if not isinstance(summary[key], bool):
            raise ValueError(f"{directory / 'summary.json'}: {key} is {summary[key]!r}, not a bool")


def _read_record(directory: Path) -> tuple[dict, dict]:
    """A run's config and summary, once every file of it has read back in full and
    holds what it should; raises ValueError naming the first file that does not."""
    for name in _REQUIRED + _OPTIONAL:
        path = directory / name
        if not path.is_file():
            if name in _REQUIRED:
                raise ValueError(f"{path} is missing")
            continue
        try:
            if name.endswith(".json"):
                _json_object(path)
            else:
                columns = set(pq.read_table(path).column_names)
                missing = _COLUMNS.get(name, set()) - columns
                if missing:
                    raise ValueError(f"no column {', '.join(sorted(missing))}")
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} does not read back ({e})") from e
    config = _json_object(directory / "config.json")
    summary = _json_object(directory / "summary.json")
    _check_content(directory, config, summary)
    return config, summary


def _unusable(root: Path, error: OSError) -> str:
    """Why ``root`` cannot hold a store, given the error creating it."""
    for path in (root, *root.parents):
        if path.exists():
            if not path.is_dir():
                return f"{path} is a file, not a directory"
            break
    where = f" {error.filename}" if error.filename else ""
    return f"cannot create{where}: {error.strerror or error}"


class ResultsStore:
    """Finished runs under ``root``, keyed by run id. Raises :class:`ResultsStoreError`
    if ``root`` is not a directory and cannot be made one."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self._verified: dict[str, tuple[tuple, tuple[dict, dict]]] = {}
        try:
            self.runs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            reason = _unusable(self.root, e)
            raise ResultsStoreError(
                f"cannot use {self.root} as a results store: {reason}"
            ) from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``ROOT/.lock`` (without waiting) for as long as the block writes here;
        raises :class:`StoreBusyError` if another sweep holds it."""
        path = self.root / ".lock"
        lock = FileLock(path)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            raise StoreBusyError(
                f"another sweep is writing to the results store {self.root} (it holds {path}); "
                "wait for it to finish or write elsewhere"
            ) from None
        except OSError as e:
            raise ResultsStoreError(
                f"cannot write to the results store {self.root}: {e.strerror or e}"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def remove_partial(self) -> int:
        """Delete temporaries left by writers that were killed; returns how many.
        Call it only while holding :meth:`lock` (a sweep does, before it starts)."""
        stale = list(self.runs.glob(".tmp-*"))
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    def _record(self, run_id: str) -> tuple[dict, dict] | None:
        """A finished run's config and summary; None if it is absent or damaged
        (then with a :class:`DamagedRunWarning`)."""
        directory = self.runs / run_id
        if not directory.exists():
            return None
        try:
            # A record is read back in full once per version of its files, not on every
            # query: a report asks for the same runs many times.
            version = tuple(
                (f.name, f.stat().st_size, f.stat().st_mtime_ns)
                for f in sorted(directory.iterdir())
            )
            cached = self._verified.get(run_id)
            if cached is None or cached[0] != version:
                self._verified[run_id] = cached = (version, _read_record(directory))
            return cached[1]
        except (ValueError, OSError) as e:  # OSError: a file vanished meanwhile
            warnings.warn(
                f"{e}: run {run_id} counts as unfinished (a sweep redoes it)",
                DamagedRunWarning,
                stacklevel=3,
            )
            return None

    def _records(self) -> Iterator[tuple[str, dict, dict]]:
        for path in sorted(self.runs.iterdir()):
            if RUN_ID.fullmatch(path.name) and (record := self._record(path.name)) is not None:
                yield path.name, *record

    def has(self, config: RunConfig) -> bool:
        """Whether ``config`` has finished: its run directory's files all read back."""
        return self._record(config.run_id) is not None

    def _tmpdir(self) -> Path:
        """A new temporary directory under runs/, made with the user's umask
        (tempfile.mkdtemp's are 0700), which the run directory renamed from it keeps."""
        path = self.runs / f".tmp-{secrets.token_hex(8)}"
        path.mkdir()
        return path

    def write(self, result: RunResult) -> Path:
        """Persist one run atomically (replacing a damaged record of it); returns its directory."""
        final = self.runs / result.config.run_id
        tmp = self._tmpdir()
        aside = None
        try:
            (tmp / "config.json").write_text(json.dumps(result.config.to_dict(), indent=2))
            result.metrics.to_parquet(tmp / "metrics.parquet", index=False)
            if result.monitor is not None:
                result.monitor.to_parquet(tmp / "monitor.parquet", index=False)
            if result.sketches is not None:
                result.sketches.to_parquet(tmp / "sketches.parquet", index=False)
            (tmp / "summary.json").write_text(json.dumps(result.summary, indent=2))
            if final.exists():
                try:
                    _read_record(final)
                except ValueError:  # damaged: move it among the temporaries
                    aside = self._tmpdir()
                    os.replace(final, aside / final.name)
                else:  # the same config finished twice: keep the first
                    shutil.rmtree(tmp)
                    return final
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return final

    def set_current(self, run_ids: list[str], size: str = "default") -> None:
        """Record the runs of the sweep now planned here (atomically): what
        :meth:`ids` and :meth:`summaries` read from then on, so that runs of an
        earlier, different sweep in the same directory are kept but not mixed in;
        and the sweep's ``size`` ("quick", "default" or "full", :meth:`size`)."""
        tmp = self.root / f".current-{secrets.token_hex(4)}.json"
        try:
            tmp.write_text(json.dumps({"runs": sorted(set(run_ids)), "size": size}))
            os.replace(tmp, self.root / "current.json")
        except OSError as e:
            raise ResultsStoreError(
                f"cannot record the current sweep in {self.root / 'current.json'}: "
                f"{e.strerror or e}"
            ) from None

    def _current_record(self) -> dict | None:
        path = self.root / "current.json"
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text())
            if isinstance(value, list):  # written before sizes were recorded
                value = {"runs": value, "size": "default"}
            return {"runs": set(value["runs"]), "size": str(value.get("size", "default"))}
        except (OSError, ValueError, TypeError, KeyError):
            warnings.warn(f"{path} does not read back: every run counts", DamagedRunWarning, 3)
            return None

    def _current(self) -> set[str] | None:
        record = self._current_record()
        return None if record is None else record["runs"]

    def size(self) -> str:
        """The current sweep's size: "quick" (a smoke test), "default" or "full"."""
        record = self._current_record()
        return "default" if record is None else record["size"]

    def ids(self, everything: bool = False) -> list[str]:
        """The finished runs' ids: of the current sweep (see :meth:`set_current`),
        or every finished run here with ``everything``. Anything else under runs/
        is ignored."""
        current = None if everything else self._current()
        return [i for i, _, _ in self._records() if current is None or i in current]

    def summaries(self, everything: bool = False) -> pd.DataFrame:
        """One row per finished run (of the current sweep, unless ``everything``):
        its config fields and its summary."""
        current = None if everything else self._current()
        return pd.DataFrame(
            [
                {"run_id": run_id, **config, **summary}
                for run_id, config, summary in self._records()
                if current is None or run_id in current
            ]
        )

    def metrics(self, run_id: str) -> pd.DataFrame:
        return pd.read_parquet(self.runs / run_id / "metrics.parquet")

    def monitor(self, run_id: str) -> pd.DataFrame | None:
        path = self.runs / run_id / "monitor.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    def sketches(self, run_id: str) -> pd.DataFrame | None:
        path = self.runs / run_id / "sketches.parquet"
        return pd.read_parquet(path) if path.is_file() else None
