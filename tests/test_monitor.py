"""The training monitor: statistics against NumPy on known tensors, gradients
against autograd, hooks, buffering and memory, DDP, distribution shift."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import normlab
from normlab.monitor import Monitor, unrecorded
from normlab.monitor.statistics import quantities, statistics_matrix, wasserstein_1


def _values(frame, module, quantity):
    rows = frame[(frame.module == module) & (frame.quantity == quantity)]
    return rows.sort_values("step").value.to_numpy()


def test_summarize_matches_numpy():
    rng = np.random.default_rng()
    data = rng.normal(0.3, 2.0, size=(5, 300)).astype(np.float32)
    lengths = [300, 300, 120, 300, 7]
    limits = torch.full((len(lengths),), 1.5, dtype=torch.float64)
    matrix, sketch = statistics_matrix(torch.from_numpy(data), lengths, (15, 50, 85), limits, True)
    stats = dict(zip(quantities((15, 50, 85)), matrix.T, strict=True))
    for i, n in enumerate(lengths):
        row = data[i, :n].astype(np.float64)
        np.testing.assert_allclose(stats["mean"][i], row.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["std"][i], row.std(), rtol=1e-5)
        for p in (15, 50, 85):
            np.testing.assert_allclose(
                stats[f"p{p}"][i], np.percentile(row, p), rtol=1e-5, atol=1e-6
            )
        assert stats["min"][i] == row.min() and stats["max"][i] == row.max()
        assert stats["saturated"][i] == pytest.approx((np.abs(row) > 1.5).mean())
        assert stats["dead"][i] == pytest.approx((row <= 0).mean())
        np.testing.assert_allclose(
            sketch[i], np.quantile(row, np.linspace(0, 1, sketch.shape[1])), rtol=1e-5, atol=1e-6
        )


def test_wasserstein_1_of_shifted_distributions():
    levels = torch.linspace(0, 1, 33)
    a = torch.erfinv(2 * levels.clamp(1e-3, 1 - 1e-3) - 1) * 2**0.5  # N(0, 1) quantiles
    assert wasserstein_1(a, a + 1.5).item() == pytest.approx(1.5)
    assert wasserstein_1(a, a).item() == 0.0


def _mlp(activation=nn.Sigmoid):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), activation(), nn.Linear(8, 3))


def test_activation_statistics_and_gradient_against_numpy_and_autograd():
    model = _mlp()
    x, y = torch.randn(10, 6) * 3, torch.randint(0, 3, (10,))
    with Monitor(model, grad_every=1) as mon:
        pre = model[0](x).detach().requires_grad_()  # what the sigmoid sees
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
    expected_grad = torch.autograd.grad(
        nn.functional.cross_entropy(model[2](torch.sigmoid(pre)), y), pre
    )[0]
    frame = mon.to_frame()
    assert list(frame.columns) == ["step", "module", "quantity", "value"]
    assert mon.sites == {"1": "input of Sigmoid"}
    values = pre.detach().numpy().astype(np.float64).ravel()
    got = {
        q: _values(frame, "1", q)[0]
        for q in ("mean", "std", "p15", "p50", "p85", "min", "max", "saturated", "grad_norm")
    }
    np.testing.assert_allclose(got["mean"], values.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["std"], values.std(), rtol=1e-5)
    for p in (15, 50, 85):
        np.testing.assert_allclose(got[f"p{p}"], np.percentile(values, p), rtol=1e-5, atol=1e-6)
    assert got["min"] == pytest.approx(values.min()) and got["max"] == pytest.approx(values.max())
    assert got["saturated"] == pytest.approx((np.abs(values) > 4.0).mean())
    np.testing.assert_allclose(got["grad_norm"], expected_grad.norm().item(), rtol=1e-5)
    assert "dead" not in set(frame.quantity)


def test_dead_fraction_for_relu_and_norm_layer_outputs():
    model = nn.Sequential(nn.Linear(5, 16), normlab.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(32, 5)
    with Monitor(model) as mon:
        model(x)
    frame = mon.to_frame()
    assert mon.sites == {"1": "output of BatchNorm1d", "2": "input of ReLU"}
    h = model[1](model[0](x)).detach().numpy()
    assert _values(frame, "2", "dead")[0] == pytest.approx((h <= 0).mean())
    assert abs(_values(frame, "1", "mean")[0]) < 1e-5  # BN output in training: mean 0
    np.testing.assert_allclose(_values(frame, "1", "std")[0], 1.0, rtol=1e-3)


def test_parameter_gradient_norms_and_update_ratios():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(4)]
    expected = []
    with Monitor(model, optimizer=opt, grad_every=1) as mon:
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            before = model[0].weight.detach().clone()
            grad = model[0].weight.grad.norm().item()
            opt.step()
            expected.append((grad, (model[0].weight - before).norm().item() / before.norm().item()))
    frame = mon.to_frame()
    np.testing.assert_allclose(
        _values(frame, "0.weight", "grad_norm"), [e[0] for e in expected], rtol=1e-5
    )
    np.testing.assert_allclose(
        _values(frame, "0.weight", "update_ratio"), [e[1] for e in expected], rtol=1e-4
    )


def _hand_step(model, opt, monitor, x, y):
    """One manual step the way Lightning runs it: the forward and backward
    inside ``opt.step(closure)``, here two forward passes per step. Returns the
    parameters' gradient norms and update ratios, computed by hand."""
    grads, before = {}, {}

    def closure():
        opt.zero_grad()
        half = len(x) // 2
        loss = F.cross_entropy(model(x[:half]), y[:half]) + F.cross_entropy(
            model(x[half:]), y[half:]
        )
        loss.backward()
        for name, p in model.named_parameters():
            grads[name], before[name] = p.grad.norm().item(), p.detach().clone()
        monitor.before_optimizer_step()
        return loss

    monitor.begin_step()
    opt.step(closure)
    monitor.after_optimizer_step()
    ratios = {
        n: ((p.detach() - before[n]).norm() / before[n].norm()).item()
        for n, p in model.named_parameters()
    }
    return grads, ratios


def test_manual_steps_count_begin_step_and_measure_around_the_update():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    expected = []
    with Monitor(model, optimizer=opt, grad_every=1, steps="manual") as mon:
        for _ in range(3):
            expected.append(
                _hand_step(model, opt, mon, torch.randn(8, 6), torch.randint(0, 3, (8,)))
            )
            mon.begin_step(training=False)  # an evaluation step: not counted, not recorded
            with torch.no_grad():
                model(torch.randn(5, 6))
    assert mon.step == 2  # 3 steps of 2 forward passes each, and 3 evaluation passes
    frame = mon.to_frame()
    assert sorted(frame.step.unique()) == [0, 1, 2]
    assert mon.sites == {"1": "input of Sigmoid", "1#1": "input of Sigmoid"}
    assert len(_values(frame, "1", "mean")) == len(_values(frame, "1#1", "mean")) == 3
    for name, _ in model.named_parameters():
        np.testing.assert_allclose(
            _values(frame, name, "grad_norm"), [g[name] for g, _ in expected], rtol=1e-5
        )
        np.testing.assert_allclose(
            _values(frame, name, "update_ratio"), [r[name] for _, r in expected], rtol=1e-4
        )


def test_manual_steps_inside_unrecorded_are_invisible():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(2)]
    with Monitor(model, optimizer=opt, grad_every=1, steps="manual") as mon:
        grads, ratios = _hand_step(model, opt, mon, *data[0])
        with unrecorded():
            _hand_step(model, opt, mon, *data[1])
    assert mon.step == 0
    frame = mon.to_frame()
    assert set(frame.step) == {0} and len(_values(frame, "1", "mean")) == 1
    assert _values(frame, "0.weight", "grad_norm").item() == pytest.approx(grads["0.weight"])
    assert _values(frame, "0.weight", "update_ratio").item() == pytest.approx(
        ratios["0.weight"], rel=1e-4
    )


def test_manual_steps_without_optimizer_and_calls_that_cannot_be_served():
    model = _mlp()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    mon = Monitor(model, grad_every=1, steps="manual")
    with pytest.raises(RuntimeError, match="not attached"):
        mon.begin_step()
    with mon:
        mon.begin_step()
        F.cross_entropy(model(x), y).backward()  # parameter gradient norms: in the backward
        with pytest.raises(RuntimeError, match=r"update ratios need Monitor\(optimizer="):
            mon.before_optimizer_step()
    frame = mon.to_frame()
    assert _values(frame, "0.weight", "grad_norm").item() == pytest.approx(
        model[0].weight.grad.norm().item(), rel=1e-5
    )
    assert "update_ratio" not in set(frame.quantity)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=opt) as mon:
        for call in (mon.begin_step, mon.before_optimizer_step, mon.after_optimizer_step):
            with pytest.raises(RuntimeError, match="steps='manual'"):
                call()


def test_every_and_grad_every_select_steps():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, every=2, grad_every=4, optimizer=opt) as mon:
        for _ in range(9):
            opt.zero_grad()
            model(torch.randn(4, 6)).sum().backward()
            opt.step()
        model.eval()
        model(torch.randn(4, 6))  # eval passes are not steps
    frame = mon.to_frame()
    assert sorted(set(_values(frame, "1", "mean").shape)) == [5]
    assert sorted(frame[(frame.module == "1") & (frame.quantity == "mean")].step) == [0, 2, 4, 6, 8]
    grad_steps = frame[(frame.module == "1") & (frame.quantity == "grad_norm")].dropna().step
    assert sorted(grad_steps) == [0, 4, 8]
    assert sorted(frame[frame.quantity == "update_ratio"].step.unique()) == [0, 4, 8]
    assert mon.step == 8


def test_selection_by_pattern_type_and_predicate():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(3, 4)
    for selector, expected in (
        (["0"], {"0": "output of Linear"}),
        ([nn.Tanh], {"1": "input of Tanh"}),
        ([lambda name, m: name == "2"], {"2": "output of Linear"}),
    ):
        with Monitor(model, modules=selector, parameters=False) as mon:
            model(x)
        assert mon.sites == expected


def test_module_called_twice_is_recorded_per_call():
    act = nn.Sigmoid()
    lin1, lin2 = nn.Linear(3, 3), nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1, self.act, self.lin2 = lin1, act, lin2

        def forward(self, x):
            return self.act(self.lin2(self.act(self.lin1(x))))

    model = Twice()
    x = torch.randn(5, 3)
    with Monitor(model, parameters=False) as mon:
        model(x)
        model(x)
    frame = mon.to_frame()
    assert set(mon.sites) == {"act", "act#1"}
    first = model.lin1(x).detach().numpy()
    assert _values(frame, "act", "mean")[0] == pytest.approx(first.mean(), abs=1e-6)
    assert len(_values(frame, "act#1", "mean")) == 2


def test_hooks_are_removed_on_exit_and_on_exception():
    model = _mlp()
    with pytest.raises(RuntimeError, match="boom"), Monitor(model, grad_every=1):
        model(torch.randn(2, 6))
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())
    mon = Monitor(model).attach()
    mon.attach()  # idempotent
    mon.detach()
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_sampling_above_sample_size_is_close_to_the_full_statistics():
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU())
    x = torch.randn(64, 64)
    with Monitor(model, sample_size=4096, parameters=False) as mon:
        model(x)
    frame = mon.to_frame()
    full = model[0](x).detach().double().numpy()
    assert full.size > 4096
    assert _values(frame, "1", "mean")[0] == pytest.approx(
        full.mean(), abs=0.05 * float(full.std())
    )
    assert _values(frame, "1", "p50")[0] == pytest.approx(
        np.median(full), abs=0.1 * float(full.std())
    )
    assert _values(frame, "1", "dead")[0] == pytest.approx((full <= 0).mean(), abs=0.05)


def test_save_writes_parquet(tmp_path):
    model = _mlp()
    with Monitor(model) as mon:
        model(torch.randn(4, 6)).sum().backward()
    path = mon.save(tmp_path / "deep" / "monitor.parquet")
    import pandas as pd

    back = pd.read_parquet(path)
    frame = mon.to_frame()
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    np.testing.assert_allclose(back.value.to_numpy(), frame.value.to_numpy())


def test_distribution_shift_between_records():
    model = nn.Sequential(nn.Identity(), nn.Tanh())
    x0 = torch.randn(4000, 1)
    with Monitor(model, parameters=False, sample_size=4000) as mon:
        model(x0)
        model(x0 + 2.0)
        model(x0 * 3.0 + 2.0)
    shift = mon.distribution_shift()
    row = shift[shift.module == "1"].sort_values("step")
    assert list(row.step) == [1, 2]
    assert row.mean_shift.iloc[0] == pytest.approx(2.0, abs=1e-4)
    assert row.std_shift.iloc[0] == pytest.approx(0.0, abs=1e-4)
    assert row.w1.iloc[0] == pytest.approx(2.0, rel=0.02)  # a pure shift moves every quantile by 2
    assert row.std_shift.iloc[1] == pytest.approx(2 * x0.std(unbiased=False).item(), rel=1e-3)


def test_memory_stays_bounded_over_10000_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    mon = Monitor(model, optimizer=opt, flush_every=128).attach()
    tracemalloc.start()
    sizes = []
    for step in range(10_000):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if step in (1999, 9999):
            mon.flush()
            sizes.append((tracemalloc.get_traced_memory()[0], mon.nbytes()))
    tracemalloc.stop()
    mon.detach()
    (mem_a, bytes_a), (mem_b, bytes_b) = sizes
    # Growth is the flushed records themselves (compact arrays), nothing else.
    assert bytes_b > bytes_a
    assert mem_b - mem_a < 3 * (bytes_b - bytes_a) + 2_000_000
    per_step = bytes_b / 10_000
    assert per_step < 200, f"{per_step:.0f} bytes per step on the host"
    site = mon._sites["1"]
    assert site.rows.shape[0] == 128 and not site.steps  # the ring buffer never grows
    assert len(mon.to_frame()) > 10_000


def test_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = nn.parallel.DistributedDataParallel(_mlp())
        with Monitor(model, grad_every=1) as mon:
            model(torch.randn(4, 6)).sum().backward()
        frame = mon.to_frame()
        assert mon.sites == {"1": "input of Sigmoid"}
        assert "0.weight" in set(frame.module)
        assert not np.isnan(_values(frame, "1", "grad_norm")[0])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"every": 0}, "every must be an integer >= 1, got 0"),
        ({"grad_every": 1.5}, "grad_every must be an integer"),
        ({"percentiles": (50, 120)}, r"percentiles must lie in \[0, 100\]"),
        ({"steps": "batch"}, "steps must be 'forward' or 'manual', got 'batch'"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Monitor(_mlp(), **kwargs)


def test_integer_outputs_are_skipped():
    class Argmax(nn.Module):
        def forward(self, x):
            return x.argmax(1)

    model = nn.Sequential(nn.Linear(3, 3), Argmax())
    with Monitor(model, modules=["1"], parameters=False) as mon:
        model(torch.randn(2, 3))
    assert mon.sites == {} and mon.to_frame().empty


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_other_dtypes_are_recorded(dtype):
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU()).to(dtype)
    x = torch.randn(32, 40, dtype=dtype)
    with Monitor(model, sample_size=256, grad_every=1) as mon:
        model(x).float().sum().backward()
    frame = mon.to_frame()
    full = model[0](x).detach().double().numpy()
    assert _values(frame, "1", "dead")[0] == pytest.approx((full <= 0).mean(), abs=0.1)
    assert np.isfinite(_values(frame, "1", "grad_norm")[0])


def test_sketches_hold_each_records_quantiles():
    model = nn.Sequential(nn.Identity(), nn.Tanh())
    x = torch.randn(500, 1)
    with Monitor(model, parameters=False) as mon:
        model(x)
    sketch = mon.sketches()
    assert list(sketch.columns) == ["step", "module", "level", "value"]
    row = sketch[sketch.module == "1"].sort_values("level")
    np.testing.assert_allclose(
        row.value, np.quantile(x.numpy().astype(np.float64), row.level), rtol=1e-5, atol=1e-6
    )


def test_a_tensor_modified_in_place_later_is_recorded_as_it_was():
    """The monitor gathers its samples late (at the next step) where it can; a
    BatchNorm output that a ReLU(inplace=True) overwrites must still be recorded
    as the BatchNorm gave it (with its negative values)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True))
    with normlab.Monitor(model, modules=["1", "2"]) as monitor:
        for _ in range(4):
            model(torch.randn(32, 6)).sum().backward()
    frame = monitor.to_frame()
    bn_min = frame[(frame.module == "1") & (frame.quantity == "min")].value
    relu_dead = frame[(frame.module == "2") & (frame.quantity == "dead")].value
    assert len(bn_min) == 4 and (bn_min < 0).all()
    assert len(relu_dead) == 4 and (relu_dead > 0.2).all()


def _small_run(steps=3, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Sigmoid(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {}
    model[2].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    monitor = normlab.Monitor(model, optimizer=opt, grad_every=1, **kwargs).attach()
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(16, 6)).sum().backward()
        opt.step()
    return monitor, seen["x"]


def test_latest_gives_each_quantitys_last_value_as_the_frame_holds_it():
    monitor, _ = _small_run()
    frame = monitor.to_frame()
    last = frame[frame.step == frame.step.max()].dropna()
    expected = {f"{r.module}/{r.quantity}": r.value for r in last.itertuples()}
    assert monitor.latest() == pytest.approx(expected)
    only = monitor.latest(["std"])
    assert only and all(key.endswith("/std") for key in only)


def test_histograms_of_the_latest_record_over_fixed_edges_match_numpy():
    monitor, x = _small_run()  # 16 x 8 = 128 values: the whole tensor is the sample
    edges = torch.linspace(-2.0, 2.0, 9)
    counts = monitor.histograms(edges)["2"].numpy()
    values = x.numpy().ravel()
    inner, _ = np.histogram(values, edges.numpy())
    assert counts[0] == (values < -2).sum() and counts[-1] == (values > 2).sum()
    assert counts.sum() == values.size
    # numpy's bins are closed on the left, bucketize's on the right: equal off the edges
    assert np.abs(counts[1:-1] - inner).sum() <= 2 * np.isin(values, edges.numpy()).sum()


def test_unscale_gradients_divides_this_steps_activation_gradient_norms():
    monitor, _ = _small_run(steps=2)
    monitor.to_frame()  # flushes: the next step is a fresh buffer
    grads = []

    def watch(module, args):
        args[0].register_hook(lambda g: grads.append(g.norm().item()))

    monitor.model[2].register_forward_pre_hook(watch)
    monitor.model(torch.randn(16, 6)).mul(1024.0).sum().backward()  # a "scaled" loss
    monitor.unscale_gradients(1 / 1024.0)
    frame = monitor.to_frame()
    last = frame[(frame.step == frame.step.max()) & (frame.module == "2")]
    grad_norm = last[last.quantity == "grad_norm"].value.item()
    assert grad_norm == pytest.approx(grads[-1] / 1024.0, rel=1e-5)


def test_a_half_precision_gradient_norm_does_not_overflow():
    """A loss-scaled float16 gradient's norm overflows float16 (2000 x 64 > 65504);
    the monitor takes it in float32."""
    model = nn.Sequential(nn.Sigmoid())
    x = torch.zeros(4096, dtype=torch.float16, requires_grad=True)
    with normlab.Monitor(model, grad_every=1) as monitor:
        model(x * 1).backward(torch.full((4096,), 8000.0, dtype=torch.float16))
    frame = monitor.to_frame()
    grad = frame[(frame.module == "0") & (frame.quantity == "grad_norm")].value.item()
    assert grad == pytest.approx(8000.0 * 0.25 * 4096**0.5, rel=1e-3)


def test_statistics_matrix_takes_a_threshold_per_row_and_a_work_buffer():
    """The summary of many sites at once: rows of several lengths, each with its
    own saturation threshold (inf: none), against NumPy; the result does not
    depend on the work buffer given (none, too small, large enough)."""
    from normlab.monitor.statistics import work_size

    rng = np.random.default_rng(1)
    data = torch.from_numpy(rng.normal(0.2, 2.0, size=(6, 300)).astype(np.float32))
    lengths = [300, 300, 120, 300, 7, 120]
    limits = torch.tensor([1.5, np.inf, 0.5, 2.0, np.inf, 1.0], dtype=torch.float64)
    names = quantities((15, 50, 85))
    results = [
        statistics_matrix(data, lengths, (15, 50, 85), limits, True, work)
        for work in (None, torch.empty(10), torch.empty(work_size(data.shape)))
    ]
    for matrix, sketch in results[1:]:
        torch.testing.assert_close(matrix, results[0][0], equal_nan=True)
        torch.testing.assert_close(sketch, results[0][1])
    matrix = results[0][0].numpy()
    for i, n in enumerate(lengths):
        row = data[i, :n].numpy().astype(np.float64)
        got = dict(zip(names, matrix[i], strict=True))
        np.testing.assert_allclose(got["mean"], row.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["std"], row.std(), rtol=1e-5)
        np.testing.assert_allclose(got["p85"], np.percentile(row, 85), rtol=1e-5, atol=1e-6)
        assert got["min"] == row.min() and got["max"] == row.max()
        assert got["saturated"] == pytest.approx((np.abs(row) > limits[i].item()).mean())
        assert got["dead"] == pytest.approx((row <= 0).mean())
    without, _ = statistics_matrix(data, lengths, (15, 50, 85))
    assert np.isnan(without[:, -2:].numpy()).all()  # neither asked for: NaN


def test_sites_summarized_together_keep_their_own_quantities():
    """A BatchNorm output, a ReLU input (the same tensor) and a sigmoid input of
    one width are summarized in one go; each keeps the quantities of its kind,
    with its own values."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid()
    )
    seen = {}
    model[2].register_forward_pre_hook(lambda m, a: seen.__setitem__("relu", a[0].detach()))
    model[4].register_forward_pre_hook(lambda m, a: seen.__setitem__("sig", a[0].detach() * 1))
    with Monitor(model) as mon:
        model(torch.randn(10, 6) * 2)
    frame = mon.to_frame()
    kinds = {m: set(frame[frame.module == m].quantity) for m in ("1", "2", "4")}
    assert "saturated" not in kinds["1"] and "dead" not in kinds["1"]
    assert "dead" in kinds["2"] and "saturated" not in kinds["2"]
    assert "saturated" in kinds["4"] and "dead" not in kinds["4"]
    for module, values in (("1", seen["relu"]), ("2", seen["relu"]), ("4", seen["sig"])):
        flat = values.numpy().astype(np.float64).ravel()
        assert _values(frame, module, "mean")[0] == pytest.approx(flat.mean(), abs=1e-6)
        assert _values(frame, module, "max")[0] == pytest.approx(flat.max())
    assert _values(frame, "2", "dead")[0] == pytest.approx((seen["relu"] <= 0).double().mean())
    expected = (seen["sig"].abs() > 4.0).double().mean().item()
    assert _values(frame, "4", "saturated")[0] == pytest.approx(expected)


def _clipping_pre_hook(model: nn.Module):
    """An optimizer step pre-hook clipping the model's gradient norm to 1e-3."""

    def clip(optimizer, args, kwargs) -> None:
        nn.utils.clip_grad_norm_(model.parameters(), 1e-3)

    return clip


def test_parameter_gradients_are_read_after_the_users_optimizer_pre_hooks():
    """The monitor's optimizer hooks are registered on the steps that record
    gradients, after any the user registered: a gradient-clipping pre-hook added
    after the monitor was attached still acts before the monitor reads the
    gradients (the norms recorded are the clipped ones)."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clipped = []
    with Monitor(model, optimizer=opt, grad_every=1) as mon:
        opt.register_step_pre_hook(_clipping_pre_hook(model))
        for _ in range(2):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(8, 6) * 5), torch.zeros(8).long())
            loss.backward()
            opt.step()
            clipped.append(torch.linalg.vector_norm(model[0].weight.grad).item())
    norms = _values(mon.to_frame(), "0.weight", "grad_norm")
    np.testing.assert_allclose(norms, clipped, rtol=1e-5)
    assert max(clipped) <= 1e-3 * (1 + 1e-5)


def test_a_clipping_hook_added_mid_run_acts_before_the_norms_even_with_grad_every_1():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clipped = []
    with Monitor(model, optimizer=opt, grad_every=1) as mon:
        for step in range(4):
            if step == 1:  # clipping switched on after a warm-up step
                opt.register_step_pre_hook(_clipping_pre_hook(model))
            opt.zero_grad()
            nn.functional.cross_entropy(
                model(torch.randn(8, 6) * 5), torch.zeros(8).long()
            ).backward()
            opt.step()
            clipped.append(torch.linalg.vector_norm(model[0].weight.grad).item())
    norms = _values(mon.to_frame(), "0.weight", "grad_norm")
    np.testing.assert_allclose(norms[1:], clipped[1:], rtol=1e-5)


def test_a_users_optimizer_post_hook_sees_this_steps_update_ratio():
    """The monitor's post-hook runs first, whenever the user's was registered: a
    logger in the user's post-hook (flushing through latest()) gets this step's
    update ratio, and nothing breaks."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with Monitor(model, optimizer=opt, grad_every=1) as mon:
        opt.register_step_post_hook(lambda o, a, k: seen.append(mon.latest(["update_ratio"])))
        for _ in range(3):
            before = model[0].weight.detach().clone()
            opt.zero_grad()
            model(torch.randn(8, 6)).sum().backward()
            opt.step()
            expected = ((model[0].weight - before).norm() / before.norm()).item()
            assert seen[-1]["0.weight/update_ratio"] == pytest.approx(expected, rel=1e-4)


def test_forward_mode_ad_through_a_monitored_model():
    model = _mlp(nn.Tanh)
    x, tangent = torch.randn(4, 6), torch.randn(4, 6)
    expected = torch.func.jvp(model, (x,), (tangent,))
    with Monitor(model, record_eval=True) as mon:
        model(x)  # the first record sets the site up
        for _ in range(2):
            out = torch.func.jvp(model, (x,), (tangent,))
    torch.testing.assert_close(out, expected)
    assert len(_values(mon.to_frame(), "1", "mean")) == 3


def test_an_empty_batch_is_recorded_as_nan_not_a_crash():
    model = _mlp()
    with Monitor(model, grad_every=1) as mon:
        for batch in (4, 0, 4):
            model(torch.randn(batch, 6)).sum().backward()
    means = _values(mon.to_frame(), "1", "mean")
    assert len(means) == 3 and np.isnan(means[1]) and np.isfinite(means[[0, 2]]).all()


def test_a_watched_leaf_tensor_gets_one_gradient_hook_per_record_not_one_more_each_step():
    """A parameter fed straight into a watched activation outlives the step: its
    gradient hook removes itself once it has fired."""

    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.randn(5))
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.p) * x

    model = Direct()
    with Monitor(model, grad_every=1) as mon:
        for scale in (1.0, 2.0, 3.0):
            (model(torch.ones(5)) * scale).sum().backward()
    assert not model.p._backward_hooks
    expected = [
        (scale * (1 - torch.tanh(model.p.detach()) ** 2)).norm().item() for scale in (1, 2, 3)
    ]
    np.testing.assert_allclose(_values(mon.to_frame(), "act", "grad_norm"), expected, rtol=1e-5)


def test_percentiles_may_be_a_list_and_repeat():
    data = torch.randn(2, 50)
    matrix, _ = statistics_matrix(data, [50, 50], [25, 75])
    p75 = matrix[0, quantities((25, 75)).index("p75")]
    np.testing.assert_allclose(p75, np.percentile(data[0].numpy(), 75), rtol=1e-5)
    model = _mlp()
    with Monitor(model, percentiles=[50, 50, 90]) as mon:
        model(torch.randn(4, 6))
    frame = mon.to_frame()
    assert (frame[frame.module == "1"].quantity == "p50").sum() == 1


def test_update_ratios_follow_a_model_cast_while_attached():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    expected = []
    with Monitor(model, optimizer=opt, grad_every=1) as mon:
        for step in range(3):
            if step == 1:
                model.double()  # every parameter's data is swapped for a float64 copy
            before = model[0].weight.detach().clone()
            opt.zero_grad()
            model(torch.randn(8, 6, dtype=model[0].weight.dtype)).sum().backward()
            opt.step()
            expected.append(((model[0].weight - before).norm() / before.norm()).item())
    got = _values(mon.to_frame(), "0.weight", "update_ratio")
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_a_failed_first_record_leaves_the_site_to_be_set_up_later(monkeypatch):
    """A site whose first record fails (here the sample positions cannot be
    drawn) is set up at its next record; flushes keep working."""
    model = _mlp()
    real = Monitor._index
    calls = {"n": 0}

    def flaky(numel, kept, device):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("random op refused")
        return real(numel, kept, device)

    monkeypatch.setattr(Monitor, "_index", staticmethod(flaky))
    with Monitor(model) as mon:
        with pytest.raises(RuntimeError, match="random op refused"):
            model(torch.randn(4, 6))
        for _ in range(2):
            model(torch.randn(4, 6))
        mon.flush()
    assert list(mon.to_frame().query("module == '1' and quantity == 'mean'").step) == [1, 2]


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_checkpointed_model_counts_each_step_once(reentrant):
    """The whole forward under torch.utils.checkpoint: its recomputation in the
    backward is neither a step nor a record."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    xs = [torch.randn(4, 6, requires_grad=reentrant) for _ in range(3)]
    with Monitor(model, grad_every=1) as mon:
        for x in xs:
            checkpoint(model, x, use_reentrant=reentrant).sum().backward()
    assert mon.step == 2
    assert list(_values(mon.to_frame(), "1", "mean")) == pytest.approx(
        [model[0](x).mean().item() for x in xs], abs=1e-6
    )


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_recomputation_is_not_a_second_call(reentrant):
    from torch.utils.checkpoint import checkpoint

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act, self.out = nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)

        def forward(self, x):
            inner = lambda t: self.act(self.lin(t))  # noqa: E731
            return self.out(checkpoint(inner, x, use_reentrant=reentrant))

    torch.manual_seed(0)
    model = Block()
    x = torch.randn(4, 6, requires_grad=reentrant)
    with Monitor(model, grad_every=1) as mon:
        model(x).sum().backward()
    assert mon.sites == {"act": "input of Tanh"}
    pre = model.lin(x).detach()
    assert _values(mon.to_frame(), "act", "mean")[0] == pytest.approx(pre.mean().item(), abs=1e-6)


def test_a_step_whose_activations_went_nan_is_reported_as_nan():
    """latest() gives each quantity's record of the latest step, NaN included (it gave
    the last finite one, so loggers showed a healthy mean at the step that broke);
    histograms leave NaN out of the bins (it landed in the last, '> 8')."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    monitor = Monitor(model, grad_every=1).attach()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x = torch.randn(16, 4)
        if step == 2:
            x[0, 0] = float("nan")
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
        if step == 2:
            edges = torch.linspace(-8.0, 8.0, 65)
            counts = monitor.histograms(edges)["1"]
            assert int(counts.sum()) == 16 * 8 - 8 and counts[-1] == 0  # one sample's 8
    latest = monitor.latest()
    assert np.isnan(latest["1/mean"]) and np.isnan(latest["1/max"])
    frame = monitor.to_frame()
    assert frame[(frame.module == "1") & (frame.quantity == "mean")].step.max() == 2
    monitor.detach()


def test_a_watched_model_copies_pickles_and_averages_and_the_copy_is_unwatched(tmp_path):
    """EMA/SWA copies and whole-model checkpoints while a Monitor is attached: the copy
    works and records nothing; the original stays watched."""
    import copy
    import pickle

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, grad_every=1).attach()
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    twin = copy.deepcopy(model)
    averaged = torch.optim.swa_utils.AveragedModel(model)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    restored = pickle.loads(pickle.dumps(model))
    before = monitor.step
    for copy_ in (twin, averaged, loaded, restored):
        x = torch.randn(8, 4)
        copy_(x).sum().backward()
    assert monitor.step == before  # the copies are not watched
    model(torch.randn(8, 4)).sum().backward()
    assert monitor.step == before + 1  # the original still is
    torch.testing.assert_close(twin[0].weight, model[0].weight)
    monitor.detach()


def test_a_selector_that_matches_nothing_is_named():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match=r"match no module.*'2\.relu'"):
        Monitor(model, modules=["1", "2.relu"])
