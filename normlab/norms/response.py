"""Normalizations by a local or per-channel response: LRN, FRN (+TLU), EvoNorm-B0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks
from normlab.functional.backend import runs_torch
from normlab.norms._base import reset_affine
from normlab.norms._twin import TorchTwin


class LocalResponseNorm(TorchTwin, nn.LocalResponseNorm):
    r"""Local Response Normalization across channels (Krizhevsky, Sutskever &
    Hinton, 2012, "ImageNet Classification with Deep Convolutional Neural Networks").

    .. math::
        b_c = a_c \left(k + \frac{\alpha}{n} \sum_{c'=\max(0, c-n/2)}^{\min(N-1, c+n/2)}
        a_{c'}^2\right)^{-\beta}

    with ``n = size``: each channel is divided by a power of the energy of its
    ``size`` neighbouring channels (zero-padded at the ends). Input (N, C, *),
    at least 3D. No parameters; same in train and eval.
    A ``torch.nn.LocalResponseNorm`` (subclass; see :mod:`normlab.norms._twin`).
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        if size < 1:
            raise ValueError(f"LocalResponseNorm: size must be a positive integer, got {size}")
        super().__init__(size, alpha, beta, k)

    def _check_input(self, input: Tensor) -> None:
        who = f"LocalResponseNorm({self.size})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 3, "(N, C, *)")

    def forward(self, input: Tensor) -> Tensor:
        # torch's LRN runs integer tensors silently (normlab's path refuses them)
        # and has no CPU kernel for half inputs of 4D and more (the reference has)
        if runs_torch(input) and input.is_floating_point() and NF.native_lrn_covers(input):
            try:
                return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)
            except (RuntimeError, ValueError):
                self._explain(input)
                raise
        return self._forward(input)

    def _forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        covers = NF.native_lrn_covers(input)
        call = (input, self.size, self.alpha, self.beta, self.k)
        return NF.run("local_response_norm", *call, native_covers=covers)


def _per_channel(num_features: int, value: float, factory: dict) -> nn.Parameter:
    return nn.Parameter(torch.full((num_features,), value, **factory))


class FilterResponseNorm2d(nn.Module):
    r"""Filter Response Normalization with the Thresholded Linear Unit (Singh &
    Krishnan, 2019, "Filter Response Normalization Layer: Eliminating Batch
    Dependence in the Training of Deep Neural Networks").

    .. math::
        \nu^2 = \mathrm{E}_{H,W}[x^2], \quad
        y = \gamma \frac{x}{\sqrt{\nu^2 + \epsilon}} + \beta, \quad
        z = \max(y, \tau)

    Per sample and channel, the mean square over the spatial axes; no mean is
    subtracted, nothing depends on the batch, train and eval agree. The TLU
    (``tlu=True``, the paper's pairing; ``tau`` per channel) replaces the
    following ReLU. ``learnable_eps=True`` adds a learned scalar, as the paper
    suggests for 1x1 feature maps: eps_total = eps + |learned_eps| (initialized
    to 1e-4). Input (N, C, *) of any rank from 2; over no spatial axes it
    reduces to x / sqrt(x^2 + eps).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        learnable_eps: bool = False,
        tlu: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.weight = _per_channel(num_features, 1.0, factory)
        self.bias = _per_channel(num_features, 0.0, factory)
        self.tau: nn.Parameter | None = _per_channel(num_features, 0.0, factory) if tlu else None
        self.learned_eps: nn.Parameter | None = (
            nn.Parameter(torch.tensor(1e-4, **factory)) if learnable_eps else None
        )

    def reset_parameters(self) -> None:
        """weight to 1; bias and tau to 0; learned_eps to 1e-4."""
        reset_affine(self)
        if self.tau is not None:
            nn.init.zeros_(self.tau)
        if self.learned_eps is not None:
            nn.init.constant_(self.learned_eps, 1e-4)

    def forward(self, input: Tensor) -> Tensor:
        who = f"FilterResponseNorm2d({self.num_features})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 2, "(N, C, *)")
        checks.check_channels(who, input, self.num_features)
        eps = self.eps if self.learned_eps is None else self.eps + self.learned_eps.abs()
        return NF.run("filter_response_norm", input, self.weight, self.bias, self.tau, eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, learnable_eps={self.learned_eps is not None}, "
            f"tlu={self.tau is not None}"
        )


class EvoNorm2dB0(nn.Module):
    r"""EvoNorm-B0 (Liu, Brock, Simonyan & Le, 2020, "Evolving Normalization-Activation
    Layers").

    .. math::
        y = \frac{x}{\max\!\left(\sqrt{\mathrm{Var}_{N,H,W}[x] + \epsilon},\;
        v x + \sqrt{\mathrm{Var}_{H,W}[x] + \epsilon}\right)} \cdot \gamma + \beta

    A normalization and activation in one: the batch standard deviation (per
    channel, as BatchNorm) against an instance standard deviation plus a
    learned linear term (v per channel). Batch-dependent: in eval the batch
    variance is replaced by ``running_var``, updated in training with BatchNorm's
    momentum rule and the unbiased batch variance. Input (N, C, *) of any rank
    from 2.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = _per_channel(num_features, 1.0, factory)
        self.bias = _per_channel(num_features, 0.0, factory)
        self.v = _per_channel(num_features, 1.0, factory)
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def reset_parameters(self) -> None:
        """weight and v to 1, bias to 0, running_var to 1."""
        reset_affine(self)
        nn.init.ones_(self.v)
        self.running_var.fill_(1)

    def forward(self, input: Tensor) -> Tensor:
        who = f"EvoNorm2dB0({self.num_features})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 2, "(N, C, *)")
        checks.check_channels(who, input, self.num_features)
        if self.training:
            checks.check_per_channel(who, input)
        return NF.run(
            "evonorm_b0",
            input,
            self.running_var,
            self.weight,
            self.bias,
            self.v,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
