"""Cross-Iteration BatchNorm (Yao, Cao, Zheng, Huang & Lin, 2021).

Oracles: the paper's formula composed in float64 from plain torch ops, with the
derivatives of each stored batch's statistics taken by torch.autograd as full
Jacobians; the exact statistics recomputed under the current weights; and
torch.nn.BatchNorm2d (window 1, burn-in, eval).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian
from torch.func import functional_call

import normlab
from normlab import models
from normlab.norms.cross_iteration import CrossIterationBatchNorm, link_cross_iteration

CIN, C, HW = 2, 3, 4


def _model(gen, window=3, burn_in=1, dtype=torch.float64, **kwargs) -> nn.Sequential:
    """A conv (with bias: both of its parameters are compensated) feeding a linked layer,
    with an affine that is not the identity."""
    model = nn.Sequential(
        nn.Conv2d(CIN, C, 3, padding=1),
        CrossIterationBatchNorm(C, window=window, burn_in=burn_in, **kwargs),
    ).to(dtype)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5, generator=gen)
        model[1].bias.normal_(0.0, 0.5, generator=gen)
    return link_cross_iteration(model)


def _h(gen, n, dtype=torch.float64) -> torch.Tensor:
    return (torch.randn(n, CIN, HW, HW, generator=gen, dtype=dtype) * 2 + 0.5).requires_grad_()


def _stats(h, weight, bias):
    y = F.conv2d(h, weight, bias, padding=1)
    return y.mean((0, 2, 3)), y.square().mean((0, 2, 3))


def _compensated(h, theta_then, theta_now):
    """The paper's first-order estimate of (μ, ν) of batch ``h`` under ``theta_now``, from
    the statistics and their full Jacobians at ``theta_then``."""
    mean, square = _stats(h, *theta_then)
    for which, value in ((0, mean), (1, square)):
        jac = jacobian(lambda *t, which=which: _stats(h, *t)[which], theta_then)
        for j, then, now in zip(jac, theta_then, theta_now, strict=True):
            value += (j * (now - then)).reshape(C, -1).sum(1)
    return mean, square


def _oracle(h, theta, gamma, beta, window, eps=1e-5):
    """Eq. of the paper: mean over the current and the stored batches of the compensated μ
    and of max(ν, μ²), then BatchNorm with σ² = ν̄ − μ̄². Earlier batches are constants."""
    x = F.conv2d(h, *theta, padding=1)
    means, squares = [x.mean((0, 2, 3))], [x.square().mean((0, 2, 3))]
    now = tuple(t.detach() for t in theta)
    with torch.no_grad():
        for h_then, theta_then in window:
            mean, square = _compensated(h_then, theta_then, now)
            means.append(mean)
            squares.append(torch.maximum(square, mean.square()))
    mean, square = torch.stack(means).mean(0), torch.stack(squares).mean(0)
    var = square - mean.square()
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    return y * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1), x


def _params(model):
    conv, norm = model
    return (
        (
            conv.weight.detach().clone().requires_grad_(),
            conv.bias.detach().clone().requires_grad_(),
        ),
        norm.weight.detach().clone().requires_grad_(),
        norm.bias.detach().clone().requires_grad_(),
    )


# --------------------------------------------------------------- (a) the paper's formula


@pytest.mark.parametrize("window", [2, 3])
def test_training_steps_follow_the_papers_formula_in_float64(window, gen):
    """Burn-in step, then pooled steps (the window filling and sliding) with SGD between
    them and a batch of one among them: outputs, every gradient and the running
    statistics equal the float64 oracle's."""
    burn_in, batches = 1, (2, 2, 1, 3, 2, 2)
    model = _model(gen, window=window, burn_in=burn_in)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    stored = []  # (input, conv parameters) of the pooled steps, newest first
    running_mean, running_var = (
        torch.zeros(C, dtype=torch.float64),
        torch.ones(C, dtype=torch.float64),
    )
    for step, n in enumerate(batches):
        h = _h(gen, n)
        theta, gamma, beta = _params(model)
        h_oracle = h.detach().clone().requires_grad_()
        pooled = step >= burn_in
        expected, x = _oracle(h_oracle, theta, gamma, beta, stored[: window - 1] if pooled else [])
        if pooled:
            stored.insert(0, (h.detach().clone(), tuple(t.detach() for t in theta)))
        batch_var = x.detach().transpose(0, 1).flatten(1).var(1)
        running_mean = 0.9 * running_mean + 0.1 * x.detach().mean((0, 2, 3))
        running_var = 0.9 * running_var + 0.1 * batch_var

        y = model(h)
        torch.testing.assert_close(y, expected, msg=f"step {step}")
        weights = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        (y * weights).sum().backward()
        (expected * weights).sum().backward()
        torch.testing.assert_close(h.grad, h_oracle.grad)
        got = [model[0].weight.grad, model[0].bias.grad, model[1].weight.grad, model[1].bias.grad]
        for g, want in zip(got, [*theta, gamma, beta], strict=True):
            torch.testing.assert_close(g, want.grad, msg=f"step {step}")
        optimizer.step()
        optimizer.zero_grad()
    assert len(model[1]._steps) == window - 1
    torch.testing.assert_close(model[1].running_mean, running_mean)
    torch.testing.assert_close(model[1].running_var, running_var)
    assert int(model[1].num_batches_tracked) == len(batches)


def test_compensation_is_exact_for_the_mean_and_closer_for_the_mean_square(gen):
    """μ is linear in the producer's weights, so its Taylor step is exact; ν is quadratic,
    and its first-order estimate is far closer to the recomputed value than the stale one
    (the paper's premise), on the layer's own stored window."""
    model = _model(gen, window=3, burn_in=0)
    # a small step: the Taylor error shrinks as its square, the stale one linearly
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005)
    inputs = []
    for _ in range(3):
        inputs.insert(0, _h(gen, 2))
        y = model(inputs[0])
        (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    params = dict(model[0].named_parameters())
    stale = taylor = 0.0
    for step, h in zip(model[1]._steps, inputs, strict=False):
        exact_mean, exact_square = (s.detach() for s in _stats(h, *params.values()))
        mean, var = step.compensated(params)
        torch.testing.assert_close(mean, exact_mean, rtol=1e-10, atol=1e-10)
        stale += float((step.var + step.mean.square() - exact_square).norm())
        taylor += float((var + mean.square() - exact_square).norm())
    # over the window: at most 0.12 of the stale error in 300 seeds (0.48 at lr 0.02)
    assert stale > 1e-4 and taylor < stale / 4


def test_a_frozen_producer_pools_without_compensation(gen):
    """With the producer frozen its weights do not move: the window pools the stored
    statistics as they are (the formula with θ_t = θ_{t−τ})."""
    model = _model(gen, window=3, burn_in=0)
    model[0].requires_grad_(False)
    theta = tuple(p.detach() for p in model[0].parameters())
    stored = []
    for _ in range(3):
        h = _h(gen, 2)
        expected, _ = _oracle(
            h.detach(), theta, model[1].weight.detach(), model[1].bias.detach(), stored
        )
        stored.insert(0, (h.detach(), theta))
        torch.testing.assert_close(model(h), expected)


# --------------------------------------------------------------- (b) BatchNorm when not pooling


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize(
    "settings", [{"window": 1}, {"window": 4, "burn_in": 5}], ids=["k1", "burn-in"]
)
def test_window_one_and_burn_in_are_torch_batchnorm(settings, backend, gen):
    ours = _model(gen, dtype=torch.float32, **settings)
    theirs = nn.Sequential(nn.Conv2d(CIN, C, 3, padding=1), nn.BatchNorm2d(C))
    theirs.load_state_dict(ours.state_dict())
    same = torch.testing.assert_close if backend == "reference" else _assert_equal
    with normlab.use_backend(backend):
        for n in (2, 1, 4):
            h = _h(gen, n, torch.float32)
            h2 = h.detach().clone().requires_grad_()
            y, want = ours(h), theirs(h2)
            same(y, want)
            weights = torch.randn(y.shape, generator=gen)
            (y * weights).sum().backward()
            (want * weights).sum().backward()
            same(h.grad, h2.grad)
            for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
                same(p.grad, q.grad)
        for key, value in theirs.state_dict().items():
            same(ours.state_dict()[key], value)
        ours.eval(), theirs.eval()
        h = _h(gen, 3, torch.float32)
        same(ours(h), theirs(h))
    assert ours[1]._steps == []


def _assert_equal(a, b):
    assert torch.equal(a, b)


def test_eval_uses_the_running_statistics_as_batchnorm(gen):
    model = _model(gen, window=3, burn_in=0, dtype=torch.float32)
    for _ in range(4):
        model(_h(gen, 2, torch.float32)).sum().backward()
    model.eval()
    bn = nn.BatchNorm2d(C).eval()
    bn.load_state_dict(model[1].state_dict())
    x = torch.randn(1, C, HW, HW, generator=gen)
    assert torch.equal(model[1](x), bn(x))


def test_untracked_steps_are_batchnorm_and_kept_out_of_the_window(gen):
    """No autograd graph (torch.no_grad) or an empty batch: the step is BatchNorm's and
    the window is left as it was; the empty batch is counted, as torch counts it."""
    model = _model(gen, window=3, burn_in=0, dtype=torch.float32)
    model(_h(gen, 2, torch.float32))
    before = list(model[1]._steps)
    with torch.no_grad():
        x = torch.randn(2, C, HW, HW, generator=gen)
        bn = nn.BatchNorm2d(C)
        bn.load_state_dict(model[1].state_dict())
        assert torch.equal(model[1](x), bn(x))
    empty = model(_h(gen, 0, torch.float32))
    assert empty.shape == (0, C, HW, HW)
    assert model[1]._steps == before
    assert int(model[1].num_batches_tracked) == 3
    torch.testing.assert_close(model[1].running_var, bn.running_var)


# --------------------------------------------------------------- (c) gradients


def test_gradcheck_in_float64(gen):
    """The input and affine gradients of a pooling step (a full window of 3) against
    finite differences; each evaluation runs on a copy, so the window stays put."""
    model = _model(gen, window=3, burn_in=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        model(_h(gen, 2)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert len(model[1]._steps) == 2

    def step(h, gamma, beta):
        return functional_call(copy.deepcopy(model), {"1.weight": gamma, "1.bias": beta}, (h,))

    gamma, beta = (p.detach().clone().requires_grad_() for p in (model[1].weight, model[1].bias))
    assert torch.autograd.gradcheck(step, (_h(gen, 2), gamma, beta))


# --------------------------------------------------------------- (d) bad input, linking


def test_bad_input_names_the_layer_and_the_values(gen):
    layer = CrossIterationBatchNorm(C)
    with pytest.raises(
        normlab.NormInputError,
        match=r"CrossIterationBatchNorm\(3\): expected 3 channels at dim 1, got 4",
    ):
        layer(torch.randn(2, 4, 3, 3))
    with pytest.raises(
        normlab.NormInputError,
        match=r"CrossIterationBatchNorm\(3\): .*at least 2 dimensions.*got a 1D",
    ):
        layer(torch.randn(3))
    with pytest.raises(
        normlab.NormInputError, match=r"more than 1 value per channel .* shape \(1, 3\)"
    ):
        layer(torch.randn(1, C))
    with pytest.raises(TypeError, match=r"CrossIterationBatchNorm\(3\): expected a floating-point"):
        layer(torch.ones(2, C, 2, 2, dtype=torch.int64))
    for bad in ({"window": 0}, {"window": 2.5}, {"window": True}, {"burn_in": -1}):
        key, value = next(iter(bad.items()))
        with pytest.raises(
            ValueError, match=rf"CrossIterationBatchNorm\(3\): {key} must be .*got {value!r}"
        ):
            CrossIterationBatchNorm(C, **bad)


def test_link_refuses_what_cannot_produce_the_input():
    layer = CrossIterationBatchNorm(C)
    with pytest.raises(
        TypeError, match=r"CrossIterationBatchNorm\(3\)\.link: expected a convolution .* got ReLU"
    ):
        layer.link(nn.ReLU())
    with pytest.raises(TypeError, match="got ConvTranspose2d"):
        layer.link(nn.ConvTranspose2d(2, C, 3))
    with pytest.raises(
        ValueError, match=r"expected a producer of 3 channels, got Conv2d\(2, 4.* with 4"
    ):
        layer.link(nn.Conv2d(2, 4, 3))
    assert layer.link(nn.Linear(5, C)).producer is not None


def test_a_layer_linked_to_a_layer_that_does_not_feed_it_raises(gen):
    model = _model(gen, burn_in=0)
    model[1].link(nn.Conv2d(CIN, C, 3).double())
    with pytest.raises(
        RuntimeError, match=r"CrossIterationBatchNorm\(3\): its input does not depend on .*Conv2d"
    ):
        model(_h(gen, 2))


def test_an_unlinked_layer_warns_once_and_is_batchnorm(gen):
    layer, bn = CrossIterationBatchNorm(C, burn_in=0), nn.BatchNorm2d(C)
    x = torch.randn(2, C, HW, HW, generator=gen, requires_grad=True)
    with pytest.warns(
        UserWarning,
        match=r"CrossIterationBatchNorm\(3\) is not linked .*normlab\.link_cross_iteration\(model\)",
    ):
        y = layer(x)
    assert torch.equal(y, bn(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)


def test_link_cross_iteration_pairs_layers_with_the_producer_before_them():
    model = nn.Sequential(
        CrossIterationBatchNorm(CIN),  # nothing before it
        nn.Conv2d(CIN, C, 3),
        nn.ReLU(),  # parameter-free: conv-activation-norm links
        CrossIterationBatchNorm(C),
        nn.Conv2d(C, C, 1),
        nn.BatchNorm2d(C),  # has parameters: the conv no longer feeds the next one
        CrossIterationBatchNorm(C),
        nn.Sequential(nn.Flatten(), nn.Linear(C * 9, 5), CrossIterationBatchNorm(5)),
    )
    with pytest.warns(
        UserWarning,
        match=r"right before '0' \(CrossIterationBatchNorm\(2\)\), '6' .*they normalize as plain BatchNorm",
    ):
        assert link_cross_iteration(model) is model
    assert [m.producer for m in (model[0], model[3], model[6], model[7][2])] == [
        None,
        model[1],
        None,
        model[7][1],
    ]
    assert not any(isinstance(m, nn.Conv2d) for m in model[3].modules())  # not a submodule
    assert list(model.state_dict()) == list(
        nn.Sequential(
            *(
                nn.BatchNorm2d(m.num_features) if isinstance(m, CrossIterationBatchNorm) else m
                for m in model
            )
        ).state_dict()
    )


# --------------------------------------------------------------- state, copies, registry


def test_state_dict_round_trip_copies_and_moves(gen):
    model = _model(gen, window=3, burn_in=0, dtype=torch.float32)
    for _ in range(3):
        model(_h(gen, 2, torch.float32)).sum().backward()
    assert list(model[1].state_dict()) == list(nn.BatchNorm2d(C).state_dict())
    twin = copy.deepcopy(model)
    assert twin[1].producer is twin[0] and len(twin[1]._steps) == 2
    fresh = _model(gen, window=3, burn_in=0, dtype=torch.float32)
    fresh(_h(gen, 2, torch.float32))
    fresh.load_state_dict(model.state_dict())
    assert fresh[1]._steps == []  # the window does not outlive a change of weights
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = _h(gen, 2, torch.float32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
    twin.double()
    assert twin[1]._steps == [] and twin[1].producer is twin[0]


def test_convert_from_batchnorm_then_link(gen):
    model = nn.Sequential(nn.Conv2d(CIN, C, 3), nn.BatchNorm2d(C, eps=1e-3), nn.ReLU())
    for _ in range(2):
        model(_h(gen, 2, torch.float32))
    model.eval()
    x = _h(gen, 2, torch.float32)
    expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything is carried over
        normlab.convert(model, "cross_iteration_bn", source="batchnorm", window=2)
        link_cross_iteration(model)
    assert isinstance(model[1], CrossIterationBatchNorm) and model[1].producer is model[0]
    assert (model[1].eps, model[1].window, int(model[1].num_batches_tracked)) == (1e-3, 2, 2)
    assert torch.equal(model(x), expected)


def test_registry_entry_and_builders():
    spec = normlab.spec("cbn")
    assert spec.name == "cross_iteration_bn" and spec.cls is CrossIterationBatchNorm
    assert (spec.axes, spec.axes_features) == ("N, H, W (last k steps)", "N (last k steps)")
    assert spec.batch_dependent and spec.train_eval_differ and spec.inference == "running"
    assert "Yao" in spec.paper and "2021" in spec.paper
    assert normlab.spec("batchnorm").axes == "N, H, W"  # the other tables are unchanged
    from normlab import models

    for build in (models.mlp, models.cnn, models.resnet):
        model = build(1 if build is not models.mlp else 64, 10, norm="cross_iteration_bn")
        layers = [m for m in model.modules() if isinstance(m, CrossIterationBatchNorm)]
        assert layers and all(m.producer is not None for m in layers), build.__name__


# --------------------------------------------------------------- with the rest of the library


def test_convert_links_the_new_layers_to_their_producers():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6)
    )
    normlab.convert(model, "cross_iteration_bn", source="batchnorm")
    assert model[1].producer is model[0] and model[4].producer is model[3]


@pytest.mark.parametrize(
    "between", [nn.ChannelShuffle(2), nn.Softmax(dim=1), nn.Flatten(0, 0)], ids=type
)
def test_no_link_across_a_module_that_mixes_channels(between):
    """The compensation's per-channel derivatives need channel c of the norm's input to
    depend on the producer's row c alone: a channel-mixing module in between breaks that."""
    layer = CrossIterationBatchNorm(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), between, layer)
    with pytest.warns(UserWarning, match="plain BatchNorm"):
        link_cross_iteration(model)
    assert layer.producer is None
    ok = CrossIterationBatchNorm(4)
    link_cross_iteration(nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.MaxPool2d(2), ok))
    assert ok.producer is not None


def _trained_cnn(gen) -> nn.Module:
    model = models.cnn(1, 3, channels=(4, 6), norm="cross_iteration_bn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(4):
        x = torch.randn(4, 1, 8, 8, generator=gen)
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_fold_and_freeze_treat_it_as_the_batchnorm_it_is_in_eval(gen):
    """In eval it is BatchNorm on running statistics: folded into its conv, frozen."""
    model = _trained_cnn(gen)
    x = torch.randn(3, 1, 8, 8, generator=gen)
    expected = model(x)
    folded = normlab.fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, CrossIterationBatchNorm) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-6)
    frozen = normlab.freeze_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, CrossIterationBatchNorm) for m in frozen.modules())
    torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-6)


def test_recalibration_sets_its_population_statistics(gen):
    model = _trained_cnn(gen)
    batches = [torch.randn(4, 1, 8, 8, generator=gen) for _ in range(3)]
    normlab.recalibrate_batchnorm(model, batches)
    with torch.no_grad():  # the first layer's input: the first conv's outputs, float64
        h = torch.cat([model[0](b) for b in batches]).double()
    layer = model[1]
    assert isinstance(layer, CrossIterationBatchNorm)
    torch.testing.assert_close(layer.running_mean.double(), h.mean((0, 2, 3)))
    torch.testing.assert_close(layer.running_var.double(), h.var((0, 2, 3)), rtol=1e-5, atol=0)
