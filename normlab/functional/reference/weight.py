"""Normalization of weights rather than activations."""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.functional.reference.common import moments, upcast


def weight_standardization(weight: Tensor, eps: float = 1e-5) -> Tensor:
    """Weight Standardization (Qiao, Wang, Liu, Shen & Yuille, 2019).

    W_hat[o] = (W[o] - mean(W[o])) / sqrt(Var(W[o]) + eps), per output channel
    o over all its other axes (input channels and kernel positions).
    """
    w = upcast(weight)
    mean, var = moments(w, list(range(1, w.dim())))
    return ((w - mean) * torch.rsqrt(var + eps)).to(weight.dtype)
