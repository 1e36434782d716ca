"""What the integrations share: the fixed histogram bins, one read of a Monitor
(its histograms first, then its latest summaries, since reading those flushes
the buffer the histograms are taken from), the loss scale of a GradScaler, and
the guard that names the extra to install."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from normlab.monitor import Monitor

PREFIX = "normlab"

# 64 bins of width 0.25 over [-8, 8], plus one bin below and one above: wide
# enough for what a sigmoid/tanh/ReLU sees (a sigmoid saturates beyond |x| = 4),
# fine enough to show a BatchNorm output's unit Gaussian; fixed, so that the
# histograms of every step and every site are drawn on the same bins.
DEFAULT_EDGES = torch.linspace(-8.0, 8.0, 65)

# What the callbacks log by default: per watched site its mean, std, saturated
# (sigmoid/tanh inputs), dead (ReLU inputs) and grad_norm, per parameter its
# grad_norm and update_ratio. The percentiles, min and max stay in the frame.
DEFAULT_QUANTITIES = ("mean", "std", "saturated", "dead", "grad_norm", "update_ratio")


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or fail with an ImportError that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"normlab.integrations.{extra} needs {what}, which is not installed: "
            f"pip install 'normlab[{extra}]'"
        ) from error


@dataclass(frozen=True)
class Histogram:
    """One site's latest sample, binned on fixed edges.

    ``counts`` has K + 2 entries for K + 1 ``edges``: values <= edges[0], the K
    bins (edges[i-1], edges[i]], values > edges[-1] (torch.bucketize's
    convention). ``low`` and ``high`` close the two outer bins: the sample's
    min and max where they lie outside the edges, else the outer edges (the
    outer bins are then empty and of width 0). ``num``, ``sum`` and
    ``sum_squares`` (what TensorBoard's histogram record carries) come from the
    record's mean and std, or from the bin midpoints where those are missing.
    """

    counts: np.ndarray
    edges: np.ndarray
    low: float
    high: float
    num: int
    sum: float
    sum_squares: float

    @property
    def bins(self) -> np.ndarray:
        """The K + 3 boundaries of the K + 2 counts (NumPy's histogram convention)."""
        return np.concatenate([[self.low], self.edges, [self.high]])


def check_edges(edges: Tensor | Sequence[float]) -> Tensor:
    edges = torch.as_tensor(edges, dtype=torch.float32).flatten()
    if edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError(
            "normlab.integrations: edges must be at least 2 increasing values, "
            f"got {edges.tolist()}"
        )
    return edges


def _histogram(site: str, counts: Tensor, edges: np.ndarray, values: dict) -> Histogram:
    counts = counts.cpu().numpy().astype(np.int64)
    num = int(counts.sum())
    low, high = values.get(f"{site}/min", edges[0]), values.get(f"{site}/max", edges[-1])
    low = min(low, float(edges[0])) if np.isfinite(low) else float(edges[0])
    high = max(high, float(edges[-1])) if np.isfinite(high) else float(edges[-1])
    mean, std = values.get(f"{site}/mean"), values.get(f"{site}/std")
    if mean is None or std is None or not np.isfinite(mean * std):  # non-finite: the bins
        mid = (np.concatenate([[low], edges]) + np.concatenate([edges, [high]])) / 2
        total, squares = float(counts @ mid), float(counts @ mid**2)
    else:
        total, squares = mean * num, num * (std * std + mean * mean)
    return Histogram(counts, edges, float(low), float(high), num, total, squares)


def read(
    monitor: Monitor,
    quantities: Iterable[str] | None = DEFAULT_QUANTITIES,
    histograms: bool = True,
    edges: Tensor = DEFAULT_EDGES,
) -> tuple[dict[str, float], dict[str, Histogram]]:
    """The monitor's latest summaries as ``{"normlab/<module>/<quantity>": value}``
    (``quantities=None``: all) and, when ``histograms``, the histograms of the
    sites recorded at its latest step (``{site: Histogram}``; empty when that
    step was flushed already: read right after the training step)."""
    counts = monitor.histograms(edges) if histograms else {}  # before latest() flushes
    values = monitor.latest()
    wanted = None if quantities is None else set(quantities)
    scalars = {
        f"{PREFIX}/{key}": value
        for key, value in values.items()
        if wanted is None or key.rsplit("/", 1)[-1] in wanted
    }
    grid = edges.double().cpu().numpy()
    return scalars, {site: _histogram(site, c, grid, values) for site, c in counts.items()}


def inverse_scale(scaler) -> Tensor | float | None:
    """1 / the current scale of a GradScaler, or None without an enabled one. A
    tensor on the scaler's device where it keeps one (no host synchronization)."""
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return None
    scale = getattr(scaler, "_scale", None)
    if isinstance(scale, Tensor):
        return scale.detach().reciprocal()
    return 1.0 / float(scaler.get_scale())


def records_gradients(monitor: Monitor) -> bool:
    """Whether the monitor's current step records gradient quantities."""
    step = monitor.step
    return step >= 0 and step % monitor.every == 0 and step % monitor.grad_every == 0


def unscale_now(scaler, optimizer) -> None:
    """Unscale ``optimizer``'s gradients now where it would do so inside its step
    (fused optimizers, ``_step_supports_amp_scaling``: their gradients stay
    scaled until the step's kernel), so that the Monitor reads the true
    gradients before the update. ``GradScaler.step`` then steps as it does
    after an explicit ``unscale_`` for gradient clipping (same update, same
    skip on inf/NaN); already unscaled this iteration: nothing to do."""
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return  # GradScaler.step unscales before calling step, so before the hooks
    with contextlib.suppress(RuntimeError):  # "unscale_() has already been called ..."
        scaler.unscale_(optimizer)


def unwrap_optimizer(optimizer):
    """The torch optimizer inside wrappers (accelerate's AcceleratedOptimizer,
    Lightning's LightningOptimizer): the one that updates the weights."""
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    return optimizer
