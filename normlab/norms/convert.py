"""Swapping normalization layers inside a model: convert, freeze and unfreeze BatchNorm."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import torch
from torch import nn

from normlab.norms import batch, layer, registry
from normlab.norms.batch import BatchNormNd, FrozenBatchNorm2d, SyncBatchNorm

_CHANNELS_LAST = (nn.LayerNorm, nn.RMSNorm, layer.LayerNorm, layer.RMSNorm)
_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, batch._BatchNorm)
_COPIED = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

Source = str | type[nn.Module] | tuple[type[nn.Module], ...] | None


def num_features_of(module: nn.Module) -> int:
    """The feature (channel) count a normalization layer was built for."""
    for attr in ("num_features", "num_channels"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        if len(shape) != 1:
            raise ValueError(
                f"convert: {module} normalizes over {tuple(shape)}; only one feature axis "
                "can be converted"
            )
        return shape[0]
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return weight.shape[0]
    raise ValueError(f"convert: cannot tell how many features {module} normalizes")


def _is_channels_last(module: nn.Module) -> bool:
    return isinstance(module, _CHANNELS_LAST) or getattr(module, "channels_last", False) is True


def _transfer(old: nn.Module, new: nn.Module) -> nn.Module:
    """Copy affine parameters (with their requires_grad), running statistics and the
    batch count where shapes agree; match the old module's device, dtype and mode."""
    tensors = [*old.parameters(), *old.buffers()]
    reference = next((t for t in tensors if t.is_floating_point()), None)
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        for name in _COPIED:
            src, dst = getattr(old, name, None), getattr(new, name, None)
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                if src.shape == dst.shape:
                    dst.copy_(src)
                    if isinstance(dst, nn.Parameter):
                        dst.requires_grad_(src.requires_grad)
    return new.train(old.training)


def _replace(
    model: nn.Module,
    matches: Callable[[nn.Module], bool],
    make: Callable[[nn.Module], nn.Module],
    done: dict[int, nn.Module] | None = None,
) -> nn.Module:
    """Replace, in place and recursively, every submodule that ``matches``; a module
    reached through several parents is replaced once, and stays shared."""
    done = {} if done is None else done
    if id(model) in done:
        return done[id(model)]
    if matches(model):
        done[id(model)] = _transfer(model, make(model))
        return done[id(model)]
    done[id(model)] = model
    for name, child in model.named_children():
        setattr(model, name, _replace(child, matches, make, done))
    return model


# Constructor arguments a replacement takes over from the layer it replaces, where
# both have them (LayerNorm calls its affine switch elementwise_affine).
_CARRIED = ("eps", "momentum", "affine", "track_running_stats")


def _settings(old: nn.Module) -> dict:
    values = {name: getattr(old, name) for name in _CARRIED if hasattr(old, name)}
    if "affine" not in values and hasattr(old, "elementwise_affine"):
        values["affine"] = old.elementwise_affine
    return values


def _accepted(probe: nn.Module) -> set[str]:
    """The constructor arguments of the class a builder made (builders may be lambdas);
    LayerNorm's elementwise_affine answers to affine."""
    names = set(inspect.signature(type(probe).__init__).parameters)
    return names | {"affine"} if "elementwise_affine" in names else names


def _lost(old: nn.Module, new: nn.Module, settings: dict, accepted: set[str]) -> list[str]:
    """What ``new`` cannot carry of ``old``: statistics it keeps no place for, settings
    its constructor does not take."""
    lost = []
    if (
        getattr(old, "running_mean", None) is not None
        and getattr(new, "running_mean", None) is None
    ):
        lost.append("running statistics")
    for name, value in settings.items():
        default_like = (name == "affine" and value is True) or name == "track_running_stats"
        if name not in accepted and not default_like:
            lost.append(f"{name}={value}")
    return lost


def _source_types(source: Source) -> tuple[type[nn.Module], ...]:
    if source is None:  # every technique with a feature count (not LRN)
        lrn = registry.spec("lrn").layer_classes
        return tuple(cls for cls in registry.norm_classes() if cls not in lrn)
    if isinstance(source, str):  # the technique's classes, normlab's and torch.nn's
        return registry.spec(source).layer_classes
    return source if isinstance(source, tuple) else (source,)


def convert(model: nn.Module, target: str, source: Source = None, **kwargs) -> nn.Module:
    """Replace the normalization layers of ``model`` with technique ``target``.

    In place, recursing through containers; returns the model (or the new
    layer, if ``model`` itself is one). ``source`` selects what is replaced: a
    registry name, a class or a tuple of classes; by default every torch.nn and
    normlab normalization layer with a feature count (not LocalResponseNorm).
    Each replacement is ``normlab.create(target, C, **kwargs)`` for the old
    layer's C — in its channels-first form (LayerNorm2d, RMSNorm2d, ...) where
    the old layer was channels-first and ``target`` normalizes the last axis.
    Affine parameters and running statistics are copied where their shapes
    agree; device, dtype and train/eval mode are kept.

    A channels-last layer (LayerNorm) replaced by a channels-first technique
    (BatchNorm) only fits inputs whose features are at dim 1, e.g. (N, C).
    """
    spec = registry.spec(target)
    types = _source_types(source)
    dropped: dict[str, int] = {}

    def make(old: nn.Module) -> nn.Module:
        c = num_features_of(old)
        build = (
            spec.channels_first
            if spec.channels_last and not _is_channels_last(old) and spec.channels_first
            else lambda n, **kw: registry.create(target, n, **kw)
        )
        accepted = _accepted(build(c, **kwargs))
        settings = {k: v for k, v in _settings(old).items() if k not in kwargs}
        values = {**{k: v for k, v in settings.items() if k in accepted}, **kwargs}
        if "affine" in values and "elementwise_affine" in accepted:
            values["elementwise_affine"] = values.pop("affine")
        new = build(c, **values)
        for item in _lost(old, new, settings, accepted):
            dropped[item] = dropped.get(item, 0) + 1
        return new

    result = _replace(model, lambda m: isinstance(m, types), make)
    if dropped:
        warnings.warn(
            f"convert to {spec.name!r}: the new layers cannot carry "
            + ", ".join(
                f"{item} ({count} layer{'s' * (count > 1)})" for item, count in dropped.items()
            ),
            UserWarning,
            stacklevel=2,
        )
    return result


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm (torch.nn or normlab, SyncBatchNorm too) with a
    :class:`FrozenBatchNorm2d` holding its running statistics, affine and eps.

    In place; returns the model. A BatchNorm without running statistics
    (``track_running_stats=False``) has nothing to freeze and raises.
    """

    def make(old: nn.Module) -> nn.Module:
        if getattr(old, "running_mean", None) is None:
            raise ValueError(f"freeze_batchnorm: {old} keeps no running statistics to freeze")
        return FrozenBatchNorm2d(old.num_features, eps=old.eps)

    return _replace(model, lambda m: isinstance(m, _BATCH_NORMS), make)


def unfreeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every :class:`FrozenBatchNorm2d` with a trainable BatchNorm
    (:class:`BatchNormNd`, any input rank) starting from its statistics and
    affine. In place; returns the model."""
    return _replace(
        model,
        lambda m: isinstance(m, FrozenBatchNorm2d),
        lambda old: BatchNormNd(old.num_features, eps=old.eps),
    )


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """Replace every BatchNorm (torch.nn's or normlab's) with a :class:`SyncBatchNorm`
    over ``process_group``, keeping its arguments, affine, running statistics,
    device, dtype and mode. In place; returns the model."""

    def make(old: nn.Module) -> nn.Module:
        new = SyncBatchNorm(
            old.num_features,
            old.eps,
            old.momentum,
            old.affine,
            old.track_running_stats,
            process_group=process_group,
        )
        if old.num_batches_tracked is not None and new.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(old.num_batches_tracked)
        return new

    return _replace(
        model, lambda m: isinstance(m, _BATCH_NORMS) and not isinstance(m, SyncBatchNorm), make
    )
