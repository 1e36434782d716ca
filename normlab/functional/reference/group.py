"""Per-sample normalizations over channel groups: GroupNorm, InstanceNorm, EvoNorm-S0."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normlab.functional.reference.common import (
    affine,
    channel_shape,
    moments,
    running_view,
    spatial_dims,
    unbiased,
    upcast,
    update_running,
)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance normalization (Ulyanov et al., 2016): per sample and channel.

    y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias, with E and Var over the
    spatial axes of each (n, c). Running estimates, when given, move towards
    the batch average of the per-instance mean and unbiased variance.
    """
    x = upcast(input)
    if use_input_stats:
        mean, var = moments(x, spatial_dims(x))
        count = x[0, 0].numel() if x.shape[0] and x.shape[1] else 0
        if count > 0:
            n, c = x.shape[:2]
            update_running(
                running_mean,
                running_var,
                mean.reshape(n, c).mean(0),
                unbiased(var.reshape(n, c), count).mean(0),
                momentum,
            )
    else:
        if running_mean is None or running_var is None:
            raise ValueError(
                "instance_norm: running_mean and running_var are required when "
                "use_input_stats=False"
            )
        mean, var = running_view(running_mean, x), running_view(running_var, x)
    y = (x - mean) * torch.rsqrt(var + eps)
    return affine(y, weight, bias, channel_shape(x)).to(input.dtype)


def _grouped(x: Tensor, num_groups: int) -> Tensor:
    """(N, C, *) as (N, G, C / G * spatial); sizes explicit, so an empty batch works."""
    return x.reshape(x.shape[0], num_groups, math.prod(x.shape[1:]) // num_groups)


def _group_std(x: Tensor, num_groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """Per sample and group: mean and sqrt(var + eps), shaped (N, G, 1)."""
    mean, var = moments(_grouped(x, num_groups), [2])
    return mean, torch.sqrt(var + eps)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalization (Wu & He, 2018): per sample, over groups of channels.

    The C channels are split into ``num_groups`` groups of C / G; E and Var are
    taken over each group's channels and the spatial axes, per sample; the
    affine is per channel.
    """
    x = upcast(input)
    mean, std = _group_std(x, num_groups, eps)
    y = ((_grouped(x, num_groups) - mean) / std).reshape(x.shape)
    return affine(y, weight, bias, channel_shape(x)).to(input.dtype)


def evonorm_s0(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020), batch-independent.

    y = x * sigmoid(v * x) / sqrt(Var_group(x) + eps) * weight + bias, with the
    group variance per sample over each group's C / G channels and the spatial
    axes (as GroupNorm, without subtracting the mean from x).
    """
    x = upcast(input)
    shape = channel_shape(x)
    _, std = _group_std(x, num_groups, eps)
    gated = x * torch.sigmoid(v.reshape(shape).to(x.dtype) * x)
    y = (_grouped(gated, num_groups) / std).reshape(x.shape)
    return affine(y, weight, bias, shape).to(input.dtype)
