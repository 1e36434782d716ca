"""The normalization techniques as nn.Modules, one file per family."""

from normlab.norms.batch import BatchNorm1d, BatchNorm2d, BatchNorm3d
from normlab.norms.group import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from normlab.norms.layer import LayerNorm, RMSNorm
from normlab.norms.registry import NormSpec, available, get_spec
from normlab.norms.response import LocalResponseNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LocalResponseNorm",
    "NormSpec",
    "RMSNorm",
    "available",
    "get_spec",
]
