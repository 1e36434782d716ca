"""Drawings of what each technique normalizes over, generated from the registry.

As in the GroupNorm paper's Figure 2: the activation tensor drawn as a block
(batch axis N, channel axis C, the spatial axes H x W folded into one), with
the set of values one statistic is taken over shaded. Each of a technique's
:class:`~normlab.norms.registry.StatSet` becomes one shaded set; nothing is
drawn by hand per technique.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Polygon

from normlab.norms.registry import StatSet, spec

# Block size in cells: N (depth, drawn obliquely), C (width), H x W (height).
N_CELLS, C_CELLS, HW_CELLS = 4, 8, 4
GROUPS = 2  # C/G shading shows the first of this many groups
WINDOW = 3  # channels in a local-response window
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")


def shaded_cells(stats: StatSet) -> set[tuple[int, int, int]]:
    """(n, c, s) cells of one statistic's set, for the sample, channel and spatial
    position the drawing highlights (n = 0, c = 0, s = 0)."""
    ns = (
        range(N_CELLS)
        if stats.batch == "all"
        else range(N_CELLS // 2)
        if stats.batch == "virtual"
        else [0]
    )
    cs = {
        "one": [0],
        "group": range(C_CELLS // GROUPS),
        "all": range(C_CELLS),
        "window": range(WINDOW),
    }[stats.channels]
    ss = range(HW_CELLS) if stats.spatial else [0]
    return {(n, c, s) for n in ns for c in cs for s in ss}


def _cell(ax, n: int, c: int, s: int, face: str, alpha: float) -> None:
    """Draw the visible faces of cell (n, c, s) in an oblique projection."""
    dx, dy = 0.5 * n, 0.35 * n
    x, y = c + dx, s + dy
    front = [(x, y), (x + 1, y), (x + 1, y + 1), (x, y + 1)]
    top = [(x, y + 1), (x + 1, y + 1), (x + 1.5, y + 1.35), (x + 0.5, y + 1.35)]
    side = [(x + 1, y), (x + 1.5, y + 0.35), (x + 1.5, y + 1.35), (x + 1, y + 1)]
    for face_points in (front, top, side):
        ax.add_patch(
            Polygon(face_points, closed=True, facecolor=face, edgecolor="#555", lw=0.4, alpha=alpha)
        )


def draw(ax, name: str, features: bool = False) -> None:
    """Draw technique ``name``'s statistic sets on ``ax`` ((N, C, H, W), or (N, F))."""
    s = spec(name)
    sets = [shaded_cells(st) for st in s.stats]
    hw = 1 if features else HW_CELLS
    # Back to front, so nearer cells cover farther ones.
    for n in reversed(range(N_CELLS)):
        for sp in range(hw):
            for c in range(C_CELLS):
                owner = next((i for i, cells in enumerate(sets) if (n, c, sp) in cells), None)
                face = COLORS[owner % len(COLORS)] if owner is not None else "white"
                _cell(ax, n, c, sp, face, 0.85 if owner is not None else 0.9)
    ax.set_xlim(-0.5, C_CELLS + 0.5 * N_CELLS + 1)
    ax.set_ylim(-0.8, hw + 0.35 * N_CELLS + 1.2)
    ax.set_aspect("equal")
    ax.axis("off")
    label = s.axes_features if features else s.axes
    ax.set_title(f"{name}\n{label}", fontsize=9)
    ax.text(C_CELLS / 2, -0.6, "C" if not features else "F", ha="center", fontsize=8)
    if not features:
        ax.text(-0.4, hw / 2, "H,W", ha="right", va="center", fontsize=8, rotation=90)
    ax.text(C_CELLS + 0.5 * N_CELLS + 0.6, hw + 0.35 * N_CELLS + 0.2, "N", fontsize=8)


def figure(names: list[str], features: bool = False, columns: int = 4):
    """A grid of drawings, one per technique; returns the matplotlib Figure."""
    rows = max(1, -(-len(names) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.6 * rows))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, name in zip(flat, names, strict=False):
        draw(ax, name, features)
    for ax in flat[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig
