"""convert() and to_torch(): which layers ``source=`` selects, what a replacement
keeps, and the exact torch -> normlab -> torch round trip (issue 14, point 5).

Written to hold whether or not normlab's twins subclass the torch.nn classes:
the checks are behaviour (types of the result, state_dict, outputs), never a
list of which classes are distinct."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import normlab
from normlab.norms import registry


def _is_normlab(module: nn.Module) -> bool:
    return type(module).__module__.startswith("normlab")


def _trained(layer: nn.Module, shape: tuple[int, ...], dtype=torch.float32) -> nn.Module:
    """``layer`` with affine parameters off their defaults and, where it keeps them,
    running statistics and a batch count moved by three training batches."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    layer.train()
    for _ in range(3):
        layer(torch.randn(shape, dtype=dtype) * 2 + 0.5)
    return layer


def _frozen(layer: nn.Module) -> nn.Module:
    layer.weight.requires_grad_(False)
    return layer


# name -> (layer, input shape): every torch.nn class normlab twins, with the settings
# a conversion must keep: eps, momentum (None too), affine, bias, tracking, dtype,
# frozen parameters, multi-axis shapes.
CASES = {
    "bn2d_eps_momentum_none": (lambda: nn.BatchNorm2d(6, eps=1e-3, momentum=None), (4, 6, 5, 5)),
    "bn1d_float64_frozen": (lambda: _frozen(nn.BatchNorm1d(6).double()), (8, 6)),
    "bn3d_untracked": (lambda: nn.BatchNorm3d(6, track_running_stats=False), (2, 6, 3, 3, 3)),
    "bn2d_no_affine": (lambda: nn.BatchNorm2d(6, affine=False, momentum=0.3), (4, 6, 5, 5)),
    "bn2d_no_bias": (lambda: nn.BatchNorm2d(6, bias=False), (4, 6, 5, 5)),
    "syncbn": (lambda: nn.SyncBatchNorm(6, eps=1e-4), (4, 6, 5, 5)),
    "ln_two_axes": (lambda: nn.LayerNorm((5, 5), eps=1e-3, bias=False), (4, 6, 5, 5)),
    "ln_no_affine": (lambda: nn.LayerNorm(5, elementwise_affine=False), (4, 6, 5)),
    "rms_eps_none": (lambda: nn.RMSNorm(5), (4, 6, 5)),
    "rms_float64": (lambda: nn.RMSNorm((5, 5), eps=1e-3).double(), (4, 6, 5, 5)),
    "gn": (lambda: _frozen(nn.GroupNorm(3, 6, eps=1e-3)), (4, 6, 5, 5)),
    "in1d_tracked": (
        lambda: nn.InstanceNorm1d(6, affine=True, track_running_stats=True),
        (4, 6, 7),
    ),
    "in2d": (lambda: nn.InstanceNorm2d(6), (4, 6, 5, 5)),
    "in3d_momentum_none": (
        lambda: nn.InstanceNorm3d(6, momentum=None, track_running_stats=True),
        (2, 6, 3, 3, 3),
    ),
    "lrn": (lambda: nn.LocalResponseNorm(3, alpha=1e-2, beta=0.5, k=2.0), (4, 6, 5, 5)),
}


def _dtype_of(module: nn.Module) -> torch.dtype:
    floats = [t for t in module.state_dict().values() if t.is_floating_point()]
    return floats[0].dtype if floats else torch.float32


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Same settings (repr), state_dict (keys in order, values bitwise, dtype,
    device), requires_grad of every parameter, and mode."""
    assert repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].device == sb[key].device, key
        assert torch.equal(sa[key], sb[key]), key
    assert [(n, p.requires_grad) for n, p in a.named_parameters()] == [
        (n, p.requires_grad) for n, p in b.named_parameters()
    ]
    assert [m.training for m in a.modules()] == [m.training for m in b.modules()]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", list(CASES))
def test_convert_to_its_own_technique_is_exact_and_to_torch_undoes_it(case, training):
    build, shape = CASES[case]
    original = build()
    dtype = _dtype_of(original)
    original = _trained(original, shape, dtype).train(training)
    technique = registry.spec_of(original).name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is lost, so nothing is warned
        twin = normlab.convert(copy.deepcopy(original), technique, source=technique)
        back = normlab.to_torch(copy.deepcopy(twin))
    assert _is_normlab(twin) and type(twin).__name__ == type(original).__name__
    assert type(back) is type(original)
    _assert_same_state(twin, original)
    _assert_same_state(back, original)
    torch.manual_seed(2)
    inputs = [torch.randn(shape, dtype=dtype) for _ in range(2)]
    for x in inputs:  # in training, the running statistics move the same way
        expected = original(x)
        assert torch.equal(twin(x), expected) and torch.equal(back(x), expected)
    _assert_same_state(twin, original)
    _assert_same_state(back, original)


def _net() -> nn.Sequential:
    """A torch.nn model with a layer of each of the five twinned techniques: the
    BatchNorm with eps=1e-3 and momentum=None, the GroupNorm frozen."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6, eps=1e-3, momentum=None),
        nn.ReLU(),
        nn.GroupNorm(3, 6),
        nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
        nn.LayerNorm(5),
        nn.RMSNorm(5, eps=1e-4),
    )
    model[3].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 5, 5) * 2 + 1).sin().sum().backward()
        optimizer.step()
    return model.eval()


def test_a_torch_model_round_trips_through_normlab_exactly():
    original = _net()
    model = copy.deepcopy(original)
    x = torch.randn(4, 3, 5, 5)
    expected = original(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for technique in ("batchnorm", "layernorm", "groupnorm", "instancenorm", "rmsnorm"):
            assert normlab.convert(model, technique, source=technique) is model
        assert all(_is_normlab(m) for m in model if registry.spec_of(m) is not None)
        assert torch.equal(model(x), expected)
        assert normlab.to_torch(model) is model
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    _assert_same_state(model, original)
    assert torch.equal(model(x), expected)
    for m in (model, original):  # and trains on alike
        m.train()
    assert torch.equal(model(x), original(x))
    _assert_same_state(model, original)


def test_to_torch_leaves_what_torch_lacks_and_names_it_in_one_warning():
    shared = normlab.GroupNorm(2, 4)
    nd = normlab.BatchNormNd(4)
    model = nn.Sequential(
        normlab.BatchNorm2d(4),
        nd,
        normlab.BatchNormNd(4),
        normlab.GhostBatchNorm(4, virtual_batch_size=2),
        normlab.LayerNorm2d(4),
        nn.Sequential(shared, nn.ReLU()),
        nn.Sequential(shared),
        nn.Conv2d(4, 4, 1),
    )
    with pytest.warns(UserWarning) as record:
        assert normlab.to_torch(model) is model
    assert len(record) == 1
    message = str(record[0].message)
    assert "BatchNormNd (2 layers" in message and "any input rank" in message
    assert "GhostBatchNorm (1 layer)" in message and "LayerNorm2d (1 layer)" in message
    assert "GroupNorm" not in message and "BatchNorm2d" not in message
    assert type(model[0]) is nn.BatchNorm2d and model[1] is nd
    assert type(model[5][0]) is nn.GroupNorm and model[5][0] is model[6][0]  # shared, once
    bare = normlab.to_torch(normlab.LocalResponseNorm(3, k=2.0))
    assert type(bare) is nn.LocalResponseNorm and bare.k == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torch.nn model: nothing to do, nothing to say
        torch_model = _net()
        assert normlab.to_torch(torch_model) is torch_model


def _zoo() -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(4),
        normlab.BatchNorm2d(4),
        normlab.BatchNormNd(4),
        nn.BatchNorm1d(4),
        nn.LayerNorm(4),
        normlab.LayerNorm(4),
        nn.GroupNorm(2, 4),
        nn.LocalResponseNorm(3),
    )


def _converted(source) -> list[int]:
    model = _zoo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DyT keeps no running statistics
        normlab.convert(model, "dyt", source=source)
    return [i for i, m in enumerate(model) if isinstance(m, normlab.DynamicTanh)]


@pytest.mark.parametrize(
    "source, converted",
    [
        (None, [0, 1, 2, 3, 4, 5, 6]),  # every layer with a feature count: not LRN
        ("batchnorm", [0, 1, 2, 3]),  # torch.nn's and normlab's alike
        ("BN", [0, 1, 2, 3]),  # an alias, any case
        ("batchnorm2d", [0, 1]),  # an alias that names one class: that class and its twin
        ("layer", [4, 5]),
        (nn.BatchNorm2d, [0, 1]),  # a class: it and normlab's twin of it
        (normlab.BatchNorm2d, [0, 1]),
        (nn.LayerNorm, [4, 5]),
        (("layer", nn.GroupNorm), [4, 5, 6]),  # a tuple of names and classes
        (("batchnorm1d", normlab.BatchNormNd), [2, 3]),
    ],
)
def test_source_takes_names_aliases_classes_and_tuples(source, converted):
    assert _converted(source) == converted


def test_unknown_names_and_bad_sources_are_refused_with_the_choices():
    model = _zoo()
    with pytest.raises(
        KeyError, match=r"convert: unknown source 'batchnrom'; did you mean 'batchnorm'"
    ):
        normlab.convert(model, "group", source="batchnrom")
    with pytest.raises(KeyError, match=r"unknown source 'bachnorm'.*techniques: .*groupnorm"):
        normlab.convert(model, "group", source=("layer", "bachnorm"))
    with pytest.raises(
        KeyError, match=r"convert: unknown target 'groupnrom'; did you mean 'groupnorm'"
    ):
        normlab.convert(model, "groupnrom")
    with pytest.raises(KeyError, match=r"unknown target 'xyz'.*techniques: .*layernorm"):
        normlab.convert(model, "xyz")
    with pytest.raises(TypeError, match=r"convert: source must be .* got 3"):
        normlab.convert(model, "group", source=3)
    assert [type(m) for m in model] == [type(m) for m in _zoo()]  # nothing touched


def test_a_model_with_nothing_to_convert_says_so():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    with pytest.warns(
        UserWarning, match=r"no layer matches source 'batchnorm'; nothing was converted"
    ):
        assert normlab.convert(model, "group", source="batchnorm") is model
    assert type(model[1]) is nn.LayerNorm
    with pytest.warns(UserWarning, match="nothing was converted"):
        normlab.convert(nn.Sequential(nn.Linear(3, 3)), "layernorm")


def test_a_conversion_to_another_technique_keeps_what_it_can():
    """eps=1e-3, momentum=None, trained statistics and count, a frozen weight, float64,
    eval mode: BatchNorm2d -> GhostBatchNorm, which has a place for each."""
    bn = _trained(nn.BatchNorm2d(6, eps=1e-3, momentum=None).double(), (8, 6, 3, 3), torch.float64)
    bn.weight.requires_grad_(False)
    bn.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = normlab.convert(copy.deepcopy(bn), "ghostbatchnorm")
    assert isinstance(new, normlab.GhostBatchNorm) and not new.training
    assert (new.eps, new.momentum, int(new.num_batches_tracked)) == (1e-3, None, 3)
    assert not new.weight.requires_grad and new.bias.requires_grad
    assert all(t.dtype == torch.float64 for t in (new.weight, new.bias, new.running_var))
    assert torch.equal(new.running_mean, bn.running_mean) and torch.equal(new.weight, bn.weight)
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(new(x), bn(x))


@pytest.mark.parametrize("affine", [False, True])
def test_untracked_and_affine_free_layers_stay_so_in_another_technique(affine):
    bn = nn.BatchNorm2d(6, affine=affine, track_running_stats=False)
    new = normlab.convert(bn, "instancenorm")  # InstanceNormNd: both switches carried
    assert (new.affine, new.track_running_stats) == (affine, False)
    assert set(new.state_dict()) == set(bn.state_dict())


def test_the_device_is_kept():
    model = nn.Sequential(nn.BatchNorm2d(6, device="meta"), nn.LayerNorm(6, device="meta"))
    with pytest.warns(UserWarning, match="cannot carry running statistics"):
        normlab.convert(model, "groupnorm", source="batchnorm")
    normlab.convert(model, "layernorm", source="layernorm")
    assert all(_is_normlab(m) for m in model)
    assert {t.device.type for t in model.state_dict().values()} == {"meta"}
    normlab.to_torch(model)
    assert type(model[0]) is nn.GroupNorm and type(model[1]) is nn.LayerNorm
    assert {t.device.type for t in model.state_dict().values()} == {"meta"}


# --- found by a review as a user (issue 14) ------------------------------------------------


def test_a_layer_held_in_two_slots_of_one_parent_is_converted_in_both():
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(bn, nn.ReLU(), bn)
    model.alias = bn  # an attribute alias too
    normlab.convert(model, "batchnorm")
    assert _is_normlab(model[0]) and model[0] is model[2] is model.alias
    normlab.to_torch(model)
    assert type(model[0]) is nn.BatchNorm2d and model[0] is model[2] is model.alias


class _BatchNormAct2d(nn.BatchNorm2d):
    """A BatchNorm extended with an activation, as timm's BatchNormAct2d."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


def test_a_class_that_extends_a_norm_is_left_alone_unless_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _BatchNormAct2d(4)).eval()
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    with pytest.warns(UserWarning, match=r"extend a normalization layer.*_BatchNormAct2d \(1\)"):
        normlab.convert(model, "batchnorm")
    assert type(model[1]) is _BatchNormAct2d
    assert torch.equal(model(x), before)
    normlab.convert(model, "batchnorm", source=_BatchNormAct2d)  # asked for by name
    assert isinstance(model[1], normlab.BatchNorm2d)


@pytest.mark.parametrize("target", ["layernorm", "batchnorm", "groupnorm", "scalenorm"])
def test_rmsnorm_eps_none_becomes_the_targets_default(target):
    model = nn.Sequential(nn.RMSNorm(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        normlab.convert(model, target)
    layer = getattr(model[0], "norm", model[0])  # channels-first ones come wrapped
    assert layer.eps == registry.create(target, 8).eps
    assert torch.isfinite(model(torch.randn(3, 8))).all()


@pytest.mark.parametrize("target", ["rmsnorm", "dyt", "scalenorm"])
def test_converted_norms_are_what_runs_in_a_torch_transformer_encoder(target):
    """torch's inference fast path of nn.TransformerEncoderLayer computes LayerNorm
    from norm1/norm2's weights itself; after convert the converted norms run."""
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        normlab.convert(model, target, source="layernorm")
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        fast_path_allowed = model(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow_path = model(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    # (attention's own fast path may round differently: close, not bitwise)
    torch.testing.assert_close(fast_path_allowed, slow_path)


@pytest.mark.parametrize("target", ["batchnorm", "groupnorm", "instancenorm"])
def test_a_last_axis_norm_becomes_a_channels_first_technique_over_that_axis(target):
    """A LayerNorm normalizes the last axis of (N, T, C) tokens; the channels-first
    technique that replaces it takes that axis as its channels, as the model
    builders' channels-last layout does (it used to take dim 1, the tokens, and
    fail, or normalize the wrong axis where the sizes happened to agree)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8))
    normlab.convert(model, target)
    inner = model[1].norm  # the technique itself, under its wrapper
    assert type(inner) is type(registry.create(target, 8))
    inputs = [torch.randn(4, 5, 6)] + ([] if target == "instancenorm" else [torch.randn(4, 6)])
    for x in inputs:  # tokens, and a plain (N, C) batch
        h = model[0](x).detach()
        expected = copy.deepcopy(inner)(h.movedim(-1, 1)).movedim(1, -1)
        torch.testing.assert_close(model(x), expected)


# --- issue 25: no silent change of what a model computes ------------------------------------


def _randomized(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight) * 0.3 + 0.2)
    return layer


@pytest.mark.parametrize("unit_offset", [False, True])
def test_convert_across_gemmas_unit_offset_keeps_the_scale(unit_offset):
    """LMRMSNorm(unit_offset=True) scales by 1 + w, every other RMSNorm by w: the weight
    carried across becomes w − 1 or w + 1 so the output stays."""
    torch.manual_seed(0)
    old = _randomized(normlab.LMRMSNorm(8, unit_offset=unit_offset))
    x = torch.randn(4, 8)
    expected = old(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = normlab.convert(copy.deepcopy(old), "rmsnorm_lm", unit_offset=not unit_offset)
        plain = normlab.convert(copy.deepcopy(old), "rmsnorm")
        layer = normlab.convert(copy.deepcopy(old), "layernorm")
    torch.testing.assert_close(other(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    scale = old.weight + 1 if unit_offset else old.weight
    torch.testing.assert_close(layer.weight, scale)  # LayerNorm scales by its weight


@pytest.mark.parametrize("target", ["frn", "evonorm_s0", "evonorm_b0"])
def test_convert_to_a_norm_with_its_own_activation_names_the_one_after_it(target):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.warns(UserWarning, match=r"its own activation.*2 \(ReLU\)"):
        normlab.convert(copy.deepcopy(model), target)
    replaced = normlab.convert(copy.deepcopy(model), target, replace_activation=True)
    assert isinstance(replaced[2], nn.Identity)
    assert registry.spec_of(replaced[1]).fused_activation


def test_convert_warns_only_about_settings_the_user_chose():
    model = nn.Sequential(nn.BatchNorm2d(6), nn.LayerNorm(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # momentum 0.1 and eps 1e-5 are only the defaults
        normlab.convert(copy.deepcopy(model), "dyt")
    chosen = nn.Sequential(nn.BatchNorm2d(6, momentum=0.3))
    with pytest.warns(UserWarning, match="momentum=0.3"):
        normlab.convert(chosen, "groupnorm")
