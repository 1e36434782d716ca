"""Normalizing weights instead of activations: weight standardization, weight norm."""

from __future__ import annotations

from torch import Tensor, nn

from normlab import functional as NF


class WSConv2d(nn.Conv2d):
    r"""A Conv2d with Weight Standardization (Qiao, Wang, Liu, Shen & Yuille, 2019,
    "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization").

    .. math::
        \hat W_o = \frac{W_o - \mathrm{E}[W_o]}{\sqrt{\mathrm{Var}[W_o] + \epsilon}}

    Each output channel's weights (over input channels and kernel positions)
    are standardized on every forward pass; the convolution uses W_hat. The
    stored ``weight`` stays unconstrained, so a Conv2d state_dict loads as is.
    Usually paired with GroupNorm. Arguments as ``torch.nn.Conv2d`` plus ``eps``.
    """

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(
            input, NF.weight_standardization(self.weight, self.eps), self.bias
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0) -> nn.Module:
    """Weight Normalization (Salimans & Kingma, 2016): w = g * v / ||v||.

    Reparametrizes ``module.<name>`` by a direction v (``original1``) and a
    magnitude g (``original0``), the norm taken over every axis but ``dim``
    (per output unit for dim=0; over the whole tensor for dim=None). Built on
    ``torch.nn.utils.parametrizations.weight_norm``; returns the module.
    """
    return nn.utils.parametrizations.weight_norm(module, name=name, dim=dim)
