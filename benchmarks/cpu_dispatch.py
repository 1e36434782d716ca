"""Per-call overhead of normlab's torch.nn twins, and of compiled normlab models.

Part 1 (eager, small tensors, where Python overhead dominates): each twin
against its torch.nn class on the same input, one thread, forward in training
mode ("call") and forward+backward ("step"). The two sides run alternately,
``--rounds`` times, and the ratio is the median of the per-round ratios, so
load drift on the machine hits both alike. Target: within 1.05x.

Part 2 (torch.compile): the lab's CNN (channels 16, 32, 64 on 28x28, batch 32)
and patch transformer (dim 64, depth 2, batch 32), built once with normlab's
layers and once with torch.nn's, compiled with inductor; a training step
(forward, backward) is timed the same alternating way. Target: within 1.05x.

    python benchmarks/cpu_dispatch.py                 # both parts
    python benchmarks/cpu_dispatch.py --skip-compiled # part 1 only (seconds)

Writes benchmarks/results/cpu_dispatch.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

import normlab
from normlab import models

RESULTS = Path(__file__).parent / "results" / "cpu_dispatch.json"
TARGET = 1.05

# (case, normlab layer, torch.nn layer, input shape)
CASES = [
    ("LayerNorm(64) on (8, 64)", lambda: normlab.LayerNorm(64), lambda: nn.LayerNorm(64), (8, 64)),
    ("RMSNorm(64) on (8, 64)", lambda: normlab.RMSNorm(64), lambda: nn.RMSNorm(64), (8, 64)),
    (
        "GroupNorm(4, 8) on (2, 8, 4, 4)",
        lambda: normlab.GroupNorm(4, 8),
        lambda: nn.GroupNorm(4, 8),
        (2, 8, 4, 4),
    ),
    (
        "BatchNorm2d(8) on (2, 8, 4, 4)",
        lambda: normlab.BatchNorm2d(8),
        lambda: nn.BatchNorm2d(8),
        (2, 8, 4, 4),
    ),
]


def per_call(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def alternate(ours: Callable, theirs: Callable, rounds: int, number: int) -> dict:
    """Median times (µs) of each side and the median of per-round ratios."""
    for fn in (ours, theirs):  # warm up (and compile)
        per_call(fn, max(3, number // 10))
    a, b, ratios = [], [], []
    for i in range(rounds):
        first, second = (ours, theirs) if i % 2 == 0 else (theirs, ours)
        t1, t2 = per_call(first, number), per_call(second, number)
        ta, tb = (t1, t2) if i % 2 == 0 else (t2, t1)
        a.append(ta)
        b.append(tb)
        ratios.append(ta / tb)
    return {
        "normlab_us": statistics.median(a) * 1e6,
        "torch_us": statistics.median(b) * 1e6,
        "ratio": statistics.median(ratios),
    }


def _call(layer: nn.Module, x: torch.Tensor) -> None:
    layer(x)


def _step(layer: nn.Module, x: torch.Tensor) -> None:
    layer(x).sum().backward()


def eager_rows(rounds: int, number: int) -> list[dict]:
    rows = []
    for case, make_ours, make_theirs, shape in CASES:
        x = torch.randn(shape)
        xg = x.clone().requires_grad_()
        ours, theirs = make_ours(), make_theirs()
        for kind, a, b in (
            ("call", partial(_call, ours, x), partial(_call, theirs, x)),
            ("step", partial(_step, ours, xg), partial(_step, theirs, xg)),
        ):
            row = {"case": case, "kind": kind, **alternate(a, b, rounds, number)}
            rows.append(row)
            print(
                f"{case:34s} {kind:5s} normlab {row['normlab_us']:8.2f} µs  "
                f"torch.nn {row['torch_us']:8.2f} µs  ratio {row['ratio']:.3f}",
                flush=True,
            )
    return rows


def _cnn(norm) -> nn.Module:
    return models.cnn(1, 10, channels=(16, 32, 64), norm=norm)


def _transformer(norm) -> nn.Module:
    return models.transformer(1, 10, dim=64, depth=2, norm=norm)


# (model, builder, normlab factory, torch.nn factory, input shape)
MODELS = [
    ("lab CNN, BatchNorm", _cnn, normlab.BatchNorm2d, nn.BatchNorm2d, (32, 1, 28, 28)),
    ("lab CNN, GroupNorm", _cnn, lambda c: normlab.GroupNorm(8, c), lambda c: nn.GroupNorm(8, c),
     (32, 1, 28, 28)),
    ("patch transformer, LayerNorm", _transformer, normlab.LayerNorm, nn.LayerNorm,
     (32, 1, 28, 28)),
    ("patch transformer, RMSNorm", _transformer, normlab.RMSNorm, nn.RMSNorm, (32, 1, 28, 28)),
]  # fmt: skip


def compiled_rows(rounds: int, number: int) -> list[dict]:
    rows = []
    for name, build, ours_norm, theirs_norm, shape in MODELS:
        torch.manual_seed(0)
        ours = build(ours_norm)
        torch.manual_seed(0)
        theirs = build(theirs_norm)
        x = torch.randn(shape)
        steps = [partial(_step, torch.compile(model), x) for model in (ours, theirs)]
        row = {"case": name, "kind": "compiled step", **alternate(*steps, rounds, number)}
        rows.append(row)
        print(
            f"{name:34s} compiled step  normlab {row['normlab_us'] / 1e3:8.2f} ms  "
            f"torch.nn {row['torch_us'] / 1e3:8.2f} ms  ratio {row['ratio']:.3f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=41, help="alternating rounds per side")
    parser.add_argument("--number", type=int, default=2000, help="calls per round (eager)")
    parser.add_argument("--compiled-number", type=int, default=20, help="steps per round")
    parser.add_argument("--skip-compiled", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, one thread, median of {args.rounds} alternating rounds")
    rows = eager_rows(args.rounds, args.number)
    if not args.skip_compiled:
        rows += compiled_rows(max(5, args.rounds // 4), args.compiled_number)
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.3f} (target <= {TARGET})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "threads": 1,
                "rounds": args.rounds,
                "target": TARGET,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
