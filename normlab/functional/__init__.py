"""Stateless normalization functions, each dispatching to a backend.

Every function takes torch.nn.functional's arguments plus ``backend=``:
``None`` (auto: the :func:`use_backend` default, else ``"triton"`` for CUDA
tensors where a kernel exists, else ``"native"``), ``"native"``
(torch.nn.functional), ``"triton"`` (the fused kernels of
:mod:`normlab.kernels`) or ``"reference"`` (the formula in composed ops,
:mod:`normlab.functional.reference`). Inputs are validated here, once,
with messages that name the function.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from normlab.functional import checks, native, reference
from normlab.functional.backend import (
    AUTO_KERNEL_OPS,
    BACKENDS,
    get_backend,
    resolve,
    triton_installed,
    use_backend,
)
from normlab.functional.checks import NormInputError

__all__ = [
    "BACKENDS",
    "NormInputError",
    "add_layer_norm",
    "add_rms_norm",
    "batch_norm",
    "batch_renorm",
    "dynamic_erf",
    "dynamic_tanh",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "get_backend",
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
    "run",
    "scale_norm",
    "switchable_norm",
    "use_backend",
    "weight_standardization",
]

logger = logging.getLogger(__name__)

_LAYOUT = "(N, C, *)"
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _debug(message: str, *args) -> None:
    """A debug log line of eager calls (torch.compile cannot trace a logger)."""
    if not torch.compiler.is_compiling():
        logger.debug(message, *args)


def _pick(op: str, backend: str | None, native_covers: bool = True, call: tuple = ()):
    """The implementation of ``op`` on the chosen backend.

    ``call`` is the functional call's arguments (input first), for the Triton
    backend to decide whether its kernel covers them. Auto picks Triton for
    CUDA inputs of the ops in ``AUTO_KERNEL_OPS`` (those with kernels, but
    BatchNorm). A Triton call its kernel does not cover (another op, dtype or
    device) runs the native backend instead, with a debug log line saying why.

    Where torch has no native kernel for ``op`` (or for this input), a call
    that did not name ``backend="native"`` itself runs the reference backend,
    with a debug log line; one that did gets an error saying so.
    """
    name = resolve(backend)
    if name is None:
        name = "native"
        if call and call[0].is_cuda and triton_installed() and op in AUTO_KERNEL_OPS:
            name = "triton"
    if name == "triton":
        if not triton_installed():
            raise RuntimeError(
                f"{op}: backend='triton' needs the triton package: pip install 'normlab[triton]'"
            )
        from normlab import kernels

        reason = kernels.unsupported(op, call)
        if reason is None:
            return getattr(kernels, op)
        _debug("%s: no Triton kernel for %s; using 'native'", op, reason)
        name = "native"
    if name == "native" and not (native_covers and hasattr(native, op)):
        if backend == "native":
            raise NormInputError(
                f"{op}: torch has no native kernel for this input; use backend='reference'"
            )
        _debug("%s: torch has no native kernel for this input; using 'reference'", op)
        name = "reference"
    return getattr(native if name == "native" else reference, op)


def run(op: str, *call, backend: str | None = None, native_covers: bool = True) -> Tensor:
    """Run ``op`` (a function of this module, by name) on the chosen backend
    *without* validating ``call``: for a layer that has validated its input
    itself, so that nothing is checked twice. ``native_covers=False``: torch has
    no kernel for this input (see :func:`_pick`)."""
    return _pick(op, backend, native_covers, call)(*call)


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
    checks.check_channel_vectors(
        who, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    if training:
        checks.check_per_channel(who, input)
        if eps <= 0:
            raise NormInputError(f"{who}: eps must be positive in training, got {eps}")
    call = (input, running_mean, running_var, weight, bias, training, momentum, eps)
    return _pick("batch_norm", backend, call=call)(*call)


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
    checks.check_channel_vectors(
        who, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
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
    call = (input, shape, weight, bias, eps)
    return _pick("layer_norm", backend, call=call)(*call)


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
    call = (input, num_groups, weight, bias, eps)
    return _pick("group_norm", backend, call=call)(*call)


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
    call = (input, shape, weight, eps)
    return _pick("rms_norm", backend, call=call)(*call)


def modulated_layer_norm(
    input: Tensor,
    shift: Tensor,
    scale: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> Tensor:
    """Modulated LayerNorm (adaLN, Peebles & Xie, 2023) of an (B, *, D) input:
    y = LN(x) * (1 + scale) + shift over the last axis, shift and scale (B, D)
    broadcast over the tokens, or of x's shape; see :class:`normlab.AdaptiveLayerNorm`."""
    checks.check_modulation("modulated_layer_norm", input, shift, scale, weight, bias)
    call = (input, shift, scale, weight, bias, eps)
    return _pick("modulated_layer_norm", backend, call=call)(*call)


def modulated_rms_norm(
    input: Tensor,
    shift: Tensor,
    scale: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> Tensor:
    """Modulated RMSNorm of an (B, *, D) input: y = RMSNorm(x) * (1 + scale) + shift
    over the last axis; see :func:`modulated_layer_norm`."""
    checks.check_modulation("modulated_rms_norm", input, shift, scale, weight)
    call = (input, shift, scale, weight, eps)
    return _pick("modulated_rms_norm", backend, call=call)(*call)


def add_rms_norm(
    input: Tensor,
    residual: Tensor | None,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
    residual_in_fp32: bool = False,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """RMSNorm after a residual add, as a pre-norm transformer block runs it:
    h = input + residual (None: h = input), y = rms_norm(h); returns (y, h).

    y has the input's dtype; h torch's promotion of input and residual, float32 at
    least with ``residual_in_fp32``. Gradients reach input and residual from both
    outputs. See :class:`normlab.AddRMSNorm`."""
    who = "add_rms_norm"
    shape = checks.check_add_norm(who, input, residual, normalized_shape, weight)
    call = (input, residual, shape, weight, eps, residual_in_fp32)
    return _pick("add_rms_norm", backend, call=call)(*call)


def add_layer_norm(
    input: Tensor,
    residual: Tensor | None,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    residual_in_fp32: bool = False,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """LayerNorm after a residual add: h = input + residual (None: h = input),
    y = layer_norm(h); returns (y, h), dtypes as :func:`add_rms_norm`'s. See
    :class:`normlab.AddLayerNorm`."""
    who = "add_layer_norm"
    shape = checks.check_add_norm(who, input, residual, normalized_shape, weight, bias)
    call = (input, residual, shape, weight, bias, eps, residual_in_fp32)
    return _pick("add_layer_norm", backend, call=call)(*call)


LM_RMS_CASTS = ("llama", "gemma")


def check_lm_rms_norm_args(who: str, cast: str, partial: float | None) -> None:
    """``cast`` is one of LM_RMS_CASTS and ``partial`` None or in (0, 1]."""
    if cast not in LM_RMS_CASTS:
        raise ValueError(f"{who}: cast must be one of {LM_RMS_CASTS}, got {cast!r}")
    if partial is not None and (isinstance(partial, bool) or not 0.0 < partial <= 1.0):
        raise ValueError(f"{who}: partial must be None or in (0, 1], got {partial!r}")


def lm_rms_norm(
    input: Tensor,
    weight: Tensor | None = None,
    eps: float | None = 1e-6,
    unit_offset: bool = False,
    cast: str = "llama",
    partial: float | None = None,
    channels_last: bool = True,
    *,
    backend: str | None = None,
) -> Tensor:
    """RMSNorm as language models run it (see :class:`normlab.LMRMSNorm`): over the
    last axis (``channels_last``) or the channel axis of (N, C, *); scale
    ``1 + weight`` with ``unit_offset``; ``cast`` "llama" or "gemma" decides
    where the float32 result goes back to the input's dtype; ``partial`` p
    estimates the RMS from the first ceil(p * n) features only; ``eps`` None is the
    input dtype's machine epsilon, as in torch's RMSNorm."""
    who = "lm_rms_norm"
    check_lm_rms_norm_args(who, cast, partial)
    checks.check_floating(who, input)
    checks.check_min_dims(
        who, input, 1 if channels_last else 2, "(*, C)" if channels_last else _LAYOUT
    )
    checks.check_feature_vector(who, input, channels_last, weight=weight)
    if eps is None:  # torch's RMSNorm convention: the input dtype's machine epsilon
        eps = torch.finfo(input.dtype).eps
    call = (input, weight, eps, unit_offset, cast, partial, channels_last)
    return _pick("lm_rms_norm", backend, call=call)(*call)


def native_lrn_covers(input: Tensor) -> bool:
    """Whether torch has a local_response_norm kernel for ``input``: its CPU
    kernel (avg_pool3d) lacks half precision for inputs of 4D and more."""
    return not (input.device.type == "cpu" and input.dim() > 3 and input.dtype in _HALF_DTYPES)


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
    impl = _pick("local_response_norm", backend, native_lrn_covers(input))
    return impl(input, size, alpha, beta, k)


def _check_channels_first(who: str, input: Tensor) -> None:
    checks.check_floating(who, input)
    checks.check_min_dims(who, input, 2, _LAYOUT)


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    r_max: float | Tensor = 3.0,
    d_max: float | Tensor = 5.0,
    *,
    backend: str | None = None,
) -> Tensor:
    """Batch Renormalization of an (N, C, *) tensor; see ``reference.batch_renorm``.

    ``momentum``, ``r_max`` and ``d_max`` may be 0-d tensors (a schedule)."""
    who = "batch_renorm"
    _check_channels_first(who, input)
    if training:
        checks.check_per_channel(who, input)
    # Limits given as tensors are a layer's schedule, checked where it is built.
    numbers = not isinstance(r_max, Tensor) and not isinstance(d_max, Tensor)
    if numbers and (r_max < 1 or d_max < 0):
        raise NormInputError(f"{who}: need r_max >= 1 and d_max >= 0, got {r_max} and {d_max}")
    checks.check_channel_vectors(
        who, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    impl = _pick("batch_renorm", backend)
    return impl(
        input, running_mean, running_var, weight, bias, training, momentum, eps, r_max, d_max
    )


def ghost_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    virtual_batch_size: int = 32,
    *,
    backend: str | None = None,
) -> Tensor:
    """Ghost Batch Normalization of an (N, C, *) tensor; see ``reference.ghost_batch_norm``."""
    who = "ghost_batch_norm"
    _check_channels_first(who, input)
    if virtual_batch_size < 1:
        raise NormInputError(f"{who}: virtual_batch_size must be >= 1, got {virtual_batch_size}")
    if training:
        checks.check_virtual_batches(who, input, virtual_batch_size)
    checks.check_channel_vectors(
        who, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    impl = _pick("ghost_batch_norm", backend)
    return impl(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        training,
        momentum,
        eps,
        virtual_batch_size,
    )


def filter_response_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    tau: Tensor | None = None,
    eps: float | Tensor = 1e-6,
    *,
    backend: str | None = None,
) -> Tensor:
    """Filter Response Normalization (+TLU when ``tau`` is given) of an (N, C, *) tensor."""
    _check_channels_first("filter_response_norm", input)
    return _pick("filter_response_norm", backend)(input, weight, bias, tau, eps)


def evonorm_b0(
    input: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """EvoNorm-B0 of an (N, C, *) tensor; see ``reference.evonorm_b0``."""
    who = "evonorm_b0"
    _check_channels_first(who, input)
    if training:
        checks.check_per_channel(who, input)
    impl = _pick("evonorm_b0", backend)
    return impl(input, running_var, weight, bias, v, training, momentum, eps)


def evonorm_s0(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """EvoNorm-S0 of an (N, C, *) tensor; see ``reference.evonorm_s0``."""
    who = "evonorm_s0"
    _check_channels_first(who, input)
    checks.check_groups(who, input.shape[1], num_groups)
    return _pick("evonorm_s0", backend)(input, num_groups, weight, bias, v, eps)


def switchable_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_weight: Tensor,
    var_weight: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Switchable Normalization of an (N, C, *) tensor; see ``reference.switchable_norm``."""
    who = "switchable_norm"
    _check_channels_first(who, input)
    if training:
        checks.check_per_channel(who, input)
    impl = _pick("switchable_norm", backend)
    return impl(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        mean_weight,
        var_weight,
        training,
        momentum,
        eps,
    )


def scale_norm(
    input: Tensor, scale: Tensor, eps: float = 1e-5, dim: int = -1, *, backend: str | None = None
) -> Tensor:
    """ScaleNorm: g * x / max(||x||, eps) along ``dim``."""
    who = "scale_norm"
    checks.check_floating(who, input)
    checks.check_min_dims(who, input, 1, "(*, features)")
    return _pick("scale_norm", backend)(input, scale, eps, dim)


def dynamic_tanh(
    input: Tensor,
    alpha: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    channels_last: bool = True,
    *,
    backend: str | None = None,
) -> Tensor:
    """Dynamic Tanh: weight * tanh(alpha * x) + bias, per feature."""
    who = "dynamic_tanh"
    checks.check_floating(who, input)
    checks.check_min_dims(
        who, input, 1 if channels_last else 2, "(*, C)" if channels_last else _LAYOUT
    )
    return _pick("dynamic_tanh", backend)(input, alpha, weight, bias, channels_last)


def dynamic_erf(
    input: Tensor,
    alpha: Tensor,
    shift: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    channels_last: bool = True,
    *,
    backend: str | None = None,
) -> Tensor:
    """Dynamic erf (Derf): weight * erf(alpha * x + shift) + bias, per feature
    (``shift`` None: 0)."""
    who = "dynamic_erf"
    checks.check_floating(who, input)
    checks.check_min_dims(
        who, input, 1 if channels_last else 2, "(*, C)" if channels_last else _LAYOUT
    )
    checks.check_feature_vector(who, input, channels_last, weight=weight, bias=bias)
    call = (input, alpha, shift, weight, bias, channels_last)
    return _pick("dynamic_erf", backend, call=call)(*call)


def layer_norm_2d(
    input: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> Tensor:
    """Layer normalization over the channel axis of an (N, C, *) tensor, per position."""
    _check_channels_first("layer_norm_2d", input)
    return _pick("layer_norm_2d", backend)(input, weight, bias, eps)


def rms_norm_2d(
    input: Tensor,
    weight: Tensor | None = None,
    eps: float | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """RMS normalization over the channel axis of an (N, C, *) tensor, per position."""
    _check_channels_first("rms_norm_2d", input)
    return _pick("rms_norm_2d", backend)(input, weight, eps)


def weight_standardization(
    weight: Tensor, eps: float = 1e-5, *, backend: str | None = None
) -> Tensor:
    """Weight Standardization: each output channel's weights to zero mean, unit variance."""
    who = "weight_standardization"
    checks.check_floating(who, weight)
    checks.check_min_dims(who, weight, 2, "(out_channels, ...)")
    return _pick("weight_standardization", backend)(weight, eps)
