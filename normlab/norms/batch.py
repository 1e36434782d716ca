"""Batch normalization: statistics per channel over the batch and spatial axes."""

from __future__ import annotations

from torch import Tensor

from normlab import functional as NF
from normlab.functional import checks
from normlab.norms._base import RunningStatsNorm


class _BatchNorm(RunningStatsNorm):
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
    Drop-in for the ``torch.nn`` class of the same name: same arguments,
    defaults, state_dict keys and behaviour.
    """

    _dims: tuple[int, ...]
    _layout: str

    def forward(self, input: Tensor) -> Tensor:
        who = self._who
        checks.check_floating(who, input)
        checks.check_dims(who, input, self._dims, self._layout)
        checks.check_channels(who, input, self.num_features)
        if self.training:
            checks.check_per_channel(who, input)
        momentum = self._momentum_for_step()
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Buffers are passed only when they are read (eval) or updated (tracked training).
        pass_buffers = not self.training or self.track_running_stats
        return NF.batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    __doc__ = (_BatchNorm.__doc__ or "") + "\n    Input (N, C) or (N, C, L).\n"
    _dims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    __doc__ = (_BatchNorm.__doc__ or "") + "\n    Input (N, C, H, W).\n"
    _dims = (4,)
    _layout = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    __doc__ = (_BatchNorm.__doc__ or "") + "\n    Input (N, C, D, H, W).\n"
    _dims = (5,)
    _layout = "(N, C, D, H, W)"
