"""Parity of every normlab layer with its torch.nn twin, on every backend.

:func:`run_parity` trains a normlab layer and the torch.nn layer of the same
configuration side by side for a few steps (SGD on a random loss), then
evaluates both, and reports the largest relative difference of outputs, input
and parameter gradients, and buffers (running statistics, batch count).
``normlab check`` prints it as a table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import normlab


@dataclass(frozen=True)
class ParityCase:
    label: str
    ours: Callable[[], nn.Module]
    theirs: Callable[[], nn.Module]
    shape: tuple[int, ...]
    torch_lacks: tuple[torch.dtype, ...] = ()  # dtypes torch.nn cannot run on CPU


@dataclass(frozen=True)
class ParityResult:
    label: str
    backend: str
    dtype: torch.dtype
    output: float
    grad_input: float
    grad_params: float
    buffers: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return max(self.output, self.grad_input, self.grad_params, self.buffers) <= self.tolerance


CASES: tuple[ParityCase, ...] = (
    ParityCase(
        "BatchNorm1d(16)", lambda: normlab.BatchNorm1d(16), lambda: nn.BatchNorm1d(16), (32, 16)
    ),
    ParityCase(
        "BatchNorm2d(16)",
        lambda: normlab.BatchNorm2d(16),
        lambda: nn.BatchNorm2d(16),
        (8, 16, 7, 7),
    ),
    ParityCase(
        "BatchNorm3d(8, momentum=None)",
        lambda: normlab.BatchNorm3d(8, momentum=None),
        lambda: nn.BatchNorm3d(8, momentum=None),
        (4, 8, 3, 5, 5),
    ),
    ParityCase("LayerNorm(64)", lambda: normlab.LayerNorm(64), lambda: nn.LayerNorm(64), (32, 64)),
    ParityCase(
        "GroupNorm(4, 16)",
        lambda: normlab.GroupNorm(4, 16),
        lambda: nn.GroupNorm(4, 16),
        (8, 16, 7, 7),
    ),
    ParityCase(
        "InstanceNorm2d(16, affine, tracked)",
        lambda: normlab.InstanceNorm2d(16, affine=True, track_running_stats=True),
        lambda: nn.InstanceNorm2d(16, affine=True, track_running_stats=True),
        (8, 16, 7, 7),
    ),
    ParityCase("RMSNorm(64)", lambda: normlab.RMSNorm(64), lambda: nn.RMSNorm(64), (32, 64)),
    ParityCase(
        "LocalResponseNorm(5)",
        lambda: normlab.LocalResponseNorm(5, alpha=1e-2),
        lambda: nn.LocalResponseNorm(5, alpha=1e-2),
        (8, 16, 7, 7),
        torch_lacks=(torch.float16, torch.bfloat16),
    ),
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |b|, 1e-12), in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() if b.numel() else 0.0


def compare(
    ours: nn.Module,
    theirs: nn.Module,
    shape: tuple[int, ...],
    steps: int = 3,
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Train both modules ``steps`` SGD steps on the same data, then eval once.

    Returns the largest relative difference of outputs, input gradients,
    parameter gradients and buffers over all steps.
    """
    gen = torch.Generator().manual_seed(seed)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1) if list(ours.parameters()) else None
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1) if opt_ours else None
    worst = dict.fromkeys(("output", "grad_input", "grad_params", "buffers"), 0.0)

    def note(key: str, value: float) -> None:
        worst[key] = max(worst[key], value)

    with normlab.use_backend(backend):
        for step in range(steps + 1):
            training = step < steps
            ours.train(training)
            theirs.train(training)
            x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).to(dtype)
            target = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
            yo, yt = ours(xo), theirs(xt)
            note("output", _rel(yo, yt))
            (yo.float() * target.float()).sum().backward()
            (yt.float() * target.float()).sum().backward()
            note("grad_input", _rel(xo.grad, xt.grad))
            for po, pt in zip(ours.parameters(), theirs.parameters(), strict=True):
                note("grad_params", _rel(po.grad, pt.grad))
            if training and opt_ours and opt_theirs:
                opt_ours.step()
                opt_theirs.step()
                opt_ours.zero_grad()
                opt_theirs.zero_grad()
            for bo, bt in zip(ours.buffers(), theirs.buffers(), strict=True):
                note("buffers", _rel(bo, bt))
    return worst


# The parity cases run on CPU tensors, where the Triton backend is the native one.
CPU_BACKENDS = ("native", "reference")

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}


def run_parity(
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
    backends: tuple[str, ...] = CPU_BACKENDS,
    cases: tuple[ParityCase, ...] = CASES,
) -> list[ParityResult]:
    """Every case on every backend and dtype that torch.nn can run."""
    results = []
    for case in cases:
        for backend in backends:
            for dtype in dtypes:
                if dtype in case.torch_lacks:
                    continue
                worst = compare(
                    case.ours(), case.theirs(), case.shape, dtype=dtype, backend=backend
                )
                results.append(
                    ParityResult(case.label, backend, dtype, tolerance=TOLERANCE[dtype], **worst)
                )
    return results
