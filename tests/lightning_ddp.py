"""A LightningModule at module level, so that DDP's spawned processes can
unpickle it (tests/test_integrations.py): each process notes, at fit end,
whether its MonitorCallback had a monitor."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F


class Net(pl.LightningModule):
    def __init__(self, notes: str):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(8, 32), nn.BatchNorm1d(32), nn.Sigmoid(), nn.Linear(32, 2)
        )
        self.notes = notes

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_fit_end(self):
        from normlab.integrations.lightning import MonitorCallback

        (callback,) = [c for c in self.trainer.callbacks if isinstance(c, MonitorCallback)]
        note = f"{self.global_rank} {callback.monitor is not None}\n"
        with Path(self.notes).open("a") as f:
            f.write(note)
