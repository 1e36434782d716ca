"""Model builders that take any normalization technique by name.

Every builder takes ``norm=`` (a registry name or alias; ``"none"`` for no
normalization), ``norm_position`` (``"pre"``: between the linear map and the
activation, as in the BatchNorm paper; ``"post"``: after the activation), an
initialization scheme (``"small-gaussian"`` with ``init_std``, ``"kaiming"``,
``"xavier"``) and ``init_scale``, a multiplier of every initial weight. Extra
``norm_kwargs`` go to the normalization layers' constructors.

- :func:`mlp` — fully connected; the BatchNorm paper's network is
  ``mlp(784, 10, depth=3, width=100, activation="sigmoid")``.
- :func:`cnn` — conv-norm-activation blocks with pooling, for (C, H, W) images.
- :func:`resnet` — a small ResNet (basic blocks) for 28x28 and 32x32 images.
- :func:`transformer` — a tiny patch transformer (pre-norm blocks), where the
  channels-last techniques (LayerNorm, RMSNorm, ScaleNorm, DynamicTanh) compete.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normlab.norms import registry

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


class FeaturesLast(nn.Module):
    """Apply a channels-first normalization to (..., features) tensors, by moving
    the last axis to position 1 and back (BatchNorm over tokens, for example)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(-1, 1)).movedim(1, -1)


def _choice(kind: str, value: str, options) -> str:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(options)}")
    return value


def norm_layer(name: str, features: int, layout: str, **kwargs) -> nn.Module:
    """The technique ``name`` for ``features`` features in ``layout``:
    ``"channels_first"`` ((N, C, *) tensors) or ``"channels_last"`` ((..., C))."""
    spec = registry.spec(name)
    if layout == "channels_first":
        if spec.channels_last and spec.channels_first is not None:
            return spec.channels_first(features, **kwargs)
        return registry.create(name, features, **kwargs)
    if spec.channels_last or spec.cls is nn.Identity:
        return registry.create(name, features, **kwargs)
    return FeaturesLast(registry.create(name, features, **kwargs))


def _block(linear: nn.Module, norm: nn.Module, activation: nn.Module, position: str) -> list:
    if isinstance(norm, nn.Identity):
        return [linear, activation]
    return [linear, norm, activation] if position == "pre" else [linear, activation, norm]


def initialize(model: nn.Module, scheme: str = "default", std: float = 0.1, scale: float = 1.0):
    """Initialize every Linear/Conv weight of ``model`` by ``scheme`` then multiply
    by ``scale``; biases to zero (except with ``"default"``, torch's own init)."""
    _choice("init", scheme, INITS)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
                continue
            if scheme == "small-gaussian":
                nn.init.normal_(module.weight, 0.0, std)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif scheme == "xavier":
                nn.init.xavier_normal_(module.weight)
            module.weight.mul_(scale)
            if module.bias is not None and scheme != "default":
                module.bias.zero_()
    return model


def mlp(
    in_features: int,
    num_classes: int,
    depth: int = 3,
    width: int = 100,
    activation: str = "sigmoid",
    norm: str = "none",
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
    layers: list[nn.Module] = [nn.Flatten()]
    features = in_features
    for _ in range(depth):
        norm_module = norm_layer(norm, width, "channels_first", **norm_kwargs)
        layers += _block(nn.Linear(features, width), norm_module, act(), norm_position)
        features = width
    layers.append(nn.Linear(width, num_classes))
    return initialize(nn.Sequential(*layers), init, init_std, init_scale)


def cnn(
    in_channels: int,
    num_classes: int,
    channels: tuple[int, ...] = (16, 32),
    activation: str = "relu",
    norm: str = "batchnorm",
    norm_position: str = "pre",
    init: str = "kaiming",
    init_std: float = 0.1,
    init_scale: float = 1.0,
    **norm_kwargs,
) -> nn.Sequential:
    """Per stage: conv 3x3, norm, activation, 2x2 max-pool; then global average
    pooling and a linear classifier. For (C, H, W) inputs."""
    act = ACTIVATIONS[_choice("activation", activation, ACTIVATIONS)]
    _choice("norm_position", norm_position, POSITIONS)
    layers: list[nn.Module] = []
    previous = in_channels
    for c in channels:
        conv = nn.Conv2d(previous, c, 3, padding=1, bias=norm == "none")
        norm_module = norm_layer(norm, c, "channels_first", **norm_kwargs)
        layers += [*_block(conv, norm_module, act(), norm_position), nn.MaxPool2d(2)]
        previous = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
    return initialize(nn.Sequential(*layers), init, init_std, init_scale)


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-norm-act-conv-norm plus a shortcut, then act."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, activation: type, **kw):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, cout, "channels_first", **kw)
        self.act = activation()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, cout, "channels_first", **kw)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False),
                norm_layer(norm, cout, "channels_first", **kw),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)) + self.shortcut(x))


def resnet(
    in_channels: int,
    num_classes: int,
    widths: tuple[int, ...] = (16, 32, 64),
    blocks_per_stage: int = 1,
    activation: str = "relu",
    norm: str = "batchnorm",
    init: str = "kaiming",
    init_std: float = 0.1,
    init_scale: float = 1.0,
    **norm_kwargs,
) -> nn.Sequential:
    """A small ResNet: a 3x3 stem, then per width ``blocks_per_stage`` basic
    blocks (the first of each later stage with stride 2), global pooling, linear."""
    act = ACTIVATIONS[_choice("activation", activation, ACTIVATIONS)]
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
        norm_layer(norm, widths[0], "channels_first", **norm_kwargs),
        act(),
    ]
    previous = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(previous, width, stride, norm, act, **norm_kwargs))
            previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
    return initialize(nn.Sequential(*layers), init, init_std, init_scale)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, norm: str, **kw) -> None:
        super().__init__()
        self.norm1 = norm_layer(norm, dim, "channels_last", **kw)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = norm_layer(norm, dim, "channels_last", **kw)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PatchTransformer(nn.Module):
    """Patch embedding, learned positions, pre-norm blocks, final norm, mean pool."""

    def __init__(
        self, in_channels, image_size, num_classes, patch, dim, depth, heads, mlp_ratio, norm, **kw
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"transformer: image size {image_size} not divisible by patch {patch}")
        if dim % heads:
            raise ValueError(f"transformer: dim {dim} not divisible by heads {heads}")
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.position = nn.Parameter(torch.randn(1, tokens, dim) / math.sqrt(dim))
        self.blocks = nn.Sequential(
            *(TransformerBlock(dim, heads, mlp_ratio, norm, **kw) for _ in range(depth))
        )
        self.norm = norm_layer(norm, dim, "channels_last", **kw)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position
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
    norm: str = "layernorm",
    init: str = "default",
    init_std: float = 0.02,
    init_scale: float = 1.0,
    **norm_kwargs,
) -> nn.Module:
    """A tiny vision transformer on ``patch`` x ``patch`` patches of square images."""
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
        **norm_kwargs,
    )
    return initialize(model, init, init_std, init_scale)


__all__ = [
    "ACTIVATIONS",
    "FeaturesLast",
    "cnn",
    "initialize",
    "mlp",
    "norm_layer",
    "resnet",
    "transformer",
]
