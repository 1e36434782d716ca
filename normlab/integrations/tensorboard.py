"""A Monitor's summaries and activation histograms in TensorBoard.

.. code-block:: python

    from torch.utils.tensorboard import SummaryWriter
    from normlab.integrations import tensorboard

    writer = SummaryWriter("runs/mlp")
    for step, (x, y) in enumerate(loader):
        ...                                   # forward, backward, optimizer step
        if step % 50 == 0:                    # right after the step
            tensorboard.write(monitor, writer, step)

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

require("tensorboard", "tensorboard", "TensorBoard")

__all__ = ["DEFAULT_EDGES", "write"]


def write(
    monitor: Monitor,
    writer,
    step: int,
    quantities: Iterable[str] | None = None,
    histograms: bool = True,
    edges: Tensor | Sequence[float] = DEFAULT_EDGES,
) -> None:
    """Write ``monitor``'s latest summaries as scalars and, with ``histograms``, the
    sample each watched site recorded at the monitor's latest step as a
    histogram, to ``writer`` (a ``torch.utils.tensorboard.SummaryWriter`` or
    tensorboardX's) at ``step``.

    ``quantities`` keeps only those (e.g. ``("mean", "std", "grad_norm")``;
    None: all). The histogram has the fixed bins ``edges`` (default: 64 bins
    over [-8, 8]) plus one below and one above them; its counts are taken on
    the device. Call it right after the training step: reading the summaries
    flushes the monitor, and a flushed step has no histograms any more.
    """
    scalars, hists = read(monitor, quantities, histograms, check_edges(edges))
    write_scalars(writer, scalars, step)
    write_histograms(writer, hists, step)


def write_scalars(writer, scalars: dict[str, float], step: int) -> None:
    for key, value in scalars.items():
        writer.add_scalar(key, value, step)


def write_histograms(writer, hists: dict[str, Histogram], step: int) -> None:
    for site, h in hists.items():
        writer.add_histogram_raw(
            f"{PREFIX}/{site}/histogram",
            min=h.low,
            max=h.high,
            num=h.num,
            sum=h.sum,
            sum_squares=h.sum_squares,
            bucket_limits=h.bins[1:].tolist(),  # the upper end of each count's bin
            bucket_counts=h.counts.tolist(),
            global_step=step,
        )
