"""The registry: each technique's name, classes and, as data, what it normalizes over.

For an (N, C, H, W) activation a technique takes one statistic over a set of
axes: ``over_batch`` (N), ``over_spatial`` (H, W) and ``channels`` — one channel
(``"one"``), a group of channels (``"group"``), all of them (``"all"``) or a
window of neighbouring channels (``"window"``). Tables and diagrams are drawn
from this data, never by hand per technique.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from normlab.norms.batch import BatchNorm1d, BatchNorm2d, BatchNorm3d
from normlab.norms.group import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from normlab.norms.layer import LayerNorm, RMSNorm
from normlab.norms.response import LocalResponseNorm


@dataclass(frozen=True)
class NormSpec:
    """What the registry knows of one technique."""

    name: str
    classes: tuple[type[nn.Module], ...]
    over_batch: bool
    over_spatial: bool
    channels: str  # "one" | "group" | "all" | "window"
    statistics: str  # what is estimated: "mean, variance" | "mean square" | "local energy"
    inference: str  # where eval-time statistics come from
    paper: str

    @property
    def batch_dependent(self) -> bool:
        """Whether an output depends on the other samples of the batch (in training)."""
        return self.over_batch

    @property
    def axes(self) -> str:
        """The axes of an (N, C, H, W) tensor one statistic is taken over, e.g. 'N, H, W'."""
        parts = ["N"] if self.over_batch else []
        parts += {"one": [], "group": ["C/G"], "all": ["C"], "window": ["C±size/2"]}[self.channels]
        parts += ["H", "W"] if self.over_spatial else []
        return ", ".join(parts)


_SPECS: dict[str, NormSpec] = {
    s.name: s
    for s in (
        NormSpec(
            "batchnorm",
            (BatchNorm1d, BatchNorm2d, BatchNorm3d),
            over_batch=True,
            over_spatial=True,
            channels="one",
            statistics="mean, variance",
            inference="running averages",
            paper="Ioffe & Szegedy, 2015",
        ),
        NormSpec(
            "layernorm",
            (LayerNorm,),
            over_batch=False,
            over_spatial=True,
            channels="all",
            statistics="mean, variance",
            inference="the sample",
            paper="Ba, Kiros & Hinton, 2016",
        ),
        NormSpec(
            "groupnorm",
            (GroupNorm,),
            over_batch=False,
            over_spatial=True,
            channels="group",
            statistics="mean, variance",
            inference="the sample",
            paper="Wu & He, 2018",
        ),
        NormSpec(
            "instancenorm",
            (InstanceNorm1d, InstanceNorm2d, InstanceNorm3d),
            over_batch=False,
            over_spatial=True,
            channels="one",
            statistics="mean, variance",
            inference="the sample (running averages if tracked)",
            paper="Ulyanov, Vedaldi & Lempitsky, 2016",
        ),
        NormSpec(
            "rmsnorm",
            (RMSNorm,),
            over_batch=False,
            over_spatial=True,
            channels="all",
            statistics="mean square",
            inference="the sample",
            paper="Zhang & Sennrich, 2019",
        ),
        NormSpec(
            "lrn",
            (LocalResponseNorm,),
            over_batch=False,
            over_spatial=False,
            channels="window",
            statistics="local energy",
            inference="the sample",
            paper="Krizhevsky, Sutskever & Hinton, 2012",
        ),
    )
}


def available() -> list[str]:
    """Registry names of every technique, in registry order."""
    return list(_SPECS)


def get_spec(name: str) -> NormSpec:
    """The spec of technique ``name``; an unknown name raises with close matches."""
    key = name.lower().replace("_", "").replace("-", "")
    if key in _SPECS:
        return _SPECS[key]
    close = difflib.get_close_matches(key, list(_SPECS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown normalization {name!r}{hint} (available: {', '.join(_SPECS)})")
