"""The registry: the one source of a technique's facts. Its name and aliases,
how to build it, and, as data: what its statistics are taken over, where they
come from at inference, whether it fuses its own activation, and which layer
classes (normlab's and the torch.nn ones it twins) are that technique.

For an activation of shape (N, C, H, W) a statistic is taken over a set of
axes (a :class:`StatSet`): the batch (all of N, a virtual sub-batch, or none),
the channels (one, a group, all, or a window of neighbours) and, or not, the
spatial axes. Tables, diagrams and the docs are drawn from this data, never by
hand per technique.

- :func:`create` builds any technique channels-first from its name or an alias;
  :func:`factory` makes a :class:`NormFactory` (features -> layer, in a chosen
  layout), what the model builders take.
- :func:`spec_of` tells which technique a layer is (torch.nn's or normlab's);
  :func:`norm_classes` lists every normalization layer class. The Monitor,
  :func:`~normlab.norms.convert.convert` and the runner's noise injection ask
  these two instead of keeping lists of their own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from torch import nn

from normlab._names import did_you_mean
from normlab.norms._layout import FeaturesLast
from normlab.norms.batch import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormNd,
    BatchRenorm,
    BatchRenorm1d,
    BatchRenorm2d,
    FrozenBatchNorm2d,
    GhostBatchNorm,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    SyncBatchNorm,
)
from normlab.norms.cross_iteration import CrossIterationBatchNorm
from normlab.norms.dyt import DynamicErf, DynamicTanh
from normlab.norms.group import (
    EvoNorm2dS0,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    InstanceNormNd,
    LayerNormCHW,
)
from normlab.norms.layer import LayerNorm, LayerNorm2d, LMRMSNorm, RMSNorm, RMSNorm2d, ScaleNorm
from normlab.norms.response import EvoNorm2dB0, FilterResponseNorm2d, LocalResponseNorm
from normlab.norms.switchable import SwitchableNorm2d

Builder = Callable[..., nn.Module]

# Where a technique's statistics come from at inference (eval mode), see NormSpec.
INFERENCE = ("batch", "running", "sample", "frozen", "none")
LAYOUTS = ("channels_first", "channels_last")


@dataclass(frozen=True)
class StatSet:
    """The axes one statistic is taken over."""

    batch: str = "none"  # "all" | "virtual" | "none"
    channels: str = "one"  # "one" | "group" | "all" | "window"
    spatial: bool = True
    # Pooled with the same axes of the last k training steps' batches (Cross-Iteration BN).
    steps: bool = False

    def _over_steps(self, axes: str) -> str:
        return f"{axes} (last k steps)" if self.steps else axes

    def nchw(self) -> str:
        """For an (N, C, H, W) tensor, e.g. 'N, H, W'."""
        parts = {"all": ["N"], "virtual": ["N/v"], "none": []}[self.batch]
        parts += {"one": [], "group": ["C/G"], "all": ["C"], "window": ["C±k"]}[self.channels]
        parts += ["H", "W"] if self.spatial else []
        return self._over_steps(", ".join(parts))

    def features(self) -> str:
        """For an (N, features) tensor, e.g. 'N'; 'single value' when degenerate."""
        parts = {"all": ["N"], "virtual": ["N/v"], "none": []}[self.batch]
        parts += {"one": [], "group": ["F/G"], "all": ["F"], "window": ["F±k"]}[self.channels]
        return self._over_steps(", ".join(parts) or "single value")


def largest_divisor(num_channels: int, at_most: int) -> int:
    """The largest divisor of ``num_channels`` not above ``at_most`` (at least 1)."""
    return max(d for d in range(1, min(num_channels, at_most) + 1) if num_channels % d == 0)


@dataclass(frozen=True)
class NormSpec:
    """What the registry knows of one technique.

    ``inference`` is where its statistics come from in eval mode, as built by
    default: ``"batch"`` (the batch's, even in eval), ``"running"`` (running
    averages kept in training), ``"sample"`` (each sample's own), ``"frozen"``
    (fixed buffers, never updated) or ``"none"`` (no statistics: identity, DyT).
    A technique that mixes batch and per-sample statistics (EvoNorm-B0,
    Switchable) takes the value of its batch part, ``"running"``: that part
    is what makes it batch-dependent and its eval output differ from training.

    ``fused_activation``: the layer applies its own nonlinearity (FRN's TLU,
    EvoNorm's), so no activation follows it in a model. ``torch_classes``: the
    torch.nn classes that are this technique (base classes: ``_BatchNorm``
    covers BatchNorm1d/2d/3d, SyncBatchNorm and the lazy ones).
    """

    name: str
    cls: type[nn.Module]
    build: Builder  # (num_features, **kwargs) -> module, channels-first
    stats: tuple[StatSet, ...]
    statistics: str  # what is estimated, in words
    formula: str
    train_eval_differ: bool
    paper: str  # authors, year, title
    inference: str  # one of INFERENCE
    aliases: dict[str, Builder | None] = field(default_factory=dict)  # None: the default build
    channels_last: bool = False  # normalizes the last axis, as torch's LayerNorm
    channels_first: Builder | None = None  # its (N, C, *) form, for channels_last techniques
    classes: tuple[type[nn.Module], ...] = ()  # normlab's classes of it (default: (cls,))
    fused_activation: bool = False
    torch_classes: tuple[type[nn.Module], ...] = ()  # the torch.nn classes it twins

    def __post_init__(self) -> None:
        if self.inference not in INFERENCE:
            raise ValueError(f"{self.name}: inference {self.inference!r} not in {INFERENCE}")

    @property
    def torch_twin(self) -> bool:
        """Whether torch.nn has this technique too (``torch_classes``)."""
        return bool(self.torch_classes)

    @property
    def layer_classes(self) -> tuple[type[nn.Module], ...]:
        """Every class whose instances are this technique: normlab's, then torch.nn's."""
        return (*(self.classes or (self.cls,)), *self.torch_classes)

    @property
    def batch_dependent(self) -> bool:
        """Whether, in training, an output depends on the other samples of the batch."""
        return any(s.batch != "none" for s in self.stats)

    @property
    def axes(self) -> str:
        """The axes of an (N, C, H, W) tensor its statistics are taken over."""
        return " + ".join(s.nchw() for s in self.stats) or "none"

    @property
    def axes_features(self) -> str:
        """The axes of an (N, features) tensor its statistics are taken over."""
        return " + ".join(s.features() for s in self.stats) or "none"

    @cached_property
    def parameters(self) -> tuple[str, ...]:
        """Names of its learnable parameters (as built with defaults)."""
        return tuple(name for name, _ in self.build(32).named_parameters())


def default_groups(num_features: int) -> int:
    """A grouped norm's default group count: 32 (Wu & He's default), lowered to the
    largest divisor of C that leaves at least 2 channels per group, so that a group
    is never one channel (which is InstanceNorm): 16 channels make 8 groups, 48 make
    24, 64 and more 32."""
    return largest_divisor(num_features, max(1, min(32, num_features // 2)))


def _group_kwargs(key: str) -> Callable[[int, dict], dict]:
    """Resolve a group-count keyword: :func:`default_groups` unless given; one channel
    per group is named in a UserWarning."""

    def resolve(num_features: int, kwargs: dict) -> dict:
        requested = kwargs.pop(key, None)
        groups = default_groups(num_features) if requested is None else requested
        if isinstance(groups, int) and groups == num_features:
            warnings.warn(
                f"{key}={groups} for {num_features} channels: 1 channel per group, which "
                "normalizes each channel alone (InstanceNorm)",
                UserWarning,
                stacklevel=4,
            )
        return {key: groups, **kwargs}

    return resolve


_num_groups, _groups = _group_kwargs("num_groups"), _group_kwargs("groups")


def _identity(num_features: int, **kwargs) -> nn.Module:
    return nn.Identity()


_SPECS: tuple[NormSpec, ...] = (
    NormSpec(
        "none",
        nn.Identity,
        _identity,
        stats=(),
        statistics="none (identity: the baseline)",
        formula="y = x",
        train_eval_differ=False,
        paper="—",
        inference="none",
        aliases={"identity": None},
    ),
    NormSpec(
        "batchnorm",
        BatchNormNd,
        BatchNormNd,
        stats=(StatSet(batch="all"),),
        statistics="mean, variance",
        formula="y = γ (x − μ_B) / √(σ²_B + ε) + β",
        train_eval_differ=True,
        paper="Ioffe & Szegedy, 2015, Batch Normalization: Accelerating Deep Network "
        "Training by Reducing Internal Covariate Shift",
        inference="running",
        torch_classes=(nn.modules.batchnorm._BatchNorm,),
        aliases={
            "batch": None,
            "bn": None,
            "batch_norm": None,
            "batchnorm1d": BatchNorm1d,
            "batchnorm2d": BatchNorm2d,
            "batchnorm3d": BatchNorm3d,
            "syncbatchnorm": SyncBatchNorm,
            "sync_bn": SyncBatchNorm,
        },
        classes=(BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormNd, SyncBatchNorm),
    ),
    NormSpec(
        "layernorm",
        LayerNorm,
        LayerNorm,
        stats=(StatSet(channels="all", spatial=False),),
        statistics="mean, variance",
        formula="y = γ (x − μ) / √(σ² + ε) + β, over the features",
        train_eval_differ=False,
        paper="Ba, Kiros & Hinton, 2016, Layer Normalization",
        inference="sample",
        torch_classes=(nn.LayerNorm,),
        aliases={
            "layer": None,
            "ln": None,
            "layer_norm": None,
            "layernorm2d": LayerNorm2d,
            "ln2d": LayerNorm2d,
        },
        channels_last=True,
        channels_first=LayerNorm2d,
        classes=(LayerNorm, LayerNorm2d),
    ),
    NormSpec(
        "groupnorm",
        GroupNorm,
        lambda c, **kw: GroupNorm(num_channels=c, **_num_groups(c, kw)),
        stats=(StatSet(channels="group"),),
        statistics="mean, variance",
        formula="y = γ (x − μ_G) / √(σ²_G + ε) + β, per sample and channel group",
        train_eval_differ=False,
        paper="Wu & He, 2018, Group Normalization",
        inference="sample",
        torch_classes=(nn.GroupNorm,),
        aliases={"group": None, "gn": None, "group_norm": None},
    ),
    NormSpec(
        "layernorm_chw",
        LayerNormCHW,
        LayerNormCHW,
        stats=(StatSet(channels="all"),),
        statistics="mean, variance",
        formula="y = γ (x − μ_CHW) / √(σ²_CHW + ε) + β, per sample over channels and space",
        train_eval_differ=False,
        paper="Ba, Kiros & Hinton, 2016, Layer Normalization (over C, H, W, as in Wu & He, 2018)",
        inference="sample",
        aliases={"ln_chw": None, "layer_chw": None},
    ),
    NormSpec(
        "instancenorm",
        InstanceNormNd,
        InstanceNormNd,
        stats=(StatSet(),),
        statistics="mean, variance",
        formula="y = γ (x − μ_nc) / √(σ²_nc + ε) + β",
        train_eval_differ=False,
        paper="Ulyanov, Vedaldi & Lempitsky, 2016, Instance Normalization: The Missing "
        "Ingredient for Fast Stylization",
        inference="sample",
        torch_classes=(nn.modules.instancenorm._InstanceNorm,),
        aliases={
            "instance": None,
            "in": None,
            "instance_norm": None,
            "instancenorm1d": InstanceNorm1d,
            "instancenorm2d": InstanceNorm2d,
            "instancenorm3d": InstanceNorm3d,
        },
        classes=(InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, InstanceNormNd),
    ),
    NormSpec(
        "rmsnorm",
        RMSNorm,
        RMSNorm,
        stats=(StatSet(channels="all", spatial=False),),
        statistics="mean square",
        formula="y = γ x / √(mean(x²) + ε)",
        train_eval_differ=False,
        paper="Zhang & Sennrich, 2019, Root Mean Square Layer Normalization",
        inference="sample",
        torch_classes=(nn.RMSNorm,),
        aliases={"rms": None, "rms_norm": None, "rmsnorm2d": RMSNorm2d},
        channels_last=True,
        channels_first=RMSNorm2d,
        classes=(RMSNorm, RMSNorm2d),
    ),
    NormSpec(
        "rmsnorm_lm",
        LMRMSNorm,
        LMRMSNorm,
        stats=(StatSet(channels="all", spatial=False),),
        statistics="mean square (of the first ⌈p·n⌉ features with partial=p)",
        formula="y = s · x / √(mean(x²) + ε), s = γ or 1 + γ, in float32, cast back "
        "before (Llama) or after (Gemma) the scale",
        train_eval_differ=False,
        paper="Zhang & Sennrich, 2019, Root Mean Square Layer Normalization "
        "(as in Hugging Face transformers' LlamaRMSNorm and GemmaRMSNorm)",
        inference="sample",
        aliases={"lm_rmsnorm": None, "lm_rms": None, "llama_rmsnorm": None},
        channels_last=True,
        channels_first=lambda c, **kw: LMRMSNorm(c, channels_last=False, **kw),
    ),
    NormSpec(
        "lrn",
        LocalResponseNorm,
        lambda c, **kw: LocalResponseNorm(**{"size": 5, **kw}),
        stats=(StatSet(channels="window", spatial=False),),
        statistics="sum of squares of neighbouring channels",
        formula="b_c = a_c / (k + α/n · Σ_{c′ near c} a²_{c′})^β",
        train_eval_differ=False,
        paper="Krizhevsky, Sutskever & Hinton, 2012, ImageNet Classification with Deep "
        "Convolutional Neural Networks",
        inference="sample",
        torch_classes=(nn.LocalResponseNorm,),
        aliases={"local_response": None, "localresponsenorm": None},
    ),
    NormSpec(
        "batchrenorm",
        BatchRenorm,
        BatchRenorm,
        stats=(StatSet(batch="all"),),
        statistics="mean, variance, corrected towards the running ones",
        formula="y = γ ((x − μ_B)/σ_B · r + d) + β, r = clip(σ_B/σ), "
        "d = clip((μ_B − μ)/σ), no gradient through r, d",
        train_eval_differ=True,
        paper="Ioffe, 2017, Batch Renormalization: Towards Reducing Minibatch Dependence "
        "in Batch-Normalized Models",
        inference="running",
        aliases={
            "batch_renorm": None,
            "brn": None,
            "batchrenorm1d": BatchRenorm1d,
            "batchrenorm2d": BatchRenorm2d,
        },
        classes=(BatchRenorm, BatchRenorm1d, BatchRenorm2d),
    ),
    NormSpec(
        "ghostbatchnorm",
        GhostBatchNorm,
        GhostBatchNorm,
        stats=(StatSet(batch="virtual"),),
        statistics="mean, variance per virtual batch",
        formula="batch norm within each virtual batch of v samples",
        train_eval_differ=True,
        paper="Hoffer, Hubara & Soudry, 2017, Train longer, generalize better: closing the "
        "generalization gap in large batch training of neural networks",
        inference="running",
        aliases={
            "ghost_batch": None,
            "ghost": None,
            "gbn": None,
            "ghostbatchnorm1d": GhostBatchNorm1d,
            "ghostbatchnorm2d": GhostBatchNorm2d,
        },
        classes=(GhostBatchNorm, GhostBatchNorm1d, GhostBatchNorm2d),
    ),
    NormSpec(
        "cross_iteration_bn",
        CrossIterationBatchNorm,
        CrossIterationBatchNorm,
        stats=(StatSet(batch="all", steps=True),),
        statistics="mean and mean square of the last k batches, each compensated to the "
        "current weights",
        formula="y = γ (x − μ̄) / √(ν̄ − μ̄² + ε) + β, μ̄, ν̄ averaged over k steps of "
        "μ_{t−τ} + ∂μ_{t−τ}/∂θ · (θ_t − θ_{t−τ}) (ν likewise, ν ≥ μ²)",
        train_eval_differ=True,
        paper="Yao, Cao, Zheng, Huang & Lin, 2021, Cross-Iteration Batch Normalization",
        inference="running",
        aliases={
            "cbn": None,
            "cross_iteration": None,
            "cross_iteration_batchnorm": None,
            "crossiterationbatchnorm": None,
        },
    ),
    NormSpec(
        "frozenbatchnorm",
        FrozenBatchNorm2d,
        FrozenBatchNorm2d,
        stats=(),
        statistics="none (frozen running statistics)",
        formula="y = γ (x − μ_run) / √(σ²_run + ε) + β, all fixed buffers",
        train_eval_differ=False,
        paper="torchvision's FrozenBatchNorm2d (detection fine-tuning practice)",
        inference="frozen",
        aliases={"frozen_batch": None, "frozenbn": None, "frozen_bn": None},
    ),
    NormSpec(
        "frn",
        FilterResponseNorm2d,
        FilterResponseNorm2d,
        stats=(StatSet(),),
        statistics="mean square (+ TLU threshold)",
        formula="y = max(γ x / √(mean_HW(x²) + ε) + β, τ)",
        train_eval_differ=False,
        paper="Singh & Krishnan, 2019, Filter Response Normalization Layer: Eliminating "
        "Batch Dependence in the Training of Deep Neural Networks",
        inference="sample",
        fused_activation=True,
        aliases={"filter_response": None, "filterresponsenorm": None},
    ),
    NormSpec(
        "evonorm_b0",
        EvoNorm2dB0,
        EvoNorm2dB0,
        stats=(StatSet(batch="all"), StatSet()),
        statistics="batch variance, instance variance",
        formula="y = γ x / max(√(σ²_B + ε), v x + √(σ²_I + ε)) + β",
        train_eval_differ=True,
        paper="Liu, Brock, Simonyan & Le, 2020, Evolving Normalization-Activation Layers",
        inference="running",
        fused_activation=True,
        aliases={"evonormb0": None, "evonorm2db0": None},
    ),
    NormSpec(
        "evonorm_s0",
        EvoNorm2dS0,
        lambda c, **kw: EvoNorm2dS0(c, **_groups(c, kw)),
        stats=(StatSet(channels="group"),),
        statistics="group variance",
        formula="y = γ x · sigmoid(v x) / √(σ²_G + ε) + β",
        train_eval_differ=False,
        paper="Liu, Brock, Simonyan & Le, 2020, Evolving Normalization-Activation Layers",
        inference="sample",
        fused_activation=True,
        aliases={"evonorms0": None, "evonorm2ds0": None},
    ),
    NormSpec(
        "switchable",
        SwitchableNorm2d,
        SwitchableNorm2d,
        stats=(StatSet(), StatSet(channels="all"), StatSet(batch="all")),
        statistics="softmax-weighted IN, LN and BN mean and variance",
        formula="y = γ (x − Σ_k w_k μ_k) / √(Σ_k w′_k σ²_k + ε) + β, k ∈ {IN, LN, BN}",
        train_eval_differ=True,
        paper="Luo, Ren, Peng, Zhang & Li, 2018, Differentiable Learning-to-Normalize via "
        "Switchable Normalization",
        inference="running",
        aliases={"sn": None, "switchable_norm": None, "switchablenorm": None},
    ),
    NormSpec(
        "scalenorm",
        ScaleNorm,
        ScaleNorm,
        stats=(StatSet(channels="all", spatial=False),),
        statistics="L2 norm",
        formula="y = g x / max(‖x‖₂, ε)",
        train_eval_differ=False,
        paper="Nguyen & Salazar, 2019, Transformers without Tears: Improving the "
        "Normalization of Self-Attention",
        inference="sample",
        aliases={"scale": None, "scale_norm": None},
        channels_last=True,
        channels_first=lambda c, **kw: ScaleNorm(c, channels_last=False, **kw),
    ),
    NormSpec(
        "dyt",
        DynamicTanh,
        DynamicTanh,
        stats=(),
        statistics="none (tanh with a learned scale)",
        formula="y = γ tanh(α x) + β",
        train_eval_differ=False,
        paper="Zhu, Chen, He, LeCun & Liu, 2025, Transformers without Normalization",
        inference="none",
        aliases={"dynamic_tanh": None, "dynamictanh": None},
        channels_last=True,
        channels_first=lambda c, **kw: DynamicTanh(c, channels_last=False, **kw),
    ),
    NormSpec(
        "derf",
        DynamicErf,
        DynamicErf,
        stats=(),
        statistics="none (erf with a learned scale and shift)",
        formula="y = γ erf(α x + s) + β",
        train_eval_differ=False,
        paper="Chen, Lu, Zhu, Sun & Liu, 2025, Stronger Normalization-Free Transformers",
        inference="none",
        aliases={"dynamic_erf": None, "dynamicerf": None},
        channels_last=True,
        channels_first=lambda c, **kw: DynamicErf(c, channels_last=False, **kw),
    ),
)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _alias_table() -> dict[str, tuple[NormSpec, Builder]]:
    table = {}
    for s in _SPECS:
        table[_key(s.name)] = (s, s.build)
        for alias, builder in s.aliases.items():
            table[_key(alias)] = (s, builder or s.build)
    return table


_ALIASES = _alias_table()


def available() -> list[str]:
    """Registry names of every technique, in registry order ('none' first)."""
    return [s.name for s in _SPECS]


def _lookup(name: str) -> tuple[NormSpec, Builder]:
    key = _key(name)
    if key in _ALIASES:
        return _ALIASES[key]
    hint = did_you_mean(key, _ALIASES, quote=True)
    raise KeyError(f"unknown normalization {name!r}{hint} (techniques: {', '.join(available())})")


def _normalizes(s: NormSpec) -> bool:
    return s.cls is not nn.Identity  # 'none' is the baseline, not a layer to find


def norm_classes() -> tuple[type[nn.Module], ...]:
    """Every normalization layer class normlab knows, in registry order: each
    technique's own classes, then the torch.nn classes it twins (not nn.Identity)."""
    return tuple(cls for s in _SPECS if _normalizes(s) for cls in s.layer_classes)


_BY_CLASS: dict[type, NormSpec] = {
    cls: s for s in _SPECS if _normalizes(s) for cls in s.layer_classes
}


def spec_of(module: nn.Module) -> NormSpec | None:
    """The technique ``module`` is (a torch.nn or normlab layer, or a subclass of
    one: the most derived registered class decides), or None for any other
    module, nn.Identity and wrappers such as FeaturesLast included."""
    for cls in type(module).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    return None


def canonical(name: str) -> str:
    """The one spelling of ``name``: the technique's registry name for itself and its
    plain aliases ('bn' -> 'batchnorm'); for an alias that builds a layer of its own,
    the first alias that builds the same ('syncbatchnorm' -> 'syncbatchnorm',
    'sync_bn' -> 'syncbatchnorm', 'ln2d' -> 'layernorm2d'). Unknown names raise KeyError."""
    spec_, build = _lookup(name)
    if build is spec_.build:
        return spec_.name
    return next(_key(a) for a, b in spec_.aliases.items() if b is build)


def spec(name: str) -> NormSpec:
    """The spec of technique ``name`` (a registry name or an alias)."""
    return _lookup(name)[0]


def create(name: str, num_features: int, **kwargs) -> nn.Module:
    """Build technique ``name`` for ``num_features`` channels (channels-first).

    Generic names ('batch', 'instance', 'group', ...) accept (N, C, *) inputs of
    any rank; 'layer', 'rms', 'scale', 'dyt' and 'derf' normalize the last axis, as
    torch's LayerNorm. Group counts default to 32, lowered to the largest
    divisor of ``num_features`` not above it. ``kwargs`` go to the constructor.
    """
    _, build = _lookup(name)
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(
            f"create({name!r}, {num_features!r}): the feature count must be a positive integer"
        )
    return build(num_features, **kwargs)


class NormFactory:
    """A callable ``features -> nn.Module`` building one technique in one layout
    (what :func:`factory` returns and the model builders take).

    ``layout`` is ``"channels_first"`` for (N, C, *) tensors: techniques that
    normalize the last axis take their channels-first form (LayerNorm2d,
    RMSNorm2d, ScaleNorm, DynamicTanh and DynamicErf with ``channels_last=False``); or
    ``"channels_last"`` for (..., C) tensors: channels-first techniques come
    wrapped in :class:`FeaturesLast`. ``kwargs`` go to every layer's constructor.
    """

    def __init__(self, name: str, layout: str = "channels_first", **kwargs) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        spec_, build = _lookup(name)
        self.name = canonical(name)
        self.spec = spec_
        self.layout = layout
        self.kwargs = dict(kwargs)
        native_last = spec_.channels_last and build is not spec_.channels_first
        if spec_.cls is nn.Identity:
            self._build, self._wrap = build, False
        elif layout == "channels_first":
            to_first = native_last and build is spec_.build and spec_.channels_first is not None
            self._build, self._wrap = (spec_.channels_first if to_first else build), False
        else:
            self._build, self._wrap = build, not native_last

    def __call__(self, features: int) -> nn.Module:
        layer = self._build(features, **self.kwargs)
        return FeaturesLast(layer) if self._wrap else layer

    def with_layout(self, layout: str) -> NormFactory:
        """The same technique and arguments in ``layout``."""
        return NormFactory(self.name, layout, **self.kwargs)

    def __reduce__(self):
        return _factory_from, (self.name, self.layout, self.kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NormFactory):
            return NotImplemented
        return (self.name, self.layout, self.kwargs) == (other.name, other.layout, other.kwargs)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"NormFactory({self.name!r}, layout={self.layout!r}{args})"


def _factory_from(name: str, layout: str, kwargs: dict) -> NormFactory:
    return NormFactory(name, layout, **kwargs)


def factory(name: str, layout: str = "channels_first", **kwargs) -> NormFactory:
    """A :class:`NormFactory` for technique ``name`` (a registry name or an alias)
    in ``layout`` (``"channels_first"`` or ``"channels_last"``); ``kwargs`` go to
    each layer's constructor. Unknown names raise KeyError here, not at first use."""
    return NormFactory(name, layout, **kwargs)
