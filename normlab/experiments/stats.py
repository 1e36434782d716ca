"""The statistics every verdict uses: a mean over seeds with its t-interval, the
difference of two means with Welch's interval judged against a stated margin, and
the test set's own binomial error.

"No difference" is said when the whole 95% interval of a difference lies within
``±margin`` (whatever its sign: smaller than what counts); otherwise a difference
is called one when its interval excludes zero; anything else is *unresolved* (the
seeds do not decide it). With one seed nothing is resolved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy

LEVEL = 0.95
# Accuracy: two techniques within one point of each other count as the same.
MARGIN = 0.01
# Seeds a verdict needs (each side of a comparison).
MIN_SEEDS = 3

HIGHER, LOWER, SAME, UNRESOLVED = "higher", "lower", "same", "unresolved"


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its two-sided t-interval (NaN bounds for n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n < 2 or not math.isfinite(self.low):
            return f"{self.mean:.3f} (1 seed)" if self.n == 1 else f"{self.mean:.3f}"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _t(level: float, df: float) -> float:
    return float(_scipy.t.ppf(0.5 + level / 2, df))


def summarize(mean: float, sd: float, n: int, level: float = LEVEL) -> Interval:
    """The t-interval of a mean from its sample standard deviation ``sd`` (ddof 1)."""
    if n < 2 or not math.isfinite(sd):
        return Interval(mean, math.nan, math.nan, n)
    half = _t(level, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """Mean and t-interval of ``values`` (non-finite values make it NaN)."""
    array = np.asarray(list(values), dtype=float)
    if len(array) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    sd = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return summarize(float(array.mean()), sd, len(array), level)


@dataclass(frozen=True)
class Difference:
    """``a − b``, with Welch's t-interval, and what it lets one say at ``margin``."""

    delta: float
    low: float
    high: float
    margin: float

    @property
    def verdict(self) -> str:
        """``same`` (the interval lies within ±margin: any difference is smaller than
        what counts), else ``higher``/``lower`` (it excludes 0), else ``unresolved``."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return UNRESOLVED
        if -self.margin < self.low and self.high < self.margin:
            return SAME
        if self.low > 0:
            return HIGHER
        if self.high < 0:
            return LOWER
        return UNRESOLVED

    def __str__(self) -> str:
        if not math.isfinite(self.low):
            return f"{self.delta:+.3f} (interval needs 2 seeds each)"
        return f"{self.delta:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def difference(
    a: tuple[float, float, int],
    b: tuple[float, float, int],
    margin: float = MARGIN,
    level: float = LEVEL,
) -> Difference:
    """``a − b`` for two groups given as (mean, sd, n): Welch's interval (unequal
    variances, Welch–Satterthwaite degrees of freedom). Two groups without spread
    (every seed alike in both) get an interval of zero width."""
    return contrast([(1.0, a), (-1.0, b)], margin, level)


def contrast(
    groups: list[tuple[float, tuple[float, float, int]]],
    margin: float = MARGIN,
    level: float = LEVEL,
) -> Difference:
    """Σ cᵢ·meanᵢ for groups given as (cᵢ, (mean, sd, n)) — e.g. a difference of
    differences (+1, −1, −1, +1) — with Welch–Satterthwaite's interval, the
    generalization of :func:`difference`."""
    delta = sum(c * m for c, (m, _, _) in groups)
    if any(n < 2 or not math.isfinite(sd) for _, (_, sd, n) in groups):
        return Difference(delta, math.nan, math.nan, margin)
    parts = [(c * c * sd * sd / n, n) for c, (_, sd, n) in groups]
    variance = sum(v for v, _ in parts)
    if variance == 0:
        return Difference(delta, delta, delta, margin)
    df = variance**2 / sum(v * v / (n - 1) for v, n in parts if v > 0)
    half = _t(level, df) * math.sqrt(variance)
    return Difference(delta, delta - half, delta + half, margin)


def row_difference(a, b, column: str = "test_acc", margin: float = MARGIN) -> Difference:
    """:func:`difference` of two headline rows holding ``column``, ``column_sd``
    (or ``acc_sd`` for ``test_acc``) and ``seeds``."""
    return difference(group(a, column), group(b, column), margin)


def group(row, column: str = "test_acc") -> tuple[float, float, int]:
    """(mean, sd, n) of ``column`` in a headline row (see :func:`row_difference`)."""
    sd = "acc_sd" if column == "test_acc" else f"{column}_sd"
    return float(row[column]), float(row.get(sd, math.nan)), int(row["seeds"])


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on ``n`` test examples."""
    if n < 1 or not math.isfinite(accuracy):
        return math.nan
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)
