"""normlab in the ways models run today (issue 14): torch.compile without graph
breaks, the twins as torch.nn subclasses seen by torch's own utilities,
TorchScript and torch.export, and torch.func transforms.

Oracles: eager execution, torch.nn's classes and functions, and the reference
backend (the formula in composed ops, differentiated by autograd).
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
from conftest import randomize_affine
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

import normlab
from normlab.norms import registry
from normlab.norms._twin import TorchTwin

TECHNIQUES = [name for name in normlab.available() if name != "none"]
SHAPE = (4, 8, 3, 3)

# Each twin, the torch.nn class it is, its constructor arguments and an input.
TWINS = [
    (normlab.BatchNorm1d, nn.BatchNorm1d, (8,), (4, 8, 5)),
    (normlab.BatchNorm2d, nn.BatchNorm2d, (8,), SHAPE),
    (normlab.BatchNorm3d, nn.BatchNorm3d, (8,), (2, 8, 2, 3, 3)),
    (normlab.LayerNorm, nn.LayerNorm, ((3, 6),), (4, 5, 3, 6)),
    (normlab.RMSNorm, nn.RMSNorm, (6,), (4, 5, 6)),
    (normlab.GroupNorm, nn.GroupNorm, (4, 8), SHAPE),
    (normlab.InstanceNorm1d, nn.InstanceNorm1d, (8,), (4, 8, 5)),
    (normlab.InstanceNorm2d, nn.InstanceNorm2d, (8,), SHAPE),
    (normlab.InstanceNorm3d, nn.InstanceNorm3d, (8,), (2, 8, 2, 3, 3)),
    (normlab.LocalResponseNorm, nn.LocalResponseNorm, (3,), SHAPE),
]
TWIN_IDS = [twin.__name__ for twin, *_ in TWINS]


# Batch Renorm past its warm-up, so that r and d are not 1 and 0 (BatchNorm).
SETTINGS = {"batchrenorm": {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0}}


def _layer(name: str, gen: torch.Generator) -> nn.Module:
    """Technique ``name`` in its (N, C, *) form, with a random affine and, where it
    keeps them, running statistics that are not the defaults."""
    layer = registry.factory(name, "channels_first", **SETTINGS.get(name, {}))(SHAPE[1])
    randomize_affine(layer, gen)
    with torch.no_grad():
        for key, buffer in layer.named_buffers():
            if key.endswith("running_mean"):
                buffer.normal_(0.0, 0.5, generator=gen)
            elif key.endswith("running_var"):
                buffer.uniform_(0.5, 2.0, generator=gen)
    return layer


def _keeps_running_stats(layer: nn.Module) -> bool:
    return any(key.endswith("running_var") for key, _ in layer.named_buffers())


def _x(gen: torch.Generator, shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=dtype) * 2 + 0.5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- torch.compile ---------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", TECHNIQUES)
def test_every_technique_compiles_to_one_graph_and_matches_eager(name, training, gen):
    layer = _layer(name, gen).train(training)
    x = _x(gen)
    explained = torch._dynamo.explain(copy.deepcopy(layer))(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1

    eager, compiled_layer = copy.deepcopy(layer), copy.deepcopy(layer)
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = eager(xe), compiled(xc)
    torch.testing.assert_close(yc, ye)
    dy = torch.randn(ye.shape, generator=gen)
    ye.backward(dy)
    yc.backward(dy)
    torch.testing.assert_close(xc.grad, xe.grad)
    for (key, pe), (_, pc) in zip(
        eager.named_parameters(), compiled_layer.named_parameters(), strict=True
    ):
        torch.testing.assert_close(pc.grad, pe.grad, msg=key)
    for (key, be), (_, bc) in zip(
        eager.named_buffers(), compiled_layer.named_buffers(), strict=True
    ):
        torch.testing.assert_close(bc, be, msg=key)


@pytest.mark.parametrize("name", TECHNIQUES)
def test_every_technique_compiles_without_breaks_on_the_reference_backend(name, gen):
    layer = _layer(name, gen)
    with normlab.use_backend("reference"):
        explained = torch._dynamo.explain(layer)(_x(gen))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


@pytest.mark.parametrize("name", ["batchnorm", "layernorm", "groupnorm", "rmsnorm"])
def test_the_layers_with_triton_kernels_compile_without_breaks_on_that_backend(name, gen):
    pytest.importorskip("triton")
    from normlab.kernels import _launch

    if not (torch.cuda.is_available() or _launch.interpreting()):
        pytest.skip("needs a GPU or Triton's interpreter (TRITON_INTERPRET=1)")
    layer = registry.factory(
        name, "channels_last" if name in ("layernorm", "rmsnorm") else "channels_first"
    )(8)
    x = _x(gen, (4, 3, 8) if name in ("layernorm", "rmsnorm") else (4, 8, 3, 3))
    with normlab.use_backend("triton"):
        explained = torch._dynamo.explain(layer)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


class _CountingBackend:
    """A torch.compile backend that counts the graphs it is given."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize(
    "make",
    [
        lambda: normlab.BatchNorm2d(8, momentum=None),
        lambda: normlab.BatchRenorm2d(8, warmup_steps=2, r_max_steps=4, d_max_steps=5),
        lambda: normlab.GhostBatchNorm2d(8, virtual_batch_size=2, momentum=None),
    ],
    ids=["batchnorm-momentum-none", "batchrenorm-schedule", "ghost-momentum-none"],
)
def test_count_based_factors_compile_once_and_follow_eager(make, gen):
    """momentum=None's 1/k and Batch Renorm's r_max/d_max schedule change every
    step: one graph serves them all, and outputs, gradients and running statistics
    follow eager's (Batch Renorm's r and d leave 1 and 0 after its warm-up)."""
    eager, layer = make(), make()
    for m in (eager, layer):
        randomize_affine(m, torch.Generator().manual_seed(0))
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for _ in range(7):
        x = _x(gen) * 3  # a batch variance far from the running one
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = eager(xe), compiled(xc)
        torch.testing.assert_close(yc, ye)
        dy = torch.randn(ye.shape, generator=gen)
        ye.backward(dy)
        yc.backward(dy)
        torch.testing.assert_close(xc.grad, xe.grad)
        for pe, pc in zip(eager.parameters(), layer.parameters(), strict=True):
            torch.testing.assert_close(pc.grad, pe.grad)
            pe.grad = pc.grad = None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert int(layer.num_batches_tracked) == int(eager.num_batches_tracked) == 7
    torch.testing.assert_close(layer.running_mean, eager.running_mean)
    torch.testing.assert_close(layer.running_var, eager.running_var)


def test_momentum_none_in_eager_stays_torch_bit_for_bit(gen):
    ours, theirs = normlab.BatchNorm2d(8, momentum=None), nn.BatchNorm2d(8, momentum=None)
    for _ in range(5):
        x = _x(gen)
        assert torch.equal(ours(x), theirs(x))
    assert torch.equal(ours.running_var, theirs.running_var)
    assert torch.equal(ours.running_mean, theirs.running_mean)


def test_a_compiled_layer_follows_use_backend(gen):
    """The backend is read while tracing and guarded: switching it recompiles."""
    layer = normlab.LayerNorm(8)
    backend = _CountingBackend()
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    x = _x(gen, (4, 8))
    expected = nn.functional.layer_norm(x, (8,))
    torch.testing.assert_close(compiled(x), expected)
    with normlab.use_backend("reference"):
        torch.testing.assert_close(compiled(x), expected)
    assert backend.graphs == 2


def test_a_compiled_cnn_of_normlab_layers_is_one_graph(gen):
    def cnn(norm):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            norm("batchnorm"),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            norm("groupnorm"),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            norm("switchable"),
        )

    model = cnn(lambda name: registry.factory(name)(8))
    explained = torch._dynamo.explain(model)(_x(gen, (2, 3, 6, 6)))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


# --- each input validated once -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("name", TECHNIQUES)
def test_each_call_validates_its_input_once(name, backend, gen, monkeypatch):
    """A layer checks its input itself and dispatches without the functional API
    checking it again; a torch.nn twin on the native backend leaves it to torch."""
    from normlab.functional import checks

    calls = []
    real = checks.check_floating
    monkeypatch.setattr(checks, "check_floating", lambda *a: calls.append(a) or real(*a))
    layer, x = _layer(name, gen), _x(gen)
    with normlab.use_backend(backend):
        layer(x)
    twin_on_torch = backend == "native" and isinstance(layer, TorchTwin) and layer._torch_takes(x)
    assert len(calls) == (0 if twin_on_torch else 1)


# --- subclasses of torch.nn ------------------------------------------------------------


@pytest.mark.parametrize(("twin", "torch_cls", "args", "shape"), TWINS, ids=TWIN_IDS)
def test_each_twin_is_its_torch_class_with_the_same_state(twin, torch_cls, args, shape, gen):
    ours, theirs = twin(*args), torch_cls(*args)
    assert isinstance(ours, torch_cls)
    assert ours.torch_class() is torch_cls
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    randomize_affine(theirs, gen)
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys and shapes
    x = _x(gen, shape)
    for training in (True, False):
        ours.train(training), theirs.train(training)
        assert torch.equal(ours(x), theirs(x))
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(
    "x", [torch.randn(2, 4), torch.randn(1, 4, 1, 1)], ids=["wrong-rank", "one-value"]
)
def test_a_batchnorm_call_that_raised_counts_nothing(x, momentum):
    layer = normlab.BatchNorm2d(4, momentum=momentum)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4\)"):
        layer(x)
    assert int(layer.num_batches_tracked) == 0
    layer(torch.randn(4, 4, 2, 2))  # and the next batch is the first
    assert int(layer.num_batches_tracked) == 1
    assert torch.isfinite(layer.running_var).all()


def test_an_empty_batch_leaves_instance_norm_statistics_untouched():
    layer = normlab.create("instance", 4, track_running_stats=True)
    assert layer(torch.randn(0, 4, 3, 3)).shape == (0, 4, 3, 3)
    assert torch.equal(layer.running_mean, torch.zeros(4))
    assert torch.equal(layer.running_var, torch.ones(4))


def test_the_batchnorms_are_torch_batchnorms_but_sync_is_not_torch_sync():
    from torch.nn.modules.batchnorm import _BatchNorm

    for layer in (normlab.BatchNormNd(4), normlab.SyncBatchNorm(4), normlab.BatchNorm2d(4)):
        assert isinstance(layer, _BatchNorm)
    # torch's DistributedDataParallel refuses torch's SyncBatchNorm on CPU, not normlab's
    assert not isinstance(normlab.SyncBatchNorm(4), nn.SyncBatchNorm)
    # techniques torch lacks are not passed off as BatchNorm
    assert not isinstance(normlab.BatchRenorm2d(4), _BatchNorm)
    assert not isinstance(normlab.GhostBatchNorm2d(4), _BatchNorm)


def _trained_conv_bn(gen, bn: nn.Module) -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), bn, nn.ReLU())
    for _ in range(3):
        model(_x(gen, (4, 3, 6, 6)))
    randomize_affine(bn, gen)
    return model.eval()


def test_torch_fuse_conv_bn_eval_takes_a_normlab_batchnorm(gen):
    model = _trained_conv_bn(gen, normlab.BatchNorm2d(8))
    fused = nn.utils.fuse_conv_bn_eval(model[0], model[1])
    x = _x(gen, (2, 3, 6, 6))
    torch.testing.assert_close(fused(x), model[1](model[0](x)), rtol=1e-5, atol=1e-5)


def test_torch_quantization_fuse_modules_takes_normlab_batchnorms(gen):
    model = _trained_conv_bn(gen, normlab.BatchNorm2d(8))
    x = _x(gen, (2, 3, 6, 6))
    expected = model(x)
    config = {"additional_fuser_method_mapping": normlab.fuser_methods()}
    fused = torch.ao.quantization.fuse_modules(
        model, [["0", "1", "2"]], fuse_custom_config_dict=config
    )
    assert isinstance(fused[1], nn.Identity)
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_torch_convert_sync_batchnorm_takes_normlab_batchnorms(gen):
    model = _trained_conv_bn(gen, normlab.BatchNorm2d(8))
    model[1].eps, model[1].momentum = 1e-3, 0.2
    x = _x(gen, (2, 3, 6, 6))
    expected = model(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert type(synced[1]) is nn.SyncBatchNorm
    assert (synced[1].eps, synced[1].momentum) == (1e-3, 0.2)
    for key, value in model[1].state_dict().items():
        assert torch.equal(synced[1].state_dict()[key], value), key
    assert torch.equal(synced.eval()(x), expected)


# --- TorchScript and torch.export --------------------------------------------------------


@pytest.mark.parametrize(("twin", "torch_cls", "args", "shape"), TWINS, ids=TWIN_IDS)
def test_torch_jit_script_compiles_every_twin(twin, torch_cls, args, shape, gen):
    layer = twin(*args)
    randomize_affine(layer, gen)
    scripted = torch.jit.script(nn.Sequential(layer, nn.Identity()))
    x = _x(gen, shape)
    for training in (True, False):
        layer.train(training), scripted.train(training)
        expected = torch_cls(*args).train(training)
        expected.load_state_dict(layer.state_dict())
        assert torch.equal(scripted(x), expected(x))
    # the scripted module shares the layer's parameters and buffers
    assert {p.data_ptr() for p in scripted.parameters()} == {
        p.data_ptr() for p in layer.parameters()
    }


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", TECHNIQUES)
def test_torch_export_exports_every_technique(name, training, gen):
    layer = _layer(name, gen).train(training)
    x = _x(gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(copy.deepcopy(layer), (x,))
    torch.testing.assert_close(program.module()(x), layer(x))


# --- torch.func ---------------------------------------------------------------------------


def _reference(layer: nn.Module, fn):
    with normlab.use_backend("reference"):
        return fn(copy.deepcopy(layer))


def _vmap_mode(layer: nn.Module) -> bool:
    """Training mode unless the layer keeps running statistics: an in-place update of
    unbatched buffers under vmap is refused, by torch.nn's BatchNorm too."""
    return not _keeps_running_stats(layer)


@pytest.mark.parametrize("name", TECHNIQUES)
def test_vmap_over_a_stack_of_batches_matches_the_reference(name, gen):
    layer = _layer(name, gen)
    layer.train(_vmap_mode(layer))
    xs = _x(gen, (3, *SHAPE))
    got = vmap(layer)(xs)
    expected = _reference(layer, lambda m: torch.stack([m(x) for x in xs]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# Techniques without parameters (InstanceNorm, LRN, frozen BatchNorm by default) have
# no parameter gradient; their input gradient is the jacrev test's.
WITH_PARAMETERS = [
    name
    for name in TECHNIQUES
    if any(True for _ in registry.factory(name, "channels_first")(SHAPE[1]).parameters())
]


@pytest.mark.parametrize("name", WITH_PARAMETERS)
def test_grad_through_functional_call_matches_the_reference(name, gen):
    layer = _layer(name, gen).double()
    layer.train(_vmap_mode(layer))
    x = _x(gen, dtype=torch.float64)
    weights = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    params = {k: p.detach() for k, p in layer.named_parameters()}
    buffers = {k: b.clone() for k, b in layer.named_buffers()}

    def loss(params):
        return (functional_call(layer, (params, buffers), (x,)) * weights).sum()

    got = grad(loss)(params)

    def expected(m):
        (m(x) * weights).sum().backward()
        return {k: p.grad for k, p in m.named_parameters()}

    want = _reference(layer, expected)
    assert got.keys() == want.keys()
    for key in got:
        torch.testing.assert_close(got[key], want[key], msg=key)


@pytest.mark.parametrize("name", TECHNIQUES)
def test_jacrev_with_respect_to_the_input_matches_the_reference(name, gen):
    layer = _layer(name, gen).double()
    layer.train(_vmap_mode(layer))
    x = _x(gen, (2, 8, 2, 2), dtype=torch.float64)
    got = jacrev(lambda x: layer(x))(x)
    expected = _reference(layer, lambda m: torch.autograd.functional.jacobian(m, x))
    torch.testing.assert_close(got, expected)


def _without_bias_keyword(init):
    """A torch norm constructor as torch 2.11 has it: no ``bias`` keyword."""

    def old_init(self, *args, **kwargs):
        if "bias" in kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword 'bias'")
        init(self, *args, **kwargs)

    return old_init


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("twin", "torch_cls", "args", "shape"),
    [
        (normlab.GroupNorm, nn.GroupNorm, (4, 8), SHAPE),
        (normlab.BatchNorm2d, nn.BatchNorm2d, (8,), SHAPE),
        (normlab.InstanceNorm1d, nn.InstanceNorm1d, (8, 1e-5, 0.1, True), (4, 8, 5)),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_twins_build_on_torch_without_the_bias_keyword(
    monkeypatch, twin, torch_cls, args, shape, bias
):
    """torch 2.11 (the GPU image's) has no ``bias`` keyword on GroupNorm and the
    batch/instance norms: the twins must still build there, with the bias
    parameter dropped as newer torch drops it."""
    if "bias" not in inspect.signature(torch_cls.__init__).parameters:
        pytest.skip("this torch has no bias keyword to compare with")
    theirs = torch_cls(*args, bias=bias)  # this torch's own, the oracle
    randomize_affine(theirs, torch.Generator().manual_seed(0))
    torch_bases = (
        nn.GroupNorm,
        nn.modules.batchnorm._BatchNorm,
        nn.modules.instancenorm._InstanceNorm,
    )
    for base in torch_bases:
        monkeypatch.setattr(base, "__init__", _without_bias_keyword(base.__init__))
    ours = twin(*args, bias=bias)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x))
