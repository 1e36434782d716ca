"""The block-level forms of the registry's techniques: a norm used with more than
one input or inside a larger operation (the residual add fused in, queries and keys
together, a conditioning vector). Each form's facts live here, as the techniques'
facts live in :mod:`normlab.norms.registry`; ``normlab list`` shows both tables.

A form is not a registry technique: it is not built by ``create(name, C)`` nor found
by ``spec_of`` (its call takes more than one tensor, so models cannot swap it in
for a norm by name). Its ``techniques`` are the registry techniques it normalizes
with; those layers inside it are ordinary ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from normlab._names import did_you_mean
from normlab.norms.adaptive import AdaLNZero, AdaptiveLayerNorm, AdaptiveRMSNorm
from normlab.norms.qk import QKNorm
from normlab.norms.residual import AddLayerNorm, AddRMSNorm


@dataclass(frozen=True)
class NormForm:
    """What the registry knows of one block-level form of a technique."""

    name: str
    cls: type[nn.Module]
    techniques: tuple[str, ...]  # registry names it normalizes with
    call: str  # its call, e.g. "y, h = m(x, residual)"
    formula: str
    paper: str  # authors, year, title


_FILM = (
    "Perez, Strub, de Vries, Dumoulin & Courville, 2018, FiLM: Visual Reasoning with a "
    "General Conditioning Layer"
)
_DIT = "Peebles & Xie, 2023, Scalable Diffusion Models with Transformers"

_FORMS: tuple[NormForm, ...] = (
    NormForm(
        "qk_norm",
        QKNorm,
        techniques=("rmsnorm", "layernorm"),
        call="q, k = m(q, k)",
        formula="q̂ = γ_q q / rms(q), k̂ = γ_k k / rms(k) per head, over head_dim",
        paper="Henry, Dachapally, Pawar & Chen, 2020, Query-Key Normalization for "
        "Transformers; Dehghani et al., 2023, Scaling Vision Transformers to 22 Billion "
        "Parameters",
    ),
    NormForm(
        "adaptive_layernorm",
        AdaptiveLayerNorm,
        techniques=("layernorm",),
        call="y = m(x, c)",
        formula="y = (x − μ) / √(σ² + ε) · (1 + scale) + shift, (shift, scale) = W SiLU(c) + b",
        paper=_FILM + "; " + _DIT,
    ),
    NormForm(
        "adaptive_rmsnorm",
        AdaptiveRMSNorm,
        techniques=("rmsnorm",),
        call="y = m(x, c)",
        formula="y = x / √(mean(x²) + ε) · (1 + scale) + shift, (shift, scale) = W SiLU(c) + b",
        paper=_FILM + "; " + _DIT,
    ),
    NormForm(
        "adaln_zero",
        AdaLNZero,
        techniques=("layernorm", "rmsnorm"),
        call="mods = m(c); x = m.residual(x, mods[i], f)",
        formula="x + gate · f(norm(x) · (1 + scale) + shift) per sublayer, (shift, scale, "
        "gate) = W SiLU(c) + b with W = 0, b = 0 at init (the identity)",
        paper=_DIT,
    ),
    NormForm(
        "add_rmsnorm",
        AddRMSNorm,
        techniques=("rmsnorm",),
        call="y, h = m(x, residual)",
        formula="h = x + r, y = γ h / √(mean(h²) + ε); h goes on along the residual stream",
        paper="Zhang & Sennrich, 2019, Root Mean Square Layer Normalization; Xiong et al., "
        "2020, On Layer Normalization in the Transformer Architecture",
    ),
    NormForm(
        "add_layernorm",
        AddLayerNorm,
        techniques=("layernorm",),
        call="y, h = m(x, residual)",
        formula="h = x + r, y = γ (h − μ) / √(σ² + ε) + β; h goes on along the residual stream",
        paper="Ba, Kiros & Hinton, 2016, Layer Normalization; Xiong et al., 2020, On Layer "
        "Normalization in the Transformer Architecture",
    ),
)


def forms() -> list[str]:
    """Names of every block-level form, in table order."""
    return [f.name for f in _FORMS]


def form(name: str) -> NormForm:
    """The facts of form ``name``; unknown names raise KeyError with a suggestion."""
    by_name = {f.name: f for f in _FORMS}
    key = name.strip().lower().replace("-", "_")
    if key not in by_name:
        hint = did_you_mean(key, by_name, quote=True)
        raise KeyError(f"unknown form {name!r}{hint} (forms: {', '.join(by_name)})")
    return by_name[key]
