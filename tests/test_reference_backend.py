"""The reference backend and the backend switch.

Oracles: float64 math written here from the formulas, torch.autograd.gradcheck.
"""

from __future__ import annotations

import pytest
import torch

import normlab
from normlab import functional as NF


def _standardize64(x: torch.Tensor, dims) -> torch.Tensor:
    x = x.double()
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def test_use_backend_switches_and_restores(monkeypatch):
    calls = []
    real = NF.reference.layer_norm
    monkeypatch.setattr(NF.reference, "layer_norm", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 4)
    NF.layer_norm(x, 4)
    assert calls == [] and normlab.get_backend() is None
    with normlab.use_backend("reference"):
        assert normlab.get_backend() == "reference"
        normlab.LayerNorm(4)(x)
        NF.layer_norm(x, 4, backend="native")  # an explicit backend wins
    assert calls == [1] and normlab.get_backend() is None


def test_use_backend_restores_after_exception():
    with pytest.raises(RuntimeError, match="boom"), normlab.use_backend("reference"):
        raise RuntimeError("boom")
    assert normlab.get_backend() is None


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'.*native, reference"):
        NF.layer_norm(torch.randn(2, 4), 4, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"), normlab.use_backend("fast"):
        pass


# x is (4, 3, 3) and w, b are (3,): the channel axis and the last axis both have 3.
_R = {"backend": "reference"}
GRADCHECK_CASES = {
    "batch_norm": lambda x, w, b: NF.batch_norm(
        x, torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype), w, b, True, **_R
    ),
    "instance_norm": lambda x, w, b: NF.instance_norm(x, weight=w, bias=b, **_R),
    "group_norm": lambda x, w, b: NF.group_norm(x, 3, w, b, **_R),
    "layer_norm": lambda x, w, b: NF.layer_norm(x, 3, w, b, **_R),
    "rms_norm": lambda x, w, b: NF.rms_norm(x, 3, w, 1e-6, **_R),
    "local_response_norm": lambda x, w, b: NF.local_response_norm(
        x * w.view(1, 3, 1) + b.view(1, 3, 1), 2, 0.1, 0.75, 1.0, **_R
    ),
}


@pytest.mark.parametrize("name", list(GRADCHECK_CASES))
def test_gradcheck_reference(name):
    fn = GRADCHECK_CASES[name]
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_reference_matches_float64_formulas():
    x = torch.randn(4, 6, 5, 5) * 3 + 1
    ref = dict(backend="reference")
    cases = [
        (NF.batch_norm(x, None, None, training=True, **ref), _standardize64(x, (0, 2, 3))),
        (NF.instance_norm(x, **ref), _standardize64(x, (2, 3))),
        (NF.layer_norm(x, (6, 5, 5), **ref), _standardize64(x, (1, 2, 3))),
        (
            NF.group_norm(x, 2, **ref),
            _standardize64(x.view(4, 2, -1), (2,)).view(x.shape),
        ),
        (
            NF.rms_norm(x, 5, eps=1e-5, **ref),
            x.double() / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-5),
        ),
    ]
    for got, want in cases:
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_local_response_norm_matches_the_paper_formula():
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    size, alpha, beta, k = 3, 0.5, 0.75, 2.0
    want = torch.empty_like(x)
    for c in range(7):
        lo, hi = max(0, c - size // 2), min(6, c + (size - 1) // 2)
        energy = (x[:, lo : hi + 1] ** 2).sum(1)
        want[:, c] = x[:, c] / (k + alpha / size * energy) ** beta
    for backend in ("native", "reference"):
        got = NF.local_response_norm(x, size, alpha, beta, k, backend=backend)
        torch.testing.assert_close(got, want)


# Each op on the reference backend, for an (N, C, H, W) input.
REFERENCE_OPS = {
    "batch_norm": lambda t: NF.batch_norm(t, None, None, training=True, **_R),
    "layer_norm": lambda t: NF.layer_norm(t, t.shape[1:], **_R),
    "group_norm": lambda t: NF.group_norm(t, 2, **_R),
    "instance_norm": lambda t: NF.instance_norm(t, **_R),
    "rms_norm": lambda t: NF.rms_norm(t, t.shape[-1], eps=1e-5, **_R),
    "local_response_norm": lambda t: NF.local_response_norm(t, 3, **_R),
}


def _max_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("op", list(REFERENCE_OPS))
def test_large_offset_float32_matches_float64(op):
    """x = 1e4 + N(0, 1) in float32: a two-pass variance keeps 1e-3 relative accuracy."""
    x = (1e4 + torch.randn(8, 4, 16, 16, dtype=torch.float64)).float()
    fn = REFERENCE_OPS[op]
    assert _max_rel(fn(x), fn(x.double())) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", list(REFERENCE_OPS))
def test_half_precision_large_values_stay_finite(dtype, op):
    """|x| up to 6e4 in half precision: x^2 overflows float16; statistics accumulate in float32."""
    x = (torch.rand(4, 4, 8, 8) * 1.2e5 - 6e4).to(dtype)
    fn = REFERENCE_OPS[op]
    y = fn(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert _max_rel(y, fn(x.double()).to(dtype)) < 2e-2


def test_local_response_norm_half_on_cpu_falls_back_to_reference():
    """torch has no half-precision CPU kernel for 4D LRN; auto picks the reference."""
    x = torch.randn(2, 5, 3, 3).to(torch.bfloat16)
    y = normlab.LocalResponseNorm(3)(x)
    want = NF.local_response_norm(x.float(), 3).to(torch.bfloat16)
    torch.testing.assert_close(y, want, rtol=2e-2, atol=2e-2)
