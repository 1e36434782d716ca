"""Reading stored runs: helpers the experiments' analyses share."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from normlab.experiments.store import ResultsStore

OUTCOMES = ("trained", "did not learn", "diverged")  # best to worst


def final_table(store: ResultsStore, axis: str) -> pd.DataFrame:
    """Per norm and ``axis`` value, over seeds: mean, min and max final test accuracy,
    the number of seeds, the fraction of diverged runs and the typical outcome (the
    most common; a tie goes to the worse)."""
    columns = ["norm", axis, "test_acc", "acc_min", "acc_max", "seeds", "diverged", "outcome"]
    table = store.summaries()
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (norm, value), group in table.groupby(["norm", axis], dropna=False):
        outcomes = (
            group.outcome
            if "outcome" in group
            else group.diverged.map({True: "diverged", False: "trained"})
        )
        counts = outcomes.value_counts()
        typical = max(OUTCOMES, key=lambda o: (counts.get(o, 0), OUTCOMES.index(o)))
        rows.append(
            {
                "norm": norm,
                axis: value,
                "test_acc": group.final_test_acc.mean(),
                "acc_min": group.final_test_acc.min(),
                "acc_max": group.final_test_acc.max(),
                "seeds": len(group),
                "diverged": float((outcomes == "diverged").mean()),
                "outcome": typical,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def differs(a: pd.Series | dict, b: pd.Series | dict) -> bool:
    """Whether two rows' accuracy ranges over seeds (acc_min..acc_max) do not overlap:
    only then is a difference called a difference. One seed each: never. With k seeds
    each and no true difference, the ranges of two runs' sets separate with probability
    2 (k!)² / (2k)!: 1/3 for 2 seeds, 1/10 for 3 — weak at 2 seeds."""
    if a["seeds"] < 2 or b["seeds"] < 2:
        return False
    return a["acc_min"] > b["acc_max"] or b["acc_min"] > a["acc_max"]


def spread(row) -> str:
    """'0.912 (0.905–0.918, 3 seeds)' or '0.912 (1 seed)'."""
    if row["seeds"] < 2:
        return f"{row['test_acc']:.3f} (1 seed)"
    return (
        f"{row['test_acc']:.3f} ({row['acc_min']:.3f}–{row['acc_max']:.3f}, {row['seeds']} seeds)"
    )


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
