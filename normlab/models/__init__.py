"""Model builders that take any normalization technique, by name or as a factory.

Every builder takes ``norm=``, a norm factory (the timm convention): a
registry name or alias (``"none"`` for no normalization), turned once into a
:class:`~normlab.norms.registry.NormFactory` with the extra ``norm_kwargs``
(which go to every normalization layer's constructor); or any callable from a
feature count to a module (a ``NormFactory``, ``nn.BatchNorm2d``, a lambda),
with no ``norm_kwargs``. A ``NormFactory`` is put in the layout the model
needs (channels-first in mlp, cnn and resnet, channels-last in the
transformer); another callable is used as is. The builders also take
``norm_position`` (``"pre"``: between the linear map and the activation, as in
the BatchNorm paper; ``"post"``: after the activation), an initialization
scheme (``"small-gaussian"`` with ``init_std``, ``"kaiming"``, ``"xavier"``)
and ``init_scale``, a multiplier of every initial weight.

What a norm is, is decided from the built module (``registry.spec_of``), so
names, aliases and user factories behave alike: an ``nn.Identity`` norm is left
out and makes the convolutions of :func:`cnn` keep their bias; a technique that
fuses its own activation (FRN with its TLU, EvoNorm-B0/S0: the registry's
``fused_activation``) takes the place of the norm and the activation, in either
``norm_position``, and in the ResNet block's residual branch (the activation
after the addition stays). mlp, cnn and resnet link each Cross-Iteration
BatchNorm to the linear map or convolution that feeds it
(:func:`~normlab.norms.cross_iteration.link_cross_iteration`).

- :func:`mlp` — fully connected; the BatchNorm paper's network is
  ``mlp(784, 10, depth=3, width=100, activation="sigmoid")``.
- :func:`cnn` — conv-norm-activation blocks with pooling, for (C, H, W) images.
- :func:`resnet` — a small ResNet (basic blocks) for 28x28 and 32x32 images.
- :func:`transformer` — a tiny patch transformer, where the channels-last
  techniques (LayerNorm, RMSNorm, ScaleNorm, DynamicTanh, DynamicErf) compete; its
  ``norm_position`` places them: pre, post, sandwich, peri, deepnorm or lns
  (:class:`TransformerBlock`).
  It puts no activation after its norms, so ``fused_activation`` changes nothing
  there: FRN or EvoNorm, wrapped channels-last, bring their nonlinearity with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms import registry
from normlab.norms._layout import FeaturesLast
from normlab.norms.cross_iteration import link_cross_iteration
from normlab.norms.qk import QKNorm

NormArg = str | Callable[[int], nn.Module]

ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}
INITS = ("small-gaussian", "kaiming", "xavier", "default")
POSITIONS = ("pre", "post")
# The transformer's placements (TransformerBlock's docstring has each formula and paper).
TRANSFORMER_POSITIONS = ("pre", "post", "peri", "sandwich", "deepnorm", "lns")


def _choice(kind: str, value: str, options) -> str:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(options)}")
    return value


def norm_factory(
    norm: NormArg, layout: str = "channels_first", **norm_kwargs
) -> Callable[[int], nn.Module]:
    """The factory (features -> module) a builder's ``norm=`` stands for: a name
    becomes ``registry.factory(norm, layout, **norm_kwargs)``; a NormFactory is put
    in ``layout``; any other callable is returned as is. ``norm_kwargs`` only go
    with a name: with a callable they raise TypeError (pass them to the factory)."""
    if isinstance(norm, str):
        return registry.factory(norm, layout, **norm_kwargs)
    if not callable(norm):
        raise TypeError(
            f"norm must be a technique name or a callable from features to a module, got {norm!r}"
        )
    if norm_kwargs:
        raise TypeError(
            f"norm keyword arguments {', '.join(sorted(norm_kwargs))} only go with a norm "
            f"given by name; {norm!r} is a factory: give them to it"
        )
    if isinstance(norm, registry.NormFactory) and norm.layout != layout:
        return norm.with_layout(layout)
    return norm


def fuses_activation(norm: nn.Module) -> bool:
    """Whether the built norm applies its own activation (registry ``fused_activation``),
    looking through a :class:`FeaturesLast` wrapper."""
    spec = registry.spec_of(norm.norm if isinstance(norm, FeaturesLast) else norm)
    return spec is not None and spec.fused_activation


def _block(linear: nn.Module, norm: nn.Module, activation: nn.Module, position: str) -> list:
    if isinstance(norm, nn.Identity):
        return [linear, activation]
    if fuses_activation(norm):  # a normalization-activation layer: no second activation
        return [linear, norm]
    return [linear, norm, activation] if position == "pre" else [linear, activation, norm]


def _projections(module: nn.Module) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of each linear map a module owns itself: a Linear's or Conv's,
    and nn.MultiheadAttention's packed q, k, v projection (``in_proj_weight``, or the
    three separate ones), a bare Parameter that no Linear holds."""
    if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
        return [(module.weight, module.bias)]
    if isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:
            return [(module.in_proj_weight, module.in_proj_bias)]
        return [(getattr(module, f"{x}_proj_weight"), None) for x in "qkv"]
    return []


def initialize(model: nn.Module, scheme: str = "default", std: float = 0.1, scale: float = 1.0):
    """Initialize every linear map's weight of ``model`` (Linear, Conv, and an
    nn.MultiheadAttention's q, k, v projection) by ``scheme``, then multiply it by
    ``scale``; biases to zero (except with ``"default"``, torch's own init)."""
    _choice("init", scheme, INITS)
    with torch.no_grad():
        for module in model.modules():
            for weight, bias in _projections(module):
                if scheme == "small-gaussian":
                    nn.init.normal_(weight, 0.0, std)
                elif scheme == "kaiming":
                    nn.init.kaiming_normal_(weight, nonlinearity="relu")
                elif scheme == "xavier":
                    nn.init.xavier_normal_(weight)
                weight.mul_(scale)
                if bias is not None and scheme != "default":
                    bias.zero_()
    return model


def mlp(
    in_features: int,
    num_classes: int,
    depth: int = 3,
    width: int = 100,
    activation: str = "sigmoid",
    norm: NormArg = "none",
    norm_position: str = "pre",
    init: str = "small-gaussian",
    init_std: float = 0.1,
    init_scale: float = 1.0,
    **norm_kwargs,
) -> nn.Sequential:
    """Flatten, then ``depth`` hidden layers of ``width`` units (linear, norm,
    activation), then a linear classifier."""
    if depth < 1 or width < 1:
        raise ValueError(f"mlp: depth and width must be >= 1, got {depth} and {width}")
    act = ACTIVATIONS[_choice("activation", activation, ACTIVATIONS)]
    _choice("norm_position", norm_position, POSITIONS)
    make_norm = norm_factory(norm, "channels_first", **norm_kwargs)
    layers: list[nn.Module] = [nn.Flatten()]
    features = in_features
    for _ in range(depth):
        norm_module = make_norm(width)
        layers += _block(nn.Linear(features, width), norm_module, act(), norm_position)
        features = width
    layers.append(nn.Linear(width, num_classes))
    return link_cross_iteration(initialize(nn.Sequential(*layers), init, init_std, init_scale))


def cnn(
    in_channels: int,
    num_classes: int,
    channels: tuple[int, ...] = (16, 32),
    activation: str = "relu",
    norm: NormArg = "batchnorm",
    norm_position: str = "pre",
    init: str = "kaiming",
    init_std: float = 0.1,
    init_scale: float = 1.0,
    **norm_kwargs,
) -> nn.Sequential:
    """Per stage: conv 3x3, norm, activation, 2x2 max-pool; then global average
    pooling and a linear classifier. For (C, H, W) inputs. The convolutions have
    a bias only without normalization (an nn.Identity norm)."""
    act = ACTIVATIONS[_choice("activation", activation, ACTIVATIONS)]
    _choice("norm_position", norm_position, POSITIONS)
    make_norm = norm_factory(norm, "channels_first", **norm_kwargs)
    layers: list[nn.Module] = []
    previous = in_channels
    for c in channels:
        norm_module = make_norm(c)
        conv = nn.Conv2d(previous, c, 3, padding=1, bias=isinstance(norm_module, nn.Identity))
        layers += [*_block(conv, norm_module, act(), norm_position), nn.MaxPool2d(2)]
        previous = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
    return link_cross_iteration(initialize(nn.Sequential(*layers), init, init_std, init_scale))


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-norm-act-conv-norm plus a shortcut, then act.
    A norm that fuses its activation (FRN, EvoNorm) replaces the first norm-act
    pair; the activation after the addition stays."""

    def __init__(
        self, cin: int, cout: int, stride: int, norm: NormArg, activation: type, **norm_kwargs
    ) -> None:
        super().__init__()
        make_norm = norm_factory(norm, "channels_first", **norm_kwargs)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = make_norm(cout)
        self.act = activation()
        self.fused = fuses_activation(self.norm1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = make_norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(self.conv1(x))
        if not self.fused:
            out = self.act(out)
        return self.act(self.norm2(self.conv2(out)) + self.shortcut(x))


def resnet(
    in_channels: int,
    num_classes: int,
    widths: tuple[int, ...] = (16, 32, 64),
    blocks_per_stage: int = 1,
    activation: str = "relu",
    norm: NormArg = "batchnorm",
    init: str = "kaiming",
    init_std: float = 0.1,
    init_scale: float = 1.0,
    **norm_kwargs,
) -> nn.Sequential:
    """A small ResNet: a 3x3 stem, then per width ``blocks_per_stage`` basic
    blocks (the first of each later stage with stride 2), global pooling, linear."""
    act = ACTIVATIONS[_choice("activation", activation, ACTIVATIONS)]
    make_norm = norm_factory(norm, "channels_first", **norm_kwargs)
    stem_norm = make_norm(widths[0])
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
        stem_norm,
        *([] if fuses_activation(stem_norm) else [act()]),
    ]
    previous = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(previous, width, stride, make_norm, act))
            previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
    return link_cross_iteration(initialize(nn.Sequential(*layers), init, init_std, init_scale))


class QKNormAttention(nn.Module):
    """Multi-head self-attention with QK-norm (:class:`~normlab.norms.qk.QKNorm`): q, k, v
    projected by one linear map, q and k normalized per head over the head dimension,
    then ``F.scaled_dot_product_attention`` (scale 1/sqrt(head_dim)) and an output map."""

    def __init__(self, dim: int, heads: int, qk_norm: str | Callable = "rmsnorm") -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qk_norm = QKNorm(self.head_dim, qk_norm)
        self.out_proj = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.qk_norm(q, k)
        return q, k, v

    def logits(self, x: Tensor) -> Tensor:
        """The unscaled attention logits q·k, (B, heads, T, T)."""
        q, k, _ = self._qkv(x)
        return q @ k.transpose(-2, -1)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """A transformer block: two residual sublayers f, attention then an MLP, each with its
    own norms, placed by ``position`` (x is the residual stream):

    - ``"pre"`` (Xiong et al., 2020, "On Layer Normalization in the Transformer
      Architecture"; GPT-2, ViT): x ← x + f(norm(x)).
    - ``"post"`` (Vaswani et al., 2017, "Attention Is All You Need"): x ← norm(x + f(x)).
    - ``"sandwich"`` (Sandwich-LN; Ding et al., 2021, "CogView: Mastering Text-to-Image
      Generation via Transformers"): x ← x + norm_out(f(norm_in(x))).
    - ``"peri"`` (Peri-LN; Kim et al., 2025, "Peri-LN: Revisiting Normalization Layer in
      the Transformer Architecture"; as in Gemma 2): x ← x + norm_out(f(norm_in(x))), the
      same block as ``"sandwich"``. They differ in the model around the blocks: Peri-LN
      also normalizes the embedding, which :class:`PatchTransformer` does for ``"peri"``
      only.
    - ``"deepnorm"`` (DeepNorm; Wang et al., 2022, "DeepNet: Scaling Transformers to 1,000
      Layers"): post-norm with the residual weighted up, x ← norm(α·x + f(x)),
      α = (2N)^(1/4) for a stack of N blocks (the encoder-only values), and the sublayers'
      weights initialized down by β = (8N)^(-1/4) (:meth:`deepnorm_init_`, run here).
    - ``"lns"`` (LayerNorm Scaling; Sun et al., 2025, "The Curse of Depth in Large Language
      Models"): pre-norm whose norm outputs in block l (1-based) are scaled by 1/√l,
      x ← x + f(norm(x)/√l).

    ``layer`` (l) and ``depth`` (N) place the block in its stack; only ``"deepnorm"`` and
    ``"lns"`` read them. ``norm1``/``norm2`` are the attention's and the MLP's norm (their
    input norm, or the norm after the addition in post and deepnorm); ``norm1_out`` and
    ``norm2_out`` the output norms of sandwich and peri. ``qk_norm=True`` uses
    :class:`QKNormAttention` (RMSNorm QK-norm) instead of ``nn.MultiheadAttention``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: int,
        norm: NormArg,
        position: str = "pre",
        qk_norm: bool = False,
        layer: int = 1,
        depth: int = 1,
        **norm_kwargs,
    ) -> None:
        super().__init__()
        self.position = _choice("norm_position", position, TRANSFORMER_POSITIONS)
        if not 1 <= layer <= depth:
            raise ValueError(
                f"TransformerBlock: layer must be in 1..depth (depth={depth}), got {layer}"
            )
        self.layer, self.depth = layer, depth
        deep = position == "deepnorm"
        self.alpha = (2 * depth) ** 0.25 if deep else 1.0  # the residual's weight
        self.beta = (8 * depth) ** -0.25 if deep else None  # the sublayers' initial gain
        self.scale = layer**-0.5 if position == "lns" else 1.0  # on the norms' outputs
        make_norm = norm_factory(norm, "channels_last", **norm_kwargs)
        self.norm1 = make_norm(dim)
        self.attention = (
            QKNormAttention(dim, heads)
            if qk_norm
            else nn.MultiheadAttention(dim, heads, batch_first=True)
        )
        self.norm2 = make_norm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )
        if position in ("sandwich", "peri"):
            self.norm1_out = make_norm(dim)
            self.norm2_out = make_norm(dim)
        if deep:
            self.deepnorm_init_()

    @torch.no_grad()
    def deepnorm_init_(self, gain: float = 1.0) -> None:
        """DeepNet's initialization of the sublayers (Wang et al., 2022, Figure 2):
        Xavier-normal with gain β·``gain`` for the value and output projections and both
        MLP matrices, gain ``gain`` for the query and key projections (each d×d part of
        the packed q, k, v projection on its own); biases unchanged."""
        if self.beta is None:
            raise ValueError(
                f"TransformerBlock: deepnorm_init_ needs position 'deepnorm', got {self.position!r}"
            )
        attention = self.attention
        packed = (
            attention.qkv.weight
            if isinstance(attention, QKNormAttention)
            else attention.in_proj_weight
        )
        query, key, value = packed.chunk(3, 0)
        for weight in (query, key):
            nn.init.xavier_normal_(weight, gain=gain)
        for weight in (value, attention.out_proj.weight, self.mlp[0].weight, self.mlp[2].weight):
            nn.init.xavier_normal_(weight, gain=self.beta * gain)

    def extra_repr(self) -> str:
        return f"position={self.position!r}, layer={self.layer}, depth={self.depth}"

    def _attend(self, x: Tensor) -> Tensor:
        if isinstance(self.attention, QKNormAttention):
            return self.attention(x)
        return self.attention(x, x, x, need_weights=False)[0]

    def _skip(self, x: Tensor) -> Tensor:
        return x if self.alpha == 1 else self.alpha * x

    def _normed(self, norm: nn.Module, x: Tensor) -> Tensor:
        return norm(x) if self.scale == 1 else norm(x) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        if self.position in ("post", "deepnorm"):
            x = self.norm1(self._skip(x) + self._attend(x))
            return self.norm2(self._skip(x) + self.mlp(x))
        if self.position in ("sandwich", "peri"):
            x = x + self.norm1_out(self._attend(self.norm1(x)))
            return x + self.norm2_out(self.mlp(self.norm2(x)))
        x = x + self._attend(self._normed(self.norm1, x))
        return x + self.mlp(self._normed(self.norm2, x))


class PatchTransformer(nn.Module):
    """Patch embedding, learned positions, ``depth`` blocks with the norm placement
    ``position`` (:class:`TransformerBlock`), a final norm, mean pool, linear head.
    The final norm is there where the blocks leave the residual stream unnormalized
    (pre, lns, sandwich, peri), not after post and deepnorm blocks, which end in a
    norm. ``"peri"`` also normalizes the embedded tokens (patches plus positions)
    before the first block: Peri-LN's embedding norm, absent from ``"sandwich"``."""

    def __init__(
        self,
        in_channels,
        image_size,
        num_classes,
        patch,
        dim,
        depth,
        heads,
        mlp_ratio,
        norm: NormArg,
        position: str = "pre",
        qk_norm: bool = False,
        **norm_kwargs,
    ) -> None:
        super().__init__()
        make_norm = norm_factory(norm, "channels_last", **norm_kwargs)
        if image_size % patch:
            raise ValueError(f"transformer: image size {image_size} not divisible by patch {patch}")
        if dim % heads:
            raise ValueError(f"transformer: dim {dim} not divisible by heads {heads}")
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.position = nn.Parameter(torch.randn(1, tokens, dim) / math.sqrt(dim))
        self.embed_norm = make_norm(dim) if position == "peri" else nn.Identity()
        self.blocks = nn.Sequential(
            *(
                TransformerBlock(
                    dim, heads, mlp_ratio, make_norm, position, qk_norm, layer=i + 1, depth=depth
                )
                for i in range(depth)
            )
        )
        ends_normalized = position in ("post", "deepnorm")
        self.norm = nn.Identity() if ends_normalized else make_norm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed_norm(self.embed(x).flatten(2).transpose(1, 2) + self.position)
        return self.head(self.norm(self.blocks(tokens)).mean(1))


def transformer(
    in_channels: int,
    num_classes: int,
    image_size: int = 28,
    patch: int = 7,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 2,
    norm: NormArg = "layernorm",
    norm_position: str = "pre",
    init: str = "default",
    init_std: float = 0.02,
    init_scale: float = 1.0,
    qk_norm: bool = False,
    **norm_kwargs,
) -> nn.Module:
    """A tiny vision transformer on ``patch`` x ``patch`` patches of square images.
    ``norm_position`` places the norms: ``"pre"``, ``"post"``, ``"sandwich"``,
    ``"peri"``, ``"deepnorm"`` or ``"lns"`` (formulas and papers:
    :class:`TransformerBlock`); with ``"deepnorm"`` the sublayers' weights take
    DeepNet's initialization whatever ``init`` (times ``init_scale``).
    ``qk_norm=True`` normalizes queries and keys per head (RMSNorm QK-norm,
    :class:`~normlab.norms.qk.QKNorm`)."""
    model = PatchTransformer(
        in_channels,
        image_size,
        num_classes,
        patch,
        dim,
        depth,
        heads,
        mlp_ratio,
        norm,
        norm_position,
        qk_norm,
        **norm_kwargs,
    )
    initialize(model, init, init_std, init_scale)
    if norm_position == "deepnorm":  # the scheme above re-drew or rescaled its weights
        for block in model.blocks:
            block.deepnorm_init_(init_scale)
    return model


__all__ = [
    "ACTIVATIONS",
    "FeaturesLast",
    "cnn",
    "fuses_activation",
    "initialize",
    "mlp",
    "norm_factory",
    "resnet",
    "transformer",
]
