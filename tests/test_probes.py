"""Santurkar et al.'s internal covariate shift and loss-landscape probes: checked
by hand on a two-layer linear network and a quadratic, and for leaving no trace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab.monitor import Probe, internal_covariate_shift, loss_landscape


def _two_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    return model, x, y


def _sum_sq(out, target):
    return 0.5 * ((out - target) ** 2).sum()


def _hand_gradients(w1, w2, x, y):
    """L = 0.5 ||x W1^T W2^T - y||^2: dL/dW2 = r^T h, dL/dW1 = (r W2)^T x, r = h W2^T - y."""
    h = x @ w1.T
    r = h @ w2.T - y
    return (r @ w2).T @ x, r.T @ h


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ics_on_a_two_layer_linear_network_by_hand(optimizer):
    model, x, y = _two_layer()
    w1, w2 = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    lr = 0.1
    opt = (
        torch.optim.SGD(model.parameters(), lr=lr)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    g1, g2 = _hand_gradients(w1, w2, x, y)
    # the optimizer's first update of W1: SGD -lr g; Adam -lr g / (|g| + eps)
    update = -lr * g1 if optimizer == "sgd" else -lr * g1 / (g1.abs() + 1e-8)
    _, g2_shifted = _hand_gradients(w1 + update, w2, x, y)
    result = internal_covariate_shift(model, _sum_sq, x, y, opt)
    assert [r["layer"] for r in result] == ["0", "1"]
    assert result[0]["ics_l2"] == pytest.approx(0.0, abs=1e-12)  # nothing before layer 0
    assert result[0]["ics_cosine"] == pytest.approx(1.0)
    assert result[1]["ics_l2"] == pytest.approx((g2 - g2_shifted).norm().item(), rel=1e-9)
    cosine = torch.nn.functional.cosine_similarity(g2.flatten(), g2_shifted.flatten(), dim=0)
    assert result[1]["ics_cosine"] == pytest.approx(cosine.item(), rel=1e-9)


def test_loss_landscape_on_a_quadratic_by_hand():
    """L(w) = 0.5 w^T A w (a linear layer on the identity): grad = A w, and moving
    by -eta g changes the gradient by eta A g."""
    torch.manual_seed(1)
    a = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
    model = nn.Linear(3, 1, bias=False).double()

    def loss_fn(out, _):
        w = model.weight.flatten()
        return 0.5 * w @ a @ w + 0 * out.sum()

    x, y = torch.eye(3, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)
    w = model.weight.detach().flatten().clone()
    g = a @ w
    etas = (0.01, 0.05, 0.1)
    result = loss_landscape(model, loss_fn, x, y, step_sizes=etas)
    losses = [0.5 * (w - e * g) @ a @ (w - e * g) for e in etas]
    changes = [(e * (a @ g)).norm().item() for e in etas]
    assert result["loss"] == pytest.approx((0.5 * w @ a @ w).item())
    assert result["losses"] == pytest.approx([v.item() for v in losses])
    assert result["gradient_changes"] == pytest.approx(changes)
    assert result["gradient_predictiveness"] == pytest.approx(max(changes))
    assert result["beta_smoothness"] == pytest.approx(((a @ g).norm() / g.norm()).item())
    all_losses = [result["loss"], *result["losses"]]
    assert result["loss_variation"] == pytest.approx(max(all_losses) - min(all_losses))


def _state(model, opt):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        {
            k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
            for k, s in opt.state_dict()["state"].items()
        },
        torch.get_rng_state(),
        [m.training for m in model.modules()],
    )


def _assert_same(a, b):
    sd_a, grads_a, opt_a, rng_a, modes_a = a
    sd_b, grads_b, opt_b, rng_b, modes_b = b
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k  # bitwise
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert (ga is None and gb is None) or torch.equal(ga, gb)
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        for n in opt_a[k]:
            va, vb = opt_a[k][n], opt_b[k][n]
            assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb
    assert torch.equal(rng_a, rng_b)
    assert modes_a == modes_b


@pytest.mark.parametrize("probe", ["ics", "landscape"])
def test_probes_leave_no_trace(probe):
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(5, 8), normlab.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.functional.cross_entropy
    for _ in range(3):
        x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    before = _state(model, opt)
    if probe == "ics":
        result = internal_covariate_shift(model, loss_fn, x, y, opt)
        assert [r["layer"] for r in result] == ["0", "1", "4"]
    else:
        loss_landscape(model, loss_fn, x, y, optimizer=opt)
    _assert_same(before, _state(model, opt))


def test_probe_runs_every_k_steps_and_times_itself():
    model, x, y = _two_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(internal_covariate_shift, every=3, model=model, loss_fn=_sum_sq, optimizer=opt)
    for step in range(7):
        probe(step, x, y)
    frame = probe.to_frame()
    assert sorted(frame.step.unique()) == [0, 3, 6]
    assert set(frame.columns) >= {"step", "layer", "ics_l2", "ics_cosine", "seconds"}
    with pytest.raises(ValueError, match="every must be >= 1"):
        Probe(loss_landscape, every=0)


def test_probes_are_invisible_to_an_attached_monitor():
    """docs/monitor.md's loop: a Monitor attached while the probes run each step.
    Only the real steps count, and the update ratios are the real updates'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Sigmoid(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loss_fn = nn.functional.cross_entropy
    expected_ratios = []
    with normlab.Monitor(model, optimizer=opt, grad_every=1) as monitor:
        for _ in range(4):
            x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            internal_covariate_shift(model, loss_fn, x, y, opt)
            loss_landscape(model, loss_fn, x, y, optimizer=opt)
            before = model[0].weight.detach().clone()
            opt.step()
            moved = (model[0].weight.detach() - before).norm() / before.norm()
            expected_ratios.append(moved.item())
    assert monitor.step == 3  # steps 0..3: the four real ones
    frame = monitor.to_frame()
    assert sorted(frame.step.unique()) == [0, 1, 2, 3]
    ratios = frame[(frame.module == "0.weight") & (frame.quantity == "update_ratio")]
    assert ratios.value.to_numpy() == pytest.approx(expected_ratios, rel=1e-5)
