"""The comparison report: built from stored results alone, self-contained, with
every picture loading in a real browser; the pictures on their own."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from normlab import experiments as E
from normlab.cli import app
from normlab.report import axes, html

EXPERIMENTS = ("ics", "batch-size", "lr", "cost")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A tiny run of four experiments (quick sizes, two norms)."""
    root = tmp_path_factory.mktemp("results")
    for name in EXPERIMENTS:
        sweep = E.get(name).sweep(("none", "batchnorm"), quick=True)
        E.run_sweep(sweep, root / name, E.LocalExecutor(1))
    return root


def test_report_is_self_contained_with_every_section(results, tmp_path):
    page = html.build(results, tmp_path).read_text()
    for title in (
        "What is normalized",
        "Why: internal covariate shift",
        "Training",
        "Batch size",
        "Learning rate",
        "Initialization",
        "Depth",
        "Cost",
        "Summary",
    ):
        assert f">{title}<" in page, title
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 7 and all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:  # every picture is a real PNG
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not run (normlab run init)" in page  # a missing experiment is said, not hidden
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from outside
    summary = (tmp_path / "summary.csv").read_text()
    assert (
        summary.startswith("technique,") and "batchnorm" in summary and "recommendation" in summary
    )
    assert (tmp_path / "batch-size.csv").is_file()


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
