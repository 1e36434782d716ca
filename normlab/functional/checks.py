"""Input validation shared by the functional API and the layers.

Every check takes ``who``, the name of the function or layer being called
(``"batch_norm"``, ``"BatchNorm2d(16)"``), and raises an error whose message
names it together with the expected and the actual shape or value.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch


class NormInputError(ValueError, RuntimeError):
    """Bad input to a normalization layer or function.

    Subclasses both ``ValueError`` and ``RuntimeError`` so that code written
    against ``torch.nn`` (which raises either, depending on the check) keeps
    catching it.
    """


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_floating(who: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{who}: expected a floating-point input (float16, bfloat16, float32 or "
            f"float64), got {x.dtype}; convert it first, e.g. x.float()"
        )


_CONVERT = {
    torch.float16: ".half()",
    torch.bfloat16: ".bfloat16()",
    torch.float32: ".float()",
    torch.float64: ".double()",
}


def check_parameter_dtype(who: str, x: torch.Tensor, tensors: Sequence) -> None:
    """Raise unless ``x`` can meet the layer's floating ``tensors`` (parameters,
    running statistics; None skipped): torch's kernels take one dtype, or a
    half-precision input with float32 ones, and otherwise say only "mixed dtype"."""
    other = {t.dtype for t in tensors if t is not None and t.is_floating_point()} - {x.dtype}
    if not other or (x.dtype in (torch.float16, torch.bfloat16) and other == {torch.float32}):
        return
    theirs = sorted(other, key=str)
    raise NormInputError(
        f"{who}: input of dtype {x.dtype}, parameters of dtype "
        f"{', '.join(map(str, theirs))}; convert one to the other, e.g. "
        f"x{_CONVERT.get(theirs[0], '.to(...)')} or layer{_CONVERT.get(x.dtype, '.to(...)')}"
    )


def check_dims(who: str, x: torch.Tensor, allowed: Sequence[int], layout: str) -> None:
    """Raise unless ``x.dim()`` is one of ``allowed``; ``layout`` names the axes."""
    if x.dim() not in allowed:
        dims = " or ".join(f"{d}D" for d in allowed)
        raise NormInputError(
            f"{who}: expected a {dims} input {layout}, got a {x.dim()}D input of shape "
            f"{shape_str(x.shape)}"
        )


def check_min_dims(who: str, x: torch.Tensor, minimum: int, layout: str) -> None:
    if x.dim() < minimum:
        raise NormInputError(
            f"{who}: expected an input with at least {minimum} dimensions {layout}, got a "
            f"{x.dim()}D input of shape {shape_str(x.shape)}"
        )


def check_channels(who: str, x: torch.Tensor, expected: int, dim: int = 1) -> None:
    if x.shape[dim] != expected:
        raise NormInputError(
            f"{who}: expected {expected} channels at dim {dim}, got {x.shape[dim]} "
            f"(input shape {shape_str(x.shape)})"
        )


def check_features(who: str, x: torch.Tensor, num_features: int, channels_last: bool) -> None:
    """A floating-point input with ``num_features`` features on its last axis
    (``channels_last``) or at dim 1 of (N, C, *)."""
    check_floating(who, x)
    check_min_dims(who, x, 1 if channels_last else 2, "(*, C)")
    check_channels(who, x, num_features, x.dim() - 1 if channels_last else 1)


def _positive_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_size(who: str, name: str, value) -> None:
    """A layer's size argument: a positive integer (not a bool, a float or a string);
    ``normalized_shape`` also a non-empty sequence of them."""
    if name == "normalized_shape" and isinstance(value, tuple | list | torch.Size):
        if value and all(_positive_integer(v) for v in value):
            return
    elif _positive_integer(value):
        return
    also = " or a sequence of them" if name == "normalized_shape" else ""
    raise NormInputError(f"{who}: {name} must be a positive integer{also}, got {value!r}")


def check_feature_vector(who: str, x: torch.Tensor, channels_last: bool, **vectors) -> None:
    """Each given per-feature tensor holds one value per feature of ``x`` (its last axis,
    or dim 1 of (N, C, *))."""
    features = x.shape[-1 if channels_last else 1]
    for name, vector in vectors.items():
        if vector is not None and tuple(vector.shape) != (features,):
            raise NormInputError(
                f"{who}: {name} must have shape ({features},) for an input of shape "
                f"{shape_str(x.shape)}, got {shape_str(vector.shape)}"
            )


def check_channel_vectors(who: str, x: torch.Tensor, **vectors: torch.Tensor | None) -> None:
    """Each given per-channel tensor (running statistics, affine) holds C values."""
    channels = x.shape[1]
    for name, vector in vectors.items():
        if vector is not None and tuple(vector.shape) != (channels,):
            raise NormInputError(
                f"{who}: {name} must have shape ({channels},) for an input of shape "
                f"{shape_str(x.shape)}, got {shape_str(vector.shape)}"
            )


def check_per_channel(who: str, x: torch.Tensor) -> None:
    """Batch statistics need more than one value per channel (N * spatial > 1)."""
    count = x.numel() // x.shape[1] if x.shape[1] else 0
    if count == 1:
        raise NormInputError(
            f"{who}: expected more than 1 value per channel when training, got input of "
            f"shape {shape_str(x.shape)}; use a batch of at least 2 samples, or eval()"
        )


def check_virtual_batches(who: str, x: torch.Tensor, virtual_batch_size: int) -> None:
    """Ghost BatchNorm's virtual batches each need more than one value per channel;
    the last (the smallest) decides."""
    if x.shape[0] > 0:
        last = x.shape[0] % virtual_batch_size or virtual_batch_size
        check_per_channel(f"{who} (virtual batch of {last})", x[:last])


def check_spatial(who: str, x: torch.Tensor) -> None:
    """Per-sample statistics over the spatial axes need more than one element."""
    count = 1
    for s in x.shape[2:]:
        count *= s
    if count == 1:
        raise NormInputError(
            f"{who}: expected more than 1 spatial element when training, got input of "
            f"shape {shape_str(x.shape)}"
        )


def check_groups(who: str, num_channels: int, num_groups: int) -> None:
    if num_groups <= 0 or num_channels % num_groups != 0:
        raise NormInputError(
            f"{who}: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
        )


def check_group_values(who: str, x: torch.Tensor, num_groups: int) -> None:
    """Group statistics need more than one value in the batch per group (torch's rule)."""
    if x.numel() == num_groups:
        raise NormInputError(
            f"{who}: expected more than 1 value per group, got input of shape "
            f"{shape_str(x.shape)} with {num_groups} groups"
        )


def check_trailing_shape(who: str, x: torch.Tensor, normalized_shape: Sequence[int]) -> None:
    k = len(normalized_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k :]) != tuple(normalized_shape):
        raise NormInputError(
            f"{who}: expected an input of shape (*, {', '.join(map(str, normalized_shape))}) "
            f"ending in normalized_shape {shape_str(normalized_shape)}, got "
            f"{shape_str(x.shape)}"
        )


def as_normalized_shape(who: str, normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of positive ints (an int means one axis)."""
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    shape = tuple(int(s) for s in normalized_shape)
    if not shape or any(s <= 0 for s in shape):
        raise NormInputError(
            f"{who}: normalized_shape must be a non-empty tuple of positive sizes, got {shape}"
        )
    return shape


def check_modulation(
    who: str,
    input: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> None:
    """The input of a modulated norm: a floating (B, *, D) ``input``; ``shift`` and
    ``scale`` of its dtype and of shape (B, D) (per sample) or the input's (per
    token), both alike; ``weight`` and ``bias`` (D,) where given."""
    check_floating(who, input)
    check_min_dims(who, input, 2, "(B, *, D)")
    d = input.shape[-1]
    allowed = ((input.shape[0], d), tuple(input.shape))
    for name, t in (("shift", shift), ("scale", scale)):
        check_floating(f"{who} ({name})", t)
        if tuple(t.shape) not in allowed:
            raise NormInputError(
                f"{who}: {name} must have shape {shape_str(allowed[0])} (per sample) or "
                f"the input's {shape_str(allowed[1])} (per token), got "
                f"{shape_str(t.shape)}"
            )
        if t.dtype != input.dtype:
            raise NormInputError(
                f"{who}: {name} must have the input's dtype {input.dtype}, got {t.dtype}"
            )
    if shift.shape != scale.shape:
        raise NormInputError(
            f"{who}: shift and scale must have the same shape, got "
            f"{shape_str(shift.shape)} and {shape_str(scale.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise NormInputError(
                f"{who}: {name} must have shape ({d},) for an input of shape "
                f"{shape_str(input.shape)}, got {shape_str(t.shape)}"
            )


def check_add_norm(
    who: str,
    input: torch.Tensor,
    residual: torch.Tensor | None,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[int, ...]:
    """The arguments of a norm after a residual add: a floating input ending in
    ``normalized_shape`` (returned as a tuple), ``residual`` None or a floating tensor
    of the input's shape on its device, ``weight`` and ``bias`` of normalized_shape."""
    shape = as_normalized_shape(who, normalized_shape)
    check_floating(who, input)
    check_trailing_shape(who, input, shape)
    if residual is not None:
        check_floating(f"{who} (residual)", residual)
        if residual.shape != input.shape or residual.device != input.device:
            raise NormInputError(
                f"{who}: residual must have the input's shape {shape_str(input.shape)} "
                f"on {input.device}, got {shape_str(residual.shape)} on {residual.device}"
            )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise NormInputError(
                f"{who}: {name} must have normalized_shape {shape_str(shape)}, got "
                f"{shape_str(t.shape)}"
            )
    return shape
