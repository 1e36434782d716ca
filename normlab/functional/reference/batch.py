"""Batch-statistics normalizations: BatchNorm, Batch Renormalization, Ghost BatchNorm."""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.functional.reference.common import (
    affine,
    as_like,
    channel_shape,
    moments,
    per_channel_count,
    running_view,
    spatial_dims,
    unbiased,
    upcast,
    update_running,
)


def _batch_dims(x: Tensor) -> list[int]:
    return [0, *spatial_dims(x)]


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization (Ioffe & Szegedy, 2015) over (N, C, *) per channel.

    y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias, with E and Var over
    N and the spatial axes in training, and the running estimates otherwise.
    """
    x = upcast(input)
    if training:
        mean, var = moments(x, _batch_dims(x))
        count = per_channel_count(x)
        if count > 0:
            update_running(running_mean, running_var, mean, unbiased(var, count), momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are required in eval")
        mean, var = running_view(running_mean, x), running_view(running_var, x)
    y = (x - mean) * torch.rsqrt(var + eps)
    return affine(y, weight, bias, channel_shape(x)).to(input.dtype)


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    r_max: float = 3.0,
    d_max: float = 5.0,
) -> Tensor:
    """Batch Renormalization (Ioffe, 2017) over (N, C, *) per channel.

    In training, with the batch's mu_B, sigma_B = sqrt(Var_B + eps) and the
    running mu, sigma = sqrt(running_var + eps):

        r = clip(sigma_B / sigma, 1 / r_max, r_max)      (no gradient)
        d = clip((mu_B - mu) / sigma, -d_max, d_max)     (no gradient)
        y = ((x - mu_B) / sigma_B * r + d) * weight + bias

    r and d use the running statistics from before this batch's update. In eval
    it is batch_norm with the running statistics. r_max=1, d_max=0 is BatchNorm.
    """
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    x = upcast(input)
    if per_channel_count(x) == 0:  # an empty batch: empty output, statistics untouched
        return batch_norm(input, None, None, weight, bias, True, momentum, eps)
    mean, var = moments(x, _batch_dims(x))
    sigma_b = torch.sqrt(var + eps)
    with torch.no_grad():
        sigma = torch.sqrt(running_view(running_var, x) + eps)
        r = (sigma_b / sigma).clamp(1.0 / as_like(r_max, sigma), as_like(r_max, sigma))
        d = ((mean - running_view(running_mean, x)) / sigma).clamp(
            -as_like(d_max, sigma), as_like(d_max, sigma)
        )
    # Detached outside no_grad too: else torch.compile's backward recomputes them from
    # the running statistics, which the update below has overwritten by then.
    r, d = r.detach(), d.detach()
    update_running(running_mean, running_var, mean, unbiased(var, per_channel_count(x)), momentum)
    y = (x - mean) / sigma_b * r + d
    return affine(y, weight, bias, channel_shape(x)).to(input.dtype)


def ghost_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    virtual_batch_size: int = 32,
) -> Tensor:
    """Ghost Batch Normalization (Hoffer, Hubara & Soudry, 2017).

    In training the batch is split along N into virtual batches of
    ``virtual_batch_size`` samples (the last may be smaller); each is batch
    normalized with its own statistics. The running estimates take one step per
    call, towards the average over virtual batches of their means and unbiased
    variances (so ``momentum`` means what it means in BatchNorm, per step). In
    eval it is batch_norm with the running statistics.
    """
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    x = upcast(input)
    dims = _batch_dims(x)
    if per_channel_count(x) == 0:  # an empty batch: empty output, statistics untouched
        return batch_norm(input, None, None, weight, bias, True, momentum, eps)
    outputs, means, unbiased_vars = [], [], []
    for chunk in x.split(virtual_batch_size, dim=0):
        mean, var = moments(chunk, dims)
        outputs.append((chunk - mean) * torch.rsqrt(var + eps))
        means.append(mean)
        unbiased_vars.append(unbiased(var, per_channel_count(chunk)))
    update_running(
        running_mean,
        running_var,
        torch.stack(means).mean(0),
        torch.stack(unbiased_vars).mean(0),
        momentum,
    )
    y = torch.cat(outputs)
    return affine(y, weight, bias, channel_shape(x)).to(input.dtype)
