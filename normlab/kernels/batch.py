"""BatchNorm on (N, C, *) tensors, NCHW or channels_last: Triton kernels, autograd.Function.

Per channel c over the batch and spatial axes, R = N * S values (Ioffe & Szegedy, 2015):

    training:  y = (x - mean_c) * rstd_c * gamma_c + beta_c,  rstd_c = 1 / sqrt(var_c + eps)
               running_mean <- (1 - momentum) * running_mean + momentum * mean_c
               running_var  <- (1 - momentum) * running_var  + momentum * var_c * R / (R - 1)
    eval:      the same with running_mean and running_var in place of the batch statistics

Backward (training), with xhat the normalized input:

    dx = gamma_c * rstd_c * (dy - sum(dy) / R - xhat * sum(dy * xhat) / R)
    dgamma_c = sum(dy * xhat),   dbeta_c = sum(dy)      (eval: dx = gamma_c * rstd_c * dy)

Statistics need every value of a channel before any output, so training is
three launches: partial moments (each program merges its tiles' counts, means
and squared deviations, Chan et al.'s parallel formula, into a (splits, C)
buffer), one small program per channel block that merges the splits and
updates the running statistics, and an elementwise pass that writes y. The
backward is likewise a split reduction of sum(dy) and sum(dy * xhat), then one
elementwise pass for dx. Eval forward is the elementwise pass alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from normlab.kernels._launch import channel_view, dense_like, max_programs, num_warps, pow2

_ELEMENTWISE_BLOCK = 2048


@triton.jit
def _channel_tile(X, c_rows, c_ok, r, r_end, S, sN, sS):
    """The (BLOCK_C, BLOCK_R) tile of channels ``c_rows`` at reduction indices ``r``."""
    r_ok = r < r_end
    n = r // S
    cols = n.to(tl.int64) * sN + (r - n * S).to(tl.int64) * sS
    mask = c_ok[:, None] & r_ok[None, :]
    return tl.load(X + c_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32), mask


@triton.jit
def _bn_partial_moments(
    X, PMean, PM2, C, S, R, chunk, sN, sC, sS,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(1)
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    c_rows = ch.to(tl.int64) * sC
    lo = split * chunk
    hi = tl.minimum(lo + chunk, R)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R)
        x, mask = _channel_tile(X, c_rows, c_ok, r, hi, S, sN, sS)
        count = (start - lo).to(tl.float32)  # every earlier tile was full
        t_count = tl.minimum(hi - start, BLOCK_R).to(tl.float32)
        t_mean = tl.sum(x, axis=1) / t_count
        d = tl.where(mask, x - t_mean[:, None], 0.0)
        total = count + t_count
        delta = t_mean - mean
        mean += delta * (t_count / total)
        m2 += tl.sum(d * d, axis=1) + delta * delta * (count * t_count / total)
    tl.store(PMean + split * C + ch, mean, mask=c_ok)
    tl.store(PM2 + split * C + ch, m2, mask=c_ok)


@triton.jit
def _bn_finalize(
    PMean, PM2, Mean, Rstd, RunMean, RunVar, C, R, chunk, splits, eps, momentum,
    UPDATE: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for split in range(0, splits):
        count = (split * chunk).to(tl.float32)  # every earlier split was full
        s_count = tl.minimum(R - split * chunk, chunk).to(tl.float32)
        s_mean = tl.load(PMean + split * C + ch, mask=c_ok, other=0.0)
        total = count + s_count
        delta = s_mean - mean
        mean += delta * (s_count / total)
        m2 += tl.load(PM2 + split * C + ch, mask=c_ok, other=0.0)
        m2 += delta * delta * (count * s_count / total)
    count = R.to(tl.float32)
    tl.store(Mean + ch, mean, mask=c_ok)
    tl.store(Rstd + ch, tl.rsqrt(m2 / count + eps), mask=c_ok)
    if UPDATE:
        old_mean = tl.load(RunMean + ch, mask=c_ok, other=0.0).to(tl.float32)
        old_var = tl.load(RunVar + ch, mask=c_ok, other=0.0).to(tl.float32)
        new_mean = (1.0 - momentum) * old_mean + momentum * mean
        new_var = (1.0 - momentum) * old_var + momentum * (m2 / (count - 1.0))
        tl.store(RunMean + ch, new_mean.to(RunMean.dtype.element_ty), mask=c_ok)
        tl.store(RunVar + ch, new_var.to(RunVar.dtype.element_ty), mask=c_ok)


@triton.jit
def _channel_stats(Mean, Spread, W, c, mask, eps, FROM_VAR: tl.constexpr, HAS_W: tl.constexpr):
    """Per-element mean, rstd and rstd * gamma of channel ``c`` (Spread: rstd, or var)."""
    mean = tl.load(Mean + c, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(Spread + c, mask=mask, other=1.0).to(tl.float32)
    if FROM_VAR:
        rstd = tl.rsqrt(rstd + eps)
    scale = rstd
    if HAS_W:
        scale = rstd * tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
    return mean, rstd, scale


@triton.jit
def _bn_apply(
    X, Y, Mean, Spread, W, B, numel, C, sC, eps,
    FROM_VAR: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    c = (offs // sC) % C
    mean, _, scale = _channel_stats(Mean, Spread, W, c, mask, eps, FROM_VAR, HAS_W)
    y = (tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - mean) * scale
    if HAS_B:
        y += tl.load(B + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bn_partial_grads(
    X, DY, Mean, Spread, PSum, C, S, R, chunk, sN, sC, sS, eps,
    FROM_VAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(1)
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    c_rows = ch.to(tl.int64) * sC
    mean = tl.load(Mean + ch, mask=c_ok, other=0.0).to(tl.float32)
    rstd = tl.load(Spread + ch, mask=c_ok, other=1.0).to(tl.float32)
    if FROM_VAR:
        rstd = tl.rsqrt(rstd + eps)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, R)
    sum_dy = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R)
        x, mask = _channel_tile(X, c_rows, c_ok, r, hi, S, sN, sS)
        dy, _ = _channel_tile(DY, c_rows, c_ok, r, hi, S, sN, sS)
        sum_dy += dy
        sum_dy_xhat += dy * tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    tl.store(PSum + split * C + ch, tl.sum(sum_dy, axis=1), mask=c_ok)
    tl.store(PSum + (tl.num_programs(1) + split) * C + ch, tl.sum(sum_dy_xhat, axis=1), mask=c_ok)


@triton.jit
def _bn_dx(
    X, DY, DX, Mean, Spread, W, Sums, numel, C, sC, R, eps,
    FROM_VAR: tl.constexpr, HAS_W: tl.constexpr, TRAINING: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    c = (offs // sC) % C
    mean, rstd, scale = _channel_stats(Mean, Spread, W, c, mask, eps, FROM_VAR, HAS_W)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    if TRAINING:
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        mean_dy = tl.load(Sums + c, mask=mask, other=0.0) / R
        mean_dy_xhat = tl.load(Sums + C + c, mask=mask, other=0.0) / R
        dy = dy - mean_dy - (x - mean) * rstd * mean_dy_xhat
    tl.store(DX + offs, (dy * scale).to(DX.dtype.element_ty), mask=mask)


def _reduction_tiles(
    x: torch.Tensor, c: int, r: int, channel_stride: int
) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_R, chunk, splits) for a per-channel reduction over ``r`` values.

    Tiles run along the contiguous axis (values of a channel for NCHW, channels
    for channels_last); the reduction is split so that about ``max_programs``
    programs share the work.
    """
    if channel_stride == 1 and c > 1:
        block_c, block_r = min(64, pow2(c)), 32
    else:
        block_c, block_r = 1 if c == 1 else 2, min(1024, pow2(r))
    channel_blocks = triton.cdiv(c, block_c)
    want = max(1, max_programs(x) // channel_blocks)
    chunk = max(block_r, triton.cdiv(triton.cdiv(r, want), block_r) * block_r)
    return block_c, block_r, chunk, triton.cdiv(r, chunk)


class BatchNormFunction(torch.autograd.Function):
    """BatchNorm of an (N, C, *) tensor: batch statistics (``training``) or running ones."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        x, (n, c, s), (sn, sc, ss) = channel_view(x)
        y = torch.empty_like(x)
        numel, r = x.numel(), n * s
        dummy = x
        if training:
            mean = torch.empty(c, device=x.device, dtype=torch.float32)
            spread = torch.empty_like(mean)  # rstd
            if numel:
                block_c, block_r, chunk, splits = _reduction_tiles(x, c, r, sc)
                pmean = torch.empty((splits, c), device=x.device, dtype=torch.float32)
                pm2 = torch.empty_like(pmean)
                _bn_partial_moments[(triton.cdiv(c, block_c), splits)](
                    x, pmean, pm2, c, s, r, chunk, sn, sc, ss,
                    BLOCK_C=block_c, BLOCK_R=block_r, num_warps=num_warps(block_c * block_r),
                )  # fmt: skip
                update = running_mean is not None
                _bn_finalize[(triton.cdiv(c, 128),)](
                    pmean, pm2, mean, spread,
                    running_mean if update else dummy, running_var if update else dummy,
                    c, r, chunk, splits, eps, momentum, UPDATE=update, BLOCK_C=128,
                )  # fmt: skip
        else:
            mean, spread = running_mean, running_var  # spread: var
        if numel:
            _bn_apply[(triton.cdiv(numel, _ELEMENTWISE_BLOCK),)](
                x, y, mean, spread, dummy if weight is None else weight,
                dummy if bias is None else bias, numel, c, sc, eps,
                FROM_VAR=not training, HAS_W=weight is not None, HAS_B=bias is not None,
                BLOCK=_ELEMENTWISE_BLOCK, num_warps=8,
            )  # fmt: skip
        ctx.save_for_backward(x, weight, mean, spread)
        ctx.layout = (n, c, s, sn, sc, ss)
        ctx.training, ctx.eps = training, eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, mean, spread = ctx.saved_tensors
        n, c, s, sn, sc, ss = ctx.layout
        dy = dense_like(dy, x)
        numel, r = x.numel(), n * s
        from_var = not ctx.training
        sums = torch.zeros((2, c), device=x.device, dtype=torch.float32)
        need_params = weight is not None and ctx.needs_input_grad[1]
        need_params |= ctx.bias_dtype is not None and ctx.needs_input_grad[2]
        if numel and (ctx.training or need_params):
            block_c, block_r, chunk, splits = _reduction_tiles(x, c, r, sc)
            partial = torch.empty((2, splits, c), device=x.device, dtype=torch.float32)
            _bn_partial_grads[(triton.cdiv(c, block_c), splits)](
                x, dy, mean, spread, partial, c, s, r, chunk, sn, sc, ss, ctx.eps,
                FROM_VAR=from_var, BLOCK_C=block_c, BLOCK_R=block_r,
                num_warps=num_warps(block_c * block_r),
            )  # fmt: skip
            sums = partial.sum(1)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x)
            if numel:
                _bn_dx[(triton.cdiv(numel, _ELEMENTWISE_BLOCK),)](
                    x, dy, dx, mean, spread, x if weight is None else weight, sums,
                    numel, c, sc, r, ctx.eps,
                    FROM_VAR=from_var, HAS_W=weight is not None, TRAINING=ctx.training,
                    BLOCK=_ELEMENTWISE_BLOCK, num_warps=8,
                )  # fmt: skip
        dweight = None
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = sums[1].to(weight.dtype)
        dbias = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            dbias = sums[0].to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None, None, None, None


def batch_norm(
    x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    """``torch.nn.functional.batch_norm`` on the Triton kernels."""
    return BatchNormFunction.apply(
        x, weight, bias, running_mean, running_var, training, momentum, eps
    )
