"""A Monitor's summaries and activation histograms in Weights & Biases.

.. code-block:: python

    import wandb
    from normlab.integrations import wandb as normlab_wandb

    run = wandb.init(project="mlp")
    for step, (x, y) in enumerate(loader):
        ...                                   # forward, backward, optimizer step
        if step % 50 == 0:                    # right after the step
            normlab_wandb.write(monitor, run, step)

Scalars go under ``normlab/<module>/<quantity>``, histograms (the sampled values
of each watched site at that step, on fixed bins) under
``normlab/<site>/histogram``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor

from normlab.integrations._common import (
    DEFAULT_EDGES,
    PREFIX,
    Histogram,
    check_edges,
    read,
    require,
)
from normlab.monitor import Monitor

wandb = require("wandb", "wandb", "Weights & Biases (wandb)")

__all__ = ["DEFAULT_EDGES", "write"]


def write(
    monitor: Monitor,
    run,
    step: int | None = None,
    quantities: Iterable[str] | None = None,
    histograms: bool = True,
    edges: Tensor | Sequence[float] = DEFAULT_EDGES,
    step_key: str | None = None,
) -> None:
    """Log ``monitor``'s latest summaries and, with ``histograms``, the sample each
    watched site recorded at the monitor's latest step as a ``wandb.Histogram``
    on the fixed bins ``edges`` (plus one bin below and one above them), in one
    ``run.log`` call.

    ``step`` goes to ``run.log(..., step=step)`` (None: the run's own step), or,
    with ``step_key``, into the logged row under that key (what Lightning's
    WandbLogger, ``"trainer/global_step"``, and the Hugging Face Trainer,
    ``"train/global_step"``, do). ``quantities`` keeps only those (None: all).
    Call it right after the training step (see
    :func:`normlab.integrations.tensorboard.write`).
    """
    scalars, hists = read(monitor, quantities, histograms, check_edges(edges))
    log(run, scalars, hists, step, step_key)


def log(run, scalars: dict[str, float], hists: dict[str, Histogram], step, step_key=None) -> None:
    data: dict = dict(scalars)
    for site, h in hists.items():
        data[f"{PREFIX}/{site}/histogram"] = wandb.Histogram(np_histogram=(h.counts, h.bins))
    if not data:
        return
    if step_key is None:
        run.log(data, step=step)
    else:
        data[step_key] = step
        run.log(data)
