"""Residual add fused with RMSNorm or LayerNorm over the last axis: Triton kernels and
their custom ops.

A pre-norm transformer block keeps a residual stream h and normalizes it before each
sublayer: ``h = h + x; y = norm(h)``. Fused, each row is read once and both outputs
written in one pass (Ba et al., 2016; Zhang & Sennrich, 2019 for RMS):

    h = x + r  (summed in float32, stored in the residual stream's dtype)
    LayerNorm:  y = (h - mean(h)) * rstd * gamma + beta,  rstd = 1 / sqrt(var(h) + eps)
    RMSNorm:    y = h * rstd * gamma,                     rstd = 1 / sqrt(mean(h^2) + eps)

y is normalized from h as stored, so it equals the unfused ``norm(h)``. Backward: h
feeds the norm and the rest of the network, so its gradient is the sum of both,
with g = gamma * dy and hhat the normalized row:

    dh = rstd * (g - hhat * mean(g * hhat) - mean(g)) + dh_in    (RMSNorm: no mean(g))
    dx = dr = dh,   dgamma = sum over rows of dy * hhat,   dbeta = sum over rows of dy

A program holds BLOCK_M whole rows in registers (rows longer than MAX_TILE take the
native backend: :func:`unsupported`). The backward's persistent programs each sum
their dgamma/dbeta in float32 into their own row of a (programs, N) buffer, reduced
once at the end, as in :mod:`normlab.kernels.layer`.

Ops: ``normlab::add_rms_norm_fwd`` -> (y, h, rstd), ``normlab::add_layer_norm_fwd``
-> (y, h, mean, rstd), and their ``_bwd`` ops, which the registered autograd calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from normlab.functional.reference.layer import residual_stream_dtype
from normlab.kernels import layer
from normlab.kernels._launch import (
    MAX_TILE,
    cdiv,
    max_programs,
    num_warps,
    placeholder,
    pow2,
    refuse_double_backward,
    register_autograd,
    run,
    unsupported,
)
from normlab.kernels.layer import _fake_stats, _param_grad, _reduce, _tiles


@triton.jit
def _add_norm_fwd(
    X, R, Y, H, W, B, Mean, Rstd, M, N, eps,
    RMS: tl.constexpr, HAS_R: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    s = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_R:
        s += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    h = s.to(H.dtype.element_ty)
    tl.store(H + offs, h, mask=mask)
    h = h.to(tl.float32)
    if not RMS:
        mean = tl.sum(h, axis=1) / N
        h = tl.where(mask, h - mean[:, None], 0.0)
        tl.store(Mean + rows, mean, mask=row_ok)
    rstd = tl.rsqrt(tl.sum(h * h, axis=1) / N + eps)
    y = h * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Rstd + rows, rstd, mask=row_ok)


@triton.jit
def _add_norm_bwd(
    H, DY, DH, DX, DR, W, Mean, Rstd, DW, DB, M, N,
    RMS: tl.constexpr, HAS_DH: tl.constexpr, HAS_DR: tl.constexpr, HAS_W: tl.constexpr,
    HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Persistent programs over tiles of whole rows; dx (and dr, in the residual's own
    dtype when it differs from x's) is the total gradient of h."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.full([BLOCK_N], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        h = tl.load(H + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        if not RMS:
            h = h - tl.load(Mean + rows, mask=row_ok, other=0.0)[:, None]
        hhat = tl.where(mask, h * rstd[:, None], 0.0)
        g = dy * w[None, :]
        dh = g - hhat * (tl.sum(g * hhat, axis=1) / N)[:, None]
        if not RMS:
            dh = dh - (tl.sum(g, axis=1) / N)[:, None]
        dh = dh * rstd[:, None]
        if HAS_DH:
            dh += tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + offs, dh.to(DX.dtype.element_ty), mask=mask)
        if HAS_DR:
            tl.store(DR + offs, dh.to(DR.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * hhat, axis=0)
        db += tl.sum(dy, axis=0)
    part = pid.to(tl.int64) * N + cols
    if HAS_W:
        tl.store(DW + part, dw, mask=col_ok)
    if HAS_B:
        tl.store(DB + part, db, mask=col_ok)


def add_norm_unsupported(residual: Tensor | None, normalized_shape) -> str | None:
    """Why the fused kernels cannot take this call (beyond what
    :func:`normlab.kernels.unsupported` checks of the input), or None when they can."""
    if residual is not None:
        reason = unsupported(residual)
        if reason is not None:
            return f"a residual of {reason}"
    n = math.prod(normalized_shape)
    if pow2(n) > MAX_TILE:
        return f"rows of {n} features (more than a tile holds)"
    return None


def _rows(t: Tensor | None, n: int) -> Tensor | None:
    return None if t is None else t.reshape(-1, n).contiguous()


def _forward(x, residual, n, weight, bias, eps, rms, residual_in_fp32):
    """y (x's dtype), h (the residual stream's), mean (None for RMS) and rstd, per row."""
    x2, r2, w, b = _rows(x, n), _rows(residual, n), _rows(weight, n), _rows(bias, n)
    m = x2.shape[0]
    y = torch.empty_like(x2)
    h = torch.empty_like(x2, dtype=residual_stream_dtype(x, residual, residual_in_fp32))
    rstd = torch.empty(m, device=x.device, dtype=torch.float32)
    mean = None if rms else torch.empty_like(rstd)
    block_m, block_n, _single = _tiles(n)
    if m:
        _add_norm_fwd[(cdiv(m, block_m),)](
            x2, x2 if r2 is None else r2, y, h, x2 if w is None else w, x2 if b is None else b,
            rstd if mean is None else mean, rstd, m, n, eps,
            RMS=rms, HAS_R=r2 is not None, HAS_W=w is not None, HAS_B=b is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps(block_m * block_n),
        )  # fmt: skip
    return y.view(x.shape), h.view(x.shape), mean, rstd


def _backward(dy, dh, h, weight, mean, rstd, n, rms, x_dtype, residual_dtype, need_dw, need_db):
    """dx (x_dtype), dr (residual_dtype; empty when None), and the float32 dgamma / dbeta
    of shape (n,) where asked for (else empty)."""
    h2, dy2, dh2, w = _rows(h, n), _rows(dy, n), _rows(dh, n), _rows(weight, n)
    m = h2.shape[0]
    dx = torch.empty(h2.shape, device=h.device, dtype=x_dtype)
    dr = None if residual_dtype is None else torch.empty_like(dx, dtype=residual_dtype)
    block_m, block_n, _single = _tiles(n)
    groups = max(1, min(cdiv(m, block_m), max_programs(h2)))
    dw = torch.empty((groups, n), device=h.device, dtype=torch.float32)
    db = torch.empty_like(dw) if need_db else None
    if m == 0:
        dw.zero_()
        db = None if db is None else db.zero_()
    else:
        _add_norm_bwd[(groups,)](
            h2, dy2, h2 if dh2 is None else dh2, dx, dx if dr is None else dr,
            h2 if w is None else w, rstd if mean is None else mean, rstd,
            dw, dw if db is None else db, m, n,
            RMS=rms, HAS_DH=dh2 is not None, HAS_DR=dr is not None, HAS_W=w is not None,
            HAS_B=need_db, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=num_warps(block_m * block_n),
        )  # fmt: skip
    dres = placeholder(h) if dr is None else dr.view(h.shape)
    dweight = _reduce(dw) if need_dw else placeholder(h)
    dbias = _reduce(db) if need_db else placeholder(h)
    return dx.view(h.shape), dres, dweight, dbias


def _fake_grads(h, normalized_shape, x_dtype, residual_dtype, weight_grad, bias_grad):
    n = math.prod(normalized_shape)
    if residual_dtype is None:
        dres = h.new_empty(0, dtype=torch.float32)
    else:
        dres = h.new_empty(h.shape, dtype=residual_dtype)
    return (
        h.new_empty(h.shape, dtype=x_dtype),
        dres,
        h.new_empty(n if weight_grad else 0, dtype=torch.float32),
        h.new_empty(n if bias_grad else 0, dtype=torch.float32),
    )


def _setup(ctx, inputs, output):
    """Save h, the weight and the statistics; y and h are differentiable, the statistics not."""
    x, residual, normalized_shape, weight = inputs[:4]
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1], weight, *output[2:])
    ctx.normalized_shape = normalized_shape
    ctx.x_dtype = x.dtype
    ctx.residual_dtype = None if residual is None else residual.dtype
    ctx.bias_meta = (
        None if len(inputs) == 6 or inputs[4] is None else (inputs[4].dtype, inputs[4].shape)
    )


def _input_grads(ctx, dy, dh, grads):
    """Gradients for (x, residual, weight, bias) from those of y and h; ``grads(dy, dh,
    separate_dr_dtype)`` calls the backward op. Without a gradient for y (only h was
    used) h's passes straight through and the parameters get none."""
    x_dtype, r_dtype = ctx.x_dtype, ctx.residual_dtype
    if dy is None:
        return dh.to(x_dtype), None if r_dtype is None else dh.to(r_dtype), None, None
    separate = r_dtype if r_dtype not in (None, x_dtype) else None
    dx, dres, dw, db = grads(dy, dh, separate)
    dres = None if r_dtype is None else (dx if separate is None else dres)
    _h, weight, *_stats = ctx.saved_tensors
    dweight = _param_grad(dw, weight.dtype, weight.shape) if dw.numel() else None
    dbias = _param_grad(db, *ctx.bias_meta) if db.numel() else None
    return dx, dres, dweight, dbias


@torch.library.custom_op("normlab::add_rms_norm_fwd", mutates_args=())
def add_rms_norm_fwd(
    x: Tensor, residual: Tensor | None, normalized_shape: Sequence[int], weight: Tensor | None,
    eps: float, residual_in_fp32: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """h = x + residual and y = RMSNorm(h) over the trailing dims: y, h (contiguous) and
    each row's rstd."""
    n = math.prod(normalized_shape)
    y, h, _mean, rstd = _forward(x, residual, n, weight, None, eps, True, residual_in_fp32)
    return y, h, rstd


@add_rms_norm_fwd.register_fake
def _(x, residual, normalized_shape, weight, eps, residual_in_fp32):
    h_dtype = residual_stream_dtype(x, residual, residual_in_fp32)
    return (
        x.new_empty(x.shape),
        x.new_empty(x.shape, dtype=h_dtype),
        _fake_stats(x, normalized_shape),
    )


@torch.library.custom_op("normlab::add_rms_norm_bwd", mutates_args=())
def add_rms_norm_bwd(
    dy: Tensor, dh: Tensor | None, h: Tensor, weight: Tensor | None, rstd: Tensor,
    normalized_shape: Sequence[int], x_dtype: torch.dtype, residual_dtype: torch.dtype | None,
    weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """dx (x_dtype), dresidual (residual_dtype; empty when None) and the float32 dweight
    of shape (N,) (empty unless asked for)."""
    n = math.prod(normalized_shape)
    dx, dres, dweight, _db = _backward(
        dy, dh, h, weight, None, rstd, n, True, x_dtype, residual_dtype, weight_grad, False
    )
    return dx, dres, dweight


@add_rms_norm_bwd.register_fake
def _(dy, dh, h, weight, rstd, normalized_shape, x_dtype, residual_dtype, weight_grad):
    return _fake_grads(h, normalized_shape, x_dtype, residual_dtype, weight_grad, False)[:3]


def _add_rms_norm_backward(ctx, dy, dh, _drstd):
    def grads(dy, dh, separate):
        h, weight, rstd = ctx.saved_tensors
        need_dw = ctx.needs_input_grad[3]
        out = run(
            add_rms_norm_bwd,
            dy,
            dh,
            h,
            weight,
            rstd,
            ctx.normalized_shape,
            ctx.x_dtype,
            separate,
            need_dw,
        )
        return (*out, placeholder(h))

    dx, dres, dweight, _dbias = _input_grads(ctx, dy, dh, grads)
    return dx, dres, None, dweight, None, None


register_autograd(add_rms_norm_fwd, _add_rms_norm_backward, _setup)
refuse_double_backward(add_rms_norm_bwd)


@torch.library.custom_op("normlab::add_layer_norm_fwd", mutates_args=())
def add_layer_norm_fwd(
    x: Tensor, residual: Tensor | None, normalized_shape: Sequence[int], weight: Tensor | None,
    bias: Tensor | None, eps: float, residual_in_fp32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """h = x + residual and y = LayerNorm(h) over the trailing dims: y, h (contiguous) and
    each row's mean and rstd."""
    n = math.prod(normalized_shape)
    return _forward(x, residual, n, weight, bias, eps, False, residual_in_fp32)


@add_layer_norm_fwd.register_fake
def _(x, residual, normalized_shape, weight, bias, eps, residual_in_fp32):
    h_dtype = residual_stream_dtype(x, residual, residual_in_fp32)
    stats = _fake_stats(x, normalized_shape)
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=h_dtype), stats, torch.empty_like(stats)


@torch.library.custom_op("normlab::add_layer_norm_bwd", mutates_args=())
def add_layer_norm_bwd(
    dy: Tensor, dh: Tensor | None, h: Tensor, weight: Tensor | None, mean: Tensor,
    rstd: Tensor, normalized_shape: Sequence[int], x_dtype: torch.dtype,
    residual_dtype: torch.dtype | None, weight_grad: bool, bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """dx (x_dtype), dresidual (residual_dtype; empty when None), and float32 dweight and
    dbias of shape (N,) (empty unless asked for)."""
    n = math.prod(normalized_shape)
    return _backward(
        dy, dh, h, weight, mean, rstd, n, False, x_dtype, residual_dtype, weight_grad, bias_grad
    )


@add_layer_norm_bwd.register_fake
def _(dy, dh, h, weight, mean, rstd, normalized_shape, x_dtype, residual_dtype, wgrad, bgrad):
    return _fake_grads(h, normalized_shape, x_dtype, residual_dtype, wgrad, bgrad)


def _add_layer_norm_backward(ctx, dy, dh, _dmean, _drstd):
    def grads(dy, dh, separate):
        h, weight, mean, rstd = ctx.saved_tensors
        need_dw, need_db = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        return run(
            add_layer_norm_bwd,
            dy, dh, h, weight, mean, rstd, ctx.normalized_shape, ctx.x_dtype, separate,
            need_dw, need_db,
        )  # fmt: skip

    dx, dres, dweight, dbias = _input_grads(ctx, dy, dh, grads)
    return dx, dres, None, dweight, dbias, None, None


register_autograd(add_layer_norm_fwd, _add_layer_norm_backward, _setup)
refuse_double_backward(add_layer_norm_bwd)


def _no_add(x: Tensor, residual: Tensor | None, residual_in_fp32: bool) -> bool:
    """h would be x itself: no residual, and no float32 stream to raise it to."""
    return residual is None and residual_stream_dtype(x, None, residual_in_fp32) == x.dtype


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, residual_in_fp32=False):
    """(y, h): h = x + residual, y = RMSNorm(h), on the Triton kernels. eps=None takes
    float32's machine epsilon (the statistics' dtype), as torch does."""
    eps = torch.finfo(torch.float32).eps if eps is None else float(eps)
    if _no_add(x, residual, residual_in_fp32):
        return run(layer.rms_norm_fwd, x, normalized_shape, weight, eps)[0], x
    y, h, _rstd = run(
        add_rms_norm_fwd, x, residual, normalized_shape, weight, eps, residual_in_fp32
    )
    return y, h


def add_layer_norm(
    x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, residual_in_fp32=False
):
    """(y, h): h = x + residual, y = LayerNorm(h), on the Triton kernels."""
    if _no_add(x, residual, residual_in_fp32):
        return run(layer.layer_norm_fwd, x, normalized_shape, weight, bias, float(eps))[0], x
    out = run(
        add_layer_norm_fwd,
        x,
        residual,
        normalized_shape,
        weight,
        bias,
        float(eps),
        residual_in_fp32,
    )
    return out[0], out[1]
