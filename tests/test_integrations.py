"""normlab.integrations: the Monitor inside Lightning's and Hugging Face's Trainers
(they train here, on CPU, for a few dozen steps), its summaries and histograms
written to TensorBoard and W&B and read back from their files, and the imports
(nothing heavy unless used; a missing package names its extra)."""

from __future__ import annotations

import contextlib
import datetime
import glob
import importlib
import itertools
import json
import math
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from normlab.monitor import Monitor

EXTRAS = {  # module of normlab.integrations -> the packages it needs
    "lightning": ("lightning", "lightning.pytorch"),
    "transformers": ("transformers",),
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
}


def _latest_at(frame: pd.DataFrame, step: int) -> dict[str, float]:
    """What Monitor.latest() answered after ``step``: per module and quantity the
    last finite value recorded at or before it."""
    rows = frame[(frame.step <= step) & np.isfinite(frame.value)]
    last = rows.sort_values("step", kind="stable").groupby(["module", "quantity"]).tail(1)
    return {
        f"normlab/{m}/{q}": v
        for m, q, v in zip(last.module, last.quantity, last.value, strict=True)
    }


def _events(directory, histograms=True):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def _scalars(accumulator) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for tag in accumulator.Tags()["scalars"]:
        for event in accumulator.Scalars(tag):
            out.setdefault(event.step, {})[tag] = event.value
    return out


# ---------------------------------------------------------------- imports


def test_importing_normlab_imports_no_integration_package():
    code = (
        "import sys, normlab, normlab.integrations, normlab.monitor\n"
        "heavy = ('lightning', 'pytorch_lightning', 'transformers', 'tensorboard', 'wandb',"
        " 'torch.utils.tensorboard')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_a_missing_package_names_its_extra(monkeypatch, module):
    for package in EXTRAS[module]:
        monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    monkeypatch.delitem(sys.modules, f"normlab.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'normlab\[{module}\]'"):
        importlib.import_module(f"normlab.integrations.{module}")


@pytest.mark.parametrize("module", ["lightning", "transformers"])
@pytest.mark.parametrize("kwarg", ["optimizer", "steps"])
def test_callbacks_refuse_what_they_decide_themselves(module, kwarg):
    pytest.importorskip(EXTRAS[module][-1])
    callback = importlib.import_module(f"normlab.integrations.{module}").MonitorCallback
    with pytest.raises(TypeError, match=f"do not pass {kwarg}="):
        callback(**{kwarg: "manual"})


# ---------------------------------------------------------------- TensorBoard, W&B


def _trained_monitor(steps, **kwargs):
    """A sigmoid MLP trained ``steps`` steps under a Monitor; after each step
    ``kwargs["after"](monitor, step, sigmoid_input)`` runs."""
    after = kwargs.pop("after")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 20), nn.BatchNorm1d(20), nn.Sigmoid(), nn.Linear(20, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {}
    model[2].register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    monitor = Monitor(model, optimizer=opt, grad_every=1, **kwargs).attach()
    for step in range(steps):
        x, y = torch.randn(16, 6) * 4, torch.randint(0, 3, (16,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        after(monitor, step, seen["x"])
    monitor.detach()
    return monitor


def _oracle_counts(x: torch.Tensor, edges: torch.Tensor) -> np.ndarray:
    """K + 2 counts: <= edges[0], each (edges[i-1], edges[i]], > edges[-1]."""
    values, grid = x.double().flatten().numpy(), edges.double().numpy()
    below = (values <= grid[0]).sum()
    inside = [((values > lo) & (values <= hi)).sum() for lo, hi in itertools.pairwise(grid)]
    return np.array([below, *inside, (values > grid[-1]).sum()])


def test_tensorboard_write_reads_back_scalars_and_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from normlab.integrations import DEFAULT_EDGES, tensorboard

    writer = SummaryWriter(str(tmp_path))
    expected, oracle = {}, {}
    edges = torch.linspace(-2.0, 2.0, 9)  # BatchNorm's output spills over both ends

    def after(monitor, step, x):
        tensorboard.write(monitor, writer, step, edges=edges)
        expected[step] = {f"normlab/{k}": v for k, v in monitor.latest().items()}
        oracle[step] = _oracle_counts(x, edges)

    monitor = _trained_monitor(3, after=after, sample_size=4096)  # 320 values: all recorded
    writer.close()
    events = _events(tmp_path)
    assert _scalars(events) == expected  # every quantity, every step, exactly (float32)
    tags = set(events.Tags()["histograms"])
    assert tags == {"normlab/1/histogram", "normlab/2/histogram"}  # BatchNorm out, Sigmoid in
    frame = monitor.to_frame()
    for event in events.Histograms("normlab/2/histogram"):
        h = event.histogram_value
        assert list(h.bucket_limit[:-1]) == edges.tolist()
        assert h.bucket_limit[-1] == h.max >= 2.0 and h.min <= -2.0
        np.testing.assert_array_equal(h.bucket, oracle[event.step])
        assert sum(h.bucket) == h.num == 16 * 20
        rec = frame[(frame.module == "2") & (frame.step == event.step)].set_index("quantity").value
        assert h.sum == pytest.approx(rec["mean"] * h.num, rel=1e-5, abs=1e-4)
        assert h.max == pytest.approx(rec["max"]) and h.min == pytest.approx(rec["min"])
    assert len(DEFAULT_EDGES) == 65 and DEFAULT_EDGES[0] == -8 and DEFAULT_EDGES[-1] == 8


def _wandb_log_file(run) -> str:
    """Where an offline run keeps its transaction log (ask before run.finish())."""
    return os.path.join(os.path.dirname(run.dir), f"run-{run.id}.wandb")


def _wandb_history(path) -> list[dict]:
    """The history rows of an offline run, from its transaction log (the .wandb
    file: LevelDB's log format, 32 KiB blocks, 7-byte record headers, after a
    7-byte file header; each record a wandb Record protobuf)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    rows, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # a zero (preallocated) chunk: the rest of the block is padding
            pos += block - pos % block
            pending = b""
            continue
        if pos + 7 + length > len(data):
            break  # a record still being written
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        # record pieces: 1 full, 2 first, 3 middle, 4 last
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        tuple(item.nested_key) or (item.key,): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
    return rows


def _wandb_history_when(path, complete) -> list[dict]:
    """The history rows once ``complete(rows)`` holds: wandb's service process may
    still be writing the log after ``finish()`` returns (waits up to 10 s)."""
    rows: list[dict] = []
    for _ in range(100):
        with contextlib.suppress(Exception):  # a record caught half-written
            rows = _wandb_history(path)
            if complete(rows):
                break
        time.sleep(0.1)
    return rows


def _wandb_offline(monkeypatch, directory):
    """W&B offline, everything it writes under ``directory``."""
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(directory),
        "WANDB_CONFIG_DIR": str(directory / "config"),
        "WANDB_CACHE_DIR": str(directory / "cache"),
        "WANDB_DATA_DIR": str(directory / "data"),
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
    }.items():
        monkeypatch.setenv(key, value)


def test_wandb_write_offline_reads_back_scalars_and_histograms(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    _wandb_offline(monkeypatch, tmp_path)
    import wandb

    from normlab.integrations import wandb as normlab_wandb
    from normlab.integrations._common import DEFAULT_EDGES

    run = wandb.init(project="normlab-test", mode="offline", dir=str(tmp_path))
    expected, oracle = {}, {}

    def after(monitor, step, x):
        normlab_wandb.write(monitor, run, step, quantities=("mean", "std", "grad_norm"))
        expected[step] = {
            f"normlab/{k}": v
            for k, v in monitor.latest().items()
            if k.rsplit("/", 1)[1] in ("mean", "std", "grad_norm")
        }
        oracle[step] = _oracle_counts(x, DEFAULT_EDGES)

    _trained_monitor(2, after=after, sample_size=4096)
    log_file = _wandb_log_file(run)
    run.finish()
    history = _wandb_history_when(log_file, lambda rows: len(rows) >= 2)
    rows = {row[("_step",)]: row for row in history}
    assert sorted(rows) == [0, 1]
    for step, row in rows.items():
        scalars = {k[0]: v for k, v in row.items() if len(k) == 1 and k[0].startswith("normlab/")}
        assert scalars == pytest.approx(expected[step], rel=1e-7)
        assert set(scalars) == set(expected[step])
        hist = "normlab/2/histogram"
        assert row[(hist, "_type")] == "histogram"
        assert row[(hist, "values")] == oracle[step].tolist()
        bins = row[(hist, "bins")]
        assert bins[1:-1] == DEFAULT_EDGES.tolist() and len(bins) == 67
        assert bins[0] <= -8 and bins[-1] >= 8


# ---------------------------------------------------------------- Lightning


def _lightning_module(pl, fused=None):
    class Net(pl.LightningModule):
        """A sigmoid MLP with a BatchNorm; it keeps, as oracles, its parameters'
        gradient norms (unscaled) and update ratios and the norm of dL/d(sigmoid
        input) (of the loss as backpropagated: scaled under AMP) per training step."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Linear(8, 32), nn.BatchNorm1d(32), nn.Sigmoid(), nn.Linear(32, 2)
            )
            self.grad_norms, self.update_ratios, self.input_grads, self.scales = {}, {}, {}, {}
            self.net[2].register_forward_pre_hook(self._watch_input)

        def _watch_input(self, module, args):
            if self.training and args[0].requires_grad:
                step = self.trainer.global_step
                norm = lambda g: self.input_grads.__setitem__(step, g.float().norm().item())  # noqa: E731
                args[0].register_hook(norm)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self.net(x), y))

        def on_after_backward(self):  # the gradients as backpropagated, before any unscaling
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            step = self.trainer.global_step
            scale = self.scales[step] = 1.0 if scaler is None else scaler.get_scale()
            self.grad_norms[step] = {
                n: p.grad.norm().item() / scale for n, p in self.named_parameters()
            }

        def on_before_optimizer_step(self, optimizer):
            self._before = {n: p.detach().clone() for n, p in self.named_parameters()}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            step = self.trainer.global_step - 1
            self.update_ratios[step] = {
                n: ((p.detach() - self._before[n]).norm() / self._before[n].norm()).item()
                for n, p in self.named_parameters()
            }

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9, fused=fused)

    return Net()


def _loader(n=96, batch=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator) * 3
    y = (x[:, 0] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def _check_against_oracles(model, frame, scaled):
    """The monitor's parameter gradients and update ratios equal the model's own,
    taken right before/after the update; its sigmoid-input gradient norm equals
    the backpropagated one divided by the loss scale."""
    grads = frame[frame.quantity == "grad_norm"].dropna()
    assert len(grads) > 0
    for step, module, value in zip(grads.step, grads.module, grads.value, strict=True):
        if module == "net.2":
            raw = model.input_grads[step]
            assert value == pytest.approx(raw / model.scales[step], rel=1e-5)
            if scaled:
                assert model.scales[step] > 1 and value < raw / 2
        elif module != "net.1":
            assert value == pytest.approx(model.grad_norms[step][module], rel=1e-5)
    ratios = frame[frame.quantity == "update_ratio"].dropna()
    assert len(ratios) > 0
    for step, module, value in zip(ratios.step, ratios.module, ratios.value, strict=True):
        assert value == pytest.approx(model.update_ratios[step][module], rel=1e-4)


def test_lightning_callback_records_the_training_steps_and_logs_them(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from normlab.integrations.lightning import MonitorCallback

    callback = MonitorCallback(log_every_n_steps=4, grad_every=3)
    model = _lightning_module(pl)
    trainer = pl.Trainer(
        max_steps=24,
        logger=[CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path / "tb")],
        callbacks=[callback],
        val_check_interval=10,  # validation inside the epoch, and the sanity check before
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _loader(), _loader(seed=1))
    monitor = callback.monitor
    assert monitor.step == 23  # 24 training batches; the validation passes are not steps
    frame = monitor.to_frame()
    assert sorted(frame.step.unique()) == list(range(24))
    assert set(monitor.sites) == {
        "net.1",
        "net.2",
    }  # no "net.2#1": validation calls were not recorded
    _check_against_oracles(model, frame, scaled=False)

    # the CSV logger's rows: steps 3, 7, ..., 23, each holding the latest records
    csv = pd.read_csv(glob.glob(str(tmp_path / "csv" / "**" / "metrics.csv"), recursive=True)[0])
    columns = [c for c in csv.columns if c.startswith("normlab/")]
    assert {
        "normlab/net.2/std",
        "normlab/net.2/saturated",
        "normlab/net.0.weight/update_ratio",
    } <= set(columns)
    assert not any(c.endswith(("/p50", "/min", "/max")) for c in columns)  # default quantities
    logged = csv.dropna(subset=columns, how="all")
    assert logged.step.tolist() == [3, 7, 11, 15, 19, 23]
    for _, row in logged.iterrows():
        want = {k: v for k, v in _latest_at(frame, row.step).items() if k in columns}
        got = {c: row[c] for c in columns if not math.isnan(row[c])}
        assert got == pytest.approx(want, rel=1e-6)
        assert set(got) == set(want)

    # the TensorBoard logger's: the same scalars, and the histograms at those steps
    events = _events(trainer.loggers[1].log_dir)
    scalars = _scalars(events)
    for step in (3, 23):
        want = {k: v for k, v in _latest_at(frame, step).items() if k in columns}
        assert {k: v for k, v in scalars[step].items() if k.startswith("normlab/")} == (
            pytest.approx(want, rel=1e-6)
        )
    histograms = events.Histograms("normlab/net.2/histogram")
    assert [h.step for h in histograms] == [3, 7, 11, 15, 19, 23]
    assert all(sum(h.histogram_value.bucket) == 8 * 32 for h in histograms)

    assert callback.path == tmp_path / "csv" / "lightning_logs" / "version_0" / "monitor.parquet"
    saved = pd.read_parquet(callback.path)
    pd.testing.assert_frame_equal(saved, frame)
    assert monitor._handles == []  # detached at fit end
    trainer.validate(model, _loader(seed=1), verbose=False)  # after fit: the monitor is left alone
    assert monitor.step == 23


def test_lightning_callback_logs_to_a_wandb_logger(tmp_path, monkeypatch):
    pl = pytest.importorskip("lightning.pytorch")
    pytest.importorskip("wandb")
    _wandb_offline(monkeypatch, tmp_path)
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from normlab.integrations.lightning import MonitorCallback

    callback = MonitorCallback(log_every_n_steps=3, quantities=("std",))
    trainer = pl.Trainer(
        max_steps=6,
        logger=WandbLogger(project="normlab-test", save_dir=str(tmp_path), offline=True),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(_lightning_module(pl), _loader())
    log_file = _wandb_log_file(trainer.logger.experiment)
    wandb.finish()
    frame = callback.monitor.to_frame()
    rows = [row for row in _wandb_history(log_file) if ("trainer/global_step",) in row]
    scalars = [r for r in rows if ("normlab/net.2/std",) in r]
    assert [r[("trainer/global_step",)] for r in scalars] == [2, 5]  # the steps of self.log
    for row in scalars:
        step = row[("trainer/global_step",)]
        want = _latest_at(frame, step)
        assert {k[0]: v for k, v in row.items() if k[0].startswith("normlab/")} == pytest.approx(
            {k: v for k, v in want.items() if k.endswith("/std")}, rel=1e-6
        )
    histograms = [r for r in rows if ("normlab/net.2/histogram", "values") in r]
    assert [r[("trainer/global_step",)] for r in histograms] == [2, 5]
    assert all(sum(r[("normlab/net.2/histogram", "values")]) == 8 * 32 for r in histograms)


@pytest.mark.parametrize("fused", [None, True])
def test_lightning_callback_unscales_under_fp16_mixed_precision(tmp_path, fused):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.plugins import MixedPrecision

    from normlab.integrations.lightning import MonitorCallback

    # precision="16-mixed" on CPU becomes bf16-mixed, which has no GradScaler;
    # the plugin itself runs fp16 autocast with torch.amp.GradScaler("cpu"). A
    # fused optimizer unscales inside its step, so Lightning leaves it scaled.
    callback = MonitorCallback(grad_every=1, save_to=tmp_path / "m.parquet")
    model = _lightning_module(pl, fused=fused)
    trainer = pl.Trainer(
        max_steps=6,
        plugins=[MixedPrecision("16-mixed", "cpu")],
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _loader())
    assert trainer.precision_plugin.scaler.get_scale() > 1
    frame = callback.monitor.to_frame()
    assert callback.monitor.step == 5
    _check_against_oracles(model, frame, scaled=True)
    assert (tmp_path / "m.parquet").exists()


def test_lightning_callback_does_nothing_off_global_zero(tmp_path, monkeypatch):
    pl = pytest.importorskip("lightning.pytorch")
    from normlab.integrations.lightning import MonitorCallback

    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    callback = MonitorCallback()
    trainer = pl.Trainer(
        max_steps=3,
        logger=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(_lightning_module(pl), _loader())
    assert callback.monitor is None and callback.path is None
    assert not list(tmp_path.rglob("*.parquet"))


def test_lightning_callback_under_ddp_records_on_global_zero_only(tmp_path):
    """Two spawned CPU processes (gloo); one retry, since starting a process group
    on a loaded 2-core machine failed now and then (seen in 2 of about 10 full
    runs, never alone): a real defect fails both tries."""
    try:
        _ddp_run(tmp_path / "first")
    except Exception:  # the second try decides
        _ddp_run(tmp_path / "second")


def _ddp_run(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    import torch.distributed

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import DDPStrategy
    from lightning_ddp import Net

    from normlab.integrations.lightning import MonitorCallback

    tmp_path.mkdir(parents=True)
    # Two CPU processes (gloo). Each trains 6 steps on its half of the batches;
    # at fit end every process asks for the log directory (a broadcast: one
    # process alone would hang: a collective times out after 60 s) and only
    # global rank 0 writes the frame.
    callback = MonitorCallback(log_every_n_steps=2, grad_every=1)
    trainer = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(start_method="spawn", timeout=datetime.timedelta(seconds=180)),
        logger=CSVLogger(tmp_path),
        callbacks=[callback],
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    notes = tmp_path / "notes.txt"
    trainer.fit(Net(str(notes)), _loader(), _loader(seed=1))
    assert sorted(notes.read_text().split("\n")[:-1]) == ["0 True", "1 False"]
    (saved,) = tmp_path.rglob("*.parquet")
    frame = pd.read_parquet(saved)
    assert sorted(frame.step.unique()) == list(range(6))
    assert set(frame.module) >= {"net.1", "net.2", "net.0.weight"}  # no "module." prefix
    csv = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    logged = csv.dropna(subset=["normlab/net.2/std"])
    assert logged.step.tolist() == [1, 3, 5]
    for _, row in logged.iterrows():
        assert row["normlab/net.2/std"] == pytest.approx(
            _latest_at(frame, row.step)["normlab/net.2/std"], rel=1e-6
        )


# ---------------------------------------------------------------- Hugging Face


class _Sentences(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, 12), generator=generator)
        self.labels = (self.ids[:, 0] > 25).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(12, dtype=torch.long),
            "labels": self.labels[i],
        }


def test_transformers_callback_records_the_training_steps_and_logs_them(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("wandb")
    _wandb_offline(monkeypatch, tmp_path)
    import wandb

    from normlab.integrations.transformers import MonitorCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = transformers.BertForSequenceClassification(config)
    callback = MonitorCallback(grad_every=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        report_to=["tensorboard", "wandb"],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=_Sentences(32, 0),
        eval_dataset=_Sentences(8, 1),
        callbacks=[callback],
    )
    trainer.train()
    monitor = callback.monitor
    assert monitor.step == 5  # 6 training forwards; evaluation passes are not steps
    frame = monitor.to_frame()
    assert sorted(frame.step.unique()) == list(range(6))
    assert "bert.embeddings.LayerNorm" in monitor.sites
    assert not any("#" in site for site in monitor.sites)

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [2, 4, 6]
    for entry in logs:
        got = {k: v for k, v in entry.items() if k.startswith("normlab/")}
        want = {
            k: v
            for k, v in _latest_at(frame, entry["step"] - 1).items()
            if k.rsplit("/", 1)[1] in callback.quantities
        }
        assert got == pytest.approx(want, rel=1e-6) and set(got) == set(want)
        assert "normlab/classifier.weight/update_ratio" in got
    assert not any(
        k.startswith("normlab/") for e in trainer.state.log_history if "eval_loss" in e for k in e
    )

    events = _events(tmp_path / "runs" / "normlab")
    scalars = _scalars(events)
    assert sorted(scalars) == [2, 4, 6]
    assert scalars[6] == pytest.approx(
        {k: v for k, v in logs[-1].items() if k.startswith("normlab/")}
    )
    histogram = events.Histograms("normlab/bert.embeddings.LayerNorm/histogram")
    assert [h.step for h in histogram] == [2, 4, 6]
    assert all(sum(h.histogram_value.bucket) == 4 * 12 * 16 for h in histogram)

    # W&B: the same scalars and histograms, against the Trainer's step key
    log_file = _wandb_log_file(wandb.run)  # the run the Trainer's WandbCallback started
    wandb.finish()
    history = _wandb_history_when(
        log_file,
        lambda rows: sum(("normlab/bert.embeddings.LayerNorm/std",) in r for r in rows) >= 3,
    )
    rows = [row for row in history if ("train/global_step",) in row]
    ours = [r for r in rows if any(k[0].startswith("normlab/") for k in r)]
    scalars_wb = {
        r[("train/global_step",)]: {k[0]: v for k, v in r.items() if len(k) == 1}
        for r in ours
        if ("normlab/bert.embeddings.LayerNorm/std",) in r
    }
    assert sorted(scalars_wb) == [2, 4, 6]
    assert {k: v for k, v in scalars_wb[6].items() if k.startswith("normlab/")} == pytest.approx(
        {k: v for k, v in logs[-1].items() if k.startswith("normlab/")}
    )
    hists = [r for r in ours if ("normlab/bert.embeddings.LayerNorm/histogram", "values") in r]
    assert [r[("train/global_step",)] for r in hists] == [2, 4, 6]

    assert callback.path == tmp_path / "monitor.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(callback.path), frame)


def test_transformers_callback_unscales_under_a_grad_scaler(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from normlab.integrations.transformers import MonitorCallback

    # accelerate makes no GradScaler on CPU (fp16=True trains unscaled there); one
    # given to the Accelerator before train() scales every backward and unscales
    # in the optimizer step, as on a GPU. Two micro-batches per optimizer step.
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = transformers.BertForSequenceClassification(config)
    raw = []  # per training forward: ||dL/d(embeddings' LayerNorm output)|| as backpropagated

    def watch(module, args, output):
        if module.training:
            output.register_hook(lambda g: raw.append(g.norm().item()))

    model.bert.embeddings.LayerNorm.register_forward_hook(watch)
    callback = MonitorCallback(grad_every=1)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_grad_norm=0.0,  # no clipping: the gradients stay scaled until the step
        optim="adamw_torch_fused",  # the default with torch >= 2.8; unscales inside its step
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    scale, grads = 2.0**10, {}

    class Oracle(transformers.TrainerCallback):  # before the monitor's: grads still scaled
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grads[state.global_step] = {
                n: p.grad.norm().item() / scale for n, p in model.named_parameters()
            }

    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_Sentences(24, 0), callbacks=[Oracle(), callback]
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**6)
    trainer.accelerator.scaler = scaler
    trainer.train()
    assert scaler.get_scale() == scale and trainer.optimizer.scaler is scaler
    # fused AdamW unscales inside its step: the callback unscaled first
    assert trainer.optimizer.optimizer._step_supports_amp_scaling
    monitor = callback.monitor
    assert monitor.step == 5  # 3 optimizer steps of 2 micro-batches
    frame = monitor.to_frame()
    site = frame[(frame.module == "bert.embeddings.LayerNorm") & (frame.quantity == "grad_norm")]
    np.testing.assert_allclose(site.value, np.array(raw) / scale, rtol=1e-5)
    params = frame[(frame.quantity == "grad_norm") & frame.module.str.endswith(("weight", "bias"))]
    assert sorted(params.step.unique()) == [1, 3, 5]  # the last micro-batch of each step
    for step, module, value in zip(params.step, params.module, params.value, strict=True):
        assert value == pytest.approx(grads[step // 2][module], rel=1e-5)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_lightning_callback_saves_what_it_recorded_when_training_stops(tmp_path, error):
    """An exception or Ctrl-C mid-fit: the records so far are saved, not lost."""
    pl = pytest.importorskip("lightning.pytorch")
    from normlab.integrations.lightning import MonitorCallback

    model = _lightning_module(pl)
    step = model.training_step

    def failing(batch, batch_idx):
        if batch_idx == 3:
            raise error("stop")
        return step(batch, batch_idx)

    model.training_step = failing
    callback = MonitorCallback(save_to=tmp_path / "records.parquet")
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    with contextlib.suppress(error, SystemExit):
        trainer.fit(model, _loader())
    frame = pd.read_parquet(tmp_path / "records.parquet")
    assert sorted(frame.step.unique()) == [0, 1, 2]  # the steps before the one that failed
    assert callback.path == tmp_path / "records.parquet"


def test_transformers_callback_saves_what_it_recorded_when_training_stops(tmp_path):
    """The Trainer has no event for an exception: the run that stops with one saves at
    exit (here a subprocess whose model raises at its fourth step)."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    script = f"""
import torch, transformers
from torch import nn
from normlab.integrations.transformers import MonitorCallback

class Data(torch.utils.data.Dataset):
    def __len__(self): return 64
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {{"x": torch.randn(4, generator=g), "labels": torch.tensor(i % 2)}}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))
        self.calls = 0
    def forward(self, x, labels=None):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("stop")
        logits = self.net(x)
        return {{"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}}

args = transformers.TrainingArguments(output_dir={str(tmp_path)!r}, max_steps=8,
    per_device_train_batch_size=8, report_to=[], use_cpu=True, save_strategy="no",
    disable_tqdm=True)
trainer = transformers.Trainer(model=Net(), args=args, train_dataset=Data(),
    callbacks=[MonitorCallback()])
trainer.train()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode != 0 and "stop" in done.stderr
    frame = pd.read_parquet(tmp_path / "monitor.parquet")
    assert sorted(frame.step.unique()) == [0, 1, 2]
