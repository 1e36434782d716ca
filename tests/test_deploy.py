"""recalibrate_batchnorm and fold_batchnorm against hand-computed oracles."""

import warnings

import pytest
import torch
from torch import nn

import normlab


def _batches(seed: int = 0, sizes=(4, 6, 3), c: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # a different offset per batch, so the spread of batch means matters
    return [torch.randn(n, c, 5, 5, generator=g) * 2 + i for i, n in enumerate(sizes)]


def _stats(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance, float64, over N and spatial axes."""
    x = values.double().transpose(0, 1).reshape(values.shape[1], -1)
    return x.mean(1), x.var(1, unbiased=True)


def _two_bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        normlab.BatchNorm2d(4, momentum=None),
        nn.ReLU(),
        nn.Conv2d(4, 5, 1),
        nn.BatchNorm2d(5),
    )
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(9.0)
            bn.num_batches_tracked.fill_(11)
    return model


def test_recalibrate_two_batchnorms_against_hand_statistics():
    model = _two_bn_model().eval()
    batches = _batches()
    # oracle: BN1's input is conv0's output; BN2's input comes from the train-mode
    # forward (BN1 normalizing with each batch's own statistics), computed by formula
    conv0, bn1, conv3 = model[0], model[1], model[3]
    with torch.no_grad():
        first = [conv0(x).double() for x in batches]
        second = []
        for y in first:
            m, v = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
            z = (y - m[None, :, None, None]) / torch.sqrt(v[None, :, None, None] + bn1.eps)
            z = (
                z * bn1.weight.double()[None, :, None, None]
                + bn1.bias.double()[None, :, None, None]
            )
            second.append(conv3.double()(torch.relu(z)))
        conv3.float()
    mean1, var1 = _stats(torch.cat(first))
    mean2, var2 = _stats(torch.cat(second))
    params = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}

    out = normlab.recalibrate_batchnorm(model, [(x, 0) for x in batches])

    assert out is model
    torch.testing.assert_close(model[1].running_mean.double(), mean1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var.double(), var1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[4].running_mean.double(), mean2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[4].running_var.double(), var2, rtol=1e-5, atol=1e-5)
    # mode, momentum, num_batches_tracked and parameters as they were
    assert not any(m.training for m in model.modules())
    assert model[1].momentum is None and model[4].momentum == 0.1
    for k, v in model.state_dict().items():
        if "running" not in k:
            assert torch.equal(v, params[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_recalibrate_is_population_not_mean_of_batch_variances():
    bn = nn.BatchNorm2d(3)
    batches = _batches(1)
    normlab.recalibrate_batchnorm(nn.Sequential(bn), batches)
    mean, var = _stats(torch.cat(batches))
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-6, atol=1e-6)


def test_recalibrate_restores_mixed_modes_and_other_buffers():
    model = _two_bn_model().train()
    model[3].eval()
    renorm = normlab.BatchRenorm2d(5)
    model.append(renorm)
    before = {k: v.clone() for k, v in renorm.state_dict().items()}
    with pytest.warns(UserWarning, match="BatchRenorm2d"):
        normlab.recalibrate_batchnorm(model, _batches())
    assert model.training and not model[3].training and model[1].training
    for k, v in renorm.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model[1].num_batches_tracked.item() == 11


def test_recalibrate_exception_restores_everything():
    model = _two_bn_model().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def batches():
        yield from _batches()[:2]
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        normlab.recalibrate_batchnorm(model, batches())
    assert not any(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_recalibrate_forward_hook():
    bn = nn.BatchNorm1d(2)
    batches = [{"x": torch.randn(8, 2) + 3} for _ in range(3)]
    normlab.recalibrate_batchnorm(bn, batches, forward=lambda m, b: m(b["x"]))
    mean, var = _stats(torch.cat([b["x"] for b in batches]))
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-6, atol=1e-6)


def test_recalibrate_errors():
    with pytest.raises(ValueError, match="empty"):
        normlab.recalibrate_batchnorm(nn.BatchNorm2d(3), [])
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    with pytest.warns(UserWarning, match="no BatchNorm"):
        assert normlab.recalibrate_batchnorm(model, [torch.randn(2, 2)]) is model


def _randomize(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        n = norm.num_features
        norm.running_mean.copy_(torch.randn(n))
        norm.running_var.copy_(torch.rand(n) + 0.5)
        if norm.weight is not None:
            norm.weight.copy_(torch.rand(n) + 0.5)
            norm.bias.copy_(torch.randn(n))
    return norm


def _check_fold(model: nn.Module, x: torch.Tensor) -> nn.Module:
    model.eval()
    with torch.no_grad():
        expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert normlab.fold_batchnorm(model, example=x) is model
    assert not any(
        isinstance(
            m, (nn.modules.batchnorm._BatchNorm, normlab.FrozenBatchNorm2d, normlab.BatchRenorm)
        )
        for m in model.modules()
    )
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    return model


@pytest.mark.parametrize(
    "norm",
    [
        lambda: nn.BatchNorm2d(4),
        lambda: normlab.BatchNorm2d(4),
        lambda: normlab.FrozenBatchNorm2d(4),
        lambda: normlab.BatchRenorm2d(4),
        lambda: nn.BatchNorm2d(4, affine=False),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_fold_conv2d(norm, bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=bias), _randomize(norm()), nn.ReLU())
    _check_fold(model, torch.randn(2, 3, 6, 6))
    assert isinstance(model[1], nn.Identity) and model[0].bias is not None


def test_fold_linear_conv1d_conv3d_nested():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(6, 5), _randomize(nn.BatchNorm1d(5))),
        nn.ReLU(),
        nn.Unflatten(1, (5, 1)),
        nn.Sequential(nn.Conv1d(5, 4, 1)),
        nn.Sequential(nn.Sequential(_randomize(normlab.BatchNorm1d(4))), nn.ReLU()),
        nn.Unflatten(2, (1, 1, 1)),
        nn.Conv3d(4, 2, 1, bias=False),
        _randomize(normlab.BatchNormNd(2)),
    )
    _check_fold(model, torch.randn(3, 6))


def test_fold_warns_unfolded_and_refuses_training():
    with pytest.raises(ValueError, match="training mode"):
        normlab.fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    shared = nn.Conv2d(4, 4, 1)
    model = nn.Sequential(
        Block(),
        nn.BatchNorm2d(4, track_running_stats=False),  # after Block: not a Conv
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4, track_running_stats=False),
        shared,
        nn.BatchNorm2d(4),
        shared,
    ).eval()
    with pytest.warns(UserWarning) as record:
        normlab.fold_batchnorm(model)
    (message,) = [str(w.message) for w in record]
    assert "0.bn" not in message  # a custom forward's pair folds (the traced graph shows it)
    assert "1 (BatchNorm2d: not directly after a Conv/Linear)" in message
    assert "3 (BatchNorm2d: keeps no running statistics)" in message
    assert "5 (BatchNorm2d: it or the layer before it is called more than once)" in message
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3


# ---------------------------------------------------------------- fold: never silently wrong


def _fold_and_compare(model: nn.Module, x: torch.Tensor, **kwargs) -> tuple[float, list[str]]:
    """(largest output change, warning messages) of folding ``model`` on input ``x``."""
    model.eval()
    with torch.no_grad():
        before = model(x)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        normlab.fold_batchnorm(model, **kwargs)
    with torch.no_grad():
        after = model(x)
    return (after - before).abs().max().item(), [str(w.message) for w in record]


def test_fold_never_folds_a_linear_whose_features_are_not_at_dim_1():
    """Linear then BatchNorm1d on (N, C, L): the Linear's features are last, the norm's
    at dim 1; with L == C the shapes agree and a fold would change the output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), _randomize(nn.BatchNorm1d(5)))
    change, messages = _fold_and_compare(model, torch.randn(4, 5, 5))
    assert change < 1e-5 and isinstance(model[1], nn.BatchNorm1d)
    assert any("1 (BatchNorm1d" in m and "example" in m for m in messages)
    # with an example input the shape is known: (N, C, L) stays, (N, C) folds
    change, messages = _fold_and_compare(model, torch.randn(4, 5, 5), example=torch.randn(2, 5, 5))
    assert change < 1e-5 and isinstance(model[1], nn.BatchNorm1d)
    flat = nn.Sequential(nn.Linear(6, 5), _randomize(nn.BatchNorm1d(5)))
    change, messages = _fold_and_compare(flat, torch.randn(4, 6), example=torch.randn(2, 6))
    assert change < 1e-5 and isinstance(flat[1], nn.Identity) and not messages


def test_fold_leaves_a_weight_another_layer_shares():
    torch.manual_seed(0)
    encoder = nn.Linear(6, 6)
    decoder = nn.Linear(6, 6)
    decoder.weight = encoder.weight  # tied weights
    model = nn.Sequential(encoder, _randomize(nn.BatchNorm1d(6)), nn.ReLU(), decoder)
    change, messages = _fold_and_compare(model, torch.randn(4, 6), example=torch.randn(2, 6))
    assert change < 1e-5 and isinstance(model[1], nn.BatchNorm1d)
    assert any("shares its weight" in m or "shared" in m for m in messages)


@pytest.mark.parametrize("how", ["weight_norm", "spectral_norm", "forward_hook", "norm_hook"])
def test_fold_leaves_a_layer_whose_weight_or_output_a_hook_transforms(how):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    bn = _randomize(nn.BatchNorm2d(4))
    if how == "weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates the old-style one
            conv = torch.nn.utils.weight_norm(conv)
    elif how == "spectral_norm":
        conv = torch.nn.utils.spectral_norm(conv)
    elif how == "forward_hook":
        conv.register_forward_hook(lambda m, a, out: out * 2)
    else:
        bn.register_forward_hook(lambda m, a, out: out + 1)
    model = nn.Sequential(conv, bn, nn.ReLU())
    x = torch.randn(2, 3, 6, 6)
    model.eval()
    change, messages = _fold_and_compare(model, x)
    assert change < 1e-5 and isinstance(model[1], nn.BatchNorm2d), how
    assert any("hook" in m for m in messages), messages


def test_fold_finds_pairs_in_a_custom_forward():
    """The attribute style (self.conv1 / self.bn1) folds where the traced graph shows the
    conv's output feeding only the norm; a conv whose output is used twice does not."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), _randomize(nn.BatchNorm2d(4))
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), _randomize(nn.BatchNorm2d(4))

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            y = self.conv2(h)
            return self.bn2(y) + y  # conv2's output is used twice: not foldable

    model = Block()
    change, messages = _fold_and_compare(model, torch.randn(2, 3, 6, 6))
    assert change < 1e-5
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.bn2, nn.BatchNorm2d)
    assert any("bn2" in m for m in messages)


def test_fold_names_what_could_not_be_traced():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), _randomize(nn.BatchNorm2d(4))

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: symbolic tracing fails
                x = -x
            return self.bn(self.conv(x))

    model = Branchy()
    change, messages = _fold_and_compare(model, torch.randn(2, 3, 4, 4))
    assert change < 1e-5 and isinstance(model.bn, nn.BatchNorm2d)
    assert any("trace" in m and "bn" in m for m in messages)


def test_recalibrate_a_batchnorm_called_with_a_keyword_input():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(input=x)

    model = Keyword()
    batches = [torch.randn(8, 3) * 2 + 1 for _ in range(3)]
    normlab.recalibrate_batchnorm(model, batches)
    every = torch.cat(batches)
    torch.testing.assert_close(model.bn.running_mean, every.mean(0))
    torch.testing.assert_close(model.bn.running_var, every.var(0))
