"""Adaptive (modulated) LayerNorm / RMSNorm and adaLN-Zero (issue 16, item 4).

Oracles: the formula y = norm(x) * (1 + scale) + shift composed of plain float64
torch ops (F.layer_norm / F.rms_norm, broadcasting by hand), differentiated by
autograd; DiT's block written out in float64 torch; the NumPy reference against
float64 autograd. Every backend (native, reference, and the Triton kernel under
the interpreter on CPU) is held to the float64 oracle, forward and every gradient.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import needs_kernels, rel_err
from torch import nn

import normlab
from normlab import functional as NF
from normlab import numpy_ref
from normlab.norms.adaptive import Modulation

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
BACKENDS = [
    "native",
    "reference",
    pytest.param("triton", marks=needs_kernels),
]
# Relative error (max |a - b| / max(max |b|, 1)) against float64, per dtype.
TOL = {torch.float32: 2e-5, torch.bfloat16: 4e-2}
EPS = 1e-6


def _oracle(x, shift, scale, weight, bias, rms):
    """norm(x) * (1 + scale) + shift in the inputs' dtype, by plain torch ops."""
    n = (
        F.rms_norm(x, (x.shape[-1],), weight, EPS)
        if rms
        else F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)
    )
    if shift.dim() < x.dim():  # one row per sample: broadcast over the tokens
        view = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        shift, scale = shift.reshape(view), scale.reshape(view)
    return n * (1 + scale) + shift


def _ours(backend, rms):
    def fn(x, shift, scale, weight, bias):
        if rms:
            return NF.modulated_rms_norm(x, shift, scale, weight, EPS, backend=backend)
        return NF.modulated_layer_norm(x, shift, scale, weight, bias, EPS, backend=backend)

    return fn


def _case(x_shape, mod_shape, affine, seed):
    """x (mean 1, std 2), shift, scale, weight, bias (None unless affine), dy: float64."""
    gen = torch.Generator().manual_seed(seed)
    d = x_shape[-1]

    def r(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    weight = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5 if affine else None
    bias = r(d) if affine else None
    return r(*x_shape) * 2 + 1, r(*mod_shape), r(*mod_shape) * 0.5, weight, bias, r(*x_shape)


def _grads(fn, tensors, dy):
    """fn(*tensors) and the gradients of sum(fn * dy) for each tensor (None stays None)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    given = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, given, dy.to(y.dtype)))
    return [y] + [None if t is None else next(grads) for t in leaves]


@pytest.fixture
def poisoned(monkeypatch):
    """Buffers from torch.empty / empty_like start as NaN: an unwritten element shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


# x shape, modulation shape: per sample over tokens, per token, (B, D), two token axes;
# D = 33 (not a power of 2); (2, 20, 300) splits each sample's rows over two programs.
SHAPES = [
    ((3, 5, 33), (3, 33)),
    ((3, 5, 33), (3, 5, 33)),
    ((4, 33), (4, 33)),
    ((2, 3, 2, 33), (2, 33)),
    ((2, 20, 300), (2, 300)),
]
NAMES = ["input", "shift", "scale", "weight", "bias"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize(("x_shape", "mod_shape"), SHAPES, ids=str)
def test_every_backend_matches_float64(poisoned, x_shape, mod_shape, rms, backend, dtype):
    affine = len(x_shape) != 2  # (B, D) without affine, as DiT uses the norm
    x, shift, scale, w, b, dy = _case(x_shape, mod_shape, affine, seed=sum(x_shape) + rms)
    b = None if rms else b
    exact = _grads(lambda *t: _oracle(*t, rms), (x, shift, scale, w, b), dy)
    on = [None if t is None else t.to(DEVICE, dtype) for t in (x, shift, scale, w, b)]
    ours = _grads(_ours(backend, rms), on, dy.to(DEVICE))
    for name, a, e in zip(["output", *NAMES], ours, exact, strict=True):
        assert (a is None) == (e is None), name
        if a is None:
            continue
        assert a.dtype == dtype and a.shape == e.shape, f"{name}: {a.dtype} {tuple(a.shape)}"
        assert torch.isfinite(a).all(), f"{name}: NaN/inf (unwritten memory?)"
        err = rel_err(a.cpu(), e)
        assert err <= TOL[dtype], f"{backend} {name}: relative error {err:.2e} > {TOL[dtype]:.0e}"


@needs_kernels
def test_kernel_reads_projection_chunks_in_place_and_matches_float64(poisoned):
    """shift and scale as DiT makes them, strided chunks of one (B, T, 2D) projection."""
    x, _, _, _, _, dy = _case((2, 3, 40), (2, 3, 40), False, seed=3)
    proj = torch.randn(2, 3, 80, dtype=torch.float64)

    def chunked(fn):
        return lambda x, proj: fn(x, *proj.chunk(2, dim=-1), None, None)

    exact = _grads(chunked(lambda *t: _oracle(*t, False)), (x, proj), dy)
    ours = _grads(chunked(_ours("triton", False)), (x.float(), proj.float()), dy)
    for a, e in zip(ours, exact, strict=True):
        assert rel_err(a, e) <= TOL[torch.float32]


@needs_kernels
def test_rows_wider_than_a_tile_fall_back_to_native_with_a_debug_line(monkeypatch, caplog):
    from normlab.kernels import modulated

    monkeypatch.setattr(modulated, "MAX_TILE", 16)
    x, shift, scale, *_ = _case((2, 33), (2, 33), False, seed=1)
    with caplog.at_level(logging.DEBUG, logger="normlab.functional"):
        y = NF.modulated_layer_norm(x.float(), shift.float(), scale.float(), backend="triton")
    assert any("33 features" in r.getMessage() for r in caplog.records)
    assert rel_err(y, _oracle(x, shift, scale, None, None, False)) <= TOL[torch.float32]


# --- NumPy reference ---------------------------------------------------------------


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("mod_shape", [(3, 6), (3, 4, 6)], ids=["per-sample", "per-token"])
def test_numpy_reference_against_float64_autograd(mod_shape, rms):
    x, shift, scale, w, b, dy = _case((3, 4, 6), mod_shape, True, seed=7)
    tensors = (x, shift, scale, w) if rms else (x, shift, scale, w, b)
    arrays = [t.numpy() for t in tensors]
    if rms:
        y, cache = numpy_ref.modulated_rms_norm_forward(*arrays, eps=EPS)
        grads = numpy_ref.modulated_rms_norm_backward(dy.numpy(), cache)
    else:
        y, cache = numpy_ref.modulated_layer_norm_forward(*arrays, eps=EPS)
        grads = numpy_ref.modulated_layer_norm_backward(dy.numpy(), cache)
    exact = _grads(lambda *t: _oracle(*t, *([None] if rms else []), rms), tensors, dy)
    for name, a, e in zip(["output", *NAMES[: len(grads)]], [y, *grads], exact, strict=True):
        np.testing.assert_allclose(a, e.detach().numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def test_numpy_reference_names_itself_on_bad_shapes():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"modulated_layer_norm_forward: .*shift \(3, 4\)"):
        numpy_ref.modulated_layer_norm_forward(
            x, np.zeros((3, 4)), np.zeros((3, 4)), np.ones(4), np.zeros(4)
        )


# --- Modules -----------------------------------------------------------------------


def _plain_norm(x, rms):
    """LayerNorm or RMSNorm over the last axis without affine, from their formulas."""
    if rms:
        return x / (x.pow(2).mean(-1, keepdim=True) + EPS).sqrt()
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / ((x - mean).pow(2).mean(-1, keepdim=True) + EPS).sqrt()


def _dit_modulate(n, shift, scale):
    """DiT's modulate(n, shift, scale) (shift, scale (B, D), or per token)."""
    if shift.dim() < n.dim():
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return n * (1 + scale) + shift


def _randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5 + (p.dim() == 1))


@pytest.mark.parametrize("per_token", [False, True], ids=["per-sample", "per-token"])
@pytest.mark.parametrize("cls", [normlab.AdaptiveLayerNorm, normlab.AdaptiveRMSNorm])
def test_adaptive_norm_matches_film_formula_with_gradients(cls, per_token):
    """y = norm(x) * (1 + scale) + shift with (shift, scale) = Linear(SiLU(c)), float64;
    gradients reach x, c and the projection (and the affine)."""
    rms = cls is normlab.AdaptiveRMSNorm
    m = cls(12, 5, elementwise_affine=True, zero_init=False).double()
    _randomize(m)
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    c = torch.randn(*((2, 3) if per_token else (2,)), 5, dtype=torch.float64, requires_grad=True)
    y = m(x, c)

    w = m.linear.weight.detach().requires_grad_()
    bl = m.linear.bias.detach().requires_grad_()
    shift, scale = F.linear(F.silu(c), w, bl).chunk(2, dim=-1)
    gamma = m.weight.detach().requires_grad_()
    beta = None if rms else m.bias.detach().requires_grad_()
    expected = _dit_modulate(_plain_norm(x, rms) * gamma + (0 if rms else beta), shift, scale)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)

    dy = torch.randn_like(y)
    ours = torch.autograd.grad(y, [x, c, m.linear.weight, m.linear.bias, m.weight], dy)
    theirs = torch.autograd.grad(expected, [x, c, w, bl, gamma], dy)
    names = ["x", "c", "linear.weight", "linear.bias", "weight"]
    for name, a, e in zip(names, ours, theirs, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11, msg=name)
        assert a.abs().sum() > 0, f"no gradient reaches {name}"


def test_adaptive_norm_starts_as_the_plain_norm():
    """zero_init (the default, as DiT): shift = scale = 0, so y = LayerNorm(x) / RMSNorm(x)."""
    x, c = torch.randn(2, 4, 16), torch.randn(2, 8)
    torch.testing.assert_close(
        normlab.AdaptiveLayerNorm(16, 8)(x, c), F.layer_norm(x, (16,), eps=EPS)
    )
    torch.testing.assert_close(normlab.AdaptiveRMSNorm(16, 8)(x, c), F.rms_norm(x, (16,), eps=EPS))
    ln = normlab.AdaptiveLayerNorm(16, 8)
    assert ln.weight is None and ln.bias is None and not any(ln.linear.weight.flatten())


class _DiTBlock(nn.Module):
    """A DiT block conditioned by normlab.AdaLNZero (what docs/layers.md shows)."""

    def __init__(self, dim, heads, cond_dim, norm="layernorm"):
        super().__init__()
        self.ada = normlab.AdaLNZero(dim, cond_dim, norm=norm)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def _attention(self, h):
        return self.attn(h, h, h, need_weights=False)[0]

    def forward(self, x, c):
        attn, mlp = self.ada(c)
        x = self.ada.residual(x, attn, self._attention)
        return self.ada.residual(x, mlp, self.mlp)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_adaln_zero_block_is_the_identity_at_init_and_learns_out_of_it(norm):
    torch.manual_seed(0)
    block = _DiTBlock(16, 2, 8, norm)
    x, c = torch.randn(3, 5, 16), torch.randn(3, 8)
    y = block(x, c)
    assert torch.equal(y, x), "adaLN-Zero block is not the identity at initialization"

    loss = (y * torch.randn_like(y)).sum()
    loss.backward()
    assert block.ada.linear.weight.grad.abs().sum() > 0, "no gradient reaches the projection"
    # Every gate is 0: the branches get no gradient until the gates move.
    assert all(not p.grad.any() for p in block.mlp.parameters())
    torch.optim.SGD(block.parameters(), lr=0.1).step()
    assert not torch.allclose(block(x, c), x), "still the identity after an optimizer step"


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_adaln_zero_follows_dits_chunks_and_formula(norm):
    """With a random projection, the block equals DiT's forward written out in float64:
    chunks (shift, scale, gate) per sublayer, x + gate * f(modulate(norm(x)))."""
    block = _DiTBlock(16, 2, 8, norm).double()
    _randomize(block.ada)
    x, c = torch.randn(3, 5, 16, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    chunks = F.linear(F.silu(c), block.ada.linear.weight, block.ada.linear.bias).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
    rms = norm == "rmsnorm"
    attn_in = _dit_modulate(_plain_norm(x, rms), shift_msa, scale_msa)
    h = x + gate_msa.unsqueeze(1) * block._attention(attn_in)
    mlp_in = _dit_modulate(_plain_norm(h, rms), shift_mlp, scale_mlp)
    expected = h + gate_mlp.unsqueeze(1) * block.mlp(mlp_in)
    torch.testing.assert_close(block(x, c), expected, rtol=1e-10, atol=1e-10)


def test_adaln_zero_per_token_conditioning():
    ada = normlab.AdaLNZero(6, 4, sublayers=1).double()
    _randomize(ada)
    x, c = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    (mod,) = ada(c)
    assert isinstance(mod, Modulation) and mod.gate.shape == (2, 3, 6)
    expected = x + mod.gate * torch.tanh(_dit_modulate(_plain_norm(x, False), mod.shift, mod.scale))
    torch.testing.assert_close(ada.residual(x, mod, torch.tanh), expected)


@needs_kernels
def test_modules_on_the_triton_backend_match_float64():
    """Through the layers: the projection's chunks reach the kernel, gradients come back."""
    m = normlab.AdaptiveLayerNorm(24, 6, zero_init=False).to(DEVICE)
    x, c = torch.randn(2, 7, 24, device=DEVICE), torch.randn(2, 7, 6, device=DEVICE)
    exact = m.double()(x.double(), c.double())
    exact_grad = torch.autograd.grad(exact.sum(), m.linear.weight)[0]
    m.float()
    with normlab.use_backend("triton"):
        y = m(x, c)
    assert rel_err(y.cpu(), exact.cpu()) <= 1e-5
    grad = torch.autograd.grad(y.sum(), m.linear.weight)[0]
    assert rel_err(grad.cpu(), exact_grad.cpu()) <= 1e-5


# --- Bad input ---------------------------------------------------------------------


def test_functional_bad_input_names_the_function_and_the_shapes():
    x = torch.randn(2, 3, 8)
    ok = torch.randn(2, 8)
    cases = [
        (dict(shift=torch.randn(3, 8)), r"modulated_layer_norm: shift must have shape \(2, 8\) "
         r"\(per sample\) or the input's \(2, 3, 8\) \(per token\), got \(3, 8\)"),
        (dict(scale=ok.double()), "scale must have the input's dtype torch.float32, got "
         "torch.float64"),
        (dict(scale=torch.randn(2, 3, 8)), r"shift and scale must have the same shape, got "
         r"\(2, 8\) and \(2, 3, 8\)"),
        (dict(weight=torch.ones(7)), r"weight must have shape \(8,\) for an input of shape "
         r"\(2, 3, 8\), got \(7\)"),
        (dict(input=torch.randn(8)), r"at least 2 dimensions \(B, \*, D\), got a 1D input"),
    ]  # fmt: skip
    for change, message in cases:
        kwargs = dict(input=x, shift=ok, scale=ok) | change
        with pytest.raises(normlab.NormInputError, match=message):
            NF.modulated_layer_norm(**kwargs)
    with pytest.raises(TypeError, match="modulated_rms_norm: expected a floating-point"):
        NF.modulated_rms_norm(torch.ones(2, 8, dtype=torch.long), ok, ok)


def test_modules_bad_input_names_the_layer_and_the_shapes():
    m = normlab.AdaptiveLayerNorm(8, 4)
    x, c = torch.randn(2, 3, 8), torch.randn(2, 4)
    who = r"AdaptiveLayerNorm\(8, cond_dim=4\): "
    with pytest.raises(normlab.NormInputError, match=who + "expected 8 channels at dim 2, got 6"):
        m(torch.randn(2, 3, 6), c)
    with pytest.raises(
        normlab.NormInputError, match=who + r"expected c of shape \(B, 4\).*got \(2, 5\)"
    ):
        m(x, torch.randn(2, 5))
    with pytest.raises(normlab.NormInputError, match=who + r"c of shape \(3, 4\) does not fit"):
        m(x, torch.randn(3, 4))
    with pytest.raises(normlab.NormInputError, match=who + "expected c of dtype torch.float32"):
        m(x, c.double())
    with pytest.raises(TypeError, match=r"AdaptiveRMSNorm\(8, cond_dim=4\): expected a floating"):
        normlab.AdaptiveRMSNorm(8, 4)(x.long(), c)
    with pytest.raises(ValueError, match="AdaptiveLayerNorm: cond_dim must be positive, got 0"):
        normlab.AdaptiveLayerNorm(8, 0)
    ada = normlab.AdaLNZero(8, 4)
    with pytest.raises(ValueError, match="AdaLNZero: unknown norm 'groupnorm'"):
        normlab.AdaLNZero(8, 4, norm="groupnorm")
    mods = ada(c)
    with pytest.raises(normlab.NormInputError, match=r"AdaLNZero\(8, cond_dim=4\): the "
                       r"modulation of shape \(2, 8\) does not fit an input of shape \(5, 3, 8\)"):  # fmt: skip
        ada.modulate(torch.randn(5, 3, 8), mods[0])
