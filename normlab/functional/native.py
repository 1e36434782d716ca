"""The ``"native"`` backend: torch's own kernels.

Ops torch.nn.functional has are taken from it directly; channels-first forms
of channels-last ops are torch's kernel on a moved axis; techniques torch has
no kernel for are compositions of its kernels with hand-derived backward
passes (:mod:`normlab.functional.composite`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normlab.functional.composite import (
    batch_renorm,
    dynamic_erf,
    evonorm_b0,
    evonorm_s0,
    filter_response_norm,
    ghost_batch_norm,
    lm_rms_norm,
    rms_norm_2d,
    scale_norm,
    switchable_norm,
)
from normlab.functional.reference.adaptive import over_tokens
from normlab.functional.reference.layer import residual_stream_dtype

__all__ = [
    "add_layer_norm",
    "add_rms_norm",
    "batch_norm",
    "batch_renorm",
    "dynamic_erf",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "layer_norm_2d",
    "lm_rms_norm",
    "local_response_norm",
    "modulated_layer_norm",
    "modulated_rms_norm",
    "rms_norm",
    "rms_norm_2d",
    "scale_norm",
    "switchable_norm",
]

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


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """torch's batch_norm; a tensor ``momentum`` (momentum=None's 1/k, kept a
    tensor so a compiled model need not read it back) updates the running
    statistics here, from the batch's mean and unbiased variance, in float64 as
    torch's CPU kernel does (so the result is torch's, bit for bit)."""
    if not isinstance(momentum, Tensor):
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)
    y = F.batch_norm(input, None, None, weight, bias, True, 0.0, eps)
    if input.numel() > 0:
        with torch.no_grad():
            var, mean = torch.var_mean(input.double(), [0, *range(2, input.dim())])
            for running, value in ((running_mean, mean), (running_var, var)):
                if running is not None:
                    running.copy_(momentum * value + (1 - momentum) * running.double())
    return y


def _residual_add(input: Tensor, residual: Tensor | None, residual_in_fp32: bool) -> Tensor:
    """h = input + residual in the residual stream's dtype (the input itself without a
    residual, unless ``residual_in_fp32`` raises it to float32)."""
    h = input.to(residual_stream_dtype(input, residual, residual_in_fp32))
    return h if residual is None else h + residual.to(h.dtype)


def _as(t: Tensor | None, like: Tensor) -> Tensor | None:
    return None if t is None else t.to(like.dtype)


def add_rms_norm(
    input: Tensor,
    residual: Tensor | None,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
    residual_in_fp32: bool = False,
) -> tuple[Tensor, Tensor]:
    """h = input + residual, then torch's rms_norm of h; (y in the input's dtype, h)."""
    h = _residual_add(input, residual, residual_in_fp32)
    return F.rms_norm(h, normalized_shape, _as(weight, h), eps).to(input.dtype), h


def add_layer_norm(
    input: Tensor,
    residual: Tensor | None,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    residual_in_fp32: bool = False,
) -> tuple[Tensor, Tensor]:
    """h = input + residual, then torch's layer_norm of h; (y in the input's dtype, h)."""
    h = _residual_add(input, residual, residual_in_fp32)
    y = F.layer_norm(h, normalized_shape, _as(weight, h), _as(bias, h), eps)
    return y.to(input.dtype), h


def modulated_layer_norm(
    input: Tensor,
    shift: Tensor,
    scale: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """torch's layer_norm over the last axis, then y * (1 + scale) + shift in one addcmul."""
    y = F.layer_norm(input, (input.shape[-1],), weight, bias, eps)
    return torch.addcmul(over_tokens(shift, y), y, 1 + over_tokens(scale, y))


def modulated_rms_norm(
    input: Tensor,
    shift: Tensor,
    scale: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """torch's rms_norm over the last axis, then y * (1 + scale) + shift in one addcmul."""
    y = F.rms_norm(input, (input.shape[-1],), weight, eps)
    return torch.addcmul(over_tokens(shift, y), y, 1 + over_tokens(scale, y))
