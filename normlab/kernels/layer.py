"""LayerNorm and RMSNorm over the last axis: Triton kernels and their custom ops.

Each row x of N features (Ba et al., 2016; Zhang & Sennrich, 2019 for RMS):

    LayerNorm:  y = (x - mean(x)) * rstd * gamma + beta,  rstd = 1 / sqrt(var(x) + eps)
    RMSNorm:    y = x * rstd * gamma,                     rstd = 1 / sqrt(mean(x^2) + eps)

Backward, with g = gamma * dy and xhat the normalized row:

    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))    (RMSNorm: without the last term)
    dgamma = sum over rows of dy * xhat,   dbeta = sum over rows of dy

Forward: a program normalizes BLOCK_M whole rows held in registers; a row too
long for that (N > MAX_TILE) is streamed in BLOCK_N pieces, three passes (mean,
variance about the mean, output). Backward of whole rows: a fixed number of
persistent programs walk the rows, each summing its dgamma/dbeta in float32 in
registers and writing them once into its own row of a (programs, N) buffer,
which one ``sum(0)`` reduces at the end: no atomics, and a buffer bounded by
the device size, not by M. Backward of streamed rows: one program per row
sums mean(g * xhat) and mean(g); then a (row groups, column blocks) grid
writes dx and sums each column block's dgamma/dbeta over its row group the
same way.

Ops (torch.library, so torch.compile keeps each as one node and never traces
the launches): ``normlab::layer_norm_fwd`` -> (y, mean, rstd),
``normlab::rms_norm_fwd`` -> (y, rstd), and their ``_bwd`` ops, which the
registered autograd calls; mean and rstd are float32, one per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from normlab.kernels._launch import (
    MAX_TILE,
    cdiv,
    max_programs,
    num_warps,
    only_first_differentiable,
    placeholder,
    pow2,
    refuse_double_backward,
    register_autograd,
    run,
)


@triton.jit
def _row_norm_fwd(
    X, Y, W, B, Mean, Rstd, M, N, eps,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    base = rows.to(tl.int64)[:, None] * N
    cols = tl.arange(0, BLOCK_N)
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    if SINGLE:
        col_ok = cols < N
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if not RMS:
            mean = tl.sum(x, axis=1) / N
            x = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / N + eps)
        y = x * rstd[:, None]
        if HAS_W:
            y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + base + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    else:
        if not RMS:
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = row_ok[:, None] & (c < N)[None, :]
                acc += tl.load(X + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
            mean = tl.sum(acc, axis=1) / N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c < N)[None, :]
            x = tl.load(X + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
            x = tl.where(mask, x - mean[:, None], 0.0)
            acc += x * x
        rstd = tl.rsqrt(tl.sum(acc, axis=1) / N + eps)
        for start in range(0, N, BLOCK_N):
            c = start + cols
            col_ok = c < N
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(X + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
            y = (x - mean[:, None]) * rstd[:, None]
            if HAS_W:
                y = y * tl.load(W + c, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            if HAS_B:
                y = y + tl.load(B + c, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(Y + base + c[None, :], y.to(Y.dtype.element_ty), mask=mask)
    if not RMS:
        tl.store(Mean + rows, mean, mask=row_ok)
    tl.store(Rstd + rows, rstd, mask=row_ok)


@triton.jit
def _row_norm_bwd(
    X, DY, DX, W, Mean, Rstd, DW, DB, M, N,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Whole rows in registers; persistent programs, one dgamma/dbeta partial row each."""
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
        base = rows.to(tl.int64)[:, None] * N
        mask = row_ok[:, None] & col_ok[None, :]
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        x = tl.load(X + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if not RMS:
            x = x - tl.load(Mean + rows, mask=row_ok, other=0.0)[:, None]
        xhat = tl.where(mask, x * rstd[:, None], 0.0)
        g = dy * w[None, :]
        dx = g - xhat * (tl.sum(g * xhat, axis=1) / N)[:, None]
        if not RMS:
            dx = dx - (tl.sum(g, axis=1) / N)[:, None]
        tl.store(DX + base + cols[None, :], (dx * rstd[:, None]).to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    part = pid.to(tl.int64) * N + cols
    if HAS_W:
        tl.store(DW + part, dw, mask=col_ok)
    if HAS_B:
        tl.store(DB + part, db, mask=col_ok)


@triton.jit
def _row_norm_bwd_sums(
    X, DY, W, Mean, Rstd, C1, C2, N, RMS: tl.constexpr, HAS_W: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Streamed rows, step 1: per row mean(g * xhat) and mean(g), with g = gamma * dy."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mean = 0.0
    if not RMS:
        mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    gx = tl.zeros([BLOCK_N], dtype=tl.float32)
    gs = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        c = start + cols
        col_ok = c < N
        x = tl.load(X + row * N + c, mask=col_ok, other=0.0).to(tl.float32)
        g = tl.load(DY + row * N + c, mask=col_ok, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + c, mask=col_ok, other=0.0).to(tl.float32)
        gx += g * tl.where(col_ok, (x - mean) * rstd, 0.0)
        gs += g
    tl.store(C1 + row, tl.sum(gx, axis=0) / N)
    tl.store(C2 + row, tl.sum(gs, axis=0) / N)


@triton.jit
def _row_norm_bwd_columns(
    X, DY, DX, W, Mean, Rstd, C1, C2, DW, DB, M, N, rows_per_group,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Streamed rows, step 2: program (g, k) writes dx for row group g, column block k,
    summing that block's dgamma/dbeta over the group in registers (partial row g)."""
    group = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = c < N
    w = tl.full([BLOCK_N], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + c, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = group * rows_per_group
    offs = first.to(tl.int64) * N + c
    for row in range(first, tl.minimum(first + rows_per_group, M)):
        x = tl.load(X + offs, mask=col_ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=col_ok, other=0.0).to(tl.float32)
        if not RMS:
            x = x - tl.load(Mean + row)
        xhat = tl.where(col_ok, x * tl.load(Rstd + row), 0.0)
        dx = dy * w - xhat * tl.load(C1 + row)
        if not RMS:
            dx = dx - tl.load(C2 + row)
        tl.store(DX + offs, (dx * tl.load(Rstd + row)).to(DX.dtype.element_ty), mask=col_ok)
        dw += dy * xhat
        db += dy
        offs += N
    part = group.to(tl.int64) * N + c
    if HAS_W:
        tl.store(DW + part, dw, mask=col_ok)
    if HAS_B:
        tl.store(DB + part, db, mask=col_ok)


def _tiles(n: int) -> tuple[int, int, bool]:
    """(BLOCK_M, BLOCK_N, SINGLE) for rows of ``n`` features."""
    block_n = pow2(n)
    if block_n <= MAX_TILE:
        return max(1, min(64, 4096 // block_n)), block_n, True
    return 1, min(4096, MAX_TILE), False


def _forward(x, n, weight, bias, eps, rms):
    """y (x's shape, contiguous), mean (None for RMS) and rstd of the rows of ``n`` features."""
    x2 = x.reshape(-1, n).contiguous()
    m = x2.shape[0]
    y = torch.empty_like(x2)
    rstd = torch.empty(m, device=x.device, dtype=torch.float32)
    mean = None if rms else torch.empty_like(rstd)
    w = None if weight is None else weight.reshape(-1).contiguous()
    b = None if bias is None else bias.reshape(-1).contiguous()
    block_m, block_n, single = _tiles(n)
    if m:
        _row_norm_fwd[(cdiv(m, block_m),)](
            x2, y, x2 if w is None else w, x2 if b is None else b,
            rstd if mean is None else mean, rstd, m, n, eps,
            RMS=rms, HAS_W=w is not None, HAS_B=b is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, SINGLE=single,
            num_warps=num_warps(block_m * block_n),
        )  # fmt: skip
    return y.view(x.shape), mean, rstd


def _backward(dy, x, weight, mean, rstd, n, rms, need_dw, need_db):
    """dx, and the float32 dgamma / dbeta of shape (n,) where asked for (else empty)."""
    x2 = x.reshape(-1, n).contiguous()
    m = x2.shape[0]
    dy2 = dy.reshape(-1, n).contiguous()
    w = None if weight is None else weight.reshape(-1).contiguous()
    dx = torch.empty_like(x2)
    block_m, block_n, single = _tiles(n)
    flags = {"RMS": rms, "HAS_W": w is not None}
    w_arg = x2 if w is None else w
    mean_arg = rstd if mean is None else mean
    if single:
        groups = max(1, min(cdiv(m, block_m), max_programs(x2)))
    else:
        column_blocks = cdiv(n, block_n)
        groups = max(1, min(m, max_programs(x2) // column_blocks))
    dw = torch.empty((groups, n), device=x2.device, dtype=torch.float32)
    db = torch.empty_like(dw) if need_db else None
    if m == 0:
        dw.zero_()
        db = None if db is None else db.zero_()
    elif single:
        _row_norm_bwd[(groups,)](
            x2, dy2, dx, w_arg, mean_arg, rstd, dw, dw if db is None else db, m, n,
            **flags, HAS_B=need_db, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=num_warps(block_m * block_n),
        )  # fmt: skip
    else:
        c1 = torch.empty(m, device=x2.device, dtype=torch.float32)
        c2 = torch.empty_like(c1)
        _row_norm_bwd_sums[(m,)](
            x2, dy2, w_arg, mean_arg, rstd, c1, c2, n, **flags, BLOCK_N=block_n,
            num_warps=num_warps(block_n),
        )  # fmt: skip
        _row_norm_bwd_columns[(groups, column_blocks)](
            x2, dy2, dx, w_arg, mean_arg, rstd, c1, c2, dw, dw if db is None else db, m, n,
            cdiv(m, groups), **flags, HAS_B=need_db, BLOCK_N=block_n,
            num_warps=num_warps(block_n),
        )  # fmt: skip
    dweight = _reduce(dw) if need_dw else placeholder(x)
    dbias = _reduce(db) if need_db else placeholder(x)
    return dx.view(x.shape), dweight, dbias


def _reduce(partials):
    """The dgamma/dbeta partial rows summed (one row: no sum launch)."""
    return partials[0] if partials.shape[0] == 1 else partials.sum(0)


def _fake_stats(x, normalized_shape):
    return x.new_empty(x.numel() // math.prod(normalized_shape), dtype=torch.float32)


def _param_grad(grad, dtype, shape):
    """A float32 dgamma/dbeta in its parameter's dtype and shape."""
    return grad.to(dtype).view(shape)


@torch.library.custom_op("normlab::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the trailing dims: y (contiguous), and each row's mean and rstd."""
    return _forward(x, math.prod(normalized_shape), weight, bias, eps, rms=False)


@layer_norm_fwd.register_fake
def _(x, normalized_shape, weight, bias, eps):
    stats = _fake_stats(x, normalized_shape)
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("normlab::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor,
    normalized_shape: Sequence[int], weight_grad: bool, bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """dx, and float32 dweight and dbias of shape (N,) (empty unless asked for)."""
    n = math.prod(normalized_shape)
    return _backward(dy, x, weight, mean, rstd, n, False, weight_grad, bias_grad)


@layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, normalized_shape, weight_grad, bias_grad):
    n = math.prod(normalized_shape)
    dweight = x.new_empty(n if weight_grad else 0, dtype=torch.float32)
    dbias = x.new_empty(n if bias_grad else 0, dtype=torch.float32)
    return x.new_empty(x.shape), dweight, dbias


def _layer_norm_setup(ctx, inputs, output):
    x, normalized_shape, weight, bias, _eps = inputs
    only_first_differentiable(ctx, output)
    ctx.save_for_backward(x, weight, *output[1:])
    ctx.normalized_shape = normalized_shape
    ctx.bias_meta = None if bias is None else (bias.dtype, bias.shape)


def _layer_norm_backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    need_dw, need_db = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
    dx, dw, db = run(
        layer_norm_bwd, dy, x, weight, mean, rstd, ctx.normalized_shape, need_dw, need_db
    )
    dweight = _param_grad(dw, weight.dtype, weight.shape) if need_dw else None
    dbias = _param_grad(db, *ctx.bias_meta) if need_db else None
    return dx, None, dweight, dbias, None


register_autograd(layer_norm_fwd, _layer_norm_backward, _layer_norm_setup)
refuse_double_backward(layer_norm_bwd)


@torch.library.custom_op("normlab::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(
    x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """RMSNorm over the trailing dims: y (contiguous) and each row's rstd."""
    y, _mean, rstd = _forward(x, math.prod(normalized_shape), weight, None, eps, rms=True)
    return y, rstd


@rms_norm_fwd.register_fake
def _(x, normalized_shape, weight, eps):
    return x.new_empty(x.shape), _fake_stats(x, normalized_shape)


@torch.library.custom_op("normlab::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(
    dy: Tensor, x: Tensor, weight: Tensor | None, rstd: Tensor,
    normalized_shape: Sequence[int], weight_grad: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """dx, and the float32 dweight of shape (N,) (empty unless asked for)."""
    n = math.prod(normalized_shape)
    dx, dweight, _dbias = _backward(dy, x, weight, None, rstd, n, True, weight_grad, False)
    return dx, dweight


@rms_norm_bwd.register_fake
def _(dy, x, weight, rstd, normalized_shape, weight_grad):
    n = math.prod(normalized_shape)
    return x.new_empty(x.shape), x.new_empty(n if weight_grad else 0, dtype=torch.float32)


def _rms_norm_setup(ctx, inputs, output):
    x, normalized_shape, weight, _eps = inputs
    only_first_differentiable(ctx, output)
    ctx.save_for_backward(x, weight, output[1])
    ctx.normalized_shape = normalized_shape


def _rms_norm_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    need_dw = ctx.needs_input_grad[2]
    dx, dw = run(rms_norm_bwd, dy, x, weight, rstd, ctx.normalized_shape, need_dw)
    return dx, None, _param_grad(dw, weight.dtype, weight.shape) if need_dw else None, None


register_autograd(rms_norm_fwd, _rms_norm_backward, _rms_norm_setup)
refuse_double_backward(rms_norm_bwd)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.layer_norm`` on the Triton kernels."""
    return run(layer_norm_fwd, x, normalized_shape, weight, bias, float(eps))[0]


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """``torch.nn.functional.rms_norm`` on the Triton kernels (eps=None: the epsilon of
    the dtype the statistics are computed in, float32 for half inputs, as torch's)."""
    if eps is None:
        eps = torch.finfo(torch.promote_types(x.dtype, torch.float32)).eps
    return run(rms_norm_fwd, x, normalized_shape, weight, float(eps))[0]
