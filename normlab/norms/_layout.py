"""Tensor layouts: a channels-first layer applied to channels-last tensors."""

from __future__ import annotations

from torch import Tensor, nn


class FeaturesLast(nn.Module):
    """Apply a channels-first normalization to (..., features) tensors, by moving
    the last axis to position 1 and back (BatchNorm over tokens, for example)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(-1, 1)).movedim(1, -1)
