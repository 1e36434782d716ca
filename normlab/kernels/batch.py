"""BatchNorm on (N, C, *) tensors, NCHW or channels_last: Triton kernels and custom ops.

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

Ops: ``normlab::batch_norm_train_fwd`` -> (y, mean, rstd: float32 per channel,
and the updated running mean and var), ``normlab::batch_norm_eval_fwd`` -> y,
and ``normlab::batch_norm_bwd``, which the autograd registered on both calls.
The training op is functional (PyTorch registers autograd on functional ops
only): the kernels update copies of the running statistics, and
:func:`batch_norm` copies them back in place with ``copy_``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from normlab.kernels._launch import (
    cdiv,
    channel_view,
    dense_like,
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
def _channel_block(C, BLOCK_C: tl.constexpr):
    """This program's channels (grid axis 1 runs over channel blocks) and their mask."""
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return ch, ch < C


@triton.jit
def _split_tiles(split, tiles_per_split, tiles):
    """The tiles [first, last) of split ``split``."""
    first = split * tiles_per_split
    return first, tl.minimum(first + tiles_per_split, tiles)


@triton.jit
def _moments(X, ch, c_ok, first, last, R, S, tiles_per_sample, sN, sC, row_stride,
             PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):  # fmt: skip
    """(count, mean, sum of squared deviations) per channel over tiles [first, last):
    each tile's own mean and deviations, merged into the running ones (Chan et al.)."""
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t in range(first, last):
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
    return count, mean, m2


@triton.jit
def _finish_statistics(Mean, Rstd, RunMean, RunVar, ch, c_ok, count, mean, m2, eps, momentum,
                       UPDATE: tl.constexpr):  # fmt: skip
    """Store mean and rstd; update the running statistics as torch does (unbiased var)."""
    rstd = tl.rsqrt(m2 / count + eps)
    tl.store(Mean + ch, mean, mask=c_ok)
    tl.store(Rstd + ch, rstd, mask=c_ok)
    if UPDATE:
        old_mean = tl.load(RunMean + ch, mask=c_ok, other=0.0).to(tl.float32)
        old_var = tl.load(RunVar + ch, mask=c_ok, other=0.0).to(tl.float32)
        new_mean = (1.0 - momentum) * old_mean + momentum * mean
        # count >= 2 in training (checked by the caller); the max only spares masked lanes
        new_var = (1.0 - momentum) * old_var + momentum * (m2 / tl.maximum(count - 1.0, 1.0))
        tl.store(RunMean + ch, new_mean.to(RunMean.dtype.element_ty), mask=c_ok)
        tl.store(RunVar + ch, new_var.to(RunVar.dtype.element_ty), mask=c_ok)
    return rstd


@triton.jit
def _channel_stats(Mean, Spread, W, ch, c_ok, eps, FROM_VAR: tl.constexpr, HAS_W: tl.constexpr):
    """Per channel: mean, rstd and rstd * gamma (Spread holds rstd, or var when FROM_VAR)."""
    mean = tl.load(Mean + ch, mask=c_ok, other=0.0).to(tl.float32)
    rstd = tl.load(Spread + ch, mask=c_ok, other=1.0).to(tl.float32)
    if FROM_VAR:
        rstd = tl.rsqrt(rstd + eps)
    return mean, rstd, _gamma_times(rstd, W, ch, c_ok, HAS_W)


@triton.jit
def _gamma_times(rstd, W, ch, c_ok, HAS_W: tl.constexpr):
    scale = rstd
    if HAS_W:
        scale = rstd * tl.load(W + ch, mask=c_ok, other=0.0).to(tl.float32)
    return scale


@triton.jit
def _normalize(X, Y, B, ch, c_ok, mean, scale, first, last, R, S, tiles_per_sample, sN, sC,
               row_stride, HAS_B: tl.constexpr, PLANAR: tl.constexpr,
               BLOCK_R: tl.constexpr):  # fmt: skip
    """y = (x - mean) * scale + beta on tiles [first, last)."""
    shift = -mean * scale
    if HAS_B:
        shift += tl.load(B + ch, mask=c_ok, other=0.0).to(tl.float32)
    for t in range(first, last):
        offs, mask, _count = _tile(
            t, ch, c_ok, R, S, tiles_per_sample, sN, sC, row_stride, PLANAR, BLOCK_R
        )
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + offs, (x * scale[:, None] + shift[:, None]).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _grad_sums(X, DY, ch, c_ok, mean, rstd, first, last, R, S, tiles_per_sample, sN, sC,
               row_stride, PLANAR: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_R: tl.constexpr):  # fmt: skip
    """Per channel sum(dy) and sum(dy * xhat) over tiles [first, last)."""
    sum_dy = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.float32)
    for t in range(first, last):
        offs, mask, _count = _tile(
            t, ch, c_ok, R, S, tiles_per_sample, sN, sC, row_stride, PLANAR, BLOCK_R
        )
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        sum_dy += dy
        sum_dy_xhat += dy * tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    return tl.sum(sum_dy, axis=1), tl.sum(sum_dy_xhat, axis=1)


@triton.jit
def _input_grad(X, DY, DX, ch, c_ok, mean, rstd, scale, sum_dy, sum_dy_xhat, first, last,
                R, S, tiles_per_sample, sN, sC, row_stride, TRAINING: tl.constexpr,
                PLANAR: tl.constexpr, BLOCK_R: tl.constexpr):  # fmt: skip
    """dx on tiles [first, last): scale * (dy - mean(dy) - xhat * mean(dy * xhat)) in
    training (as a * dy + b * x + c), scale * dy in eval."""
    k = rstd * sum_dy_xhat / R
    offset = sum_dy / R - mean * k
    for t in range(first, last):
        offs, mask, _count = _tile(
            t, ch, c_ok, R, S, tiles_per_sample, sN, sC, row_stride, PLANAR, BLOCK_R
        )
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        if TRAINING:
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            dy = dy - offset[:, None] - x * k[:, None]
        tl.store(DX + offs, (dy * scale[:, None]).to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _bn_forward_fused(
    X, Y, Mean, Rstd, RunMean, RunVar, W, B, C, R, S, tiles, tiles_per_sample,
    sN, sC, row_stride, eps, momentum,
    UPDATE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Training forward in one launch, a program per channel block (small inputs)."""
    ch, c_ok = _channel_block(C, BLOCK_C)
    count, mean, m2 = _moments(
        X, ch, c_ok, 0, tiles, R, S, tiles_per_sample, sN, sC, row_stride, PLANAR, BLOCK_C, BLOCK_R
    )
    rstd = _finish_statistics(
        Mean, Rstd, RunMean, RunVar, ch, c_ok, count, mean, m2, eps, momentum, UPDATE
    )
    scale = _gamma_times(rstd, W, ch, c_ok, HAS_W)
    _normalize(
        X,
        Y,
        B,
        ch,
        c_ok,
        mean,
        scale,
        0,
        tiles,
        R,
        S,
        tiles_per_sample,
        sN,
        sC,
        row_stride,
        HAS_B,
        PLANAR,
        BLOCK_R,
    )


@triton.jit
def _bn_partial_moments(
    X, PMean, PM2, PCount, C, R, S, tiles, tiles_per_split, tiles_per_sample, sN, sC, row_stride,
    PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(0)
    ch, c_ok = _channel_block(C, BLOCK_C)
    first, last = _split_tiles(split, tiles_per_split, tiles)
    count, mean, m2 = _moments(
        X,
        ch,
        c_ok,
        first,
        last,
        R,
        S,
        tiles_per_sample,
        sN,
        sC,
        row_stride,
        PLANAR,
        BLOCK_C,
        BLOCK_R,
    )
    part = split * C + ch
    tl.store(PMean + part, mean, mask=c_ok)
    tl.store(PM2 + part, m2, mask=c_ok)
    tl.store(PCount + part, count, mask=c_ok)


@triton.jit
def _bn_finalize(
    PMean, PM2, PCount, Mean, Rstd, RunMean, RunVar, C, splits, eps, momentum,
    UPDATE: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Merge the splits' moments per channel (Chan et al.), then as _finish_statistics."""
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
    _finish_statistics(
        Mean, Rstd, RunMean, RunVar, ch, c_ok, count, mean, m2, eps, momentum, UPDATE
    )


@triton.jit
def _bn_apply(
    X, Y, Mean, Spread, W, B, C, R, S, tiles_per_sample, sN, sC, row_stride, eps,
    FROM_VAR: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The elementwise pass, a tile per program: training (mean, rstd) or eval (running)."""
    ch, c_ok = _channel_block(C, BLOCK_C)
    mean, _rstd, scale = _channel_stats(Mean, Spread, W, ch, c_ok, eps, FROM_VAR, HAS_W)
    t = tl.program_id(0)
    _normalize(
        X,
        Y,
        B,
        ch,
        c_ok,
        mean,
        scale,
        t,
        t + 1,
        R,
        S,
        tiles_per_sample,
        sN,
        sC,
        row_stride,
        HAS_B,
        PLANAR,
        BLOCK_R,
    )


@triton.jit
def _bn_backward_fused(
    X, DY, DX, Mean, Spread, W, DW, DB, C, R, S, tiles, tiles_per_sample,
    sN, sC, row_stride, eps,
    FROM_VAR: tl.constexpr, HAS_W: tl.constexpr, TRAINING: tl.constexpr,
    PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Backward in one launch, a program per channel block (small inputs)."""
    ch, c_ok = _channel_block(C, BLOCK_C)
    mean, rstd, scale = _channel_stats(Mean, Spread, W, ch, c_ok, eps, FROM_VAR, HAS_W)
    sum_dy, sum_dy_xhat = _grad_sums(
        X,
        DY,
        ch,
        c_ok,
        mean,
        rstd,
        0,
        tiles,
        R,
        S,
        tiles_per_sample,
        sN,
        sC,
        row_stride,
        PLANAR,
        BLOCK_C,
        BLOCK_R,
    )
    tl.store(DB + ch, sum_dy, mask=c_ok)
    tl.store(DW + ch, sum_dy_xhat, mask=c_ok)
    _input_grad(
        X, DY, DX, ch, c_ok, mean, rstd, scale, sum_dy, sum_dy_xhat, 0, tiles,
        R, S, tiles_per_sample, sN, sC, row_stride, TRAINING, PLANAR, BLOCK_R,
    )  # fmt: skip


@triton.jit
def _bn_partial_grads(
    X, DY, Mean, Spread, PSum, C, R, S, tiles, tiles_per_split, tiles_per_sample,
    sN, sC, row_stride, eps,
    FROM_VAR: tl.constexpr, PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(0)
    ch, c_ok = _channel_block(C, BLOCK_C)
    mean, rstd, _unit = _channel_stats(Mean, Spread, Mean, ch, c_ok, eps, FROM_VAR, False)
    first, last = _split_tiles(split, tiles_per_split, tiles)
    sum_dy, sum_dy_xhat = _grad_sums(
        X,
        DY,
        ch,
        c_ok,
        mean,
        rstd,
        first,
        last,
        R,
        S,
        tiles_per_sample,
        sN,
        sC,
        row_stride,
        PLANAR,
        BLOCK_C,
        BLOCK_R,
    )
    tl.store(PSum + split * C + ch, sum_dy, mask=c_ok)
    tl.store(PSum + (tl.num_programs(0) + split) * C + ch, sum_dy_xhat, mask=c_ok)


@triton.jit
def _bn_dx(
    X, DY, DX, Mean, Spread, W, Sums, C, R, S, tiles_per_sample, sN, sC, row_stride, eps,
    FROM_VAR: tl.constexpr, HAS_W: tl.constexpr, TRAINING: tl.constexpr,
    PLANAR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The elementwise dx pass, a tile per program; Sums holds (sum dy, sum dy * xhat)."""
    ch, c_ok = _channel_block(C, BLOCK_C)
    mean, rstd, scale = _channel_stats(Mean, Spread, W, ch, c_ok, eps, FROM_VAR, HAS_W)
    sum_dy = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_C], dtype=tl.float32)
    if TRAINING:
        sum_dy = tl.load(Sums + ch, mask=c_ok, other=0.0)
        sum_dy_xhat = tl.load(Sums + C + ch, mask=c_ok, other=0.0)
    t = tl.program_id(0)
    _input_grad(
        X, DY, DX, ch, c_ok, mean, rstd, scale, sum_dy, sum_dy_xhat, t, t + 1,
        R, S, tiles_per_sample, sN, sC, row_stride, TRAINING, PLANAR, BLOCK_R,
    )  # fmt: skip


class _Tiling:
    """How a (N, C, S) tensor with strides (sN, sC, sS) is cut into tiles (see the module doc).

    Small inputs (at most FUSED_MAX elements, or one tile per channel block) run
    each direction in one launch, a program per channel block; larger ones
    split every channel's tiles over about ``max_programs`` programs.
    """

    FUSED_MAX = 2**18

    def __init__(self, x: torch.Tensor, sizes, strides) -> None:
        n, c, s = sizes
        s_n, s_c, s_s = strides
        self.c = c
        self.shape = (n * s, s)  # R, S
        planar = s_c != 1
        if planar:  # NCHW planes: tiles along S within a sample
            block_r = min(1024, pow2(s))
            block_c = max(1, min(pow2(c), 2048 // block_r))
            tiles_per_sample = cdiv(s, block_r)
            self.tiles = n * tiles_per_sample
        else:  # channels innermost: rows of the flattened batch and spatial axes
            block_c = min(128, pow2(c))
            block_r = max(1, 2048 // block_c)
            tiles_per_sample = 1
            self.tiles = cdiv(n * s, block_r)
        # tiles_per_sample, sN, sC and the row stride: what _tile needs to address a tile
        self.address = (tiles_per_sample, s_n, s_c, s_s if s > 1 else s_n)
        self.channel_blocks = cdiv(c, block_c)
        want = max(1, max_programs(x) // self.channel_blocks)
        self.tiles_per_split = cdiv(self.tiles, want)
        self.splits = cdiv(self.tiles, self.tiles_per_split)
        self.fused = self.splits == 1 or x.numel() <= self.FUSED_MAX
        self._meta = {
            "PLANAR": planar,
            "BLOCK_C": block_c,
            "BLOCK_R": block_r,
            "num_warps": num_warps(block_c * block_r),
        }

    def meta(self) -> dict:
        """Launch keywords shared by every kernel."""
        return dict(self._meta)


def _forward(x, mean, spread, weight, bias, eps, training, running=None, momentum=0.0):
    """y, in training after the statistics kernels have filled mean and rstd (``spread``)
    and updated ``running``; in eval from the running mean and var (``spread``)."""
    x, sizes, strides = channel_view(x)
    t = _Tiling(x, sizes, strides)
    y = torch.empty_like(x)
    w = x if weight is None else weight
    b = x if bias is None else bias
    flags = {"HAS_W": weight is not None, "HAS_B": bias is not None, **t.meta()}
    if training:
        update = running is not None
        running = running if update else (mean, mean)
        if t.fused:
            _bn_forward_fused[(1, t.channel_blocks)](
                x, y, mean, spread, *running, w, b, t.c, *t.shape, t.tiles, *t.address,
                eps, momentum, UPDATE=update, **flags,
            )  # fmt: skip
        else:
            partial = torch.empty((3, t.splits, t.c), device=x.device, dtype=torch.float32)
            _bn_partial_moments[(t.splits, t.channel_blocks)](
                x, *partial, t.c, *t.shape, t.tiles, t.tiles_per_split, *t.address,
                **t.meta(),
            )  # fmt: skip
            _bn_finalize[(cdiv(t.c, 128),)](
                *partial, mean, spread, *running, t.c, t.splits, eps, momentum,
                UPDATE=update, BLOCK_C=128,
            )  # fmt: skip
    if not (training and t.fused):
        _bn_apply[(t.tiles, t.channel_blocks)](
            x, y, mean, spread, w, b, t.c, *t.shape, *t.address, eps,
            FROM_VAR=not training, **flags,
        )  # fmt: skip
    return y


def _fake_y(x):
    return torch.empty_like(channel_view(x)[0])


@torch.library.custom_op("normlab::batch_norm_train_fwd", mutates_args=())
def batch_norm_train_fwd(
    x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    weight: Tensor | None, bias: Tensor | None, momentum: float, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """BatchNorm on batch statistics: y (x's layout if dense), each channel's mean and rstd,
    and the updated running mean and var (empty without running statistics), which
    :func:`batch_norm` copies back: an op with autograd cannot mutate its inputs."""
    mean = torch.empty(x.shape[1], device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    running = None
    if running_mean is not None:
        running = (running_mean.clone(), running_var.clone())  # the kernels update these
    y = _forward(x, mean, rstd, weight, bias, eps, True, running, momentum)
    return y, mean, rstd, *(running or (placeholder(x), placeholder(x)))


@batch_norm_train_fwd.register_fake
def _(x, running_mean, running_var, weight, bias, momentum, eps):
    stats = x.new_empty(x.shape[1], dtype=torch.float32)
    if running_mean is None:
        running = (placeholder(x), placeholder(x))
    else:
        running = (torch.empty_like(running_mean), torch.empty_like(running_var))
    return _fake_y(x), stats, torch.empty_like(stats), *running


@torch.library.custom_op("normlab::batch_norm_eval_fwd", mutates_args=())
def batch_norm_eval_fwd(
    x: Tensor, running_mean: Tensor, running_var: Tensor,
    weight: Tensor | None, bias: Tensor | None, eps: float,
) -> Tensor:  # fmt: skip
    """BatchNorm on the running statistics: y (x's layout if dense)."""
    return _forward(x, running_mean, running_var, weight, bias, eps, False)


@batch_norm_eval_fwd.register_fake
def _(x, running_mean, running_var, weight, bias, eps):
    return _fake_y(x)


@torch.library.custom_op("normlab::batch_norm_bwd", mutates_args=())
def batch_norm_bwd(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, spread: Tensor,
    training: bool, eps: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """dx (in the forward output's layout) and float32 sums of shape (2, C): row 0 is
    dbias, row 1 dweight. ``spread`` is rstd in training, running_var in eval."""
    x, sizes, strides = channel_view(x)
    t = _Tiling(x, sizes, strides)
    dy = dense_like(dy, x)
    dx = torch.empty_like(x)
    w = x if weight is None else weight
    flags = {"FROM_VAR": not training, "HAS_W": weight is not None, **t.meta()}
    if t.fused:
        sums = torch.empty((2, t.c), device=x.device, dtype=torch.float32)
        _bn_backward_fused[(1, t.channel_blocks)](
            x, dy, dx, mean, spread, w, sums[1], sums[0], t.c, *t.shape, t.tiles,
            *t.address, eps, TRAINING=training, **flags,
        )  # fmt: skip
    else:
        partial = torch.empty((2, t.splits, t.c), device=x.device, dtype=torch.float32)
        _bn_partial_grads[(t.splits, t.channel_blocks)](
            x, dy, mean, spread, partial, t.c, *t.shape, t.tiles, t.tiles_per_split,
            *t.address, eps, FROM_VAR=not training, **t.meta(),
        )  # fmt: skip
        sums = partial.sum(1)  # (sum dy, sum dy * xhat) per channel
        _bn_dx[(t.tiles, t.channel_blocks)](
            x, dy, dx, mean, spread, w, sums, t.c, *t.shape, *t.address, eps,
            TRAINING=training, **flags,
        )  # fmt: skip
    return dx, sums


@batch_norm_bwd.register_fake
def _(dy, x, weight, mean, spread, training, eps):
    return _fake_y(x), x.new_empty((2, x.shape[1]), dtype=torch.float32)


def _setup_train(ctx, inputs, output):
    x, _running_mean, _running_var, weight, bias, _momentum, eps = inputs
    only_first_differentiable(ctx, output)
    ctx.save_for_backward(x, weight, *output[1:3])
    ctx.training, ctx.eps = True, eps
    ctx.bias_dtype = None if bias is None else bias.dtype


def _setup_eval(ctx, inputs, output):
    x, running_mean, running_var, weight, bias, eps = inputs
    ctx.save_for_backward(x, weight, running_mean, running_var)
    ctx.training, ctx.eps = False, eps
    ctx.bias_dtype = None if bias is None else bias.dtype


def _grads(ctx, dy):
    x, weight, mean, spread = ctx.saved_tensors
    dx, sums = run(batch_norm_bwd, dy, x, weight, mean, spread, ctx.training, ctx.eps)
    dweight = sums[1].to(weight.dtype) if weight is not None else None
    dbias = sums[0].to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return dx, dweight, dbias


def _backward_train(ctx, dy, *_stats):
    dx, dweight, dbias = _grads(ctx, dy)
    return dx, None, None, dweight, dbias, None, None


def _backward_eval(ctx, dy):
    dx, dweight, dbias = _grads(ctx, dy)
    return dx, None, None, dweight, dbias, None


register_autograd(batch_norm_train_fwd, _backward_train, _setup_train)
register_autograd(batch_norm_eval_fwd, _backward_eval, _setup_eval)
refuse_double_backward(batch_norm_bwd)


def batch_norm(
    x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    """``torch.nn.functional.batch_norm`` on the Triton kernels."""
    if not training:
        return run(batch_norm_eval_fwd, x, running_mean, running_var, weight, bias, float(eps))
    y, _mean, _rstd, new_mean, new_var = run(
        batch_norm_train_fwd,
        x,
        running_mean,
        running_var,
        weight,
        bias,
        float(momentum),
        float(eps),
    )
    if running_mean is not None:
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)
    return y
