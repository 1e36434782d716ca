"""The activation distribution over training, as an animated GIF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter

from normlab.experiments.analysis import last_sigmoid_site
from normlab.experiments.plots import density
from normlab.experiments.store import ResultsStore


def drift_gif(results: str | Path, out: str | Path, frames: int = 30) -> Path:
    """One panel per norm: the recorded distribution of the deepest sigmoid input,
    step by step (from the runs' quantile sketches)."""
    store = ResultsStore(results)
    runs = store.summaries()
    if runs.empty:
        raise ValueError(f"no finished runs in {results}")
    panels = []
    for _, run in runs.sort_values("norm").drop_duplicates("norm").iterrows():
        sketches = store.sketches(run.run_id)
        if sketches is None:
            raise ValueError(f"run {run.run_id} in {results} kept no distribution sketches")
        site = last_sigmoid_site(store.monitor(run.run_id))
        if site is None:
            raise ValueError(f"run {run.run_id} in {results} recorded no sigmoid or tanh input")
        site_sketches = sketches[sketches.module == site]
        steps = np.array(sorted(site_sketches.step.unique()))
        picked = steps[np.linspace(0, len(steps) - 1, min(frames, len(steps))).astype(int)]
        panels.append((run.norm, site, site_sketches, picked))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    lines = []
    for ax, (norm, site, sk, _) in zip(axes[0], panels, strict=True):
        (line,) = ax.step([], [], where="post")
        lines.append(line)
        ax.set_xlim(sk.value.quantile(0.01), sk.value.quantile(0.99))
        ax.set_ylim(0, 1.0)
        ax.set_xlabel(f"input of sigmoid '{site}'")
        ax.set_title(norm)

    def update(i: int):
        for line, ax, (norm, site, sk, picked) in zip(lines, axes[0], panels, strict=True):
            step = picked[min(i, len(picked) - 1)]
            x, d = density(sk, site, step)
            line.set_data(x, d)
            ax.set_ylim(0, max(ax.get_ylim()[1], float(np.percentile(d, 95)) * 1.2))
            ax.set_title(f"{norm} — step {step}")
        return lines

    animation = FuncAnimation(fig, update, frames=max(len(p[3]) for p in panels), blit=False)
    out = Path(out)
    animation.save(out, writer=PillowWriter(fps=6))
    plt.close(fig)
    return out
