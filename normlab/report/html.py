"""The comparison report: one self-contained HTML file (pictures embedded),
built from a results directory alone, with a short text per finding and a
summary table whose recommendations are derived from the numbers."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from normlab.experiments import catalog
from normlab.experiments.store import ResultsStore
from normlab.report import axes, plots


def _png(fig) -> str:
    if fig is None:
        return "<p><em>no results for this section</em></p>"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="figure">'


def _table(frame: pd.DataFrame) -> str:
    def cell(v):
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.3g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _stores(root: Path) -> dict[str, ResultsStore]:
    found = {}
    for name in catalog.EXPERIMENTS:
        runs = root / name / "runs"
        if runs.is_dir() and any(not p.name.startswith(".") for p in runs.iterdir()):
            found[name] = ResultsStore(root / name)
    return found


def summary_table(
    headlines: dict[str, pd.DataFrame], stores: dict[str, ResultsStore]
) -> pd.DataFrame:
    """Per technique: final accuracy, steps to 90% test accuracy (ics), batch-size
    sensitivity, largest stable learning rate, cost, and a recommendation."""
    rows: dict[str, dict] = {}

    def row(norm: str) -> dict:
        return rows.setdefault(norm, {"technique": norm})

    if "ics" in stores:
        store = stores["ics"]
        for _, run in store.summaries().iterrows():
            metrics = store.metrics(run.run_id)
            acc = metrics[metrics.metric == "test_acc"].sort_values("step")
            reached = acc[acc.value >= 0.9].step
            row(run.norm)["final acc (ics)"] = run.final_test_acc
            row(run.norm)["steps to 90%"] = float(reached.iloc[0]) if len(reached) else math.nan
    if "batch-size" in headlines:
        for norm, group in headlines["batch-size"].groupby("norm"):
            acc = group.set_index("batch_size").test_acc.fillna(0.0)
            row(norm)["acc @ batch 2"] = acc.get(2, math.nan)
            row(norm)["batch-size spread"] = float(acc.max() - acc.min())
    if "lr" in headlines:
        for norm, group in headlines["lr"].groupby("norm"):
            ok = group[(group.diverged == 0) & (group.test_acc >= 0.8)]
            row(norm)["largest good lr"] = float(ok.lr.max()) if len(ok) else math.nan
    if "cost" in headlines:
        cost = headlines["cost"].set_index("norm")
        base = cost.ms_per_step.get("none", math.nan)
        for norm, values in cost.iterrows():
            row(norm)["cost (x none)"] = values.ms_per_step / base
    table = pd.DataFrame(list(rows.values()))
    table["recommendation"] = [_recommend(r, table) for r in table.to_dict("records")]
    return table


def _recommend(row: dict, table: pd.DataFrame) -> str:
    """One line from the numbers: what this technique did better or worse here."""
    if row["technique"] == "none":
        return "baseline: no normalization"
    notes = []
    lr = row.get("largest good lr", math.nan)
    if not math.isnan(lr) and "largest good lr" in table and lr >= table["largest good lr"].max():
        notes.append("tolerates the largest learning rates")
    spread = row.get("batch-size spread", math.nan)
    if not math.isnan(spread):
        notes.append("insensitive to batch size" if spread <= 0.05 else "sensitive to batch size")
    steps = row.get("steps to 90%", math.nan)
    if not math.isnan(steps) and "steps to 90%" in table and steps <= table["steps to 90%"].min():
        notes.append("fastest to 90% accuracy")
    cost = row.get("cost (x none)", math.nan)
    if not math.isnan(cost):
        notes.append(f"costs {cost:.1f}x no normalization per step")
    return "; ".join(notes) or "no advantage measured here"


SECTIONS = (
    (
        "ics",
        "Why: internal covariate shift",
        "The distribution of the last hidden layer's sigmoid input early and late in training, "
        "and its 15th/50th/85th percentiles over training (the BatchNorm paper's Figure 1 b/c).",
    ),
    ("ics-curves", "Training", "Test accuracy over training steps."),
    (
        "batch-size",
        "Batch size",
        "Test error against batch size, same number of epochs, learning rate scaled with the batch "
        "(the GroupNorm paper's study, in small).",
    ),
    ("lr", "Learning rate", "Final accuracy over a learning-rate grid; × marks divergence."),
    ("init", "Initialization", "Final accuracy against the scale of the initial weights."),
    (
        "depth",
        "Depth",
        "Weight-gradient norm per layer in the deepest networks: vanishing or exploding gradients.",
    ),
    ("cost", "Cost", "Time per training step and activation memory on the same CNN and batch."),
)


def _finding(name: str, headline: pd.DataFrame) -> str:
    """A sentence with the section's headline numbers."""
    try:
        if name == "ics":
            h = headline.set_index("norm")
            parts = [
                f"{n}: {r.early_test_acc:.3f} test accuracy after the first evaluation, "
                f"sigmoid inputs' means moved {r.layers_mean_drift:.2f} and stds "
                f"{r.layers_std_drift:.2f} over training"
                for n, r in h.iterrows()
            ]
            return "; ".join(parts) + "."
        if name == "batch-size":
            parts = []
            for norm, group in headline.groupby("norm"):
                acc = group.set_index("batch_size").test_acc
                parts.append(
                    f"{norm} {1 - acc.iloc[0]:.3f} error at batch {acc.index[0]}, "
                    f"{1 - acc.iloc[-1]:.3f} at {acc.index[-1]}"
                )
            return "; ".join(parts) + "."
        if name in ("lr", "init"):
            axis = "lr" if name == "lr" else "init_scale"
            parts = []
            for norm, group in headline.groupby("norm"):
                ok = group[group.diverged == 0]
                span = f"{ok[axis].min():g}–{ok[axis].max():g}" if len(ok) else "none"
                parts.append(f"{norm} trains without diverging for {axis} in {span}")
            return "; ".join(parts) + "."
        if name == "cost":
            h = headline.sort_values("ms_per_step")
            return (
                "Fastest to slowest: "
                + ", ".join(f"{r.norm} {r.ms_per_step:.1f} ms" for r in h.itertuples())
                + "."
            )
    except (KeyError, AttributeError, IndexError, ValueError):
        return ""
    return ""


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td:last-child { text-align: left; }
p.finding { background: #f5f7fa; padding: 0.5em 0.8em; border-left: 3px solid #1f77b4; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-images-loaded', ok);
});
"""


def build(root: str | Path, out: str | Path) -> Path:
    """Write ``out/index.html`` (and the tables as CSV) from the results in ``root``."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stores = _stores(root)
    headlines = {name: catalog.get(name).headline(store) for name, store in stores.items()}
    for name, frame in headlines.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    summary = summary_table(headlines, stores)
    summary.to_csv(out / "summary.csv", index=False)
    norms = sorted({n for s in stores.values() for n in s.summaries().norm} - {"none"})
    shown = norms or ["batchnorm", "layernorm", "groupnorm", "instancenorm"]
    parts = [
        "<h1>normlab: comparing normalization techniques</h1>",
        f"<p>Results from <code>{html.escape(str(root))}</code>: "
        f"{sum(len(s.ids()) for s in stores.values())} runs in {len(stores)} experiments.</p>",
        "<h2>What is normalized</h2>",
        "<p>For each technique, the set of values one statistic is taken over, shaded, in an "
        "(N, C, H×W) activation (after the GroupNorm paper's Figure 2), and in an MLP's "
        "(N, features) activation. Drawn from the registry's data.</p>",
        _png(axes.figure(shown)),
        _png(axes.figure(shown, features=True)),
    ]
    figures = {
        "ics": lambda s: plots.drift(s),
        "ics-curves": lambda s: plots.accuracy_curves(s),
        "batch-size": lambda s: plots.error_vs(headlines["batch-size"], "batch_size"),
        "lr": lambda s: plots.heatmap(headlines["lr"], "lr"),
        "init": lambda s: plots.heatmap(headlines["init"], "init_scale"),
        "depth": lambda s: plots.gradient_flow(s),
        "cost": lambda s: plots.cost(headlines["cost"]),
    }
    for key, title, text in SECTIONS:
        name = "ics" if key == "ics-curves" else key
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>")
        if name not in stores:
            parts.append(f"<p><em>not run (normlab run {name})</em></p>")
            continue
        finding = _finding(name, headlines[name]) if key == name else ""
        if finding:
            parts.append(f'<p class="finding">{html.escape(finding)}</p>')
        parts.append(_png(figures[key](stores[name])))
    parts += [
        "<h2>Summary</h2>",
        "<p>Per technique, from the runs above; recommendations follow from these numbers "
        "only.</p>",
        _table(summary),
        "<p>Tables as CSV beside this file; every run's metrics and monitor records in the "
        "results directory (Parquet).</p>",
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>normlab report</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
