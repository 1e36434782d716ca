"""Cost of every technique on the CPU, and normlab's overhead over torch.nn.

For each registry technique (channels-first form on an (N, C, H, W) float32
input) it times forward+backward (median of repeated runs, interleaved with
the other side so machine-load drift hits both), and prints a table: ms, the
ratio to torch.nn.BatchNorm2d (the "cost" column of docs/techniques.md), and,
where torch.nn has the layer, normlab's overhead over calling it directly
(target: within 5%, ../shared/PERFORMANCE.md).

    python benchmarks/cpu_norms.py                          # (32, 64, 28, 28)
    python benchmarks/cpu_norms.py --shape 64 256 28 28 --only batchnorm groupnorm

Writes the rows as JSON to benchmarks/results/cpu_norms-<N>x<C>x<H>x<W>.json.
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

# torch.nn twins of the channels-first layer normlab builds, on (N, C, H, W).
TORCH_TWIN = {
    "batchnorm": lambda c: nn.BatchNorm2d(c),
    "groupnorm": lambda c: nn.GroupNorm(normlab.create("group", c).num_groups, c),
    "instancenorm": lambda c: nn.InstanceNorm2d(c),
    "lrn": lambda c: nn.LocalResponseNorm(5),
}


def build(name: str, channels: int) -> nn.Module:
    """The technique in its channels-first form, for an (N, C, H, W) input."""
    spec = normlab.spec(name)
    if spec.channels_first is not None:
        return spec.channels_first(channels)
    return normlab.create(name, channels)


def _time_ms(module: nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    timer = benchmark.Timer(
        stmt="m(x).sum().backward()",
        globals={"m": module, "x": x},
        num_threads=torch.get_num_threads(),
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def run(shape: tuple[int, ...], names: list[str], min_run_time: float, rounds: int) -> list[dict]:
    x = torch.randn(shape).requires_grad_()
    sides = {name: {"normlab": build(name, shape[1])} for name in names}
    sides["batchnorm"]["torch"] = nn.BatchNorm2d(shape[1])  # the unit of cost
    for name in names:
        if name in TORCH_TWIN:
            sides[name]["torch"] = TORCH_TWIN[name](shape[1])
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name in sides:
            for side, module in sides[name].items():
                times.setdefault((name, side), []).append(_time_ms(module, x, min_run_time))
    best = {key: min(values) for key, values in times.items()}
    unit = best[("batchnorm", "torch")]
    rows = []
    for name in names:
        ms = best[(name, "normlab")]
        torch_ms = best.get((name, "torch"))
        rows.append(
            {
                "technique": name,
                "layer": type(sides[name]["normlab"]).__name__,
                "fwd_bwd_ms": ms,
                "cost_vs_batchnorm": ms / unit,
                "torch_ms": torch_ms,
                "overhead_vs_torch": None if torch_ms is None else ms / torch_ms - 1,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 64, 28, 28])
    parser.add_argument("--only", nargs="*", help="registry names (default: all)")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    names = args.only or [n for n in normlab.available() if n != "none"]
    if "batchnorm" not in names:
        names = ["batchnorm", *names]

    rows = run(tuple(args.shape), names, args.min_run_time, args.rounds)
    print(
        f"CPU fwd+bwd, {torch.get_num_threads()} threads, float32, shape {tuple(args.shape)}; "
        "cost = ms / torch.nn.BatchNorm2d's ms"
    )
    print(f"{'technique':<16}{'layer':<22}{'ms':>9}{'cost':>7}{'torch ms':>10}{'overhead':>10}")
    for r in rows:
        torch_ms = "" if r["torch_ms"] is None else f"{r['torch_ms']:.2f}"
        overhead = "" if r["overhead_vs_torch"] is None else f"{r['overhead_vs_torch']:+.1%}"
        print(
            f"{r['technique']:<16}{r['layer']:<22}{r['fwd_bwd_ms']:>9.2f}"
            f"{r['cost_vs_batchnorm']:>7.2f}{torch_ms:>10}{overhead:>10}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cpu_norms-{'x'.join(map(str, args.shape))}.json"
    meta = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "normlab": normlab.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "shape": args.shape,
    }
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
