"""Modulated LayerNorm and RMSNorm (adaLN): Triton kernels and their custom ops.

Each row x of N features belongs to a modulation row j (its sample, or itself
for per-token modulation), whose shift h and scale s were predicted from a
conditioning vector (Perez et al., 2018, FiLM; Peebles & Xie, 2023, DiT):

    a = xhat * gamma + beta,   xhat = (x - mean(x)) * rstd   (RMSNorm: x * rstd, no beta)
    y = a * (1 + s) + h

Backward: the modulation is an affine map of a per row, so

    dh_j = sum over the rows of j of dy,   ds_j = sum over the rows of j of dy * a
    da = dy * (1 + s)

and da goes through the norm as in :mod:`normlab.kernels.layer`:
dx = rstd * (g - xhat * mean(g * xhat) - mean(g)) with g = gamma * da (RMSNorm:
without the last term), dgamma = sum of da * xhat, dbeta = sum of da.

Forward: a program normalizes and modulates BLOCK_M whole rows in registers,
reading each row's shift and scale through its modulation row, j = row // R
(R rows per modulation row; a row stride lets the chunks of a projection's
output be read in place). Backward: a program per (modulation row j, split k)
walks a contiguous slice of j's rows, so dh_j and ds_j (and dgamma, dbeta)
sum in float32 registers and are written once into the program's own row of a
(programs, N) buffer; one ``sum`` over the splits finishes them: no atomics.
Rows wider than a tile (N > MAX_TILE) are left to the native backend.

Ops (torch.library): ``normlab::modulated_layer_norm_fwd`` -> (y, mean, rstd),
``normlab::modulated_rms_norm_fwd`` -> (y, rstd), and their ``_bwd`` ops ->
(dx, dshift, dscale, dweight[, dbias]); mean and rstd are float32, one per row.
"""

from __future__ import annotations

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
def _modulated_fwd(
    X, Y, Shift, Scale, W, B, Mean, Rstd, M, N, rows_per_mod, shift_stride, scale_stride, eps,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    base = rows.to(tl.int64)[:, None] * N
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if not RMS:
        mean = tl.sum(x, axis=1) / N
        x = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(Mean + rows, mean, mask=row_ok)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / N + eps)
    tl.store(Rstd + rows, rstd, mask=row_ok)
    a = x * rstd[:, None]
    if HAS_W:
        a = a * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        a = a + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    mod = (rows // rows_per_mod).to(tl.int64)[:, None]
    s = tl.load(Scale + mod * scale_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    h = tl.load(Shift + mod * shift_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + base + cols[None, :], (a * (1.0 + s) + h).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _modulated_bwd(
    X, DY, DX, Scale, W, B, Mean, Rstd, DShift, DScale, DW, DB,
    N, rows_per_mod, splits, scale_stride,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Program p: modulation row j = p // splits, its k-th slice of rows (k = p % splits)."""
    pid = tl.program_id(0)
    j = pid // splits
    chunk = tl.cdiv(rows_per_mod, splits)
    first = j * rows_per_mod + (pid % splits) * chunk
    end = tl.minimum(first + chunk, (j + 1) * rows_per_mod)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    s1 = 1.0 + tl.load(Scale + j.to(tl.int64) * scale_stride + cols, mask=col_ok, other=0.0).to(
        tl.float32
    )
    w = tl.full([BLOCK_N], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_B:
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    dh = tl.zeros([BLOCK_N], dtype=tl.float32)
    ds = tl.zeros([BLOCK_N], dtype=tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(first, end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < end
        base = rows.to(tl.int64)[:, None] * N
        mask = row_ok[:, None] & col_ok[None, :]
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        x = tl.load(X + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if not RMS:
            x = x - tl.load(Mean + rows, mask=row_ok, other=0.0)[:, None]
        xhat = tl.where(mask, x * rstd[:, None], 0.0)
        dh += tl.sum(dy, axis=0)
        ds += tl.sum(dy * (xhat * w[None, :] + b[None, :]), axis=0)
        da = dy * s1[None, :]
        g = da * w[None, :]
        dx = g - xhat * (tl.sum(g * xhat, axis=1) / N)[:, None]
        if not RMS:
            dx = dx - (tl.sum(g, axis=1) / N)[:, None]
        tl.store(DX + base + cols[None, :], (dx * rstd[:, None]).to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(da * xhat, axis=0)
        db += tl.sum(da, axis=0)
    part = pid.to(tl.int64) * N + cols
    tl.store(DShift + part, dh.to(DShift.dtype.element_ty), mask=col_ok)
    tl.store(DScale + part, ds.to(DScale.dtype.element_ty), mask=col_ok)
    if HAS_W:
        tl.store(DW + part, dw, mask=col_ok)
    if HAS_B:
        tl.store(DB + part, db, mask=col_ok)


def row_fits(n: int) -> bool:
    """Whether a row of ``n`` features fits a register tile (else: the native backend)."""
    return pow2(n) <= MAX_TILE


def _block_m(n: int) -> int:
    return max(1, min(64, 4096 // pow2(n)))


def _mod_rows(t: Tensor, n: int) -> tuple[Tensor, int]:
    """A shift or scale as rows of ``n`` features and its row stride; a projection's
    chunk (rows strided, features dense) is read in place, anything else copied."""
    rows = t.reshape(-1, n)
    if rows.stride(1) != 1 and n > 1:
        rows = rows.contiguous()
    return rows, rows.stride(0)


def _forward(x, shift, scale, weight, bias, eps, rms):
    """y (x's shape, contiguous), mean (None for RMS) and rstd of the rows."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    m = x2.shape[0]
    y = torch.empty_like(x2)
    rstd = torch.empty(m, device=x.device, dtype=torch.float32)
    mean = None if rms else torch.empty_like(rstd)
    h, h_stride = _mod_rows(shift, n)
    s, s_stride = _mod_rows(scale, n)
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    block_m, block_n = _block_m(n), pow2(n)
    if m:
        _modulated_fwd[(cdiv(m, block_m),)](
            x2, y, h, s, x2 if w is None else w, x2 if b is None else b,
            rstd if mean is None else mean, rstd, m, n, m // h.shape[0], h_stride, s_stride, eps,
            RMS=rms, HAS_W=w is not None, HAS_B=b is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps(block_m * block_n),
        )  # fmt: skip
    return y.view(x.shape), mean, rstd


def _splits(rows_per_mod: int, mods: int, block_m: int, device_programs: int) -> int:
    """How many programs share one modulation row's rows: enough to fill the device,
    never more than its row tiles."""
    return max(1, min(cdiv(rows_per_mod, block_m), cdiv(device_programs, mods)))


def _backward(dy, x, scale, weight, bias, mean, rstd, rms, need_dw, need_db):
    """dx; dshift and dscale in scale's shape and dtype; float32 dgamma, dbeta (n,)
    where asked for (else empty)."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    dy2 = dy.reshape(-1, n).contiguous()
    m = x2.shape[0]
    s, s_stride = _mod_rows(scale, n)
    mods = s.shape[0]
    rows_per_mod = m // mods if mods else 0
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    block_m = min(_block_m(n), pow2(rows_per_mod))
    splits = _splits(rows_per_mod, mods, block_m, max_programs(x2)) if m else 1
    programs = mods * splits
    dx = torch.empty_like(x2)
    # With one program per modulation row the partial rows are the result: stored in its dtype.
    part_dtype = scale.dtype if splits == 1 else torch.float32
    dshift = torch.empty((programs, n), device=x.device, dtype=part_dtype)
    dscale = torch.empty_like(dshift)
    dw = torch.empty((programs, n), device=x.device, dtype=torch.float32) if w is not None else None
    db = torch.empty_like(dshift, dtype=torch.float32) if b is not None else None
    if m:
        _modulated_bwd[(programs,)](
            x2, dy2, dx, s, x2 if w is None else w, x2 if b is None else b,
            rstd if mean is None else mean, rstd, dshift, dscale,
            dshift if dw is None else dw, dshift if db is None else db,
            n, rows_per_mod, splits, s_stride,
            RMS=rms, HAS_W=w is not None, HAS_B=b is not None,
            BLOCK_M=block_m, BLOCK_N=pow2(n), num_warps=num_warps(block_m * pow2(n)),
        )  # fmt: skip
    else:
        for t in (dshift, dscale, dw, db):
            if t is not None:
                t.zero_()

    def per_mod(partials):
        if splits > 1:
            partials = partials.view(mods, splits, n).sum(1)
        return partials.to(scale.dtype).view(scale.shape)

    dweight = _reduce(dw) if need_dw else placeholder(x)
    dbias = _reduce(db) if need_db else placeholder(x)
    return dx.view(x.shape), per_mod(dshift), per_mod(dscale), dweight, dbias


def _reduce(partials):
    """The dgamma/dbeta partial rows summed (one row: no sum launch)."""
    return partials[0] if partials.shape[0] == 1 else partials.sum(0)


def _fake_stats(x):
    return x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


def _fake_param_grad(x, wanted):
    return x.new_empty(x.shape[-1] if wanted else 0, dtype=torch.float32)


def _param_grad(grad, param):
    """A float32 dgamma/dbeta in its parameter's dtype."""
    return grad.to(param.dtype)


@torch.library.custom_op("normlab::modulated_layer_norm_fwd", mutates_args=())
def modulated_layer_norm_fwd(
    x: Tensor, shift: Tensor, scale: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the last axis, modulated: y (contiguous), each row's mean and rstd."""
    return _forward(x, shift, scale, weight, bias, eps, rms=False)


@modulated_layer_norm_fwd.register_fake
def _(x, shift, scale, weight, bias, eps):
    stats = _fake_stats(x)
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("normlab::modulated_layer_norm_bwd", mutates_args=())
def modulated_layer_norm_bwd(
    dy: Tensor, x: Tensor, scale: Tensor, weight: Tensor | None, bias: Tensor | None,
    mean: Tensor, rstd: Tensor, weight_grad: bool, bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """dx, dshift, dscale (scale's shape and dtype), float32 dweight and dbias of shape
    (N,) (empty unless asked for)."""
    return _backward(dy, x, scale, weight, bias, mean, rstd, False, weight_grad, bias_grad)


@modulated_layer_norm_bwd.register_fake
def _(dy, x, scale, weight, bias, mean, rstd, weight_grad, bias_grad):
    return (
        x.new_empty(x.shape),
        scale.new_empty(scale.shape),
        scale.new_empty(scale.shape),
        _fake_param_grad(x, weight_grad),
        _fake_param_grad(x, bias_grad),
    )


def _layer_setup(ctx, inputs, output):
    x, _shift, scale, weight, bias, _eps = inputs
    only_first_differentiable(ctx, output)
    ctx.save_for_backward(x, scale, weight, bias, *output[1:])


def _layer_backward(ctx, dy, _dmean, _drstd):
    x, scale, weight, bias, mean, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dshift, dscale, dw, db = run(
        modulated_layer_norm_bwd, dy, x, scale, weight, bias, mean, rstd, need[3], need[4]
    )
    return (
        dx,
        dshift if need[1] else None,
        dscale if need[2] else None,
        _param_grad(dw, weight) if need[3] else None,
        _param_grad(db, bias) if need[4] else None,
        None,
    )


register_autograd(modulated_layer_norm_fwd, _layer_backward, _layer_setup)
refuse_double_backward(modulated_layer_norm_bwd)


@torch.library.custom_op("normlab::modulated_rms_norm_fwd", mutates_args=())
def modulated_rms_norm_fwd(
    x: Tensor, shift: Tensor, scale: Tensor, weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """RMSNorm over the last axis, modulated: y (contiguous) and each row's rstd."""
    y, _mean, rstd = _forward(x, shift, scale, weight, None, eps, rms=True)
    return y, rstd


@modulated_rms_norm_fwd.register_fake
def _(x, shift, scale, weight, eps):
    return x.new_empty(x.shape), _fake_stats(x)


@torch.library.custom_op("normlab::modulated_rms_norm_bwd", mutates_args=())
def modulated_rms_norm_bwd(
    dy: Tensor, x: Tensor, scale: Tensor, weight: Tensor | None, rstd: Tensor, weight_grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dx, dshift, dscale (scale's shape and dtype), and the float32 dweight of shape
    (N,) (empty unless asked for)."""
    dx, dshift, dscale, dweight, _ = _backward(
        dy, x, scale, weight, None, None, rstd, True, weight_grad, False
    )
    return dx, dshift, dscale, dweight


@modulated_rms_norm_bwd.register_fake
def _(dy, x, scale, weight, rstd, weight_grad):
    grads = (scale.new_empty(scale.shape), scale.new_empty(scale.shape))
    return x.new_empty(x.shape), *grads, _fake_param_grad(x, weight_grad)


def _rms_setup(ctx, inputs, output):
    x, _shift, scale, weight, _eps = inputs
    only_first_differentiable(ctx, output)
    ctx.save_for_backward(x, scale, weight, output[1])


def _rms_backward(ctx, dy, _drstd):
    x, scale, weight, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dshift, dscale, dw = run(modulated_rms_norm_bwd, dy, x, scale, weight, rstd, need[3])
    return (
        dx,
        dshift if need[1] else None,
        dscale if need[2] else None,
        _param_grad(dw, weight) if need[3] else None,
        None,
    )


register_autograd(modulated_rms_norm_fwd, _rms_backward, _rms_setup)
refuse_double_backward(modulated_rms_norm_bwd)


def modulated_layer_norm(x, shift, scale, weight=None, bias=None, eps=1e-6):
    """:func:`normlab.functional.modulated_layer_norm` on the Triton kernels."""
    return run(modulated_layer_norm_fwd, x, shift, scale, weight, bias, float(eps))[0]


def modulated_rms_norm(x, shift, scale, weight=None, eps=1e-6):
    """:func:`normlab.functional.modulated_rms_norm` on the Triton kernels."""
    return run(modulated_rms_norm_fwd, x, shift, scale, weight, float(eps))[0]
