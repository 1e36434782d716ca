r"""Adaptive (modulated) normalization: a norm whose scale and shift are predicted
from a conditioning vector (FiLM; DiT's adaLN and adaLN-Zero)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab import functional as NF
from normlab._names import did_you_mean
from normlab.functional import checks
from normlab.functional.checks import NormInputError
from normlab.functional.reference.adaptive import over_tokens
from normlab.norms import registry
from normlab.norms._base import add_affine, reset_affine

# registry name -> the functional op that normalizes and modulates in one call
_OPS = {"layernorm": "modulated_layer_norm", "rmsnorm": "modulated_rms_norm"}


class Modulation(NamedTuple):
    """One sublayer's conditioning from :class:`AdaLNZero`, each (B, D) (or (B, T, D))."""

    shift: Tensor
    scale: Tensor
    gate: Tensor


def _check_input(who: str, x: Tensor, dim: int) -> None:
    checks.check_floating(who, x)
    checks.check_min_dims(who, x, 2, f"(B, *, {dim})")
    checks.check_channels(who, x, dim, x.dim() - 1)


def _check_cond(who: str, c: Tensor, cond_dim: int, dtype: torch.dtype) -> None:
    """c is a floating (B, cond_dim) or (B, *, cond_dim) tensor of the projection's
    dtype (any dtype under autocast)."""
    checks.check_floating(f"{who} (c)", c)
    if c.dim() < 2 or c.shape[-1] != cond_dim:
        raise NormInputError(
            f"{who}: expected c of shape (B, {cond_dim}) or (B, *, {cond_dim}), got "
            f"{checks.shape_str(c.shape)}"
        )
    if c.dtype != dtype and not torch.is_autocast_enabled(c.device.type):
        raise NormInputError(
            f"{who}: expected c of dtype {dtype} (the projection's), got {c.dtype}"
        )


def _check_pair(who: str, x: Tensor, rows: Tensor, what: str) -> None:
    """``rows`` (c, or a modulation from it) is one per sample of x or one per token."""
    if tuple(rows.shape[:-1]) not in ((x.shape[0],), tuple(x.shape[:-1])):
        raise NormInputError(
            f"{who}: {what} of shape {checks.shape_str(rows.shape)} does not fit an input of "
            f"shape {checks.shape_str(x.shape)}: expected ({x.shape[0]}, {rows.shape[-1]}) "
            f"(per sample) or {checks.shape_str((*x.shape[:-1], rows.shape[-1]))} (per token)"
        )


class _AdaptiveNorm(nn.Module):
    """A norm over the last axis modulated by (shift, scale) = Linear(SiLU(c))."""

    _norm: str  # registry name of the norm

    def __init__(
        self,
        dim: int,
        cond_dim: int | None,
        eps: float,
        elementwise_affine: bool,
        bias: bool,
        zero_init: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        cond_dim = dim if cond_dim is None else cond_dim
        for what, value in (("dim", dim), ("cond_dim", cond_dim)):
            if value <= 0:
                raise ValueError(f"{name}: {what} must be positive, got {value}")
        self.dim, self.cond_dim, self.eps = dim, cond_dim, eps
        self.elementwise_affine, self.zero_init = elementwise_affine, zero_init
        self.linear = nn.Linear(cond_dim, 2 * dim, device=device, dtype=dtype)
        add_affine(self, dim, elementwise_affine, bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Affine to (1, 0); the projection to zero (``zero_init``) or nn.Linear's init."""
        reset_affine(self)
        if self.zero_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        else:
            self.linear.reset_parameters()

    @property
    def _who(self) -> str:
        return f"{type(self).__name__}({self.dim}, cond_dim={self.cond_dim})"

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        who = self._who
        _check_input(who, x, self.dim)
        checks.check_parameter_dtype(who, x, (self.weight, self.bias))
        _check_cond(who, c, self.cond_dim, self.linear.weight.dtype)
        _check_pair(who, x, c, "c")
        shift, scale = self.linear(F.silu(c)).to(x.dtype).chunk(2, dim=-1)
        args = (self.weight, self.bias) if self._norm == "layernorm" else (self.weight,)
        return NF.run(_OPS[self._norm], x, shift, scale, *args, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, cond_dim={self.cond_dim}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, zero_init={self.zero_init}"
        )


class AdaptiveLayerNorm(_AdaptiveNorm):
    r"""Adaptive LayerNorm, adaLN (Perez, Strub, de Vries, Dumoulin & Courville, 2018,
    "FiLM: Visual Reasoning with a General Conditioning Layer"; Peebles & Xie, 2023,
    "Scalable Diffusion Models with Transformers").

    .. math::
        (\mathrm{shift}, \mathrm{scale}) = W\,\mathrm{SiLU}(c) + b,\qquad
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}
            \cdot (1 + \mathrm{scale}) + \mathrm{shift}

    over the last axis of x, (B, *, dim). c is (B, cond_dim), one conditioning
    vector per sample (a timestep and class embedding) broadcast over its tokens,
    or (B, *, cond_dim), one per token; ``cond_dim=None`` means ``dim`` (as in
    DiT). ``forward(x, c)``. The projection ``linear`` (cond_dim -> 2 * dim,
    chunked into shift then scale, as DiT's final layer) is zero at initialization
    (``zero_init``, as in DiT), so the layer starts as a plain LayerNorm;
    ``zero_init=False`` keeps nn.Linear's init. As in DiT there is no affine of
    its own (``elementwise_affine=True`` adds ``weight`` and, with ``bias``,
    ``bias`` inside the modulation). The norm and the modulation are one call of
    :func:`normlab.functional.modulated_layer_norm` (one fused kernel on the
    Triton backend). The modulation is cast to x's dtype.
    """

    _norm = "layernorm"

    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        eps: float = 1e-6,
        elementwise_affine: bool = False,
        bias: bool = True,
        zero_init: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim, cond_dim, eps, elementwise_affine, bias, zero_init, device, dtype)


class AdaptiveRMSNorm(_AdaptiveNorm):
    r"""Adaptive RMSNorm: :class:`AdaptiveLayerNorm` with RMSNorm (Zhang & Sennrich,
    2019) for the norm (Perez et al., 2018, FiLM; Peebles & Xie, 2023, DiT).

    .. math::
        (\mathrm{shift}, \mathrm{scale}) = W\,\mathrm{SiLU}(c) + b,\qquad
        y = \frac{x}{\sqrt{\frac{1}{n}\sum_i x_i^2 + \epsilon}}
            \cdot (1 + \mathrm{scale}) + \mathrm{shift}

    Same arguments and shapes; ``elementwise_affine=True`` adds ``weight`` only.
    """

    _norm = "rmsnorm"

    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        eps: float = 1e-6,
        elementwise_affine: bool = False,
        zero_init: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim, cond_dim, eps, elementwise_affine, False, zero_init, device, dtype)


class AdaLNZero(nn.Module):
    r"""adaLN-Zero conditioning of a transformer block (Peebles & Xie, 2023,
    "Scalable Diffusion Models with Transformers"; modulation as in FiLM, Perez et
    al., 2018).

    One zero-initialized projection of the conditioning vector c gives each of the
    block's ``sublayers`` (2: attention and MLP, DiT's 6 chunks) a shift, a scale
    and a gate; each residual branch f becomes

    .. math::
        x \leftarrow x + \mathrm{gate} \cdot f\big(\mathrm{norm}(x)
            \cdot (1 + \mathrm{scale}) + \mathrm{shift}\big),\qquad
        (\mathrm{shift}_i, \mathrm{scale}_i, \mathrm{gate}_i)_i = W\,\mathrm{SiLU}(c) + b

    with ``norm`` a LayerNorm (``"layernorm"``, DiT's) or RMSNorm (``"rmsnorm"``)
    over the last axis, without affine. W and b start at zero, so every gate is 0
    and the block is the identity on the residual stream at initialization.

    ``mods = m(c)`` gives one :class:`Modulation` (shift, scale, gate) per sublayer,
    in DiT's chunk order (shift, scale, gate for the first sublayer, then the next),
    so DiT's ``adaLN_modulation.1`` weights load into ``linear`` as they are.
    ``m.modulate(x, mod)`` is the fused modulated norm; ``m.residual(x, mod, f)``
    the whole branch. x is (B, *, dim); c is (B, cond_dim) (broadcast over the
    tokens) or (B, *, cond_dim); ``cond_dim=None`` means ``dim`` (as in DiT).
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        sublayers: int = 2,
        norm: str = "layernorm",
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cond_dim = dim if cond_dim is None else cond_dim
        for what, value in (("dim", dim), ("cond_dim", cond_dim), ("sublayers", sublayers)):
            if value <= 0:
                raise ValueError(f"AdaLNZero: {what} must be positive, got {value}")
        try:
            name = registry.canonical(norm)
        except KeyError:
            name = norm
        if name not in _OPS:
            hint = did_you_mean(norm, _OPS, quote=True)
            raise ValueError(
                f"AdaLNZero: unknown norm {norm!r}{hint}; choose one of {', '.join(_OPS)}"
            )
        self.dim, self.cond_dim, self.sublayers = dim, cond_dim, sublayers
        self.norm, self.eps = name, eps
        self.linear = nn.Linear(cond_dim, 3 * sublayers * dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The projection to zero: every gate 0, the block the identity."""
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def _who(self) -> str:
        return f"AdaLNZero({self.dim}, cond_dim={self.cond_dim})"

    def forward(self, c: Tensor) -> tuple[Modulation, ...]:
        _check_cond(self._who, c, self.cond_dim, self.linear.weight.dtype)
        chunks = self.linear(F.silu(c)).chunk(3 * self.sublayers, dim=-1)
        return tuple(Modulation(*chunks[3 * i : 3 * i + 3]) for i in range(self.sublayers))

    def modulate(self, x: Tensor, mod: Modulation) -> Tensor:
        """norm(x) * (1 + mod.scale) + mod.shift, in one call (a fused kernel on Triton)."""
        who = self._who
        _check_input(who, x, self.dim)
        _check_pair(who, x, mod.shift, "the modulation")
        shift, scale = mod.shift.to(x.dtype), mod.scale.to(x.dtype)
        bias = (None,) if self.norm == "layernorm" else ()
        return NF.run(_OPS[self.norm], x, shift, scale, None, *bias, self.eps)

    def residual(self, x: Tensor, mod: Modulation, branch: Callable[[Tensor], Tensor]) -> Tensor:
        """x + mod.gate * branch(self.modulate(x, mod)): one gated residual sublayer."""
        return x + over_tokens(mod.gate, x) * branch(self.modulate(x, mod))

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, cond_dim={self.cond_dim}, sublayers={self.sublayers}, "
            f"norm={self.norm!r}, eps={self.eps}"
        )
