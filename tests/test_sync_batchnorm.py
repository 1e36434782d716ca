"""SyncBatchNorm over torch.distributed (gloo, CPU processes) against BatchNorm
on the concatenated global batch, in float64."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
import torch.distributed as dist

import normlab

C, L = 3, 4


def _global_batch(total: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(total, C, L, generator=gen, dtype=torch.float64) * 2 + 1
    weights = torch.randn(total, C, L, generator=gen, dtype=torch.float64)
    return x, weights


def _layer(cls) -> torch.nn.Module:
    m = cls(C, momentum=0.3).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return m


def _worker(rank: int, sizes: list[int], init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=len(sizes))
    try:
        x_all, w_all = _global_batch(sum(sizes))
        lo = sum(sizes[:rank])
        hi = lo + sizes[rank]
        m = _layer(normlab.SyncBatchNorm)
        results = {}
        for step in range(2):  # two training steps: running statistics accumulate
            x = x_all[lo:hi].clone().requires_grad_()
            y = m(x)
            (y * w_all[lo:hi]).sum().backward()
            results[f"y{step}"], results[f"dx{step}"] = y.detach(), x.grad
            results[f"dw{step}"], results[f"db{step}"] = m.weight.grad.clone(), m.bias.grad.clone()
            m.zero_grad()
        results["running_mean"], results["running_var"] = m.running_mean, m.running_var
        results["eval"] = m.eval()(x_all[lo:hi])  # running statistics, no communication
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [[3, 5], [4, 0, 2]], ids=["2-ranks-uneven", "3-ranks-one-empty"])
def test_sync_batchnorm_equals_batchnorm_on_the_global_batch(tmp_path, sizes):
    context = multiprocessing.get_context("spawn")
    init = f"file://{tmp_path / 'store'}"
    procs = [
        context.Process(target=_worker, args=(r, sizes, init, str(tmp_path)))
        for r in range(len(sizes))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, f"rank failed or hung (exit code {p.exitcode})"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(sizes))]

    x_all, w_all = _global_batch(sum(sizes))
    bn = _layer(normlab.BatchNormNd)
    for step in range(2):
        x = x_all.clone().requires_grad_()
        y = bn(x)
        (y * w_all).sum().backward()
        torch.testing.assert_close(torch.cat([r[f"y{step}"] for r in ranks]), y.detach())
        torch.testing.assert_close(torch.cat([r[f"dx{step}"] for r in ranks]), x.grad)
        # data-parallel training sums the ranks' weight gradients
        torch.testing.assert_close(sum(r[f"dw{step}"] for r in ranks), bn.weight.grad)
        torch.testing.assert_close(sum(r[f"db{step}"] for r in ranks), bn.bias.grad)
        bn.zero_grad()
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean)
        torch.testing.assert_close(r["running_var"], bn.running_var)
    torch.testing.assert_close(torch.cat([r["eval"] for r in ranks]), bn.eval()(x_all))


def test_outside_a_process_group_it_is_batchnorm():
    x = torch.randn(6, C, L, dtype=torch.float64)
    sync, plain = _layer(normlab.SyncBatchNorm), _layer(normlab.BatchNormNd)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)
    assert set(sync.state_dict()) == set(torch.nn.SyncBatchNorm(C).state_dict())


def test_convert_sync_batchnorm_keeps_state():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), normlab.BatchNorm1d(4)
    )
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    normlab.convert_sync_batchnorm(model)
    assert all(isinstance(m, normlab.SyncBatchNorm) for m in (model[1], model[2]))
    assert model[1].running_mean.eq(0.5).all()
    assert normlab.create("sync_bn", 4).__class__ is normlab.SyncBatchNorm
