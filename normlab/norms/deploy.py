"""BatchNorm for deployment: recompute running statistics exactly over given
batches ("precise BN"), and fold inference-time BatchNorms into the preceding
Conv/Linear."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from normlab.norms import _graph
from normlab.norms.batch import BatchRenorm, FrozenBatchNorm2d, GhostBatchNorm
from normlab.norms.cross_iteration import CrossIterationBatchNorm

# BatchNorms whose eval is y = (x - running_mean) / sqrt(running_var + eps) * w + b
_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, CrossIterationBatchNorm)
_FOLD_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_FOLDABLE_NORMS = (*_BATCH_NORMS, FrozenBatchNorm2d, BatchRenorm)


def _first_element(model: nn.Module, batch: Any) -> Any:
    return model(batch[0] if isinstance(batch, (tuple, list)) else batch)


class _Moments:
    """Per-channel count, mean and sum of squared deviations (M2) in float64,
    combined across calls with Chan et al.'s parallel formula (exact, no
    cancellation of a sum of squares)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, input: Tensor) -> None:
        x = input.detach().transpose(0, 1).reshape(input.shape[1], -1).double()
        n = x.shape[1]
        if n == 0:
            return
        mean = x.mean(dim=1)
        m2 = (x - mean[:, None]).square().sum(dim=1)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> nn.Module:
    """Recompute the running statistics of every BatchNorm in ``model`` exactly over
    ``batches`` ("precise BN", Wu & Johnson 2021; fvcore's PreciseBN), in place;
    returns the model.

    Every ``torch.nn.modules.batchnorm._BatchNorm`` with running statistics is
    recalibrated: torch.nn's and normlab's BatchNorm1d/2d/3d, BatchNormNd, both
    SyncBatchNorms and Cross-Iteration BatchNorm (its eval is BatchNorm's). Each
    batch runs through the model in train mode, under
    ``torch.no_grad``, so each BatchNorm normalizes with its batch's statistics
    and the input of a later BatchNorm does not depend on an earlier one's
    running statistics, as in training. The input each BatchNorm receives is
    accumulated per channel in float64, and at the end

    - ``running_mean`` = the mean over all values of all batches (N and the
      spatial axes, every batch, weighted by its size),
    - ``running_var`` = the *unbiased* variance over those same values around
      that mean: sum((x - mean)^2) / (total count - 1), so the spread between
      batch means counts too (not the mean of the per-batch variances),

    combined exactly across batches (Chan's parallel formula) and cast to the
    buffers' dtype. A layer called twice per forward counts both inputs.

    ``batches`` yields inputs, or tuples/lists whose first element is the input
    (``(input, target)``); ``forward(model, batch)`` replaces that call (dict
    batches, keyword inputs, moving to a device). Dropout and any other
    train-mode behaviour is active during the passes, as in training.

    Afterwards every module's train/eval mode is as it was, and every buffer
    other than the recalibrated ``running_mean``/``running_var`` (so
    ``num_batches_tracked``, which counts training steps, and the running
    statistics of BatchRenorm, GhostBatchNorm, tracked InstanceNorm) holds its
    old value; momentum and parameters are not touched and no gradient is
    made. On an exception the whole state is restored before it propagates.

    BatchRenorm and GhostBatchNorm are not recalibrated (Batch Renorm's train
    forward reads its running statistics; Ghost BatchNorm's estimate
    virtual-batch statistics) and are named in a warning, as are BatchNorms
    that no batch reached. Under a process group of several ranks, the
    statistics are those of the batches this process sees (a SyncBatchNorm's
    train forward still communicates, so every rank must run it): give every
    rank the same batches, or recalibrate on one and broadcast.

    Raises ValueError if ``batches`` is empty; warns and returns the model
    unchanged if it has no BatchNorm with running statistics.
    """
    call = forward or _first_element
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, _BATCH_NORMS) and m.running_mean is not None and m.running_var is not None
    }
    skipped = [
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if isinstance(m, (BatchRenorm, GhostBatchNorm))
    ]
    if skipped:
        warnings.warn(
            "recalibrate_batchnorm: not recalibrated (not a BatchNorm's running statistics): "
            + ", ".join(skipped),
            UserWarning,
            stacklevel=2,
        )
    if not layers:
        warnings.warn(
            "recalibrate_batchnorm: the model has no BatchNorm with running statistics; "
            "nothing was recalibrated",
            UserWarning,
            stacklevel=2,
        )
        return model

    moments = {id(m): _Moments() for m in layers.values()}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        moments[id(module)].add(args[0] if args else kwargs["input"])

    modes = [(m, m.training) for m in model.modules()]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers.values()]
    seen = 0
    try:
        model.train()
        with torch.no_grad():
            for batch in batches:
                call(model, batch)
                seen += 1
        if not seen:
            raise ValueError("recalibrate_batchnorm: batches is empty; nothing to compute from")
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        for module, training in modes:
            module.training = training

    unreached = []
    with torch.no_grad():
        for name, layer in layers.items():
            stats = moments[id(layer)]
            if stats.mean is None or stats.m2 is None:
                unreached.append(name)
                continue
            var = stats.m2 / (stats.count - 1) if stats.count > 1 else torch.zeros_like(stats.m2)
            layer.running_mean.copy_(stats.mean)
            layer.running_var.copy_(var)
    if unreached:
        warnings.warn(
            "recalibrate_batchnorm: no batch reached these BatchNorms, left as they were: "
            + ", ".join(unreached),
            UserWarning,
            stacklevel=2,
        )
    return model


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _edge(parent: nn.Module, key: str, last: bool) -> tuple[nn.Module, str]:
    """Where the last (or first) module of ``parent._modules[key]`` sits, through
    nested plain nn.Sequentials: (its container, its key)."""
    module = parent._modules[key]
    while module is not None and _plain_sequential(module) and len(module._modules):
        parent, key = module, list(module._modules)[-1 if last else 0]
        module = parent._modules[key]
    return parent, key


def _affine_of(norm: nn.Module) -> tuple[Tensor, Tensor] | str:
    """(scale, shift) in float64 with norm(x) = x * scale + shift per channel, or
    why ``norm`` does not compute such a map."""
    if norm.training:
        return "in training mode"
    mean, var = getattr(norm, "running_mean", None), getattr(norm, "running_var", None)
    if mean is None or var is None:
        return "keeps no running statistics"
    scale = torch.rsqrt(var.double() + norm.eps)
    shift = -mean.double() * scale
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if weight is not None:
        scale, shift = scale * weight.double(), shift * weight.double()
    if bias is not None:
        shift = shift + bias.double()
    return scale, shift


def _fold(layer: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """layer's output y becomes y * scale + shift, channel on its weight's dim 0."""
    weight = layer.weight
    shape = (-1,) + (1,) * (weight.dim() - 1)
    old_bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    new_weight = weight.double() * scale.to(weight.device).reshape(shape)
    new_bias = old_bias * scale + shift
    weight.copy_(new_weight)
    if layer.bias is None:
        layer.bias = nn.Parameter(
            torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device),
            requires_grad=weight.requires_grad,
        )
    layer.bias.copy_(new_bias)


def _traced_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(layer name, norm name) where the traced graph shows a Conv/Linear whose output
    feeds nothing but a foldable norm, each called once; and norm name -> why a norm
    the graph calls is not such a pair. Raises whatever tracing raises."""
    graph = _graph.trace(model, (*_FOLDABLE_NORMS, *_FOLD_INTO))
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, reasons = [], {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _FOLDABLE_NORMS):
            continue
        source = _graph.input_node(node)
        layer = modules.get(source.target) if getattr(source, "op", "") == "call_module" else None
        if layer is None or type(layer) not in _FOLD_INTO:
            reasons[node.target] = "not directly after a Conv/Linear"
        elif len(source.users) > 1:
            reasons[node.target] = f"{source.target}'s output is used elsewhere too"
        elif calls[node.target] > 1 or calls[source.target] > 1:
            reasons[node.target] = "it or the layer before it is called more than once"
        else:
            pairs.append((source.target, node.target))
    return pairs, reasons


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, norm name) of neighbours in plain nn.Sequentials, through nesting."""
    names = {id(m): name for name, m in model.named_modules()}
    pairs = []
    for container in list(model.modules()):
        if not _plain_sequential(container):
            continue
        for before, after in itertools.pairwise(list(container._modules)):
            holder, key = _edge(container, after, last=False)
            layer_holder, layer_key = _edge(container, before, last=True)
            layer, norm = layer_holder._modules[layer_key], holder._modules[key]
            if isinstance(norm, _FOLDABLE_NORMS) and type(layer) in _FOLD_INTO:
                pairs.append((names[id(layer)], names[id(norm)]))
    return pairs


def _hooked(module: nn.Module) -> bool:
    """Whether a hook can change what the module computes or outputs (old-style
    weight_norm and spectral_norm recompute the weight in a forward pre-hook)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or getattr(module, "_forward_hooks_with_kwargs", None)
        or torch.nn.utils.parametrize.is_parametrized(module)
    )


def _output_ranks(model: nn.Module, layers: list[nn.Module], example: Any) -> dict[int, int]:
    """id(layer) -> the rank of its output on ``example`` (one forward, no grad)."""
    ranks: dict[int, int] = {}

    def record(module, args, output) -> None:
        ranks[id(module)] = output.dim()

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            _first_element(model, example) if isinstance(example, tuple | list) else model(example)
    finally:
        for handle in handles:
            handle.remove()
    return ranks


def _why_not(model, layer, norm, shared: set[int], ranks: dict[int, int] | None) -> str | None:
    """Why folding ``norm`` into ``layer`` could change the model's output, or None."""
    if any(id(p) in shared for p in layer.parameters(recurse=False)):
        return "the layer before it shares its weight with another layer"
    if _hooked(layer) or _hooked(norm):
        return "a hook or parametrization transforms it or the layer before it"
    channels = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    if channels != norm.num_features:
        return f"{norm.num_features} features after {channels} output channels"
    if isinstance(layer, nn.Linear):
        if ranks is None:
            return (
                "a Linear puts its features last and a BatchNorm at dim 1, which agree only "
                "on (N, features) inputs: pass example= an input to fold it"
            )
        if ranks.get(id(layer)) != 2:
            return f"the Linear's output has {ranks.get(id(layer), '?')} dims, its features last"
    affine = _affine_of(norm)
    return affine if isinstance(affine, str) else None


def fold_batchnorm(model: nn.Module, example: Any = None) -> nn.Module:
    """Fold every inference-time affine norm that directly follows a Conv1d/2d/3d or
    Linear into that layer's weight and bias, replacing the norm with
    ``nn.Identity``. In place; returns the model.

    Folded: BatchNorms (torch.nn's and normlab's, any ``_BatchNorm``, and
    Cross-Iteration BatchNorm) in eval mode with running statistics,
    :class:`FrozenBatchNorm2d`, and :class:`BatchRenorm` in eval; each computes
    ``x * s + t`` per channel with ``s = weight / sqrt(running_var + eps)``,
    ``t = bias - running_mean * s``, so the layer's weight becomes ``W * s`` (per
    output channel) and its bias ``b * s + t`` (``t`` for a layer without bias,
    which gets one). Computed in float64 and cast to the layer's dtype; the eval
    output equals the original's up to float rounding.

    The pairs come from the model's dataflow: a ``torch.fx`` trace (as torch's own
    fusers find them) shows where a layer's output feeds nothing but a norm, in any
    forward (``self.bn1(self.conv1(x))`` too); a model that cannot be traced is
    searched for neighbours in plain ``nn.Sequential`` s only, and says so. A pair is
    folded only where the fold cannot change the output, and left, named with the
    reason in one UserWarning, where it could: the layer's output also used
    elsewhere, either module called twice or registered twice, the layer's weight
    or bias shared with another layer, a hook or parametrization on either (old-style
    ``weight_norm``/``spectral_norm`` included), a layer that is not exactly
    Conv1d/2d/3d or Linear, features that do not match. A Linear's features are its
    output's last axis and a BatchNorm's are dim 1: they are the same only for
    (N, features) outputs, so Linear → BatchNorm pairs fold only when ``example``
    (an input, or a tuple whose first element is one) shows the Linear's output
    has two dimensions.

    A model in training mode raises ValueError: folding is for inference.
    """
    if model.training:
        raise ValueError(
            "fold_batchnorm: the model is in training mode; folding is for inference, "
            "call model.eval() first"
        )
    try:
        pairs, reasons = _traced_pairs(model)
        untraced = ""
    except Exception as e:  # any tracing failure: data-dependent control flow, ...
        pairs, reasons = _sequential_pairs(model), {}
        untraced = f"{_graph.untraceable(e)}, so only nn.Sequential neighbours were searched"
    modules = dict(model.named_modules())
    registered: dict[int, int] = {}
    for module in model.modules(remove_duplicate=False):
        registered[id(module)] = registered.get(id(module), 0) + 1
    owners: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    shared = {pid for pid, count in owners.items() if count > 1}
    linears = [modules[a] for a, _ in pairs if isinstance(modules[a], nn.Linear)]
    ranks = _output_ranks(model, linears, example) if example is not None and linears else None
    folded: set[int] = set()
    with torch.no_grad():
        for layer_name, norm_name in pairs:
            layer, norm = modules[layer_name], modules[norm_name]
            if registered[id(layer)] > 1 or registered[id(norm)] > 1:
                reasons[norm_name] = "it or the layer before it is used in several places"
                continue
            why = _why_not(model, layer, norm, shared, ranks)
            if why is not None:
                reasons[norm_name] = why
                continue
            _fold(layer, *_affine_of(norm))
            folded.add(id(norm))
            parent, _, attribute = norm_name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, nn.Identity())
    left = [
        f"{name} ({type(m).__name__}: "
        f"{reasons.get(name, untraced or 'not directly after a Conv/Linear')})"
        for name, m in modules.items()
        if isinstance(m, _FOLDABLE_NORMS) and id(m) not in folded
    ]
    if left:
        warnings.warn(
            "fold_batchnorm: left unfolded: " + ", ".join(left), UserWarning, stacklevel=2
        )
    return model
