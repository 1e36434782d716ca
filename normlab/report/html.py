"""The article: "Understanding activation normalization", one self-contained HTML
page (pictures embedded, and saved beside it as PNG) built from a results
directory alone.

Its parts, in reading order: what normalization is (the formula worked on a real
activation tensor, the axes drawing, the registry's table), why — the problem,
why it helps (the experiments of each part: see ``Experiment.section``), the
techniques compared, which one to use (recommendations from the numbers and the
registry's facts), what did not reproduce (each experiment's expectations), and
the setup. Every sentence about results is computed from the stored runs.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from normlab.experiments import catalog, describe, stats
from normlab.experiments.experiment import SECTIONS, Expectation, Experiment
from normlab.experiments.store import ResultsStore
from normlab.norms import registry
from normlab.report import axes, guide, primer


class _Figures:
    """Numbered figures: embedded in the page and written to ``out/figures/`` as PNG."""

    def __init__(self, out: Path) -> None:
        self.folder = out / "figures"
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.png"):
            old.unlink()
        self.count = 0

    def __call__(self, fig, caption: str, name: str) -> str:
        if fig is None:
            return "<p><em>nothing to draw from these runs</em></p>"
        self.count += 1
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        (self.folder / f"{self.count:02d}-{name}.png").write_bytes(buffer.getvalue())
        data = base64.b64encode(buffer.getvalue()).decode()
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>Figure {self.count}. {html.escape(caption)}</figcaption></figure>"
        )


def _table(frame: pd.DataFrame, index: bool = False) -> str:
    def cell(v):
        if isinstance(v, float):
            if math.isnan(v):
                return "—"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return html.escape(str(v))

    if index:
        frame = frame.reset_index(names="")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def find_stores(root: Path) -> dict[str, ResultsStore]:
    """The store of every experiment with finished runs (of its current sweep) under
    ``root``, in catalog order; folders no experiment owns are ignored."""
    found = {}
    for name in catalog.EXPERIMENTS:
        if (root / name / "runs").is_dir():
            store = ResultsStore(root / name)
            if store.ids():
                found[name] = store
    return found


def summary_table(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Per technique, every experiment's summary columns side by side, and notes: the
    experiments' remarks, then what the registry says the technique is (only numbers
    measured here, and facts)."""
    table = pd.DataFrame(columns=["norm"])
    remarks: dict[str, list[str]] = {}
    for part in parts:
        for norm, remark in zip(part.norm, part.remark, strict=True):
            if remark:
                remarks.setdefault(norm, []).append(remark)
        table = table.merge(part.drop(columns="remark"), on="norm", how="outer")
    table["notes"] = [_recommend(norm, remarks.get(norm, [])) for norm in table.norm]
    return table.rename(columns={"norm": "technique"})


def _recommend(norm: str, remarks: list[str]) -> str:
    """The measured remarks, then one fact a user choosing needs: where the statistics
    come from (from the registry)."""
    if norm == "none":
        return "baseline: no normalization"
    s = registry.spec(norm)
    fact = {
        "running": "batch statistics in training, running averages in eval",
        "batch": "batch statistics in training and eval",
        "sample": "per-sample statistics: any batch size, same in train and eval",
        "frozen": "fixed statistics",
        "none": "no statistics (element-wise)",
    }[s.inference]
    if s.fused_activation:
        fact += "; brings its own activation"
    return "; ".join([*remarks, fact])


def _guide(headlines: dict[str, pd.DataFrame]) -> str:
    """The decision guide (:mod:`normlab.report.guide`) as a table."""
    rows = guide.advice(headlines)
    frame = pd.DataFrame(
        {
            "situation": [a.situation for a in rows],
            "use": [a.technique for a in rows],
            "why": [a.why for a in rows],
            "evidence: here, then published": [a.evidence for a in rows],
        }
    )
    return _table(frame)


STYLE = """
body { font-family: Georgia, 'Times New Roman', serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.5; }
h1 { font-size: 2em; margin-bottom: 0.1em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { margin-top: 1.4em; } .lead { font-size: 1.1em; color: #444; }
code, .formula { font-family: 'DejaVu Sans Mono', monospace; }
.formula { display: block; font-size: 1.15em; margin: 0.8em 0; padding: 0.5em 1em;
           background: #f6f6f6; }
img { max-width: 100%; display: block; margin: 0.4em 0; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.6em 0;
        font-family: system-ui, sans-serif; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; vertical-align: top; }
th:first-child, td:first-child, td:last-child { text-align: left; }
p.finding { background: #f3f6fa; padding: 0.5em 0.8em; border-left: 3px solid #1f77b4;
            font-family: system-ui, sans-serif; font-size: 0.95em; }
li.held::marker { content: "✓ "; color: #2a7d2a; } li.failed::marker { content: "✗ "; color: #b22; }
li.untested::marker { content: "? "; color: #888; }
p.quick { background: #fff3cd; padding: 0.6em 0.9em; border-left: 4px solid #d39e00; }
nav ol { columns: 2; font-family: system-ui, sans-serif; font-size: 0.95em; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-images-loaded', ok);
});
"""

PARTS = (
    ("what", "1. What normalization is"),
    ("problem", "2. " + SECTIONS["problem"]),
    ("why", "3. " + SECTIONS["why"]),
    ("compare", "4. " + SECTIONS["compare"]),
    ("use", "5. Which one to use"),
    ("reproduced", "6. What reproduced here, and what did not"),
    ("setup", "7. Setup"),
)

LITERATURE = (
    "Ioffe & Szegedy (2015) introduced BatchNorm to reduce <em>internal covariate shift</em>: "
    "the change of each layer's input distribution as the layers before it learn. Santurkar, "
    "Tsipras, Ilyas & Madry (2018) tested that explanation: BatchNorm with random noise "
    "injected after it (so its outputs' distribution shifts at every step) trains about as "
    "well as BatchNorm, and measured as the change of a layer's gradient when the earlier "
    "layers take their step, BatchNorm does not reduce covariate shift. What it does, they "
    "argued, is make the loss landscape smoother: the loss and its gradient change less "
    "along the gradient direction, which allows larger steps. Other accounts stand beside "
    "theirs. A normalized layer's output does not change when its incoming weights are "
    "scaled, so the effect of a step of size η on weights w is about η/‖w‖²: the weights' "
    "norm and weight decay, not the learning rate alone, set the effective step (van "
    "Laarhoven, 2017; Hoffer et al., 2018; Zhang et al., 2019). In residual networks "
    "BatchNorm shrinks each residual branch against the skip connection, so a deep network "
    "starts close to the identity (De & Smith, 2020), and an initialization that does the "
    "same trains deep residual networks without normalization (Fixup: Zhang, Dauphin & Ma, "
    "2019). And the noise of batch statistics regularizes. Our measurements of Santurkar et "
    "al.'s claims follow."
)


def _what_part(figure: _Figures, norms: list[str]) -> list[str]:
    example = primer.worked_example(primer.activation_example())
    x = example["x"]
    first = example["batch statistics"]["unit 1"]
    return [
        "<p>A layer's activations are rescaled to zero mean and unit variance over some set "
        "of axes, then a learned scale γ and shift β restore whatever range the network "
        "needs:</p>",
        '<span class="formula">x̂ = (x − μ) / √(σ² + ε)        y = γ x̂ + β</span>',
        "<p>Techniques differ in the axes μ and σ² are taken over, in the statistics (both, "
        "or only the root mean square), and in where the statistics come from at inference "
        "(the batch, running averages, or the sample itself).</p>",
        "<h3>Worked example</h3>",
        "<p>The pre-activations of four units of the first hidden layer of the BatchNorm "
        "paper's network (784 → 100, initial weights N(0, 0.1²)) for six real MNIST digits "
        "(embedded data):</p>",
        _table(x, index=True),
        f"<p><b>BatchNorm</b> normalizes each unit over the batch. Unit 1: μ_B = "
        f"{first.iloc[0]:.3f}, σ²_B = {first.iloc[1]:.3f}, so sample 1 becomes "
        f"({x.iloc[0, 0]:.3f} − ({first.iloc[0]:.3f})) / √({first.iloc[1]:.3f} + 1e-5) = "
        f"{example['batchnorm'].iloc[0, 0]:.3f}. Every column below has mean 0 and variance "
        "1:</p>",
        _table(example["batchnorm"], index=True),
        "<p><b>LayerNorm</b> normalizes each sample over its units instead (here over the "
        "four units shown; the layer's LayerNorm takes all 100): every row has mean 0 and "
        "variance 1, and no sample depends on another:</p>",
        _table(example["layernorm"], index=True),
        "<h3>What each technique normalizes over</h3>",
        "<p>An (N, C, H×W) activation as a block; the cells shaded in one colour share one "
        "mean and variance (after the GroupNorm paper's Figure 2). Colours: blue, orange and "
        "green are a technique's first, second and third statistic (EvoNorm-B0 uses two, "
        "Switchable Norm three, drawn over each other); white cells are not in the "
        "highlighted set. Drawn from the registry's data.</p>",
        figure(
            axes.figure(["batchnorm", "layernorm_chw", "instancenorm", "groupnorm"]),
            "BatchNorm, LayerNorm (over C, H, W), InstanceNorm and GroupNorm.",
            "axes",
        ),
        figure(axes.figure(norms), "The other techniques measured here.", "axes-others")
        if norms
        else "",
        "<h3>Every technique in normlab</h3>",
        _table(primer.technique_table()),
    ]


def _experiment_html(experiment: Experiment, store, headline, figure: _Figures) -> list[str]:
    parts = [
        f'<h3 id="{experiment.name}">{html.escape(experiment.title)}</h3>',
        f"<p>{html.escape(experiment.lead(store.summaries()))}</p>",
    ]
    finding = experiment.finding(headline)
    if finding:
        parts.append(f'<p class="finding">{html.escape(finding)}</p>')
    for fig, caption in experiment.figures(store, headline):
        parts.append(figure(fig, caption, experiment.name))
    return parts


def _expectation_items(found: list[tuple[str, Expectation]]) -> str:
    items = []
    for name, e in found:
        status = {True: "held", False: "failed", None: "untested"}[e.held]
        word = {True: "Reproduced", False: "Not reproduced", None: "Not decided here"}[e.held]
        note = f" {html.escape(e.note[0].upper() + e.note[1:])}." if e.note else ""
        items.append(
            f'<li class="{status}"><b>{word}</b> (<a href="#{name}">{html.escape(name)}</a>): '
            f"{html.escape(e.claim)}. Measured: {html.escape(e.measured)}.{note}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _recipe_tables(stores: dict[str, ResultsStore]) -> list[str]:
    """Each anchor's "paper / here / why different" table."""
    parts = []
    for name, store in stores.items():
        rows = catalog.get(name).recipe(store.summaries())
        if rows:
            frame = pd.DataFrame(
                {
                    "": [r.aspect for r in rows],
                    "the paper": [r.paper for r in rows],
                    "here": [r.here for r in rows],
                    "why different, and what it could change": [r.why for r in rows],
                }
            )
            title = catalog.get(name).title
            parts += [f"<h3>{html.escape(title)}: the paper's recipe and ours</h3>", _table(frame)]
    return parts


def _setup_table(stores: dict[str, ResultsStore]) -> pd.DataFrame:
    rows = []
    for name, store in stores.items():
        runs = store.summaries()
        rows.append(
            {
                "experiment": name,
                "runs": len(runs),
                "seeds": describe.seeds(runs),
                "model": describe.model(runs),
                "data": describe.data(runs),
                "training": describe.training(runs),
                "run time, summed (s)": runs.wall_seconds.sum()
                if "wall_seconds" in runs
                else math.nan,
                "machine": ", ".join(sorted(set(runs.get("machine", pd.Series(["?"])).dropna()))),
            }
        )
    return pd.DataFrame(rows)


def _seed_note(stores: dict[str, ResultsStore], undecided: list[tuple[str, Expectation]]) -> str:
    few = {name: describe.seeds(s.summaries()) for name, s in stores.items()}
    few = {name: n for name, n in few.items() if n < stats.MIN_SEEDS}
    text = (
        f"<p>A verdict needs {stats.MIN_SEEDS} seeds on each side. Differences are Welch "
        "95% intervals over seeds; a difference counts where its interval excludes zero, "
        f'and "the same" only where it lies within ±{stats.MARGIN:g} accuracy (unless '
        "a verdict states another margin). The test sets' own sampling error is the "
        "binomial standard error of each accuracy: √(p(1−p)/n) for n test examples, "
        "e.g. ±0.008 at p = 0.93 and n = 1,000 (the test_se column of the CSV files). "
        "All seeds of a comparison are scored on the same test images, so the intervals "
        "leave that sampling out: a difference below about twice the binomial error is "
        "small against it, however well the seeds resolve it.</p>"
    )
    if few:
        listed = ", ".join(f"{name} ({n})" for name, n in few.items())
        text += f"<p>Fewer than {stats.MIN_SEEDS} seeds: {html.escape(listed)}."
        if undecided:
            claims = "; ".join(f"{e.claim} ({name})" for name, e in undecided)
            text += f" So these verdicts are not drawn: {html.escape(claims)}."
        text += " <code>normlab compare --full</code> runs every experiment with enough.</p>"
    return text


QUICK_BANNER = (
    '<p class="quick"><b>Built from <code>--quick</code> runs</b>: smoke-test sizes, so the '
    "numbers below show that everything runs, not what the techniques do. No verdict and "
    "no advice is drawn from them. <code>normlab compare</code> (or "
    "<code>--full</code>) runs the real sizes.</p>"
)


def build(root: str | Path, out: str | Path) -> Path:
    """Write ``out/index.html`` (figures also as ``out/figures/*.png``, tables as CSV)
    from the results in ``root``."""
    root, out = Path(root), Path(out)
    stores = find_stores(root)
    if not stores:
        known = ", ".join(catalog.EXPERIMENTS)
        raise ValueError(
            f"no finished runs under {root} (expected ROOT/<experiment>/runs/ for {known})"
        )
    out.mkdir(parents=True, exist_ok=True)
    figure = _Figures(out)
    headlines = {name: catalog.get(name).headline(store) for name, store in stores.items()}
    for name, frame in headlines.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    summary = summary_table(
        [catalog.get(name).summary(store, headlines[name]) for name, store in stores.items()]
    )
    summary.to_csv(out / "summary.csv", index=False)
    measured = sorted({n for s in stores.values() for n in s.summaries().norm})
    others = [
        n
        for n in measured
        if registry.spec(n).stats
        and n not in ("batchnorm", "layernorm_chw", "instancenorm", "groupnorm")
    ]
    quick = any(store.size() == "quick" for store in stores.values())
    expectations = [
        (name, e) for name in stores for e in catalog.get(name).expectations(headlines[name])
    ]
    undecided = [(n, e) for n, e in expectations if e.held is None and "seeds" in e.note]
    parts = [
        (key, title)
        for key, title in PARTS
        if key not in SECTIONS or any(catalog.get(n).section == key for n in stores)
    ]
    runs = sum(len(s.ids()) for s in stores.values())
    body = [
        "<h1>Understanding activation normalization</h1>",
        QUICK_BANNER if quick else "",
        '<p class="lead">What normalization does to a network\'s activations, why it helps, '
        f"and which technique to use — every result below measured on {runs} runs of "
        f"{len(stores)} experiments, stored beside this page's tables.</p>",
        "<nav><ol>"
        + "".join(
            f'<li><a href="#{key}">{html.escape(t.split(". ", 1)[1])}</a></li>' for key, t in parts
        )
        + "</ol></nav>",
    ]
    for number, (key, title) in enumerate(parts, 1):
        heading = f"{number}. {title.split('. ', 1)[1]}"
        body.append(f'<h2 id="{key}">{html.escape(heading)}</h2>')
        if key == "what":
            body += _what_part(figure, others)
        elif key == "why":
            body.append(f"<p>{LITERATURE}</p>")
        if key in SECTIONS:
            for experiment in catalog.EXPERIMENTS.values():
                if experiment.section == key and experiment.name in stores:
                    store, headline = stores[experiment.name], headlines[experiment.name]
                    body += _experiment_html(experiment, store, headline, figure)
        elif key == "use" and quick:
            body.append("<p>No advice from <code>--quick</code> runs.</p>")
        elif key == "use":
            body += [
                "<p>By situation: what to use, why, and the evidence — first what these runs "
                "measured (with its 95% interval; a difference the seeds do not resolve is "
                "called so, and nothing is recommended on it), then the published result.</p>",
                _guide(headlines),
                "<p>Per technique: what the experiments above measured and where its "
                "statistics come from.</p>",
                _table(summary),
            ]
        elif key == "reproduced" and quick:
            body.append("<p>No verdicts from <code>--quick</code> runs.</p>")
        elif key == "reproduced":
            body.append(
                "<p>Each published finding the experiments test, and whether our numbers show "
                "it: reproduced, not reproduced, or not decided (too few seeds, or a "
                "difference the seeds do not resolve). A finding that did not reproduce is "
                "reported with the numbers and what we think explains it.</p>"
            )
            body.append(_expectation_items(expectations) if expectations else "<p>none tested</p>")
        elif key == "setup":
            body += [
                "<p>What each experiment ran, read from its stored runs (models from "
                "normlab.models, data offline).</p>",
                _table(_setup_table(stores)),
                _seed_note(stores, [] if quick else undecided),
                *_recipe_tables(stores),
                "<p>Tables as CSV beside this page, figures in figures/, every run's metrics "
                "and monitor records in the results directory (Parquet).</p>",
            ]
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>Understanding activation normalization</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
        + "\n".join(body)
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
