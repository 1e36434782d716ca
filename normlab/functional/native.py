"""The ``"native"`` backend: torch's own kernels.

Ops torch.nn.functional has are taken from it directly; channels-first forms
of channels-last ops are torch's kernel on a moved axis.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

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


def rms_norm_2d(input: Tensor, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """torch's rms_norm over the channel axis of (N, C, *)."""
    x = input.movedim(1, -1)
    return F.rms_norm(x, (x.shape[-1],), weight, eps).movedim(-1, 1)
