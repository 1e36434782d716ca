"""Adaptive (modulated) normalization: LayerNorm or RMSNorm over the features,
then a per-sample (or per-token) scale and shift predicted from a conditioning
vector, as in FiLM (Perez et al., 2018) and DiT's adaLN (Peebles & Xie, 2023)."""

from __future__ import annotations

from torch import Tensor

from normlab.functional.reference.common import affine, mean_square, moments, upcast


def over_tokens(t: Tensor, x: Tensor) -> Tensor:
    """A per-sample (B, D) tensor viewed as (B, 1, ..., 1, D) to broadcast over the
    tokens of an (B, *, D) ``x``; a per-token one (``x``'s shape) as it is."""
    if t.dim() == x.dim():
        return t
    return t.view(t.shape[0], *([1] * (x.dim() - 2)), t.shape[-1])


def modulate(n: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """n * (1 + scale) + shift, the modulation broadcast over the tokens, in n's dtype."""
    scale = over_tokens(scale, n).to(n.dtype)
    return n * (1 + scale) + over_tokens(shift, n).to(n.dtype)


def modulated_layer_norm(
    input: Tensor,
    shift: Tensor,
    scale: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Modulated LayerNorm (adaLN; Peebles & Xie, 2023) of an (B, *, D) input.

    y = LN(x) * (1 + scale) + shift, LN(x) = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias
    over the last axis; shift and scale are (B, D) (one row per sample, broadcast
    over its tokens) or x's shape (one row per token).
    """
    x = upcast(input)
    mean, var = moments(x, [x.dim() - 1])
    n = affine((x - mean) * (var + eps).rsqrt(), weight, bias, (x.shape[-1],))
    return modulate(n, shift, scale).to(input.dtype)


def modulated_rms_norm(
    input: Tensor,
    shift: Tensor,
    scale: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Modulated RMSNorm of an (B, *, D) input: y = RMSNorm(x) * (1 + scale) + shift,
    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * weight over the last axis; shift and
    scale as in :func:`modulated_layer_norm`."""
    x = upcast(input)
    n = affine(x * (mean_square(x, [x.dim() - 1]) + eps).rsqrt(), weight, None, (x.shape[-1],))
    return modulate(n, shift, scale).to(input.dtype)
