"""Normalizations by a local response: LocalResponseNorm."""

from __future__ import annotations

from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks


class LocalResponseNorm(nn.Module):
    r"""Local Response Normalization across channels (Krizhevsky, Sutskever &
    Hinton, 2012, "ImageNet Classification with Deep Convolutional Neural Networks").

    .. math::
        b_c = a_c \left(k + \frac{\alpha}{n} \sum_{c'=\max(0, c-n/2)}^{\min(N-1, c+n/2)}
        a_{c'}^2\right)^{-\beta}

    with ``n = size``: each channel is divided by a power of the energy of its
    ``size`` neighbouring channels (zero-padded at the ends). Input (N, C, *),
    at least 3D. No parameters; same in train and eval.
    Drop-in for ``torch.nn.LocalResponseNorm``.
    """

    size: int
    alpha: float
    beta: float
    k: float

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"LocalResponseNorm: size must be a positive integer, got {size}")
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, input: Tensor) -> Tensor:
        who = f"LocalResponseNorm({self.size})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 3, "(N, C, *)")
        return NF.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
