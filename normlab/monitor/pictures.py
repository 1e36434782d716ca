"""Pictures of recorded activations: fastai's "colorful dimension".

Per watched site, the histogram of its values at every recorded step, stacked
over training: x the step, y the value, colour the fraction of the values in
each bin (log scale). The histograms are derived from the quantile sketches
the monitor keeps per record (:meth:`normlab.monitor.Monitor.sketches`, also
stored with every lab run), so nothing more is recorded and saved runs can be
drawn.

This module lives in ``normlab.monitor`` because the monitor draws with it
(:meth:`~normlab.monitor.Monitor.plot_activations`) and the monitor may not
import the experiments or the report; the experiments, the report and the
command line import it from here (they sit above the monitor). It reads only
sketch frames (step, module, level, value), never a model or a store, and
imports matplotlib only when it draws (a plain Figure: pyplot's backend and
open figures are left alone).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_BINS = 40
# At most this many columns per panel; longer runs are averaged over groups of
# consecutive records (a mixture of histograms: the average of their masses).
MAX_COLUMNS = 600
# The smallest fraction per bin the colour scale tells apart (below it: the darkest colour).
FLOOR = 1e-3
COLORBAR_LABEL = "fraction of values per bin (log scale)"


def sketch_histogram(quantiles, edges) -> np.ndarray:
    """The fraction of a distribution in each bin, from its quantile sketch.

    ``quantiles`` (..., L) holds a distribution's quantiles at the L evenly
    spaced levels 0, 1/(L-1), ..., 1 (non-decreasing along the last axis: the
    monitor's sketch has L = 33, level 0 the minimum and 1 the maximum of the
    values it was read from). The sketch stands for the distribution of
    X = Q(U), U uniform on [0, 1] and Q the piecewise linear interpolant of the
    quantiles: its CDF is piecewise linear between neighbouring quantiles, with
    mass 1/(L-1) between each two, and jumps where quantiles tie (a point mass,
    e.g. many exact zeros).

    The bins are those of :func:`numpy.histogram` for ``edges`` (E,) (finite,
    increasing): [edges[i], edges[i+1]) and the last one closed. Returns
    (..., E-1) fractions: bin i holds P(edges[i] <= X < edges[i+1]). They sum
    to 1 when the edges span [Q(0), Q(1)], less when part of the distribution
    lies outside them (that part is in no bin). Multiply by a record's number
    of values for counts. A record with a non-finite quantile gives NaN in
    every bin.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or not np.isfinite(e).all() or (np.diff(e) <= 0).any():
        raise ValueError(f"sketch_histogram: edges must be >= 2 finite increasing values, got {e}")
    if q.ndim < 1 or q.shape[-1] < 2:
        raise ValueError(f"sketch_histogram: need >= 2 quantiles per record, got shape {q.shape}")
    shape = q.shape[:-1]
    q = q.reshape(-1, q.shape[-1])
    finite = np.isfinite(q).all(axis=1)
    if (np.diff(q[finite], axis=1) < 0).any():
        raise ValueError("sketch_histogram: quantiles must be non-decreasing along the last axis")
    out = np.full((len(q), len(e) - 1), np.nan)
    rows = q[finite]
    chunk = max(1, 2_000_000 // (len(e) * q.shape[1]))  # bounded memory for the comparisons
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        below = _cdf(part, e, strict=True)  # P(X < edge)
        at_most = _cdf(part, e[-1:], strict=False)  # P(X <= last edge): the last bin is closed
        mass = np.diff(below, axis=1)
        mass[:, -1] += at_most[:, 0] - below[:, -1]
        out[np.flatnonzero(finite)[start : start + chunk]] = mass
    return out.reshape(*shape, len(e) - 1)


def _cdf(q: np.ndarray, x: np.ndarray, strict: bool) -> np.ndarray:
    """P(X < x) (``strict``) or P(X <= x) under each row's sketch (R, L), at x (E,)
    -> (R, E). With k the number of quantiles below x (or at most x), x lies
    between quantiles k-1 and k, which differ: linear interpolation there."""
    levels = q.shape[1] - 1
    compare = q[:, None, :] < x[None, :, None] if strict else q[:, None, :] <= x[None, :, None]
    k = compare.sum(axis=2)  # (R, E)
    inside = (k > 0) & (k <= levels)
    j = np.clip(k - 1, 0, levels - 1)
    low = np.take_along_axis(q, j, axis=1)
    high = np.take_along_axis(q, j + 1, axis=1)
    xx = np.broadcast_to(x, k.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(inside, (xx - low) / np.where(inside, high - low, 1.0), 0.0)
    return np.where(k > levels, 1.0, np.where(inside, (j + fraction) / levels, 0.0))


def site_histograms(
    sketches: pd.DataFrame,
    site: str,
    bins: int = DEFAULT_BINS,
    limits: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One site's histograms over training, on bins shared by all its records.

    ``sketches``: a sketch frame (step, module, level, value), as
    :meth:`Monitor.sketches` returns and a lab run stores. The ``bins`` equal
    bins span ``limits``, by default the site's whole recorded range (the
    smallest minimum to the largest maximum of its finite records), so every
    record's values are in some bin and the columns are comparable over time.
    Returns (steps (R,), edges (bins+1,), fractions (R, bins)) by step; see
    :func:`sketch_histogram`.
    """
    table = _table(sketches, site)
    quantiles = table.to_numpy(dtype=np.float64)
    edges = np.linspace(*(limits or value_range(quantiles)), bins + 1)
    return table.index.to_numpy(), edges, sketch_histogram(quantiles, edges)


def _table(sketches: pd.DataFrame, site: str) -> pd.DataFrame:
    """One site's sketches as a (step x level) table, both sorted."""
    rows = sketches[sketches.module == site]
    if rows.empty:
        raise ValueError(f"no activation records of site {site!r}")
    table = rows.pivot(index="step", columns="level", values="value")
    return table.sort_index().sort_index(axis=1)


def value_range(quantiles) -> tuple[float, float]:
    """(smallest minimum, largest maximum) of the finite records (rows) of a sketch
    table; a range of width 1 around the value for a constant site."""
    quantiles = np.asarray(quantiles, dtype=np.float64)
    finite = quantiles[np.isfinite(quantiles).all(axis=1)]
    if finite.size == 0:
        return -0.5, 0.5
    low, high = float(finite[:, 0].min()), float(finite[:, -1].max())
    if high - low <= 1e-12 * max(1.0, abs(low)):
        return low - 0.5, high + 0.5
    return low, high


def _columns(steps: np.ndarray, mass: np.ndarray, max_columns: int):
    """(x edges, mass) with at most ``max_columns`` columns: column i spans
    [its first step, the next column's first step); consecutive records averaged."""
    if len(steps) > max_columns:
        groups = np.array_split(np.arange(len(steps)), max_columns)
        mass = np.stack([mass[g].mean(axis=0) for g in groups])  # NaN if one record is
        starts = np.array([steps[g[0]] for g in groups])
    else:
        starts = steps
    stride = np.diff(steps).min() if len(steps) > 1 else 1
    return np.append(starts, steps[-1] + stride).astype(np.float64), mass


def colorful_dimension(
    panels: Sequence[tuple[str, pd.DataFrame, str]],
    bins: int = DEFAULT_BINS,
    limits: tuple[float, float] | None = None,
    title: str | None = None,
    ncols: int | None = None,
    max_columns: int = MAX_COLUMNS,
    share_range: bool = False,
):
    """fastai's "colorful dimension": per panel, one site's histogram at every
    recorded step, stacked over training. Returns a matplotlib Figure.

    ``panels``: (title, sketch frame, site) per panel, drawn in order (panels
    may come from different runs). x: the step; y: the site's values, in
    ``bins`` equal bins over ``limits`` (default: each panel's whole recorded
    range, :func:`site_histograms`); colour: the fraction of the values in the
    bin on a log scale shared by all panels (one colour bar), darkest for
    fractions under 1e-3 and empty bins, grey for non-finite records (a
    diverged run; the panel's title counts them). With ``limits``, a panel
    whose values fall partly outside says how much in its title.
    ``share_range``: without ``limits``, one range for all panels (the union
    of their ranges), so that their spreads compare. Runs of more than
    ``max_columns`` records are drawn with consecutive records averaged.
    """
    # A Figure of its own, not pyplot's: no backend switched, nothing left open
    # (a notebook shows the returned figure once, as it shows any Figure).
    import matplotlib
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("colorful_dimension: no panels to draw")
    if share_range and limits is None:
        tables = [_table(sketches, site).to_numpy(np.float64) for _, sketches, site in panels]
        finite = [t for t in tables if np.isfinite(t).all(axis=1).any()]
        ranges = [value_range(t) for t in finite or tables]
        limits = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    drawn = []
    for name, sketches, site in panels:
        steps, edges, mass = site_histograms(sketches, site, bins, limits)
        finite = mass[np.isfinite(mass).all(axis=1)]
        notes = []
        outside = float((1.0 - finite.sum(axis=1)).max(initial=0.0))
        if outside > 0.005:
            notes.append(f"up to {outside:.0%} of the values outside the range")
        if len(finite) < len(mass):
            notes.append(f"grey: {len(mass) - len(finite)} of {len(mass)} records not finite")
        if notes:
            name += "\n(" + "; ".join(notes) + ")"
        x, mass = _columns(steps, mass, max_columns)
        drawn.append((name, x, edges, mass))
    peak = max(float(np.nanmax(m, initial=0.0)) for *_, m in drawn)
    norm = LogNorm(vmin=FLOOR, vmax=max(peak, 10 * FLOOR))
    cmap = matplotlib.colormaps["viridis"].with_extremes(under="#440154", bad="#bbbbbb")

    n = len(drawn)
    ncols = ncols or (1 if n == 1 else 2 if n <= 4 else 3)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(0.8 + 4.6 * ncols, 0.9 + 2.7 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax, (name, x, edges, mass) in zip(axes.flat, drawn, strict=False):
        # empty bins in the "under" colour; NaN (a non-finite record) stays NaN: "bad"
        shown = np.where(mass > 0, mass, np.where(np.isnan(mass), np.nan, FLOOR * 1e-3))
        image = ax.pcolormesh(x, edges, shown.T, cmap=cmap, norm=norm, shading="flat")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("value")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), label=COLORBAR_LABEL, extend="min")
    if title:  # wrapped to the figure's width (about 12 characters per inch at 11 pt)
        width = int(12 * fig.get_figwidth())
        lines = [w for line in title.splitlines() for w in textwrap.wrap(line, width) or [""]]
        fig.suptitle("\n".join(lines), fontsize=11)
    return fig


def describe_sites(frame: pd.DataFrame | None) -> dict[str, str]:
    """What a stored monitor frame says each site is: 'sigmoid/tanh input' for sites
    with a saturation fraction, 'ReLU input' for those with a dead fraction."""
    if frame is None or frame.empty:
        return {}
    kinds = {}
    for quantity, what in (("saturated", "sigmoid/tanh input"), ("dead", "ReLU input")):
        for site in frame[frame.quantity == quantity].module.unique():
            kinds[site] = what
    return kinds


def sketch_sites(sketches: pd.DataFrame) -> list[str]:
    """The sites a sketch frame holds, in the order they were first recorded (the
    order of the forward pass)."""
    return list(dict.fromkeys(sketches.module))
