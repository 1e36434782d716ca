"""Residual add fused with RMSNorm / LayerNorm (issue 16, item 1): ``y, h = add_norm(x, r)``.

Oracles: the float64 composition of plain torch ops (h = x + r, then the norm's
formula written out), differentiated by autograd, for every backend (the Triton
kernels under the interpreter on CPU); torch.nn's RMSNorm / LayerNorm after a plain
add for the modules; float64 torch autograd for the NumPy reference.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import needs_kernels, rel_err

import normlab
from normlab import functional as NF
from normlab import numpy_ref

GPU = torch.cuda.is_available()
BACKENDS = [
    "native",
    "reference",
    pytest.param("triton", marks=needs_kernels),
]
# Relative error (max |a - b| / max |b|) against float64, by the dtype of the output.
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


def _device(backend: str) -> str:
    return "cuda" if GPU and backend == "triton" else "cpu"


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty / empty_like hand out NaN-filled memory: an element a kernel fails to
    write shows up as an error."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


def _oracle(x, r, w, b, k: int, eps: float, rms: bool):
    """(y, h) in float64 plain ops over the last ``k`` axes."""
    dims = tuple(range(-k, 0))
    h = x if r is None else x + r
    if rms:
        y = h * torch.rsqrt(h.square().mean(dims, keepdim=True) + eps)
    else:
        mu = h.mean(dims, keepdim=True)
        y = (h - mu) * torch.rsqrt((h - mu).square().mean(dims, keepdim=True) + eps)
    y = y if w is None else y * w
    return (y if b is None else y + b), h


def _forward_backward(fn, tensors, dy, dh):
    """fn(*tensors) -> (y, h), and the gradients of sum(y * dy) + sum(h * dh) for every
    tensor (None entries stay None); dh None: h is not used."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y, h = fn(*leaves)
    outs, grads_in = ([y, h], [dy.to(y.dtype), dh.to(h.dtype)]) if dh is not None else ([y], [dy])
    given = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(outs, given, grads_in, allow_unused=True))
    return y, h, [None if t is None else next(grads) for t in leaves]


def _random(shape, k, x_dtype, r_dtype, seed, affine=True, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    normal = lambda: torch.randn(shape, generator=gen, dtype=torch.float64)  # noqa: E731
    x = (normal() * scale + 1.0).to(x_dtype)
    r = None if r_dtype is None else (normal() * scale).to(r_dtype)
    n_shape = shape[len(shape) - k :]
    w = (torch.rand(n_shape, generator=gen, dtype=torch.float64) + 0.5).to(x_dtype)
    b = (torch.rand(n_shape, generator=gen, dtype=torch.float64) - 0.5).to(x_dtype)
    dy, dh = normal().to(x_dtype), normal()
    return x, r, (w, b) if affine else (None, None), dy, dh


def _check(name, ours, exact, dtype):
    assert ours.dtype == dtype, f"{name}: dtype {ours.dtype}, expected {dtype}"
    assert torch.isfinite(ours).all(), f"{name}: NaN/inf (unwritten memory?)"
    err = rel_err(ours.cpu(), exact)
    assert err <= TOL[dtype], f"{name}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def _compare(backend, rms, shape, k, x_dtype, r_dtype, fp32, seed, affine=True, use_h=True):
    """One call on ``backend`` against the float64 oracle: y, h and every gradient."""
    x, r, (w, b), dy, dh = _random(shape, k, x_dtype, r_dtype, seed, affine)
    dh = dh if use_h else None
    n_shape, eps = shape[len(shape) - k :], 1e-5
    dev = _device(backend)
    on = [None if t is None else t.to(dev) for t in (x, r, w, b)]
    if rms:
        fn = lambda x, r, w, b: NF.add_rms_norm(x, r, n_shape, w, eps, fp32, backend=backend)  # noqa: E731
    else:
        fn = lambda x, r, w, b: NF.add_layer_norm(  # noqa: E731
            x, r, n_shape, w, b, eps, fp32, backend=backend
        )
    y, h, grads = _forward_backward(fn, on, dy.to(dev), None if dh is None else dh.to(dev))
    wide = [None if t is None else t.double() for t in (x, r, w, None if rms else b)]
    y64, h64, grads64 = _forward_backward(
        lambda x, r, w, b: _oracle(x, r, w, b, k, eps, rms),
        wide,
        dy.double(),
        None if dh is None else dh.double(),
    )
    h_dtype = x_dtype if r is None else torch.promote_types(x_dtype, r_dtype)
    h_dtype = torch.promote_types(h_dtype, F32) if fp32 else h_dtype
    what = f"{backend} {'rms' if rms else 'layer'} {shape} x={x_dtype} r={r_dtype} fp32={fp32}"
    _check(f"{what}: y", y, y64, x_dtype)
    _check(f"{what}: h", h, h64, h_dtype)
    for name, g, g64, t in zip(
        ("dx", "dresidual", "dweight", "dbias"), grads, grads64, on, strict=True
    ):
        if g64 is None:
            assert g is None or t is None, f"{what}: {name} should be None"
        else:
            _check(f"{what}: {name}", g, g64, t.dtype)


# x shape, normalized dims, x dtype, residual dtype (None: no residual), residual_in_fp32
CASES = [
    ((3, 5, 33), 1, F32, F32, False),
    ((4, 100), 1, BF16, BF16, False),
    ((4, 100), 1, BF16, BF16, True),  # h in float32 from a bfloat16 residual
    ((2, 3, 48), 1, BF16, F32, True),  # the float32 residual stream: dresidual float32
    ((3, 40), 1, BF16, None, True),  # the stream's first block: h = x in float32
    ((5, 7), 1, F32, None, False),  # h = x
    ((3, 64), 1, F16, F16, False),
    ((3, 4, 5), 2, F32, F32, False),  # over two trailing axes
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rms", [True, False], ids=["rms", "layer"])
@pytest.mark.parametrize(("shape", "k", "x_dtype", "r_dtype", "fp32"), CASES, ids=str)
def test_outputs_and_gradients_match_float64(
    poisoned, backend, rms, shape, k, x_dtype, r_dtype, fp32
):
    _compare(backend, rms, shape, k, x_dtype, r_dtype, fp32, seed=sum(shape) + k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rms", [True, False], ids=["rms", "layer"])
def test_without_affine_and_with_h_unused(poisoned, backend, rms):
    """No weight/bias; h's gradient None (h dropped) with the float32 stream (dtype casts
    in the backward) and without."""
    _compare(backend, rms, (6, 40), 1, F32, F32, False, seed=5, affine=False, use_h=False)
    _compare(backend, rms, (6, 40), 1, BF16, F32, True, seed=6, use_h=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_h_used_passes_its_gradient_through(backend):
    """y unused: dx = dresidual = dh (cast to their dtypes), the weight gets none."""
    dev = _device(backend)
    x = torch.randn(4, 16, dtype=BF16, device=dev, requires_grad=True)
    r = torch.randn(4, 16, device=dev, requires_grad=True)
    w = torch.ones(16, dtype=BF16, device=dev, requires_grad=True)
    _y, h = NF.add_rms_norm(x, r, 16, w, 1e-5, True, backend=backend)
    dh = torch.randn(4, 16, device=dev)
    h.backward(dh)
    assert torch.equal(r.grad, dh) and torch.equal(x.grad, dh.to(BF16))
    assert w.grad is None or not w.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rms_default_eps_is_float32_machine_eps(backend):
    """eps=None: float32's epsilon for float32 and bfloat16 inputs, as torch's RMSNorm."""
    dev = _device(backend)
    gen = torch.Generator().manual_seed(2)
    for dtype in (F32, BF16):
        # |h| ~ 1e-4: mean(h^2) ~ 1e-8, so an eps of 1.2e-7 (float32's) decides the scale
        x, r = (torch.randn(3, 8, generator=gen, dtype=torch.float64) * 1e-4 for _ in "xr")
        x, r = x.to(dtype), r.to(dtype)
        y, _h = NF.add_rms_norm(x.to(dev), r.to(dev), 8, backend=backend)
        exact, _ = _oracle(x.double(), r.double(), None, None, 1, torch.finfo(F32).eps, True)
        assert rel_err(y.cpu(), exact) <= TOL[dtype], dtype


# --- the Triton kernels --------------------------------------------------------------


@needs_kernels
def test_triton_backend_runs_the_fused_kernel(monkeypatch):
    from normlab import kernels

    calls = []
    for op in ("add_rms_norm", "add_layer_norm"):
        real = getattr(kernels, op)
        monkeypatch.setattr(kernels, op, lambda *a, real=real: calls.append(1) or real(*a))
    x = torch.randn(3, 8, device=_device("triton"))
    NF.add_rms_norm(x, x, 8, backend="triton")
    with normlab.use_backend("triton"):
        normlab.AddLayerNorm(8).to(x.device)(x, x)
    assert calls == [1, 1]


@needs_kernels
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: (torch.randn(3, 8, dtype=torch.float64), None), "dtype torch.float64"),
        (lambda: (torch.randn(3, 8), torch.randn(3, 8, dtype=torch.float64)), "a residual of"),
        (lambda: (torch.randn(3, 33), torch.randn(3, 33)), "rows of 33 features"),
    ],
    ids=["float64", "float64-residual", "long-rows"],
)
def test_uncovered_calls_fall_back_to_native(monkeypatch, caplog, make, reason):
    from normlab.kernels import residual

    monkeypatch.setattr(residual, "MAX_TILE", 32)
    x, r = make()
    dev = _device("triton")
    r = None if r is None else r.to(dev)
    with caplog.at_level(logging.DEBUG, logger="normlab.functional"):
        y, _h = NF.add_rms_norm(x.to(dev), r, x.shape[-1], backend="triton")
    assert any(reason in m.getMessage() and "'native'" in m.getMessage() for m in caplog.records)
    exact, _ = _oracle(
        x.double(), None if r is None else r.double().cpu(), None, None, 1, 1e-7, True
    )
    assert rel_err(y.cpu(), exact) <= 1e-4


@needs_kernels
@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd:UserWarning")
def test_compiled_kernel_is_one_op_without_graph_breaks():
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    from normlab import kernels

    def fn(x, r, w):
        y, h = kernels.add_rms_norm(x, r, (8,), w, 1e-5, True)
        return y, h

    dev = _device("triton")
    x, r, (w, _), dy, dh = _random((3, 8), 1, BF16, F32, seed=1)
    args = [t.to(dev) for t in (x, r, w)]
    eager = _forward_backward(fn, args, dy.to(dev), dh.to(dev))
    torch._dynamo.reset()
    record = AotEagerAndRecordGraphs()
    compiled = _forward_backward(
        torch.compile(fn, fullgraph=True, backend=record), args, dy.to(dev), dh.to(dev)
    )
    for a, e in zip([*compiled[:2], *compiled[2]], [*eager[:2], *eager[2]], strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    (fw,), (bw,) = record.fw_graphs, record.bw_graphs
    targets = [str(n.target) for g in (fw, bw) for n in g.graph.nodes if n.op == "call_function"]
    assert sum("normlab.add_rms_norm_fwd" in t for t in targets) == 1, fw.code
    assert sum("normlab.add_rms_norm_bwd" in t for t in targets) == 1, bw.code
    torch._dynamo.reset()


@needs_kernels
def test_double_backward_is_refused():
    dev = _device("triton")
    x = torch.randn(3, 8, device=dev, requires_grad=True)
    y, _h = NF.add_layer_norm(x, x.detach(), 8, backend="triton")
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        g.sum().backward()


# --- the modules -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rms", [True, False], ids=["rms", "layer"])
def test_modules_equal_torch_nn_after_a_plain_add(backend, rms):
    """A torch.nn norm's state_dict loads; two pre-norm steps ``y, h = m(x, h)`` equal
    ``h = h + x; y = norm(h)``, outputs and gradients."""
    dev = _device(backend)
    theirs = (torch.nn.RMSNorm(24, eps=1e-6) if rms else torch.nn.LayerNorm(24)).to(dev)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.rand_like(p) - 0.5)
    ours = (normlab.AddRMSNorm(24, eps=1e-6) if rms else normlab.AddLayerNorm(24)).to(dev)
    ours.load_state_dict(theirs.state_dict())
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 5, 24, generator=gen).to(dev) for _ in range(3)]

    def steps(step):
        h, loss = xs[0], 0.0
        for x in xs[1:]:
            y, h = step(x, h)
            loss = loss + (y * y.detach().sin()).sum()
        return loss + h.sum()

    def torch_step(x, h):
        h = h + x
        return theirs(h), h

    with normlab.use_backend(backend):
        steps(ours).backward()
    steps(torch_step).backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert rel_err(a.grad.cpu(), b.grad.cpu()) <= 1e-5, name
    with normlab.use_backend(backend):
        y, h = ours(xs[1], xs[0])
    assert rel_err(y.cpu(), theirs(xs[0] + xs[1]).cpu()) <= 1e-5
    assert torch.equal(h, xs[0] + xs[1])


def test_module_float32_stream_and_state():
    m = normlab.AddRMSNorm((4, 6), elementwise_affine=False, residual_in_fp32=True)
    assert m.weight is None and list(m.state_dict()) == []
    y, h = m(torch.randn(2, 4, 6, dtype=BF16))
    assert (y.dtype, h.dtype) == (BF16, F32)
    ln = normlab.AddLayerNorm(6, bias=False)
    assert list(ln.state_dict()) == ["weight"]
    assert "residual_in_fp32=False" in repr(ln)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: normlab.AddRMSNorm(16)(torch.randn(2, 8)),
            normlab.NormInputError,
            r"AddRMSNorm\(\(16,\)\): expected an input of shape \(\*, 16\) .* got \(2, 8\)",
        ),
        (
            lambda: normlab.AddLayerNorm(8)(torch.randn(2, 8), torch.randn(3, 8)),
            normlab.NormInputError,
            r"AddLayerNorm\(\(8,\)\): residual must have the input's shape \(2, 8\) on cpu, "
            r"got \(3, 8\) on cpu",
        ),
        (
            lambda: normlab.AddRMSNorm(8)(torch.randn(2, 8), torch.ones(2, 8, dtype=torch.long)),
            TypeError,
            r"AddRMSNorm\(\(8,\)\) \(residual\): expected a floating-point input .* got torch.int64",
        ),
        (
            lambda: normlab.AddRMSNorm(8)(torch.ones(2, 8, dtype=torch.int32)),
            TypeError,
            r"AddRMSNorm\(\(8,\)\): expected a floating-point input",
        ),
        (
            lambda: NF.add_layer_norm(torch.randn(2, 8), None, 8, torch.ones(8), torch.zeros(4)),
            normlab.NormInputError,
            r"add_layer_norm: bias must have normalized_shape \(8\), got \(4\)",
        ),
        (
            lambda: NF.add_rms_norm(torch.randn(2, 8), None, 0),
            normlab.NormInputError,
            r"add_rms_norm: normalized_shape must be a non-empty tuple of positive sizes, got \(0,\)",
        ),
        (
            lambda: normlab.AddLayerNorm(())(torch.randn(2, 8)),
            normlab.NormInputError,
            r"AddLayerNorm: normalized_shape must be",
        ),
    ],
    ids=["shape", "residual-shape", "residual-dtype", "int-input", "bias-shape", "zero", "empty"],
)
def test_bad_input_names_the_layer_expected_and_actual(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- the NumPy reference -------------------------------------------------------------


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no-residual"])
@pytest.mark.parametrize("use_h", [True, False], ids=["dh", "no-dh"])
@pytest.mark.parametrize("rms", [True, False], ids=["rms", "layer"])
def test_numpy_reference_against_torch_autograd_float64(rms, use_h, residual):
    rng = np.random.default_rng()
    x, r, dy, dh = (rng.normal(0.5, 2.0, (3, 4, 6)) for _ in range(4))
    r = r if residual else None
    dh = dh if use_h else None
    gamma, beta = rng.uniform(0.5, 1.5, (4, 6)), rng.normal(0.0, 1.0, (4, 6))
    if rms:
        y, h, cache = numpy_ref.add_rms_norm_forward(x, r, gamma, eps=1e-6)
        dx, dr, *dparams = numpy_ref.add_rms_norm_backward(dy, dh, cache)
    else:
        y, h, cache = numpy_ref.add_layer_norm_forward(x, r, gamma, beta, eps=1e-6)
        dx, dr, *dparams = numpy_ref.add_layer_norm_backward(dy, dh, cache)

    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    rt = None if r is None else torch.tensor(r, requires_grad=True)
    ht = xt if rt is None else xt + rt
    yt = F.rms_norm(ht, (4, 6), gt, 1e-6) if rms else F.layer_norm(ht, (4, 6), gt, bt, 1e-6)
    outs = [yt, ht] if use_h else [yt]
    grads_in = [torch.tensor(dy), torch.tensor(dh)] if use_h else [torch.tensor(dy)]
    torch.autograd.backward(outs, grads_in)
    for name, a, t in [
        ("y", y, yt.detach()),
        ("h", h, ht.detach()),
        ("dx", dx, xt.grad),
        ("dgamma", dparams[0], gt.grad),
        *([] if rms else [("dbeta", dparams[1], bt.grad)]),
        *([("dresidual", dr, rt.grad)] if residual else []),
    ]:
        np.testing.assert_allclose(a, t.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)
    assert (dr is None) == (not residual)


def test_numpy_reference_rejects_a_mismatched_residual():
    with pytest.raises(ValueError, match=r"residual of x's shape \(2, 3\), got \(2, 4\)"):
        numpy_ref.add_rms_norm_forward(np.ones((2, 3)), np.ones((2, 4)), np.ones(3))
