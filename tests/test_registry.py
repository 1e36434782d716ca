"""The registry (names, aliases, axes data), create() and convert()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab.norms import registry


def test_available_starts_with_the_baseline_and_holds_every_technique():
    names = normlab.available()
    assert names[0] == "none"
    for name in (
        "batchnorm",
        "layernorm",
        "groupnorm",
        "instancenorm",
        "rmsnorm",
        "lrn",
        "batchrenorm",
        "ghostbatchnorm",
        "frozenbatchnorm",
        "frn",
        "evonorm_b0",
        "evonorm_s0",
        "switchable",
        "scalenorm",
        "dyt",
        "derf",
    ):
        assert name in names


@pytest.mark.parametrize(
    ("name", "nchw", "features", "batch_dependent", "train_eval_differ"),
    [
        ("batchnorm", "N, H, W", "N", True, True),
        ("groupnorm", "C/G, H, W", "F/G", False, False),
        ("instancenorm", "H, W", "single value", False, False),
        ("layernorm", "C", "F", False, False),
        ("ghostbatchnorm", "N/v, H, W", "N/v", True, True),
        ("switchable", "H, W + C, H, W + N, H, W", "single value + F + N", True, True),
        ("evonorm_b0", "N, H, W + H, W", "N + single value", True, True),
        ("dyt", "none", "none", False, False),
        ("derf", "none", "none", False, False),
        ("none", "none", "none", False, False),
    ],
)
def test_spec_axes_follow_the_papers(name, nchw, features, batch_dependent, train_eval_differ):
    s = normlab.spec(name)
    assert (s.axes, s.axes_features) == (nchw, features)
    assert (s.batch_dependent, s.train_eval_differ) == (batch_dependent, train_eval_differ)
    assert s.paper


def test_spec_parameters_are_read_from_the_built_layer():
    assert normlab.spec("batchnorm").parameters == ("weight", "bias")
    assert normlab.spec("dyt").parameters == ("alpha", "weight", "bias")
    assert normlab.spec("derf").parameters == ("alpha", "shift", "weight", "bias")
    assert normlab.spec("frn").parameters == ("weight", "bias", "tau")
    assert normlab.spec("lrn").parameters == ()


@pytest.mark.parametrize(
    ("alias", "cls"),
    [
        ("batch", normlab.BatchNormNd),
        ("bn", normlab.BatchNormNd),
        ("BatchNorm2d", normlab.BatchNorm2d),
        ("group", normlab.GroupNorm),
        ("gn", normlab.GroupNorm),
        ("layer", normlab.LayerNorm),
        ("ln", normlab.LayerNorm),
        ("instance", normlab.InstanceNormNd),
        ("rms", normlab.RMSNorm),
        ("batch_renorm", normlab.BatchRenorm),
        ("ghost_batch", normlab.GhostBatchNorm),
        ("frn", normlab.FilterResponseNorm2d),
        ("evonorm_b0", normlab.EvoNorm2dB0),
        ("evonorm-s0", normlab.EvoNorm2dS0),
        ("switchable", normlab.SwitchableNorm2d),
        ("scale", normlab.ScaleNorm),
        ("dyt", normlab.DynamicTanh),
        ("derf", normlab.DynamicErf),
        ("dynamic-erf", normlab.DynamicErf),
        ("none", nn.Identity),
        ("identity", nn.Identity),
        ("layernorm2d", normlab.LayerNorm2d),
    ],
)
def test_create_by_name_and_alias(alias, cls):
    m = normlab.create(alias, 16)
    assert type(m) is cls


@pytest.mark.parametrize(
    "name",
    [
        "batch",
        "instance",
        "group",
        "batch_renorm",
        "ghost_batch",
        "frn",
        "evonorm_b0",
        "evonorm_s0",
        "switchable",
    ],
)
@pytest.mark.parametrize("shape", [(4, 8, 5), (4, 8, 3, 3), (4, 8, 2, 3, 3)])
def test_generic_names_accept_any_rank(name, shape):
    m = normlab.create(name, 8)
    assert m(torch.randn(shape)).shape == shape
    assert m.eval()(torch.randn(shape)).shape == shape


@pytest.mark.parametrize("name", ["layer", "rms", "scale", "dyt", "derf", "lm_rms"])
def test_channels_last_names_normalize_the_last_axis(name):
    m = normlab.create(name, 8)
    x = torch.randn(2, 3, 8)
    assert m(x).shape == x.shape
    with pytest.raises(normlab.NormInputError):
        m(torch.randn(2, 8, 3))


def test_group_count_defaults_to_the_largest_divisor_up_to_32():
    assert normlab.create("group", 64).num_groups == 32
    assert normlab.create("group", 48).num_groups == 24
    assert normlab.create("group", 20).num_groups == 10  # 2 channels per group at least
    assert normlab.create("group", 7).num_groups == 1
    assert normlab.create("group", 37).num_groups == 1
    assert normlab.create("evonorm_s0", 48).groups == 24
    assert normlab.create("group", 64, num_groups=4).num_groups == 4


def test_create_passes_keyword_arguments():
    m = normlab.create("batch", 8, momentum=None, eps=1e-3)
    assert (m.momentum, m.eps) == (None, 1e-3)
    assert normlab.create("lrn", 8, size=3).size == 3


def test_unknown_name_lists_close_matches():
    with pytest.raises(
        KeyError, match=r"unknown normalization 'batchnrom'; did you mean 'batchnorm'"
    ):
        normlab.create("batchnrom", 8)
    with pytest.raises(KeyError, match="techniques: none, batchnorm"):
        normlab.spec("qqq")


# ------------------------------------------------ facts as data, spec_of, factory

BN, IN = nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm
FACTS = {  # name: (inference, fused_activation, torch_classes)
    "none": ("none", False, ()),
    "batchnorm": ("running", False, (BN,)),
    "layernorm": ("sample", False, (nn.LayerNorm,)),
    "groupnorm": ("sample", False, (nn.GroupNorm,)),
    "layernorm_chw": ("sample", False, ()),
    "instancenorm": ("sample", False, (IN,)),
    "rmsnorm": ("sample", False, (nn.RMSNorm,)),
    "rmsnorm_lm": ("sample", False, ()),
    "lrn": ("sample", False, (nn.LocalResponseNorm,)),
    "batchrenorm": ("running", False, ()),
    "ghostbatchnorm": ("running", False, ()),
    "cross_iteration_bn": ("running", False, ()),
    "frozenbatchnorm": ("frozen", False, ()),
    "frn": ("sample", True, ()),
    "evonorm_b0": ("running", True, ()),
    "evonorm_s0": ("sample", True, ()),
    "switchable": ("running", False, ()),
    "scalenorm": ("sample", False, ()),
    "dyt": ("none", False, ()),
    "derf": ("none", False, ()),
}


def test_every_technique_has_its_facts():
    assert set(FACTS) == set(normlab.available())
    for name, facts in FACTS.items():
        s = normlab.spec(name)
        assert (s.inference, s.fused_activation, s.torch_classes) == facts, name
        assert s.torch_twin == bool(s.torch_classes)
        # the facts agree with one another
        assert s.train_eval_differ == (s.inference == "running"), name
        assert (s.inference in ("batch", "running")) == s.batch_dependent, name
        assert (s.stats == ()) == (s.inference in ("none", "frozen")), name


@pytest.mark.parametrize("name", normlab.available())
def test_inference_is_where_the_layer_takes_its_statistics_from(name):
    s = normlab.spec(name)
    m = registry.factory(name)(8)
    x = torch.randn(4, 8, 3, 3)
    x[0, 0, 0, 0] = 1.5  # positive: FRN's TLU (max with τ = 0) keeps it
    running = {k: b.clone() for k, b in m.named_buffers() if k.startswith("running_")}
    assert bool(running) == (s.inference in ("running", "frozen"))
    with torch.no_grad():
        m.train()(x)
        moved = any(not torch.equal(b, running[k]) for k, b in m.named_buffers() if k in running)
        assert moved == (s.inference == "running")
        m.eval()
        alone = m(x[:1])
        torch.testing.assert_close(alone, m(x)[:1])  # no technique keeps batch stats in eval
        assert s.inference != "batch"
        # per-sample statistics: changing the rest of a sample changes one value
        y = x.clone()
        y[0] = 3 * y[0] + 1
        y[0, 0, 0, 0] = x[0, 0, 0, 0]
        same = torch.allclose(m(y)[0, 0, 0, 0], alone[0, 0, 0, 0])
        if s.inference == "sample":
            assert not same
        if s.inference in ("none", "frozen"):
            assert same


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (nn.BatchNorm1d(4), "batchnorm"),
        (nn.BatchNorm2d(4), "batchnorm"),
        (nn.BatchNorm3d(4), "batchnorm"),
        (nn.SyncBatchNorm(4), "batchnorm"),
        (nn.InstanceNorm2d(4), "instancenorm"),
        (nn.LayerNorm(4), "layernorm"),
        (nn.GroupNorm(2, 4), "groupnorm"),
        (nn.RMSNorm(4), "rmsnorm"),
        (nn.LocalResponseNorm(3), "lrn"),
        (normlab.create("sync_bn", 4), "batchnorm"),
        (normlab.create("batchnorm2d", 4), "batchnorm"),
        (normlab.create("layernorm2d", 4), "layernorm"),
        (normlab.create("rmsnorm2d", 4), "rmsnorm"),
        (normlab.create("batchrenorm1d", 4), "batchrenorm"),
        (normlab.create("ghostbatchnorm2d", 4), "ghostbatchnorm"),
        (normlab.create("instancenorm3d", 4), "instancenorm"),
        (nn.Identity(), None),
        (nn.Linear(4, 4), None),
        (nn.ReLU(), None),
    ],
)
def test_spec_of_names_the_technique_of_torch_and_normlab_layers(module, name):
    s = registry.spec_of(module)
    assert (s.name if s else None) == name


def test_spec_of_every_technique_and_a_subclass():
    for name in normlab.available():
        s = registry.spec_of(normlab.create(name, 8))
        assert (s.name if s else None) == (None if name == "none" else name)

    class MyBatchNorm(nn.BatchNorm2d):
        pass

    assert registry.spec_of(MyBatchNorm(4)).name == "batchnorm"
    wrapped = registry.factory("bn", "channels_last")(4)  # FeaturesLast: not itself a norm
    assert registry.spec_of(wrapped) is None and registry.spec_of(wrapped.norm).name == "batchnorm"


def test_norm_classes_hold_normlab_and_torch_layers_once():
    classes = registry.norm_classes()
    assert len(classes) == len(set(classes))
    assert nn.Identity not in classes
    for cls in (BN, IN, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm):
        assert cls in classes
    for name in normlab.available()[1:]:
        assert type(normlab.create(name, 8)) in classes


@pytest.mark.parametrize(
    ("name", "layout", "cls", "wrapped"),
    [
        ("bn", "channels_first", normlab.BatchNormNd, False),
        ("bn", "channels_last", normlab.BatchNormNd, True),
        ("ln", "channels_first", normlab.LayerNorm2d, False),
        ("ln", "channels_last", normlab.LayerNorm, False),
        ("layernorm2d", "channels_first", normlab.LayerNorm2d, False),
        ("layernorm2d", "channels_last", normlab.LayerNorm2d, True),
        ("rms", "channels_first", normlab.RMSNorm2d, False),
        ("scale", "channels_first", normlab.ScaleNorm, False),
        ("dyt", "channels_last", normlab.DynamicTanh, False),
        ("derf", "channels_last", normlab.DynamicErf, False),
        ("derf", "channels_first", normlab.DynamicErf, False),
        ("frn", "channels_last", normlab.FilterResponseNorm2d, True),
        ("none", "channels_first", nn.Identity, False),
        ("identity", "channels_last", nn.Identity, False),
    ],
)
def test_factory_builds_the_technique_in_a_layout(name, layout, cls, wrapped):
    from normlab.norms._layout import FeaturesLast

    f = registry.factory(name, layout)
    assert (f.spec, f.layout) == (normlab.spec(name), layout)
    m = f(8)
    assert isinstance(m, FeaturesLast) == wrapped
    assert type(m.norm if wrapped else m) is cls
    x = torch.randn(2, 8, 3, 3) if layout == "channels_first" else torch.randn(2, 5, 8)
    assert m(x).shape == x.shape
    if cls in (normlab.ScaleNorm, normlab.DynamicTanh, normlab.DynamicErf):
        assert m.channels_last == (layout == "channels_last")


def test_factory_passes_kwargs_and_checks_names_and_layouts():
    import pickle

    f = registry.factory("gn", num_groups=2)
    assert f(8).num_groups == 2 and f(8) is not f(8)
    assert pickle.loads(pickle.dumps(f)) == f
    assert f.with_layout("channels_last").layout == "channels_last"
    assert "num_groups=2" in repr(f)
    with pytest.raises(KeyError, match="did you mean 'batchnorm'"):
        registry.factory("batchnrom")
    with pytest.raises(ValueError, match="unknown layout 'nhwc'"):
        registry.factory("bn", "nhwc")


def test_monitor_convert_and_noise_keep_no_lists_of_their_own():
    from normlab.experiments import runner
    from normlab.monitor import monitor
    from normlab.norms import convert

    assert not hasattr(monitor, "NORMS")
    assert not hasattr(convert, "_TORCH_NORMS") and not hasattr(convert, "_NORMLAB_NORMS")
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        normlab.GroupNorm(2, 4),
        nn.LocalResponseNorm(3),
        nn.Identity(),
        nn.ReLU(),
    )
    norms = {name for name, m in model.named_modules() if registry.spec_of(m)}
    assert norms == {"1", "2", "3"}
    assert {name for name, _, _ in normlab.Monitor(model)._selected} == norms | {"5"}
    handles = runner.add_noise(model, 0.1)
    assert len(handles) == 3
    for h in handles:
        h.remove()


def test_convert_source_name_takes_torch_layers_of_the_technique_too():
    model = nn.Sequential(nn.BatchNorm2d(4), normlab.BatchNorm2d(4), nn.GroupNorm(2, 4))
    normlab.convert(model, "group", source="batchnorm")
    assert [type(m) for m in model] == [normlab.GroupNorm, normlab.GroupNorm, nn.GroupNorm]
    model = nn.Sequential(nn.LayerNorm(4), nn.LocalResponseNorm(3))
    normlab.convert(model, "rms")  # every norm with a feature count: not LRN
    assert [type(m) for m in model] == [normlab.RMSNorm, nn.LocalResponseNorm]


# ---------------------------------------------------------------- convert


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, small."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        BasicBlock(16, 16),
        BasicBlock(16, 32, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def _norms(model: nn.Module, cls) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, cls)]


@pytest.mark.parametrize(
    "target",
    [
        "group",
        "instance",
        "batch_renorm",
        "ghost_batch",
        "frn",
        "evonorm_s0",
        "switchable",
        "layer",
        "rms",
        "dyt",
        "derf",
        "scale",
        "none",
    ],
)
def test_convert_resnet(target):
    model = resnet()
    with torch.no_grad():
        for bn in _norms(model, nn.BatchNorm2d):
            bn.weight.uniform_(0.5, 1.5)
            bn.running_mean.normal_()
    model.eval()
    weights = [bn.weight.clone() for bn in _norms(model, nn.BatchNorm2d)]
    means = [bn.running_mean.clone() for bn in _norms(model, nn.BatchNorm2d)]
    out = normlab.convert(model, target)
    assert out is model
    assert not _norms(model, nn.BatchNorm2d)
    new = [
        m
        for m in model.modules()
        if type(m).__module__.startswith("normlab")
        or (target == "none" and isinstance(m, nn.Identity))
    ]
    assert len(new) == 6
    assert not any(m.training for m in new)
    for m, w, mu in zip(new, weights, means, strict=True):
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.shape == w.shape:
            torch.testing.assert_close(m.weight.detach(), w)
        if getattr(m, "running_mean", None) is not None:
            torch.testing.assert_close(m.running_mean, mu)
    if target == "layer":  # channels-first sources get LayerNorm over C at each position
        assert all(isinstance(m, normlab.LayerNorm2d) for m in new)
    model.train()
    y = model(torch.randn(4, 3, 8, 8))
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    y.sum().backward()


def test_convert_keeps_dtype_and_device_and_recurses_through_normlab_layers():
    model = resnet().double()
    normlab.convert(model, "group")
    normlab.convert(model, "batchnorm2d", source="groupnorm")
    assert len(_norms(model, normlab.BatchNorm2d)) == 6
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.randn(2, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_convert_mlp_from_batchnorm_to_layernorm_and_back():
    mlp = nn.Sequential(
        nn.Linear(20, 32),
        nn.BatchNorm1d(32),
        nn.Sigmoid(),
        nn.Linear(32, 32),
        nn.BatchNorm1d(32),
        nn.Sigmoid(),
        nn.Linear(32, 10),
    )
    normlab.convert(mlp, "layer")
    assert len(_norms(mlp, normlab.LayerNorm2d)) == 2  # over dim 1 = the features of (N, F)
    x = torch.randn(5, 20)
    h = mlp[0](x)
    # eps is carried over from the BatchNorm it replaces (1e-5), not LayerNorm2d's default
    torch.testing.assert_close(mlp[1](h), torch.nn.functional.layer_norm(h, (32,), eps=1e-5))
    normlab.convert(mlp, "batch", momentum=0.5)
    assert [m.momentum for m in _norms(mlp, normlab.BatchNormNd)] == [0.5, 0.5]
    assert mlp(x).shape == (5, 10)


def test_convert_transformer_layernorm_keeps_the_last_axis():
    block = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    normlab.convert(block, "rms")
    assert isinstance(block[1], normlab.RMSNorm)
    assert block(torch.randn(2, 5, 8)).shape == (2, 5, 8)


def test_convert_a_bare_layer_returns_the_replacement():
    new = normlab.convert(nn.BatchNorm2d(4), "group")
    assert isinstance(new, normlab.GroupNorm) and new.num_groups == 2


def test_convert_with_a_source_class_and_an_unknown_target():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.LayerNorm(4))
    normlab.convert(model, "dyt", source=nn.LayerNorm)
    assert isinstance(model[0], nn.BatchNorm1d) and isinstance(model[1], normlab.DynamicTanh)
    with pytest.raises(KeyError, match="did you mean"):
        normlab.convert(model, "groupnrom")


def test_docs_technique_page_matches_the_registry():
    """docs/techniques.md holds the table `normlab list --markdown --costs ...` prints;
    regenerate it after changing the registry or rerunning the benchmark."""
    from pathlib import Path

    from normlab.cli import read_costs, technique_markdown

    root = Path(__file__).parent.parent
    costs = read_costs(root / "benchmarks/results/cpu_norms-32x64x28x28.json")
    assert set(costs) >= set(normlab.available()) - {"none"}
    assert technique_markdown(costs) in (root / "docs/techniques.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "name", [n for n in normlab.available() if n not in ("none", "lrn", "frozenbatchnorm")]
)
def test_reset_parameters_restores_the_initial_state(name):
    m = normlab.create(name, 8)
    fresh = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.5)
    m.reset_parameters()
    for key, value in fresh.items():
        torch.testing.assert_close(m.state_dict()[key], value, msg=key)


@pytest.mark.parametrize(
    ("channels", "groups"), [(16, 8), (32, 16), (48, 24), (64, 32), (256, 32), (6, 3), (3, 1)]
)
def test_groupnorms_default_groups_hold_at_least_two_channels(channels, groups):
    """32 groups lowered to a divisor of C leaving at least 2 channels per group: never
    one channel per group (InstanceNorm) without a word."""
    for name, attribute in (("groupnorm", "num_groups"), ("evonorm_s0", "groups")):
        layer = normlab.create(name, channels)
        assert getattr(layer, attribute) == groups, (name, channels)
    converted = normlab.convert(nn.Sequential(nn.BatchNorm2d(channels)), "groupnorm")
    assert converted[0].num_groups == groups


def test_a_groupnorm_of_one_channel_per_group_is_named():
    with pytest.warns(UserWarning, match="1 channel per group.*InstanceNorm"):
        normlab.create("groupnorm", 1)
