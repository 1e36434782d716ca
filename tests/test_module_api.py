"""The layers' torch.nn surface: constructors, defaults, state_dict, reset, repr.

Oracle: the torch.nn class of the same name.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import normlab

# Each normlab layer, a constructor call valid for it and its torch.nn twin.
SAME_ARGS = {
    "BatchNorm1d": ((6,), {}),
    "BatchNorm2d": ((6,), {"momentum": None}),
    "BatchNorm3d": ((6,), {"affine": False}),
    "InstanceNorm1d": ((6,), {}),
    "InstanceNorm2d": ((6,), {"affine": True, "track_running_stats": True}),
    "InstanceNorm3d": ((6,), {"track_running_stats": True}),
    "GroupNorm": ((3, 6), {}),
    "LayerNorm": (((4, 5),), {"bias": False}),
    "RMSNorm": ((5,), {}),
    "LocalResponseNorm": ((3,), {}),
}
WITH_PARAMS = [n for n in SAME_ARGS if n != "LocalResponseNorm"]  # LRN has no state
RUNNING = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm2d", "InstanceNorm3d"]


@pytest.mark.parametrize("name", list(SAME_ARGS))
def test_signature_matches_torch(name):
    ours = inspect.signature(getattr(normlab, name).__init__).parameters
    theirs = inspect.signature(getattr(nn, name).__init__).parameters
    assert list(ours) == list(theirs)
    for p in theirs.values():
        assert ours[p.name].default == p.default, f"{name}.{p.name} default"
        assert ours[p.name].kind == p.kind, f"{name}.{p.name} kind"


@pytest.mark.parametrize("name", list(SAME_ARGS))
def test_repr_attributes_and_state_dict_keys_match_torch(name):
    args, kwargs = SAME_ARGS[name]
    ours, theirs = getattr(normlab, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    for attr in (
        "num_features",
        "eps",
        "momentum",
        "affine",
        "track_running_stats",
        "num_groups",
        "num_channels",
        "normalized_shape",
        "elementwise_affine",
        "size",
        "alpha",
        "beta",
        "k",
    ):
        if hasattr(theirs, attr):
            assert getattr(ours, attr) == getattr(theirs, attr), attr


@pytest.mark.parametrize("name", RUNNING)
def test_state_dict_round_trip_with_torch(name):
    args, kwargs = SAME_ARGS[name]
    theirs = getattr(nn, name)(*args, **kwargs)
    with torch.no_grad():
        theirs.running_mean.uniform_()
        theirs.running_var.uniform_(1, 2)
        theirs.num_batches_tracked.fill_(7)
    ours = getattr(normlab, name)(*args, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    back = getattr(nn, name)(*args, **kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value)
    assert int(ours.num_batches_tracked) == 7


@pytest.mark.parametrize("name", RUNNING)
def test_checkpoint_without_num_batches_tracked_loads(name):
    args, kwargs = SAME_ARGS[name]
    state = getattr(nn, name)(*args, **kwargs).state_dict()
    del state["num_batches_tracked"]
    ours = getattr(normlab, name)(*args, **kwargs)
    ours.load_state_dict(state, strict=True)
    assert int(ours.num_batches_tracked) == 0


@pytest.mark.parametrize("cls", ["BatchNorm2d", "InstanceNorm2d"])
def test_untracked_buffers_are_none_and_absent(cls):
    m = getattr(normlab, cls)(4, affine=True, track_running_stats=False)
    assert m.running_mean is None and m.running_var is None and m.num_batches_tracked is None
    assert set(m.state_dict()) == {"weight", "bias"}


def test_untracked_batchnorm_uses_batch_statistics_in_eval():
    m = normlab.BatchNorm2d(3, track_running_stats=False).eval()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 4 + 2
    y = m.to(torch.float64)(x)
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + m.eps))


def test_momentum_none_is_cumulative_average():
    """After k batches the running mean is the plain mean of the k batch means."""
    m = normlab.BatchNorm1d(3, momentum=None).double()
    means, variances = [], []
    for _ in range(5):
        x = torch.randn(10, 3, dtype=torch.float64) * 3 + torch.randn(3, dtype=torch.float64)
        m(x)
        means.append(x.mean(0))
        variances.append(x.var(0, unbiased=True))
    torch.testing.assert_close(m.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(m.running_var, torch.stack(variances).mean(0))
    assert int(m.num_batches_tracked) == 5


def test_running_var_uses_unbiased_and_output_biased_variance():
    m = normlab.BatchNorm1d(2, momentum=1.0).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(m.running_var, x.var(0, unbiased=True))
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + m.eps)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_reset_parameters_and_running_stats(name):
    args, kwargs = SAME_ARGS[name]
    m = getattr(normlab, name)(*args, **kwargs)
    fresh = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(3, 4)
        for b in m.buffers():
            b.add_(5)
    m.reset_parameters()
    for key, value in fresh.items():
        torch.testing.assert_close(m.state_dict()[key], value)
    if hasattr(m, "reset_running_stats") and m.num_batches_tracked is not None:
        m.running_mean.add_(1)
        m.num_batches_tracked.add_(1)
        m.reset_running_stats()
        assert float(m.running_mean.abs().max()) == 0 and int(m.num_batches_tracked) == 0


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_device_and_dtype_keywords(name):
    args, kwargs = SAME_ARGS[name]
    m = getattr(normlab, name)(*args, **kwargs, device="cpu", dtype=torch.float64)
    for t in [*m.parameters(), *(b for n, b in m.named_buffers() if n != "num_batches_tracked")]:
        assert t.dtype == torch.float64 and t.device.type == "cpu"
    if getattr(m, "num_batches_tracked", None) is not None:
        assert m.num_batches_tracked.dtype == torch.long


def test_instance_norm_defaults_and_unbatched_input():
    m = normlab.InstanceNorm2d(3)
    assert (m.affine, m.track_running_stats) == (False, False)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    y = m(x)
    assert y.shape == x.shape
    mean = x.mean((1, 2), keepdim=True)
    var = x.var((1, 2), unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + m.eps))


def test_instance_norm_channel_mismatch_warns_without_affine():
    with pytest.warns(UserWarning, match="num_features"):
        normlab.InstanceNorm1d(3)(torch.randn(2, 5, 4))


def test_rmsnorm_eps_none_is_machine_epsilon():
    """eps=None adds torch.finfo(float32).eps for float32 and half inputs (as torch.nn)."""
    x = torch.full((2, 4), 1e-4)
    for dtype in (torch.float32, torch.bfloat16):
        y = normlab.RMSNorm(4, dtype=dtype)(x.to(dtype)).float()
        expected = 1e-4 / (1e-8 + torch.finfo(torch.float32).eps) ** 0.5
        torch.testing.assert_close(y, torch.full_like(y, expected), rtol=1e-2, atol=0)


def test_groupnorm_affine_is_per_channel():
    m = normlab.GroupNorm(2, 4).double()
    assert m.weight.shape == (4,) and m.bias.shape == (4,)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    g = x.view(2, 2, -1)
    xhat = (
        (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
    ).view_as(x)
    torch.testing.assert_close(m(x), xhat * m.weight.view(1, 4, 1))
