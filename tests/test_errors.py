"""Bad input gets an error that names the layer and the expected and actual value."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import normlab
from normlab import functional as NF


@pytest.mark.parametrize(
    ("layer", "x", "pattern"),
    [
        (
            normlab.BatchNorm2d(16),
            torch.randn(2, 8, 4, 4),
            r"BatchNorm2d\(16\): expected 16 channels at dim 1, got 8",
        ),
        (
            normlab.BatchNorm1d(4),
            torch.randn(2, 3),
            r"BatchNorm1d\(4\): expected 4 channels.*got 3",
        ),
        (
            normlab.InstanceNorm2d(4, affine=True),
            torch.randn(2, 3, 4, 4),
            r"InstanceNorm2d\(4\): expected 4 channels",
        ),
        (
            normlab.InstanceNorm1d(4, affine=True),
            torch.randn(3, 5),
            r"expected 4 channels at dim 0, got 3",
        ),
        (
            normlab.GroupNorm(2, 4),
            torch.randn(2, 6, 3),
            r"GroupNorm\(2, 4\): expected 4 channels at dim 1, got 6",
        ),
        (
            normlab.LayerNorm(8),
            torch.randn(2, 7),
            r"LayerNorm\(\(8,\)\): expected an input of shape \(\*, 8\).*got \(2, 7\)",
        ),
        (normlab.RMSNorm((3, 4)), torch.randn(2, 4, 3), r"RMSNorm\(\(3, 4\)\): .*got \(2, 4, 3\)"),
    ],
)
def test_wrong_channels_or_features(layer, x, pattern):
    with pytest.raises(normlab.NormInputError, match=pattern):
        layer(x)


@pytest.mark.parametrize(
    ("layer", "x", "pattern"),
    [
        (
            normlab.BatchNorm2d(3),
            torch.randn(2, 3, 4),
            r"BatchNorm2d\(3\): expected a 4D input \(N, C, H, W\), got a 3D input of shape \(2, 3, 4\)",
        ),
        (
            normlab.BatchNorm1d(3),
            torch.randn(2, 3, 4, 4),
            r"BatchNorm1d\(3\): expected a 2D or 3D input",
        ),
        (
            normlab.BatchNorm3d(3),
            torch.randn(2, 3, 4, 4),
            r"expected a 5D input \(N, C, D, H, W\), got a 4D",
        ),
        (
            normlab.InstanceNorm2d(3),
            torch.randn(3, 4),
            r"InstanceNorm2d\(3\): expected a 3D or 4D input",
        ),
        (
            normlab.GroupNorm(1, 3),
            torch.randn(3),
            r"GroupNorm\(1, 3\): expected an input with at least 2 dimensions",
        ),
        (
            normlab.LocalResponseNorm(2),
            torch.randn(2, 3),
            r"LocalResponseNorm\(2\): expected an input with at least 3 dimensions",
        ),
    ],
)
def test_wrong_number_of_dimensions(layer, x, pattern):
    with pytest.raises(normlab.NormInputError, match=pattern):
        layer(x)


def test_errors_are_value_and_runtime_errors_like_torchs():
    """torch.nn raises ValueError or RuntimeError for these; code catching either still works."""
    for exc in (ValueError, RuntimeError):
        with pytest.raises(exc):
            normlab.BatchNorm2d(3)(torch.randn(2, 4, 2, 2))


@pytest.mark.parametrize(
    ("layer", "x", "pattern"),
    [
        (
            normlab.BatchNorm1d(4),
            torch.randn(1, 4),
            r"BatchNorm1d\(4\): expected more than 1 value per channel when training, got input of shape \(1, 4\)",
        ),
        (
            normlab.BatchNorm2d(4),
            torch.randn(1, 4, 1, 1),
            r"BatchNorm2d\(4\): expected more than 1 value per channel",
        ),
        (
            normlab.InstanceNorm2d(4),
            torch.randn(2, 4, 1, 1),
            r"InstanceNorm2d\(4\): expected more than 1 spatial element",
        ),
        (
            normlab.GroupNorm(2, 2),
            torch.randn(1, 2),
            r"GroupNorm\(2, 2\): expected more than 1 value per group",
        ),
    ],
)
def test_single_value_per_statistic_in_training(layer, x, pattern):
    torch_layer = getattr(nn, type(layer).__name__)
    with pytest.raises(ValueError):  # torch.nn raises too
        torch_layer(*_ctor_args(layer))(x)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(normlab.NormInputError, match=pattern):
        layer(x)
    for key, value in layer.state_dict().items():  # nothing counted, nothing updated
        assert torch.equal(value, before[key]), key


def _ctor_args(layer):
    if isinstance(layer, normlab.GroupNorm):
        return (layer.num_groups, layer.num_channels)
    return (layer.num_features,)


def test_single_sample_is_fine_in_eval():
    ours, theirs = normlab.BatchNorm1d(4).eval(), nn.BatchNorm1d(4).eval()
    x = torch.randn(1, 4)
    torch.testing.assert_close(ours(x), theirs(x))


def test_groupnorm_indivisible_channels():
    with pytest.raises(
        ValueError,
        match=r"GroupNorm\(3, 8\): num_channels \(8\) must be divisible by num_groups \(3\)",
    ):
        normlab.GroupNorm(3, 8)
    with pytest.raises(ValueError, match=r"group_norm: num_channels \(8\) must be divisible"):
        NF.group_norm(torch.randn(2, 8), 3)


@pytest.mark.parametrize(
    "layer",
    [
        normlab.BatchNorm2d(3),
        normlab.InstanceNorm2d(3),
        normlab.GroupNorm(1, 3),
        normlab.LayerNorm(4),
        normlab.RMSNorm(4),
        normlab.LocalResponseNorm(2),
    ],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool], ids=str)
def test_integer_tensors(layer, dtype):
    x = torch.ones(2, 3, 4, 4).to(dtype)
    with pytest.raises(
        TypeError,
        match=rf"{type(layer).__name__}\(.*\): expected a floating-point input .*got {dtype}",
    ):
        layer(x)


@pytest.mark.parametrize(
    ("fn", "pattern"),
    [
        (
            lambda: NF.batch_norm(torch.randn(4), None, None, training=True),
            r"batch_norm: expected an input with at least 2 dimensions",
        ),
        (
            lambda: NF.batch_norm(torch.randn(2, 3), None, None, training=True, eps=0.0),
            r"batch_norm: eps must be positive",
        ),
        (
            lambda: NF.instance_norm(torch.randn(2, 3)),
            r"instance_norm: expected an input with at least 3",
        ),
        (
            lambda: NF.layer_norm(torch.randn(2, 3), (4,)),
            r"layer_norm: expected an input of shape \(\*, 4\)",
        ),
        (lambda: NF.layer_norm(torch.randn(2, 3), (0,)), r"layer_norm: normalized_shape must be"),
        (lambda: NF.rms_norm(torch.randn(2, 3), 4), r"rms_norm: expected an input of shape"),
        (
            lambda: NF.local_response_norm(torch.randn(2, 3, 4), 0),
            r"local_response_norm: size must be",
        ),
    ],
)
def test_functional_errors_name_the_function(fn, pattern):
    with pytest.raises(normlab.NormInputError, match=pattern):
        fn()


@pytest.mark.parametrize(
    ("ctor", "pattern"),
    [
        (
            lambda: normlab.BatchNorm2d(0),
            r"BatchNorm2d: num_features must be a positive integer, got 0",
        ),
        (lambda: normlab.LayerNorm(()), r"LayerNorm: normalized_shape must be"),
        (lambda: normlab.RMSNorm(-3), r"RMSNorm: normalized_shape must be"),
        (
            lambda: normlab.LocalResponseNorm(0),
            r"LocalResponseNorm: size must be a positive integer",
        ),
    ],
)
def test_bad_constructor_arguments(ctor, pattern):
    with pytest.raises(ValueError, match=pattern):
        ctor()


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_empty_batch_matches_torch(backend):
    """An empty batch gives an empty output and leaves the running statistics alone."""
    ours, theirs = normlab.BatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(0, 3, 4, 4)
    with normlab.use_backend(backend):
        y = ours(x)
    assert y.shape == theirs(x).shape == (0, 3, 4, 4)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_nan_propagates_as_in_torch(backend):
    """A NaN input is not an error (checking would cost a device sync per call):
    it propagates exactly where torch.nn propagates it."""
    x = torch.randn(4, 3, 5)
    x[1, 2, 3] = float("nan")
    for ours, theirs in [
        (normlab.LayerNorm(5), nn.LayerNorm(5)),
        (normlab.BatchNorm1d(3), nn.BatchNorm1d(3)),
    ]:
        with normlab.use_backend(backend):
            got = ours(x)
        assert torch.equal(torch.isnan(got), torch.isnan(theirs(x)))


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (lambda: normlab.LayerNorm(8), (2, 8)),
        (lambda: normlab.GroupNorm(2, 4), (2, 4, 3)),
        (lambda: normlab.BatchNorm1d(4), (2, 4, 3)),
        (lambda: normlab.InstanceNorm1d(4, affine=True), (2, 4, 3)),
        (lambda: normlab.AdaptiveLayerNorm(8, 3, elementwise_affine=True), (2, 8)),
        (lambda: normlab.LayerNorm2d(4), (2, 4, 3, 3)),
        (lambda: normlab.FrozenBatchNorm2d(4), (2, 4, 3, 3)),
        (lambda: normlab.CrossIterationBatchNorm(4), (2, 4, 3, 3)),
    ],
    ids=lambda v: type(v()).__name__ if callable(v) else None,
)
def test_an_input_of_another_dtype_than_the_parameters_is_named(layer, shape):
    """A float64 input to float32 parameters: torch says only "mixed dtype"; the error
    names the layer, both dtypes and the two ways out. Half inputs with float32
    parameters stay allowed, as in torch (and RMSNorm, which torch lets promote, is
    not in the list)."""
    module = layer()
    extra = (torch.randn(shape[0], 3),) if isinstance(module, normlab.AdaptiveLayerNorm) else ()
    with pytest.raises(normlab.NormInputError, match=r"float64.*float32.*\.float\(\)"):
        module(torch.randn(shape, dtype=torch.float64), *extra)
    out = module(torch.randn(shape, dtype=torch.bfloat16), *extra)
    assert out.dtype == torch.bfloat16


# --- issue 25, items 12, 13, 16: sizes and flags are what they say -----------------------

_SIZED = [
    name
    for name in normlab.norms.__all__
    if isinstance(getattr(normlab.norms, name), type)
    and issubclass(getattr(normlab.norms, name), torch.nn.Module)
    and name not in ("GroupNorm", "WSConv2d")  # GroupNorm's first argument is its groups
]


@pytest.mark.parametrize("name", _SIZED)
@pytest.mark.parametrize("size", [2.5, "16", 0, -1, True])
def test_every_constructor_refuses_a_size_that_is_not_a_positive_integer(name, size):
    cls = getattr(normlab.norms, name)
    with pytest.raises(ValueError, match=rf"{name}.*positive integer.*got {re.escape(repr(size))}"):
        cls(size)


def test_lm_rms_norm_takes_eps_none_as_torch_does():
    layer = normlab.LMRMSNorm(8, eps=None)
    x = torch.randn(3, 8)
    expected = torch.nn.functional.rms_norm(x, (8,), layer.weight, eps=None)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("shape", [(1,), (2, 4), (9,)])
def test_functional_ops_name_the_weight_shape_they_want(shape):
    from normlab import functional as NF

    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"weight.*\(8,\)"):
        NF.lm_rms_norm(x, torch.ones(shape))
    with pytest.raises(ValueError, match=r"weight.*\(8,\)"):
        NF.dynamic_erf(x, torch.ones(()), torch.zeros(()), torch.ones(shape), torch.zeros(8))


def test_booleans_are_not_numbers():
    from normlab.experiments.config import ConfigError, RunConfig

    for field in ("lr", "noise", "init_std", "init_scale", "weight_decay"):
        with pytest.raises(ConfigError, match=field):
            RunConfig(**{field: True})
    with pytest.raises(ValueError, match="partial"):
        normlab.LMRMSNorm(8, partial=True)
