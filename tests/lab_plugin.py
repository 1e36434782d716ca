"""A user's model builder and data loaders, as `--model` / `--dataset` name them
(tests/test_lab.py): nothing here is normlab's."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def build(norm, input_shape, num_classes):
    """Flatten, linear, the run's norm, ReLU, linear."""
    features = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, 24), norm(24), nn.ReLU(), nn.Linear(24, num_classes)
    )


def load(seed, train_size, test_size):
    """Two Gaussian blobs in 6 dimensions, as plain arrays."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=400)
    x = rng.normal(size=(400, 6)).astype(np.float32) + 2.0 * y[:, None]
    n, m = train_size or 300, test_size or 100
    return x[:n], y[:n], x[300 : 300 + m], y[300 : 300 + m]


def load_nan(seed, train_size, test_size):
    """Inputs that are NaN: the loss is non-finite from the first step."""
    x = torch.full((128, 1, 8, 8), float("nan"))
    y = torch.arange(128) % 3
    return x[:96], y[:96], x[96:], y[96:]


NOT_CALLABLE = 3


class _FailsWhileTraining(nn.Module):
    """Fine for one look (eval mode), fails at the third training step."""

    def __init__(self, features, num_classes):
        super().__init__()
        self.linear = nn.Linear(features, num_classes)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom at the third training step")
        return self.linear(x.flatten(1))


def build_fails_while_training(norm, input_shape, num_classes):
    return _FailsWhileTraining(math.prod(input_shape), num_classes)


def build_wrong_width(norm, input_shape, num_classes):
    """Logits of num_classes + 3: would train silently on the wrong loss."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 3))


def build_flat(norm, input_shape, num_classes):
    """One score per example, (N,): not logits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 1), nn.Flatten(0))


def load_everything(seed, train_size, test_size):
    """Ignores the sizes asked for."""
    return load(seed, None, None)


def load_float_labels(seed, train_size, test_size):
    """Labels that are not class indices."""
    x, y, xt, yt = load(seed, train_size, test_size)
    return x, y + 0.5, xt, yt + 0.5
