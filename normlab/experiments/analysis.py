"""Reading stored runs: helpers the experiments' analyses share."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from normlab.experiments.store import ResultsStore


def final_table(store: ResultsStore, axis: str) -> pd.DataFrame:
    """Mean final test accuracy (and divergence) per norm and ``axis`` value."""
    table = store.summaries()
    if table.empty:
        return pd.DataFrame(columns=["norm", axis, "test_acc", "diverged", "runs"])
    grouped = table.groupby(["norm", axis], dropna=False)
    out = grouped.agg(
        test_acc=("final_test_acc", "mean"),
        diverged=("diverged", "mean"),
        runs=("run_id", "count"),
    )
    return out.reset_index()


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


def layer_gradient_norms(monitor: pd.DataFrame | None) -> pd.Series:
    """Median weight-gradient norm per parameter ``*.weight``, input to output."""
    if monitor is None or monitor.empty:
        return pd.Series(dtype=float)
    grads = monitor[(monitor.quantity == "grad_norm") & monitor.module.str.endswith(".weight")]
    per_layer = grads.groupby("module").value.median()
    return per_layer[sorted(per_layer.index, key=_layer_index)]


def site_stats(monitor: pd.DataFrame, site: str) -> pd.DataFrame:
    """One site's recorded quantities as a (step x quantity) table."""
    return monitor[monitor.module == site].pivot(index="step", columns="quantity", values="value")


def first_last(values: pd.Series) -> tuple[float, float]:
    """(first, last) of a series, NaN for an empty one."""
    if values.empty:
        return math.nan, math.nan
    return float(values.iloc[0]), float(values.iloc[-1])


def stable_ranges(headline: pd.DataFrame, axis: str) -> str:
    """'norm trains without diverging for axis in a–b' per norm."""
    parts = []
    for norm, group in headline.groupby("norm"):
        ok = group[group.diverged == 0]
        span = f"{ok[axis].min():g}–{ok[axis].max():g}" if len(ok) else "none"
        parts.append(f"{norm} trains without diverging for {axis} in {span}")
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
