"""Shared helpers: the oracle comparisons every test file uses."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import settings
from torch import nn

if not torch.cuda.is_available():
    # The Triton kernels run on CPU tensors through Triton's interpreter; it must
    # be on before normlab.kernels is first imported (tests/test_kernels.py).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import normlab
from normlab.experiments import RunConfig

try:
    import triton
except ImportError:
    triton = None
# The Triton kernels run here on a GPU, or on the CPU under triton >= 3.9's interpreter.
KERNELS_RUN = triton is not None and (
    torch.cuda.is_available() or tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 9)
)
needs_kernels = pytest.mark.skipif(
    not KERNELS_RUN, reason="needs a GPU, or triton >= 3.9 for its CPU interpreter"
)

# A run that trains in a fraction of a second: the experiment engine's tests.
TINY = RunConfig(
    dataset="synthetic",
    model="mlp",
    depth=2,
    width=16,
    activation="relu",
    init="kaiming",
    lr=0.1,
    batch_size=32,
    steps=20,
    eval_every=10,
)

settings.register_profile("default", max_examples=25, deadline=None, derandomize=False)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Largest relative error (max |a - b| / max |b|) allowed per dtype: a few units
# in the last place of the dtype, since both sides round once per element.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 8e-3,
    torch.bfloat16: 4e-2,
}

BACKENDS = ("native", "reference")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def assert_rel(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    assert torch.isfinite(a).all() == torch.isfinite(b).all(), f"{what}: finiteness differs"
    err = rel_err(a, b)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"


def randomize_affine(module: nn.Module, gen: torch.Generator) -> None:
    """Weights away from 1 and biases away from 0, so that the affine is tested."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            fresh = torch.rand(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(fresh + 0.5 if name.endswith("weight") else fresh - 0.5)


def _run(module: nn.Module, x: torch.Tensor, weights: torch.Tensor | None, gen):
    """Forward and backward of sum(y * weights); returns (y, dx, param grads, weights)."""
    xg = x.clone().requires_grad_()
    y = module(xg)
    if weights is None:
        weights = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.device)
    (y.double() * weights).sum().backward()
    return [y, xg.grad, *(p.grad for p in module.parameters())], weights


def train_side_by_side(
    ours: nn.Module,
    theirs: nn.Module,
    train_inputs: list[torch.Tensor],
    eval_inputs: list[torch.Tensor],
    tol: float,
    backend: str | None = None,
    seed: int = 0,
) -> None:
    """Train ``ours`` and the torch.nn ``theirs`` on the same batches, then eval.

    After each step (SGD, lr 0.1, on a random linear loss) compares outputs,
    input gradients and parameter gradients, and every buffer. In float64 ours
    must match theirs within ``tol``. In lower precision both are held against
    a float64 copy of theirs (synced before each step): our error must stay
    within ``tol``, or within 10x torch's own error where torch itself loses
    digits (ill-conditioned inputs, e.g. the input gradient of a LayerNorm over
    2 nearly equal values, where autograd through composed ops cancels more
    than a fused backward).
    """
    gen = torch.Generator().manual_seed(seed)
    randomize_affine(ours, gen)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    truth = None if train_inputs[0].dtype == torch.float64 else copy.deepcopy(theirs).double()
    params = list(ours.parameters())
    opt_ours = torch.optim.SGD(params, lr=0.1) if params else None
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1) if params else None
    names = ["output", "input gradient", *(f"gradient of {n}" for n, _ in ours.named_parameters())]
    steps = [(x, True) for x in train_inputs] + [(x, False) for x in eval_inputs]
    with normlab.use_backend(backend):
        for i, (x, training) in enumerate(steps):
            where = f"step {i} ({'train' if training else 'eval'}), input {tuple(x.shape)}"
            for m in (ours, theirs):
                m.train(training)
            if truth is not None:
                truth.load_state_dict(theirs.state_dict())
                truth.train(training).zero_grad()
            got, weights = _run(ours, x, None, gen)
            expected, _ = _run(theirs, x, weights, gen)
            assert got[0].dtype == expected[0].dtype, f"{where}: output dtype"
            if truth is None:
                for name, a, b in zip(names, got, expected, strict=True):
                    assert_rel(a, b, tol, f"{where}: {name}")
            else:
                exact, _ = _run(truth, x.double(), weights, gen)
                for name, a, b, t in zip(names, got, expected, exact, strict=True):
                    ours_err, torch_err = rel_err(a, t), rel_err(b, t)
                    assert ours_err <= tol + 10 * torch_err, (
                        f"{where}: {name}: error vs float64 {ours_err:.3e}, torch's {torch_err:.3e}"
                    )
            if training and opt_ours and opt_theirs:
                opt_ours.step()
                opt_theirs.step()
                opt_ours.zero_grad()
                opt_theirs.zero_grad()
            theirs_buffers = dict(theirs.named_buffers())
            assert set(dict(ours.named_buffers())) == set(theirs_buffers)
            for name, bo in ours.named_buffers():
                assert_rel(bo, theirs_buffers[name], tol, f"{where}: buffer {name}")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(torch.seed() % 2**32)
