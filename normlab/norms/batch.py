"""Batch-statistics normalizations: BatchNorm, Batch Renorm, Ghost BatchNorm, frozen BatchNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks
from normlab.norms._base import RunningStatsNorm
from normlab.norms._twin import TorchTwin


class _BatchNorm(TorchTwin, RunningStatsNorm):
    r"""Batch Normalization (Ioffe & Szegedy, 2015, "Batch Normalization:
    Accelerating Deep Network Training by Reducing Internal Covariate Shift").

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    In training, E and Var are the batch's, per channel, over N and the spatial
    axes; Var is the biased estimate. The running estimates move as
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased
    batch variance; ``momentum=None`` makes them cumulative averages (the k-th
    batch weighs 1/k). In eval they replace the batch statistics, unless
    ``track_running_stats=False``, in which case the batch's are used always.
    A subclass of the ``torch.nn`` class of the same name (see
    :mod:`normlab.norms._twin`): same arguments, state and behaviour.
    """

    def _torch_takes(self, input: Tensor) -> bool:
        # momentum=None: torch reads the batch count back as a float, which breaks a compiled
        # graph; there normlab's path keeps the factor a tensor (eager stays torch's, exactly)
        cumulative = self.momentum is None and self.training and self.track_running_stats
        return not (cumulative and torch.compiler.is_compiling())

    def _undo_torch_forward(self, input: Tensor) -> None:
        # torch counts a batch of the right rank before it checks the rest; a batch
        # that raised is not counted
        if self.training and self.num_batches_tracked is not None:
            try:
                self._check_input_dim(input)
            except ValueError:
                return  # refused before counting
            self.num_batches_tracked.sub_(1)

    def _check_input(self, input: Tensor) -> None:
        super()._check_input(input)
        if self.training:
            checks.check_per_channel(self._who, input)

    def _forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        momentum = self._momentum_for_step()
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Buffers are passed only when they are read (eval) or updated (tracked training).
        pass_buffers = not self.training or self.track_running_stats
        return NF.run(
            "batch_norm",
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
        )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    __doc__ = (_BatchNorm.__doc__ or "") + "\n    Input (N, C) or (N, C, L).\n"
    _dims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    __doc__ = (_BatchNorm.__doc__ or "") + "\n    Input (N, C, H, W).\n"
    _dims = (4,)
    _layout = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    __doc__ = (_BatchNorm.__doc__ or "") + "\n    Input (N, C, D, H, W).\n"
    _dims = (5,)
    _layout = "(N, C, D, H, W)"


class BatchNormNd(_BatchNorm, nn.modules.batchnorm._BatchNorm):
    __doc__ = (_BatchNorm.__doc__ or "") + (
        "\n    Input (N, C, *) of any rank from 2: what ``normlab.create('batch', C)`` builds.\n"
    )

    def _check_input_dim(self, input: Tensor) -> None:  # torch's forward asks
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


class BatchRenorm(RunningStatsNorm):
    r"""Batch Renormalization (Ioffe, 2017, "Batch Renormalization: Towards
    Reducing Minibatch Dependence in Batch-Normalized Models").

    .. math::
        \hat x = \frac{x - \mu_B}{\sigma_B} \, r + d, \quad
        r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}\!\left(\frac{\sigma_B}{\sigma}\right), \quad
        d = \mathrm{clip}_{[-d_{max},\, d_{max}]}\!\left(\frac{\mu_B - \mu}{\sigma}\right)

    with batch mean and std :math:`\mu_B, \sigma_B = \sqrt{\mathrm{Var}_B + \epsilon}`,
    running :math:`\mu, \sigma = \sqrt{\text{running\_var} + \epsilon}`, and r, d
    treated as constants in the backward pass; y = weight * x_hat + bias. It
    corrects each batch towards the population statistics, so training sees
    what inference will. Eval uses the running statistics, as BatchNorm.

    Schedule (as in the paper, which relaxes r_max from 1 to 3 and d_max from 0
    to 5): for the first ``warmup_steps`` training steps r_max = 1 and d_max = 0
    (plain BatchNorm); then both grow linearly to reach ``r_max`` at step
    ``r_max_steps`` and ``d_max`` at step ``d_max_steps`` (step counts are
    absolute, from the first training step; a count not above
    ``warmup_steps`` means the final value right after warm-up). With all
    three at 0 the final values apply from the first step. Steps are counted
    by ``num_batches_tracked``. Running statistics follow BatchNorm's rule.
    Input (N, C, *) of any rank from 2.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 5000,
        r_max_steps: int = 40000,
        d_max_steps: int = 25000,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if r_max < 1 or d_max < 0:
            raise ValueError(
                f"{type(self).__name__}: need r_max >= 1 and d_max >= 0, got {r_max}, {d_max}"
            )
        if min(warmup_steps, r_max_steps, d_max_steps) < 0:
            raise ValueError(f"{type(self).__name__}: step counts must be >= 0")
        super().__init__(num_features, eps, momentum, affine, True, device=device, dtype=dtype)
        self.r_max = r_max
        self.d_max = d_max
        self.warmup_steps = warmup_steps
        self.r_max_steps = r_max_steps
        self.d_max_steps = d_max_steps

    def _ramp(self, final: float, start: float, end_step: int, step: Tensor) -> Tensor:
        if end_step <= self.warmup_steps:
            return torch.where(step < self.warmup_steps, start, final)
        progress = ((step - self.warmup_steps) / (end_step - self.warmup_steps)).clamp(0.0, 1.0)
        return start + (final - start) * progress

    def current_limits(self) -> tuple[Tensor, Tensor]:
        """(r_max, d_max) for the next training step, from the schedule, as 0-d
        float64 tensors (computed from ``num_batches_tracked`` without reading it
        back, so a compiled model neither breaks its graph nor recompiles)."""
        assert self.num_batches_tracked is not None
        step = self.num_batches_tracked.double()
        return (
            self._ramp(self.r_max, 1.0, self.r_max_steps, step),
            self._ramp(self.d_max, 0.0, self.d_max_steps, step),
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        if self.training:
            checks.check_per_channel(self._who, input)
        r_max, d_max = self.current_limits()
        momentum = self._momentum_for_step()
        return NF.run(
            "batch_renorm",
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
            r_max,
            d_max,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"r_max={self.r_max}, d_max={self.d_max}, warmup_steps={self.warmup_steps}, "
            f"r_max_steps={self.r_max_steps}, d_max_steps={self.d_max_steps}, "
            f"affine={self.affine}"
        )


class BatchRenorm1d(BatchRenorm):
    __doc__ = (BatchRenorm.__doc__ or "").replace(
        "Input (N, C, *) of any rank from 2.", "Input (N, C) or (N, C, L)."
    )
    _dims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchRenorm2d(BatchRenorm):
    __doc__ = (BatchRenorm.__doc__ or "").replace(
        "Input (N, C, *) of any rank from 2.", "Input (N, C, H, W)."
    )
    _dims = (4,)
    _layout = "(N, C, H, W)"


class GhostBatchNorm(RunningStatsNorm):
    r"""Ghost Batch Normalization (Hoffer, Hubara & Soudry, 2017, "Train longer,
    generalize better: closing the generalization gap in large batch training
    of neural networks").

    .. math::
        y = \frac{x - \mathrm{E}_v[x]}{\sqrt{\mathrm{Var}_v[x] + \epsilon}} \cdot \gamma + \beta

    In training the batch is cut along N into virtual ("ghost") batches of
    ``virtual_batch_size`` samples (the last may be smaller), and each is
    normalized with its own statistics, as BatchNorm would at that batch size.
    A batch no larger than ``virtual_batch_size`` is plain BatchNorm.

    Running statistics take **one update per training step**, towards the
    average over the step's virtual batches of their means and unbiased
    variances, with BatchNorm's ``momentum`` rule; so they estimate the
    statistics a virtual batch sees, and ``momentum`` means what it means in
    BatchNorm. Eval uses them (batch statistics when
    ``track_running_stats=False``). Input (N, C, *) of any rank from 2.
    """

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int = 32,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if virtual_batch_size < 1:
            raise ValueError(
                f"{type(self).__name__}: virtual_batch_size must be >= 1, got {virtual_batch_size}"
            )
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.virtual_batch_size = virtual_batch_size

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats:  # checked before the batch is counted
            checks.check_virtual_batches(self._who, input, self.virtual_batch_size)
        momentum = self._momentum_for_step()
        return NF.run(
            "ghost_batch_norm",
            input,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
            self.virtual_batch_size,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"


class GhostBatchNorm1d(GhostBatchNorm):
    __doc__ = (GhostBatchNorm.__doc__ or "").replace(
        "Input (N, C, *) of any rank from 2.", "Input (N, C) or (N, C, L)."
    )
    _dims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class GhostBatchNorm2d(GhostBatchNorm):
    __doc__ = (GhostBatchNorm.__doc__ or "").replace(
        "Input (N, C, *) of any rank from 2.", "Input (N, C, H, W)."
    )
    _dims = (4,)
    _layout = "(N, C, H, W)"


class FrozenBatchNorm2d(nn.Module):
    r"""BatchNorm with frozen statistics and affine (torchvision's semantics).

    .. math::
        y = \frac{x - \text{running\_mean}}{\sqrt{\text{running\_var} + \epsilon}}
        \cdot \text{weight} + \text{bias}

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers, not
    parameters: nothing is learned and nothing is updated, in train or eval.
    A BatchNorm state_dict loads as is (``num_batches_tracked`` is dropped).
    Used to fine-tune detection backbones at tiny per-device batch sizes.
    Input (N, C, *) of any rank from 2. See :func:`normlab.freeze_batchnorm`.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        who = f"FrozenBatchNorm2d({self.num_features})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 2, "(N, C, *)")
        checks.check_channels(who, input, self.num_features)
        frozen = (self.weight, self.bias, self.running_mean, self.running_var)
        checks.check_parameter_dtype(who, input, frozen)
        return NF.run(
            "batch_norm",
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            False,
            0.0,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class SyncBatchNorm(BatchNormNd):
    r"""Batch Normalization with statistics over a whole process group.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    with E and Var taken over the batches of every rank of ``process_group``
    (default: the world) together, combined exactly from per-rank counts, means
    and variances (uneven and empty per-rank batches included), so a
    data-parallel run normalizes as BatchNorm would on the concatenated global
    batch. Works on CPU (gloo) and GPU (NCCL); torch's own SyncBatchNorm runs
    on GPUs only. Outside an initialized process group, with a world of one,
    or in eval, it is exactly :class:`BatchNormNd` and communicates nothing.
    Input (N, C, *) of any rank from 2. See :func:`normlab.convert_sync_batchnorm`.

    A ``torch.nn.modules.batchnorm._BatchNorm`` but not a ``torch.nn.SyncBatchNorm``:
    torch's DistributedDataParallel refuses the latter on CPU, where this one works.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.process_group = process_group

    def _world(self) -> int:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, input: Tensor) -> Tensor:
        world = self._world() if self.training else 1
        if world == 1:
            return super().forward(input)
        from normlab.functional.sync import SyncBatchNormFunction

        self._check_input(input)
        momentum = self._momentum_for_step()
        return SyncBatchNormFunction.apply(
            input,
            self.weight,
            self.bias,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.eps,
            momentum,
            self.process_group,
            world,
        )
