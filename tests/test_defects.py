"""Defects a production user hit (issue 14, last list): each test failed before its fix."""

from __future__ import annotations

import pytest
import torch

import normlab
from normlab import functional as NF


def test_evonorm_b0_backward_leaves_its_saved_tensors_intact():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    layer = normlab.create("evonorm_b0", 3).double()
    y = (layer(x) * torch.randn(4, 3, 5, 5, dtype=torch.float64)).sum()
    (first,) = torch.autograd.grad(y, x, retain_graph=True)
    (second,) = torch.autograd.grad(y, x)  # through the same graph again
    assert torch.equal(first, second)
    small = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (small,))


def test_ghost_batchnorm_does_not_count_a_call_that_raised():
    layer = normlab.GhostBatchNorm(4, virtual_batch_size=2)
    with pytest.raises(normlab.NormInputError, match="virtual batch of 1"):
        layer(torch.randn(3, 4))  # the last virtual batch holds one sample
    assert int(layer.num_batches_tracked) == 0
    layer(torch.randn(4, 4))
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("features", [0, -2, 2.5, True])
def test_create_refuses_a_bad_feature_count_by_name(features):
    with pytest.raises(
        ValueError, match=r"create\('gn', .*\): the feature count must be a positive integer"
    ):
        normlab.create("gn", features)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("op", ["batch_norm", "instance_norm"])
def test_running_statistics_of_the_wrong_shape_are_refused(backend, op):
    x = torch.randn(4, 3, 6)
    with pytest.raises(normlab.NormInputError, match=r"running_mean must have shape \(3,\)"):
        getattr(NF, op)(x, torch.zeros(5), torch.ones(3), backend=backend)
    with pytest.raises(normlab.NormInputError, match=r"weight must have shape \(3,\)"):
        NF.batch_norm(x, None, None, torch.ones(2), training=True, backend=backend)


def _trained_bn(eps=1e-3, momentum=0.3):
    bn = torch.nn.BatchNorm2d(6, eps=eps, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    for _ in range(3):
        bn(torch.randn(8, 6, 4, 4) * 3 + 1)
    return bn.eval()


def test_convert_keeps_what_the_target_can_carry_and_the_output_bitwise():
    bn = _trained_bn()
    bn.weight.requires_grad_(False)  # a frozen parameter stays frozen
    model = torch.nn.Sequential(bn)
    x = torch.randn(4, 6, 4, 4)
    before = model(x)
    normlab.convert(model, "batchnorm")
    new = model[0]
    assert isinstance(new, normlab.BatchNorm2d)  # the twin of its class: to_torch takes it back
    assert (new.eps, new.momentum, int(new.num_batches_tracked)) == (1e-3, 0.3, 3)
    assert not new.weight.requires_grad and new.bias.requires_grad and not new.training
    assert torch.equal(model(x), before)  # bitwise: the same function


def test_convert_to_a_technique_without_running_statistics_says_what_is_dropped():
    model = torch.nn.Sequential(_trained_bn(), torch.nn.ReLU(), _trained_bn())
    with pytest.warns(
        UserWarning, match=r"cannot carry running statistics \(2 layers\), momentum=0.3"
    ):
        normlab.convert(model, "groupnorm")
    assert model[0].eps == 1e-3  # what it can carry, it does


def test_a_shared_module_is_converted_once_and_stays_shared():
    shared = torch.nn.BatchNorm1d(4)
    model = torch.nn.ModuleDict(
        {"a": torch.nn.Sequential(shared), "b": torch.nn.Sequential(shared)}
    )
    normlab.convert(model, "layernorm")
    assert model["a"][0] is model["b"][0]
