"""Batch, layer, group and instance normalization in NumPy, forward and backward.

Each is :mod:`normlab.numpy_ref.standardize` over its own axes followed by the
affine ``y = gamma * xhat + beta``, whose backward is

    dgamma = sum(dy * xhat),  dbeta = sum(dy)   over every axis gamma is broadcast on
    dxhat  = dy * gamma

``x`` is (N, C, ...) with gamma, beta of shape (C,) for batch, group and
instance; for layer, gamma and beta have the shape of the trailing axes
normalized. Training-mode (batch) statistics throughout: running averages are
bookkeeping, not part of the gradient.
"""

from __future__ import annotations

import numpy as np

from normlab.numpy_ref.standardize import standardize_backward, standardize_forward

Cache = dict[str, object]


def _channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) -> (1, C, 1, ..., 1) to broadcast over (N, C, ...)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _check_channels(name: str, x: np.ndarray, gamma: np.ndarray) -> None:
    if x.ndim < 2 or gamma.shape != (x.shape[1],):
        raise ValueError(
            f"{name}: expected x of shape (N, C, ...) and gamma of shape (C,), "
            f"got x {x.shape} and gamma {gamma.shape}"
        )


def _affine_forward(xhat, gamma, beta, view) -> np.ndarray:
    return xhat * view(gamma) + view(beta)


def _affine_backward(dy, xhat, gamma, view, param_axes) -> tuple[np.ndarray, ...]:
    dgamma = (dy * xhat).sum(axis=param_axes)
    dbeta = dy.sum(axis=param_axes)
    return dy * view(gamma), dgamma, dbeta


def batch_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, Cache]:
    """Batch norm (training): statistics per channel over N and the spatial axes."""
    _check_channels("batch_norm_forward", x, gamma)
    axes = (0, *range(2, x.ndim))
    xhat, r = standardize_forward(x, axes, eps)
    y = _affine_forward(xhat, gamma, beta, lambda v: _channel(v, x.ndim))
    return y, {"xhat": xhat, "r": r, "gamma": gamma, "axes": axes}


def batch_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """(dx, dgamma, dbeta) for :func:`batch_norm_forward`."""
    xhat, r, gamma, axes = cache["xhat"], cache["r"], cache["gamma"], cache["axes"]
    dxhat, dgamma, dbeta = _affine_backward(dy, xhat, gamma, lambda v: _channel(v, dy.ndim), axes)
    return standardize_backward(dxhat, xhat, r, axes), dgamma, dbeta


def instance_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, Cache]:
    """Instance norm: statistics per sample and channel over the spatial axes."""
    _check_channels("instance_norm_forward", x, gamma)
    axes = tuple(range(2, x.ndim))
    xhat, r = standardize_forward(x, axes, eps)
    y = _affine_forward(xhat, gamma, beta, lambda v: _channel(v, x.ndim))
    return y, {"xhat": xhat, "r": r, "gamma": gamma, "axes": axes}


def instance_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """(dx, dgamma, dbeta) for :func:`instance_norm_forward`."""
    xhat, r, gamma, axes = cache["xhat"], cache["r"], cache["gamma"], cache["axes"]
    param_axes = (0, *axes)
    dxhat, dgamma, dbeta = _affine_backward(
        dy, xhat, gamma, lambda v: _channel(v, dy.ndim), param_axes
    )
    return standardize_backward(dxhat, xhat, r, axes), dgamma, dbeta


def layer_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, Cache]:
    """Layer norm: statistics per sample over the trailing axes named by gamma's shape."""
    k = gamma.ndim
    if x.shape[x.ndim - k :] != gamma.shape or beta.shape != gamma.shape:
        raise ValueError(
            f"layer_norm_forward: expected x of shape (*, {gamma.shape}) and beta of gamma's "
            f"shape, got x {x.shape}, gamma {gamma.shape}, beta {beta.shape}"
        )
    axes = tuple(range(x.ndim - k, x.ndim))
    xhat, r = standardize_forward(x, axes, eps)
    y = _affine_forward(xhat, gamma, beta, lambda v: v)
    return y, {"xhat": xhat, "r": r, "gamma": gamma, "axes": axes}


def layer_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """(dx, dgamma, dbeta) for :func:`layer_norm_forward`."""
    xhat, r, gamma, axes = cache["xhat"], cache["r"], cache["gamma"], cache["axes"]
    batch_axes = tuple(range(dy.ndim - len(axes)))
    dxhat, dgamma, dbeta = _affine_backward(dy, xhat, gamma, lambda v: v, batch_axes)
    return standardize_backward(dxhat, xhat, r, axes), dgamma, dbeta


def group_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, num_groups: int, eps: float = 1e-5
) -> tuple[np.ndarray, Cache]:
    """Group norm: statistics per sample over each group of C / num_groups channels."""
    _check_channels("group_norm_forward", x, gamma)
    if x.shape[1] % num_groups:
        raise ValueError(
            f"group_norm_forward: {x.shape[1]} channels are not divisible by "
            f"num_groups={num_groups}"
        )
    grouped = x.reshape(x.shape[0], num_groups, -1)
    xhat_g, r = standardize_forward(grouped, (2,), eps)
    xhat = xhat_g.reshape(x.shape)
    y = _affine_forward(xhat, gamma, beta, lambda v: _channel(v, x.ndim))
    return y, {"xhat": xhat, "r": r, "gamma": gamma, "num_groups": num_groups}


def group_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """(dx, dgamma, dbeta) for :func:`group_norm_forward`."""
    xhat, r, gamma, groups = cache["xhat"], cache["r"], cache["gamma"], cache["num_groups"]
    param_axes = (0, *range(2, dy.ndim))
    dxhat, dgamma, dbeta = _affine_backward(
        dy, xhat, gamma, lambda v: _channel(v, dy.ndim), param_axes
    )
    n = dy.shape[0]
    dx = standardize_backward(
        dxhat.reshape(n, groups, -1), xhat.reshape(n, groups, -1), r, (2,)
    ).reshape(dy.shape)
    return dx, dgamma, dbeta
