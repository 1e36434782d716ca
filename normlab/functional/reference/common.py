"""Helpers shared by the reference implementations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def upcast(x: Tensor) -> Tensor:
    """``x`` in its accumulation dtype."""
    return x.to(accumulation_dtype(x.dtype))


def moments(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over ``dims`` (kept), two-pass.

    Over no axes at all the mean is x itself and the variance 0 (torch's
    ``mean(dim=())`` would reduce over every axis instead).
    """
    if not dims:
        return x, torch.zeros_like(x)
    mean = x.mean(dim=tuple(dims), keepdim=True)
    var = (x - mean).square().mean(dim=tuple(dims), keepdim=True)
    return mean, var


def mean_square(x: Tensor, dims: Sequence[int]) -> Tensor:
    """mean(x^2) over ``dims`` (kept); x^2 itself over no axes."""
    return x.square().mean(dim=tuple(dims), keepdim=True) if dims else x.square()


def spatial_dims(x: Tensor) -> list[int]:
    """The axes after N and C of an (N, C, *) tensor."""
    return list(range(2, x.dim()))


def channel_shape(x: Tensor) -> tuple[int, ...]:
    """(1, C, 1, ...): the shape a per-channel vector takes to broadcast over (N, C, *)."""
    return (1, x.shape[1], *([1] * (x.dim() - 2)))


def affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, shape: Sequence[int]) -> Tensor:
    """y * weight + bias, the parameters reshaped to ``shape`` and cast to y's dtype."""
    if weight is not None:
        y = y * weight.reshape(shape).to(y.dtype)
    if bias is not None:
        y = y + bias.reshape(shape).to(y.dtype)
    return y


def unbiased(var: Tensor, count: int) -> Tensor:
    """A biased variance over ``count`` values made unbiased: var * count / (count - 1)."""
    return var * (count / max(count - 1, 1))


@torch.no_grad()
def update_running(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor | None,
    unbiased_var: Tensor,
    momentum: float | Tensor,
) -> None:
    """Move running estimates towards a batch's statistics, in place:
    running <- (1 - momentum) * running + momentum * batch. ``momentum`` may be
    a 0-d tensor (a count-based factor, so that torch.compile need not
    specialize on it)."""
    for running, value in ((running_mean, mean), (running_var, unbiased_var)):
        if running is not None and value is not None:
            value = value.flatten().to(running.dtype)
            if isinstance(momentum, Tensor):
                running.mul_(1.0 - momentum).add_(value * momentum)
            else:
                running.mul_(1.0 - momentum).add_(value, alpha=momentum)


def as_like(value: float | Tensor, like: Tensor) -> Tensor:
    """A number or 0-d tensor (a scheduled limit, say) in ``like``'s dtype and device."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def running_view(running: Tensor, x: Tensor) -> Tensor:
    """A running per-channel statistic shaped to broadcast over ``x``, in x's dtype."""
    return running.view(channel_shape(x)).to(x.dtype)


def per_channel_count(x: Tensor) -> int:
    """How many values of each channel a batch holds (N times the spatial size)."""
    return x.numel() // x.shape[1] if x.shape[1] else 0
