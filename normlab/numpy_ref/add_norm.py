r"""A residual add followed by RMSNorm or LayerNorm, in NumPy: forward and hand-derived
backward.

A pre-norm transformer block (Xiong et al., 2020, "On Layer Normalization in the
Transformer Architecture") keeps a residual stream h and normalizes it before each
sublayer; fused, one call does both:

    h = x + r        (h = x without a residual)
    y = norm(h)      (RMSNorm or LayerNorm over gamma's trailing axes)

and returns (y, h): h goes on along the stream, y into the sublayer.

Backward. h has two consumers, the norm and the rest of the stream, so its total
gradient is the sum of what flows back from each; with dL/dy = dy and dL/dh = dh
arriving from outside (dh = 0 when h is not used again):

    dL/dh = norm_backward(dy) + dh

where norm_backward is :func:`~normlab.numpy_ref.rms_norm_backward`'s
r * (g - xhat * mean(g xhat)) or the standardization's r * (g - mean(g) - xhat *
mean(g xhat)), g = gamma * dy. The add's Jacobians are identities, dh/dx = dh/dr = I:

    dL/dx = dL/dr = dL/dh

dgamma and dbeta are the norm's own, sum(dy * xhat) and sum(dy) over the leading axes:
the incoming dh does not reach them.
"""

from __future__ import annotations

import numpy as np

from normlab.numpy_ref.norms import layer_norm_backward, layer_norm_forward
from normlab.numpy_ref.rms_norm import rms_norm_backward, rms_norm_forward

Cache = dict[str, object]


def _add(x: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
    if residual is None:
        return x
    if residual.shape != x.shape:
        raise ValueError(
            f"add_norm: expected a residual of x's shape {x.shape}, got {residual.shape}"
        )
    return x + residual


def _stream_grads(dh_norm, dh, cache) -> tuple[np.ndarray, np.ndarray | None]:
    """dL/dx and dL/dresidual (None without a residual): both the total gradient of h."""
    total = dh_norm if dh is None else dh_norm + dh
    return total, (total if cache["has_residual"] else None)


def add_rms_norm_forward(
    x: np.ndarray, residual: np.ndarray | None, gamma: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, Cache]:
    """h = x + residual, y = gamma * h / sqrt(mean(h^2) + eps); returns (y, h, cache)."""
    h = _add(x, residual)
    y, cache = rms_norm_forward(h, gamma, eps)
    return y, h, {"norm": cache, "has_residual": residual is not None}


def add_rms_norm_backward(
    dy: np.ndarray, dh: np.ndarray | None, cache: Cache
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(dx, dresidual, dgamma) for :func:`add_rms_norm_forward`, given dL/dy and the
    gradient dL/dh arriving along the stream (None: h not used again)."""
    dh_norm, dgamma = rms_norm_backward(dy, cache["norm"])
    return (*_stream_grads(dh_norm, dh, cache), dgamma)


def add_layer_norm_forward(
    x: np.ndarray,
    residual: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, Cache]:
    """h = x + residual, y = gamma * (h - mean) / sqrt(var + eps) + beta; returns
    (y, h, cache)."""
    h = _add(x, residual)
    y, cache = layer_norm_forward(h, gamma, beta, eps)
    return y, h, {"norm": cache, "has_residual": residual is not None}


def add_layer_norm_backward(
    dy: np.ndarray, dh: np.ndarray | None, cache: Cache
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx, dresidual, dgamma, dbeta) for :func:`add_layer_norm_forward`, given dL/dy and
    the gradient dL/dh arriving along the stream (None: h not used again)."""
    dh_norm, dgamma, dbeta = layer_norm_backward(dy, cache["norm"])
    return (*_stream_grads(dh_norm, dh, cache), dgamma, dbeta)
