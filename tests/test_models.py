"""Model builders: every norm in every builder, positions, initializations, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab import models
from normlab.norms import registry

# techniques whose statistics need spatial axes: undefined on an MLP's (N, F)
NEEDS_SPATIAL = {"instancenorm", "lrn"}
BUILDERS = {
    "mlp": lambda norm: models.mlp(64, 10, depth=2, width=16, norm=norm),
    "cnn": lambda norm: models.cnn(1, 10, channels=(8, 16), norm=norm),
    "resnet": lambda norm: models.resnet(1, 10, widths=(8, 16), norm=norm),
    "transformer": lambda norm: models.transformer(
        1, 10, image_size=8, patch=4, dim=16, heads=2, depth=1, norm=norm
    ),
}


@pytest.mark.parametrize("builder", list(BUILDERS))
@pytest.mark.parametrize("norm", normlab.available())
def test_every_norm_in_every_builder_trains_a_step(builder, norm):
    if builder == "mlp" and norm in NEEDS_SPATIAL:
        with pytest.raises(
            normlab.NormInputError, match="expected an input with at least 3 dimensions"
        ):
            BUILDERS[builder](norm)(torch.randn(4, 1, 8, 8))
        return
    model = BUILDERS[builder](norm)
    x = torch.randn(4, 1, 8, 8)
    y = model(x)
    assert y.shape == (4, 10)
    y.sum().backward()
    assert all(
        p.grad is not None for p in model.parameters() if p.requires_grad and p.grad is not None
    )
    model.eval()
    assert torch.isfinite(model(x)).all()


def test_mlp_is_the_batchnorm_papers_network():
    model = models.mlp(784, 10, depth=3, width=100, activation="sigmoid", norm="batch")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 100),
        (100, 100),
        (100, 100),
        (100, 10),
    ]
    kinds = [type(m).__name__ for m in model]
    assert kinds[:4] == [
        "Flatten",
        "Linear",
        "BatchNormNd",
        "Sigmoid",
    ]  # norm before the nonlinearity
    post = models.mlp(784, 10, norm="batch", norm_position="post")
    assert [type(m).__name__ for m in post][1:4] == ["Linear", "Sigmoid", "BatchNormNd"]
    plain = models.mlp(784, 10, norm="none")
    assert not any(isinstance(m, nn.Identity) for m in plain)


@pytest.mark.parametrize(
    ("scheme", "expected_std"),
    [("small-gaussian", 0.05), ("kaiming", (2 / 256) ** 0.5), ("xavier", (2 / (256 + 256)) ** 0.5)],
)
def test_initialization_schemes_and_scale(scheme, expected_std):
    torch.manual_seed(0)
    model = models.mlp(256, 10, depth=2, width=256, init=scheme, init_std=0.05)
    weight = model[3].weight  # the 256 x 256 hidden layer
    assert weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert model[3].bias.abs().max().item() == 0.0
    scaled = models.mlp(256, 10, depth=2, width=256, init=scheme, init_std=0.05, init_scale=10.0)
    assert scaled[3].weight.std().item() == pytest.approx(10 * expected_std, rel=0.05)


def test_channels_last_norms_in_cnns_take_their_channels_first_form():
    model = models.cnn(3, 10, channels=(8,), norm="layer")
    assert any(isinstance(m, normlab.LayerNorm2d) for m in model)
    tf = models.transformer(1, 10, image_size=8, patch=4, dim=16, heads=2, depth=1, norm="batch")
    assert any(isinstance(m, models.FeaturesLast) for m in tf.modules())


def test_norm_kwargs_reach_the_layers():
    model = models.cnn(1, 10, channels=(32,), norm="group", num_groups=4)
    assert [m.num_groups for m in model if isinstance(m, normlab.GroupNorm)] == [4]


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda: models.mlp(10, 2, norm="batchnrom"), KeyError, "did you mean 'batchnorm'"),
        (
            lambda: models.mlp(10, 2, activation="swish"),
            ValueError,
            "unknown activation 'swish'; choose one of sigmoid",
        ),
        (lambda: models.mlp(10, 2, init="orthogonal"), ValueError, "unknown init 'orthogonal'"),
        (
            lambda: models.mlp(10, 2, norm_position="middle"),
            ValueError,
            "unknown norm_position 'middle'",
        ),
        (lambda: models.mlp(10, 2, depth=0), ValueError, "depth and width must be >= 1"),
        (
            lambda: models.transformer(1, 10, image_size=28, patch=5),
            ValueError,
            "not divisible by patch 5",
        ),
        (
            lambda: models.transformer(1, 10, dim=30, heads=4),
            ValueError,
            "dim 30 not divisible by heads 4",
        ),
    ],
)
def test_bad_arguments(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# ---------------------------------------------------------------- norm factories

ACTIVATION_TYPES = tuple(models.ACTIVATIONS.values())


def _structure(model: nn.Module) -> list:
    return [(n, type(m).__name__) for n, m in model.named_modules()] + [
        (n, tuple(p.shape)) for n, p in model.named_parameters()
    ]


def test_norm_layer_is_gone_the_factory_builds_the_layers():
    assert not hasattr(models, "norm_layer")
    model = models.cnn(1, 10, channels=(32,), norm=registry.factory("group", num_groups=4))
    assert [m.num_groups for m in model if isinstance(m, normlab.GroupNorm)] == [4]


@pytest.mark.parametrize("builder", list(BUILDERS))
@pytest.mark.parametrize(
    "names", [("none", "identity"), ("batchnorm", "bn"), ("layernorm", "ln"), ("frn", "frn")]
)
def test_names_aliases_and_factories_build_alike(builder, names):
    name, alias = names
    reference = _structure(BUILDERS[builder](name))
    assert _structure(BUILDERS[builder](alias)) == reference
    assert _structure(BUILDERS[builder](registry.factory(alias))) == reference


def test_cnn_convolutions_keep_their_bias_only_without_a_norm():
    for norm in ("none", "identity", lambda c: nn.Identity()):
        convs = [m for m in models.cnn(1, 10, norm=norm) if isinstance(m, nn.Conv2d)]
        assert all(c.bias is not None for c in convs)
    convs = [m for m in models.cnn(1, 10, norm="bn") if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)


def test_builders_take_any_callable_from_features_to_a_module():
    model = models.cnn(1, 10, channels=(8,), norm=nn.BatchNorm2d)
    assert [type(m) for m in model][:3] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    mlp = models.mlp(16, 10, depth=1, width=8, norm=lambda f: nn.LayerNorm(f))
    assert isinstance(mlp[2], nn.LayerNorm) and mlp(torch.randn(2, 16)).shape == (2, 10)
    x = torch.randn(2, 1, 8, 8)
    for norm, cls in (("bn", normlab.BatchNormNd), ("ln", normlab.LayerNorm)):
        # a channels-first factory is put in the transformer's channels-last layout
        tf = models.transformer(
            1, 10, image_size=8, patch=4, dim=16, heads=2, depth=1, norm=registry.factory(norm)
        )
        assert type(tf.norm.norm if cls is normlab.BatchNormNd else tf.norm) is cls
        assert tf(x).shape == (2, 10)


@pytest.mark.parametrize("builder", list(BUILDERS))
def test_norm_kwargs_with_a_factory_are_refused_by_name(builder):
    call = {
        "mlp": lambda **kw: models.mlp(64, 10, **kw),
        "cnn": lambda **kw: models.cnn(1, 10, **kw),
        "resnet": lambda **kw: models.resnet(1, 10, **kw),
        "transformer": lambda **kw: models.transformer(1, 10, **kw),
    }[builder]
    with pytest.raises(TypeError, match="eps, num_groups only go with a norm given by name"):
        call(norm=registry.factory("gn"), num_groups=4, eps=1e-3)
    with pytest.raises(TypeError, match="num_groups"):
        call(norm=nn.BatchNorm2d, num_groups=4)


@pytest.mark.parametrize(
    "norm", ["frn", "evonorm_s0", "evonorm_b0", lambda c: normlab.FilterResponseNorm2d(c)]
)
@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("builder", ["mlp", "cnn"])
def test_a_norm_with_its_own_activation_gets_no_second_one(builder, norm, position):
    build = models.mlp if builder == "mlp" else models.cnn
    model = build(16, 10, norm=norm, norm_position=position)
    norms = [i for i, m in enumerate(model) if registry.spec_of(m) is not None]
    assert norms and all(registry.spec_of(model[i]).fused_activation for i in norms)
    assert not any(isinstance(m, ACTIVATION_TYPES) for m in model)
    assert all(not isinstance(model[i + 1], ACTIVATION_TYPES) for i in norms)
    plain = build(16, 10, norm="batchnorm", norm_position=position)
    norms = [i for i, m in enumerate(plain) if registry.spec_of(m) is not None]
    after = (lambda i: plain[i + 1]) if position == "pre" else (lambda i: plain[i - 1])
    assert norms and all(isinstance(after(i), ACTIVATION_TYPES) for i in norms)


@pytest.mark.parametrize(("norm", "calls"), [("batchnorm", 5), ("frn", 2), ("evonorm_b0", 2)])
def test_resnet_drops_the_activation_a_fused_norm_brings(norm, calls):
    # stem: norm, act; two blocks: norm1, act (dropped when fused), ..., add, act
    model = models.resnet(1, 10, widths=(8, 16), norm=norm)
    count = 0

    def hook(*_):
        nonlocal count
        count += 1

    for m in model.modules():
        if isinstance(m, ACTIVATION_TYPES):
            m.register_forward_hook(hook)
    model(torch.randn(2, 1, 8, 8))
    assert count == calls


def test_build_model_gives_the_builder_one_factory():
    import types

    from normlab.experiments.config import RunConfig
    from normlab.experiments.runner import build_model

    seen, real_cnn = {}, models.cnn

    def cnn(*args, **kwargs):
        seen.update(kwargs)
        return real_cnn(*args, **kwargs)

    dataset = types.SimpleNamespace(input_shape=(1, 8, 8), num_classes=10, name="tiny")
    kwargs = (("num_groups", 4), ("batchnorm:momentum", 0.5))
    config = RunConfig(model="cnn", norm="gn", channels=(8,), norm_kwargs=kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "cnn", cnn)
        build_model(config, dataset)
    assert seen["norm"] == registry.factory("groupnorm", num_groups=4)
    assert "num_groups" not in seen and "momentum" not in seen
    tf = build_model(
        config.replace(model="transformer", norm="bn", norm_kwargs=kwargs[1:]),
        types.SimpleNamespace(input_shape=(1, 28, 28), num_classes=10, name="tiny"),
    )
    assert isinstance(tf.norm, models.FeaturesLast) and tf.norm.norm.momentum == 0.5


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("scheme", ["small-gaussian", "kaiming", "xavier"])
def test_every_attention_projection_is_initialized_alike(scheme, qk_norm):
    """nn.MultiheadAttention keeps q, k, v in in_proj_weight, a bare Parameter: the
    scheme and init_scale reach it as they reach every Linear (issue 25, item 6)."""
    from normlab import models

    torch.manual_seed(0)
    model = models.transformer(
        1,
        10,
        dim=64,
        depth=1,
        norm="layernorm",
        init=scheme,
        init_std=0.02,
        init_scale=100.0,
        qk_norm=qk_norm,
    )
    attention = model.blocks[0].attention
    packed = attention.qkv.weight if qk_norm else attention.in_proj_weight
    mlp = model.blocks[0].mlp[0].weight
    expected = {"small-gaussian": 0.02, "kaiming": (2 / 64) ** 0.5, "xavier": None}[scheme]
    if expected is not None:
        assert packed.std().item() == pytest.approx(100 * expected, rel=0.1)
    assert packed.std().item() > 10 * 0.174  # scaled, not torch's default (std ~0.17)
    assert mlp.std().item() > 10 * 0.1
