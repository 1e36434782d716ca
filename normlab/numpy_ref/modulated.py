r"""Modulated (adaptive) LayerNorm and RMSNorm in NumPy, forward and hand-derived backward.

x is (B, *, D); the norm runs over the last axis, then each sample's (or
token's) scale s and shift h, predicted from a conditioning vector, modulate
it (FiLM: Perez et al., 2018; adaLN: Peebles & Xie, 2023):

    a = norm(x)                  (layer or RMS norm with gamma, beta: numpy_ref.norms, .rms_norm)
    y = a * (1 + s) + h          s, h of shape (B, D), broadcast over the tokens, or x's shape

Backward. Per element y is affine in a, s and h, so with dy = dL/dy:

    dL/dh = dy,  dL/ds = dy * a,  dL/da = dy * (1 + s)

summed over every axis s and h were broadcast on (a sample's tokens); dL/da
then goes back through the norm as before.
"""

from __future__ import annotations

import numpy as np

from normlab.numpy_ref.norms import layer_norm_backward, layer_norm_forward
from normlab.numpy_ref.rms_norm import rms_norm_backward, rms_norm_forward

Cache = dict[str, object]


def _over_tokens(name: str, x: np.ndarray, shift: np.ndarray, scale: np.ndarray):
    """shift and scale viewed to broadcast over x's tokens, and the axes they broadcast on."""
    per_sample = (x.shape[0], x.shape[-1])
    if x.ndim < 2 or shift.shape != scale.shape or shift.shape not in (per_sample, x.shape):
        raise ValueError(
            f"{name}: expected x of shape (B, *, D) and shift, scale both (B, D) or x's shape, "
            f"got x {x.shape}, shift {shift.shape}, scale {scale.shape}"
        )
    if shift.shape == x.shape:
        return shift, scale, ()
    view = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return shift.reshape(view), scale.reshape(view), tuple(range(1, x.ndim - 1))


def _modulate_forward(name, a, x, shift, scale, cache):
    h, s, token_axes = _over_tokens(name, x, shift, scale)
    cache.update(a=a, s=s, token_axes=token_axes, shape=shift.shape)
    return a * (1 + s) + h, cache


def _modulate_backward(dy, cache):
    """(da, dshift, dscale) for y = a * (1 + s) + h."""
    a, s, axes, shape = cache["a"], cache["s"], cache["token_axes"], cache["shape"]
    dshift = dy.sum(axis=axes).reshape(shape)
    dscale = (dy * a).sum(axis=axes).reshape(shape)
    return dy * (1 + s), dshift, dscale


def modulated_layer_norm_forward(
    x: np.ndarray,
    shift: np.ndarray,
    scale: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-6,
) -> tuple[np.ndarray, Cache]:
    """y = (gamma * xhat + beta) * (1 + scale) + shift, xhat standardized over the last axis."""
    a, cache = layer_norm_forward(x, gamma, beta, eps)
    return _modulate_forward("modulated_layer_norm_forward", a, x, shift, scale, cache)


def modulated_layer_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """(dx, dshift, dscale, dgamma, dbeta) for :func:`modulated_layer_norm_forward`."""
    da, dshift, dscale = _modulate_backward(dy, cache)
    dx, dgamma, dbeta = layer_norm_backward(da, cache)
    return dx, dshift, dscale, dgamma, dbeta


def modulated_rms_norm_forward(
    x: np.ndarray, shift: np.ndarray, scale: np.ndarray, gamma: np.ndarray, eps: float = 1e-6
) -> tuple[np.ndarray, Cache]:
    """y = gamma * x / sqrt(mean(x^2) + eps) * (1 + scale) + shift over the last axis."""
    a, cache = rms_norm_forward(x, gamma, eps)
    return _modulate_forward("modulated_rms_norm_forward", a, x, shift, scale, cache)


def modulated_rms_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """(dx, dshift, dscale, dgamma) for :func:`modulated_rms_norm_forward`."""
    da, dshift, dscale = _modulate_backward(dy, cache)
    dx, dgamma = rms_norm_backward(da, cache)
    return dx, dshift, dscale, dgamma
