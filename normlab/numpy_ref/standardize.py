r"""Standardization over a set of axes, forward and hand-derived backward (NumPy).

Every mean-and-variance normalization (batch, layer, group, instance) is this
one operation over a different set S of m elements:

    mu   = (1/m) sum_i x_i
    v    = (1/m) sum_i (x_i - mu)^2          (biased variance)
    r    = (v + eps)^(-1/2)
    xhat = (x - mu) r

Backward. Let g_i = dL/dxhat_i. The loss depends on x_i directly, through mu
and through v:

    dL/dv  = sum_j g_j (x_j - mu) * (-1/2)(v + eps)^(-3/2) = -(r^3 / 2) sum_j g_j (x_j - mu)
    dL/dmu = -r sum_j g_j + dL/dv * (-2/m) sum_j (x_j - mu) = -r sum_j g_j
             (the second term vanishes: the deviations sum to zero)
    dL/dx_i = r g_i + dL/dv * 2 (x_i - mu) / m + dL/dmu / m

Substituting and writing x_i - mu = xhat_i / r:

    dL/dx_i = r * (g_i - mean_j(g_j) - xhat_i * mean_j(g_j xhat_j))

The gradient is the incoming gradient with its mean removed and its component
along xhat removed, scaled by r: the two directions that normalization erases.
"""

from __future__ import annotations

import numpy as np


def standardize_forward(
    x: np.ndarray, axes: tuple[int, ...], eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """xhat = (x - mean) / sqrt(var + eps) over ``axes``; returns (xhat, r) with r kept-dim."""
    mu = x.mean(axis=axes, keepdims=True)
    v = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    r = 1.0 / np.sqrt(v + eps)
    return (x - mu) * r, r


def standardize_backward(
    dxhat: np.ndarray, xhat: np.ndarray, r: np.ndarray, axes: tuple[int, ...]
) -> np.ndarray:
    """dL/dx from dL/dxhat: r * (g - mean(g) - xhat * mean(g * xhat)) over ``axes``."""
    mean_g = dxhat.mean(axis=axes, keepdims=True)
    mean_gx = (dxhat * xhat).mean(axis=axes, keepdims=True)
    return r * (dxhat - mean_g - xhat * mean_gx)
