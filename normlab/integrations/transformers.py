"""The Monitor inside the Hugging Face Trainer.

.. code-block:: python

    from transformers import Trainer, TrainingArguments
    from normlab.integrations.transformers import MonitorCallback

    callback = MonitorCallback(grad_every=1)          # keyword arguments of Monitor
    trainer = Trainer(model=model, args=TrainingArguments("out", logging_steps=10),
                      train_dataset=data, callbacks=[callback])
    trainer.train()
    callback.monitor.to_frame()                       # also saved: out/monitor.parquet
"""

from __future__ import annotations

import atexit
import os
import warnings
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

_transformers = require("transformers", "transformers", "transformers")

__all__ = ["MonitorCallback"]

STEP_KEY = "train/global_step"  # the Trainer's WandbCallback plots against it


class MonitorCallback(_transformers.TrainerCallback):
    """Watch the model a Hugging Face ``Trainer`` trains with a :class:`~normlab.Monitor`.

    On train begin, on the world process zero only (other processes do
    nothing), ``Monitor(model, optimizer=<the Trainer's torch optimizer>,
    **monitor_kwargs)`` is attached; it is :attr:`monitor`. A step is a training
    forward pass (one per micro-batch under gradient accumulation); evaluation
    passes are not recorded.

    Whenever the Trainer logs its training loss (``logging_steps``), the
    monitor's latest ``quantities`` are reported as
    ``normlab/<module>/<quantity>`` at the Trainer's ``global_step`` (the
    monitor's step + 1 without accumulation): into that entry of
    ``trainer.state.log_history``, into TensorBoard and W&B when
    ``report_to`` names them, and, with ``add_to_logs``, into the ``logs`` dict
    the callbacks after this one receive (the console printer among them: off by
    default, since a model has hundreds of such values). A value is the latest
    record at or before that step (gradient quantities are recorded every
    ``grad_every`` steps, a Monitor argument, default 10).

    With ``histograms`` and TensorBoard or W&B in ``report_to``, the sample of
    every watched site at the step goes there on the fixed bins ``edges`` at
    the logging steps (or every ``histogram_every_n_steps``). TensorBoard's go
    to ``tensorboard_dir`` (default: ``normlab`` under
    ``$TENSORBOARD_LOGGING_DIR`` or ``<output_dir>/runs``, beside the Trainer's
    own run).

    Under fp16 mixed precision the activation gradient norms recorded in the
    backward are of the scaled loss: they are multiplied by 1 / the GradScaler's
    scale before each optimizer step (and after each accumulated micro-batch).
    Parameter gradients and update ratios are taken around the optimizer step,
    after unscaling.

    At train end, and at exit when training stopped on an exception or an
    interrupt (the Trainer has no callback for that), the monitor is detached and
    its frame saved as Parquet to
    ``save_to`` (a ``.parquet`` file, or a directory for ``monitor.parquet``;
    default: ``args.output_dir``); the path is :attr:`path`.
    """

    def __init__(
        self,
        *,
        quantities: Iterable[str] | None = DEFAULT_QUANTITIES,
        save_to: str | Path | None = None,
        histograms: bool = True,
        histogram_every_n_steps: int | None = None,
        edges: Tensor | Sequence[float] = DEFAULT_EDGES,
        tensorboard_dir: str | Path | None = None,
        add_to_logs: bool = False,
        **monitor_kwargs,
    ) -> None:
        if histogram_every_n_steps is not None and (
            not isinstance(histogram_every_n_steps, int) or histogram_every_n_steps < 1
        ):
            raise ValueError(
                "MonitorCallback: histogram_every_n_steps must be an integer >= 1, "
                f"got {histogram_every_n_steps!r}"
            )
        if "optimizer" in monitor_kwargs:
            raise TypeError(
                "MonitorCallback: the monitor watches the Trainer's optimizer; "
                "do not pass optimizer="
            )
        if "steps" in monitor_kwargs:
            raise TypeError(
                "MonitorCallback: a step is a training forward pass of the model; "
                "do not pass steps="
            )
        self.quantities = None if quantities is None else tuple(quantities)
        self.save_to = save_to
        self.histograms = histograms
        self.histogram_every_n_steps = histogram_every_n_steps
        self.edges = check_edges(edges)
        self.tensorboard_dir = tensorboard_dir
        self.add_to_logs = add_to_logs
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self.path: Path | None = None
        self._writer = None  # our SummaryWriter, when report_to has tensorboard
        self._wandb = False
        self._unscaled = -1  # the monitor step whose gradient norms were unscaled
        self._pending: tuple[int, dict[str, float]] | None = None

    # ------------------------------------------------------------ attach

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.monitor, self.path, self._pending = None, None, None
        if not state.is_world_process_zero:
            return
        # The Trainer calls no callback when training stops on an exception: save at
        # exit (a script that fails or is interrupted); on_train_end unregisters it.
        self._target = Path(self.save_to if self.save_to is not None else args.output_dir)
        atexit.register(self._save_unfinished)
        if model is None:
            raise ValueError("MonitorCallback: the Trainer passed no model to on_train_begin")
        # steps="forward" (the default): the Trainer calls the model's forward once per
        # micro-batch and steps the optimizer after the backward, so the monitor's own
        # hooks find both (manual steps would need an event before the evaluation
        # passes in the middle of training, which the Trainer does not have)
        self.monitor = Monitor(
            model, optimizer=unwrap_optimizer(optimizer), **self.monitor_kwargs
        ).attach()
        self._unscaled = -1
        report = args.report_to
        report = [report] if isinstance(report, str) else list(report or [])
        if "tensorboard" in report or "all" in report:
            require("tensorboard", "tensorboard", "TensorBoard")
            from torch.utils.tensorboard import SummaryWriter

            base = os.environ.get("TENSORBOARD_LOGGING_DIR")
            base = base or os.path.join(args.output_dir, "runs")
            self._writer = SummaryWriter(self.tensorboard_dir or os.path.join(base, "normlab"))
        self._wandb = "wandb" in report or "all" in report

    # ------------------------------------------------------------ the step

    def _unscale(self, optimizer) -> None:
        monitor = self.monitor
        if monitor is None or monitor.step == self._unscaled:
            return
        factor = inverse_scale(getattr(optimizer, "scaler", None))
        if factor is not None:
            monitor.unscale_gradients(factor)
            self._unscaled = monitor.step

    def on_substep_end(self, args, state, control, optimizer=None, **kwargs):
        self._unscale(optimizer)  # a micro-batch whose optimizer step comes later

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self._unscale(optimizer)
        if self.monitor is not None and records_gradients(self.monitor):
            # a fused optimizer whose gradients nothing unscaled yet (no clipping)
            unscale_now(getattr(optimizer, "scaler", None), unwrap_optimizer(optimizer))

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        monitor = self.monitor
        if monitor is None:
            return
        # transformers before on_pre_optimizer_step existed: unscale after the step
        # (by the scale the scaler holds now: off only after a skip or a growth step)
        self._unscale(optimizer)
        step = state.global_step
        every = self.histogram_every_n_steps
        sinks = self._writer is not None or self._run() is not None
        hist = self.histograms and sinks and (step % every == 0 if every else control.should_log)
        if not (control.should_log or hist):
            return
        scalars, hists = read(monitor, self.quantities, hist, self.edges)
        if hists:
            if self._writer is not None:
                from normlab.integrations.tensorboard import write_histograms

                write_histograms(self._writer, hists, step)
                self._writer.flush()
            if (run := self._run()) is not None:
                from normlab.integrations.wandb import log

                log(run, {}, hists, step, step_key=STEP_KEY)
        # the Trainer logs right after this (DefaultFlowCallback, the first
        # callback, set should_log): on_log reports these
        self._pending = (step, scalars) if control.should_log else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or self._pending is None:
            return  # not a training log that follows a step (an evaluation, the final metrics)
        step, scalars = self._pending
        self._pending = None
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(scalars)
        if self.add_to_logs and logs is not None:
            logs.update(scalars)
        if self._writer is not None:
            from normlab.integrations.tensorboard import write_scalars

            write_scalars(self._writer, scalars, step)
            self._writer.flush()
        if (run := self._run()) is not None:
            from normlab.integrations.wandb import log

            log(run, scalars, {}, step, step_key=STEP_KEY)

    def _run(self):
        """The W&B run the Trainer's WandbCallback started, when report_to has wandb."""
        if not self._wandb:
            return None
        import wandb

        if wandb.run is None:
            warnings.warn(
                "MonitorCallback: report_to has wandb but no W&B run is active; "
                "the monitor's summaries go to the Trainer's log history only",
                stacklevel=2,
            )
            self._wandb = False
        return wandb.run

    # ------------------------------------------------------------ the end

    def _save(self, target: Path) -> None:
        self.monitor.detach()
        if target.suffix != ".parquet":
            target = target / "monitor.parquet"
        self.path = self.monitor.save(target)

    def _save_unfinished(self) -> None:
        """At exit, after training stopped without reaching on_train_end: save what the
        monitor recorded (an interrupted notebook keeps it in ``callback.monitor``)."""
        if self.monitor is not None and self.path is None:
            self._save(self._target)

    def on_train_end(self, args, state, control, **kwargs):
        atexit.unregister(self._save_unfinished)
        if self.monitor is None:
            return
        self._save(Path(self.save_to if self.save_to is not None else args.output_dir))
        if self._writer is not None:
            self._writer.close()
            self._writer = None
