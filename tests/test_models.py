"""Model builders: every norm in every builder, positions, initializations, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab import models

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
