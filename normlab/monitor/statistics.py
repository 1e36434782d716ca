"""Summary statistics of recorded activation samples, vectorized over records.

The monitor copies each recorded tensor (or a fixed random sample of it) into
a row of a buffer; a row shorter than the buffer says how many of its values
count (the rest is ignored). Statistics for all buffered rows are computed
together, on the buffer's device, when the monitor flushes: one sort per flush
instead of many small kernels per step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

# Quantile levels kept per record for distribution distances (1-Wasserstein).
SKETCH_LEVELS = 33
# Quantiles (percentiles, the sketch) are read off at most this many values of
# a record, a random subset: sorting is the one step that is not O(n).
QUANTILE_SAMPLE = 512


def quantile_levels(percentiles: Sequence[float]) -> Tensor:
    """The requested percentiles (as fractions) followed by the sketch levels 0..1."""
    sketch = torch.linspace(0.0, 1.0, SKETCH_LEVELS, dtype=torch.float64)
    return torch.cat([torch.tensor(list(percentiles), dtype=torch.float64) / 100.0, sketch])


@functools.lru_cache(maxsize=64)
def _interpolation(n: int, percentiles: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Order statistics (lo, hi) and weights of the quantile levels in n sorted values
    (cached: the monitor asks for the same few every flush)."""
    position = quantile_levels(percentiles) * (n - 1)
    lo, hi = position.floor().long(), position.ceil().long()
    return lo, hi, position - lo


def _sorted_quantiles(ordered: Tensor, percentiles: tuple[float, ...]) -> Tensor:
    """Quantiles of each sorted row (R, n) at ``quantile_levels(percentiles)`` ->
    (R, levels); linear interpolation between order statistics, as NumPy's default."""
    lo, hi, frac = _interpolation(ordered.shape[1], percentiles)
    if lo.device != ordered.device:
        lo, hi, frac = lo.to(ordered.device), hi.to(ordered.device), frac.to(ordered.device)
    low, high = ordered[:, lo], ordered[:, hi]
    return low + (high - low) * frac.to(ordered.dtype)


def _sort_rows(values: Tensor, out: Tensor) -> Tensor:
    """Each row sorted; on the CPU into ``out`` (values' shape, contiguous) through
    NumPy, whose vectorized sort is some 30 times faster than torch's on rows of a
    few hundred values (0.19 vs 5.8 ms for 256 x 512, one thread)."""
    if values.device.type != "cpu":
        return values.sort(dim=1).values
    target = out.numpy()
    target[...] = values.numpy()
    target.sort(axis=1)
    return out


def quantities(percentiles: tuple[float, ...]) -> list[str]:
    """The columns of :func:`statistics_matrix`, in order."""
    return ["mean", "std", *(f"p{p:g}" for p in percentiles), "min", "max", "saturated", "dead"]


def statistics_matrix(
    rows: Tensor,
    lengths: Sequence[int],
    percentiles: Sequence[float],
    saturation: Tensor | None = None,
    dead: bool = False,
    work: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Statistics of each row of ``rows`` (R, L), of which row i holds
    ``lengths[i]`` values (the rest is ignored), in random order (the monitor
    records them so: any prefix of a row is a random sample of it).

    Returns (R, len(quantities(percentiles))) and the sketch (R, SKETCH_LEVELS),
    float64: mean, std (population, ddof 0), min, max, the fraction with |x| >
    ``saturation[i]`` (per-row thresholds, inf for none; NaN without
    ``saturation``) and the fraction <= 0 (NaN unless ``dead``), over all the
    row's values; the percentiles (linear interpolation, as NumPy's default) and
    the sketch over the row's values when there are at most QUANTILE_SAMPLE of
    them, else over its first QUANTILE_SAMPLE (a random subset). Rows of equal
    length are done together: one sort per length. As few torch calls as it
    takes: on the CPU each holds the GIL that training needs.

    ``work``: a flat buffer of ``rows``' dtype and device with room for
    ``work_size(rows.shape)`` values, for the temporaries (a monitor keeps one:
    on the CPU a fresh megabyte-sized tensor costs more in page faults than the
    arithmetic done in it); one is made when None.
    """
    percentiles = tuple(percentiles)  # the key of the cached interpolation
    count = len(lengths)
    k = len(percentiles)
    out = torch.empty(count, k + 6, dtype=torch.float64, device=rows.device)
    sketch = torch.empty(count, SKETCH_LEVELS, dtype=torch.float64, device=rows.device)
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    for n, index in by_length.items():
        if n == 0:  # an empty tensor recorded (a batch of 0): nothing to describe
            out[index], sketch[index] = float("nan"), float("nan")
            continue
        every = len(index) == count  # one length (the usual case): the rows, not a copy
        idx = slice(None) if every else torch.tensor(index, device=rows.device)
        values = rows[:count, :n] if every else rows[idx, :n]
        if work is None or work.numel() < work_size(values.shape):
            work = values.new_empty(work_size(values.shape))
        scratch = work[: values.numel()].view(values.shape)
        subset = values[:, :QUANTILE_SAMPLE]  # the rows are in random order: a random subset
        ordered = work[values.numel() : values.numel() + subset.numel()].view(subset.shape)
        mean = values.mean(1)
        deviation = torch.sub(values, mean.unsqueeze(1), out=scratch)
        std = torch.linalg.vector_norm(deviation, dim=1) / n**0.5  # two-pass
        q = _sorted_quantiles(_sort_rows(subset, ordered), percentiles)
        columns = [mean, std, *q[:, :k].T, values.amin(1), values.amax(1)]
        # counts as float 0/1 compared in place and summed: some 3x faster on the CPU
        # than counting a boolean tensor (exact below 2^24 values a row)
        if saturation is None or not dead:  # a column not asked for
            missing = mean.new_full(mean.shape, float("nan"))
        if saturation is not None:
            limit = saturation.to(values.device, values.dtype)[idx].unsqueeze(1)
            columns.append(torch.abs(values, out=scratch).gt_(limit).sum(1) / n)
        else:
            columns.append(missing)
        if dead:  # x <= 0
            columns.append(torch.neg(values, out=scratch).ge_(0).sum(1) / n)
        else:
            columns.append(missing)
        out[idx] = torch.stack(columns, dim=1).to(torch.float64)
        sketch[idx] = q[:, k:].to(torch.float64)
    return out, sketch


def work_size(shape: Sequence[int]) -> int:
    """Values of the ``work`` buffer :func:`statistics_matrix` needs for rows of ``shape``."""
    count, width = shape
    return count * (width + min(width, QUANTILE_SAMPLE))


def wasserstein_1(sketch_a: Tensor, sketch_b: Tensor) -> Tensor:
    """1-Wasserstein distance between distributions given by quantile sketches.

    W1 = integral over u in [0, 1] of |Qa(u) - Qb(u)| du, by the trapezoid rule
    on the sketch's evenly spaced levels.
    """
    gap = (sketch_a - sketch_b).abs()
    return torch.trapezoid(gap, dx=1.0 / (gap.shape[-1] - 1), dim=-1)
