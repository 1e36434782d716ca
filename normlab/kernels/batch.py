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

Every kernel walks (BLOCK_C, BLOCK_R) tiles without a division per element:
for NCHW memory (PLANAR) a tile is BLOCK_C channel planes of one sample, over
BLOCK_R consecutive spatial positions; for channels_last (and (N, C) inputs)
the batch and spatial axes flatten to rows r with one stride, and a tile is
BLOCK_R rows of BLOCK_C consecutive channels. Grid axis 0 runs over tiles (or
splits of them), axis 1 over channel blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from normlab.kernels._launch import channel_view, dense_like, max_programs, num_warps, pow2


@triton.jit
def _tile(t, ch, c_ok, R, S, tiles_per_sample, sN, sC, row_stride,
          PLANAR: tl.constexpr, BLOCK_R: tl.constexpr):  # fmt: skip
    """Offsets, mask and value count of tile ``t`` for channels ``ch``."""
    j = tl.arange(0, BLOCK_R)
    if PLANAR:
        n = t // tiles_per_sample
        s0 = (t - n * tiles_per_sample) * BLOCK_R
        ok = s0 + j < S
        offs = n.to(tl.int64) * sN + ch.to(tl.int64)[:, None] * sC + (s0 + j)[None, :]
        count = tl.minimum(S - s0, BLOCK_R)
    else:
        r0 = t * BLOCK_R
        ok = r0 + j < R
        offs = (r0 + j).to(tl.int64)[None, :] * row_stride + ch[:, None]
        count = tl.minimum(R - r0, BLOCK_R)
    return offs, c_ok[:, None] & ok[None, :], count.to(tl.float32)


@triton.jit
def _bn_partial_moments(
    X, PMean, PM2, PCount, C, R, S, tiles, tiles_per_split, tiles_per_sample, sN, sC, row_stride,
    PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(0)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    first = split * tiles_per_split
    for t in range(first, tl.minimum(first + tiles_per_split, tiles)):
        offs, mask, t_count = _tile(
            t, ch, c_ok, R, S, tiles_per_sample, sN, sC, row_stride, PLANAR, BLOCK_R
        )
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        t_mean = tl.sum(x, axis=1) / t_count
        d = tl.where(mask, x - t_mean[:, None], 0.0)
        total = count + t_count
        delta = t_mean - mean
        mean += delta * (t_count / total)
        m2 += tl.sum(d * d, axis=1) + delta * delta * (count * t_count / total)
        count = total
    part = split * C + ch
    tl.store(PMean + part, mean, mask=c_ok)
    tl.store(PM2 + part, m2, mask=c_ok)
    tl.store(PCount + part, count, mask=c_ok)


@triton.jit
def _bn_finalize(
    PMean, PM2, PCount, Mean, Rstd, RunMean, RunVar, C, splits, eps, momentum,
    UPDATE: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for split in range(0, splits):
        part = split * C + ch
        s_count = tl.load(PCount + part, mask=c_ok, other=1.0)
        total = count + s_count
        delta = tl.load(PMean + part, mask=c_ok, other=0.0) - mean
        mean += delta * (s_count / total)
        m2 += tl.load(PM2 + part, mask=c_ok, other=0.0) + delta * delta * (count * s_count / total)
        count = total
    tl.store(Mean + ch, mean, mask=c_ok)
    tl.store(Rstd + ch, tl.rsqrt(m2 / count + eps), mask=c_ok)
    if UPDATE:
        old_mean = tl.load(RunMean + ch, mask=c_ok, other=0.0).to(tl.float32)
        old_var = tl.load(RunVar + ch, mask=c_ok, other=0.0).to(tl.float32)
        new_mean = (1.0 - momentum) * old_mean + momentum * mean
        # count >= 2 in training (checked by the caller); the max only spares masked lanes
        new_var = (1.0 - momentum) * old_var + momentum * (m2 / tl.maximum(count - 1.0, 1.0))
        tl.store(RunMean + ch, new_mean.to(RunMean.dtype.element_ty), mask=c_ok)
        tl.store(RunVar + ch, new_var.to(RunVar.dtype.element_ty), mask=c_ok)


@triton.jit
def _channel_stats(Mean, Spread, W, ch, c_ok, eps, FROM_VAR: tl.constexpr, HAS_W: tl.constexpr):
    """Per channel: mean, rstd and rstd * gamma (Spread holds rstd, or var when FROM_VAR)."""
    mean = tl.load(Mean + ch, mask=c_ok, other=0.0).to(tl.float32)
    rstd = tl.load(Spread + ch, mask=c_ok, other=1.0).to(tl.float32)
    if FROM_VAR:
        rstd = tl.rsqrt(rstd + eps)
    scale = rstd
    if HAS_W:
        scale = rstd * tl.load(W + ch, mask=c_ok, other=0.0).to(tl.float32)
    return mean, rstd, scale


@triton.jit
def _bn_apply(
    X, Y, Mean, Spread, W, B, C, R, S, tiles_per_sample, sN, sC, row_stride, eps,
    FROM_VAR: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    mean, _, scale = _channel_stats(Mean, Spread, W, ch, c_ok, eps, FROM_VAR, HAS_W)
    shift = -mean * scale
    if HAS_B:
        shift += tl.load(B + ch, mask=c_ok, other=0.0).to(tl.float32)
    offs, mask, _ = _tile(
        tl.program_id(0), ch, c_ok, R, S, tiles_per_sample, sN, sC, row_stride, PLANAR, BLOCK_R
    )
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (x * scale[:, None] + shift[:, None]).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bn_partial_grads(
    X, DY, Mean, Spread, PSum, C, R, S, tiles, tiles_per_split, tiles_per_sample,
    sN, sC, row_stride, eps,
    FROM_VAR: tl.constexpr, PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(0)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    mean, rstd, _unit = _channel_stats(Mean, Spread, Mean, ch, c_ok, eps, FROM_VAR, False)
    sum_dy = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    first = split * tiles_per_split
    for t in range(first, tl.minimum(first + tiles_per_split, tiles)):
        offs, mask, _ = _tile(
            t, ch, c_ok, R, S, tiles_per_sample, sN, sC, row_stride, PLANAR, BLOCK_R
        )
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        sum_dy += dy
        sum_dy_xhat += dy * tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    tl.store(PSum + split * C + ch, tl.sum(sum_dy, axis=1), mask=c_ok)
    tl.store(PSum + (tl.num_programs(0) + split) * C + ch, tl.sum(sum_dy_xhat, axis=1), mask=c_ok)


@triton.jit
def _bn_dx(
    X, DY, DX, Mean, Spread, W, Sums, C, R, S, tiles_per_sample, sN, sC, row_stride, eps,
    FROM_VAR: tl.constexpr, HAS_W: tl.constexpr, TRAINING: tl.constexpr,
    PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    mean, rstd, scale = _channel_stats(Mean, Spread, W, ch, c_ok, eps, FROM_VAR, HAS_W)
    offs, mask, _ = _tile(
        tl.program_id(0), ch, c_ok, R, S, tiles_per_sample, sN, sC, row_stride, PLANAR, BLOCK_R
    )
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    if TRAINING:
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), as a * dy + b * x + c
        mean_dy = tl.load(Sums + ch, mask=c_ok, other=0.0) / R
        k = rstd * tl.load(Sums + C + ch, mask=c_ok, other=0.0) / R
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = dy - (mean_dy - mean * k)[:, None] - x * k[:, None]
    tl.store(DX + offs, (dy * scale[:, None]).to(DX.dtype.element_ty), mask=mask)


class _Tiling:
    """How a (N, C, S) tensor with strides (sN, sC, sS) is cut into tiles (see the module doc)."""

    def __init__(self, x: torch.Tensor, sizes, strides) -> None:
        n, c, s = sizes
        s_n, s_c, s_s = strides
        self.c, self.r, self.s = c, n * s, s
        self.planar = s_c != 1
        if self.planar:  # NCHW planes: tiles along S within a sample
            self.block_r = min(1024, pow2(s))
            self.block_c = max(1, min(pow2(c), 2048 // self.block_r))
            self.tiles_per_sample = triton.cdiv(s, self.block_r)
            self.tiles = n * self.tiles_per_sample
        else:  # channels innermost: rows of the flattened batch and spatial axes
            self.block_c = min(128, pow2(c))
            self.block_r = max(1, 2048 // self.block_c)
            self.tiles_per_sample = 1
            self.tiles = triton.cdiv(self.r, self.block_r)
        self.row_stride = s_s if s > 1 else s_n
        self.strides = (s_n, s_c)
        self.channel_blocks = triton.cdiv(c, self.block_c)
        want = max(1, max_programs(x) // self.channel_blocks)
        self.tiles_per_split = triton.cdiv(self.tiles, want)
        self.splits = triton.cdiv(self.tiles, self.tiles_per_split)
        self.warps = num_warps(self.block_c * self.block_r)

    def meta(self) -> dict:
        """Launch keywords shared by every kernel."""
        return {
            "PLANAR": self.planar,
            "BLOCK_C": self.block_c,
            "BLOCK_R": self.block_r,
            "num_warps": self.warps,
        }


class BatchNormFunction(torch.autograd.Function):
    """BatchNorm of an (N, C, *) tensor: batch statistics (``training``) or running ones."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        x, sizes, strides = channel_view(x)
        tiling = _Tiling(x, sizes, strides)
        c, r, s = tiling.c, tiling.r, tiling.s
        address = (tiling.tiles_per_sample, *tiling.strides, tiling.row_stride)
        y = torch.empty_like(x)
        if training:
            mean = torch.empty(c, device=x.device, dtype=torch.float32)
            spread = torch.empty_like(mean)  # rstd
            partial = torch.empty((3, tiling.splits, c), device=x.device, dtype=torch.float32)
            _bn_partial_moments[(tiling.splits, tiling.channel_blocks)](
                x, partial[0], partial[1], partial[2], c, r, s,
                tiling.tiles, tiling.tiles_per_split, *address, **tiling.meta(),
            )  # fmt: skip
            update = running_mean is not None
            _bn_finalize[(triton.cdiv(c, 128),)](
                partial[0], partial[1], partial[2], mean, spread,
                running_mean if update else mean, running_var if update else mean,
                c, tiling.splits, eps, momentum, UPDATE=update, BLOCK_C=128,
            )  # fmt: skip
        else:
            mean, spread = running_mean, running_var  # spread: var
        _bn_apply[(tiling.tiles, tiling.channel_blocks)](
            x, y, mean, spread, x if weight is None else weight, x if bias is None else bias,
            c, r, s, *address, eps,
            FROM_VAR=not training, HAS_W=weight is not None, HAS_B=bias is not None,
            **tiling.meta(),
        )  # fmt: skip
        ctx.save_for_backward(x, weight, mean, spread)
        ctx.tiling, ctx.training, ctx.eps = tiling, training, eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, mean, spread = ctx.saved_tensors
        tiling = ctx.tiling
        c, r, s = tiling.c, tiling.r, tiling.s
        address = (tiling.tiles_per_sample, *tiling.strides, tiling.row_stride)
        dy = dense_like(dy, x)
        from_var = not ctx.training
        need_dw = weight is not None and ctx.needs_input_grad[1]
        need_db = ctx.bias_dtype is not None and ctx.needs_input_grad[2]
        sums = None
        if ctx.training or need_dw or need_db:
            partial = torch.empty((2, tiling.splits, c), device=x.device, dtype=torch.float32)
            _bn_partial_grads[(tiling.splits, tiling.channel_blocks)](
                x, dy, mean, spread, partial, c, r, s,
                tiling.tiles, tiling.tiles_per_split, *address, ctx.eps,
                FROM_VAR=from_var, **tiling.meta(),
            )  # fmt: skip
            sums = partial.sum(1)  # (sum dy, sum dy * xhat) per channel
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x)
            _bn_dx[(tiling.tiles, tiling.channel_blocks)](
                x, dy, dx, mean, spread, x if weight is None else weight,
                mean if sums is None else sums, c, r, s, *address, ctx.eps,
                FROM_VAR=from_var, HAS_W=weight is not None, TRAINING=ctx.training,
                **tiling.meta(),
            )  # fmt: skip
        dweight = sums[1].to(weight.dtype) if need_dw else None
        dbias = sums[0].to(ctx.bias_dtype) if need_db else None
        return dx, dweight, dbias, None, None, None, None, None


def batch_norm(
    x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    """``torch.nn.functional.batch_norm`` on the Triton kernels."""
    return BatchNormFunction.apply(
        x, weight, bias, running_mean, running_var, training, momentum, eps
    )
