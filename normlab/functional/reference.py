"""Formula-faithful reference implementations in composed torch ops.

These are the oracle for what torch lacks and the ``"reference"`` backend.
Each follows the paper's formula literally and is differentiated by autograd:

* statistics accumulate in float32 for float16/bfloat16 inputs (float64 stays
  float64), and the result is cast back to the input's dtype;
* the variance is the biased one, by the two-pass method
  ``mean((x - mean(x))**2)``, never ``E[x^2] - E[x]^2``;
* eps sits inside the square root; running statistics (where kept) are updated
  in place with the *unbiased* variance, as torch.nn does.

Arguments and defaults match ``torch.nn.functional``. Input validation lives in
:mod:`normlab.functional` (the public entry points), not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _moments(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over ``dims`` (kept), two-pass."""
    mean = x.mean(dim=tuple(dims), keepdim=True)
    var = (x - mean).square().mean(dim=tuple(dims), keepdim=True)
    return mean, var


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    """(1, C, 1, ...): the shape a per-channel vector takes to broadcast over (N, C, *)."""
    return (1, x.shape[1], *([1] * (x.dim() - 2)))


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, shape: Sequence[int]) -> Tensor:
    """y * weight + bias, the parameters reshaped to ``shape`` and cast to y's dtype."""
    if weight is not None:
        y = y * weight.reshape(shape).to(y.dtype)
    if bias is not None:
        y = y + bias.reshape(shape).to(y.dtype)
    return y


@torch.no_grad()
def _update_running(running: Tensor, batch_value: Tensor, momentum: float) -> None:
    """running <- (1 - momentum) * running + momentum * batch_value, in place."""
    running.mul_(1.0 - momentum).add_(batch_value.to(running.dtype), alpha=momentum)


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
    x = input.to(accumulation_dtype(input.dtype))
    shape = _channel_shape(x)
    if training:
        dims = [0, *range(2, x.dim())]
        mean, var = _moments(x, dims)
        count = x.numel() // x.shape[1] if x.shape[1] else 0
        if running_mean is not None and count > 0:
            _update_running(running_mean, mean.flatten(), momentum)
        if running_var is not None and count > 0:
            unbiased = var.flatten() * (count / max(count - 1, 1))
            _update_running(running_var, unbiased, momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are required in eval")
        mean, var = running_mean.view(shape).to(x.dtype), running_var.view(shape).to(x.dtype)
    y = (x - mean) * torch.rsqrt(var + eps)
    return _affine(y, weight, bias, shape).to(input.dtype)


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
    x = input.to(accumulation_dtype(input.dtype))
    shape = _channel_shape(x)
    if use_input_stats:
        dims = list(range(2, x.dim()))
        mean, var = _moments(x, dims)
        count = x[0, 0].numel() if x.shape[0] and x.shape[1] else 0
        batch = mean.shape[0]
        if running_mean is not None and count > 0 and batch > 0:
            _update_running(running_mean, mean.reshape(batch, -1).mean(0), momentum)
        if running_var is not None and count > 0 and batch > 0:
            unbiased = var.reshape(batch, -1) * (count / max(count - 1, 1))
            _update_running(running_var, unbiased.mean(0), momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError(
                "instance_norm: running_mean and running_var are required when "
                "use_input_stats=False"
            )
        mean, var = running_mean.view(shape).to(x.dtype), running_var.view(shape).to(x.dtype)
    y = (x - mean) * torch.rsqrt(var + eps)
    return _affine(y, weight, bias, shape).to(input.dtype)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalization (Ba, Kiros & Hinton, 2016) over the trailing axes.

    y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias, with E and Var over the
    last ``len(normalized_shape)`` axes; weight and bias have normalized_shape.
    """
    x = input.to(accumulation_dtype(input.dtype))
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mean, var = _moments(x, dims)
    y = (x - mean) * torch.rsqrt(var + eps)
    return _affine(y, weight, bias, normalized_shape).to(input.dtype)


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
    x = input.to(accumulation_dtype(input.dtype))
    grouped = x.reshape(x.shape[0], num_groups, -1)
    mean, var = _moments(grouped, [2])
    y = ((grouped - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    return _affine(y, weight, bias, _channel_shape(x)).to(input.dtype)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """Root-mean-square normalization (Zhang & Sennrich, 2019).

    y = x / sqrt(mean(x^2) + eps) * weight over the trailing axes. ``eps=None``
    takes the machine epsilon of the accumulation dtype (float32 for half
    inputs), as torch does.
    """
    acc = accumulation_dtype(input.dtype)
    if eps is None:
        eps = torch.finfo(acc).eps
    x = input.to(acc)
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    y = x * torch.rsqrt(x.square().mean(dim=dims, keepdim=True) + eps)
    return _affine(y, weight, None, normalized_shape).to(input.dtype)


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
    x = input.to(accumulation_dtype(input.dtype))
    sq = x.square().movedim(1, -1)
    padded = torch.nn.functional.pad(sq, (size // 2, (size - 1) // 2))
    window_sum = padded.unfold(-1, size, 1).sum(-1).movedim(-1, 1)
    y = x / (k + alpha / size * window_sum).pow(beta)
    return y.to(input.dtype)
