"""Switchable Normalization: a learned mixture of instance, layer and batch statistics."""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.functional.reference.common import (
    affine,
    channel_shape,
    moments,
    per_channel_count,
    running_view,
    spatial_dims,
    unbiased,
    upcast,
    update_running,
)


def switchable_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_weight: Tensor,
    var_weight: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Switchable Normalization (Luo, Ren, Peng, Zhang & Li, 2018).

        mu  = sum_k softmax(mean_weight)_k mu_k,  var = sum_k softmax(var_weight)_k var_k
        y   = (x - mu) / sqrt(var + eps) * weight + bias

    over k in (IN, LN, BN): instance statistics per (n, c) over the spatial axes,
    layer statistics per n over (C, spatial), batch statistics per c over
    (N, spatial) — the running estimates in eval, updated in training as in
    BatchNorm.
    """
    x = upcast(input)
    spatial = spatial_dims(x)
    mean_in, var_in = moments(x, spatial)
    mean_ln, var_ln = moments(x, [1, *spatial])
    if training:
        mean_bn, var_bn = moments(x, [0, *spatial])
        count = per_channel_count(x)
        if count > 0:
            update_running(running_mean, running_var, mean_bn, unbiased(var_bn, count), momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("switchable_norm: running statistics are required in eval")
        mean_bn, var_bn = running_view(running_mean, x), running_view(running_var, x)
    wm = torch.softmax(mean_weight.to(x.dtype), 0)
    wv = torch.softmax(var_weight.to(x.dtype), 0)
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    y = (x - mean) * torch.rsqrt(var + eps)
    return affine(y, weight, bias, channel_shape(x)).to(input.dtype)
