"""The Triton kernels against float64 torch.nn.functional, forward and backward.

On a machine without a GPU the kernels run under Triton's interpreter
(TRITON_INTERPRET=1, set in conftest.py) on small shapes; with a GPU the same
tests run on CUDA tensors, and the GPU-only tests add large shapes. Every
output buffer the kernels allocate is filled with NaN first (``poisoned``), so
an element a kernel fails to write shows up as an error.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package")

import normlab  # noqa: E402
from normlab import functional as NF  # noqa: E402
from normlab import kernels  # noqa: E402
from normlab.kernels import _launch, batch, group, layer  # noqa: E402

# Invalid arithmetic even in masked-off lanes (0/0 under the interpreter) is a bug here.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

GPU = torch.cuda.is_available()
# Triton's CPU interpreter before 3.9 cannot take loop bounds computed from program_id
# (the kernels compile and run on GPUs with 3.6: tests/compile_kernels.py).
INTERPRETER_OK = tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 9)
if _launch.interpreting() and not INTERPRETER_OK:
    pytest.skip(
        f"the kernels' CPU tests need triton >= 3.9's interpreter, found {triton.__version__}",
        allow_module_level=True,
    )
DEVICE = "cuda" if GPU else "cpu"
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Relative error (max |a - b| / max |b|) against float64, per input dtype.
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty / empty_like hand out NaN-filled memory while the kernels run."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


@pytest.fixture
def streaming(monkeypatch):
    """A tiny register tile, so rows and groups take the multi-pass (streaming) path."""
    for module in (layer, group):
        monkeypatch.setattr(module, "MAX_TILE", 16)


def _inputs(shape, dtype, seed, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift
    return x.to(dtype), torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _params(n, dtype, seed, affine=True):
    if not affine:
        return None, None
    gen = torch.Generator().manual_seed(seed + 1)
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    b = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    return w.to(dtype), b.to(dtype)


def _grads(fn, x, dy, params):
    """fn(x, *params) and the gradients of sum(fn * dy) for x and every tensor param."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, *params) if t is not None]
    it = iter(leaves[1:])
    args = [next(it) if p is not None else None for p in params]
    y = fn(leaves[0], *args)
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    return [y, *grads]


def _check(ours, exact, dtype, what, same=None):
    """Each of ``ours`` within TOL of float64 ``exact``; ``same``: torch in ``dtype``.

    Where the problem is ill-conditioned (a group of two nearly equal values),
    float32 itself loses digits: then ours may be off by up to twice what
    torch's own float32 kernel is.
    """
    for i, (a, b) in enumerate(zip(ours, exact, strict=True)):
        assert a.dtype == dtype, f"{what}: dtype of output {i}"
        assert torch.isfinite(a).all(), f"{what}: output {i} has NaN/inf (unwritten memory?)"
        err = rel_err(a.cpu(), b)
        allowed = TOL[dtype] + (0.0 if same is None else 2 * rel_err(same[i], b))
        assert err <= allowed, f"{what}: output {i}: relative error {err:.2e} > {allowed:.2e}"


def _compare(ours_fn, torch_fn, x, dy, params, what):
    """ours_fn on the device against torch_fn in float64 (and in float32, for its error)."""
    ours = _grads(ours_fn, _on(x), _on(dy), [_on(p) for p in params])
    exact = _grads(torch_fn, x.double(), dy.double(), [_double(p) for p in params])
    same = _grads(torch_fn, x, dy, params) if x.dtype == torch.float32 else None
    _check(ours, exact, x.dtype, what, same)


def _double(t):
    return None if t is None else t.double()


def _on(t):
    return None if t is None else t.to(DEVICE)


# --- LayerNorm and RMSNorm ----------------------------------------------------------

ROW_SHAPES = [(1, 1), (3, 1), (1, 64), (4, 33), (2, 3, 100), (5, 257)]


def _row_case(shape, dtype, rms, affine, seed):
    n = shape[-1]
    x, dy = _inputs(shape, dtype, seed, scale=2.0, shift=1.0)
    w, b = _params(n, dtype, seed, affine)
    what = f"{'rms' if rms else 'layer'}_norm {shape} {dtype}"
    if rms:
        ours, theirs = layer.rms_norm, F.rms_norm
        _compare(
            lambda x, w: ours(x, (n,), w, 1e-5),
            lambda x, w: theirs(x, (n,), w, 1e-5),
            x,
            dy,
            [w],
            what,
        )
    else:
        ours, theirs = layer.layer_norm, F.layer_norm
        _compare(
            lambda x, w, b: ours(x, (n,), w, b, 1e-5), lambda x, w, b: theirs(x, (n,), w, b, 1e-5),
            x, dy, [w, b], what,
        )  # fmt: skip


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_row_norms_match_float64(poisoned, shape, dtype, rms):
    _row_case(shape, dtype, rms, affine=True, seed=len(shape) * 100 + shape[-1])


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_row_norms_without_affine(poisoned, rms):
    _row_case((6, 40), torch.float32, rms, affine=False, seed=5)


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 17), (5, 70)], ids=str)
def test_row_norms_streamed_rows_match_float64(poisoned, streaming, shape, dtype, rms):
    """Rows longer than a tile: several passes per row, partial dgamma rows added to."""
    _row_case(shape, dtype, rms, affine=True, seed=shape[-1])


def test_layer_norm_over_several_trailing_axes(poisoned):
    x, dy = _inputs((3, 4, 5), torch.float32, 1)
    w, b = _params(20, torch.float32, 1)
    w, b = w.view(4, 5), b.view(4, 5)
    ours = _grads(
        lambda x, w, b: layer.layer_norm(x, (4, 5), w, b), _on(x), _on(dy), [_on(w), _on(b)]
    )
    exact = _grads(
        lambda x, w, b: F.layer_norm(x, (4, 5), w, b),
        x.double(),
        dy.double(),
        [w.double(), b.double()],
    )
    _check(ours, exact, torch.float32, "layer_norm over (4, 5)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_rms_norm_default_eps_is_torchs(poisoned, dtype):
    """eps=None is float32's epsilon for float32 and half inputs alike, as torch's
    F.rms_norm computes it (in float32), not the half dtype's far larger one."""
    x, _ = _inputs((2, 8), dtype, 3, scale=1e-4)
    exact = F.rms_norm(x.double(), (8,), eps=torch.finfo(torch.float32).eps)
    assert rel_err(F.rms_norm(x, (8,)), exact) <= TOL[dtype]  # torch's own, the oracle's eps
    assert rel_err(layer.rms_norm(_on(x), (8,)).cpu(), exact) <= TOL[dtype]


# --- GroupNorm ---------------------------------------------------------------------

GROUP_CASES = [
    ((2, 6, 5, 3), 3),
    ((3, 4), 2),
    ((1, 8, 7), 1),
    ((2, 12, 3, 3), 12),
    ((2, 4, 1, 1), 2),
]


def _group_case(shape, groups, dtype, channels_last, seed, affine=True):
    x, dy = _inputs(shape, dtype, seed, scale=3.0, shift=-1.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = _params(shape[1], dtype, seed, affine)
    ours = _grads(
        lambda x, w, b: group.group_norm(x, groups, w, b, 1e-5), _on(x), _on(dy), [_on(w), _on(b)]
    )
    assert ours[0].stride() == ours[1].stride() == x.stride(), "output layout"
    _compare(
        lambda x, w, b: group.group_norm(x, groups, w, b, 1e-5),
        lambda x, w, b: F.group_norm(x, groups, w, b, 1e-5),
        x, dy, [w, b], f"group_norm {shape} G={groups} {dtype} cl={channels_last}",
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "groups"), GROUP_CASES, ids=str)
def test_group_norm_matches_float64(poisoned, shape, groups, dtype):
    _group_case(shape, groups, dtype, channels_last=False, seed=sum(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 6, 5, 3), (3, 4, 2, 7)], ids=str)
def test_group_norm_channels_last_matches_float64(poisoned, shape, dtype):
    _group_case(shape, 2, dtype, channels_last=True, seed=sum(shape) + 1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_streamed_groups_match_float64(poisoned, streaming, channels_last):
    _group_case((2, 6, 5, 3), 3, torch.float32, channels_last, seed=9)
    _group_case((2, 8, 3, 3), 1, torch.float32, channels_last, seed=10, affine=False)


# --- BatchNorm ---------------------------------------------------------------------

BATCH_SHAPES = [(4, 6, 5, 3), (3, 5), (2, 3, 7), (2, 70, 3, 3), (3, 2, 2, 2, 2)]


def _batch_case(shape, dtype, training, channels_last, seed, affine=True, momentum=0.1):
    x, dy = _inputs(shape, dtype, seed, scale=2.5, shift=3.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    w, b = _params(c, dtype, seed, affine)
    gen = torch.Generator().manual_seed(seed + 2)
    running = [
        torch.randn(c, generator=gen, dtype=torch.float64),
        torch.rand(c, generator=gen, dtype=torch.float64) + 0.5,
    ]
    ours_running = [_on(t.float()) for t in running]
    exact_running = [t.clone() for t in running]
    ours = _grads(
        lambda x, w, b: batch.batch_norm(x, *ours_running, w, b, training, momentum, 1e-5),
        _on(x), _on(dy), [_on(w), _on(b)],
    )  # fmt: skip
    exact = _grads(
        lambda x, w, b: F.batch_norm(x, *exact_running, w, b, training, momentum, 1e-5),
        x.double(), dy.double(), [None if t is None else t.double() for t in (w, b)],
    )  # fmt: skip
    what = f"batch_norm {shape} {dtype} training={training} cl={channels_last}"
    _check(ours, exact, dtype, what)
    for name, a, e in zip(
        ("running_mean", "running_var"), ours_running, exact_running, strict=True
    ):
        assert rel_err(a.cpu(), e) <= 1e-5, f"{what}: {name}"


@pytest.fixture(params=["fused", "split"])
def bn_path(request, monkeypatch):
    """BatchNorm's two launch plans: one program per channel block (small inputs), or
    each channel's tiles split over many programs (partial moments, finalize, apply)."""
    if request.param == "split":
        monkeypatch.setattr(batch._Tiling, "FUSED_MAX", 0)
        monkeypatch.setattr(batch, "max_programs", lambda x: 64)
    return request.param


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=str)
def test_batch_norm_matches_float64(poisoned, bn_path, shape, dtype, training):
    _batch_case(shape, dtype, training, channels_last=False, seed=sum(shape))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (2, 70, 3, 3), (3, 1, 2, 2)], ids=str)
def test_batch_norm_channels_last_matches_float64(poisoned, bn_path, shape, training):
    _batch_case(shape, torch.float32, training, channels_last=True, seed=sum(shape) + 3)


def test_batch_norm_split_path_really_splits(monkeypatch):
    monkeypatch.setattr(batch._Tiling, "FUSED_MAX", 0)
    monkeypatch.setattr(batch, "max_programs", lambda x: 64)
    for shape in [(4, 6, 5, 3), (2, 70, 3, 3), (16, 3, 9, 9)]:
        x, sizes, strides = _launch.channel_view(torch.empty(shape))
        tiling = batch._Tiling(x, sizes, strides)
        assert not tiling.fused and tiling.splits > 1, shape


def test_batch_norm_without_affine_and_a_large_momentum(poisoned, bn_path):
    _batch_case((16, 3, 9, 9), torch.float32, True, channels_last=False, seed=1, affine=False)
    _batch_case((16, 3, 9, 9), torch.float32, True, channels_last=True, seed=2, momentum=0.5)


def test_batch_norm_stable_for_a_large_mean(poisoned, bn_path):
    """Mean 1e4, std 1: E[x^2] - E[x]^2 in float32 would lose every digit of the variance."""
    x, _ = _inputs((8, 3, 6, 6), torch.float32, 4, scale=1.0, shift=1e4)
    y = batch.batch_norm(_on(x), None, None, training=True)
    exact = F.batch_norm(x.double(), None, None, training=True)
    assert rel_err(y.cpu(), exact) <= 1e-3


def test_batch_norm_without_running_stats_in_training(poisoned, bn_path):
    x, dy = _inputs((5, 4, 3), torch.float32, 6)
    ours = _grads(lambda x: batch.batch_norm(x, None, None, training=True), _on(x), _on(dy), [])
    exact = _grads(
        lambda x: F.batch_norm(x, None, None, training=True), x.double(), dy.double(), []
    )
    _check(ours, exact, torch.float32, "batch_norm without running stats")


# --- Backend choice and fallback ---------------------------------------------------


@pytest.mark.parametrize(
    ("layer_cls", "args", "shape"),
    [
        (torch.nn.LayerNorm, (12,), (5, 12)),
        (torch.nn.GroupNorm, (2, 6), (4, 6, 3, 3)),
        (torch.nn.BatchNorm2d, (6,), (4, 6, 3, 3)),
        (torch.nn.RMSNorm, (12,), (5, 12)),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_layers_train_and_eval_on_triton_like_torch(layer_cls, args, shape):
    from conftest import train_side_by_side

    ours = getattr(normlab, layer_cls.__name__)(*args).to(DEVICE)
    theirs = layer_cls(*args).to(DEVICE)
    gen = torch.Generator().manual_seed(7)
    batches = [torch.randn(shape, generator=gen).to(DEVICE) for _ in range(3)]
    train_side_by_side(ours, theirs, batches[:2], batches[2:], tol=1e-5, backend="triton")


def test_triton_backend_runs_the_kernel(monkeypatch):
    calls = []
    real = kernels.layer_norm
    monkeypatch.setattr(kernels, "layer_norm", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(3, 8, device=DEVICE)
    NF.layer_norm(x, 8, backend="triton")
    with normlab.use_backend("triton"):
        NF.layer_norm(x, 8)
    assert calls == [1, 1]


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (
            lambda: NF.layer_norm(
                torch.randn(3, 8, dtype=torch.float64, device=DEVICE), 8, backend="triton"
            ),
            "dtype torch.float64",
        ),
        (
            lambda: NF.batch_norm(
                torch.randn(0, 3, device=DEVICE), None, None, training=True, backend="triton"
            ),
            "an empty input",
        ),
        (
            lambda: NF.instance_norm(torch.randn(2, 3, 4, device=DEVICE), backend="triton"),
            "no Triton kernel for this technique",
        ),
    ],
    ids=["float64", "empty", "no-kernel"],
)
def test_uncovered_calls_fall_back_to_native_with_a_debug_line(caplog, call, reason):
    with caplog.at_level(logging.DEBUG, logger="normlab.functional"):
        call()
    assert any(
        reason in r.getMessage() and "using 'native'" in r.getMessage() for r in caplog.records
    )


@pytest.mark.skipif(
    not _launch.interpreting(), reason="CPU tensors reach the kernels only under the interpreter"
)
def test_cpu_tensors_stay_native_unless_triton_is_named(monkeypatch):
    monkeypatch.setattr(kernels, "layer_norm", lambda *a: pytest.fail("auto picked Triton on CPU"))
    NF.layer_norm(torch.randn(3, 8), 8)


def test_naming_triton_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(NF, "triton_installed", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'normlab\[triton\]'"):
        NF.layer_norm(torch.randn(3, 8), 8, backend="triton")


def test_double_backward_is_refused_with_a_clear_error():
    x = torch.randn(3, 8, device=DEVICE, requires_grad=True)
    (g,) = torch.autograd.grad(layer.layer_norm(x, (8,)).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward|once_differentiable|twice"):
        g.sum().backward()


def test_every_kernel_variant_compiles_for_hopper(tmp_path):
    """The interpreter never compiles; lower every variant to an sm_90 cubin (tests/compile_kernels.py)."""
    script = Path(__file__).with_name("compile_kernels.py")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9 warns when unset; 1 is today's default
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not INTERPRETER_OK, reason="--smoke needs triton >= 3.9's interpreter")
def test_the_gpu_benchmark_script_runs_end_to_end(tmp_path):
    """benchmarks/gpu_norms.py --smoke: every op and layout through the script's own
    paths on the CPU, so a device session does not find a broken script."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_norms.py"
    out = tmp_path / "smoke.json"
    args = [sys.executable, str(script), "--smoke", "--dtypes", "bf16", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    ours = [r for r in rows if r["impl"] == "normlab"]
    assert {r["op"] for r in ours} == {
        *("layernorm", "rmsnorm", "groupnorm", "batchnorm"),
        *("add_rmsnorm", "add_layernorm", "adaln", "adarms"),
    }
    assert max(r["rel_err"] for r in ours) <= TOL[torch.bfloat16]


def test_the_host_overhead_script_runs(tmp_path):
    """benchmarks/kernel_host_overhead.py: every stage it times reaches the stubbed
    launches (the table's numbers are the script's business, not a test's)."""
    script = Path(__file__).parents[1] / "benchmarks" / "kernel_host_overhead.py"
    out = tmp_path / "host.json"
    args = [sys.executable, str(script), "--iters", "5", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 8 and all(r["us"] > 0 for r in rows)


# --- GPU only: the real shapes ------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape",
    [(64, 64), (256, 256), (1000, 1024), (33, 4096), (7, 12288), (16, 65536), (3, 70001)],
    ids=str,
)
def test_row_norms_large_shapes_on_gpu(poisoned, shape, dtype, rms):
    _row_case(shape, dtype, rms, affine=True, seed=shape[-1])


@needs_gpu
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("shape", "groups"),
    [((8, 256, 28, 28), 32), ((2, 512, 64, 64), 32), ((4, 96, 17, 13), 3)],
    ids=str,
)
def test_group_norm_large_shapes_on_gpu(poisoned, shape, groups, dtype, channels_last):
    _group_case(shape, groups, dtype, channels_last, seed=shape[1])


@needs_gpu
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(32, 64, 28, 28), (8, 512, 16, 16), (3, 96, 17, 13)], ids=str)
def test_batch_norm_large_shapes_on_gpu(poisoned, shape, dtype, training, channels_last):
    _batch_case(shape, dtype, training, channels_last, seed=shape[1])


class _OnCuda:
    """What the backend choice reads of a CUDA input."""

    is_cuda = True


def test_auto_keeps_batch_norm_on_torch_for_cuda_inputs(monkeypatch):
    """On an H200 normlab's Triton BatchNorm was slower than torch's at every shape
    measured (1.1x to 7x, benchmarks/results/gpu_norms-nvidia-h200.json): CUDA inputs
    run torch's unless Triton is named; the other kernels are still picked."""
    from normlab.functional import _pick, native

    monkeypatch.setattr(kernels, "unsupported", lambda op, call: None)  # covered: tested above
    assert _pick("batch_norm", None, call=(_OnCuda(),)) is native.batch_norm
    assert _pick("batch_norm", "triton", call=(_OnCuda(),)) is kernels.batch_norm
    assert _pick("group_norm", None, call=(_OnCuda(),)) is kernels.group_norm


@needs_gpu
def test_cuda_inputs_pick_triton_automatically(monkeypatch):
    calls = []
    real = kernels.group_norm
    monkeypatch.setattr(kernels, "group_norm", lambda *a: calls.append(1) or real(*a))
    normlab.GroupNorm(2, 4).cuda()(torch.randn(2, 4, 3, 3, device="cuda"))
    assert calls == [1]


def test_host_grid_arithmetic_is_tritons():
    """_launch's pow2 and cdiv (plain Python: Triton's are constexpr functions costing
    microseconds per host call) agree with triton.next_power_of_2 and triton.cdiv."""
    for n in [*range(0, 2050), 4095, 4096, 4097, 65535, 65536, 70001, 2**31 - 1]:
        assert _launch.pow2(n) == triton.next_power_of_2(max(1, n)), n
        for d in (1, 3, 64, 1000):
            assert _launch.cdiv(n, d) == triton.cdiv(n, d), (n, d)
