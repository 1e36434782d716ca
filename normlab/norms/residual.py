r"""A norm fused with the residual add before it: pre-norm transformer blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks
from normlab.norms._base import add_affine, reset_affine
from normlab.norms.layer import ShapeLike


class _AddNorm(nn.Module):
    """The shared state: normalized_shape, eps, the affine (torch's names), the stream dtype."""

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float | None,
        elementwise_affine: bool,
        bias: bool,
        residual_in_fp32: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        self.normalized_shape = checks.as_normalized_shape(type(self).__name__, normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.residual_in_fp32 = residual_in_fp32
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        add_affine(self, self.normalized_shape, elementwise_affine, bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0."""
        reset_affine(self)

    def _check(self, x: Tensor, residual: Tensor | None) -> None:
        who = f"{type(self).__name__}({self.normalized_shape})"
        checks.check_add_norm(who, x, residual, self.normalized_shape)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, "
            f"residual_in_fp32={self.residual_in_fp32}"
        )


class AddRMSNorm(_AddNorm):
    r"""RMSNorm after a residual add, in one op: a pre-norm transformer block's
    ``h = h + x; y = norm(h)`` becomes ``y, h = add_norm(x, h)``.

    .. math::
        h = x + r,\qquad y = \frac{h}{\sqrt{\frac{1}{n}\sum_i h_i^2 + \epsilon}} \cdot \gamma

    over the last ``len(normalized_shape)`` axes (Zhang & Sennrich, 2019, "Root Mean
    Square Layer Normalization"; the pre-norm residual stream: Xiong et al., 2020, "On
    Layer Normalization in the Transformer Architecture"). ``forward(x, residual=None)``
    returns ``(y, h)``; without a residual h = x. y has x's dtype; h torch's promotion of
    x and the residual, float32 at least with ``residual_in_fp32`` (a float32 residual
    stream under half-precision sublayers). Statistics in float32. Gradients reach x
    and the residual from both y and h. ``weight`` as in ``torch.nn.RMSNorm``, whose
    state_dict loads as is; ``eps=None``: the machine epsilon of the dtype the
    statistics are computed in (float32 for half inputs), as torch's.
    On CUDA one fused Triton kernel (:mod:`normlab.kernels.residual`).
    """

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float | None = None,
        elementwise_affine: bool = True,
        residual_in_fp32: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            normalized_shape, eps, elementwise_affine, False, residual_in_fp32, device, dtype
        )

    def forward(self, x: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, residual)
        return NF.run(
            "add_rms_norm",
            x,
            residual,
            self.normalized_shape,
            self.weight,
            self.eps,
            self.residual_in_fp32,
        )


class AddLayerNorm(_AddNorm):
    r"""LayerNorm after a residual add, in one op: a pre-norm transformer block's
    ``h = h + x; y = norm(h)`` becomes ``y, h = add_norm(x, h)``.

    .. math::
        h = x + r,\qquad y = \frac{h - \mathrm{E}[h]}{\sqrt{\mathrm{Var}[h] + \epsilon}}
        \cdot \gamma + \beta

    over the last ``len(normalized_shape)`` axes (Ba, Kiros & Hinton, 2016, "Layer
    Normalization"; the pre-norm residual stream: Xiong et al., 2020, "On Layer
    Normalization in the Transformer Architecture"). ``forward(x, residual=None)``
    returns ``(y, h)``, dtypes and gradients as :class:`AddRMSNorm`'s. ``weight`` and
    ``bias`` as in ``torch.nn.LayerNorm``, whose state_dict loads as is.
    """

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        residual_in_fp32: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            normalized_shape, eps, elementwise_affine, bias, residual_in_fp32, device, dtype
        )

    def forward(self, x: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, residual)
        return NF.run(
            "add_layer_norm",
            x,
            residual,
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            self.residual_in_fp32,
        )
