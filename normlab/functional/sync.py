"""Batch normalization with statistics over every process of a group.

Each rank computes its per-channel count, mean and sum of squared deviations
(M2); all ranks gather them and combine them exactly with the parallel
algorithm of Chan, Golub & LeVeque (1979):

    n = n_a + n_b,   delta = mean_b - mean_a,
    mean = mean_a + delta * n_b / n,   M2 = M2_a + M2_b + delta^2 * n_a * n_b / n

so that every rank normalizes with the statistics of the concatenated global
batch. The backward pass all-reduces the two per-channel sums it needs,
sum(dy) and sum(dy * x_hat), and returns the global batch's input gradient
for the local rows; the weight and bias gradients are the local shares (their
sum over ranks, as data-parallel training forms it, is the global gradient).
Works with any torch.distributed backend (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from normlab.functional.reference.common import accumulation_dtype


def _local_moments(x: Tensor) -> Tensor:
    """(3, C): count, mean and M2 per channel of an (N, C, *) tensor."""
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1)
    count = flat.shape[1]
    if count == 0:
        return torch.zeros(3, c, dtype=x.dtype, device=x.device)
    mean = flat.mean(1)
    m2 = (flat - mean.unsqueeze(1)).square().sum(1)
    return torch.stack([torch.full_like(mean, count), mean, m2])


def combine_moments(moments: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Combine (R, 3, C) per-rank (count, mean, M2) into the global ones, rank by rank."""
    count, mean, m2 = moments[0, 0], moments[0, 1], moments[0, 2]
    for n_b, mean_b, m2_b in moments[1:]:
        total = count + n_b
        safe = total.clamp_min(1)
        delta = mean_b - mean
        mean = mean + delta * n_b / safe
        m2 = m2 + m2_b + delta.square() * count * n_b / safe
        count = total
    return count, mean, m2


class SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group, world):
        acc = accumulation_dtype(x.dtype)
        xa = x.to(acc)
        local = _local_moments(xa)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local.contiguous(), group=group)
        count, mean, m2 = combine_moments(torch.stack(gathered))
        n = int(count[0].item()) if count.numel() else 0
        if n <= 1:
            raise ValueError(
                f"SyncBatchNorm: expected more than 1 value per channel across the process "
                f"group when training, got {n}"
            )
        var = m2 / n
        rstd = torch.rsqrt(var + eps)
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            if running_var is not None:
                unbiased = m2 / (n - 1)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = (1, -1, *([1] * (x.dim() - 2)))
        xhat = (xa - mean.view(shape)) * rstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.to(acc).view(shape)
        if bias is not None:
            y = y + bias.to(acc).view(shape)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.meta = (group, n, bias is not None)
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        xhat, rstd, weight = ctx.saved_tensors
        group, n, has_bias = ctx.meta
        shape = (1, -1, *([1] * (xhat.dim() - 2)))
        g = dy.to(xhat.dtype)
        dims = [0, *range(2, xhat.dim())]
        local = (
            torch.stack([g.sum(dims), (g * xhat).sum(dims)])
            if g.numel()
            else torch.zeros(2, xhat.shape[1], dtype=xhat.dtype, device=xhat.device)
        )
        dweight = local[1].clone() if weight is not None else None
        dbias = local[0].clone() if has_bias else None
        dist.all_reduce(local, group=group)  # global sum(dy), sum(dy * x_hat)
        scale = rstd if weight is None else rstd * weight.to(xhat.dtype)
        dx = (g - local[0].view(shape) / n - xhat * (local[1].view(shape) / n)) * scale.view(shape)
        if dweight is not None:
            dweight = dweight.to(weight.dtype)
        if dbias is not None:
            dbias = dbias.to(weight.dtype if weight is not None else dy.dtype)
        return dx.to(dy.dtype), dweight, dbias, None, None, None, None, None, None
