"""The Monitor inside Lightning's Trainer.

.. code-block:: python

    import lightning.pytorch as pl
    from normlab.integrations.lightning import MonitorCallback

    callback = MonitorCallback(grad_every=1)          # keyword arguments of Monitor
    trainer = pl.Trainer(max_epochs=3, callbacks=[callback])
    trainer.fit(model, loader)
    callback.monitor.to_frame()                       # also saved: <log_dir>/monitor.parquet
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import Tensor

from normlab.integrations._common import (
    DEFAULT_EDGES,
    DEFAULT_QUANTITIES,
    check_edges,
    inverse_scale,
    read,
    records_gradients,
    require,
    unscale_now,
    unwrap_optimizer,
)
from normlab.monitor import Monitor

pl = require("lightning.pytorch", "lightning", "Lightning")
_loggers = require("lightning.pytorch.loggers", "lightning", "Lightning")

__all__ = ["MonitorCallback"]


class MonitorCallback(pl.Callback):
    """Watch a LightningModule with a :class:`~normlab.Monitor` while it trains.

    On fit start, on the global-zero process only (other processes do
    nothing), a ``Monitor(pl_module, optimizer=trainer.optimizers[0],
    steps="manual", **monitor_kwargs)`` is attached; it is :attr:`monitor`. A
    step is a training batch, marked in ``on_train_batch_start`` (Lightning
    calls ``training_step``, not necessarily the module's forward);
    validation and sanity-check batches are not steps and are not recorded,
    unless ``record_eval=True``: then each of them is a step too.

    Every ``log_every_n_steps`` optimizer steps (default: the Trainer's) the
    monitor's latest ``quantities`` go to every logger of the Trainer as
    ``normlab/<module>/<quantity>`` at Lightning's logging step (the step of
    ``self.log``; without gradient accumulation it equals the monitor's step). A
    value is the latest record at or before that step: gradient quantities are
    recorded every ``grad_every`` steps (a Monitor argument, default 10).

    With ``histograms``, every ``histogram_every_n_steps`` (default: as the
    scalars) the sample of every watched site at that step goes, on the fixed
    bins ``edges``, to the Trainer's TensorBoardLogger and WandbLogger, if any.

    Under 16-bit mixed precision the activation gradient norms recorded in the
    backward pass are of the scaled loss: after each backward they are
    multiplied by 1 / the precision plugin's GradScaler scale. Parameter
    gradient norms are taken right before the optimizer updates the weights
    (``on_before_optimizer_step``: Lightning runs the backward inside
    ``optimizer.step(closure)``, so this comes after it, and after the scaler
    unscaled the gradients) and update ratios after the update
    (``on_train_batch_end`` of a batch that stepped); only
    ``trainer.optimizers[0]`` is watched.

    At fit end, and when an exception or an interrupt ends the fit, the monitor is
    detached and its frame saved as Parquet to
    ``save_to`` (a ``.parquet`` file, or a directory for ``monitor.parquet``;
    default: the Trainer's ``log_dir``); the path is :attr:`path`.
    """

    def __init__(
        self,
        *,
        log_every_n_steps: int | None = None,
        quantities: Iterable[str] | None = DEFAULT_QUANTITIES,
        save_to: str | Path | None = None,
        histograms: bool = True,
        histogram_every_n_steps: int | None = None,
        edges: Tensor | Sequence[float] = DEFAULT_EDGES,
        **monitor_kwargs,
    ) -> None:
        for name, value in (
            ("log_every_n_steps", log_every_n_steps),
            ("histogram_every_n_steps", histogram_every_n_steps),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"MonitorCallback: {name} must be an integer >= 1, got {value!r}")
        if "optimizer" in monitor_kwargs:
            raise TypeError(
                "MonitorCallback: the monitor watches trainer.optimizers[0]; do not pass optimizer="
            )
        if "steps" in monitor_kwargs:
            raise TypeError(
                "MonitorCallback: the callback marks a step per training batch; do not pass steps="
            )
        self.log_every_n_steps = log_every_n_steps
        self.quantities = None if quantities is None else tuple(quantities)
        self.save_to = save_to
        self.histograms = histograms
        self.histogram_every_n_steps = histogram_every_n_steps
        self.edges = check_edges(edges)
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self.path: Path | None = None
        self._live: Monitor | None = None  # the monitor while it is attached, during fit
        self._optimizer = None  # the torch optimizer whose updates are measured
        self._unscaled = -1  # the monitor step whose gradient norms were unscaled
        self._global_step = -1  # trainer.global_step at the last report

    # ------------------------------------------------------------ attach

    def on_fit_start(self, trainer, pl_module) -> None:
        self.monitor, self.path, self._live = None, None, None
        if not trainer.is_global_zero:
            return
        self._optimizer = unwrap_optimizer(trainer.optimizers[0]) if trainer.optimizers else None
        self.monitor = self._live = Monitor(
            pl_module, optimizer=self._optimizer, steps="manual", **self.monitor_kwargs
        ).attach()
        self._unscaled, self._global_step = -1, trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._live is not None:
            self._live.begin_step(pl_module.training)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self._live is not None:  # the sanity check's batches too; not trainer.validate()'s
            self._live.begin_step(training=False)

    # ------------------------------------------------------------ the step

    def on_after_backward(self, trainer, pl_module) -> None:
        monitor = self._live
        if monitor is None or monitor.step == self._unscaled:
            return
        factor = inverse_scale(getattr(trainer.precision_plugin, "scaler", None))
        if factor is not None:
            monitor.unscale_gradients(factor)
            self._unscaled = monitor.step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        monitor = self._live
        if monitor is None or self._optimizer is None:
            return
        if unwrap_optimizer(optimizer) is not self._optimizer:
            return
        if records_gradients(monitor):
            # Lightning leaves unscaling to fused optimizers' step: do it now
            unscale_now(getattr(trainer.precision_plugin, "scaler", None), self._optimizer)
        monitor.before_optimizer_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        monitor = self._live
        if monitor is None or trainer.global_step == self._global_step:
            return  # not global zero, or accumulating gradients: no optimizer step yet
        self._global_step = trainer.global_step
        if self._optimizer is not None:
            monitor.after_optimizer_step()  # the update ratios, before they are read
        loop = trainer.fit_loop.epoch_loop
        step = getattr(loop, "_batches_that_stepped", trainer.global_step - 1)  # as self.log
        every = self.log_every_n_steps or trainer.log_every_n_steps
        log = every > 0 and (step + 1) % every == 0
        hist_every = self.histogram_every_n_steps or every
        hist = self.histograms and hist_every > 0 and (step + 1) % hist_every == 0
        sinks = self._sinks(trainer) if hist else ([], [])
        hist = hist and any(sinks)
        if not (log or hist):
            return
        scalars, hists = read(monitor, self.quantities, hist, self.edges)
        if log and scalars:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)
        if hists:
            tensorboard, wandb = sinks
            if tensorboard:
                from normlab.integrations.tensorboard import write_histograms

                for writer in tensorboard:
                    write_histograms(writer, hists, step)
            if wandb:
                from normlab.integrations.wandb import log as wandb_log

                for run in wandb:
                    wandb_log(run, {}, hists, step, step_key="trainer/global_step")

    @staticmethod
    def _sinks(trainer) -> tuple[list, list]:
        tensorboard = [
            lg.experiment for lg in trainer.loggers if isinstance(lg, _loggers.TensorBoardLogger)
        ]
        wandb = [lg.experiment for lg in trainer.loggers if isinstance(lg, _loggers.WandbLogger)]
        return tensorboard, wandb

    # ------------------------------------------------------------ the end

    def on_fit_end(self, trainer, pl_module) -> None:
        # trainer.log_dir broadcasts: every process asks for it, then only one writes.
        target = Path(self.save_to if self.save_to is not None else trainer.log_dir or ".")
        self._finish(target)

    def on_exception(self, trainer, pl_module, exception) -> None:
        """An exception or an interrupt (Ctrl-C) ended the fit: save what was recorded,
        where the fit would have (without asking the other processes: they may be gone)."""
        logger = trainer.logger
        log_dir = getattr(logger, "log_dir", None) if logger is not None else None
        target = self.save_to if self.save_to is not None else log_dir
        self._finish(Path(target if target is not None else trainer.default_root_dir))

    def _finish(self, target: Path) -> None:
        """Detach the monitor and save its records to ``target`` (a file, or a directory
        for monitor.parquet); nothing on processes that record nothing."""
        self._live = None
        if self.monitor is None:
            return
        self.monitor.detach()
        if target.suffix != ".parquet":
            target = target / "monitor.parquet"
        self.path = self.monitor.save(target)
