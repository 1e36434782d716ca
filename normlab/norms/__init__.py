"""The normalization techniques as nn.Modules, one file per family, and the
registry that builds them by name."""

from torch import nn

from normlab.norms._base import checks_its_size
from normlab.norms._twin import fuser_methods
from normlab.norms.adaptive import AdaLNZero, AdaptiveLayerNorm, AdaptiveRMSNorm, Modulation
from normlab.norms.batch import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormNd,
    BatchRenorm,
    BatchRenorm1d,
    BatchRenorm2d,
    FrozenBatchNorm2d,
    GhostBatchNorm,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    SyncBatchNorm,
)
from normlab.norms.convert import (
    convert,
    convert_sync_batchnorm,
    freeze_batchnorm,
    to_torch,
    unfreeze_batchnorm,
)
from normlab.norms.cross_iteration import CrossIterationBatchNorm, link_cross_iteration
from normlab.norms.deploy import fold_batchnorm, recalibrate_batchnorm
from normlab.norms.dyt import DynamicErf, DynamicTanh
from normlab.norms.group import (
    EvoNorm2dS0,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    InstanceNormNd,
    LayerNormCHW,
)
from normlab.norms.layer import LayerNorm, LayerNorm2d, LMRMSNorm, RMSNorm, RMSNorm2d, ScaleNorm
from normlab.norms.qk import QKNorm
from normlab.norms.registry import NormSpec, StatSet, available, create, spec
from normlab.norms.residual import AddLayerNorm, AddRMSNorm
from normlab.norms.response import EvoNorm2dB0, FilterResponseNorm2d, LocalResponseNorm
from normlab.norms.switchable import SwitchableNorm2d
from normlab.norms.weight import WSConv2d, weight_norm

__all__ = [
    "AdaLNZero",
    "AdaptiveLayerNorm",
    "AdaptiveRMSNorm",
    "AddLayerNorm",
    "AddRMSNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormNd",
    "BatchRenorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "CrossIterationBatchNorm",
    "DynamicErf",
    "DynamicTanh",
    "EvoNorm2dB0",
    "EvoNorm2dS0",
    "FilterResponseNorm2d",
    "FrozenBatchNorm2d",
    "GhostBatchNorm",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "InstanceNormNd",
    "LMRMSNorm",
    "LayerNorm",
    "LayerNorm2d",
    "LayerNormCHW",
    "LocalResponseNorm",
    "Modulation",
    "NormSpec",
    "QKNorm",
    "RMSNorm",
    "RMSNorm2d",
    "ScaleNorm",
    "StatSet",
    "SwitchableNorm2d",
    "SyncBatchNorm",
    "WSConv2d",
    "available",
    "convert",
    "convert_sync_batchnorm",
    "create",
    "fold_batchnorm",
    "freeze_batchnorm",
    "fuser_methods",
    "link_cross_iteration",
    "recalibrate_batchnorm",
    "spec",
    "to_torch",
    "unfreeze_batchnorm",
    "weight_norm",
]

for _name in __all__:  # every layer's size argument checked as create() checks it
    _cls = globals()[_name]
    if isinstance(_cls, type) and issubclass(_cls, nn.Module):
        checks_its_size(_cls)
