"""Wall-time overhead of the Monitor, and the cost of the ICS and smoothness probes.

Trains (a) the BatchNorm paper's MNIST network, 784-100-100-100-10 with
sigmoids, batch 60, and (b) a small CNN (conv16-BN-ReLU-pool, conv32-BN-ReLU-
pool, linear; batch 64 of 1x28x28), with and without the default Monitor
(``every=1``), alternating runs so that drifts in machine load hit both, and
prints the median of the rounds' wall-time ratios (targets: <= 1.10 on the MLP, <= 1.05 on
the CNN), on one thread (``--threads``) so that the machine's other cores do not
hide or add work.
Also times ``grad_every=1`` (gradient quantities every step) and one call of
each probe. Inputs are random tensors of MNIST's shape: wall time does not
depend on the pixels. ``--breakdown`` adds where the MLP's overhead goes: the
same measure for monitors that do part of the work (the step count alone,
activation records without gradient quantities, with activation gradients,
the default).

    python benchmarks/monitor_overhead.py [--steps 1000] [--rounds 15] [--breakdown]

Writes the numbers as JSON to benchmarks/results/monitor_overhead.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import normlab
from normlab.monitor import Monitor, internal_covariate_shift, loss_landscape


def mlp() -> nn.Module:
    layers: list[nn.Module] = []
    width = 784
    for _ in range(3):
        layers += [nn.Linear(width, 100), nn.Sigmoid()]
        width = 100
    return nn.Sequential(nn.Flatten(), *layers, nn.Linear(100, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


MODELS = {"mlp (BN paper, batch 60)": (mlp, 60), "cnn (batch 64)": (cnn, 64)}
NO_GRADIENTS = 10**9  # grad_every: gradient quantities at step 0 only
BREAKDOWN = (  # each row adds one part of the default monitor's work
    ("step count only", {"modules": [], "parameters": False}),
    ("+ activation records", {"parameters": False, "grad_every": NO_GRADIENTS}),
    ("+ activation gradients", {"parameters": False}),
    ("+ parameter quantities (default)", {}),
)


def _train(model, opt, batches) -> float:
    start = time.perf_counter()
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - start


def measure(build, batch: int, steps: int, rounds: int, **monitor_kwargs) -> dict:
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [
        (torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))) for _ in range(steps)
    ]
    _train(model, opt, batches[:20])  # warm-up
    plain, monitored, ratios = [], [], []
    for _ in range(rounds):
        plain.append(_train(model, opt, batches))
        with Monitor(model, optimizer=opt, **monitor_kwargs):
            monitored.append(_train(model, opt, batches))
        ratios.append(monitored[-1] / plain[-1])
    plain_ms = statistics.median(plain) / steps * 1e3
    monitored_ms = statistics.median(monitored) / steps * 1e3
    # the median of each round's ratio: a drift in machine load hits both sides of a pair
    return {"plain_ms": plain_ms, "monitored_ms": monitored_ms, "ratio": statistics.median(ratios)}


def probe_costs(build, batch: int, repeats: int = 5) -> dict:
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    loss_fn = nn.functional.cross_entropy
    out = {}
    for name, call in (
        ("ics_ms", lambda: internal_covariate_shift(model, loss_fn, x, y, opt)),
        ("smoothness_ms", lambda: loss_landscape(model, loss_fn, x, y, optimizer=opt)),
    ):
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        out[name] = (time.perf_counter() - start) / repeats * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=1000, help="training steps per run (1000: an MNIST epoch)"
    )
    parser.add_argument("--rounds", type=int, default=15, help="alternating runs per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--breakdown", action="store_true", help="where the MLP's overhead goes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for label, (build, batch) in MODELS.items():
        configs = (("default", {}), ("grad_every=1", {"grad_every": 1}), ("every=5", {"every": 5}))
        for config, kwargs in configs:
            steps = args.steps if label.startswith("mlp") else max(20, args.steps // 10)
            result = measure(build, batch, steps, args.rounds, **kwargs)
            rows.append({"model": label, "monitor": config, **result, **probe_costs(build, batch)})
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"{'model':<26}{'monitor':<15}{'plain ms':>10}{'monitored':>11}{'ratio':>7}"
        f"{'ICS ms':>9}{'smooth ms':>11}"
    )
    for r in rows:
        print(
            f"{r['model']:<26}{r['monitor']:<15}{r['plain_ms']:>10.3f}{r['monitored_ms']:>11.3f}"
            f"{r['ratio']:>7.3f}{r['ics_ms']:>9.2f}{r['smoothness_ms']:>11.2f}"
        )
    breakdown = []
    if args.breakdown:
        print(f"\nwhere the MLP's overhead goes ({args.steps} steps, {args.rounds} rounds)")
        print(f"{'monitor':<36}{'ratio':>7}{'added':>8}")
        previous = 1.0
        for label, kwargs in BREAKDOWN:
            result = measure(mlp, 60, args.steps, args.rounds, **kwargs)
            breakdown.append({"monitor": label, "kwargs": repr(kwargs), **result})
            print(f"{label:<36}{result['ratio']:>7.3f}{result['ratio'] - previous:>+8.3f}")
            previous = result["ratio"]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "monitor_overhead.json"
    meta = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "normlab": normlab.__version__,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "rounds": args.rounds,
    }
    report = {"meta": meta, "rows": rows} | ({"breakdown": breakdown} if breakdown else {})
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
