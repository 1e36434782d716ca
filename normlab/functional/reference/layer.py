"""Per-sample normalizations over features: LayerNorm, RMSNorm (also as language
models run it), their channels-first forms, ScaleNorm, and the normalization-free
DynamicTanh and DynamicErf."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from normlab.functional.reference.common import (
    accumulation_dtype,
    affine,
    channel_shape,
    mean_square,
    moments,
    upcast,
)


def _trailing(x: Tensor, k: int) -> list[int]:
    return list(range(x.dim() - k, x.dim()))


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
    x = upcast(input)
    mean, var = moments(x, _trailing(x, len(normalized_shape)))
    y = (x - mean) * torch.rsqrt(var + eps)
    return affine(y, weight, bias, normalized_shape).to(input.dtype)


def layer_norm_2d(
    input: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """Layer normalization over the channels of an (N, C, *) tensor, per position.

    y = (x - E_c[x]) / sqrt(Var_c[x] + eps) * weight + bias, weight and bias (C,).
    """
    x = upcast(input)
    mean, var = moments(x, [1])
    y = (x - mean) * torch.rsqrt(var + eps)
    return affine(y, weight, bias, channel_shape(x)).to(input.dtype)


def _rms_eps(eps: float | None, dtype: torch.dtype) -> float:
    return torch.finfo(accumulation_dtype(dtype)).eps if eps is None else eps


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
    x = upcast(input)
    ms = mean_square(x, _trailing(x, len(normalized_shape)))
    y = x * torch.rsqrt(ms + _rms_eps(eps, input.dtype))
    return affine(y, weight, None, normalized_shape).to(input.dtype)


def rms_norm_2d(input: Tensor, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """RMS normalization over the channels of an (N, C, *) tensor, per position."""
    x = upcast(input)
    y = x * torch.rsqrt(mean_square(x, [1]) + _rms_eps(eps, input.dtype))
    return affine(y, weight, None, channel_shape(x)).to(input.dtype)


def scale_norm(input: Tensor, scale: Tensor, eps: float = 1e-5, dim: int = -1) -> Tensor:
    """ScaleNorm (Nguyen & Salazar, 2019): y = g * x / max(||x||_2, eps) along ``dim``.

    One learnable scalar g replaces LayerNorm's mean, variance and affine.
    """
    x = upcast(input)
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(eps)
    return (scale.to(x.dtype) * x / norm).to(input.dtype)


def dynamic_tanh(
    input: Tensor,
    alpha: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    channels_last: bool = True,
) -> Tensor:
    """Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025): y = weight * tanh(alpha * x) + bias.

    No statistics at all: a learnable scalar alpha squashes x elementwise.
    weight and bias are per feature: the last axis (``channels_last``) or the
    channel axis of (N, C, *).
    """
    x = upcast(input)
    y = torch.tanh(alpha.to(x.dtype) * x)
    shape = (x.shape[-1],) if channels_last else channel_shape(x)
    return affine(y, weight, bias, shape).to(input.dtype)


def dynamic_erf(
    input: Tensor,
    alpha: Tensor,
    shift: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    channels_last: bool = True,
) -> Tensor:
    """Dynamic erf, Derf (Chen, Lu, Zhu, Sun & Liu, 2025):
    y = weight * erf(alpha * x + shift) + bias.

    No statistics at all: a learnable scalar alpha and scalar shift (None: 0)
    move x into erf elementwise. weight and bias are per feature: the last axis
    (``channels_last``) or the channel axis of (N, C, *).
    """
    x = upcast(input)
    z = alpha.to(x.dtype) * x
    if shift is not None:
        z = z + shift.to(x.dtype)
    y = torch.erf(z)
    shape = (x.shape[-1],) if channels_last else channel_shape(x)
    return affine(y, weight, bias, shape).to(input.dtype)


def partial_count(n: int, partial: float | None) -> int:
    """How many leading features pRMSNorm estimates the RMS from: ceil(p * n)
    (Zhang & Sennrich, 2019, §pRMSNorm), all n for ``partial=None``."""
    return n if partial is None else max(1, min(n, math.ceil(partial * n)))


def lm_rms_norm(
    input: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
    unit_offset: bool = False,
    cast: str = "llama",
    partial: float | None = None,
    channels_last: bool = True,
) -> Tensor:
    """RMSNorm as language models run it, the formula written plainly.

    x̂ = x / sqrt(mean(x[:k]^2) + eps) in float32 (float64 for float64 inputs),
    k = ceil(partial * n) leading features (all n for ``partial=None``);
    s = 1 + weight (``unit_offset``) or weight (None: 1).
    ``cast="llama"``: y = s * x̂.to(input dtype), s in the weight's dtype;
    ``cast="gemma"``: y = (x̂ * s in float32).to(input dtype).
    Features are the last axis (``channels_last``) or the channel axis of (N, C, *).
    """
    x = input if channels_last else input.movedim(1, -1)
    h = upcast(x)
    k = partial_count(h.shape[-1], partial)
    rms = torch.sqrt((h[..., :k] ** 2).mean(dim=-1, keepdim=True) + eps)
    x_hat = h / rms
    if cast == "gemma":  # the scale in float32 too
        w = None if weight is None else weight.to(h.dtype)
        y = x_hat if w is None else x_hat * (1 + w if unit_offset else w)
    else:  # back to the input's dtype first, the scale in the weight's dtype
        y = x_hat.to(x.dtype)
        y = y if weight is None else (1 + weight if unit_offset else weight) * y
    y = y.to(x.dtype)
    return y if channels_last else y.movedim(-1, 1)


def residual_stream_dtype(
    input: Tensor, residual: Tensor | None, residual_in_fp32: bool
) -> torch.dtype:
    """The dtype of h = input + residual: torch's promotion of the two (the input's
    alone without a residual), at least float32 with ``residual_in_fp32``."""
    dtype = input.dtype if residual is None else torch.promote_types(input.dtype, residual.dtype)
    return torch.promote_types(dtype, torch.float32) if residual_in_fp32 else dtype


def _residual_add(input: Tensor, residual: Tensor | None, residual_in_fp32: bool) -> Tensor:
    """h = input + residual, summed in the accumulation dtype and rounded once to the
    residual stream's dtype (h = input without a residual)."""
    dtype = residual_stream_dtype(input, residual, residual_in_fp32)
    s = input.to(accumulation_dtype(dtype))
    if residual is not None:
        s = s + residual.to(s.dtype)
    return s.to(dtype)


def add_rms_norm(
    input: Tensor,
    residual: Tensor | None,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
    residual_in_fp32: bool = False,
) -> tuple[Tensor, Tensor]:
    """RMSNorm (Zhang & Sennrich, 2019) after a residual add, as a pre-norm block runs it.

    h = x + residual,  y = h / sqrt(mean(h^2) + eps) * weight over the trailing axes;
    returns (y, h), y in the input's dtype, h in :func:`residual_stream_dtype`.
    """
    h = _residual_add(input, residual, residual_in_fp32)
    return rms_norm(h, normalized_shape, weight, eps).to(input.dtype), h


def add_layer_norm(
    input: Tensor,
    residual: Tensor | None,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    residual_in_fp32: bool = False,
) -> tuple[Tensor, Tensor]:
    """LayerNorm (Ba, Kiros & Hinton, 2016) after a residual add, as a pre-norm block runs it.

    h = x + residual,  y = (h - E[h]) / sqrt(Var[h] + eps) * weight + bias over the
    trailing axes; returns (y, h), y in the input's dtype, h in
    :func:`residual_stream_dtype`.
    """
    h = _residual_add(input, residual, residual_in_fp32)
    return layer_norm(h, normalized_shape, weight, bias, eps).to(input.dtype), h
