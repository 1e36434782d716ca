"""Dynamic Tanh: a normalization-free replacement for LayerNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks
from normlab.norms._base import reset_affine


class DynamicTanh(nn.Module):
    r"""Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025, "Transformers without
    Normalization").

    .. math::
        y = \gamma \tanh(\alpha x) + \beta

    No statistics: one learnable scalar ``alpha`` (initialized to
    ``alpha_init``) squashes the input elementwise, then a per-feature affine
    (``weight`` = gamma, ``bias`` = beta). Features are the last axis
    (``channels_last=True``, where LayerNorm would sit) or the channel axis of
    (N, C, *).
    """

    def __init__(
        self,
        num_features: int,
        alpha_init: float = 0.5,
        channels_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.alpha_init = alpha_init
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.full((1,), alpha_init, **factory))
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))

    def reset_parameters(self) -> None:
        """alpha to alpha_init, weight to 1, bias to 0."""
        nn.init.constant_(self.alpha, self.alpha_init)
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        who = f"DynamicTanh({self.num_features})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 1 if self.channels_last else 2, "(*, C)")
        dim = input.dim() - 1 if self.channels_last else 1
        checks.check_channels(who, input, self.num_features, dim)
        return NF.run("dynamic_tanh", input, self.alpha, self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha_init={self.alpha_init}, channels_last={self.channels_last}"
        )
