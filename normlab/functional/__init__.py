"""Stateless normalization functions, each dispatching to a backend.

Every function takes torch.nn.functional's arguments plus ``backend=``:
``None`` (auto: the :func:`use_backend` default, else ``"native"``),
``"native"`` (torch.nn.functional) or ``"reference"`` (the formula in composed
ops, :mod:`normlab.functional.reference`). Inputs are validated here, once,
with messages that name the function.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normlab.functional import checks, reference
from normlab.functional.backend import BACKENDS, get_backend, resolve, use_backend
from normlab.functional.checks import NormInputError

__all__ = [
    "BACKENDS",
    "NormInputError",
    "batch_norm",
    "get_backend",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "rms_norm",
    "use_backend",
]

logger = logging.getLogger(__name__)

_LAYOUT = "(N, C, *)"
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _pick(op: str, backend: str | None, native_covers: bool = True):
    """The implementation of ``op`` on the chosen backend.

    Auto selection (``backend=None``) falls back to the reference backend, with
    a debug log line, where torch has no native kernel for the input.
    """
    name = resolve(backend)
    if name == "native" and backend is None and not native_covers:
        logger.debug("%s: torch has no native kernel for this input; using 'reference'", op)
        name = "reference"
    return getattr(F if name == "native" else reference, op)


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Batch normalization of an (N, C, *) tensor; see ``torch.nn.functional.batch_norm``."""
    who = "batch_norm"
    checks.check_floating(who, input)
    checks.check_min_dims(who, input, 2, _LAYOUT)
    if training:
        checks.check_per_channel(who, input)
        if eps <= 0:
            raise NormInputError(f"{who}: eps must be positive in training, got {eps}")
    impl = _pick("batch_norm", backend)
    return impl(input, running_mean, running_var, weight, bias, training, momentum, eps)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Instance normalization of an (N, C, *) tensor; see ``torch.nn.functional.instance_norm``."""
    who = "instance_norm"
    checks.check_floating(who, input)
    checks.check_min_dims(who, input, 3, _LAYOUT)
    if use_input_stats:
        checks.check_spatial(who, input)
    impl = _pick("instance_norm", backend)
    return impl(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Layer normalization over the trailing ``normalized_shape`` axes."""
    who = "layer_norm"
    shape = checks.as_normalized_shape(who, normalized_shape)
    checks.check_floating(who, input)
    checks.check_trailing_shape(who, input, shape)
    impl = _pick("layer_norm", backend)
    return impl(input, shape, weight, bias, eps)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Group normalization of an (N, C, *) tensor over ``num_groups`` channel groups."""
    who = "group_norm"
    checks.check_floating(who, input)
    checks.check_min_dims(who, input, 2, _LAYOUT)
    checks.check_groups(who, input.shape[1], num_groups)
    checks.check_group_values(who, input, num_groups)
    impl = _pick("group_norm", backend)
    return impl(input, num_groups, weight, bias, eps)


def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """RMS normalization over the trailing ``normalized_shape`` axes (eps=None: machine eps)."""
    who = "rms_norm"
    shape = checks.as_normalized_shape(who, normalized_shape)
    checks.check_floating(who, input)
    checks.check_trailing_shape(who, input, shape)
    impl = _pick("rms_norm", backend)
    return impl(input, shape, weight, eps)


def local_response_norm(
    input: Tensor,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    *,
    backend: str | None = None,
) -> Tensor:
    """Local response normalization across channels of an (N, C, *) tensor, at least 3D."""
    who = "local_response_norm"
    checks.check_floating(who, input)
    checks.check_min_dims(who, input, 3, _LAYOUT)
    if size < 1:
        raise NormInputError(f"{who}: size must be a positive number of channels, got {size}")
    # torch's CPU kernel (avg_pool3d) lacks half precision for inputs of 4D and more.
    native_covers = not (
        input.device.type == "cpu" and input.dim() > 3 and input.dtype in _HALF_DTYPES
    )
    impl = _pick("local_response_norm", backend, native_covers)
    return impl(input, size, alpha, beta, k)
