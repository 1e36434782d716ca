"""Compile every kernel variant for an H100 (sm_90) without a GPU: ``python tests/compile_kernels.py``.

Triton's interpreter (how CI runs the kernels) executes the Python body and
never compiles it, so code the GPU compiler rejects would pass the
interpreted tests. This script lowers each kernel, for each constexpr branch,
to a cubin with the ptxas bundled in the triton wheel; test_kernels.py runs
it in a subprocess (it needs TRITON_INTERPRET unset). Prints one line per
failure and exits 1 if any.
"""

from __future__ import annotations

import inspect
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET=1"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from normlab.kernels import batch, group, layer, modulated, residual  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
F32 = "*fp32"


def build(kernel, pointers: dict[str, str], scalars_f32: tuple[str, ...], constexprs: dict) -> None:
    """Compile ``kernel``: named pointer types, float scalars, the rest i32 scalars."""
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        else:
            signature[name] = "fp32" if name in scalars_f32 else "i32"
    constants = {(names.index(k),): v for k, v in constexprs.items()}
    triton.compile(ASTSource(kernel, signature, constants), target=HOPPER, options={"num_warps": 8})


def variants():
    bf16 = "*bf16"
    stats = {"Mean": F32, "Rstd": F32}
    rows = {"X": bf16, "Y": bf16, "W": bf16, "B": bf16, **stats}
    rows_bwd = {"X": bf16, "DY": bf16, "DX": bf16, "W": bf16, **stats, "DW": F32, "DB": F32}
    sums = {"X": bf16, "DY": bf16, "W": bf16, **stats, "C1": F32, "C2": F32}
    columns = {**rows_bwd, "C1": F32, "C2": F32}
    for rms in (False, True):
        for affine in (True, False):
            flags = {"RMS": rms, "HAS_W": affine, "HAS_B": affine and not rms}
            for single, bm, bn in ((True, 4, 1024), (False, 1, 4096)):
                tiles = {"BLOCK_M": bm, "BLOCK_N": bn, "SINGLE": single}
                yield layer._row_norm_fwd, rows, ("eps",), {**flags, **tiles}
            yield layer._row_norm_bwd, rows_bwd, (), {**flags, "BLOCK_M": 4, "BLOCK_N": 1024}
            yield layer._row_norm_bwd_sums, sums, (), {"RMS": rms, "HAS_W": affine, "BLOCK_N": 4096}
            yield layer._row_norm_bwd_columns, columns, (), {**flags, "BLOCK_N": 4096}
    for single, bs in ((True, 512), (False, 256)):
        tiles = {"BLOCK_C": 8, "BLOCK_S": bs, "SINGLE": single}
        yield group._group_norm_fwd, rows, ("eps",), {"HAS_W": True, "HAS_B": True, **tiles}
        yield group._group_norm_bwd, rows_bwd, (), {"HAS_W": True, **tiles}
    moments = {"X": bf16, "PMean": F32, "PM2": F32, "PCount": F32}
    grads = {"X": bf16, "DY": bf16, "Mean": F32, "Spread": F32, "PSum": F32}
    apply = {"X": bf16, "Y": bf16, "Mean": F32, "Spread": F32, "W": bf16, "B": bf16}
    dx = {"X": bf16, "DY": bf16, "DX": bf16, "Mean": F32, "Spread": F32, "W": bf16, "Sums": F32}
    fused_fwd = {**apply, "Rstd": F32, "RunMean": F32, "RunVar": F32}
    fused_bwd = {**dx, "DW": F32, "DB": F32}
    for planar, bc, br in ((True, 2, 1024), (False, 128, 16)):
        tiles = {"PLANAR": planar, "BLOCK_C": bc, "BLOCK_R": br}
        yield batch._bn_partial_moments, moments, (), tiles
        for training in (True, False):
            flags = {"FROM_VAR": not training, **tiles}
            yield batch._bn_partial_grads, grads, ("eps",), flags
            yield batch._bn_apply, apply, ("eps",), {**flags, "HAS_W": True, "HAS_B": True}
            yield batch._bn_dx, dx, ("eps",), {**flags, "HAS_W": True, "TRAINING": training}
            yield batch._bn_backward_fused, fused_bwd, ("eps",), {
                **flags, "HAS_W": True, "TRAINING": training,
            }  # fmt: skip
        fused_flags = {"UPDATE": True, "HAS_W": True, "HAS_B": True, **tiles}
        yield batch._bn_forward_fused, fused_fwd, ("eps", "momentum"), fused_flags
    final = {"PMean": F32, "PM2": F32, "PCount": F32, "Mean": F32, "Rstd": F32}
    final |= {"RunMean": F32, "RunVar": F32}
    yield batch._bn_finalize, final, ("eps", "momentum"), {"UPDATE": True, "BLOCK_C": 128}
    # modulated (adaLN) norms: bfloat16 x, shift and scale
    mod_fwd = {**rows, "Shift": bf16, "Scale": bf16}
    mod_bwd = {**rows_bwd, "Scale": bf16, "B": bf16, "DShift": F32, "DScale": F32}
    for rms in (False, True):
        for affine in (True, False):
            flags = {"RMS": rms, "HAS_W": affine, "HAS_B": affine and not rms}
            tiles = {"BLOCK_M": 4, "BLOCK_N": 1024}
            yield modulated._modulated_fwd, mod_fwd, ("eps",), {**flags, **tiles}
            yield modulated._modulated_bwd, mod_bwd, (), {**flags, **tiles}
    # residual add + norm: a bfloat16 x with a float32 residual stream (h, dh, dresidual)
    add_fwd = {"X": bf16, "R": F32, "Y": bf16, "H": F32, "W": bf16, "B": bf16, **stats}
    add_bwd = {"H": F32, "DY": bf16, "DH": F32, "DX": bf16, "DR": F32, "W": bf16, **stats}
    add_bwd |= {"DW": F32, "DB": F32}
    for rms in (False, True):
        for full in (True, False):  # residual, affine, dh and dresidual, or none of them
            flags = {"RMS": rms, "HAS_W": full, "HAS_B": full and not rms}
            tiles = {"BLOCK_M": 4, "BLOCK_N": 1024}
            yield residual._add_norm_fwd, add_fwd, ("eps",), {**flags, "HAS_R": full, **tiles}
            grads = {"HAS_DH": full, "HAS_DR": full}
            yield residual._add_norm_bwd, add_bwd, (), {**flags, **grads, **tiles}


def main() -> int:
    failures = 0
    for kernel, pointers, floats, constexprs in variants():
        try:
            build(kernel, pointers, floats, constexprs)
        except Exception as exc:  # report every failing variant, not just the first
            failures += 1
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            print(f"{kernel.fn.__name__} {constexprs}: {type(exc).__name__}: {first}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
