"""Dynamic Tanh and Dynamic erf: normalization-free replacements for LayerNorm."""

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
        checks.check_features(who, input, self.num_features, self.channels_last)
        return NF.run("dynamic_tanh", input, self.alpha, self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha_init={self.alpha_init}, channels_last={self.channels_last}"
        )


class DynamicErf(nn.Module):
    r"""Dynamic erf, Derf (Chen, Lu, Zhu, Sun & Liu, 2025, "Stronger
    Normalization-Free Transformers", arXiv:2512.10938), DyT's successor.

    .. math::
        y = \gamma \operatorname{erf}(\alpha x + s) + \beta

    No statistics: a learnable scalar scale ``alpha`` and a learnable scalar
    shift ``shift`` (s) move the input into erf elementwise, then a
    per-feature affine (``weight`` = gamma, ``bias`` = beta). Features are the
    last axis (``channels_last=True``, where LayerNorm would sit) or the
    channel axis of (N, C, *), as in :class:`DynamicTanh`.

    Parametrization: ``alpha`` and ``shift`` are one-element parameters,
    initialized to ``alpha_init=0.5`` and ``shift_init=0.0``; ``weight`` to
    ones, ``bias`` to zeros. The paper's formula (its Eq. 10) fixes the form
    gamma * erf(alpha x + s) + beta; the scalar shape of s and both initial
    values follow the authors' ``Dynamic_erf`` module (zlab-princeton/Derf,
    as quoted by ports that cite it: ``alpha_init_value=0.5``,
    ``shift_init_value=0.0``, ``torch.ones(1)`` for both), which keeps DyT's
    conventions (alpha scalar 0.5, weight ones, bias zeros).
    """

    def __init__(
        self,
        num_features: int,
        alpha_init: float = 0.5,
        shift_init: float = 0.0,
        channels_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.alpha_init = alpha_init
        self.shift_init = shift_init
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.full((1,), alpha_init, **factory))
        self.shift = nn.Parameter(torch.full((1,), shift_init, **factory))
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))

    def reset_parameters(self) -> None:
        """alpha to alpha_init, shift to shift_init, weight to 1, bias to 0."""
        nn.init.constant_(self.alpha, self.alpha_init)
        nn.init.constant_(self.shift, self.shift_init)
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        who = f"DynamicErf({self.num_features})"
        checks.check_features(who, input, self.num_features, self.channels_last)
        return NF.run(
            "dynamic_erf",
            input,
            self.alpha,
            self.shift,
            self.weight,
            self.bias,
            self.channels_last,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha_init={self.alpha_init}, shift_init={self.shift_init}, "
            f"channels_last={self.channels_last}"
        )
