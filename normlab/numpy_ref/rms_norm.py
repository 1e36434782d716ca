r"""RMS normalization in NumPy, forward and hand-derived backward.

Over the trailing axes named by gamma's shape, with m elements:

    ms = (1/m) sum_i x_i^2,   r = (ms + eps)^(-1/2),   xhat = x r,   y = gamma * xhat

Backward, with g_i = dL/dxhat_i = dy_i * gamma_i. Since dr/dx_i = -r^3 x_i / m,

    dL/dx_i = r g_i + sum_j g_j x_j * (-r^3 x_i / m) = r * (g_i - xhat_i * mean_j(g_j xhat_j))

— the incoming gradient with its component along xhat removed (no mean is
removed, since no mean was subtracted). dgamma = sum(dy * xhat) over the
leading axes.
"""

from __future__ import annotations

import numpy as np

Cache = dict[str, object]


def rms_norm_forward(
    x: np.ndarray, gamma: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, Cache]:
    """y = gamma * x / sqrt(mean(x^2) + eps) over the trailing axes of gamma's shape."""
    k = gamma.ndim
    if x.shape[x.ndim - k :] != gamma.shape:
        raise ValueError(f"rms_norm_forward: expected x of shape (*, {gamma.shape}), got {x.shape}")
    axes = tuple(range(x.ndim - k, x.ndim))
    r = 1.0 / np.sqrt((x**2).mean(axis=axes, keepdims=True) + eps)
    xhat = x * r
    return xhat * gamma, {"xhat": xhat, "r": r, "gamma": gamma, "axes": axes}


def rms_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dgamma) for :func:`rms_norm_forward`."""
    xhat, r, gamma, axes = cache["xhat"], cache["r"], cache["gamma"], cache["axes"]
    g = dy * gamma
    dx = r * (g - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    dgamma = (dy * xhat).sum(axis=tuple(range(dy.ndim - len(axes))))
    return dx, dgamma
