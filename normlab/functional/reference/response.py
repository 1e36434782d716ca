"""Normalizations by a local or per-channel response: LRN, FRN (+TLU), EvoNorm-B0."""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.functional.reference.common import (
    affine,
    channel_shape,
    mean_square,
    moments,
    per_channel_count,
    running_view,
    spatial_dims,
    unbiased,
    upcast,
    update_running,
)


def local_response_norm(
    input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """Local response normalization across channels (Krizhevsky et al., 2012).

    b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_{c'}^2) ** beta, the
    window spanning channels c - size//2 .. c + (size-1)//2, zero-padded at
    the ends (torch's convention: the sum is always divided by ``size``).
    """
    if input.numel() == 0:
        return input
    x = upcast(input)
    sq = x.square().movedim(1, -1)
    padded = torch.nn.functional.pad(sq, (size // 2, (size - 1) // 2))
    window_sum = padded.unfold(-1, size, 1).sum(-1).movedim(-1, 1)
    y = x / (k + alpha / size * window_sum).pow(beta)
    return y.to(input.dtype)


def filter_response_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    tau: Tensor | None = None,
    eps: float | Tensor = 1e-6,
) -> Tensor:
    """Filter Response Normalization with its Thresholded Linear Unit
    (Singh & Krishnan, 2019).

        nu2 = mean(x^2) over the spatial axes, per sample and channel
        y   = x / sqrt(nu2 + eps) * weight + bias
        z   = max(y, tau)            (the TLU, when ``tau`` is given)

    No mean is subtracted and nothing depends on the batch. ``eps`` may be a
    tensor (a learned eps).
    """
    x = upcast(input)
    shape = channel_shape(x)
    nu2 = mean_square(x, spatial_dims(x))
    eps_t = eps.to(x.dtype) if isinstance(eps, Tensor) else eps
    y = affine(x * torch.rsqrt(nu2 + eps_t), weight, bias, shape)
    if tau is not None:
        y = torch.maximum(y, tau.reshape(shape).to(y.dtype))
    return y.to(input.dtype)


def evonorm_b0(
    input: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """EvoNorm-B0 (Liu, Brock, Simonyan & Le, 2020), batch-dependent.

        y = x / max(sqrt(Var_B(x) + eps), v * x + sqrt(Var_I(x) + eps)) * weight + bias

    Var_B is the batch variance per channel over N and the spatial axes (the
    running estimate in eval, updated with the unbiased batch variance), Var_I
    the instance variance per sample and channel over the spatial axes.
    """
    x = upcast(input)
    shape = channel_shape(x)
    if training:
        _, var_b = moments(x, [0, *spatial_dims(x)])
        count = per_channel_count(x)
        if count > 0 and running_var is not None:
            update_running(None, running_var, None, unbiased(var_b, count), momentum)
    else:
        if running_var is None:
            raise ValueError("evonorm_b0: running_var is required in eval")
        var_b = running_view(running_var, x)
    _, var_i = moments(x, spatial_dims(x))
    denominator = torch.maximum(
        torch.sqrt(var_b + eps), v.reshape(shape).to(x.dtype) * x + torch.sqrt(var_i + eps)
    )
    return affine(x / denominator, weight, bias, shape).to(input.dtype)
