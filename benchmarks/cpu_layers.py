"""Wrapper overhead of normlab's layers against torch.nn on the CPU.

Target (../shared/PERFORMANCE.md): on the native backend a normlab layer costs
at most 5% more than calling torch.nn directly at (64, 256, 28, 28).

    python benchmarks/cpu_layers.py [--shape 64 256 28 28] [--out benchmarks/results]

Prints a table (median ms per call, forward and forward+backward, and the
overhead) and writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

import normlab


def _layers(channels: int, width: int) -> dict[str, tuple[nn.Module, nn.Module]]:
    return {
        "BatchNorm2d train": (normlab.BatchNorm2d(channels), nn.BatchNorm2d(channels)),
        "BatchNorm2d eval": (normlab.BatchNorm2d(channels).eval(), nn.BatchNorm2d(channels).eval()),
        "GroupNorm(32)": (normlab.GroupNorm(32, channels), nn.GroupNorm(32, channels)),
        "InstanceNorm2d": (normlab.InstanceNorm2d(channels), nn.InstanceNorm2d(channels)),
        "LayerNorm(W)": (normlab.LayerNorm(width), nn.LayerNorm(width)),
        "RMSNorm(W)": (normlab.RMSNorm(width), nn.RMSNorm(width)),
        "LocalResponseNorm(5)": (normlab.LocalResponseNorm(5), nn.LocalResponseNorm(5)),
    }


def _median_ms(stmt: str, env: dict, min_run_time: float) -> float:
    timer = benchmark.Timer(stmt=stmt, globals=env, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def run(shape: tuple[int, ...], min_run_time: float) -> list[dict]:
    rows = []
    x = torch.randn(shape)
    xg = x.clone().requires_grad_()
    for name, (ours, theirs) in _layers(shape[1], shape[-1]).items():
        row: dict = {"layer": name, "shape": list(shape)}
        for direction, stmt in (("fwd", "m(x)"), ("fwd+bwd", "m(xg).sum().backward()")):
            # Alternate the two sides so drift in machine load hits both alike.
            times = {"normlab": [], "torch": []}
            for _ in range(3):
                for side, module in (("normlab", ours), ("torch", theirs)):
                    env = {"m": module, "x": x, "xg": xg}
                    times[side].append(_median_ms(stmt, env, min_run_time))
            row[f"{direction}_normlab_ms"] = min(times["normlab"])
            row[f"{direction}_torch_ms"] = min(times["torch"])
            row[f"{direction}_overhead"] = min(times["normlab"]) / min(times["torch"]) - 1
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 256, 28, 28])
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    rows = run(tuple(args.shape), args.min_run_time)
    header = f"{'layer':<22}{'fwd ms':>10}{'torch':>10}{'overhead':>10}"
    header += f"{'f+b ms':>10}{'torch':>10}{'overhead':>10}"
    print(f"CPU, {torch.get_num_threads()} threads, shape {tuple(args.shape)}, float32")
    print(header)
    for r in rows:
        print(
            f"{r['layer']:<22}{r['fwd_normlab_ms']:>10.2f}{r['fwd_torch_ms']:>10.2f}"
            f"{r['fwd_overhead']:>+10.1%}{r['fwd+bwd_normlab_ms']:>10.2f}"
            f"{r['fwd+bwd_torch_ms']:>10.2f}{r['fwd+bwd_overhead']:>+10.1%}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    path = args.out / f"cpu_layers-{stamp}.json"
    meta = {
        "date": stamp,
        "torch": torch.__version__,
        "normlab": normlab.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
