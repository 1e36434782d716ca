"""LayerNorm and RMSNorm over the last axis: Triton kernels and their autograd.Function.

Each row x of N features (Ba et al., 2016; Zhang & Sennrich, 2019 for RMS):

    LayerNorm:  y = (x - mean(x)) * rstd * gamma + beta,  rstd = 1 / sqrt(var(x) + eps)
    RMSNorm:    y = x * rstd * gamma,                     rstd = 1 / sqrt(mean(x^2) + eps)

Backward, with g = gamma * dy and xhat the normalized row:

    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))    (RMSNorm: without the last term)
    dgamma = sum over rows of dy * xhat,   dbeta = sum over rows of dy

Forward: a program normalizes BLOCK_M whole rows held in registers; a row too
long for that (N > MAX_TILE) is streamed in BLOCK_N pieces, three passes (mean,
variance about the mean, output). Backward: a fixed number of persistent
programs walk the rows, each summing its dgamma/dbeta in float32 into its own
row of a (programs, N) buffer, which one ``sum(0)`` reduces at the end: no
atomics, and a buffer bounded by the device size, not by M.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from normlab.kernels._launch import MAX_TILE, max_programs, num_warps, pow2


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
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    part = pid.to(tl.int64) * N  # this program's row of the dgamma/dbeta partial sums
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), programs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        base = rows.to(tl.int64)[:, None] * N
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        if not RMS:
            mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        if SINGLE:
            col_ok = cols < N
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(X + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            g = dy
            if HAS_W:
                g = dy * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            dx = g - xhat * (tl.sum(g * xhat, axis=1) / N)[:, None]
            if not RMS:
                dx = dx - (tl.sum(g, axis=1) / N)[:, None]
            dx = dx * rstd[:, None]
            tl.store(DX + base + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_W:
                dw += tl.sum(dy * xhat, axis=0)
            if HAS_B:
                db += tl.sum(dy, axis=0)
        else:
            gx = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            gs = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                col_ok = c < N
                mask = row_ok[:, None] & col_ok[None, :]
                x = tl.load(X + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
                g = tl.load(DY + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
                if HAS_W:
                    g = g * tl.load(W + c, mask=col_ok, other=0.0).to(tl.float32)[None, :]
                gx += g * tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
                gs += g
            c1 = tl.sum(gx, axis=1) / N
            c2 = tl.sum(gs, axis=1) / N
            for start in range(0, N, BLOCK_N):
                c = start + cols
                col_ok = c < N
                mask = row_ok[:, None] & col_ok[None, :]
                x = tl.load(X + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
                xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
                g = dy
                if HAS_W:
                    g = dy * tl.load(W + c, mask=col_ok, other=0.0).to(tl.float32)[None, :]
                dx = g - xhat * c1[:, None]
                if not RMS:
                    dx = dx - c2[:, None]
                dx = dx * rstd[:, None]
                tl.store(DX + base + c[None, :], dx.to(DX.dtype.element_ty), mask=mask)
                if HAS_W:
                    p = DW + part + c
                    tl.store(p, tl.load(p, mask=col_ok) + tl.sum(dy * xhat, axis=0), mask=col_ok)
                if HAS_B:
                    p = DB + part + c
                    tl.store(p, tl.load(p, mask=col_ok) + tl.sum(dy, axis=0), mask=col_ok)
    if SINGLE:
        col_ok = cols < N
        if HAS_W:
            tl.store(DW + part + cols, dw, mask=col_ok)
        if HAS_B:
            tl.store(DB + part + cols, db, mask=col_ok)


def _tiles(n: int) -> tuple[int, int, bool]:
    """(BLOCK_M, BLOCK_N, SINGLE) for rows of ``n`` features."""
    block_n = pow2(n)
    if block_n <= MAX_TILE:
        return max(1, min(64, 4096 // block_n)), block_n, True
    return 1, min(4096, MAX_TILE), False


class RowNormFunction(torch.autograd.Function):
    """LayerNorm (``rms=False``) or RMSNorm (``rms=True``) over the trailing ``n`` features."""

    @staticmethod
    def forward(ctx, x, weight, bias, n, eps, rms):
        x2 = x.reshape(-1, n).contiguous()
        m = x2.shape[0]
        y = torch.empty_like(x2)
        mean = torch.empty(m, device=x.device, dtype=torch.float32)
        rstd = torch.empty(m, device=x.device, dtype=torch.float32)
        w = None if weight is None else weight.reshape(-1).contiguous()
        b = None if bias is None else bias.reshape(-1).contiguous()
        block_m, block_n, single = _tiles(n)
        if m:
            _row_norm_fwd[(triton.cdiv(m, block_m),)](
                x2, y, x2 if w is None else w, x2 if b is None else b, mean, rstd, m, n, eps,
                RMS=rms, HAS_W=w is not None, HAS_B=b is not None,
                BLOCK_M=block_m, BLOCK_N=block_n, SINGLE=single,
                num_warps=num_warps(block_m * block_n),
            )  # fmt: skip
        ctx.save_for_backward(x2, w, mean, rstd)
        ctx.shape, ctx.n, ctx.rms = x.shape, n, rms
        ctx.weight_meta = None if weight is None else (weight.shape, weight.dtype)
        ctx.bias_meta = None if bias is None else (bias.shape, bias.dtype)
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x2, w, mean, rstd = ctx.saved_tensors
        n, m = ctx.n, x2.shape[0]
        dy2 = dy.reshape(-1, n).contiguous()
        dx = torch.empty_like(x2)
        block_m, block_n, single = _tiles(n)
        programs = max(1, min(triton.cdiv(m, block_m), max_programs(x2)))
        need_dw = w is not None and ctx.needs_input_grad[1]
        need_db = ctx.bias_meta is not None and ctx.needs_input_grad[2]
        # Programs with whole rows write their partial row once; streaming ones add into it.
        alloc = torch.empty if single and m else torch.zeros
        dw = alloc((programs, n), device=x2.device, dtype=torch.float32) if need_dw else None
        db = alloc((programs, n), device=x2.device, dtype=torch.float32) if need_db else None
        if m:
            _row_norm_bwd[(programs,)](
                x2, dy2, dx, x2 if w is None else w, mean, rstd,
                mean if dw is None else dw, mean if db is None else db, m, n,
                RMS=ctx.rms, HAS_W=need_dw, HAS_B=need_db,
                BLOCK_M=block_m, BLOCK_N=block_n, SINGLE=single,
                num_warps=num_warps(block_m * block_n),
            )  # fmt: skip
        dweight = None if dw is None else _reduce(dw, *ctx.weight_meta)
        dbias = None if db is None else _reduce(db, *ctx.bias_meta)
        return dx.view(ctx.shape), dweight, dbias, None, None, None


def _reduce(partials, shape, dtype):
    return partials.sum(0).to(dtype).view(shape)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.layer_norm`` on the Triton kernels."""
    return RowNormFunction.apply(x, weight, bias, math.prod(normalized_shape), eps, False)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """``torch.nn.functional.rms_norm`` on the Triton kernels (eps=None: the dtype's eps)."""
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    return RowNormFunction.apply(x, weight, None, math.prod(normalized_shape), eps, True)
