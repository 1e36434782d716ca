"""The cost of synchronizing BatchNorm statistics across processes.

Two (``--nproc``) CPU processes on gloo train the same small CNN under
DistributedDataParallel, once with per-process BatchNorm and once with
normlab.SyncBatchNorm, and report the median time per training step.

    python benchmarks/sync_batchnorm.py [--nproc 2] [--steps 60] [--batch 32]

Writes the numbers as JSON to benchmarks/results/sync_batchnorm.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import normlab
from normlab import models


def _worker(rank: int, nproc: int, init: str, sync: bool, steps: int, batch: int, out: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=nproc)
    try:
        torch.manual_seed(0)
        model = models.cnn(1, 10, channels=(16, 32, 64), norm="batchnorm")
        if sync:
            normlab.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x = torch.randn(batch, 1, 28, 28)
        y = torch.randint(0, 10, (batch,))
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - start)
        if rank == 0:
            Path(out).write_text(json.dumps(times[5:]))
    finally:
        dist.destroy_process_group()


def measure(nproc: int, sync: bool, steps: int, batch: int) -> float:
    """Median ms per training step on rank 0."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        init, out = f"file://{tmp}/store", f"{tmp}/times.json"
        args = (nproc, init, sync, steps, batch, out)
        procs = [context.Process(target=_worker, args=(r, *args)) for r in range(nproc)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return statistics.median(json.loads(Path(out).read_text())) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32, help="per-process batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results = {"batchnorm": [], "syncbatchnorm": []}
    for _ in range(args.rounds):  # alternate, so load drift hits both
        results["batchnorm"].append(measure(args.nproc, False, args.steps, args.batch))
        results["syncbatchnorm"].append(measure(args.nproc, True, args.steps, args.batch))
    bn, sync = (statistics.median(results[k]) for k in ("batchnorm", "syncbatchnorm"))
    print(f"{args.nproc} processes (gloo, 1 thread each), CNN 16-32-64, batch {args.batch} each")
    print(f"{'norm':<16}{'ms/step':>10}")
    print(f"{'batchnorm':<16}{bn:>10.2f}\n{'syncbatchnorm':<16}{sync:>10.2f}")
    print(f"synchronization costs {sync / bn - 1:+.1%} per step")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, **vars(args)}
    meta["out"] = str(meta["out"])
    record = {
        "meta": meta,
        "ms_per_step": {"batchnorm": bn, "syncbatchnorm": sync},
        "runs": results,
    }
    path = args.out / "sync_batchnorm.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
