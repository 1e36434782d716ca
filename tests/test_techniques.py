"""The techniques torch.nn lacks, each against its paper's formula computed here
independently in float64 NumPy, plus gradcheck and the identities between them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL, train_side_by_side
from torch import nn

import normlab
from normlab import functional as NF
from normlab import numpy_ref


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _x(*shape, scale=2.0, offset=0.5) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64) * scale + offset


def _chan(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(
                torch.rand_like(p) + 0.5
                if name in ("weight", "v", "scale")
                else torch.randn_like(p) * 0.3
            )
    return module


# ---------------------------------------------------------------- Batch Renorm


def _renorm_formula(x, mu, var, eps, r_max, d_max, gamma, beta):
    axes = (0, *range(2, x.ndim))
    mb, vb = x.mean(axes), x.var(axes)
    sb, s = np.sqrt(vb + eps), np.sqrt(var + eps)
    r = np.clip(sb / s, 1 / r_max, r_max)
    d = np.clip((mb - mu) / s, -d_max, d_max)
    xhat = (x - _chan(mb, x.ndim)) / _chan(sb, x.ndim) * _chan(r, x.ndim) + _chan(d, x.ndim)
    return xhat * _chan(gamma, x.ndim) + _chan(beta, x.ndim), r, mb, vb


def test_batch_renorm_formula_running_update_and_stopped_gradient():
    m = _randomize(
        normlab.BatchRenorm2d(
            4, r_max=1.5, d_max=0.5, warmup_steps=0, r_max_steps=0, d_max_steps=0
        ).double()
    )
    with torch.no_grad():
        m.running_mean.copy_(torch.randn(4))
        m.running_var.uniform_(0.5, 3)
    mu, var = _np(m.running_mean).copy(), _np(m.running_var).copy()
    x = _x(6, 4, 3, 3, scale=3.0).requires_grad_()
    y = m(x)
    want, r, mb, vb = _renorm_formula(_np(x), mu, var, m.eps, 1.5, 0.5, _np(m.weight), _np(m.bias))
    np.testing.assert_allclose(_np(y), want, rtol=1e-10, atol=1e-12)
    assert (r == 1.5).any() or (r == 1 / 1.5).any(), "the test should exercise the clip"
    n = x.numel() // 4
    np.testing.assert_allclose(_np(m.running_mean), 0.9 * mu + 0.1 * mb, rtol=1e-12)
    np.testing.assert_allclose(_np(m.running_var), 0.9 * var + 0.1 * vb * n / (n - 1), rtol=1e-12)
    # r and d carry no gradient: dx is BatchNorm's backward with gamma * r.
    dy = np.random.default_rng().normal(size=x.shape)
    y.backward(torch.tensor(dy))
    _, cache = numpy_ref.batch_norm_forward(_np(x), _np(m.weight) * r, _np(m.bias), eps=m.eps)
    dx, _, _ = numpy_ref.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(_np(x.grad), dx, rtol=1e-8, atol=1e-10)


def test_batch_renorm_schedule_ramps_as_in_the_paper():
    m = normlab.BatchRenorm1d(
        2, r_max=3.0, d_max=5.0, warmup_steps=10, r_max_steps=20, d_max_steps=30
    )
    limits = {}
    for step in (0, 9, 10, 15, 20, 25, 30, 100):
        m.num_batches_tracked.fill_(step)
        limits[step] = m.current_limits()
    assert limits[0] == limits[9] == (1.0, 0.0)
    assert limits[15] == pytest.approx((2.0, 1.25))
    assert limits[25] == pytest.approx((3.0, 3.75))
    assert limits[30] == limits[100] == (3.0, 5.0)
    zero = normlab.BatchRenorm1d(2, warmup_steps=0, r_max_steps=0, d_max_steps=0)
    assert zero.current_limits() == (3.0, 5.0)
    default = normlab.BatchRenorm2d(2)  # the paper's: 5k warm-up, r_max 3 at 40k, d_max 5 at 25k
    default.num_batches_tracked.fill_(40000)
    assert default.current_limits() == (3.0, 5.0)


def test_batch_renorm_steps_count_training_batches():
    m = normlab.BatchRenorm1d(3, warmup_steps=2, r_max_steps=2, d_max_steps=2)
    for _ in range(3):
        m(torch.randn(8, 3))
    m.eval()(torch.randn(8, 3))
    assert int(m.num_batches_tracked) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_batch_renorm_with_unit_limits_is_batchnorm(dtype):
    """r_max = 1, d_max = 0: training equals BatchNorm (outputs, gradients, running stats)."""
    ours = normlab.BatchRenorm2d(5, r_max=1.0, d_max=0.0, dtype=dtype)
    theirs = nn.BatchNorm2d(5, dtype=dtype)
    ours.num_batches_tracked.fill_(10**6)  # well past any schedule
    theirs.num_batches_tracked.fill_(10**6)
    inputs = [_x(4, 5, 3, 3).to(dtype) for _ in range(3)]
    train_side_by_side(ours, theirs, inputs, inputs[:1], TOL[dtype], "reference")


# ---------------------------------------------------------------- Ghost BatchNorm


def test_ghost_batch_norm_formula_per_virtual_batch():
    m = _randomize(normlab.GhostBatchNorm1d(3, virtual_batch_size=4).double())
    x = _x(10, 3, 5)
    y = _np(m(x))
    xs, chunks, means, variances = _np(x), [(0, 4), (4, 8), (8, 10)], [], []
    for lo, hi in chunks:
        c = xs[lo:hi]
        mean, var = c.mean((0, 2)), c.var((0, 2))
        want = (c - _chan(mean, 3)) / np.sqrt(_chan(var, 3) + m.eps) * _chan(
            _np(m.weight), 3
        ) + _chan(_np(m.bias), 3)
        np.testing.assert_allclose(y[lo:hi], want, rtol=1e-10, atol=1e-12)
        n = c.size // 3
        means.append(mean)
        variances.append(var * n / (n - 1))
    np.testing.assert_allclose(_np(m.running_mean), 0.1 * np.mean(means, 0), rtol=1e-12)
    np.testing.assert_allclose(_np(m.running_var), 0.9 + 0.1 * np.mean(variances, 0), rtol=1e-12)
    assert int(m.num_batches_tracked) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ghost_batch_norm_with_a_large_virtual_batch_is_batchnorm(dtype):
    ours = normlab.GhostBatchNorm2d(4, virtual_batch_size=64, momentum=None, dtype=dtype)
    theirs = nn.BatchNorm2d(4, momentum=None, dtype=dtype)
    inputs = [_x(6, 4, 3, 3).to(dtype) for _ in range(3)]
    train_side_by_side(ours, theirs, inputs, inputs[:1], TOL[dtype], "reference")


def test_ghost_batch_norm_virtual_batch_of_one_value_is_an_error():
    with pytest.raises(
        normlab.NormInputError, match=r"virtual batch of 1.*more than 1 value per channel"
    ):
        normlab.GhostBatchNorm1d(3, virtual_batch_size=4)(torch.randn(5, 3))


# ---------------------------------------------------------------- FrozenBatchNorm


def test_frozen_batchnorm_formula_and_torch_state_dict():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3))
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    frozen = normlab.FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict())  # strict; num_batches_tracked dropped
    assert list(frozen.parameters()) == []
    x = torch.randn(2, 3, 4, 4)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    want = x * scale.view(1, 3, 1, 1) + (bn.bias - bn.running_mean * scale).view(1, 3, 1, 1)
    torch.testing.assert_close(frozen.train()(x), want.detach())
    torch.testing.assert_close(frozen(x), bn.eval()(x))


def _convnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 4, 1), normlab.BatchNorm2d(4)),
    )


def test_freeze_and_unfreeze_batchnorm_keep_the_function():
    model = _convnet()
    for _ in range(3):
        model(torch.randn(4, 3, 6, 6))
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    normlab.freeze_batchnorm(model)
    assert sum(isinstance(m, normlab.FrozenBatchNorm2d) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.testing.assert_close(model(x), before)
    normlab.unfreeze_batchnorm(model)
    assert sum(isinstance(m, normlab.BatchNormNd) for m in model.modules()) == 2
    torch.testing.assert_close(model(x), before)
    assert not model.training


def test_freeze_batchnorm_without_running_stats_is_an_error():
    with pytest.raises(ValueError, match="no running statistics to freeze"):
        normlab.freeze_batchnorm(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)))


# ---------------------------------------------------------------- FRN, EvoNorm


@pytest.mark.parametrize("tlu", [True, False])
@pytest.mark.parametrize("learnable_eps", [False, True])
def test_filter_response_norm_formula(tlu, learnable_eps):
    m = _randomize(normlab.FilterResponseNorm2d(4, learnable_eps=learnable_eps, tlu=tlu).double())
    x = _x(3, 4, 5, 5)
    xs = _np(x)
    eps = m.eps + (abs(m.learned_eps.item()) if learnable_eps else 0.0)
    nu2 = (xs**2).mean((2, 3), keepdims=True)
    want = xs / np.sqrt(nu2 + eps) * _chan(_np(m.weight), 4) + _chan(_np(m.bias), 4)
    if tlu:
        want = np.maximum(want, _chan(_np(m.tau), 4))
    np.testing.assert_allclose(_np(m(x)), want, rtol=1e-10, atol=1e-12)


def test_evonorm_b0_formula_train_and_eval():
    m = _randomize(normlab.EvoNorm2dB0(4).double())
    x = _x(5, 4, 3, 3)
    xs, g, b, v = _np(x), _np(m.weight), _np(m.bias), _np(m.v)
    var_b = xs.var((0, 2, 3))
    var_i = xs.var((2, 3), keepdims=True)

    def formula(vb):
        den = np.maximum(np.sqrt(_chan(vb, 4) + m.eps), _chan(v, 4) * xs + np.sqrt(var_i + m.eps))
        return xs / den * _chan(g, 4) + _chan(b, 4)

    np.testing.assert_allclose(_np(m(x)), formula(var_b), rtol=1e-10, atol=1e-12)
    n = xs.size // 4
    np.testing.assert_allclose(_np(m.running_var), 0.9 + 0.1 * var_b * n / (n - 1), rtol=1e-12)
    running = _np(m.running_var).copy()
    np.testing.assert_allclose(_np(m.eval()(x)), formula(running), rtol=1e-10, atol=1e-12)


def test_evonorm_s0_formula():
    m = _randomize(normlab.EvoNorm2dS0(8, groups=2).double())
    x = _x(3, 8, 4, 4)
    xs, v = _np(x), _chan(_np(m.v), 4)
    std = np.sqrt(xs.reshape(3, 2, -1).var(2) + m.eps)  # (N, G)
    gated = xs * (1 / (1 + np.exp(-v * xs)))
    want = gated / np.repeat(std, 4, axis=1)[:, :, None, None]
    want = want * _chan(_np(m.weight), 4) + _chan(_np(m.bias), 4)
    np.testing.assert_allclose(_np(m(x)), want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- Switchable


def test_switchable_norm_formula_train_and_eval():
    m = _randomize(normlab.SwitchableNorm2d(4).double())
    x = _x(3, 4, 5, 5)
    xs = _np(x)
    wm = np.exp(_np(m.mean_weight)) / np.exp(_np(m.mean_weight)).sum()
    wv = np.exp(_np(m.var_weight)) / np.exp(_np(m.var_weight)).sum()
    stats = {
        "in": (xs.mean((2, 3), keepdims=True), xs.var((2, 3), keepdims=True)),
        "ln": (xs.mean((1, 2, 3), keepdims=True), xs.var((1, 2, 3), keepdims=True)),
        "bn": (xs.mean((0, 2, 3), keepdims=True), xs.var((0, 2, 3), keepdims=True)),
    }

    def formula(bn_mean, bn_var):
        mean = wm[0] * stats["in"][0] + wm[1] * stats["ln"][0] + wm[2] * bn_mean
        var = wv[0] * stats["in"][1] + wv[1] * stats["ln"][1] + wv[2] * bn_var
        return (xs - mean) / np.sqrt(var + m.eps) * _chan(_np(m.weight), 4) + _chan(_np(m.bias), 4)

    np.testing.assert_allclose(_np(m(x)), formula(*stats["bn"]), rtol=1e-10, atol=1e-12)
    rm, rv = _chan(_np(m.running_mean), 4), _chan(_np(m.running_var), 4)
    np.testing.assert_allclose(_np(m.eval()(x)), formula(rm, rv), rtol=1e-10, atol=1e-12)


def test_switchable_norm_favouring_batch_statistics_is_batchnorm():
    ours, theirs = normlab.SwitchableNorm2d(3).double(), nn.BatchNorm2d(3).double()
    with torch.no_grad():
        ours.mean_weight.copy_(torch.tensor([-50.0, -50.0, 50.0]))
        ours.var_weight.copy_(torch.tensor([-50.0, -50.0, 50.0]))
    x = _x(4, 3, 3, 3)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)


# ---------------------------------------------------------------- ScaleNorm, DyT, channels-first LN/RMS


@pytest.mark.parametrize("channels_last", [True, False])
def test_scale_norm_formula(channels_last):
    m = normlab.ScaleNorm(6, channels_last=channels_last).double()
    assert m.scale.item() == pytest.approx(6**0.5)
    x = _x(2, 3, 6) if channels_last else _x(2, 6, 3)
    axis = -1 if channels_last else 1
    xs = _np(x)
    want = m.scale.item() * xs / np.linalg.norm(xs, axis=axis, keepdims=True)
    np.testing.assert_allclose(_np(m(x)), want, rtol=1e-10)


@pytest.mark.parametrize("channels_last", [True, False])
def test_dynamic_tanh_formula(channels_last):
    m = _randomize(normlab.DynamicTanh(5, alpha_init=0.7, channels_last=channels_last).double())
    assert m.alpha.shape == (1,)
    x = _x(2, 3, 5) if channels_last else _x(2, 5, 3)
    shape = (5,) if channels_last else (1, 5, 1)
    want = np.tanh(m.alpha.item() * _np(x)) * _np(m.weight).reshape(shape) + _np(m.bias).reshape(
        shape
    )
    np.testing.assert_allclose(_np(m(x)), want, rtol=1e-10)


def _erf_oracle(z: np.ndarray) -> np.ndarray:
    """erf from Python's math module, independent of torch."""
    return np.vectorize(math.erf, otypes=[np.float64])(z)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_dynamic_erf_formula(channels_last, backend):
    m = _randomize(
        normlab.DynamicErf(5, alpha_init=0.7, shift_init=0.2, channels_last=channels_last).double()
    )
    assert m.alpha.shape == m.shift.shape == (1,)
    x = _x(2, 3, 5) if channels_last else _x(2, 5, 3)
    shape = (5,) if channels_last else (1, 5, 1)
    z = m.alpha.item() * _np(x) + m.shift.item()
    want = _erf_oracle(z) * _np(m.weight).reshape(shape) + _np(m.bias).reshape(shape)
    with normlab.use_backend(backend):
        got = m(x)
    np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-14)


def test_dynamic_erf_defaults_and_reset():
    m = normlab.DynamicErf(4)
    assert (m.alpha.item(), m.shift.item()) == (0.5, 0.0)
    assert torch.equal(m.weight, torch.ones(4)) and torch.equal(m.bias, torch.zeros(4))
    assert m.channels_last
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    m.reset_parameters()
    assert (m.alpha.item(), m.shift.item()) == (0.5, 0.0)
    assert torch.equal(m.weight, torch.ones(4)) and torch.equal(m.bias, torch.zeros(4))
    # at its initialization Derf is erf(x / 2): no shift, identity affine
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(m.double()(x), torch.erf(x / 2))


def test_dynamic_erf_functional_without_shift_or_affine():
    x, alpha = _x(3, 4), torch.tensor([0.3], dtype=torch.float64)
    want = torch.from_numpy(_erf_oracle(0.3 * _np(x)))
    for backend in ("native", "reference"):
        torch.testing.assert_close(NF.dynamic_erf(x, alpha, backend=backend), want)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_gradcheck_dynamic_erf_every_input(channels_last, backend):
    x = _x(2, 3, 4).requires_grad_()
    c = 4 if channels_last else 3
    alpha = torch.tensor([0.6], dtype=torch.float64, requires_grad=True)
    shift = torch.tensor([-0.3], dtype=torch.float64, requires_grad=True)
    w, b = _param(c), torch.randn(c, dtype=torch.float64, requires_grad=True)

    def f(x, alpha, shift, w, b):
        return NF.dynamic_erf(x, alpha, shift, w, b, channels_last, backend=backend)

    assert torch.autograd.gradcheck(f, (x, alpha, shift, w, b))
    assert torch.autograd.gradgradcheck(f, (x, alpha, shift, w, b))


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_layernorm2d_and_rmsnorm2d_equal_torch_on_channels_last(backend):
    x = _x(2, 6, 4, 3)
    ln2d, rms2d = (
        _randomize(normlab.LayerNorm2d(6).double()),
        _randomize(normlab.RMSNorm2d(6).double()),
    )
    with normlab.use_backend(backend):
        got_ln, got_rms = ln2d(x), rms2d(x)
    xl = x.permute(0, 2, 3, 1)
    want_ln = F.layer_norm(xl, (6,), ln2d.weight, ln2d.bias, 1e-6).permute(0, 3, 1, 2)
    want_rms = F.rms_norm(xl, (6,), rms2d.weight, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(got_ln, want_ln)
    torch.testing.assert_close(got_rms, want_rms)


# ---------------------------------------------------------------- weights


def test_ws_conv2d_standardizes_each_output_channel():
    conv = normlab.WSConv2d(3, 4, 3, padding=1).double()
    w = _np(conv.weight)
    w_hat = (w - w.mean((1, 2, 3), keepdims=True)) / np.sqrt(w.var((1, 2, 3), keepdims=True) + 1e-5)
    x = _x(2, 3, 5, 5)
    want = F.conv2d(x, torch.tensor(w_hat), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), want)
    assert set(conv.state_dict()) == set(nn.Conv2d(3, 4, 3).state_dict())


def test_weight_norm_is_g_times_direction():
    lin = normlab.weight_norm(nn.Linear(5, 3).double())
    g = _np(lin.parametrizations.weight.original0)
    v = _np(lin.parametrizations.weight.original1)
    np.testing.assert_allclose(_np(lin.weight), g * v / np.linalg.norm(v, axis=1, keepdims=True))


# ---------------------------------------------------------------- identities


def test_groupnorm_one_group_is_layernorm_over_c_h_w_with_per_channel_affine():
    gn = _randomize(normlab.GroupNorm(1, 4).double())
    x = _x(3, 4, 5, 5)
    ln = F.layer_norm(x, (4, 5, 5), eps=gn.eps)
    torch.testing.assert_close(gn(x), ln * gn.weight.view(1, 4, 1, 1) + gn.bias.view(1, 4, 1, 1))


def test_groupnorm_c_groups_is_instancenorm():
    gn, inorm = (
        _randomize(normlab.GroupNorm(4, 4).double()),
        normlab.InstanceNorm2d(4, affine=True).double(),
    )
    inorm.load_state_dict(gn.state_dict())
    x = _x(3, 4, 5, 5)
    torch.testing.assert_close(gn(x), inorm(x))


# ---------------------------------------------------------------- gradcheck


def _param(*shape, low=0.5):
    return (torch.rand(*shape, dtype=torch.float64) + low).requires_grad_()


_R = {"backend": "reference"}
GRADCHECK = {
    # r and d have no gradient by design, so finite differences in x only agree
    # at r_max=1, d_max=0; the stopped gradient itself is tested above.
    "batch_renorm": lambda x, w, b: NF.batch_renorm(
        x,
        torch.zeros(3, dtype=x.dtype),
        torch.ones(3, dtype=x.dtype),
        w,
        b,
        True,
        0.1,
        1e-5,
        1.0,
        0.0,
        **_R,
    ),
    "ghost_batch_norm": lambda x, w, b: NF.ghost_batch_norm(
        x, None, None, w, b, True, 0.1, 1e-5, 2, **_R
    ),
    "filter_response_norm": lambda x, w, b: NF.filter_response_norm(x, w, b, None, 1e-6, **_R),
    "evonorm_b0": lambda x, w, b: NF.evonorm_b0(x, None, w, b, w * 0.5, True, **_R),
    "evonorm_s0": lambda x, w, b: NF.evonorm_s0(x, 3, w, b, w * 0.5, **_R),
    "switchable_norm": lambda x, w, b: NF.switchable_norm(x, None, None, w, b, w, b, True, **_R),
    "scale_norm": lambda x, w, b: NF.scale_norm(x, w.sum(), **_R),
    "dynamic_tanh": lambda x, w, b: NF.dynamic_tanh(x, w[:1], w, b, channels_last=False, **_R),
    "dynamic_erf": lambda x, w, b: NF.dynamic_erf(x, w[:1], b[:1], w, b, channels_last=False, **_R),
    "layer_norm_2d": lambda x, w, b: NF.layer_norm_2d(x, w, b, **_R),
    "rms_norm_2d": lambda x, w, b: NF.rms_norm_2d(x, w, 1e-6, **_R),
    "weight_standardization": lambda x, w, b: NF.weight_standardization(x * w.view(1, 3, 1), **_R),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck(name):
    x = _x(4, 3, 5).requires_grad_()
    w, b = _param(3), torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GRADCHECK[name], (x, w, b))


def test_gradcheck_batch_renorm_affine_with_clipping():
    x = _x(6, 3, 4)
    stats = (
        torch.tensor([3.0, -2.0, 0.0], dtype=torch.float64),
        torch.tensor([9.0, 0.1, 1.0], dtype=torch.float64),
    )

    def fn(w, b):
        rm, rv = (s.clone() for s in stats)
        return NF.batch_renorm(x, rm, rv, w, b, True, 0.1, 1e-5, 1.5, 0.5, backend="reference")

    assert torch.autograd.gradcheck(
        fn, (_param(3), torch.randn(3, dtype=torch.float64, requires_grad=True))
    )


def test_gradcheck_tlu_and_learned_eps():
    x = _x(2, 3, 4, 4).requires_grad_()
    w, b, tau = (
        _param(3),
        torch.randn(3, dtype=torch.float64, requires_grad=True),
        torch.randn(3, dtype=torch.float64, requires_grad=True),
    )
    eps = torch.tensor(1e-3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: NF.filter_response_norm(*a, backend="reference"), (x, w, b, tau, eps)
    )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "x", "pattern"),
    [
        (
            lambda: normlab.BatchRenorm2d(4),
            torch.randn(2, 3, 4, 4),
            r"BatchRenorm2d\(4\): expected 4 channels",
        ),
        (
            lambda: normlab.BatchRenorm2d(4),
            torch.randn(2, 4, 4),
            r"BatchRenorm2d\(4\): expected a 4D input",
        ),
        (lambda: normlab.BatchRenorm1d(4), torch.randn(1, 4), r"more than 1 value per channel"),
        (
            lambda: normlab.GhostBatchNorm2d(4),
            torch.randn(2, 5, 3, 3),
            r"GhostBatchNorm2d\(4\): expected 4 channels",
        ),
        (
            lambda: normlab.FilterResponseNorm2d(4),
            torch.randn(4),
            r"FilterResponseNorm2d\(4\): expected an input with at least 2",
        ),
        (
            lambda: normlab.EvoNorm2dB0(4),
            torch.randn(2, 3, 2, 2),
            r"EvoNorm2dB0\(4\): expected 4 channels",
        ),
        (
            lambda: normlab.EvoNorm2dS0(4, groups=2),
            torch.randn(2, 6, 2, 2),
            r"EvoNorm2dS0\(4\): expected 4 channels",
        ),
        (
            lambda: normlab.SwitchableNorm2d(4),
            torch.randn(2, 3, 2, 2),
            r"SwitchableNorm2d\(4\): expected 4 channels",
        ),
        (
            lambda: normlab.ScaleNorm(4),
            torch.randn(2, 3),
            r"ScaleNorm\(4\): expected 4 channels at dim 1, got 3",
        ),
        (
            lambda: normlab.DynamicTanh(4),
            torch.randn(2, 3),
            r"DynamicTanh\(4\): expected 4 channels",
        ),
        (
            lambda: normlab.DynamicErf(4),
            torch.randn(2, 3),
            r"DynamicErf\(4\): expected 4 channels",
        ),
        (
            lambda: normlab.LayerNorm2d(4),
            torch.randn(2, 3, 2),
            r"LayerNorm2d\(4\): expected 4 channels",
        ),
        (
            lambda: normlab.FrozenBatchNorm2d(4),
            torch.randn(2, 3, 2),
            r"FrozenBatchNorm2d\(4\): expected 4 channels",
        ),
    ],
)
def test_bad_input_names_the_layer(make, x, pattern):
    with pytest.raises(normlab.NormInputError, match=pattern):
        make()(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: normlab.BatchRenorm2d(2),
        lambda: normlab.EvoNorm2dB0(2),
        lambda: normlab.DynamicTanh(2),
        lambda: normlab.DynamicErf(2),
        lambda: normlab.ScaleNorm(2),
        lambda: normlab.SwitchableNorm2d(2),
    ],
)
def test_integer_input_is_a_type_error(make):
    with pytest.raises(TypeError, match="expected a floating-point input"):
        make()(torch.ones(2, 2, 3, 2, dtype=torch.long))


@pytest.mark.parametrize(
    ("ctor", "pattern"),
    [
        (
            lambda: normlab.EvoNorm2dS0(12, groups=5),
            r"EvoNorm2dS0\(12, groups=5\): num_channels \(12\) must be divisible",
        ),
        (lambda: normlab.BatchRenorm2d(4, r_max=0.5), r"need r_max >= 1"),
        (
            lambda: normlab.GhostBatchNorm1d(4, virtual_batch_size=0),
            r"virtual_batch_size must be >= 1",
        ),
    ],
)
def test_bad_constructor_arguments(ctor, pattern):
    with pytest.raises(ValueError, match=pattern):
        ctor()


def test_native_backend_named_for_an_op_torch_lacks():
    x, alpha = torch.randn(4, 3), torch.ones(1)
    with pytest.raises(normlab.NormInputError, match="dynamic_tanh: torch has no native kernel"):
        NF.dynamic_tanh(x, alpha, backend="native")
    with normlab.use_backend("native"):  # a default, not a demand: falls back
        torch.testing.assert_close(NF.dynamic_tanh(x, alpha), torch.tanh(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "name",
    [
        "batchrenorm",
        "ghostbatchnorm",
        "frn",
        "evonorm_b0",
        "evonorm_s0",
        "switchable",
        "layernorm2d",
        "dyt",
        "derf",
    ],
)
def test_half_precision_is_finite_and_close_to_float64(name, dtype):
    m = normlab.create(name, 8, **({"channels_last": False} if name in ("dyt", "derf") else {}))
    x = torch.rand(4, 8, 3, 3, dtype=torch.float64) * 2e4 - 1e4
    want = m.double()(x)
    got = m.to(dtype)(x.to(dtype))
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert ((got.double() - want).abs().max() / want.abs().max()).item() < 2e-2


# ---------------------------------------------------------------- native composites vs reference

COMPOSITES = {
    "batchrenorm": {
        "warmup_steps": 0,
        "r_max_steps": 0,
        "d_max_steps": 0,
        "r_max": 1.5,
        "d_max": 0.5,
    },
    "ghostbatchnorm": {"virtual_batch_size": 3},
    "switchable": {},
    "frn": {},
    "frn-learned-eps": {"learnable_eps": True, "tlu": False},
    "evonorm_b0": {},
    "evonorm_s0": {"groups": 2},
    "scalenorm": {"channels_last": False},
    "rmsnorm2d": {},
    "scalenorm-last": {},
    "derf": {"channels_last": False},
    "derf-last": {},
}


def _composite(name: str) -> nn.Module:
    registry_name = name.split("-")[0]
    m = normlab.create(registry_name, 8, **COMPOSITES[name]).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in m.named_parameters():
            fresh = torch.rand(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(fresh + 0.5 if pname in ("weight", "v", "scale") else fresh - 0.5)
        for bname, b in m.named_buffers():
            if bname == "running_mean":
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64))
            if bname == "running_var":
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
    return m


def _run_backend(m: nn.Module, xs: list[torch.Tensor], backend: str) -> list[torch.Tensor]:
    """Two training steps and one eval step; every output, gradient and buffer."""
    out = []
    with normlab.use_backend(backend):
        for i, x in enumerate(xs):
            m.train(i < len(xs) - 1)
            m.zero_grad()
            xg = x.clone().requires_grad_()
            y = m(xg)
            weights = torch.sin(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
            (y * weights).sum().backward()
            out += [
                y,
                xg.grad,
                *(p.grad for p in m.parameters()),
                *(b.clone() for b in m.buffers()),
            ]
    return out


@pytest.mark.parametrize("name", list(COMPOSITES))
@pytest.mark.parametrize("shape", [(7, 8, 4, 3), (6, 8), (5, 8, 9)], ids=str)
def test_native_composite_equals_reference_in_float64(name, shape):
    if name.endswith("-last"):
        shape = (*shape[:-1], 8) if len(shape) > 2 else shape
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5 for _ in range(3)]
    native = _run_backend(_composite(name), xs, "native")
    reference = _run_backend(_composite(name), xs, "reference")
    assert len(native) == len(reference)
    for i, (a, b) in enumerate(zip(native, reference, strict=True)):
        assert (a is None) == (b is None), i
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"{name}: tensor {i}")


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_native_composite_float32_close_to_float64(name):
    x = torch.randn(6, 8, 5, 8, dtype=torch.float64) * 3 + 1
    m64 = _composite(name)
    m32 = _composite(name).float()
    y64, y32 = m64(x), m32(x.float())
    assert ((y32.double() - y64).abs().max() / y64.abs().max()).item() < 1e-5


@pytest.mark.parametrize(
    "name", ["batchrenorm", "ghostbatchnorm", "switchable", "frn", "evonorm_b0", "evonorm_s0"]
)
def test_native_composite_empty_batch(name):
    m = _composite(name)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y = m(torch.randn(0, 8, 3, 3, dtype=torch.float64))
    assert y.shape == (0, 8, 3, 3)
    for key, value in m.state_dict().items():
        if key != "num_batches_tracked":
            torch.testing.assert_close(value, before[key])


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_native_composite_on_non_contiguous_tensors(name):
    """Inputs and incoming gradients with permuted strides (as in a transformer)."""
    x = (torch.randn(5, 6, 8, dtype=torch.float64) * 2).permute(0, 2, 1)  # (N, C=8, M=6)
    if name.endswith("-last"):
        x = torch.randn(5, 8, 6, dtype=torch.float64).transpose(1, 2)  # last axis 8
    outs = []
    for backend in ("native", "reference"):
        m = _composite(name)
        xg = x.clone().requires_grad_()
        with normlab.use_backend(backend):
            y = m(xg)
        grad = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape[::-1])
        y.backward(grad.permute(*reversed(range(y.dim()))))  # a non-contiguous gradient
        outs.append((y.detach(), xg.grad))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
