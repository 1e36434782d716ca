"""The NumPy reference: forward and hand-derived backward.

Oracles: torch autograd in float64 (through torch.nn.functional), and central
finite differences of the NumPy forward itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normlab import numpy_ref

# name -> (x shape, gamma shape, extra kwargs, torch forward(x, g, b))
CASES = {
    "batch_norm": ((5, 3, 4), (3,), {}, lambda x, g, b: F.batch_norm(x, None, None, g, b, True)),
    "batch_norm_2d": ((4, 3), (3,), {}, lambda x, g, b: F.batch_norm(x, None, None, g, b, True)),
    "instance_norm": ((2, 3, 4, 3), (3,), {}, lambda x, g, b: F.instance_norm(x, weight=g, bias=b)),
    "group_norm": ((2, 6, 5), (6,), {"num_groups": 3}, lambda x, g, b: F.group_norm(x, 3, g, b)),
    "layer_norm": ((3, 2, 4, 5), (4, 5), {}, lambda x, g, b: F.layer_norm(x, (4, 5), g, b)),
}


def _fn(name: str, direction: str):
    return getattr(numpy_ref, f"{name.removesuffix('_2d')}_{direction}")


def _random(rng, x_shape, g_shape):
    x = rng.normal(1.0, 2.0, x_shape)
    gamma = rng.uniform(0.5, 1.5, g_shape)
    beta = rng.normal(0.0, 1.0, g_shape)
    dy = rng.normal(0.0, 1.0, x_shape)
    return x, gamma, beta, dy


@pytest.mark.parametrize("name", list(CASES))
def test_against_torch_autograd_float64(name):
    x_shape, g_shape, kwargs, torch_fn = CASES[name]
    x, gamma, beta, dy = _random(np.random.default_rng(), x_shape, g_shape)
    y, cache = _fn(name, "forward")(x, gamma, beta, **kwargs)
    dx, dgamma, dbeta = _fn(name, "backward")(dy, cache)

    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    yt = torch_fn(xt, gt, bt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-9, atol=1e-11)


def test_rms_norm_against_torch_autograd_float64():
    rng = np.random.default_rng()
    x, gamma, _, dy = _random(rng, (3, 4, 6), (4, 6))
    y, cache = numpy_ref.rms_norm_forward(x, gamma, eps=1e-6)
    dx, dgamma = numpy_ref.rms_norm_backward(dy, cache)
    xt, gt = torch.tensor(x, requires_grad=True), torch.tensor(gamma, requires_grad=True)
    yt = F.rms_norm(xt, (4, 6), gt, 1e-6)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-9, atol=1e-11)


def _finite_difference(f, a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f(a) / d a by central differences, f scalar-valued."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        up = f()
        a[i] = old - h
        down = f()
        a[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("name", [*CASES, "rms_norm"])
def test_backward_against_finite_differences(name):
    rng = np.random.default_rng()
    if name == "rms_norm":
        x_shape, g_shape, kwargs = (3, 5), (5,), {}
    else:
        x_shape, g_shape, kwargs, _ = CASES[name]
    x, gamma, beta, dy = _random(rng, x_shape, g_shape)
    forward = _fn(name, "forward")
    args = (x, gamma) if name == "rms_norm" else (x, gamma, beta)

    def loss() -> float:
        return float((forward(*args, **kwargs)[0] * dy).sum())

    _, cache = forward(*args, **kwargs)
    grads = _fn(name, "backward")(dy, cache)
    for analytic, wrt in zip(grads, args, strict=True):
        np.testing.assert_allclose(analytic, _finite_difference(loss, wrt), rtol=1e-5, atol=1e-6)


def test_shape_errors_name_the_function():
    with pytest.raises(ValueError, match=r"batch_norm_forward: .*\(C,\)"):
        numpy_ref.batch_norm_forward(np.zeros((2, 3)), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="group_norm_forward: 6 channels"):
        numpy_ref.group_norm_forward(np.zeros((2, 6)), np.ones(6), np.zeros(6), num_groups=4)
    with pytest.raises(ValueError, match="layer_norm_forward"):
        numpy_ref.layer_norm_forward(np.zeros((2, 3)), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="rms_norm_forward"):
        numpy_ref.rms_norm_forward(np.zeros((2, 3)), np.ones(4))
