"""fastai's "colorful dimension": per watched site, its histogram at every recorded
step stacked over training, derived from the monitor's quantile sketches; drawn
from a live Monitor, from a stored run (`normlab viz activations`) and in the
internal covariate shift experiment's figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY
from matplotlib.collections import QuadMesh
from typer.testing import CliRunner

import normlab
from normlab import experiments as E
from normlab.cli import app
from normlab.experiments import runner as lab_runner
from normlab.monitor.pictures import COLORBAR_LABEL, sketch_histogram

LEVELS = np.linspace(0.0, 1.0, 33)


def colorbars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_ylabel() == COLORBAR_LABEL]


def panels(fig) -> list:
    """The figure's histogram panels (axes holding a mesh), not its colour bar."""
    bars = colorbars(fig)
    return [
        ax
        for ax in fig.axes
        if ax not in bars and any(isinstance(c, QuadMesh) for c in ax.collections)
    ]


# ------------------------------------------------------------------ the math


def test_a_sketch_histogram_is_the_histogram_of_samples_drawn_from_the_sketch():
    """Oracle: numpy.histogram of many samples X = Q(U) (U uniform, Q the sketch's
    piecewise linear quantile function), ties included: point masses at 0 (exact
    zeros, as a ReLU input's), at the maximum and on bin edges."""
    rng = np.random.default_rng()
    for _ in range(4):
        q = np.sort(rng.normal(size=33) * rng.uniform(0.1, 10.0))
        q[5:12] = 0.0  # a point mass of 7/32 at 0
        q = np.sort(q)
        q[-3:] = q[-1]  # and one of 2/32 at the maximum
        low, high = q[0] - rng.uniform(0, 1), q[-1]
        edges = np.unique(np.r_[np.linspace(low, high, rng.integers(3, 30)), 0.0])
        n = 400_000
        samples = np.interp(rng.uniform(size=n), LEVELS, q)
        expected = np.histogram(samples, edges)[0] / n
        got = sketch_histogram(q, edges)
        tolerance = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-4
        assert np.all(np.abs(got - expected) <= tolerance), (got - expected, tolerance)
        assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_a_sketch_histogram_of_uniform_distributions_is_exact():
    # U(2, 6): each bin holds its overlap with [2, 6] over 4; what lies outside, no bin.
    q = 2.0 + 4.0 * LEVELS
    edges = np.array([0.0, 1.0, 2.5, 3.0, 5.5, 7.0])
    assert sketch_histogram(q, edges) == pytest.approx([0, 0.5 / 4, 0.5 / 4, 2.5 / 4, 0.5 / 4])
    # half on U(0, 1), half on U(1, 5): quantiles 2u, then 1 + 8(u - 1/2)
    mixture = np.where(LEVELS <= 0.5, 2 * LEVELS, 1 + 8 * (LEVELS - 0.5))
    edges = np.array([-1.0, 0.5, 2.0, 4.0, 4.5, 6.0])
    assert sketch_histogram(mixture, edges) == pytest.approx([0.25, 0.375, 0.25, 0.0625, 0.0625])
    # a batch of records (..., 33) -> (..., bins); a non-finite record is NaN throughout
    batch = np.stack([q, np.full(33, np.nan), q + 1.0])
    got = sketch_histogram(batch[None], np.linspace(2.0, 7.0, 6))
    assert got.shape == (1, 3, 5)
    assert got[0, 0] == pytest.approx([0.25] * 4 + [0])
    assert np.isnan(got[0, 1]).all() and got[0, 2] == pytest.approx([0] + [0.25] * 4)


def test_a_sketch_histogram_is_within_the_sketch_resolution_of_the_samples_histogram():
    """Oracle: numpy.histogram of the very values the sketch was read off (numpy's
    linear-interpolation quantiles, as the monitor's): the piecewise linear CDF is
    within 1/32 + 1/n of the empirical one everywhere, so each bin within twice that."""
    rng = np.random.default_rng()
    for draw in (rng.normal, rng.standard_exponential, lambda size: rng.integers(0, 5, size)):
        x = np.asarray(draw(size=int(rng.integers(50, 512))), dtype=np.float64)
        edges = np.linspace(x.min(), x.max(), 12)
        expected = np.histogram(x, edges)[0] / len(x)
        got = sketch_histogram(np.quantile(x, LEVELS), edges)
        assert np.abs(got - expected).max() <= 2 * (1 / 32 + 1 / len(x)) + 1e-12
        assert got.sum() == pytest.approx(1.0)


def test_a_sketch_histogram_refuses_bad_edges_and_quantiles():
    with pytest.raises(ValueError, match="edges must be >= 2 finite increasing"):
        sketch_histogram(LEVELS, [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        sketch_histogram(LEVELS[::-1], [0.0, 1.0])


# ------------------------------------------------------------------ a live Monitor


def _trained_monitor(steps: int = 12) -> normlab.Monitor:
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.Sigmoid(),
        torch.nn.Linear(16, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 2),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with normlab.Monitor(model, optimizer=opt) as monitor:
        for _ in range(steps):
            x = torch.randn(32, 8)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
            opt.step()
    return monitor


def test_monitor_plot_activations_draws_one_panel_per_site_and_a_colour_bar(tmp_path):
    monitor = _trained_monitor()
    fig = monitor.plot_activations(bins=20, path=tmp_path / "pics" / "act.png")
    drawn = panels(fig)
    assert len(drawn) == len(monitor.sites) == 3 and len(colorbars(fig)) == 1
    titles = [ax.get_title() for ax in drawn]
    assert titles == ["1: input of Sigmoid", "3: output of BatchNorm1d", "4: input of ReLU"]
    for ax in drawn:
        mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
        mass = np.asarray(mesh.get_array()).reshape(20, 12)  # (bins, steps)
        assert mass.sum(axis=0) == pytest.approx(np.ones(12), abs=1e-4)  # whole range: all mass
        assert ax.get_xlabel() == "step" and ax.get_ylabel() == "value"
    assert (tmp_path / "pics" / "act.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = monitor.plot_activations(sites=["4"])
    assert [ax.get_title() for ax in panels(one)] == ["4: input of ReLU"]
    with pytest.raises(ValueError, match=r"no records of 'nope'; recorded sites: 1, 3, 4"):
        monitor.plot_activations(sites=["nope"])
    with pytest.raises(ValueError, match="no activation records yet"):
        normlab.Monitor(torch.nn.Sequential(torch.nn.ReLU())).plot_activations()


# ------------------------------------------------------------------ a stored run


runner = CliRunner()


def viz(*args) -> object:
    return runner.invoke(app, ["viz", "activations", *map(str, args)])


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """An experiment's results directory with two tiny runs: monitored, and not."""
    root = tmp_path_factory.mktemp("results") / "exp"
    store = E.ResultsStore(root)
    monitored = store.write(E.run(TINY))
    bare = store.write(E.run(TINY.replace(monitor=False, seed=1)))
    return root, monitored, bare


def test_viz_activations_draws_a_stored_run(experiment, tmp_path):
    root, monitored, _ = experiment
    result = viz(monitored, "--out", tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    png = (tmp_path / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert f"run {monitored.name}" in result.output
    # an experiment's directory, its run picked by id prefix or norm; one site only
    result = viz(root, "--run", monitored.name[:6], "--sites", "2", "--out", tmp_path / "b.png")
    assert result.exit_code == 0 and (tmp_path / "b.png").stat().st_size > 0, result.output
    result = viz(root, "--norm", "none", "--out", tmp_path / "c.png")  # the one norm: either
    assert (
        result.exit_code == 2
        and "differ in monitor: pick one with --norm or --run" in result.output
    )


def test_viz_activations_titles_say_what_each_site_is(experiment, tmp_path, monkeypatch):
    """As the live Monitor does: 'input of ReLU', 'output of BatchNorm1d', for every site."""
    from normlab.monitor import pictures

    drawn = {}
    draw = pictures.colorful_dimension

    def spy(panels, *args, **kwargs):
        drawn["titles"] = [title for title, _, _ in panels]
        return draw(panels, *args, **kwargs)

    monkeypatch.setattr(pictures, "colorful_dimension", spy)
    _, monitored, _ = experiment
    result = viz(monitored, "--out", tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    config = E.RunConfig(**json.loads((monitored / "config.json").read_text()))
    dataset = lab_runner._dataset(config.dataset, config.seed, 8, 8)
    model = lab_runner.build_model(config, dataset)
    with normlab.Monitor(model) as live:  # the sites a run watches, by default
        model(dataset.train_x[:4])
    assert drawn["titles"] == [f"{site}: {what}" for site, what in live.sites.items()]
    assert drawn["titles"] and all(": " in t for t in drawn["titles"])


@pytest.mark.parametrize(
    "where, extra, message",
    [
        ("nowhere", [], "nowhere does not exist"),
        ("bare", [], "kept no monitor records (it ran with monitor=False)"),
        ("monitored", ["--sites", "2,zz"], "no site 'zz' in run"),
        ("root", ["--norm", "groupnorm"], "no run of groupnorm in"),
        ("root", ["--run", "ffff"], "no run ffff in"),
        ("parent", [], "is neither a run's directory (with config.json) nor an experiment's"),
    ],
)
def test_viz_activations_errors_are_one_clear_line(experiment, tmp_path, where, extra, message):
    root, monitored, bare = experiment
    path = {
        "nowhere": tmp_path / "nowhere",
        "bare": bare,
        "monitored": monitored,
        "root": root,
        "parent": root.parent,
    }[where]
    result = viz(path, *extra, "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ the article


def test_the_ics_experiment_draws_the_colorful_dimension(tmp_path):
    ics = E.get("ics")
    sweep = ics.sweep(("none", "batchnorm"), quick=True, overrides={"steps": 8, "eval_every": 4})
    E.run_sweep(sweep, tmp_path, E.LocalExecutor(1))
    store = E.ResultsStore(tmp_path)
    figures = ics.figures(store, ics.headline(store))
    fig = next(f for f, caption in figures if "colorful dimension" in caption)
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles == [
        "BatchNorm: hidden layer 3's sigmoid input",
        "no normalization: hidden layer 3's sigmoid input",
    ]
    assert len(colorbars(fig)) == 1
    assert panels(fig)[0].get_ylim() == panels(fig)[1].get_ylim()  # one range: comparable
