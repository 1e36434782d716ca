"""LMRMSNorm / lm_rms_norm: RMSNorm as language models run it (issue 16).

Oracles: the float64 formula composed by hand, and hand-written
re-implementations of the two documented orders of operations (Hugging Face
transformers' LlamaRMSNorm and GemmaRMSNorm forwards), bitwise in half
precision where normlab's native backend follows the same order.
"""

from __future__ import annotations

import math

import pytest
import torch

import normlab
import normlab.functional as NF

BACKENDS = ["native", "reference"]
HALF = [torch.bfloat16, torch.float16]


def _x(*shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).mul(3).add(0.5).to(dtype)


def _w(n, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=gen, dtype=torch.float64) - 0.3).to(dtype)


def _formula64(x, w, eps, unit_offset, partial):
    """y_i = s_i x_i / sqrt(sum_{j<k} x_j^2 / k + eps), k = ceil(p n), by hand."""
    n = x.shape[-1]
    k = n if partial is None else math.ceil(partial * n)
    ms = sum(x[..., j] * x[..., j] for j in range(k)) / k
    s = 1.0 + w if unit_offset else w
    return x / torch.sqrt(ms + eps).unsqueeze(-1) * s


def _llama_order(x, w, eps, unit_offset):
    """LlamaRMSNorm's order: float32 x̂, cast to the input dtype, times the weight."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    s = 1.0 + w if unit_offset else w
    return s * h.to(x.dtype)


def _gemma_order(x, w, eps, unit_offset):
    """GemmaRMSNorm's order: float32 x̂ times the float32 scale, then the cast."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    s = 1.0 + w.float() if unit_offset else w.float()
    return (h * s).type_as(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cast", ["llama", "gemma"])
@pytest.mark.parametrize("unit_offset", [False, True])
@pytest.mark.parametrize("partial", [None, 0.25, 0.5, 1.0, 0.3])
def test_float64_formula(backend, cast, unit_offset, partial):
    x, w = _x(3, 4, 8), _w(8)
    got = NF.lm_rms_norm(x, w, 1e-5, unit_offset, cast, partial, backend=backend)
    torch.testing.assert_close(got, _formula64(x, w, 1e-5, unit_offset, partial))


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_statistic_ignores_the_other_features(backend):
    x = _x(2, 8)
    changed = x.clone()
    changed[:, 4:] *= 10  # outside the first ceil(0.5 * 8) = 4 features
    y, y2 = (NF.lm_rms_norm(t, None, partial=0.5, backend=backend) for t in (x, changed))
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    torch.testing.assert_close(y2[:, 4:], y[:, 4:] * 10)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("unit_offset", [False, True])
def test_llama_cast_is_transformers_order_bit_for_bit(dtype, unit_offset):
    x, w = _x(16, 64, dtype=dtype), _w(64, dtype=dtype)
    got = NF.lm_rms_norm(x, w, 1e-6, unit_offset, "llama", backend="native")
    assert got.dtype == dtype
    assert torch.equal(got, _llama_order(x, w, 1e-6, unit_offset))
    ref = NF.lm_rms_norm(x, w, 1e-6, unit_offset, "llama", backend="reference")
    torch.testing.assert_close(ref, got, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("unit_offset", [False, True])
def test_gemma_cast_is_transformers_order_bit_for_bit(dtype, unit_offset):
    x, w = _x(16, 64, dtype=dtype), _w(64, dtype=dtype)
    got = NF.lm_rms_norm(x, w, 1e-6, unit_offset, "gemma", backend="native")
    assert got.dtype == dtype
    assert torch.equal(got, _gemma_order(x, w, 1e-6, unit_offset))
    ref = NF.lm_rms_norm(x, w, 1e-6, unit_offset, "gemma", backend="reference")
    torch.testing.assert_close(ref, got, rtol=2e-2, atol=1e-2)


def test_llama_and_gemma_casts_differ_in_bfloat16_and_gemma_is_closer():
    x, w = _x(64, 256, dtype=torch.bfloat16), _w(256, dtype=torch.bfloat16)
    exact = _formula64(x.double(), w.double(), 1e-6, True, None)
    llama = NF.lm_rms_norm(x, w, 1e-6, True, "llama")
    gemma = NF.lm_rms_norm(x, w, 1e-6, True, "gemma")
    assert not torch.equal(llama, gemma)
    # one rounding (Gemma) against two (Llama, with 1 + w rounded in bfloat16 too)
    assert (gemma.double() - exact).abs().mean() < (llama.double() - exact).abs().mean()
    # in float32 and float64 the two orders are the same function
    x32, w32 = x.float(), w.float()
    torch.testing.assert_close(
        NF.lm_rms_norm(x32, w32, 1e-6, True, "llama"), NF.lm_rms_norm(x32, w32, 1e-6, True, "gemma")
    )


def test_module_defaults_gemma_starts_as_identity_scale_and_registry():
    llama = normlab.LMRMSNorm(8)
    gemma = normlab.LMRMSNorm(8, unit_offset=True, cast="gemma")
    assert torch.equal(llama.weight, torch.ones(8)) and torch.equal(gemma.weight, torch.zeros(8))
    x = _x(2, 3, 8, dtype=torch.float32)
    plain = NF.lm_rms_norm(x, None)
    torch.testing.assert_close(gemma(x), plain)
    torch.testing.assert_close(llama(x), plain)
    torch.testing.assert_close(normlab.RMSNorm(8, eps=1e-6)(x), plain)
    assert normlab.LMRMSNorm(8, elementwise_affine=False).weight is None
    assert isinstance(normlab.create("rmsnorm_lm", 8), normlab.LMRMSNorm)
    assert normlab.create("llama_rmsnorm", 8, partial=0.5).partial == 0.5
    first = normlab.registry.factory("rmsnorm_lm", "channels_first")(8)
    x4 = _x(2, 8, 3, 3, dtype=torch.float32)
    torch.testing.assert_close(first(x4), llama(x4.movedim(1, -1)).movedim(-1, 1))


@pytest.mark.parametrize("cast", ["llama", "gemma"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_gradcheck(cast, channels_last):
    x = (_x(2, 3, 5) if channels_last else _x(2, 5, 3)).requires_grad_()
    w = _w(5).requires_grad_()
    for backend in BACKENDS:
        torch.autograd.gradcheck(
            lambda x, w, b=backend: NF.lm_rms_norm(
                x, w, 1e-6, True, cast, 0.6, channels_last, backend=b
            ),
            (x, w),
        )


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"cast": "mistral"}, "cast must be one of"), ({"partial": 0.0}, "partial must be")],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        normlab.LMRMSNorm(8, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        NF.lm_rms_norm(torch.randn(2, 8), **kwargs)
    with pytest.raises(normlab.NormInputError, match=r"LMRMSNorm\(8\): expected 8 channels"):
        normlab.LMRMSNorm(8)(torch.randn(2, 7))
