"""Per-sample normalizations over the trailing axes: LayerNorm and RMSNorm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks
from normlab.functional.backend import runs_torch
from normlab.norms._base import add_affine, reset_affine
from normlab.norms._twin import TorchTwin

ShapeLike = int | Sequence[int] | torch.Size


class LayerNorm(TorchTwin, nn.LayerNorm):
    r"""Layer Normalization (Ba, Kiros & Hinton, 2016, "Layer Normalization").

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    E and Var (biased) are taken per sample over the last
    ``len(normalized_shape)`` axes, which must equal ``normalized_shape``.
    ``elementwise_affine`` adds ``weight`` (and, with ``bias=True``, ``bias``) of
    that shape. Independent of the batch; same in train and eval.
    A ``torch.nn.LayerNorm`` (subclass; see :mod:`normlab.norms._twin`).
    """

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = checks.as_normalized_shape("LayerNorm", normalized_shape)
        super().__init__(shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        if runs_torch(input):
            try:
                return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
            except (RuntimeError, ValueError):
                self._explain(input)
                raise
        return self._forward(input)

    def _check_input(self, input: Tensor) -> None:
        who = f"LayerNorm({self.normalized_shape})"
        checks.check_floating(who, input)
        checks.check_trailing_shape(who, input, self.normalized_shape)

    def _forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return NF.run("layer_norm", input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(TorchTwin, nn.RMSNorm):
    r"""Root Mean Square Layer Normalization (Zhang & Sennrich, 2019).

    .. math::
        y = \frac{x}{\sqrt{\frac{1}{n}\sum_i x_i^2 + \epsilon}} \cdot \gamma

    The mean of squares is taken per sample over the last
    ``len(normalized_shape)`` axes; no mean is subtracted and there is no bias.
    ``eps=None`` uses the machine epsilon of the computation dtype
    (``torch.finfo(torch.float32).eps`` for float16/bfloat16 and float32
    inputs, float64's for float64), as torch does.
    A ``torch.nn.RMSNorm`` (subclass; see :mod:`normlab.norms._twin`).
    """

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = checks.as_normalized_shape("RMSNorm", normalized_shape)
        super().__init__(shape, eps, elementwise_affine, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        if runs_torch(input):
            try:
                return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)
            except (RuntimeError, ValueError):
                self._explain(input)
                raise
        return self._forward(input)

    def _check_input(self, input: Tensor) -> None:
        who = f"RMSNorm({self.normalized_shape})"
        checks.check_floating(who, input)
        checks.check_trailing_shape(who, input, self.normalized_shape)

    def _forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return NF.run("rms_norm", input, self.normalized_shape, self.weight, self.eps)


class _ChannelsFirst(nn.Module):
    """Per-position normalization over the channel axis of an (N, C, *) tensor."""

    def __init__(
        self,
        num_channels: int,
        eps: float | None,
        affine: bool,
        bias: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        if num_channels <= 0:
            raise ValueError(
                f"{type(self).__name__}: num_channels must be positive, got {num_channels}"
            )
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        add_affine(self, num_channels, affine, bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0."""
        reset_affine(self)

    def _check_input(self, input: Tensor) -> None:
        who = f"{type(self).__name__}({self.num_channels})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 2, "(N, C, *)")
        checks.check_channels(who, input, self.num_channels)
        checks.check_parameter_dtype(who, input, (self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm2d(_ChannelsFirst):
    r"""LayerNorm over the channels of an (N, C, *) tensor, at each position
    (as in ConvNeXt; Liu et al., 2022, "A ConvNet for the 2020s").

    .. math::
        y = \frac{x - \mathrm{E}_C[x]}{\sqrt{\mathrm{Var}_C[x] + \epsilon}} \cdot \gamma + \beta

    E and Var (biased) over C only, separately for every sample and spatial
    position; weight and bias per channel. Equals ``LayerNorm(C)`` applied to
    the channels-last tensor. ``eps=1e-6`` as in timm. Input (N, C, *), rank >= 2.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_channels, eps, affine, bias, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return NF.run("layer_norm_2d", input, self.weight, self.bias, self.eps)


class RMSNorm2d(_ChannelsFirst):
    r"""RMSNorm over the channels of an (N, C, *) tensor, at each position.

    .. math::
        y = \frac{x}{\sqrt{\mathrm{E}_C[x^2] + \epsilon}} \cdot \gamma

    Equals ``RMSNorm(C)`` applied to the channels-last tensor (Zhang &
    Sennrich, 2019). Input (N, C, *), rank >= 2.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float | None = 1e-6,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_channels, eps, affine, False, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return NF.run("rms_norm_2d", input, self.weight, self.eps)


class ScaleNorm(nn.Module):
    r"""ScaleNorm (Nguyen & Salazar, 2019, "Transformers without Tears: Improving
    the Normalization of Self-Attention").

    .. math::
        y = g \, \frac{x}{\max(\lVert x \rVert_2, \epsilon)}

    Projects each feature vector onto the sphere of learnable radius g (one
    scalar, ``scale``, initialized to sqrt(num_features) as in the paper): no
    mean, no per-feature affine. Over the last axis (``channels_last=True``, as
    LayerNorm) or the channel axis of (N, C, *).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        channels_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"ScaleNorm: num_features must be positive, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.channels_last = channels_last
        self.scale = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """scale to sqrt(num_features)."""
        nn.init.constant_(self.scale, self.num_features**0.5)

    def forward(self, input: Tensor) -> Tensor:
        who = f"ScaleNorm({self.num_features})"
        checks.check_features(who, input, self.num_features, self.channels_last)
        return NF.run("scale_norm", input, self.scale, self.eps, -1 if self.channels_last else 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, channels_last={self.channels_last}"


class LMRMSNorm(nn.Module):
    r"""RMSNorm as language models run it: Llama's and Gemma's casting, Gemma's
    unit offset, and partial RMSNorm.

    .. math::
        \hat x = \frac{x}{\sqrt{\frac{1}{k}\sum_{i \le k} x_i^2 + \epsilon}}, \qquad
        y = \hat x \cdot s, \quad s = \gamma \text{ or } 1 + \gamma

    over the last axis (``channels_last=True``, where a transformer's norm sits)
    or the channel axis of (N, C, *); no mean, no bias, independent of the batch.

    - ``unit_offset`` (Gemma): s = 1 + weight, weight initialized to 0, so the
      initial layer scales by exactly 1; otherwise s = weight, initialized to 1.
    - ``cast``: where the computation, always in float32 (float64 for float64
      inputs), goes back to the input's dtype. As in Hugging Face transformers'
      forward functions (``LlamaRMSNorm``, ``GemmaRMSNorm``):

      * ``"llama"``: x̂ = x32 * rsqrt(mean(x32²) + eps) with x32 = x in float32;
        x̂ is cast to the input's dtype, *then* multiplied by the weight in the
        weight's dtype (``weight * x̂.to(input.dtype)``; with ``unit_offset``,
        1 + weight is formed in the weight's dtype too).
      * ``"gemma"``: the same x̂ in float32, multiplied by the scale in float32
        (``x̂ * (1 + weight.float())``), and only that product is cast back.

      For float16/bfloat16 inputs the two round at different points: Llama's
      result carries two roundings to the input dtype (x̂, then the product),
      Gemma's one. The output has the input's dtype (transformers' Llama returns
      the promotion of weight and input dtypes: the same values when they match,
      as in a model run in one dtype; a float32 weight on a bfloat16 input
      returns here the float32 product rounded to bfloat16). Equal to
      transformers' bit for bit in float32, float16 and bfloat16; not in float64,
      where transformers computes in float32 (3.8e-7 off the float64 formula on
      unit-scale inputs) and this layer in float64 (exact to float64 rounding).
    - ``partial`` p in (0, 1]: pRMSNorm (Zhang & Sennrich, 2019, "Root Mean
      Square Layer Normalization", §pRMSNorm): the RMS is estimated from the
      first k = ceil(p·n) of the n features only, and applied to all n.

    ``eps`` defaults to 1e-6, as both models' configurations; None is the input
    dtype's machine epsilon, as in torch.nn.RMSNorm.
    ``elementwise_affine=False``: no weight (s = 1).
    """

    def __init__(
        self,
        num_features: int,
        eps: float | None = 1e-6,
        unit_offset: bool = False,
        cast: str = "llama",
        partial: float | None = None,
        elementwise_affine: bool = True,
        channels_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        who = f"LMRMSNorm({num_features})"
        if num_features <= 0:
            raise ValueError(f"{who}: num_features must be positive, got {num_features}")
        NF.check_lm_rms_norm_args(who, cast, partial)
        self.num_features = num_features
        self.eps = eps
        self.unit_offset = unit_offset
        self.cast = cast
        self.partial = partial
        self.elementwise_affine = elementwise_affine
        self.channels_last = channels_last
        self.weight: nn.Parameter | None
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight to 0 with ``unit_offset`` (scale 1 + 0), else to 1."""
        if self.weight is not None:
            nn.init.constant_(self.weight, 0.0 if self.unit_offset else 1.0)

    def forward(self, input: Tensor) -> Tensor:
        who = f"LMRMSNorm({self.num_features})"
        checks.check_features(who, input, self.num_features, self.channels_last)
        return NF.run(
            "lm_rms_norm",
            input,
            self.weight,
            torch.finfo(input.dtype).eps if self.eps is None else self.eps,  # torch's rule
            self.unit_offset,
            self.cast,
            self.partial,
            self.channels_last,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, unit_offset={self.unit_offset}, "
            f"cast={self.cast!r}, partial={self.partial}, "
            f"elementwise_affine={self.elementwise_affine}, channels_last={self.channels_last}"
        )
