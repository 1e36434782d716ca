"""Switchable Normalization: a learned mixture of instance, layer and batch statistics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks
from normlab.norms._base import RunningStatsNorm


class SwitchableNorm2d(RunningStatsNorm):
    r"""Switchable Normalization (Luo, Ren, Peng, Zhang & Li, 2018, "Differentiable
    Learning-to-Normalize via Switchable Normalization").

    .. math::
        \mu = \sum_{k \in \{IN, LN, BN\}} w_k \mu_k, \quad
        \sigma^2 = \sum_k w'_k \sigma^2_k, \quad
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \gamma + \beta

    with w = softmax(``mean_weight``) and w' = softmax(``var_weight``), each three
    learnable logits (initialized equal). Instance statistics are per (n, c) over
    the spatial axes, layer statistics per n over C and the spatial axes, batch
    statistics per c over N and the spatial axes: the running estimates (kept as
    in BatchNorm, same momentum rule) replace them in eval. Input (N, C, *) of
    any rank from 2.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, True, device=device, dtype=dtype)
        self.mean_weight = nn.Parameter(torch.ones(3, device=device, dtype=dtype))
        self.var_weight = nn.Parameter(torch.ones(3, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        """Affine and running statistics as BatchNorm; equal mixture weights."""
        super().reset_parameters()
        if hasattr(self, "mean_weight"):
            nn.init.ones_(self.mean_weight)
            nn.init.ones_(self.var_weight)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        if self.training:
            checks.check_per_channel(self._who, input)
        momentum = self._momentum_for_step()
        return NF.run(
            "switchable_norm",
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.mean_weight,
            self.var_weight,
            self.training,
            momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        )
