"""Reading stored runs: helpers the experiments' analyses share."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from normlab.experiments import stats
from normlab.experiments.outcomes import DID_NOT_LEARN, DIVERGED, TRAINED

OUTCOMES = (TRAINED, DID_NOT_LEARN, DIVERGED)  # best to worst


def final_table(runs: pd.DataFrame, axis: str, score: str = "final_test_acc") -> pd.DataFrame:
    """Per norm and ``axis`` value of ``runs`` (a store's summaries), over seeds: the
    accuracy ``score`` (a summary field) as mean, sample sd, 95% t-interval, min and
    max over the seeds that have one; ``runs`` (seeds run) and ``seeds`` (seeds with a
    finite accuracy); the test set's size and binomial standard error at the mean; the
    fraction of diverged runs; every seed's outcome (``outcomes``, e.g. "2 trained, 1
    diverged") and the typical one (the most common; a tie goes to the worse)."""
    if runs.empty:
        return pd.DataFrame(columns=[*FINAL_COLUMNS[:1], axis, *FINAL_COLUMNS[1:]])
    rows = []
    for (norm, value), group in runs.groupby(["norm", axis], dropna=False):
        outcomes = group.outcome
        counts = outcomes.value_counts()
        typical = max(OUTCOMES, key=lambda o: (counts.get(o, 0), OUTCOMES.index(o)))
        accuracy = group[score].astype(float)
        finite = accuracy[np.isfinite(accuracy)]
        estimate = stats.interval(finite)
        n_test = int(group.test_examples.iloc[0]) if "test_examples" in group else 0
        rows.append(
            {
                "norm": norm,
                axis: value,
                "test_acc": estimate.mean,
                "acc_sd": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
                "ci_low": estimate.low,
                "ci_high": estimate.high,
                "acc_min": finite.min() if len(finite) else math.nan,
                "acc_max": finite.max() if len(finite) else math.nan,
                "seeds": len(finite),
                "runs": len(group),
                "test_examples": n_test,
                "test_se": stats.binomial_se(estimate.mean, n_test),
                "diverged": float((outcomes == DIVERGED).mean()),
                "outcome": typical,
                "outcomes": ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if o in counts),
            }
        )
    return pd.DataFrame(rows)


FINAL_COLUMNS = [
    "norm",
    "test_acc",
    "acc_sd",
    "ci_low",
    "ci_high",
    "acc_min",
    "acc_max",
    "seeds",
    "runs",
    "test_examples",
    "test_se",
    "diverged",
    "outcome",
    "outcomes",
]


def seed_table(frame: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Per group of ``by`` in a one-row-per-seed ``frame``: each of ``columns`` as its
    mean over seeds and its sample sd (``<column>_sd``), and ``seeds``, the group's
    size: what :func:`stats.row_difference` reads."""
    grouped = frame.groupby(by)
    table = grouped[columns].mean()
    for column in columns:
        table[f"{column}_sd"] = grouped[column].std(ddof=1)
    table["seeds"] = grouped.size()
    return table.reset_index()


def compare(a, b, margin: float = stats.MARGIN) -> stats.Difference:
    """``a − b`` in accuracy for two :func:`final_table` rows (Welch's interval)."""
    return stats.row_difference(a, b, "test_acc", margin)


def spread(row) -> str:
    """'0.912 [0.905, 0.918], 3 seeds' (mean and 95% t-interval) or '0.912, 1 seed';
    where the seeds' outcomes differ, their range and outcomes instead of an interval
    (which a bimodal sample would stretch past 0 and 1)."""
    seeds = int(row["seeds"])
    outcomes = str(row.get("outcomes", ""))
    if seeds == 1:
        return f"{row['test_acc']:.3f}, 1 seed"
    if "," in outcomes:  # seeds with different outcomes: no interval, their range
        return (
            f"{row['test_acc']:.3f} (seeds {row['acc_min']:.3f} to {row['acc_max']:.3f}: "
            f"{outcomes})"
        )
    estimate = stats.Interval(row["test_acc"], row["ci_low"], row["ci_high"], seeds)
    return f"{estimate}, {seeds} seeds"


def metric_series(metrics: pd.DataFrame, name: str) -> pd.Series:
    """One metric over steps (empty when the run never recorded it)."""
    rows = metrics[metrics.metric == name].sort_values("step")
    return pd.Series(rows.value.to_numpy(), index=rows.step.to_numpy(), dtype=float)


def saturating_sites(monitor: pd.DataFrame | None) -> list[str]:
    """The sigmoid/tanh inputs a monitor frame holds (the sites with 'saturated'),
    from the input to the output."""
    if monitor is None or monitor.empty:
        return []
    sites = monitor[monitor.quantity == "saturated"].module.unique()
    return sorted(sites, key=_layer_index)


def last_sigmoid_site(monitor: pd.DataFrame | None) -> str | None:
    """The deepest sigmoid (or tanh) input a monitor frame holds, or None."""
    sites = saturating_sites(monitor)
    return sites[-1] if sites else None


def layer_gradient_norms(monitor: pd.DataFrame | None, weights: str = "") -> pd.Series:
    """Median gradient norm per linear map's weight (``weights``: the run's
    ``weight_layers``, comma-separated), input to output; norms' scales are not layers."""
    if monitor is None or monitor.empty:
        return pd.Series(dtype=float)
    names = [w for w in str(weights).split(",") if w]
    grads = monitor[(monitor.quantity == "grad_norm") & monitor.module.isin(names)]
    per_layer = grads.groupby("module").value.median()
    return per_layer.reindex([n for n in names if n in per_layer.index])


def site_stats(monitor: pd.DataFrame, site: str) -> pd.DataFrame:
    """One site's recorded quantities as a (step x quantity) table."""
    return monitor[monitor.module == site].pivot(index="step", columns="quantity", values="value")


def first_last(values: pd.Series) -> tuple[float, float]:
    """(first, last) of a series, NaN for an empty one."""
    if values.empty:
        return math.nan, math.nan
    return float(values.iloc[0]), float(values.iloc[-1])


def outcome_ranges(headline: pd.DataFrame, axis: str) -> str:
    """Per norm, where along ``axis`` it trained, did not learn and diverged."""
    parts = []
    for norm, group in headline.groupby("norm"):
        found = []
        for outcome in OUTCOMES:
            values = group[group.outcome == outcome][axis]
            if len(values):
                shown = ", ".join(
                    f"{v:g}" if isinstance(v, float | int) else str(v) for v in values
                )
                found.append(f"{outcome} at {axis.replace('_', ' ')} {shown}")
        parts.append(f"{norm} " + ", ".join(found))
    return "; ".join(parts) + "." if parts else ""


def error_endpoints(headline: pd.DataFrame, axis: str, unit: str = "") -> str:
    """'norm e1 error at <axis> a, e2 at b' per norm: the two ends of a sweep."""
    parts = []
    for norm, group in headline.groupby("norm"):
        acc = group.set_index(axis).test_acc.sort_index()
        parts.append(
            f"{norm} {1 - acc.iloc[0]:.3f} error at {axis.replace('_', ' ')} {acc.index[0]}{unit}, "
            f"{1 - acc.iloc[-1]:.3f} at {acc.index[-1]}{unit}"
        )
    return "; ".join(parts) + "." if parts else ""


def _layer_index(module: str) -> tuple:
    """Sort key: the numeric parts of a dotted module name ('3.weight' -> (3,))."""
    head = str(module).split("#")[0]
    return tuple(int(p) if p.isdigit() else math.inf for p in head.split(".")), head


def nanmean(values) -> float:
    array = np.asarray(list(values), dtype=float)
    return float(np.nanmean(array)) if np.isfinite(array).any() else math.nan
