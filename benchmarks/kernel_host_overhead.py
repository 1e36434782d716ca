"""Host (CPU-side) cost of one call into normlab's Triton kernels, with no GPU.

On an H200 (benchmarks/results/gpu_norms-nvidia-h200.json) a 2^16-element
LayerNorm took normlab 167 us forward and 395 us backward, torch 7 and 53: the
time was the host's, not the GPU's. This script splits that host time into
layers, on the CPU: the kernels run under Triton's interpreter with every
launch replaced by a no-op, so what is timed is normlab's Python around the
launches (allocation, grids), the ``torch.library.custom_op`` dispatch with and
without autograd, the functional API's checks and backend choice, and the
module. torch's own CPU LayerNorm (which does the arithmetic too) is the
yardstick. The launches themselves (Triton's launcher, some 10-20 us each on a
GPU host) are not counted.

    python benchmarks/kernel_host_overhead.py [--iters 5000]

Prints a table and writes benchmarks/results/kernel_host_overhead.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors reach the kernels; before normlab.kernels

import torch
import torch.nn.functional as F

import normlab
import normlab.functional as NF
from normlab.kernels import layer

RESULTS = Path(__file__).parent / "results" / "kernel_host_overhead.json"
SHAPE = (64, 1024)  # the 2^16-element case of gpu_norms.py


class _NoLaunch:
    """Stands in for a @triton.jit kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _stub_launches() -> None:
    for name in dir(layer):
        if name.startswith("_row_norm_"):
            setattr(layer, name, _NoLaunch())


def _time(fn, iters: int) -> float:
    """Median microseconds per call over 5 batches of ``iters // 5`` calls."""
    for _ in range(max(1, iters // 20)):
        fn()
    batch = max(1, iters // 5)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter() - start) / batch * 1e6)
    return sorted(times)[2]


def measure(iters: int) -> list[dict]:
    torch.manual_seed(0)
    n = SHAPE[-1]
    x = torch.randn(SHAPE, requires_grad=True)
    w = torch.randn(n, requires_grad=True)
    b = torch.randn(n, requires_grad=True)
    dy = torch.randn(SHAPE)
    xd, wd, bd = x.detach(), w.detach(), b.detach()
    module = normlab.LayerNorm(n)
    torch_fwd = lambda: F.layer_norm(x, (n,), w, b)  # noqa: E731
    cases = [
        ("kernel wrapper (launch stubbed)", "fwd",
         lambda: layer._forward(xd, n, wd, bd, 1e-5, False)),
        ("custom op, no grad", "fwd", lambda: layer.layer_norm_fwd(xd, [n], wd, bd, 1e-5)),
        ("custom op, with autograd", "fwd", lambda: layer.layer_norm_fwd(x, [n], w, b, 1e-5)),
        ("normlab.functional, triton", "fwd", lambda: NF.layer_norm(x, n, w, b, backend="triton")),
        ("normlab.LayerNorm, triton", "fwd", lambda: module(x)),
        ("normlab.LayerNorm, triton", "fwd+bwd", lambda: module(x).backward(dy)),
        ("torch F.layer_norm (CPU, computes)", "fwd", torch_fwd),
        ("torch F.layer_norm (CPU, computes)", "fwd+bwd", lambda: torch_fwd().backward(dy)),
    ]  # fmt: skip
    rows = []
    with normlab.use_backend("triton"):
        for label, direction, fn in cases:
            rows.append({"stage": label, "direction": direction, "us": _time(fn, iters)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--iters", type=int, default=5000, help="calls per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _stub_launches()
    rows = measure(args.iters)
    print(f"LayerNorm {SHAPE}, float32, one thread, launches stubbed; torch {torch.__version__}")
    print(f"{'stage':<38}{'direction':<10}{'us/call':>9}")
    for r in rows:
        print(f"{r['stage']:<38}{r['direction']:<10}{r['us']:>9.1f}")
    meta = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "shape": SHAPE,
        "iters": args.iters,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
