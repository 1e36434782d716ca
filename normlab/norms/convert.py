"""Swapping normalization layers inside a model: convert, to_torch, freeze and
unfreeze BatchNorm, convert to SyncBatchNorm."""

from __future__ import annotations

import inspect
import itertools
import warnings
from collections.abc import Callable

import torch
from torch import nn

from normlab._names import did_you_mean
from normlab.norms import _graph, registry
from normlab.norms._layout import FeaturesLast
from normlab.norms.batch import BatchNormNd, FrozenBatchNorm2d, SyncBatchNorm
from normlab.norms.cross_iteration import CrossIterationBatchNorm, link_cross_iteration
from normlab.norms.layer import LayerNorm as layer_norm_twin

# normlab's LayerNorm, RMSNorm and BatchNorms are these classes' subclasses.
_CHANNELS_LAST = (nn.LayerNorm, nn.RMSNorm)
_BATCH_NORMS = nn.modules.batchnorm._BatchNorm
_COPIED = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

Source = str | type[nn.Module] | tuple[str | type[nn.Module], ...] | None


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


def _scale_offset(module: nn.Module) -> float:
    """What a layer adds to its weight to get its scale: 1 for Gemma's unit offset
    (LMRMSNorm(unit_offset=True) scales by 1 + weight), else 0."""
    return 1.0 if getattr(module, "unit_offset", False) is True else 0.0


def _transfer(old: nn.Module, new: nn.Module) -> nn.Module:
    """Copy affine parameters (with their requires_grad), running statistics and the
    batch count where shapes agree; match the old module's device, dtype and mode.
    The weight carries the old layer's scale: across Gemma's unit offset it becomes
    w + 1 or w − 1."""
    tensors = [*old.parameters(), *old.buffers()]
    reference = next((t for t in tensors if t.is_floating_point()), None)
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    offset = _scale_offset(old) - _scale_offset(new)
    with torch.no_grad():
        for name in _COPIED:
            src, dst = getattr(old, name, None), getattr(new, name, None)
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                if src.shape == dst.shape:
                    dst.copy_(src + offset if name == "weight" and offset else src)
                    if isinstance(dst, nn.Parameter):
                        dst.requires_grad_(src.requires_grad)
    return new.train(old.training)


def _replace(
    model: nn.Module,
    matches: Callable[[nn.Module], bool],
    make: Callable[[nn.Module], nn.Module],
    done: dict[int, nn.Module] | None = None,
) -> nn.Module:
    """Replace, in place and recursively, every submodule that ``matches`` with
    ``make(it)``; a module reached through several parents is replaced once, and
    stays shared."""
    done = {} if done is None else done
    if id(model) in done:
        return done[id(model)]
    if matches(model):
        done[id(model)] = make(model)
        return done[id(model)]
    done[id(model)] = model
    # _modules, not named_children(): that skips a child held in a second slot too
    for name, child in list(model._modules.items()):
        if child is not None:
            setattr(model, name, _replace(child, matches, make, done))
    return model


def _exact_copy(old: nn.Module, new: nn.Module) -> nn.Module | None:
    """``new`` holding ``old``'s whole state: the same state_dict (keys, values,
    dtypes, devices), requires_grad and mode; None where it cannot hold it."""
    reference = next((t for t in old.state_dict().values() if t.is_floating_point()), None)
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    state = old.state_dict()
    try:
        new.load_state_dict(state)
    except (RuntimeError, KeyError):
        return None
    held = new.state_dict()
    if set(held) != set(state) or any(
        (held[k].dtype, held[k].device) != (v.dtype, v.device) for k, v in state.items()
    ):
        return None
    for name, param in old.named_parameters(recurse=False):
        getattr(new, name).requires_grad_(param.requires_grad)
    return new.train(old.training)


def _arguments(cls: type[nn.Module], old: nn.Module) -> dict | None:
    """The constructor arguments of ``cls`` that rebuild ``old`` (a layer of the same
    technique): each read from the attribute of its name, ``bias`` from whether
    ``old`` has a bias beside its weight; None if a required one cannot be read."""
    values = {}
    for name, param in inspect.signature(cls).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or name in ("device", "dtype"):
            continue
        if name == "bias":
            if getattr(old, "weight", None) is not None and getattr(old, "bias", None) is None:
                values["bias"] = False
        elif hasattr(old, name) and not isinstance(getattr(old, name), torch.Tensor):
            values[name] = getattr(old, name)
        elif param.default is param.empty:
            return None
    return values


def _rebuild(
    cls: type[nn.Module], old: nn.Module, overrides: dict | None = None
) -> nn.Module | None:
    """``cls`` built as ``old`` (with ``overrides``) and holding its exact state, or
    None where it cannot; with overrides, the state is carried where it fits."""
    values = _arguments(cls, old)
    if values is None:
        return None
    try:
        new = cls(**{**values, **(overrides or {})})
    except (TypeError, ValueError):
        return None
    return _transfer(old, new) if overrides else _exact_copy(old, new)


def _own_classes(spec: registry.NormSpec) -> tuple[type[nn.Module], ...]:
    """normlab's classes of a technique (``layer_classes`` less the torch.nn ones)."""
    return spec.classes or (spec.cls,)


def _normlab_twin(module: nn.Module, spec: registry.NormSpec) -> type[nn.Module] | None:
    """normlab's class for ``module`` if it is of technique ``spec``: the one named as
    its class or as the nearest base of it so named (nn.BatchNorm2d ->
    BatchNorm2d, a subclass of nn.GroupNorm -> GroupNorm)."""
    found = registry.spec_of(module)
    if found is None or found.name != spec.name:
        return None
    by_name = {cls.__name__: cls for cls in _own_classes(spec)}
    return next((by_name[c.__name__] for c in type(module).__mro__ if c.__name__ in by_name), None)


def _torch_twin(module: nn.Module) -> type[nn.Module] | None:
    """The torch.nn class a normlab layer is the drop-in for: torch.nn's class of the
    same name, if the registry counts it as the same technique (BatchNorm2d ->
    nn.BatchNorm2d; BatchNormNd, of any input rank, has none)."""
    spec = registry.spec_of(module)
    if spec is None or type(module) not in _own_classes(spec):
        return None
    cls = getattr(nn, type(module).__name__, None)
    if isinstance(cls, type) and cls is not type(module) and issubclass(cls, spec.torch_classes):
        return cls
    return None


def _is_normlab_layer(module: nn.Module) -> bool:
    spec = registry.spec_of(module)
    return spec is not None and any(c in _own_classes(spec) for c in type(module).__mro__)


# Constructor arguments a replacement takes over from the layer it replaces, where
# both have them (LayerNorm calls its affine switch elementwise_affine).
_CARRIED = ("eps", "momentum", "affine", "track_running_stats")


def _settings(old: nn.Module) -> dict:
    values = {name: getattr(old, name) for name in _CARRIED if hasattr(old, name)}
    if values.get("eps", 0) is None:  # RMSNorm's "the dtype's epsilon": the target's default
        del values["eps"]
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
    count = getattr(old, "num_batches_tracked", None)
    if (
        getattr(old, "running_mean", None) is not None
        and getattr(new, "running_mean", None) is None
        and (count is None or count.is_meta or int(count) > 0)  # gathered, not the defaults
    ):
        lost.append("running statistics")
    defaults = inspect.signature(type(old).__init__).parameters
    for name, value in settings.items():
        default_like = (name == "affine" and value is True) or name == "track_running_stats"
        chosen = name not in defaults or defaults[name].default != value  # not the default
        if name not in accepted and not default_like and chosen:
            lost.append(f"{name}={value}")
    return lost


def _lookup(name: str, role: str) -> registry.NormSpec:
    """The technique ``name`` (a registry name or an alias) names; an unknown name
    raises KeyError naming it, the close matches and the techniques."""
    try:
        return registry.spec(name)
    except KeyError:
        names = [n for t in registry.available() for n in (t, *registry.spec(t).aliases)]
        hint = did_you_mean(str(name).strip().lower(), names, quote=True)
        raise KeyError(
            f"convert: unknown {role} {name!r}{hint}; techniques: "
            f"{', '.join(registry.available())} (or an alias of one)"
        ) from None


def _named_classes(name: str) -> tuple[type[nn.Module], ...]:
    """The classes a source name selects: a technique's, torch.nn's and normlab's
    ('bn': every BatchNorm); an alias that builds one class, that class
    ('batchnorm2d': BatchNorm2d, whose torch.nn twin matches too)."""
    spec = _lookup(name, "source")
    builder = spec.aliases.get(registry.canonical(name))
    return (builder,) if isinstance(builder, type) else spec.layer_classes


def _source_classes(source: Source) -> tuple[type[nn.Module], ...]:
    if source is None:  # every technique with a feature count (not LRN)
        lrn = registry.spec("lrn").layer_classes
        return tuple(cls for cls in registry.norm_classes() if cls not in lrn)
    classes: list[type[nn.Module]] = []
    for item in source if isinstance(source, tuple) else (source,):
        if isinstance(item, str):
            classes += _named_classes(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            classes.append(item)
        else:
            raise TypeError(
                "convert: source must be a registry name, an nn.Module class or a tuple "
                f"of them, got {item!r}"
            )
    return tuple(classes)


def _matcher(classes: tuple[type[nn.Module], ...]) -> Callable[[nn.Module], bool]:
    """Whether a module is an instance of ``classes``, or its class's twin (torch.nn's
    for a normlab layer, normlab's for a torch.nn one) is a subclass of one."""

    def matches(module: nn.Module) -> bool:
        if isinstance(module, classes):
            return True
        spec = registry.spec_of(module)
        if spec is None:
            return False
        twins = [_torch_twin(module)]
        by_name = {c.__name__: c for c in _own_classes(spec)}
        twins.append(by_name.get(type(module).__name__))
        return any(t is not None and issubclass(t, classes) for t in twins)

    return matches


def _given_classes(source: Source) -> tuple[type[nn.Module], ...]:
    """The classes ``source`` names itself (not through a registry name)."""
    items = source if isinstance(source, tuple) else (source,)
    return tuple(item for item in items if isinstance(item, type))


def _keep_transformer_layers_exact(model: nn.Module) -> None:
    """torch's inference fast path of nn.TransformerEncoderLayer (and so of
    nn.TransformerEncoder) reads norm1 and norm2's weight, bias and eps and
    computes LayerNorm itself; for layers whose norms are no longer LayerNorms,
    turn it off (its flag ``activation_relu_or_gelu`` serves nothing else), so
    that the converted norms are what runs."""
    for layer in model.modules():
        if isinstance(layer, nn.TransformerEncoderLayer) and not all(
            type(norm) in (nn.LayerNorm, layer_norm_twin) for norm in (layer.norm1, layer.norm2)
        ):
            layer.activation_relu_or_gelu = False


def _describe(source: Source) -> str:
    if source is None:
        return "None (every normalization layer with a feature count)"
    items = source if isinstance(source, tuple) else (source,)
    text = ", ".join(repr(i) if isinstance(i, str) else i.__name__ for i in items)
    return f"({text})" if isinstance(source, tuple) else text


# Activation modules a norm with its own activation (FRN's TLU, EvoNorm) would double.
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)


def _followers(model: nn.Module, norms: set[int]) -> tuple[list[str], list[str], str]:
    """(names of activation modules whose input is one of ``norms``' outputs and
    nothing else, names of other activation calls after them that cannot be
    replaced, why the search was partial: '' when the model traced)."""
    modules = dict(model.named_modules())
    try:
        graph = _graph.trace(model, (*registry.norm_classes(), FeaturesLast, *_ACTIVATIONS))
    except Exception as e:  # any tracing failure: look at nn.Sequential neighbours only
        found = []
        for container in model.modules():
            if isinstance(container, nn.Sequential):
                keys = list(container._modules)
                for before, after in itertools.pairwise(keys):
                    if id(container._modules[before]) in norms and isinstance(
                        container._modules[after], _ACTIVATIONS
                    ):
                        found.append(
                            next(n for n, m in modules.items() if m is container._modules[after])
                        )
        return found, [], _graph.untraceable(e)
    found, other = [], []
    for node in graph.nodes:
        source = _graph.input_node(node) if node.op in ("call_module", "call_function") else None
        if getattr(source, "op", "") != "call_module" or id(modules[source.target]) not in norms:
            continue
        if node.op == "call_module" and isinstance(modules[node.target], _ACTIVATIONS):
            found.append(node.target)
        elif node.op == "call_function" and getattr(node.target, "__name__", "") in (
            "relu",
            "gelu",
            "silu",
            "leaky_relu",
            "relu6",
            "elu",
            "mish",
            "sigmoid",
            "tanh",
        ):
            other.append(f"{node.target.__name__} after {source.target}")
    return found, other, ""


def _double_activation(model: nn.Module, spec, norms: set[int], replace: bool) -> None:
    """Name (or, with ``replace``, replace by nn.Identity) the activations that follow
    a converted norm which applies its own."""
    found, other, partial = _followers(model, norms)
    counts: dict[int, int] = {}
    for module in model.modules(remove_duplicate=False):
        counts[id(module)] = counts.get(id(module), 0) + 1
    replaced, kept = [], []
    for name in found:
        parent, _, attribute = name.rpartition(".")
        module = model.get_submodule(name)
        if replace and counts[id(module)] == 1:
            setattr(model.get_submodule(parent), attribute, nn.Identity())
            replaced.append(name)
        else:
            kept.append(f"{name} ({type(module).__name__})")
    kept += other
    if kept or (partial and not replaced):
        advice = (
            "pass replace_activation=True to replace those modules with nn.Identity"
            if not replace
            else "these are used elsewhere or are function calls, left in place"
        )
        warnings.warn(
            f"convert to {spec.name!r}: it brings its own activation; the model now also "
            f"applies {', '.join(kept) or 'possibly an activation after it'} after it, two "
            f"activations in a row; {advice}" + (f" ({partial})" if partial else ""),
            UserWarning,
            stacklevel=3,
        )


def convert(
    model: nn.Module,
    target: str,
    source: Source = None,
    *,
    replace_activation: bool = False,
    **kwargs,
) -> nn.Module:
    """Replace the normalization layers of ``model`` with technique ``target``.

    In place, recursing through containers; returns the model (or the new
    layer, if ``model`` itself is one). A layer reached through several
    parents is replaced once and stays shared.

    ``source`` selects what is replaced: a registry name or alias (its
    technique's torch.nn and normlab layers: ``"bn"`` takes nn.BatchNorm2d,
    normlab.BatchNorm2d, BatchNormNd, ...; an alias naming one class, such as
    ``"batchnorm2d"``, takes that class), a class (it and its twin in the
    other library), or a tuple of these. By default every normalization layer
    with a feature count (not LocalResponseNorm).

    A layer of ``target``'s own technique (``target`` its registry name, or an
    alias naming the layer's class) becomes normlab's twin of its class, built
    with the same arguments and holding the same state (nn.BatchNorm2d ->
    normlab.BatchNorm2d, nn.GroupNorm(3, 6) -> GroupNorm(3, 6),
    nn.LayerNorm((4, 5)) -> LayerNorm((4, 5))): equal state_dict,
    bitwise-equal outputs. Any other
    layer becomes ``normlab.create(target, C, **kwargs)`` for its C, in the
    channels-first form (LayerNorm2d, ...) where it was channels-first and
    ``target`` normalizes the last axis; it takes eps, momentum, affine and
    track_running_stats where its constructor does, and affine parameters,
    running statistics and num_batches_tracked where shapes agree.
    ``kwargs`` override any carried argument. Every replacement keeps the old
    layer's requires_grad, dtype, device and train/eval mode.

    Warns (one UserWarning) naming what the new layers cannot carry (running
    statistics, a momentum the user set, ...), and when no layer matches
    ``source``. A ``target`` that brings its own activation (FRN, EvoNorm) warns
    naming each activation the model applies right after a converted layer (found
    in its traced dataflow), which would now be a second one;
    ``replace_activation=True`` replaces those activation modules with
    ``nn.Identity``. A weight carried across Gemma's unit offset
    (``LMRMSNorm(unit_offset=True)`` scales by 1 + weight) becomes weight ± 1, so
    the scale is kept. An
    unknown target or source name raises KeyError with the choices. A
    channels-last layer (LayerNorm) replaced by a channels-first technique
    (BatchNorm) comes wrapped in :class:`~normlab.norms._layout.FeaturesLast`, so
    that it normalizes the same last axis, for (N, C) and (N, T, C) inputs alike.
    See :func:`to_torch` for the way back.
    """
    spec = _lookup(target, "target")
    named = spec.aliases.get(registry.canonical(target))  # an alias's own builder
    matches = _matcher(_source_classes(source))
    dropped: dict[str, int] = {}
    extended: dict[str, int] = {}
    converted = 0
    given = _given_classes(source)

    def selected(module: nn.Module) -> bool:
        """A layer ``source`` matches, unless it is of a class from outside torch and
        normlab that extends one (its own forward or submodules would be lost)
        and ``source`` does not name that class itself."""
        if not matches(module):
            return False
        cls = type(module)
        if cls.__module__.startswith(("torch.", "normlab.")) or cls in given:
            return True
        name = type(module).__name__
        extended[name] = extended.get(name, 0) + 1
        return False

    made: set[int] = set()

    def make(old: nn.Module) -> nn.Module:
        new = _make(old)
        made.add(id(new))
        return new

    def _make(old: nn.Module) -> nn.Module:
        nonlocal converted
        converted += 1
        twin = _normlab_twin(old, spec)
        if twin is not None and named in (None, twin):
            new = _rebuild(twin, old, kwargs)
            if new is not None:
                return new
        c = num_features_of(old)
        old_last = _is_channels_last(old)
        build = (
            spec.channels_first
            if spec.channels_last and not old_last and spec.channels_first
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
        new = _transfer(old, new)
        if old_last and not spec.channels_last and spec.cls is not nn.Identity:
            # a channels-first technique over the axis the old layer normalized: the last
            new = FeaturesLast(new).train(old.training)
        return new

    result = _replace(model, selected, make)
    _keep_transformer_layers_exact(result)
    if spec.fused_activation and made and result is model:
        _double_activation(result, spec, made, replace_activation)
    if issubclass(spec.cls, CrossIterationBatchNorm):  # each new layer needs its producer
        link_cross_iteration(result)
    if extended:
        warnings.warn(
            "convert: left as they are, layers of classes that extend a normalization "
            "layer (their own forward or submodules would be lost): "
            + ", ".join(f"{name} ({count})" for name, count in extended.items())
            + "; name the class in source= to convert them anyway",
            UserWarning,
            stacklevel=2,
        )
    if not converted and not extended:
        warnings.warn(
            f"convert to {spec.name!r}: no layer matches source {_describe(source)}; "
            "nothing was converted",
            UserWarning,
            stacklevel=2,
        )
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


def to_torch(model: nn.Module) -> nn.Module:
    """Replace every normlab layer that twins a torch.nn class with that class
    (normlab.BatchNorm2d -> nn.BatchNorm2d, LayerNorm, RMSNorm, GroupNorm,
    InstanceNorm1d/2d/3d, LocalResponseNorm, SyncBatchNorm likewise), built with
    the same arguments and holding the identical state: state_dict keys and
    values, requires_grad, dtype, device, train/eval mode. The inverse of
    ``convert(model, technique)`` on a torch.nn model.

    In place, recursing through containers; returns the model (or the new
    layer). Shared layers stay shared. Layers torch.nn has no exact class for
    (BatchNormNd and InstanceNormNd, of any input rank; LayerNorm2d, Ghost
    BatchNorm, every technique torch lacks) are left in place and named in one
    UserWarning.
    """
    kept: dict[str, int] = {}
    notes: dict[str, str] = {}

    def make(old: nn.Module) -> nn.Module:
        cls = _torch_twin(old)
        new = None if cls is None else _rebuild(cls, old)
        if new is not None:
            return new
        name = type(old).__name__
        kept[name] = kept.get(name, 0) + 1
        if name.endswith("Nd"):
            notes[name] = "; any input rank"
        return old

    result = _replace(model, _is_normlab_layer, make)
    if kept:
        warnings.warn(
            "to_torch: torch.nn has no exact class for these normlab layers, left in place: "
            + ", ".join(
                f"{name} ({count} layer{'s' * (count > 1)}{notes.get(name, '')})"
                for name, count in kept.items()
            ),
            UserWarning,
            stacklevel=2,
        )
    return result


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm (torch.nn or normlab, SyncBatchNorm and
    Cross-Iteration BatchNorm too) with a :class:`FrozenBatchNorm2d` holding its
    running statistics, affine and eps.

    In place; returns the model. A BatchNorm without running statistics
    (``track_running_stats=False``) has nothing to freeze and raises.
    """

    def make(old: nn.Module) -> nn.Module:
        if getattr(old, "running_mean", None) is None:
            raise ValueError(f"freeze_batchnorm: {old} keeps no running statistics to freeze")
        return _transfer(old, FrozenBatchNorm2d(old.num_features, eps=old.eps))

    return _replace(model, lambda m: isinstance(m, (_BATCH_NORMS, CrossIterationBatchNorm)), make)


def unfreeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every :class:`FrozenBatchNorm2d` with a trainable BatchNorm
    (:class:`BatchNormNd`, any input rank) starting from its statistics and
    affine. In place; returns the model."""
    return _replace(
        model,
        lambda m: isinstance(m, FrozenBatchNorm2d),
        lambda old: _transfer(old, BatchNormNd(old.num_features, eps=old.eps)),
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
        return _transfer(old, new)

    return _replace(
        model, lambda m: isinstance(m, _BATCH_NORMS) and not isinstance(m, SyncBatchNorm), make
    )
