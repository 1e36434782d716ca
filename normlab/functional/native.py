"""The ``"native"`` backend: torch's own kernels.

Ops torch.nn.functional has are taken from it directly; channels-first forms
of channels-last ops are torch's kernel on a moved axis; techniques torch has
no kernel for are compositions of its kernels with hand-derived backward
passes (:mod:`normlab.functional.composite`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from normlab.functional.composite import (
    batch_renorm,
    evonorm_b0,
    evonorm_s0,
    filter_response_norm,
    ghost_batch_norm,
    rms_norm_2d,
    scale_norm,
    switchable_norm,
)

__all__ = [
    "batch_norm",
    "batch_renorm",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "layer_norm_2d",
    "local_response_norm",
    "rms_norm",
    "rms_norm_2d",
    "scale_norm",
    "switchable_norm",
]

batch_norm = F.batch_norm
instance_norm = F.instance_norm
layer_norm = F.layer_norm
group_norm = F.group_norm
rms_norm = F.rms_norm
local_response_norm = F.local_response_norm


def layer_norm_2d(
    input: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """torch's layer_norm over the channel axis of (N, C, *)."""
    x = input.movedim(1, -1)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps).movedim(-1, 1)
