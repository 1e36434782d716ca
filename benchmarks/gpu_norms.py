"""normlab's Triton kernels against torch eager, torch.compile and Liger on a GPU.

Normalization is memory-bound, so every result is given as achieved GB/s and
as a fraction of the card's copy bandwidth, measured first in the same run
(copy of a 1 GiB buffer; bytes read + written). Byte convention
(../shared/PERFORMANCE.md): forward moves 2 * numel * itemsize, backward
3 * numel * itemsize. Timing: triton.testing.do_bench, median, after warm-up.
Before timing, each normlab case is checked against float64 torch
(relative error of y and dx; ``err`` column).

Ops and shapes: LayerNorm and RMSNorm on M x N with M * N = 2^27 for N in
256 .. 65536, GroupNorm(32) and BatchNorm2d (training forward/backward, eval
forward) on (64, 256, 56, 56) and (8, 512, 64, 64), NCHW and channels_last,
and a small case of 2^16 elements per op; bf16 and fp32. The residual-add forms
(add_rmsnorm, add_layernorm: y, h = norm(x + r), h) run on the LayerNorm shapes against
torch's add then F.rms_norm / F.layer_norm (and Liger's fused add + RMSNorm, or its
RMSNorm after the add); they move 4 * numel * itemsize each way (read x, r, write y, h;
read h, dy, dh, write dx = dr). Rows wider than 16384 take the native backend.
The modulated norms (adaln, adarms: y = norm(x) * (1 + scale) + shift, DiT's adaLN,
shift and scale one row per sample) run on DiT-like (B, T, D) shapes against
F.layer_norm / F.rms_norm then x * (1 + scale) + shift in torch ops, with gradients
for x, shift and scale; bytes as the row norms' (shift and scale are only B x D).

    python benchmarks/gpu_norms.py                      # everything, ~5 min on an H100
    python benchmarks/gpu_norms.py --ops layernorm --dtypes bf16 --no-compile

Prints one table and writes JSON to benchmarks/results/gpu_norms-<card>.json.
Liger is compared when ``liger_kernel`` is importable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import normlab.functional as NF

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Targets as fractions of copy bandwidth (../shared/PERFORMANCE.md).
TARGETS = {
    ("layernorm", "fwd"): 0.92,
    ("layernorm", "bwd"): 0.85,
    ("rmsnorm", "fwd"): 0.92,
    ("rmsnorm", "bwd"): 0.85,
    ("groupnorm", "fwd"): 0.80,
    ("groupnorm", "bwd"): 0.80,
    ("batchnorm", "fwd"): 0.60,
    ("batchnorm", "bwd"): 0.55,
    ("batchnorm", "eval"): 0.90,
    # residual add + norm: one pass each way, as the row norms (no published target)
    ("add_layernorm", "fwd"): 0.92,
    ("add_layernorm", "bwd"): 0.85,
    ("add_rmsnorm", "fwd"): 0.92,
    ("add_rmsnorm", "bwd"): 0.85,
}
# Ops on rows of the last axis; the add forms take a residual and return (y, h).
ROW_OPS = ("layernorm", "rmsnorm", "add_layernorm", "add_rmsnorm")
ADD_OPS = ("add_layernorm", "add_rmsnorm")
# (forward, backward) bytes moved per element, in units of the itemsize. The add forms
# read x and r and write y and h; backward reads h, dy and dh and writes dx (= dr).
BYTES = {"add_layernorm": (4, 4), "add_rmsnorm": (4, 4)}
ROW_SHAPES = [
    (524288, 256),
    (131072, 1024),
    (32768, 4096),
    (16384, 8192),
    (4096, 32768),
    (2048, 65536),
    (64, 1024),
]
IMAGE_SHAPES = [(64, 256, 56, 56), (8, 512, 64, 64), (1, 64, 32, 32)]
# --smoke: the script's own check, on the CPU under Triton's interpreter (no timings worth reading).
SMOKE_ROW_SHAPES = [(8, 64), (3, 300)]
SMOKE_IMAGE_SHAPES = [(2, 64, 3, 3)]
# Modulated (adaLN) norms on (B, T, D): DiT-XL/2 at 256 and 512 px, a wide MMDiT-like
# block, and a small case; per-sample shift and scale (B, D).
MOD_OPS = ("adaln", "adarms")
MOD_SHAPES = [(256, 256, 1152), (32, 1024, 1152), (4, 4096, 3072), (2, 16, 1152)]
SMOKE_MOD_SHAPES = [(2, 8, 64), (2, 3, 300)]
TARGETS |= {(op, d): TARGETS[("layernorm", d)] for op in MOD_OPS for d in ("fwd", "bwd")}
DEVICE = "cuda"


def _bench(fn, grad_to_none=None) -> float:
    """Median milliseconds of ``fn``: CUDA events on the GPU, a wall clock in --smoke."""
    if DEVICE == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, grad_to_none=grad_to_none, return_mode="median")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy of 1 GiB (read + written bytes)."""
    src = torch.empty(2**28 if DEVICE == "cuda" else 2**22, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def _liger():
    try:
        from liger_kernel.transformers.group_norm import LigerGroupNorm
        from liger_kernel.transformers.layer_norm import LigerLayerNorm
        from liger_kernel.transformers.rms_norm import LigerRMSNorm
    except ImportError:
        return None
    liger = {"layernorm": LigerLayerNorm, "rmsnorm": LigerRMSNorm, "groupnorm": LigerGroupNorm}
    try:  # Liger's own fused add + RMSNorm where this version has it
        from liger_kernel.transformers.fused_add_rms_norm import LigerFusedAddRMSNorm

        liger["add_rmsnorm"] = lambda n: LigerFusedAddRMSNorm(n, eps=1e-5)
    except ImportError:
        liger["add_rmsnorm"] = lambda n: _AddThen(LigerRMSNorm(n, eps=1e-5, in_place=False))
    return liger


class _AddThen(torch.nn.Module):
    """An unfused add-norm: h = x + r, then (norm(h), h)."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x + r
        return self.norm(h), h


def _added(norm: Callable) -> Callable:
    """torch's unfused add-norm as a function of (x, r, *params): h = x + r, then
    (norm(h, *params), h)."""

    def fn(x, r, *params):
        h = x + r
        return norm(h, *params), h

    return fn


def _pair(op: str, shape, dtype, training: bool) -> tuple[Callable, Callable]:
    """normlab's (backend="triton") and torch's function of (x, *params) for ``op``."""
    n = shape[-1]
    if op == "layernorm":
        return (
            lambda x, w, b: NF.layer_norm(x, (n,), w, b, 1e-5, backend="triton"),
            lambda x, w, b: F.layer_norm(x, (n,), w, b, 1e-5),
        )
    if op == "rmsnorm":
        return (
            lambda x, w: NF.rms_norm(x, (n,), w, 1e-5, backend="triton"),
            lambda x, w: F.rms_norm(x, (n,), w, 1e-5),
        )
    if op == "add_layernorm":
        return (
            lambda x, r, w, b: NF.add_layer_norm(x, r, (n,), w, b, 1e-5, backend="triton"),
            _added(lambda h, w, b: F.layer_norm(h, (n,), w, b, 1e-5)),
        )
    if op == "add_rmsnorm":
        return (
            lambda x, r, w: NF.add_rms_norm(x, r, (n,), w, 1e-5, backend="triton"),
            _added(lambda h, w: F.rms_norm(h, (n,), w, 1e-5)),
        )
    if op == "adaln":  # torch: DiT's modulate(norm(x), shift, scale)
        return (
            lambda x, h, s: NF.modulated_layer_norm(x, h, s, eps=1e-5, backend="triton"),
            lambda x, h, s: F.layer_norm(x, (n,), eps=1e-5) * (1 + s[:, None]) + h[:, None],
        )
    if op == "adarms":
        return (
            lambda x, h, s: NF.modulated_rms_norm(x, h, s, eps=1e-5, backend="triton"),
            lambda x, h, s: F.rms_norm(x, (n,), eps=1e-5) * (1 + s[:, None]) + h[:, None],
        )
    if op == "groupnorm":
        return (
            lambda x, w, b: NF.group_norm(x, 32, w, b, 1e-5, backend="triton"),
            lambda x, w, b: F.group_norm(x, 32, w, b, 1e-5),
        )
    c = shape[1]  # running statistics in the model's dtype, as after model.to(dtype)
    rm = torch.zeros(c, device=DEVICE, dtype=dtype)
    rv = torch.ones(c, device=DEVICE, dtype=dtype)
    return (
        lambda x, w, b: NF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, backend="triton"),
        lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5),
    )


def _case(op: str, shape, dtype, impl: str, liger, training: bool):
    """(function of x, its parameters) for one implementation of ``op`` on ``shape``."""
    if op in MOD_OPS:  # shift and scale (B, D): inputs with a gradient, no affine
        params = [
            (0.1 * torch.randn(shape[0], shape[-1], device=DEVICE, dtype=dtype)).requires_grad_()
            for _ in range(2)
        ]
        fn = _pair(op, shape, dtype, training)[0 if impl == "normlab" else 1]
        fn = torch.compile(fn) if impl == "torch.compile" else fn
        return (lambda x: fn(x, *params)), params
    features = shape[-1] if op in ROW_OPS else shape[1]
    # the add forms' residual: an input with a gradient, passed first among the params
    res = [torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=True)]
    res = res if op in ADD_OPS else []
    if impl == "liger":
        if op == "groupnorm":
            module = liger[op](features, 32, eps=1e-5, bias=True)
        elif op == "layernorm":
            module = liger[op](features, eps=1e-5, bias=True)
        elif op == "add_rmsnorm":
            module = liger[op](features)
        else:  # out of place, as every other implementation here
            module = liger[op](features, eps=1e-5, in_place=False)
        module = module.to(DEVICE, dtype)
        return (lambda x: module(x, *res)), [*res, *module.parameters()]
    w = torch.rand(features, device=DEVICE, dtype=dtype) + 0.5
    b = torch.rand(features, device=DEVICE, dtype=dtype) - 0.5
    params = [*res, w] if op in ("rmsnorm", "add_rmsnorm") else [*res, w, b]
    ours, theirs = _pair(op, shape, dtype, training)
    fn = ours if impl == "normlab" else theirs
    if impl == "torch.compile":
        fn = torch.compile(fn)
    return (lambda x: fn(x, *params)), params


def _exact(op: str, x: torch.Tensor, params, training: bool) -> torch.Tensor | tuple:
    p = [t.double() for t in params]
    n = x.shape[-1]
    x = x.double()
    if op in ADD_OPS:  # (y, h) from h = x + r
        h = x + p[0]
        return _exact(op.removeprefix("add_"), h, params[1:], training), h
    if op in MOD_OPS:  # norm(x) * (1 + scale) + shift, (B, D) over the tokens
        rms = op == "adarms"
        norm = F.rms_norm(x, (n,), eps=1e-5) if rms else F.layer_norm(x, (n,), eps=1e-5)
        return norm * (1 + p[1][:, None]) + p[0][:, None]
    if op == "layernorm":
        return F.layer_norm(x, (n,), *p, 1e-5)
    if op == "rmsnorm":
        return F.rms_norm(x, (n,), *p, 1e-5)
    if op == "groupnorm":
        return F.group_norm(x, 32, *p, 1e-5)
    rm = torch.zeros(x.shape[1], device=x.device, dtype=torch.float64)
    rv = torch.ones_like(rm)
    return F.batch_norm(x, rm, rv, *p, training, 0.1, 1e-5)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def measure(fn, params, x: torch.Tensor, backward: bool) -> tuple[float, float | None]:
    """(forward ms, backward ms); backward None when not asked for."""
    fwd = _bench(lambda: fn(x))
    if not backward:
        return fwd, None
    xg = x.detach().requires_grad_()
    ys = _outputs(fn(xg))
    dys = [torch.randn_like(y) for y in ys]
    backward = lambda: torch.autograd.backward(ys, dys, retain_graph=True)  # noqa: E731
    bwd = _bench(backward, grad_to_none=[xg, *params])
    return fwd, bwd


def _outputs(out) -> list[torch.Tensor]:
    """An op's outputs as a list: [y, h] for the add forms, [y] for the others."""
    return list(out) if isinstance(out, tuple) else [out]


def check(op, fn, params, x, training) -> float:
    """Worst relative error of the outputs (y; h for the add forms) and of dx (from
    gradients of every output) against float64 torch, NaN-poisoned outputs first."""
    torch.empty(x.numel() * 4, device=DEVICE, dtype=x.dtype).fill_(float("nan"))
    xg = x.detach().clone().requires_grad_()
    ys = _outputs(fn(xg))
    dys = [torch.randn_like(y) for y in ys]
    xe = x.detach().double().requires_grad_()
    yes = _outputs(_exact(op, xe, params, training))
    err = max(_rel(y, ye.detach()) for y, ye in zip(ys, yes, strict=True))
    if training or op != "batchnorm":
        (dx,) = torch.autograd.grad(ys, xg, dys)
        (dxe,) = torch.autograd.grad(yes, xe, [dy.double() for dy in dys])
        err = max(err, _rel(dx, dxe))
    return err


def cases(ops, dtypes, smoke: bool):
    for dtype_name in dtypes:
        for op in ops:
            if op in MOD_OPS:
                for shape in SMOKE_MOD_SHAPES if smoke else MOD_SHAPES:
                    yield op, "x".join(map(str, shape)), shape, dtype_name, "", True
                continue
            if op in ROW_OPS:
                for m, n in SMOKE_ROW_SHAPES if smoke else ROW_SHAPES:
                    yield op, f"{m}x{n}", (m, n), dtype_name, "", True
            else:
                for shape in SMOKE_IMAGE_SHAPES if smoke else IMAGE_SHAPES:
                    for layout in ("nchw", "channels_last"):
                        label = "x".join(map(str, shape))
                        yield op, label, shape, dtype_name, layout, True
                        if op == "batchnorm":
                            yield op, label, shape, dtype_name, layout, False


def run(args, save: Callable[[dict], None]) -> dict:
    """Every case; ``save`` gets the result so far after each case (a cut-off run keeps it)."""
    liger = _liger()
    impls = (
        ["normlab", "torch"]
        + (["torch.compile"] if args.compile else [])
        + (["liger"] if liger else [])
    )
    if args.compile:
        # measure() replays one graph's backward (retain_graph=True); AOTAutograd's donated
        # buffers (torch >= 2.5) forbid that once a shape is compiled dynamically.
        torch._functorch.config.donated_buffer = False
    copy = copy_bandwidth()
    card = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke, interpreted)"
    print(f"{card}: copy bandwidth {copy:.0f} GB/s; implementations: {', '.join(impls)}")
    rows = []
    result = {
        "card": card,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "copy_gbs": copy,
        "rows": rows,
    }
    for op, label, shape, dtype_name, layout, training in cases(args.ops, args.dtypes, args.smoke):
        dtype = DTYPES[dtype_name]
        x = torch.randn(shape, device=DEVICE, dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        item = x.element_size()
        fwd_bytes, bwd_bytes = BYTES.get(op, (2, 3))
        for impl in impls:
            if impl == "liger" and op not in liger:
                continue
            row = {"op": op, "shape": label, "dtype": dtype_name, "layout": layout or "rows",
                   "mode": "train" if training else "eval", "impl": impl}  # fmt: skip
            try:
                fn, params = _case(op, shape, dtype, impl, liger, training)
                if impl == "normlab":
                    row["rel_err"] = check(op, fn, params, x, training)
                fwd, bwd = measure(fn, params, x, backward=training)
            except Exception as exc:  # a library that cannot run this case: say so, go on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                rows.append(row)
                continue
            row["fwd_ms"], row["fwd_gbs"] = fwd, fwd_bytes * x.numel() * item / fwd / 1e6
            row["fwd_frac"] = row["fwd_gbs"] / copy
            if bwd is not None:
                row["bwd_ms"], row["bwd_gbs"] = bwd, bwd_bytes * x.numel() * item / bwd / 1e6
                row["bwd_frac"] = row["bwd_gbs"] / copy
            rows.append(row)
            print(f"  {op} {label} {dtype_name} {layout} {row['mode']} {impl}: done", flush=True)
        _judge(rows)
        save(result)
    return result


def _judge(rows: list[dict]) -> None:
    """Mark each normlab row: target met, and fastest of all implementations."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["shape"], r["dtype"], r["layout"], r["mode"]), []).append(r)
    for (op, *_, mode), group in groups.items():
        ours = next((r for r in group if r["impl"] == "normlab" and "error" not in r), None)
        if ours is None:
            continue
        for direction in ("fwd", "bwd"):
            if f"{direction}_ms" not in ours:
                continue
            key = (op, "eval" if mode == "eval" else direction)
            best_other = min(
                (r[f"{direction}_ms"] for r in group if r is not ours and f"{direction}_ms" in r),
                default=math.inf,
            )
            ours[f"{direction}_target"] = TARGETS[key]
            ours[f"{direction}_met"] = ours[f"{direction}_frac"] >= TARGETS[key]
            ours[f"{direction}_fastest"] = ours[f"{direction}_ms"] <= best_other


def print_table(result: dict) -> None:
    head = (
        f"{'op':9} {'shape':16} {'dtype':5} {'layout':13} {'mode':5} {'impl':13} "
        f"{'fwd ms':>8} {'frac':>5} {'bwd ms':>8} {'frac':>5}  notes"
    )
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        if "error" in r:
            notes = r["error"]
            fwd = bwd = ""
        else:
            fwd = f"{r['fwd_ms']:8.3f} {r['fwd_frac']:5.2f}"
            bwd = f"{r['bwd_ms']:8.3f} {r['bwd_frac']:5.2f}" if "bwd_ms" in r else " " * 14
            notes = []
            if "rel_err" in r:
                notes.append(f"err {r['rel_err']:.1e}")
            for d in ("fwd", "bwd"):
                if f"{d}_met" in r:
                    notes.append(
                        f"{d} {'ok' if r[f'{d}_met'] else 'MISS'} (>= {r[f'{d}_target']:.2f})"
                    )
                    if not r[f"{d}_fastest"]:
                        notes.append(f"{d} NOT FASTEST")
            notes = ", ".join(notes)
        case = f"{r['op']:9} {r['shape']:16} {r['dtype']:5} {r['layout']:13} {r['mode']:5}"
        print(f"{case} {r['impl']:13} {fwd:14} {bwd:14}  {notes}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ops",
        nargs="+",
        default=[
            "layernorm",
            "rmsnorm",
            "groupnorm",
            "batchnorm",
            "add_rmsnorm",
            "add_layernorm",
            *MOD_OPS,
        ],
    )
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip torch.compile"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: benchmarks/results/gpu_norms-<card>.json)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check the script itself on the CPU (Triton's interpreter, tiny shapes, no timings)",
    )
    args = parser.parse_args()
    if args.smoke:
        global DEVICE
        DEVICE = "cpu"
        args.compile = False
        os.environ["TRITON_INTERPRET"] = "1"  # before normlab.kernels is first imported
    elif not torch.cuda.is_available():
        raise SystemExit(
            "gpu_norms.py needs a CUDA GPU (--smoke checks the script on the CPU; the kernels'"
            " correctness on CPU is tests/test_kernels.py)"
        )
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu-smoke"
    card = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = args.out or Path(__file__).parent / "results" / f"gpu_norms-{card}.json"
    result = run(args, lambda partial: out.write_text(json.dumps(partial, indent=1)))
    print_table(result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
