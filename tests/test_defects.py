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
