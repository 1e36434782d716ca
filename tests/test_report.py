"""The comparison report: built from stored results alone, self-contained, with
every picture loading in a real browser; the pictures on their own."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from html import escape as html_escape

import pytest
from typer.testing import CliRunner

from normlab import experiments as E
from normlab.cli import app
from normlab.report import axes, html

EXPERIMENTS = ("ics", "batch-size", "lr", "cost", "smoothness", "train-eval")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A tiny run of six experiments (quick sizes, two norms), two of them outside
    `normlab compare`'s suite."""
    root = tmp_path_factory.mktemp("results")
    for name in EXPERIMENTS:
        sweep = E.get(name).sweep(("none", "batchnorm"), quick=True)
        E.run_sweep(sweep, root / name, E.LocalExecutor(1))
    return root


def test_report_is_self_contained_with_every_section(results, tmp_path):
    page = html.build(results, tmp_path).read_text()
    titles = [
        f'id="{key}">{number}. {html_escape(title.split(". ", 1)[1])}</h2>'
        for number, (key, title) in enumerate(html.PARTS, 1)
    ]
    parts = [page.index(t) for t in titles]
    assert parts == sorted(parts)  # the article's seven parts, in reading order
    for name in EXPERIMENTS:  # every experiment with results: its lead, finding, figures
        title = f'<h3 id="{name}">{html_escape(E.get(name).title)}</h3>'
        section = page.split(title)[1].split("<h3")[0]
        assert 'class="finding"' in section and "<figure><img" in section, name
    what = page.split('<h2 id="what">')[1].split("<h2")[0]
    assert "x̂ = (x − μ) / √(σ² + ε)" in what and what.count("<figure>") >= 1
    for technique in E.get("cost").default_norms:  # the registry's table: every technique
        assert f"<td>{technique}</td>" in what, technique
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert len(pngs) == page.count("<figure>") and pngs[0].read_bytes()[:4] == b"\x89PNG"
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 7 and all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:  # every picture is a real PNG
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert E.get("init").title not in page  # an experiment without runs is left out...
    assert "not run" not in page  # ...not shown as an empty section
    assert str(results) not in page and "/tmp/" not in page  # no path of this machine
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from outside
    summary = (tmp_path / "summary.csv").read_text()
    assert summary.startswith("technique,") and "batchnorm" in summary and "notes" in summary
    assert (tmp_path / "batch-size.csv").is_file()


def test_a_page_from_quick_runs_says_so_and_draws_no_verdict_or_advice(results, tmp_path):
    page = html.build(results, tmp_path).read_text()
    assert 'class="quick"' in page and "--quick" in page
    assert "No advice from" in page and "No verdicts from" in page
    assert "Reproduced" not in page and "Not reproduced" not in page
    assert "situation" not in page.split('id="use"')[1].split("<h2")[0]


def test_a_page_from_real_runs_gives_verdicts_advice_and_recipes(results, tmp_path):
    import json

    real = tmp_path / "results"
    shutil.copytree(results, real)
    for current in real.glob("*/current.json"):
        record = json.loads(current.read_text())
        current.write_text(json.dumps({**record, "size": "default"}))
    page = html.build(real, tmp_path / "page").read_text()
    assert 'class="quick"' not in page
    use = page.split('id="use"')[1].split("<h2")[0]
    assert "situation" in use and "Wu &amp; He" in use
    reproduced = page.split('id="reproduced"')[1].split("<h2")[0]
    assert "Not decided here" in reproduced  # one seed each: no verdict is drawn...
    setup = page.split('id="setup"')[1]
    assert "So these verdicts are not drawn" in setup  # ...and the page says which
    assert "the paper's recipe and ours" in setup and "the paper</th>" in setup


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)"
)
def test_report_renders_in_headless_chromium(results, tmp_path):
    path = html.build(results, tmp_path)
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=15000",
        "--dump-dom",
        path.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    dom = done.stdout
    total = re.search(r'data-images="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total and loaded, "the page's load script did not run"
    assert int(total.group(1)) >= 7 and loaded.group(1) == total.group(1)
    for key, title in html.PARTS:  # every part rendered, each experiment with a figure
        assert f'id="{key}"' in dom and title.split(". ", 1)[1] in dom, key
    for name in EXPERIMENTS:  # (the DOM dump writes ' as is)
        section = dom.split(E.get(name).title)[1].split("<h3")[0]
        assert "<img" in section and "Figure " in section, name
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console


def test_cli_report_and_viz(results, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(results), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "index.html").is_file()
    result = runner.invoke(
        app, ["viz", "axes", "--norms", "bn", "--norms", "gn", "--out", str(tmp_path / "a.png")]
    )
    assert result.exit_code == 0 and (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(
        app,
        ["viz", "drift", str(results / "ics"), "--out", str(tmp_path / "d.gif"), "--frames", "3"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    missing = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2


def test_axes_drawing_follows_the_registry():
    from normlab.norms.registry import StatSet

    assert len(axes.shaded_cells(StatSet(batch="all"))) == axes.N_CELLS * axes.HW_CELLS
    assert len(axes.shaded_cells(StatSet(channels="all"))) == axes.C_CELLS * axes.HW_CELLS
    assert (
        len(axes.shaded_cells(StatSet(channels="group")))
        == axes.C_CELLS // axes.GROUPS * axes.HW_CELLS
    )
    assert len(axes.shaded_cells(StatSet(channels="all", spatial=False))) == axes.C_CELLS


def test_report_goes_to_the_results_report_location_never_the_cwd(results, tmp_path, monkeypatch):
    """`normlab report DIR` writes into DIR's report location, whatever the cwd."""
    monkeypatch.chdir(tmp_path)
    compare_dir = tmp_path / "cmp"
    shutil.copytree(results, compare_dir / "results")
    runner = CliRunner()
    result = runner.invoke(app, ["report", "cmp"])  # a compare directory
    assert result.exit_code == 0, result.output
    assert (compare_dir / "index.html").is_file()
    result = runner.invoke(app, ["report", "cmp/results"])  # a results directory
    assert result.exit_code == 0, result.output
    assert (compare_dir / "results" / "report" / "index.html").is_file()
    assert not (tmp_path / "index.html").exists() and not (tmp_path / "summary.csv").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "lr" / "runs").mkdir(parents=True)
    empty = runner.invoke(app, ["report", "empty"])
    assert empty.exit_code == 2 and "no finished runs under empty" in empty.output
    assert not (tmp_path / "empty" / "report").exists()


def test_a_failing_analysis_raises_instead_of_hiding(results, tmp_path, monkeypatch):
    def broken(headline):
        raise KeyError("test_acc")

    monkeypatch.setattr(E.get("lr"), "finding", broken)
    with pytest.raises(KeyError, match="test_acc"):
        html.build(results, tmp_path)


def test_the_report_never_loads_the_training_side():
    """Reading results imports neither the runner nor the model builders."""
    code = (
        "import sys; import normlab.report.html, normlab.report.animation; "
        "from normlab.experiments import catalog; "
        "bad = [m for m in ('normlab.experiments.runner', 'normlab.models') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
