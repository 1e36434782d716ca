"""NumPy forward and hand-derived backward: for teaching, and a second oracle.

``<name>_forward(x, gamma, beta, eps=1e-5, ...) -> (y, cache)`` and
``<name>_backward(dy, cache) -> (dx, dgamma, dbeta)``; RMS norm has no beta
and returns ``(dx, dgamma)``. The derivations are in the docstrings of
:mod:`normlab.numpy_ref.standardize` and :mod:`normlab.numpy_ref.rms_norm`.
The modulated (adaLN) forms take ``(x, shift, scale, gamma[, beta], eps=1e-6)``
and return ``(dx, dshift, dscale, dgamma[, dbeta])``
(:mod:`normlab.numpy_ref.modulated`).
The residual-add forms take ``(x, residual, gamma[, beta], eps=1e-5)`` and return
``(y, h, cache)``; their backward takes ``(dy, dh, cache)`` and returns
``(dx, dresidual, dgamma[, dbeta])`` (:mod:`normlab.numpy_ref.add_norm`).
"""

from normlab.numpy_ref.add_norm import (
    add_layer_norm_backward,
    add_layer_norm_forward,
    add_rms_norm_backward,
    add_rms_norm_forward,
)
from normlab.numpy_ref.modulated import (
    modulated_layer_norm_backward,
    modulated_layer_norm_forward,
    modulated_rms_norm_backward,
    modulated_rms_norm_forward,
)
from normlab.numpy_ref.norms import (
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)
from normlab.numpy_ref.rms_norm import rms_norm_backward, rms_norm_forward

__all__ = [
    "add_layer_norm_backward",
    "add_layer_norm_forward",
    "add_rms_norm_backward",
    "add_rms_norm_forward",
    "batch_norm_backward",
    "batch_norm_forward",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "modulated_layer_norm_backward",
    "modulated_layer_norm_forward",
    "modulated_rms_norm_backward",
    "modulated_rms_norm_forward",
    "rms_norm_backward",
    "rms_norm_forward",
]
