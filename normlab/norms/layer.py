"""Per-sample normalizations over the trailing axes: LayerNorm and RMSNorm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks

ShapeLike = int | Sequence[int] | torch.Size


class LayerNorm(nn.Module):
    r"""Layer Normalization (Ba, Kiros & Hinton, 2016, "Layer Normalization").

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    E and Var (biased) are taken per sample over the last
    ``len(normalized_shape)`` axes, which must equal ``normalized_shape``.
    ``elementwise_affine`` adds ``weight`` (and, with ``bias=True``, ``bias``) of
    that shape. Independent of the batch; same in train and eval.
    Drop-in for ``torch.nn.LayerNorm``.
    """

    normalized_shape: tuple[int, ...]
    eps: float
    elementwise_affine: bool

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = checks.as_normalized_shape("LayerNorm", normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        if elementwise_affine:
            shape = self.normalized_shape
            self.weight = nn.Parameter(torch.empty(shape, **factory))
            self.bias = nn.Parameter(torch.empty(shape, **factory)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        who = f"LayerNorm({self.normalized_shape})"
        checks.check_floating(who, input)
        checks.check_trailing_shape(who, input, self.normalized_shape)
        return NF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )


class RMSNorm(nn.Module):
    r"""Root Mean Square Layer Normalization (Zhang & Sennrich, 2019).

    .. math::
        y = \frac{x}{\sqrt{\frac{1}{n}\sum_i x_i^2 + \epsilon}} \cdot \gamma

    The mean of squares is taken per sample over the last
    ``len(normalized_shape)`` axes; no mean is subtracted and there is no bias.
    ``eps=None`` uses the machine epsilon of the computation dtype
    (``torch.finfo(torch.float32).eps`` for float16/bfloat16 and float32
    inputs, float64's for float64), as torch does. Drop-in for ``torch.nn.RMSNorm``.
    """

    normalized_shape: tuple[int, ...]
    eps: float | None
    elementwise_affine: bool

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = checks.as_normalized_shape("RMSNorm", normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.weight: nn.Parameter | None
        if elementwise_affine:
            self.weight = nn.Parameter(
                torch.empty(self.normalized_shape, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        who = f"RMSNorm({self.normalized_shape})"
        checks.check_floating(who, x)
        checks.check_trailing_shape(who, x, self.normalized_shape)
        return NF.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
