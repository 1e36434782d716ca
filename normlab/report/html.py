"""The comparison report: one self-contained HTML file (pictures embedded),
built from a results directory alone. Its sections are the experiments' own
(title, question, finding, figures: see :mod:`normlab.experiments.suite`); the
summary table joins each experiment's summary columns and remarks."""

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
from normlab.norms import registry
from normlab.report import axes


def _png(fig) -> str:
    if fig is None:
        return "<p><em>nothing to draw from these runs</em></p>"
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


def find_stores(root: Path) -> dict[str, ResultsStore]:
    """The store of every experiment with at least one finished run under ``root``,
    in report order; a directory under ``root`` that no experiment owns is ignored."""
    found = {}
    for name in catalog.EXPERIMENTS:
        if (root / name / "runs").is_dir():
            store = ResultsStore(root / name)
            if store.ids():
                found[name] = store
    return found


def summary_table(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Per technique, every experiment's summary columns side by side, and a
    recommendation made of their remarks (only numbers measured here)."""
    table = pd.DataFrame(columns=["norm"])
    remarks: dict[str, list[str]] = {}
    for part in parts:
        for norm, remark in zip(part.norm, part.remark, strict=True):
            if remark:
                remarks.setdefault(norm, []).append(remark)
        table = table.merge(part.drop(columns="remark"), on="norm", how="outer")
    table["recommendation"] = [
        "baseline: no normalization"
        if norm == "none"
        else "; ".join(remarks.get(norm, [])) or "no advantage measured here"
        for norm in table.norm
    ]
    return table.rename(columns={"norm": "technique"})


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
    """Write ``out/index.html`` (and the tables as CSV) from the results in ``root``:
    a section for every experiment that has results there."""
    root, out = Path(root), Path(out)
    stores = find_stores(root)
    if not stores:
        known = ", ".join(catalog.EXPERIMENTS)
        raise ValueError(
            f"no finished runs under {root} (expected ROOT/<experiment>/runs/ for {known})"
        )
    out.mkdir(parents=True, exist_ok=True)
    headlines = {name: catalog.get(name).headline(store) for name, store in stores.items()}
    for name, frame in headlines.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    summary = summary_table(
        [catalog.get(name).summary(store, headlines[name]) for name, store in stores.items()]
    )
    summary.to_csv(out / "summary.csv", index=False)
    norms = sorted({n for s in stores.values() for n in s.summaries().norm} - {"none"})
    shown = [n for n in norms if registry.spec(n).stats] or ["batchnorm", "layernorm", "groupnorm"]
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
    for name, experiment in catalog.EXPERIMENTS.items():
        parts.append(
            f"<h2>{html.escape(experiment.title)}</h2><p>{html.escape(experiment.question)}</p>"
        )
        if name not in stores:
            parts.append(f"<p><em>not run (normlab run {name})</em></p>")
            continue
        finding = experiment.finding(headlines[name])
        if finding:
            parts.append(f'<p class="finding">{html.escape(finding)}</p>')
        for figure, caption in experiment.figures(stores[name], headlines[name]):
            parts.append(
                f"<figure>{_png(figure)}<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
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


def locate(directory: str | Path) -> tuple[Path, Path]:
    """(results root, report directory) for ``directory``: a compare directory (its
    results in ``results/``, its report beside them) or a results directory (one folder
    per experiment; its report goes into ``directory/report``); one experiment's
    directory (holding ``runs/``) stands for the results directory above it."""
    directory = Path(directory)
    if (directory / "runs").is_dir():
        directory = directory.resolve().parent
    if (directory / "results").is_dir():
        return directory / "results", directory
    return directory, directory / "report"
