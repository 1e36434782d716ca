"""GroupNorm on (N, C, *) tensors, NCHW or channels_last: Triton kernels and custom ops.

Per sample n and group g of C/G channels (Wu & He, 2018):

    y = (x - mean_ng) * rstd_ng * gamma_c + beta_c,   rstd_ng = 1 / sqrt(var_ng + eps)

Backward, with g = gamma_c * dy, xhat the normalized input and K = (C/G) * S
values per group:

    dx = rstd_ng * (g - xhat * sum(g * xhat) / K - sum(g) / K)
    dgamma_c = sum over n, s of dy * xhat,   dbeta_c = sum over n, s of dy

One program per (n, g) holds the group as a (C/G, S) tile addressed through
strides, so the same kernel reads NCHW (channel stride S) and channels_last
(channel stride 1) memory; a group too large for registers is streamed in
several passes. Per-(n, c) dgamma/dbeta partials (an (N, C) float32 buffer)
are summed over n at the end.

Ops: ``normlab::group_norm_fwd`` -> (y in x's layout, mean, rstd: float32, one
per (n, g)) and ``normlab::group_norm_bwd``, which the registered autograd calls.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from normlab.kernels._launch import (
    MAX_TILE,
    channel_view,
    dense_like,
    num_warps,
    only_first_differentiable,
    pow2,
    refuse_double_backward,
    register_autograd,
    run,
)


@triton.jit
def _group_channels(pid, G, Cg, sN, sC, BLOCK_C: tl.constexpr):
    """Program ``pid``'s sample n, its group's channels and their row offsets."""
    n = pid // G
    ci = tl.arange(0, BLOCK_C)
    ch = (pid % G) * Cg + ci
    return n, ci < Cg, ch, n.to(tl.int64) * sN + ch.to(tl.int64)[:, None] * sC


@triton.jit
def _group_norm_fwd(
    X, Y, W, B, Mean, Rstd, S, G, Cg, sN, sC, sS, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    _sample, c_ok, ch, rows = _group_channels(pid, G, Cg, sN, sC, BLOCK_C)
    si = tl.arange(0, BLOCK_S)
    count = Cg * S
    scale = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_W:
        scale = tl.load(W + ch, mask=c_ok, other=0.0).to(tl.float32)
    shift = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_B:
        shift = tl.load(B + ch, mask=c_ok, other=0.0).to(tl.float32)
    if SINGLE:
        mask = c_ok[:, None] & (si < S)[None, :]
        offs = rows + si.to(tl.int64)[None, :] * sS
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
        x = tl.where(mask, x - mean, 0.0)
        rstd = tl.rsqrt(tl.sum(tl.sum(x * x, axis=1), axis=0) / count + eps)
        y = x * (scale * rstd)[:, None] + shift[:, None]
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        for start in range(0, S, BLOCK_S):
            s = start + si
            mask = c_ok[:, None] & (s < S)[None, :]
            acc += tl.load(X + rows + s.to(tl.int64)[None, :] * sS, mask=mask, other=0.0).to(
                tl.float32
            )
        mean = tl.sum(tl.sum(acc, axis=1), axis=0) / count
        acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        for start in range(0, S, BLOCK_S):
            s = start + si
            mask = c_ok[:, None] & (s < S)[None, :]
            x = tl.load(X + rows + s.to(tl.int64)[None, :] * sS, mask=mask, other=0.0)
            x = tl.where(mask, x.to(tl.float32) - mean, 0.0)
            acc += x * x
        rstd = tl.rsqrt(tl.sum(tl.sum(acc, axis=1), axis=0) / count + eps)
        a = scale * rstd
        b = shift - mean * a
        for start in range(0, S, BLOCK_S):
            s = start + si
            mask = c_ok[:, None] & (s < S)[None, :]
            offs = rows + s.to(tl.int64)[None, :] * sS
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(Y + offs, (x * a[:, None] + b[:, None]).to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + pid, mean)
    tl.store(Rstd + pid, rstd)


@triton.jit
def _group_norm_bwd(
    X, DY, DX, W, Mean, Rstd, DW, DB, C, S, G, Cg, sN, sC, sS,
    HAS_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n, c_ok, ch, rows = _group_channels(pid, G, Cg, sN, sC, BLOCK_C)
    si = tl.arange(0, BLOCK_S)
    count = Cg * S
    mean = tl.load(Mean + pid)
    rstd = tl.load(Rstd + pid)
    w = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + ch, mask=c_ok, other=0.0).to(tl.float32)
    if SINGLE:
        mask = c_ok[:, None] & (si < S)[None, :]
        offs = rows + si.to(tl.int64)[None, :] * sS
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        dw = tl.sum(dy * xhat, axis=1)
        db = tl.sum(dy, axis=1)
        c1 = tl.sum(w * dw, axis=0) / count
        c2 = tl.sum(w * db, axis=0) / count
        dx = (dy * w[:, None] - xhat * c1 - c2) * rstd
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    else:
        acc_dw = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        acc_db = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        for start in range(0, S, BLOCK_S):
            s = start + si
            mask = c_ok[:, None] & (s < S)[None, :]
            offs = rows + s.to(tl.int64)[None, :] * sS
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            acc_dw += dy * tl.where(mask, (x - mean) * rstd, 0.0)
            acc_db += dy
        dw = tl.sum(acc_dw, axis=1)
        db = tl.sum(acc_db, axis=1)
        c1 = tl.sum(w * dw, axis=0) / count
        c2 = tl.sum(w * db, axis=0) / count
        for start in range(0, S, BLOCK_S):
            s = start + si
            mask = c_ok[:, None] & (s < S)[None, :]
            offs = rows + s.to(tl.int64)[None, :] * sS
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            dx = (dy * w[:, None] - (x - mean) * rstd * c1 - c2) * rstd
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW + n * C + ch, dw, mask=c_ok)
    tl.store(DB + n * C + ch, db, mask=c_ok)


def _tiles(group_channels: int, spatial: int) -> tuple[int, int, bool]:
    """(BLOCK_C, BLOCK_S, SINGLE) for groups of ``group_channels`` x ``spatial`` values."""
    block_c = pow2(group_channels)
    block_s = pow2(spatial)
    if block_c * block_s <= MAX_TILE:
        return block_c, block_s, True
    return block_c, max(1, min(block_s, min(4096, MAX_TILE) // block_c)), False


def fits(channels: int, num_groups: int) -> bool:
    """Whether one group's channels fit a program's tile (at least one spatial column)."""
    return pow2(channels // num_groups) <= MAX_TILE


@torch.library.custom_op("normlab::group_norm_fwd", mutates_args=())
def group_norm_fwd(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """GroupNorm: y (x's layout if dense, else contiguous), and each (n, g)'s mean and rstd."""
    x, (n, c, s), (sn, sc, ss) = channel_view(x)
    y = torch.empty_like(x)
    mean = torch.empty(n * num_groups, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    cg = c // num_groups
    block_c, block_s, single = _tiles(cg, s)
    if x.numel():
        _group_norm_fwd[(n * num_groups,)](
            x, y, x if weight is None else weight, x if bias is None else bias,
            mean, rstd, s, num_groups, cg, sn, sc, ss, eps,
            HAS_W=weight is not None, HAS_B=bias is not None,
            BLOCK_C=block_c, BLOCK_S=block_s, SINGLE=single,
            num_warps=num_warps(block_c * block_s),
        )  # fmt: skip
    return y, mean, rstd


@group_norm_fwd.register_fake
def _(x, num_groups, weight, bias, eps):
    stats = x.new_empty(x.shape[0] * num_groups, dtype=torch.float32)
    return torch.empty_like(channel_view(x)[0]), stats, torch.empty_like(stats)


@torch.library.custom_op("normlab::group_norm_bwd", mutates_args=())
def group_norm_bwd(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, num_groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """dx (in the forward output's layout), and float32 dweight and dbias of shape (C,)."""
    x, (n, c, s), (sn, sc, ss) = channel_view(x)
    dy = dense_like(dy, x)
    dx = torch.empty_like(x)
    dw = torch.zeros((n, c), device=x.device, dtype=torch.float32)
    db = torch.zeros_like(dw)
    cg = c // num_groups
    block_c, block_s, single = _tiles(cg, s)
    if x.numel():
        _group_norm_bwd[(n * num_groups,)](
            x, dy, dx, x if weight is None else weight, mean, rstd, dw, db,
            c, s, num_groups, cg, sn, sc, ss,
            HAS_W=weight is not None, BLOCK_C=block_c, BLOCK_S=block_s, SINGLE=single,
            num_warps=num_warps(block_c * block_s),
        )  # fmt: skip
    return dx, dw.sum(0), db.sum(0)


@group_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, num_groups):
    grad = x.new_empty(x.shape[1], dtype=torch.float32)
    return torch.empty_like(channel_view(x)[0]), grad, torch.empty_like(grad)


def _setup_context(ctx, inputs, output):
    x, num_groups, weight, bias, _eps = inputs
    only_first_differentiable(ctx, output)
    ctx.save_for_backward(x, weight, *output[1:])
    ctx.num_groups = num_groups
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = run(group_norm_bwd, dy, x, weight, mean, rstd, ctx.num_groups)
    dweight = dw.to(weight.dtype) if ctx.needs_input_grad[2] else None
    dbias = db.to(ctx.bias_dtype) if ctx.needs_input_grad[3] else None
    return dx, None, dweight, dbias, None


register_autograd(group_norm_fwd, _backward, _setup_context)
refuse_double_backward(group_norm_bwd)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.group_norm`` on the Triton kernels."""
    return run(group_norm_fwd, x, int(num_groups), weight, bias, float(eps))[0]
