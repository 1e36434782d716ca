"""Fast compositions of torch kernels, with hand-derived backward passes, for
the techniques torch has no kernel for (the ``"native"`` backend's versions).

The reference backend writes each paper's formula literally and lets autograd
differentiate it: many passes over the tensor and a full-size temporary per
op. Here each technique is rewritten to touch the tensor as few times as the
math allows; the results equal the reference's (tests hold them to it in
float64).

Most techniques here are, per sample n and channel c, an affine map of x whose
coefficients depend only on the moments of x over the spatial axes:

    y[n, c, :] = a[n, c] * x[n, c, :] + b[n, c],   (a, b) = f(mean[n, c], var[n, c], params)

Batch, layer, group, switchable and filter-response statistics are all
combinations of the per-(n, c) moments (by the law of total variance), so
:class:`_Moments` computes those moments once (two passes) and
:class:`_ScaleShift` writes y in one; the small function f between them is
left to autograd. Each autograd.Function has ``setup_context`` and a backward
of plain tensor ops, so ``torch.compile`` captures it whole and ``torch.func``
transforms (vmap, grad, jacrev) apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from normlab.functional import reference
from normlab.functional.reference.common import (
    accumulation_dtype,
    as_like,
    unbiased,
    update_running,
)
from normlab.functional.reference.layer import partial_count

Coefficients = Callable[..., tuple[Tensor, Tensor]]


def _moments_nc(x3: Tensor, centered: bool) -> tuple[Tensor, ...]:
    """Per-(n, c) moments of an (N, C, M) tensor over M: (mean, biased variance),
    two-pass, if ``centered``; else (mean of squares,)."""
    m = x3.shape[2]
    if not centered:
        return (torch.linalg.vector_norm(x3, dim=2).square() / m,)
    mean = x3.mean(2)
    return mean, torch.linalg.vector_norm(x3 - mean.unsqueeze(2), dim=2).square() / m


class _Moments(torch.autograd.Function):
    """Per-(n, c) moments of an (N, C, M) tensor over M, stacked (k, N, C): mean
    and biased variance (two-pass) if ``centered``, else the mean of squares.

    Backward: d mean/dx = 1/M, d var/dx = 2 (x - mean)/M, d mean(x^2)/dx = 2x/M.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x3: Tensor, centered: bool) -> Tensor:
        return torch.stack(_moments_nc(x3, centered))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x3, ctx.centered = inputs
        ctx.save_for_backward(x3, output)

    @staticmethod
    def backward(ctx, dmoments):
        x3, moments = ctx.saved_tensors
        m = x3.shape[2]
        if ctx.centered:
            slope = (2.0 / m) * dmoments[1]
            offset = dmoments[0] / m - slope * moments[0]
            return torch.addcmul(offset.unsqueeze(2), x3, slope.unsqueeze(2)), None
        return x3 * ((2.0 / m) * dmoments[0]).unsqueeze(2), None


class _ScaleShift(torch.autograd.Function):
    """y = a[n, c] * x + b[n, c] on (N, C, M), then max(y, tau[c]) where ``tau``
    is given (the TLU). One pass forward; backward two reductions of dy and one
    write of dx."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x3: Tensor, a: Tensor, b: Tensor, tau: Tensor | None) -> tuple[Tensor, ...]:
        if tau is None:
            return (torch.addcmul(b.unsqueeze(2), x3, a.unsqueeze(2)),)
        # max(y, tau) = relu(y - tau) + tau: relu's output is the TLU's mask for the backward
        t = tau.view(1, -1, 1).to(x3.dtype)
        above = torch.addcmul(b.unsqueeze(2) - t, x3, a.unsqueeze(2)).relu_()
        return above + t, above

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x3, a, _, tau = inputs
        above = output[1] if tau is not None else None
        if above is not None:
            ctx.mark_non_differentiable(above)
        ctx.save_for_backward(x3, a, tau, above)

    @staticmethod
    def backward(ctx, dy, *_):
        x3, a, tau, above = ctx.saved_tensors
        dtau = None
        if tau is not None:  # the gradient goes to tau where max(y, tau) took tau
            total = dy.sum(2)
            dy = torch.ops.aten.threshold_backward(dy, above, 0.0)  # one pass, no mask
            db = dy.sum(2)
            dtau = (total - db).sum(0).to(tau.dtype)
        else:
            db = dy.sum(2)
        da = torch.linalg.vecdot(dy, x3, dim=2)
        return dy * a.unsqueeze(2), da, db, dtau


def _as_ncm(input: Tensor) -> Tensor:
    """(N, C, *) as (N, C, M), M the spatial size (1 for (N, C); explicit, so empty works)."""
    return input.reshape(input.shape[0], input.shape[1], math.prod(input.shape[2:]))


def _per_channel_affine(
    input: Tensor,
    coefficients: Coefficients,
    params: Sequence[Tensor | None],
    centered: bool = True,
    tau: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """y = a * x + b (then the TLU, with ``tau``) on an (N, C, *) input, with
    (a, b) = coefficients(*moments, *params) differentiated by autograd (they
    are (N, C), small). Returns y in the input's dtype and the moments, stacked
    (k, N, C) and detached, for running statistics."""
    acc = accumulation_dtype(input.dtype)
    x3 = _as_ncm(input).to(acc)
    moments = _Moments.apply(x3, centered)
    a, b = coefficients(*moments.unbind(0), *params)
    y = _ScaleShift.apply(x3, a.expand(x3.shape[:2]), b.expand(x3.shape[:2]), tau)[0]
    return y.reshape(input.shape).to(input.dtype), moments.detach()


def _combine(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Moments of a union of equal-size sets from each set's moments (law of total
    variance): E = mean of means, Var = mean of variances + variance of means."""
    total_mean = mean.mean(dim, keepdim=True)
    total_var = var.mean(dim, keepdim=True) + (mean - total_mean).square().mean(dim, keepdim=True)
    return total_mean, total_var


def _param(t: Tensor, like: Tensor) -> Tensor:
    """A per-channel parameter (C,) as a (1, C) row in ``like``'s dtype."""
    return t.to(like.dtype).view(1, -1)


def _affine_coefficients(
    mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps
) -> tuple[Tensor, Tensor]:
    """(a, b) of y = weight * (x - mean) / sqrt(var + eps) + bias."""
    a = torch.rsqrt(var + eps)
    if weight is not None:
        a = a * _param(weight, a)
    b = -mean * a
    if bias is not None:
        b = b + _param(bias, b)
    return a, b


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    r_max: float = 3.0,
    d_max: float = 5.0,
) -> Tensor:
    """Batch Renormalization; same function as ``reference.batch_renorm``."""
    if not training or input.numel() == 0:
        return reference.batch_renorm(
            input, running_mean, running_var, weight, bias, training, momentum, eps, r_max, d_max
        )
    mu_run = running_mean.detach().clone()
    sigma_run = torch.sqrt(running_var.detach() + eps)

    def coefficients(mean, var, weight, bias):
        mu_b, var_b = _combine(mean, var, 0)
        sigma_b = torch.sqrt(var_b + eps)
        with torch.no_grad():
            sigma = sigma_run.to(mean.dtype).view(1, -1)
            r = (sigma_b / sigma).clamp(1.0 / as_like(r_max, sigma), as_like(r_max, sigma))
            d = ((mu_b - mu_run.to(mean.dtype).view(1, -1)) / sigma).clamp(
                -as_like(d_max, sigma), as_like(d_max, sigma)
            )
        # Detached outside no_grad too: else torch.compile's backward recomputes them
        # from the running statistics, which the update below has overwritten by then.
        r, d = r.detach(), d.detach()
        a = (r / sigma_b).expand_as(mean)
        b = (d - mu_b * r / sigma_b).expand_as(mean)
        if weight is not None:
            a, b = a * _param(weight, a), b * _param(weight, b)
        if bias is not None:
            b = b + _param(bias, b)
        return a, b

    y, (mean, var) = _per_channel_affine(input, coefficients, (weight, bias))
    _update_batch_running(running_mean, running_var, mean, var, input, momentum)
    return y


def _update_batch_running(running_mean, running_var, mean, var, input, momentum) -> None:
    """Running statistics from per-(n, c) moments, as BatchNorm updates them."""
    mu_b, var_b = _combine(mean, var, 0)
    count = input.numel() // input.shape[1]
    update_running(running_mean, running_var, mu_b, unbiased(var_b, count), momentum)


def ghost_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    virtual_batch_size: int = 32,
) -> Tensor:
    """Ghost Batch Normalization; same function as ``reference.ghost_batch_norm``."""
    if not training or input.numel() == 0:
        return reference.ghost_batch_norm(
            input,
            running_mean,
            running_var,
            weight,
            bias,
            training,
            momentum,
            eps,
            virtual_batch_size,
        )

    def virtual_moments(mean: Tensor, var: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [
            _combine(m, v, 0)
            for m, v in zip(
                mean.split(virtual_batch_size), var.split(virtual_batch_size), strict=True
            )
        ]

    def coefficients(mean, var, weight, bias):
        pairs = virtual_moments(mean, var)
        sizes = [m.shape[0] for m in mean.split(virtual_batch_size)]
        mu = torch.cat([p[0].expand(s, -1) for p, s in zip(pairs, sizes, strict=True)])
        v = torch.cat([p[1].expand(s, -1) for p, s in zip(pairs, sizes, strict=True)])
        return _affine_coefficients(mu, v, weight, bias, eps)

    y, (mean, var) = _per_channel_affine(input, coefficients, (weight, bias))
    if running_mean is not None or running_var is not None:
        m = input.numel() // (input.shape[0] * input.shape[1])
        pairs = virtual_moments(mean, var)
        sizes = [c.shape[0] for c in mean.split(virtual_batch_size)]
        means = torch.stack([p[0] for p in pairs]).mean(0)
        variances = torch.stack(
            [unbiased(p[1], s * m) for p, s in zip(pairs, sizes, strict=True)]
        ).mean(0)
        update_running(running_mean, running_var, means, variances, momentum)
    return y


def switchable_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_weight: Tensor,
    var_weight: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Switchable Normalization; same function as ``reference.switchable_norm``."""
    if input.numel() == 0:
        return reference.switchable_norm(
            input,
            running_mean,
            running_var,
            weight,
            bias,
            mean_weight,
            var_weight,
            training,
            momentum,
            eps,
        )
    frozen_bn = None
    if not training:
        assert running_mean is not None and running_var is not None
        frozen_bn = (running_mean.detach().clone(), running_var.detach().clone())

    def coefficients(mean, var, weight, bias, mean_weight, var_weight):
        mean_ln, var_ln = _combine(mean, var, 1)
        if frozen_bn is None:
            mean_bn, var_bn = _combine(mean, var, 0)
        else:
            mean_bn, var_bn = (s.to(mean.dtype).view(1, -1) for s in frozen_bn)
        wm = torch.softmax(mean_weight.to(mean.dtype), 0)
        wv = torch.softmax(var_weight.to(mean.dtype), 0)
        mu = wm[0] * mean + wm[1] * mean_ln + wm[2] * mean_bn
        sigma2 = wv[0] * var + wv[1] * var_ln + wv[2] * var_bn
        return _affine_coefficients(mu, sigma2, weight, bias, eps)

    params = (weight, bias, mean_weight, var_weight)
    y, (mean, var) = _per_channel_affine(input, coefficients, params)
    if training:
        _update_batch_running(running_mean, running_var, mean, var, input, momentum)
    return y


def filter_response_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    tau: Tensor | None = None,
    eps: float | Tensor = 1e-6,
) -> Tensor:
    """Filter Response Normalization (+TLU); same function as the reference's."""
    learned = eps if isinstance(eps, Tensor) else None
    fixed = 0.0 if learned is not None else eps

    def coefficients(nu2, weight, bias, learned):
        a = torch.rsqrt(nu2 + (learned.to(nu2.dtype) if learned is not None else fixed))
        if weight is not None:
            a = a * _param(weight, a)
        b = _param(bias, a).expand_as(a) if bias is not None else torch.zeros_like(a)
        return a, b

    y, _ = _per_channel_affine(input, coefficients, (weight, bias, learned), False, tau)
    return y


class _EvoNormS0(torch.autograd.Function):
    """y = weight * x * sigmoid(v x) / sqrt(Var_group(x) + eps) + bias on (N, C, M)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x3, num_groups, weight, bias, v, eps):
        n, c = x3.shape[:2]
        xg = x3.reshape(n, num_groups, -1)
        mean_g = xg.mean(2)
        var_g = torch.linalg.vector_norm(xg - mean_g.unsqueeze(2), dim=2).square() / xg.shape[2]
        std = torch.sqrt(var_g + eps)  # (N, G)
        gate = torch.sigmoid(x3 * v.view(1, -1, 1))
        h = x3 * gate
        scale = weight.view(1, -1) / std.repeat_interleave(c // num_groups, dim=1)  # (N, C)
        y = torch.addcmul(bias.view(1, -1, 1), h, scale.unsqueeze(2))
        return y, gate, h, mean_g, std

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x3, ctx.num_groups, weight, _, v, _ = inputs
        _, gate, h, mean_g, std = output
        ctx.mark_non_differentiable(gate, h, mean_g, std)
        ctx.save_for_backward(x3, gate, h, mean_g, std, weight, v)

    @staticmethod
    def backward(ctx, dy, *_):
        x3, gate, h, mean_g, std, weight, v = ctx.saved_tensors
        n, c, m = x3.shape
        groups = ctx.num_groups
        per_group = c // groups
        std_c = std.repeat_interleave(per_group, dim=1)  # (N, C)
        dbias = dy.sum((0, 2))
        t = torch.linalg.vecdot(dy, h, dim=2)  # (N, C): sum over M of dy * h
        dweight = (t / std_c).sum(0)
        # d std[n, g] = -sum_{c in g} weight_c t[n, c] / std^2
        dstd = -(weight.view(1, -1) * t).view(n, groups, per_group).sum(2) / std.square()
        dh = dy * (weight.view(1, -1) / std_c).unsqueeze(2)
        # h = x * gate, gate = sigmoid(v x): dh/dx = gate + v x gate (1 - gate)
        # and dh/dv = x^2 gate (1 - gate); kx = dh * x * gate (1 - gate)
        kx = torch.addcmul(gate, gate, gate, value=-1.0) * dh * x3
        dv = torch.linalg.vecdot(kx, x3, dim=2).sum(0)
        dx = torch.addcmul(dh * gate, kx, v.view(1, -1, 1))
        # std = sqrt(var + eps): d var / d x = 2 (x - mean) / count, d std / d var = 1 / (2 std)
        coef = (dstd / (std * (per_group * m))).unsqueeze(2)  # (N, G, 1)
        dxg = torch.addcmul(
            dx.reshape(n, groups, -1) - coef * mean_g.unsqueeze(2), x3.reshape(n, groups, -1), coef
        )
        return dxg.reshape(n, c, m), None, dweight, dbias, dv, None


def evonorm_s0(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """EvoNorm-S0; same function as ``reference.evonorm_s0``."""
    if input.numel() == 0 or weight is None or bias is None:
        return reference.evonorm_s0(input, num_groups, weight, bias, v, eps)
    acc = accumulation_dtype(input.dtype)
    x3 = _as_ncm(input).to(acc)
    params = (weight.to(acc), bias.to(acc), v.to(acc))
    y = _EvoNormS0.apply(x3, num_groups, *params, eps)[0]
    return y.reshape(input.shape).to(input.dtype)


class _EvoNormB0(torch.autograd.Function):
    """y = weight * x / max(sqrt(Var_B + eps), v x + sqrt(Var_I + eps)) + bias on (N, C, M).

    Also returns Var_B (the batch's, with ``batch_stats``; else a copy of the
    given one), without gradient, for the running statistics.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x3, var_b, weight, bias, v, eps, batch_stats):
        m = x3.shape[2]
        mean_i = x3.mean(2)
        var_i = torch.linalg.vector_norm(x3 - mean_i.unsqueeze(2), dim=2).square() / m
        s = torch.sqrt(var_i + eps)  # (N, C)
        mean_b = mean_i.mean(0)
        if batch_stats:  # law of total variance over the samples
            var_b = var_i.mean(0) + (mean_i - mean_b).square().mean(0)
        else:
            var_b = var_b.clone()  # an output is never an input
        a = torch.sqrt(var_b + eps)  # (C,)
        denominator = torch.maximum(
            torch.addcmul(s.unsqueeze(2), x3, v.view(1, -1, 1)), a.view(1, -1, 1)
        )
        ratio = x3 / denominator
        y = torch.addcmul(bias.view(1, -1, 1), ratio, weight.view(1, -1, 1))
        return y, var_b, denominator, ratio, mean_i, s, mean_b, a

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x3, _, weight, _, v, _, ctx.batch_stats = inputs
        _, var_b, *saved = output
        ctx.mark_non_differentiable(var_b, *saved)
        ctx.save_for_backward(x3, *saved, weight, v)

    @staticmethod
    def backward(ctx, dy, *_):
        x3, denominator, ratio, mean_i, s, mean_b, a, weight, v = ctx.saved_tensors
        n, m = x3.shape[0], x3.shape[2]
        dbias = dy.sum((0, 2))
        dweight = torch.linalg.vecdot(dy, ratio, dim=2).sum(0)
        u = dy * weight.view(1, -1, 1) / denominator  # dL/dx through the numerator
        # dL/dD = -weight dy x / D^2 = -u * ratio; below, neg_* hold its negative.
        neg_q = ratio * u
        # D = max(A, B): the gradient goes to B = v x + s where B > A, else to A.
        neg_d_b = torch.where(denominator > a.view(1, -1, 1), neg_q, 0.0)
        d_b_nc = -neg_d_b.sum(2)
        d_a = -neg_q.sum((0, 2)) - d_b_nc.sum(0)  # (C,)
        dv = -torch.linalg.vecdot(neg_d_b, x3, dim=2).sum(0)
        dx = torch.addcmul(u, neg_d_b, v.view(1, -1, 1), value=-1.0)
        # s = sqrt(Var_I + eps): ds/dx = (x - mean_i) / (m s)
        coef = d_b_nc / (m * s)
        offset = -coef * mean_i
        if ctx.batch_stats:  # A = sqrt(Var_B + eps): dA/dx = (x - mean_b) / (n m A)
            coef_b = d_a / (n * m * a)
            coef = coef + coef_b
            offset = offset - coef_b * mean_b
        dx = torch.addcmul(dx + offset.unsqueeze(2), x3, coef.unsqueeze(2))
        return dx, None, dweight, dbias, dv, None, None


def evonorm_b0(
    input: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """EvoNorm-B0; same function as ``reference.evonorm_b0``."""
    if input.numel() == 0 or weight is None or bias is None:
        return reference.evonorm_b0(input, running_var, weight, bias, v, training, momentum, eps)
    if not training and running_var is None:
        raise ValueError("evonorm_b0: running_var is required in eval")
    acc = accumulation_dtype(input.dtype)
    x3 = _as_ncm(input).to(acc)
    var_b = None if training else running_var.detach().to(acc)
    params = (weight.to(acc), bias.to(acc), v.to(acc))
    y, batch_var, *_ = _EvoNormB0.apply(x3, var_b, *params, eps, training)
    if training and running_var is not None:
        count = input.numel() // input.shape[1]
        update_running(None, running_var, None, unbiased(batch_var, count), momentum)
    return y.reshape(input.shape).to(input.dtype)


class _AxisScale(torch.autograd.Function):
    """y = w * x * inv(sum of squares of x along ``dim``), w per position of ``dim`` or scalar.

    ``rms=True``: inv = 1 / sqrt(ss / k + eps) (RMSNorm over k values);
    else inv = 1 / max(sqrt(ss), eps) (ScaleNorm).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, dim, eps, rms):
        k = x.shape[dim]
        norm = _sum_squares(x, dim).sqrt()
        inv = torch.rsqrt(norm.square() / k + eps) if rms else 1.0 / norm.clamp_min(eps)
        return x * inv * w, inv, norm

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, w, ctx.dim, ctx.eps, ctx.rms = inputs
        _, inv, norm = output
        ctx.mark_non_differentiable(inv, norm)
        ctx.save_for_backward(x, w, inv, norm)

    @staticmethod
    def backward(ctx, dy, *_):
        x, w, inv, norm = ctx.saved_tensors
        dim = ctx.dim
        k = x.shape[dim]
        gw = dy * w
        dot = torch.linalg.vecdot(gw, x, dim=dim).unsqueeze(dim)  # sum along dim of dy w x
        # d inv / d ss, with ss = norm^2
        if ctx.rms:
            dinv = -0.5 * inv.pow(3) / k
        else:
            dinv = torch.where(norm > ctx.eps, -0.5 * inv.pow(3), 0.0)
        dx = torch.addcmul(gw * inv, x, 2.0 * dinv * dot)
        dwx = dy * x * inv
        dw = dwx.sum() if w.dim() == 0 else _sum_to(dwx, w.shape)
        return dx, dw.to(w.dtype), None, None, None


def _sum_squares(x: Tensor, dim: int) -> Tensor:
    """sum(x^2) along ``dim`` (kept). torch's vector_norm is fast along the last
    axis and slow along others, where squaring then summing is faster."""
    if dim in (-1, x.dim() - 1):
        return torch.linalg.vector_norm(x, dim=dim, keepdim=True).square_()
    return x.square().sum(dim, keepdim=True)


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``t`` down to a broadcastable ``shape`` (trailing-aligned)."""
    lead = t.dim() - len(shape)
    dims = [*range(lead), *(i + lead for i, s in enumerate(shape) if s == 1)]
    return t.sum(dims, keepdim=True).reshape(shape) if dims else t


def scale_norm(input: Tensor, scale: Tensor, eps: float = 1e-5, dim: int = -1) -> Tensor:
    """ScaleNorm; same function as ``reference.scale_norm``."""
    acc = accumulation_dtype(input.dtype)
    y = _AxisScale.apply(input.to(acc), scale.to(acc), dim, eps, False)[0]
    return y.to(input.dtype)


def rms_norm_2d(input: Tensor, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """RMS normalization over the channel axis; same function as ``reference.rms_norm_2d``."""
    acc = accumulation_dtype(input.dtype)
    if eps is None:
        eps = torch.finfo(acc).eps
    x = input.to(acc)
    w = (
        torch.ones((), dtype=acc)
        if weight is None
        else weight.to(acc).view(-1, *([1] * (x.dim() - 2)))
    )
    return _AxisScale.apply(x, w, 1, eps, True)[0].to(input.dtype)


def dynamic_erf(
    input: Tensor,
    alpha: Tensor,
    shift: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    channels_last: bool = True,
) -> Tensor:
    """Derf; same function as ``reference.dynamic_erf``, its two affine steps
    as fused multiply-adds (elementwise: autograd's backward of erf is exact)."""
    acc = accumulation_dtype(input.dtype)
    x = input.to(acc)
    a = alpha.to(acc)
    z = x * a if shift is None else torch.addcmul(shift.to(acc), x, a)
    y = torch.erf(z)
    shape = (x.shape[-1],) if channels_last else (1, x.shape[1], *([1] * (x.dim() - 2)))
    if weight is not None and bias is not None:
        y = torch.addcmul(bias.reshape(shape).to(acc), y, weight.reshape(shape).to(acc))
    elif weight is not None:
        y = y * weight.reshape(shape).to(acc)
    elif bias is not None:
        y = y + bias.reshape(shape).to(acc)
    return y.to(input.dtype)


def lm_rms_norm(
    input: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
    unit_offset: bool = False,
    cast: str = "llama",
    partial: float | None = None,
    channels_last: bool = True,
) -> Tensor:
    """RMSNorm as language models run it; same function as ``reference.lm_rms_norm``,
    in Hugging Face transformers' order of operations (x * rsqrt(mean(x²) + eps),
    then the cast and the scale), so that half-precision outputs match theirs bit
    for bit. Elementwise and a mean: autograd's backward is exact."""
    x = input if channels_last else input.movedim(1, -1)
    h = x.to(accumulation_dtype(x.dtype))
    k = partial_count(h.shape[-1], partial)
    part = h if k == h.shape[-1] else h[..., :k]
    h = h * torch.rsqrt(part.pow(2).mean(-1, keepdim=True) + eps)
    if cast == "gemma":
        if weight is not None:
            w = weight.to(h.dtype)
            h = h * (1.0 + w if unit_offset else w)
        y = h.to(x.dtype)
    else:
        y = h.to(x.dtype)
        if weight is not None:
            y = ((1.0 + weight if unit_offset else weight) * y).to(x.dtype)
    return y if channels_last else y.movedim(-1, 1)
