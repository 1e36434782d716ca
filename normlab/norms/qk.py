r"""QK-norm: normalize attention queries and keys per head before their dot product."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from normlab._names import did_you_mean
from normlab.functional.checks import NormInputError
from normlab.norms import registry

QK_NORMS = ("rmsnorm", "layernorm")


class QKNorm(nn.Module):
    r"""Query-key normalization (Henry et al., 2020, "Query-Key Normalization for
    Transformers"; Dehghani et al., 2023, "Scaling Vision Transformers to 22 Billion
    Parameters"; as in OLMo-2 and Qwen3).

    For queries and keys shaped (..., head_dim), e.g. (B, heads, T, head_dim), each
    head's vector is normalized over its last axis by its own norm, with separate
    learnable scales for q and k (two norm instances, shared across heads):

    .. math::
        \hat q = \gamma_q \odot \frac{q}{\sqrt{\tfrac{1}{d}\sum_i q_i^2 + \epsilon}},\qquad
        \hat k = \gamma_k \odot \frac{k}{\sqrt{\tfrac{1}{d}\sum_i k_i^2 + \epsilon}}

    with ``norm="rmsnorm"`` (``"layernorm"`` subtracts the mean, divides by the
    standard deviation and adds biases :math:`\beta_q, \beta_k`). With RMSNorm,
    :math:`\|q/\mathrm{rms}(q)\|_2 \le \sqrt d`, so every attention logit is bounded:
    :math:`|\hat q \cdot \hat k| \le d \cdot \max|\gamma_q| \cdot \max|\gamma_k|`,
    whatever the scale of the projections.

    ``norm`` is ``"rmsnorm"``, ``"layernorm"`` (or an alias of either) or a factory
    from ``head_dim`` to a module normalizing the last axis; ``eps`` (default 1e-6)
    only goes with a name. Usage: ``q, k = qk_norm(q, k)``. A composite module, not a
    registry technique: its two norms are ordinary normlab layers.
    """

    def __init__(
        self,
        head_dim: int,
        norm: str | Callable[[int], nn.Module] = "rmsnorm",
        eps: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(norm, str):
            try:
                name = registry.canonical(norm)
            except KeyError:
                name = norm
            if name not in QK_NORMS:
                hint = did_you_mean(norm, QK_NORMS, quote=True)
                raise ValueError(
                    f"QKNorm: unknown norm {norm!r}{hint}; choose one of {', '.join(QK_NORMS)} "
                    "or give a factory (head_dim -> module)"
                )
            make = registry.factory(name, "channels_last", eps=1e-6 if eps is None else eps)
        elif callable(norm):
            if eps is not None:
                raise TypeError(
                    "QKNorm: eps only goes with a norm given by name; give it to the factory"
                )
            make = norm
        else:
            raise TypeError(f"QKNorm: norm must be a name or a factory, got {norm!r}")
        self.head_dim = head_dim
        self.q_norm = make(head_dim)
        self.k_norm = make(head_dim)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        for name, t in (("q", q), ("k", k)):
            if t.shape[-1] != self.head_dim:
                raise NormInputError(
                    f"QKNorm: {name} has last axis {t.shape[-1]}, expected head_dim {self.head_dim}"
                )
        return self.q_norm(q), self.k_norm(k)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}"
