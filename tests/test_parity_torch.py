"""Every layer against its torch.nn twin: random configurations and shapes,
several training steps then eval, on both backends.

Oracle: torch.nn (outputs, input and parameter gradients, running statistics,
num_batches_tracked).
"""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, TOL, train_side_by_side
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import normlab

DTYPES = (torch.float32, torch.float64)


def _inputs(shape_fn, n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(shape_fn(), generator=gen, dtype=torch.float64) * 3 + 1).to(dtype)
        for _ in range(n)
    ]


running_kwargs = st.fixed_dictionaries(
    {
        "eps": st.sampled_from([1e-5, 1e-3, 0.1]),
        "momentum": st.sampled_from([0.1, 0.5, 1.0, None]),
        "affine": st.booleans(),
        "track_running_stats": st.booleans(),
        "bias": st.booleans(),
    }
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(
    dims=st.sampled_from([1, 2, 3]),
    length=st.one_of(st.none(), st.integers(1, 5)),
    channels=st.integers(1, 64),
    batch=st.integers(2, 5),
    kwargs=running_kwargs,
    seed=st.integers(0, 2**31),
)
def test_batchnorm(backend, dtype, dims, length, channels, batch, kwargs, seed):
    cls = {1: "BatchNorm1d", 2: "BatchNorm2d", 3: "BatchNorm3d"}[dims]
    if dims == 1:
        spatial = () if length is None else (length,)
    else:
        spatial = (3, length or 2, 2)[:dims]
    shape = (batch, channels, *spatial)
    ours = getattr(normlab, cls)(channels, **kwargs, dtype=dtype)
    theirs = getattr(nn, cls)(channels, **kwargs, dtype=dtype)
    train = _inputs(lambda: shape, 3, dtype, seed)
    evals = _inputs(lambda: (1 if kwargs["track_running_stats"] else 2, *shape[1:]), 1, dtype, seed)
    train_side_by_side(ours, theirs, train, evals, TOL[dtype], backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(
    dims=st.sampled_from([1, 2, 3]),
    unbatched=st.booleans(),
    channels=st.integers(1, 64),
    batch=st.integers(1, 4),
    kwargs=running_kwargs,
    seed=st.integers(0, 2**31),
)
def test_instancenorm(backend, dtype, dims, unbatched, channels, batch, kwargs, seed):
    cls = f"InstanceNorm{dims}d"
    spatial = (5, 3, 2)[:dims]
    shape = (channels, *spatial) if unbatched else (batch, channels, *spatial)
    ours = getattr(normlab, cls)(channels, **kwargs, dtype=dtype)
    theirs = getattr(nn, cls)(channels, **kwargs, dtype=dtype)
    train = _inputs(lambda: shape, 2, dtype, seed)
    evals = _inputs(lambda: shape, 1, dtype, seed + 1)
    train_side_by_side(ours, theirs, train, evals, TOL[dtype], backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(
    channels_per_group=st.integers(1, 8),
    groups=st.integers(1, 8),
    spatial=st.sampled_from([(), (1,), (5,), (3, 4), (2, 3, 2)]),
    batch=st.integers(1, 4),
    affine=st.booleans(),
    bias=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-2]),
    seed=st.integers(0, 2**31),
)
def test_groupnorm(
    backend, dtype, channels_per_group, groups, spatial, batch, affine, bias, eps, seed
):
    channels = channels_per_group * groups
    shape = (batch, channels, *spatial)
    if batch * channels_per_group * max(1, torch.Size(spatial).numel()) == 1:
        return  # one value per group: an error in both (tested in test_errors)
    kwargs = {"eps": eps, "affine": affine, "bias": bias, "dtype": dtype}
    ours, theirs = (
        normlab.GroupNorm(groups, channels, **kwargs),
        nn.GroupNorm(groups, channels, **kwargs),
    )
    train_side_by_side(
        ours, theirs, _inputs(lambda: shape, 2, dtype, seed), [], TOL[dtype], backend, seed
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(
    normalized=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    leading=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    as_int=st.booleans(),
    elementwise_affine=st.booleans(),
    bias=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-2]),
    seed=st.integers(0, 2**31),
)
def test_layernorm(
    backend, dtype, normalized, leading, as_int, elementwise_affine, bias, eps, seed
):
    shape_arg = normalized[0] if as_int and len(normalized) == 1 else tuple(normalized)
    kwargs = {"eps": eps, "elementwise_affine": elementwise_affine, "bias": bias, "dtype": dtype}
    ours, theirs = normlab.LayerNorm(shape_arg, **kwargs), nn.LayerNorm(shape_arg, **kwargs)
    shape = (*leading, *normalized)
    train_side_by_side(
        ours, theirs, _inputs(lambda: shape, 2, dtype, seed), [], TOL[dtype], backend, seed
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(
    normalized=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    leading=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    elementwise_affine=st.booleans(),
    eps=st.sampled_from([None, 1e-6, 1e-2]),
    scale=st.sampled_from([1.0, 1e-4]),
    seed=st.integers(0, 2**31),
)
def test_rmsnorm(backend, dtype, normalized, leading, elementwise_affine, eps, scale, seed):
    kwargs = {"eps": eps, "elementwise_affine": elementwise_affine, "dtype": dtype}
    ours, theirs = normlab.RMSNorm(normalized, **kwargs), nn.RMSNorm(normalized, **kwargs)
    shape = (*leading, *normalized)
    # scale=1e-4 makes eps=None matter: the machine epsilon is then not negligible.
    inputs = [x * scale for x in _inputs(lambda: shape, 2, dtype, seed)]
    train_side_by_side(ours, theirs, inputs, [], TOL[dtype], backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(
    size=st.integers(1, 7),
    alpha=st.sampled_from([1e-4, 1e-2, 1.0]),
    beta=st.sampled_from([0.5, 0.75, 2.0]),
    k=st.sampled_from([1.0, 2.0]),
    channels=st.integers(1, 12),
    spatial=st.sampled_from([(4,), (3, 4), (2, 3, 2)]),
    seed=st.integers(0, 2**31),
)
def test_local_response_norm(backend, dtype, size, alpha, beta, k, channels, spatial, seed):
    ours, theirs = (
        normlab.LocalResponseNorm(size, alpha, beta, k),
        nn.LocalResponseNorm(size, alpha, beta, k),
    )
    shape = (2, channels, *spatial)
    train_side_by_side(
        ours, theirs, _inputs(lambda: shape, 1, dtype, seed), [], TOL[dtype], backend, seed
    )


# Half precision: torch.nn computes in the same dtype on CPU; tolerances follow
# from the dtype's precision (TOL). LocalResponseNorm is absent: torch.nn has no
# half-precision CPU kernel for it (normlab falls back to the reference).
HALF_CASES = {
    "BatchNorm2d": (lambda m, d: m.BatchNorm2d(8, dtype=d), (4, 8, 5, 5)),
    "BatchNorm1d(momentum=None)": (lambda m, d: m.BatchNorm1d(8, momentum=None, dtype=d), (16, 8)),
    "InstanceNorm1d(tracked)": (
        lambda m, d: m.InstanceNorm1d(8, affine=True, track_running_stats=True, dtype=d),
        (4, 8, 9),
    ),
    "GroupNorm": (lambda m, d: m.GroupNorm(4, 8, dtype=d), (4, 8, 5, 5)),
    "LayerNorm": (lambda m, d: m.LayerNorm((8, 5), dtype=d), (4, 8, 5)),
    "RMSNorm": (lambda m, d: m.RMSNorm(40, dtype=d), (4, 40)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", list(HALF_CASES))
def test_half_precision(backend, dtype, case):
    make, shape = HALF_CASES[case]
    seed = torch.seed() % 2**31
    train = _inputs(lambda: shape, 2, dtype, seed)
    evals = _inputs(lambda: shape, 1, dtype, seed + 1)
    train_side_by_side(
        make(normlab, dtype), make(nn, dtype), train, evals, TOL[dtype], backend, seed
    )
