"""The results store: damaged runs are redone, strays ignored, one sweep per root,
no orphaned workers, clear errors for unusable roots, the user's umask."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from conftest import TINY
from filelock import FileLock

from normlab.experiments import LocalExecutor, ResultsStore, Sweep, run_sweep
from normlab.experiments.store import DamagedRunWarning, ResultsStoreError, StoreBusyError


def _sweep() -> Sweep:
    return Sweep(TINY.replace(steps=5, eval_every=5), {"norm": ("none", "batchnorm")})


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "empty config.json": ("config.json", lambda p: p.write_text("")),
    "summary.json not an object": ("summary.json", lambda p: p.write_text("[1, 2]")),
    "summary.json missing": ("summary.json", Path.unlink),
    "truncated metrics.parquet": ("metrics.parquet", _truncate),
    "garbage monitor.parquet": ("monitor.parquet", lambda p: p.write_bytes(b"not parquet")),
    "truncated sketches.parquet": ("sketches.parquet", _truncate),
    # issue 25: records that read back but are not what the run id says or holds
    "config.json edited": ("config.json", lambda p: _edit_json(p, steps=7)),
    "config.json of an unknown norm": ("config.json", lambda p: _edit_json(p, norm="nosuch")),
    "summary.json value not a number": (
        "summary.json",
        lambda p: _edit_json(p, final_test_acc="abc"),
    ),
    "metrics.parquet of other columns": (
        "metrics.parquet",
        lambda p: __import__("pandas").DataFrame({"a": [1]}).to_parquet(p),
    ),
}


def _edit_json(path: Path, **changes) -> None:
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_run_counts_as_unfinished_and_the_sweep_redoes_it(tmp_path, damage):
    assert issubclass(DamagedRunWarning, UserWarning)
    sweep = _sweep()
    victim, other = sweep.configs()
    store = run_sweep(sweep, tmp_path, LocalExecutor(1))
    name, spoil = DAMAGE[damage]
    path = store.runs / victim.run_id / name
    spoil(path)
    named = re.escape(str(path))
    with pytest.warns(DamagedRunWarning, match=named):
        assert not store.has(victim)
    with pytest.warns(DamagedRunWarning, match=named):
        assert store.ids() == [other.run_id]
    with pytest.warns(DamagedRunWarning, match=named):
        assert list(store.summaries().run_id) == [other.run_id]
    done = []
    with pytest.warns(DamagedRunWarning, match=named):
        run_sweep(sweep, tmp_path, LocalExecutor(1), lambda c, s: done.append(c.run_id))
    assert done == [victim.run_id]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewrite replaced the damaged record
        assert store.has(victim) and store.ids() == sorted([victim.run_id, other.run_id])
        assert len(store.summaries()) == 2 and len(store.sketches(victim.run_id)) > 0
    assert [p.name for p in store.runs.iterdir() if p.name.startswith(".")] == []


def test_stray_files_and_folders_are_ignored(tmp_path):
    store = ResultsStore(tmp_path)
    (store.runs / "notes.txt").write_text("remember the milk")
    (store.runs / "somedir").mkdir()
    (store.runs / "somedir" / "summary.json").write_text("{}")
    (store.runs / "0123456789ABCDEF").mkdir()  # not lowercase: not a run id
    (store.runs / "0123456789abcdef0").mkdir()  # 17 digits
    (tmp_path / "junk").write_text("junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.ids() == [] and store.summaries().empty
        sweep = _sweep()
        run_sweep(sweep, tmp_path, LocalExecutor(1))
        assert store.ids() == sorted(c.run_id for c in sweep.configs())
        assert list(store.summaries().run_id) == store.ids()
        assert all(store.has(c) for c in sweep.configs())
    assert all(re.fullmatch(r"[0-9a-f]{16}", run_id) for run_id in store.ids())


def test_a_second_sweep_on_the_same_root_is_refused(tmp_path):
    store = ResultsStore(tmp_path)
    inflight = store.runs / ".tmp-inflight"  # a run the first sweep is writing
    inflight.mkdir()
    with FileLock(tmp_path / ".lock"):  # what the first sweep holds
        with pytest.raises(
            StoreBusyError,
            match=rf"another sweep is writing to the results store {re.escape(str(tmp_path))}",
        ):
            run_sweep(_sweep(), tmp_path, LocalExecutor(1))
        assert inflight.is_dir() and store.ids() == []
    run_sweep(_sweep(), tmp_path, LocalExecutor(1))  # free again
    assert len(store.ids()) == 2 and not inflight.exists()


def test_unusable_roots_are_refused_in_one_line(tmp_path):
    file = tmp_path / "file"
    file.write_text("not a directory")
    for root, reason in [
        (file, f"{file} is a file, not a directory"),
        (file / "sub" / "store", f"{file} is a file, not a directory"),
        (Path("/proc/normlab-no-such-dir/store"), "cannot create /proc/normlab-no-such-dir: "),
    ]:
        with pytest.raises(ResultsStoreError) as error:
            ResultsStore(root)
        message = str(error.value)
        assert message.startswith(f"cannot use {root} as a results store: {reason}"), message
        assert "\n" not in message and isinstance(error.value, ValueError)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=oct)
def test_run_directories_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = run_sweep(_sweep(), tmp_path, LocalExecutor(1))
    finally:
        os.umask(old)
    for run_id in store.ids():
        directory = store.runs / run_id
        assert directory.stat().st_mode & 0o777 == 0o777 & ~umask
        for f in directory.iterdir():
            assert f.stat().st_mode & 0o777 == 0o666 & ~umask


KILLED_SWEEP = textwrap.dedent(
    """
    import sys
    from normlab import experiments as E
    if __name__ == "__main__":  # not in the spawned workers
        base = E.RunConfig(dataset="synthetic", model="mlp", depth=2, width=64, activation="relu",
                           init="kaiming", lr=0.05, batch_size=32, steps=4000, eval_every=1000,
                           monitor=False)
        E.run_sweep(E.Sweep(base, {}, tuple(range(8))), sys.argv[1], E.LocalExecutor(2))
    """
)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has exited


def test_killing_a_sweep_leaves_no_worker_behind(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(KILLED_SWEEP)
    runs = tmp_path / "results" / "runs"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "results")])
    workers: set[int] = set()
    try:
        deadline = time.time() + 180
        while (
            time.time() < deadline
            and proc.poll() is None
            and not (runs.is_dir() and any(not p.name.startswith(".") for p in runs.iterdir()))
        ):  # the workers have started and finished a run
            time.sleep(0.05)
        workers = _descendants(proc.pid)
        assert proc.poll() is None, "the sweep should still be running"
        assert len(workers) >= 2, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the sweep"
    finally:
        proc.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_current_json_that_is_not_a_list_of_run_ids_hides_nothing(tmp_path):
    store = run_sweep(_sweep(), tmp_path, LocalExecutor(1))
    (tmp_path / "current.json").write_text('"abc"')
    with pytest.warns(DamagedRunWarning, match="current.json"):
        assert len(store.ids()) == 2  # every run counts, none hidden


def test_set_current_failing_is_a_store_error_naming_the_file(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".current-x.json"))

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(ResultsStoreError, match=r"cannot record the current sweep.*denied"):
        store.set_current(["0" * 16])


def test_a_damaged_run_is_named_once_per_read(tmp_path):
    sweep = _sweep()
    store = run_sweep(sweep, tmp_path, LocalExecutor(1))
    victim = sweep.configs()[0]
    (store.runs / victim.run_id / "summary.json").write_text("")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        store.summaries()
    assert len([w for w in record if issubclass(w.category, DamagedRunWarning)]) == 1
