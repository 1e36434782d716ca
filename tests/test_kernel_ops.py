"""The Triton kernels as torch.library custom ops (issue 14, point 2).

Each public kernel function is a forward op and a backward op in the
``normlab`` namespace, with a fake (meta) implementation and a registered
autograd: ``torch.library.opcheck`` checks every op, and torch.compile keeps
each as one graph node, never tracing into the launches, with no graph break
and the eager results. Numerics against float64 torch are tests/test_kernels.py's.
Without a GPU these run on tiny CPU tensors under Triton's interpreter.
"""

from __future__ import annotations

import functools

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package")

from torch._dynamo.testing import AotEagerAndRecordGraphs  # noqa: E402

from normlab import kernels  # noqa: E402
from normlab.kernels import _launch  # noqa: E402

GPU = torch.cuda.is_available()
# As in tests/test_kernels.py: triton's CPU interpreter before 3.9 cannot run the kernels.
INTERPRETER_OK = tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 9)
if _launch.interpreting() and not INTERPRETER_OK:
    pytest.skip(
        f"the kernels' CPU tests need triton >= 3.9's interpreter, found {triton.__version__}",
        allow_module_level=True,
    )
if not GPU and not _launch.interpreting():
    pytest.skip("the kernels need a GPU, or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = "cuda" if GPU else "cpu"

SCHEMAS = {
    "layer_norm_fwd": "(Tensor x, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, "
    "float eps) -> (Tensor, Tensor, Tensor)",
    "layer_norm_bwd": "(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, "
    "SymInt[] normalized_shape, bool weight_grad, bool bias_grad) -> (Tensor, Tensor, Tensor)",
    "rms_norm_fwd": "(Tensor x, SymInt[] normalized_shape, Tensor? weight, float eps) "
    "-> (Tensor, Tensor)",
    "rms_norm_bwd": "(Tensor dy, Tensor x, Tensor? weight, Tensor rstd, "
    "SymInt[] normalized_shape, bool weight_grad) -> (Tensor, Tensor)",
    "group_norm_fwd": "(Tensor x, SymInt num_groups, Tensor? weight, Tensor? bias, float eps) "
    "-> (Tensor, Tensor, Tensor)",
    "group_norm_bwd": "(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, "
    "SymInt num_groups) -> (Tensor, Tensor, Tensor)",
    "batch_norm_train_fwd": "(Tensor x, Tensor? running_mean, Tensor? running_var, "
    "Tensor? weight, Tensor? bias, float momentum, float eps) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "batch_norm_eval_fwd": "(Tensor x, Tensor running_mean, Tensor running_var, "
    "Tensor? weight, Tensor? bias, float eps) -> Tensor",
    "batch_norm_bwd": "(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor spread, "
    "bool training, float eps) -> (Tensor, Tensor)",
    "modulated_layer_norm_fwd": "(Tensor x, Tensor shift, Tensor scale, Tensor? weight, "
    "Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)",
    "modulated_layer_norm_bwd": "(Tensor dy, Tensor x, Tensor scale, Tensor? weight, "
    "Tensor? bias, Tensor mean, Tensor rstd, bool weight_grad, bool bias_grad) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "modulated_rms_norm_fwd": "(Tensor x, Tensor shift, Tensor scale, Tensor? weight, "
    "float eps) -> (Tensor, Tensor)",
    "modulated_rms_norm_bwd": "(Tensor dy, Tensor x, Tensor scale, Tensor? weight, "
    "Tensor rstd, bool weight_grad) -> (Tensor, Tensor, Tensor, Tensor)",
    "add_rms_norm_fwd": "(Tensor x, Tensor? residual, SymInt[] normalized_shape, "
    "Tensor? weight, float eps, bool residual_in_fp32) -> (Tensor, Tensor, Tensor)",
    "add_rms_norm_bwd": "(Tensor dy, Tensor? dh, Tensor h, Tensor? weight, Tensor rstd, "
    "SymInt[] normalized_shape, ScalarType x_dtype, ScalarType? residual_dtype, "
    "bool weight_grad) -> (Tensor, Tensor, Tensor)",
    "add_layer_norm_fwd": "(Tensor x, Tensor? residual, SymInt[] normalized_shape, "
    "Tensor? weight, Tensor? bias, float eps, bool residual_in_fp32) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    "add_layer_norm_bwd": "(Tensor dy, Tensor? dh, Tensor h, Tensor? weight, Tensor mean, "
    "Tensor rstd, SymInt[] normalized_shape, ScalarType x_dtype, ScalarType? residual_dtype, "
    "bool weight_grad, bool bias_grad) -> (Tensor, Tensor, Tensor, Tensor)",
}


def _op(name):
    return getattr(torch.ops.normlab, name).default


def test_every_kernel_is_a_custom_op_with_this_schema():
    for name, schema in SCHEMAS.items():
        assert str(_op(name)._schema) == f"normlab::{name}{schema}"


# --- opcheck -------------------------------------------------------------------------


def _rand(*shape, grad=False, seed=0, channels_last=False):
    gen = torch.Generator().manual_seed(seed + sum(shape))
    t = (torch.rand(shape, generator=gen) + 0.5).to(DEVICE)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def _affine(shape, affine, grad=True):
    if not affine:
        return None, None
    return _rand(*shape, grad=grad, seed=1), _rand(*shape, grad=grad, seed=2)


def _row_cases():
    for shape, norm, affine in [((3, 2, 8), [8], True), ((3, 2, 8), [2, 8], True),
                                ((3, 8), [8], False)]:  # fmt: skip
        tag = f"{shape}-{norm}-{'affine' if affine else 'plain'}"

        def fwd(shape=shape, norm=norm, affine=affine, rms=False):
            w, b = _affine(norm, affine)
            x = _rand(*shape, grad=True)
            return (x, norm, w, 1e-5) if rms else (x, norm, w, b, 1e-5)

        def bwd(shape=shape, norm=norm, affine=affine, rms=False):
            x, w = _rand(*shape), _affine(norm, affine, grad=False)[0]
            dy = _rand(*shape, seed=3)
            if rms:
                _, rstd = _op("rms_norm_fwd")(x, norm, w, 1e-5)
                return dy, x, w, rstd, norm, affine
            _, mean, rstd = _op("layer_norm_fwd")(x, norm, w, None, 1e-5)
            return dy, x, w, mean, rstd, norm, affine, affine

        yield f"layer_fwd-{tag}", "layer_norm_fwd", fwd
        yield f"layer_bwd-{tag}", "layer_norm_bwd", bwd
        yield f"rms_fwd-{tag}", "rms_norm_fwd", functools.partial(fwd, rms=True)
        yield f"rms_bwd-{tag}", "rms_norm_bwd", functools.partial(bwd, rms=True)


def _group_cases():
    for channels_last, affine in [(False, True), (True, True), (False, False)]:
        tag = f"{'cl' if channels_last else 'nchw'}-{'affine' if affine else 'plain'}"

        def fwd(channels_last=channels_last, affine=affine):
            x = _rand(2, 4, 3, 3, grad=True, channels_last=channels_last)
            return (x, 2, *_affine((4,), affine), 1e-5)

        def bwd(channels_last=channels_last, affine=affine):
            x = _rand(2, 4, 3, 3, channels_last=channels_last)
            w = _affine((4,), affine, grad=False)[0]
            _, mean, rstd = _op("group_norm_fwd")(x, 2, w, None, 1e-5)
            return _rand(2, 4, 3, 3, seed=3), x, w, mean, rstd, 2

        yield f"group_fwd-{tag}", "group_norm_fwd", fwd
        yield f"group_bwd-{tag}", "group_norm_bwd", bwd


def _running(running=True):
    return (_rand(3, seed=4) - 0.5, _rand(3, seed=5)) if running else (None, None)


def _batch_cases():
    for channels_last, affine, running in [(False, True, True), (True, True, True),
                                           (False, False, False)]:  # fmt: skip
        tag = f"{'cl' if channels_last else 'nchw'}-{'affine' if affine else 'plain'}"
        tag += "-running" if running else ""

        def fwd(channels_last=channels_last, affine=affine, running=running, training=True):
            x = _rand(4, 3, 2, 2, grad=True, channels_last=channels_last)
            w, b = _affine((3,), affine)
            if training:
                return (x, *_running(running), w, b, 0.1, 1e-5)
            return (x, *_running(), w, b, 1e-5)

        def bwd(channels_last=channels_last, affine=affine, training=True):
            x = _rand(4, 3, 2, 2, channels_last=channels_last)
            w = _affine((3,), affine, grad=False)[0]
            stats = _running()
            if training:
                stats = _op("batch_norm_train_fwd")(x, None, None, w, None, 0.1, 1e-5)[1:3]
            return _rand(4, 3, 2, 2, seed=3), x, w, *stats, training, 1e-5

        yield f"batch_train-{tag}", "batch_norm_train_fwd", fwd
        yield f"batch_eval-{tag}", "batch_norm_eval_fwd", functools.partial(fwd, training=False)
        yield f"batch_bwd_train-{tag}", "batch_norm_bwd", bwd
        yield f"batch_bwd_eval-{tag}", "batch_norm_bwd", functools.partial(bwd, training=False)


def _add_norm_cases():
    """Residual add + norm: same dtypes; a float32 stream and residual under a bfloat16 x
    (dresidual in its own dtype); no residual, no affine, no gradient for h."""
    bf16, f32 = torch.bfloat16, torch.float32
    for x_dtype, r_dtype, fp32, affine in [(f32, f32, False, True), (bf16, f32, True, True),
                                           (bf16, None, True, False)]:  # fmt: skip
        tag = f"{x_dtype}-{r_dtype}-{'fp32' if fp32 else 'promoted'}".replace("torch.", "")

        def inputs(x_dtype=x_dtype, r_dtype=r_dtype, affine=affine, grad=True):
            x = _rand(3, 2, 8).to(x_dtype).requires_grad_(grad)
            r = None if r_dtype is None else _rand(3, 2, 8, seed=4).to(r_dtype)
            return x, None if r is None else r.requires_grad_(grad), *_affine((8,), affine, grad)

        def fwd(fp32=fp32, rms=False, inputs=inputs):
            x, r, w, b = inputs()
            return (x, r, [8], w, 1e-5, fp32) if rms else (x, r, [8], w, b, 1e-5, fp32)

        def bwd(fp32=fp32, rms=False, inputs=inputs, affine=affine):
            x, r, w, _ = inputs(grad=False)
            separate = r.dtype if r is not None and r.dtype != x.dtype else None
            if rms:
                _, h, *stats = _op("add_rms_norm_fwd")(x, r, [8], w, 1e-5, fp32)
            else:
                _, h, *stats = _op("add_layer_norm_fwd")(x, r, [8], w, None, 1e-5, fp32)
            dy = _rand(3, 2, 8, seed=3).to(x.dtype)
            dh = _rand(3, 2, 8, seed=5).to(h.dtype) if affine else None
            flags = (affine,) if rms else (affine, affine)
            return dy, dh, h, w, *stats, [8], x.dtype, separate, *flags

        yield f"add_layer_fwd-{tag}", "add_layer_norm_fwd", fwd
        yield f"add_layer_bwd-{tag}", "add_layer_norm_bwd", bwd
        yield f"add_rms_fwd-{tag}", "add_rms_norm_fwd", functools.partial(fwd, rms=True)
        yield f"add_rms_bwd-{tag}", "add_rms_norm_bwd", functools.partial(bwd, rms=True)


OPCHECK_CASES = [*_row_cases(), *_group_cases(), *_batch_cases(), *_add_norm_cases()]


def _modulated_cases():
    """Modulated norms: per-sample shift and scale (strided chunks of one projection,
    as DiT makes them) with affine; per-token ones without."""
    for per_token, affine in [(False, True), (True, False)]:
        tag = f"{'token' if per_token else 'sample'}-{'affine' if affine else 'plain'}"

        def mods(per_token=per_token, grad=True):
            proj = _rand(3, *((2,) if per_token else ()), 16, grad=grad, seed=6)
            return proj.chunk(2, dim=-1)

        def fwd(per_token=per_token, affine=affine, rms=False):
            x, (shift, scale) = _rand(3, 2, 8, grad=True), mods(per_token)
            w, b = _affine((8,), affine)
            return (x, shift, scale, w, 1e-5) if rms else (x, shift, scale, w, b, 1e-5)

        def bwd(per_token=per_token, affine=affine, rms=False):
            x, (shift, scale) = _rand(3, 2, 8), mods(per_token, grad=False)
            w, b = _affine((8,), affine, grad=False)
            dy = _rand(3, 2, 8, seed=3)
            if rms:
                _, rstd = _op("modulated_rms_norm_fwd")(x, shift, scale, w, 1e-5)
                return dy, x, scale, w, rstd, affine
            _, mean, rstd = _op("modulated_layer_norm_fwd")(x, shift, scale, w, b, 1e-5)
            return dy, x, scale, w, b, mean, rstd, affine, affine

        yield f"modulated_layer_fwd-{tag}", "modulated_layer_norm_fwd", fwd
        yield f"modulated_layer_bwd-{tag}", "modulated_layer_norm_bwd", bwd
        yield f"modulated_rms_fwd-{tag}", "modulated_rms_norm_fwd", functools.partial(fwd, rms=True)
        yield f"modulated_rms_bwd-{tag}", "modulated_rms_norm_bwd", functools.partial(bwd, rms=True)


OPCHECK_CASES += list(_modulated_cases())


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("name", "make_args"), [pytest.param(n, f, id=i) for i, n, f in OPCHECK_CASES]
)
def test_opcheck(name, make_args):
    """Schema (no undeclared mutation or aliasing), fake tensors, autograd registration,
    and aot_autograd with dynamic shapes against eager, forward and backward."""
    torch.library.opcheck(_op(name), make_args())


def test_opcheck_covers_every_op():
    assert {name for _, name, _ in OPCHECK_CASES} == set(SCHEMAS)


# --- torch.compile -------------------------------------------------------------------


def _layer(x, w, b):
    return kernels.layer_norm(x, (8,), w, b)


def _rms(x, w):
    return kernels.rms_norm(x, (8,), w)


def _group(x, w, b):
    return kernels.group_norm(x, 2, w, b)


def _batch_train(x, w, b, running_mean, running_var):
    return kernels.batch_norm(x, running_mean, running_var, w, b, True, 0.1, 1e-5)


def _batch_eval(x, w, b, running_mean, running_var):
    return kernels.batch_norm(x, running_mean, running_var, w, b, False, 0.1, 1e-5)


# name (its forward op is name + "_fwd"): function, input shape
COMPILE_CASES = {
    "layer_norm": (_layer, (3, 2, 8)),
    "rms_norm": (_rms, (3, 2, 8)),
    "group_norm": (_group, (2, 4, 3, 3)),
    "batch_norm_train": (_batch_train, (4, 3, 2, 2)),
    "batch_norm_eval": (_batch_eval, (4, 3, 2, 2)),
}
COMPILE_CASES["modulated_layer_norm"] = (kernels.modulated_layer_norm, (3, 2, 8))
COMPILE_CASES["modulated_rms_norm"] = (kernels.modulated_rms_norm, (3, 2, 8))


def _compile_args(name, shape):
    """x (channels_last if 4-d), weight, bias (not for RMSNorm), running mean and var
    (BatchNorm)."""
    x = _rand(*shape, grad=True, channels_last=len(shape) == 4)
    channels = shape[-1] if len(shape) == 3 else shape[1]
    w, b = _affine((channels,), True)
    if name == "rms_norm":
        return [x, w]
    if name.startswith("modulated"):  # x, shift, scale (B, D)
        return [x, *(_rand(shape[0], channels, grad=True, seed=s) for s in (4, 5))]
    if name.startswith("batch_norm"):
        return [x, w, b, *_running()]
    return [x, w, b]


def _copy(args):
    return [a.detach().clone().requires_grad_(a.requires_grad) for a in args]


def _run(fn, args):
    y = fn(*args)
    dy = _rand(*y.shape, seed=7)
    leaves = [a for a in args if a.requires_grad]
    return [y, *torch.autograd.grad(y, leaves, dy)]


# AotEagerAndRecordGraphs (aot_eager that keeps the graphs) returns unboxed functions.
@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd:UserWarning")
@pytest.mark.parametrize("name", COMPILE_CASES)
def test_compiled_kernels_are_single_ops_without_graph_breaks(name):
    fn, shape = COMPILE_CASES[name]
    args = _compile_args(name, shape)

    explained = torch._dynamo.explain(fn)(*_copy(args))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1

    backend = AotEagerAndRecordGraphs()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    eager_args, compiled_args = _copy(args), _copy(args)
    expected = _run(fn, eager_args)
    got = _run(compiled, compiled_args)
    names = ["output", "dx", "dweight", "dbias"][: len(expected)]
    for what, a, e in zip(names, got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0, msg=lambda m, w=what: f"{w}: {m}")
    for a, e in zip(compiled_args[3:], eager_args[3:], strict=True):  # running statistics
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    if name == "batch_norm_train":
        assert not torch.equal(compiled_args[3], args[3]), "running mean not updated"

    forward_op = _op(f"{name}_fwd")
    backward_op = _op(f"{name.removesuffix('_train').removesuffix('_eval')}_bwd")
    (fw,), (bw,) = backend.fw_graphs, backend.bw_graphs
    fw_targets = [n.target for n in fw.graph.nodes if n.op == "call_function"]
    bw_targets = [n.target for n in bw.graph.nodes if n.op == "call_function"]
    assert fw_targets.count(forward_op) == 1, fw.code
    assert bw_targets.count(backward_op) == 1, bw.code
    assert not [t for t in fw_targets + bw_targets if "triton" in str(t)], "traced into Triton"


def test_dispatch_modes_see_the_custom_op_and_fake_tensors_run_no_kernel():
    """Plain eager calls run a kernel's implementation directly (the custom op's dispatch
    costs host time: benchmarks/kernel_host_overhead.py). Under a dispatch mode the op
    itself must run: a recording mode sees one normlab op, and FakeTensorMode gets the
    fake implementation's shapes instead of a kernel launched on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    import normlab.functional as NF

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, 8, device=DEVICE, requires_grad=True)
    with Record():
        NF.layer_norm(x, 8, backend="triton")
    assert "normlab.layer_norm_fwd.default" in seen
    with FakeTensorMode():
        fake = torch.empty(5, 16, device=DEVICE, requires_grad=True)
        y = NF.rms_norm(fake, 16, backend="triton")
        (dx,) = torch.autograd.grad(y.sum(), fake)
    assert y.shape == dx.shape == (5, 16)


def _ln(x):
    import normlab.functional as NF

    return NF.layer_norm(x, 8, backend="triton")


def test_batched_gradients_run_the_op():
    """is_grads_batched (and jacobian(vectorize=True)) hand the backward batched
    gradients, which no kernel can read: the op's batching fallback takes them."""
    x = torch.randn(3, 8, device=DEVICE, requires_grad=True)
    dys = torch.randn(2, 3, 8, device=DEVICE)
    (batched,) = torch.autograd.grad(_ln(x), x, dys, is_grads_batched=True)
    for dy, got in zip(dys, batched, strict=True):
        (expected,) = torch.autograd.grad(_ln(x), x, dy)
        torch.testing.assert_close(got, expected)


def test_jit_trace_and_torch_function_modes_see_the_op():
    """torch.jit.trace records the op as one node (a trace through the launches would
    hand tensors to the kernel), and a TorchFunctionMode sees the op, not its insides."""
    from torch.overrides import TorchFunctionMode

    x = torch.randn(3, 8, device=DEVICE)
    traced = torch.jit.trace(_ln, (x,), check_trace=False)
    assert "normlab::layer_norm_fwd" in str(traced.graph)
    torch.testing.assert_close(traced(x), _ln(x))

    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with Record():
        _ln(x)
    assert "empty" not in seen and any("layer_norm_fwd" in s for s in seen), seen


def test_forward_mode_ad_is_refused_with_a_clear_error():
    """The kernels have no jvp: forward-mode AD says so (it used to give no tangent)."""
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(3, 8, device=DEVICE)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match=r"forward-mode AD.*native"):
        _ln(fwAD.make_dual(x, torch.randn_like(x)))


def test_group_count_may_be_a_numpy_or_tensor_integer():
    import numpy as np

    import normlab.functional as NF

    x = torch.randn(2, 4, 3, 3, device=DEVICE)
    expected = torch.nn.functional.group_norm(x, 2)
    for groups in (np.int64(2), torch.tensor(2)):
        got = NF.group_norm(x, groups, backend="triton")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
