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
import torch.nn.functional as F
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


# Techniques that read the weights of the layer feeding them (Cross-Iteration BatchNorm:
# two weight-gradient passes of it per step): timed behind a 3x3 conv C -> C linked to
# them, pooling a full window, with that conv's own forward+backward time subtracted.
FED = ("cross_iteration_bn",)


def _fed(layer: nn.Module, channels: int) -> tuple[nn.Module, nn.Module]:
    """(conv then ``layer``, linked; the conv alone)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    return normlab.link_cross_iteration(nn.Sequential(conv, layer)), conv


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
    layers = {name: type(sides[name]["normlab"]).__name__ for name in names}
    for name in (n for n in FED if n in sides):  # "producer": the conv alone, subtracted
        sides[name]["normlab"], sides[name]["producer"] = _fed(sides[name]["normlab"], shape[1])
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
        ms = best[(name, "normlab")] - best.get((name, "producer"), 0.0)
        torch_ms = best.get((name, "torch"))
        rows.append(
            {
                "technique": name,
                "layer": layers[name],
                "fwd_bwd_ms": ms,
                "cost_vs_batchnorm": ms / unit,
                "torch_ms": torch_ms,
                "overhead_vs_torch": None if torch_ms is None else ms / torch_ms - 1,
            }
        )
    return rows


# Block-level forms (normlab.norms.forms) against torch's unfused composition, on the
# same number of values as (N, H*W, C) tokens: the fused form and the torch.nn norm.
FORMS = {
    "add_rmsnorm": (normlab.AddRMSNorm, nn.RMSNorm),
    "add_layernorm": (normlab.AddLayerNorm, nn.LayerNorm),
}


def _add_norm_step(module: nn.Module, fused: bool, x: torch.Tensor, r: torch.Tensor):
    """One forward+backward of a pre-norm block's add and norm, gradients from y and h."""

    def step() -> None:
        if fused:
            y, h = module(x, r)
        else:
            h = r + x
            y = module(h)
        (y.sum() + h.sum()).backward()

    return step


class _DiTAdaptive(nn.Module):
    """DiT's adaLN in torch.nn: the norm without affine, then modulate(norm(x), shift,
    scale) = norm(x) * (1 + scale) + shift with (shift, scale) = Linear(SiLU(c))."""

    def __init__(self, norm: type[nn.Module], dim: int) -> None:
        super().__init__()
        self.norm = norm(dim, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(c)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _adaptive_step(module: nn.Module, _fused: bool, x: torch.Tensor, r: torch.Tensor):
    """One forward+backward of y = m(x, c), c = r's first token: one conditioning
    vector of C per sample, as DiT's timestep and class embedding."""

    def step() -> None:
        module(x, r[:, 0]).sum().backward()

    return step


FORMS["adaptive_layernorm"] = (normlab.AdaptiveLayerNorm, lambda c: _DiTAdaptive(nn.LayerNorm, c))
FORMS["adaptive_rmsnorm"] = (normlab.AdaptiveRMSNorm, lambda c: _DiTAdaptive(nn.RMSNorm, c))
# How a form is timed where not as the add forms: the adaptive ones take (x, c).
STEPS = {"adaptive_layernorm": _adaptive_step, "adaptive_rmsnorm": _adaptive_step}


def run_forms(
    shape: tuple[int, ...], names: list[str], min_run_time: float, rounds: int, unit: float
) -> list[dict]:
    """The forms' rows; ``unit`` is torch.nn.BatchNorm2d's ms on ``shape``."""
    n, c, height, width = shape
    x, r = (torch.randn(n, height * width, c).requires_grad_() for _ in "xr")
    steps = {
        (name, side): STEPS.get(name, _add_norm_step)(cls(c), side == "normlab", x, r)
        for name in names
        for side, cls in zip(("normlab", "torch"), FORMS[name], strict=True)
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for key, step in steps.items():
            timer = benchmark.Timer(
                stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
            )
            ms = timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
            times.setdefault(key, []).append(ms)
    rows = []
    for name in names:
        ms, torch_ms = min(times[(name, "normlab")]), min(times[(name, "torch")])
        rows.append(
            {
                "form": name,
                "layer": FORMS[name][0].__name__,
                "fwd_bwd_ms": ms,
                "cost_vs_batchnorm": ms / unit,
                "torch_ms": torch_ms,
                "overhead_vs_torch": ms / torch_ms - 1,
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
    parser.add_argument(
        "--forms", nargs="*", choices=sorted(FORMS), help="block-level forms (default: all)"
    )
    args = parser.parse_args()
    names = args.only or [n for n in normlab.available() if n != "none"]
    if "batchnorm" not in names:
        names = ["batchnorm", *names]

    rows = run(tuple(args.shape), names, args.min_run_time, args.rounds)
    print(
        f"CPU fwd+bwd, {torch.get_num_threads()} threads, float32, shape {tuple(args.shape)}; "
        "cost = ms / torch.nn.BatchNorm2d's ms"
    )
    print(f"{'technique':<20}{'layer':<25}{'ms':>9}{'cost':>7}{'torch ms':>10}{'overhead':>10}")
    for r in rows:
        torch_ms = "" if r["torch_ms"] is None else f"{r['torch_ms']:.2f}"
        overhead = "" if r["overhead_vs_torch"] is None else f"{r['overhead_vs_torch']:+.1%}"
        print(
            f"{r['technique']:<20}{r['layer']:<25}{r['fwd_bwd_ms']:>9.2f}"
            f"{r['cost_vs_batchnorm']:>7.2f}{torch_ms:>10}{overhead:>10}"
        )
    unit = next(r["torch_ms"] for r in rows if r["technique"] == "batchnorm")
    forms = list(FORMS) if args.forms is None else args.forms
    form_rows = run_forms(tuple(args.shape), forms, args.min_run_time, args.rounds, unit)
    if form_rows:
        print("block-level forms, (N, H*W, C) tokens; torch = the add, then the torch.nn norm")
        print("(adaptive: torch = the torch.nn norm, then DiT's modulate; c is (N, C))")
    for r in form_rows:
        print(
            f"{r['form']:<20}{r['layer']:<25}{r['fwd_bwd_ms']:>9.2f}"
            f"{r['cost_vs_batchnorm']:>7.2f}{r['torch_ms']:>10.2f}{r['overhead_vs_torch']:>+10.1%}"
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
    result = {"meta": meta, "rows": rows, "forms": form_rows}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
