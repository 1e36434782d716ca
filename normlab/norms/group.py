"""Per-sample normalizations over channel groups: GroupNorm and InstanceNorm."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks
from normlab.functional.backend import runs_torch
from normlab.norms._base import RunningStatsNorm, init_torch_norm, reset_affine
from normlab.norms._twin import TorchTwin


class GroupNorm(TorchTwin, nn.GroupNorm):
    r"""Group Normalization (Wu & He, 2018, "Group Normalization").

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    The C channels of an (N, C, *) input are split into ``num_groups`` groups;
    E and Var (biased) are taken per sample over each group's C / G channels and
    all spatial axes. ``num_groups=1`` is LayerNorm over (C, *), ``num_groups=C``
    is InstanceNorm. The affine (``weight``, ``bias``) is per channel, not per
    group. Independent of the batch size; same in train and eval.
    A ``torch.nn.GroupNorm`` (subclass; see :mod:`normlab.norms._twin`).
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        checks.check_groups(f"GroupNorm({num_groups}, {num_channels})", num_channels, num_groups)
        init_torch_norm(
            super().__init__, num_groups, num_channels, eps, affine, device, dtype, bias=bias
        )

    def forward(self, input: Tensor) -> Tensor:
        if runs_torch(input):
            try:
                return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
            except (RuntimeError, ValueError):
                self._explain(input)
                raise
        return self._forward(input)

    def _check_input(self, input: Tensor) -> None:
        who = f"GroupNorm({self.num_groups}, {self.num_channels})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 2, "(N, C, *)")
        checks.check_channels(who, input, self.num_channels)
        checks.check_group_values(who, input, self.num_groups)

    def _forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return NF.run("group_norm", input, self.num_groups, self.weight, self.bias, self.eps)


class LayerNormCHW(GroupNorm):
    r"""Layer Normalization of an (N, C, \*) input over all of (C, \*), per sample: the
    LayerNorm of the GroupNorm paper's comparisons (Wu & He, 2018; Ba, Kiros & Hinton,
    2016, "Layer Normalization").

    .. math::
        y = \frac{x - \mathrm{E}_{C,*}[x]}{\sqrt{\mathrm{Var}_{C,*}[x] + \epsilon}}
            \cdot \gamma + \beta

    GroupNorm with one group; the affine is per channel. (``LayerNorm2d`` normalizes
    each position over C only.)
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(1, num_channels, eps, affine, device, dtype, bias=bias)


class _InstanceNorm(TorchTwin, RunningStatsNorm):
    r"""Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016, "Instance
    Normalization: The Missing Ingredient for Fast Stylization").

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    E and Var (biased) are taken per sample and per channel over the spatial
    axes. Defaults differ from BatchNorm: ``affine=False`` and
    ``track_running_stats=False``. With ``track_running_stats=True`` the running
    estimates move towards the batch average of the per-instance statistics and
    are used in eval. Unbatched inputs (no N axis) are accepted. With
    ``affine=False`` a channel count other than ``num_features`` only warns, as
    in torch. Drop-in for the ``torch.nn`` class of the same name.
    """

    _dims: tuple[int, int] | None = None  # (unbatched, batched) ranks; None: (N, C, *) any rank
    _layout: str = "(N, C, *) with at least one spatial axis"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )

    def _check_input(self, input: Tensor) -> None:
        who = self._who
        checks.check_floating(who, input)
        if self._dims is None:
            checks.check_min_dims(who, input, 3, self._layout)
        else:
            checks.check_dims(who, input, self._dims, self._layout)
        if self.affine or self.track_running_stats:
            checks.check_channels(who, input, self.num_features, self._channel_dim(input))
        if self.training or not self.track_running_stats:
            checks.check_spatial(who, input if self._channel_dim(input) else input.unsqueeze(0))

    def _channel_dim(self, input: Tensor) -> int:
        return 0 if self._dims is not None and input.dim() == self._dims[0] else 1

    def _forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        channel_dim = self._channel_dim(input)
        if input.shape[channel_dim] != self.num_features:
            warnings.warn(
                f"{self._who}: input has {input.shape[channel_dim]} channels at dim "
                f"{channel_dim}, not num_features={self.num_features}; num_features is unused "
                "since affine=False and track_running_stats=False",
                stacklevel=3,
            )
        x = input if channel_dim else input.unsqueeze(0)
        use_input_stats = self.training or not self.track_running_stats
        # an empty batch has no statistics: it leaves the running ones untouched
        update = x.numel() > 0 or not use_input_stats
        y = NF.run(
            "instance_norm",
            x,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            use_input_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        return y if channel_dim else y.squeeze(0)


class InstanceNorm1d(_InstanceNorm, nn.InstanceNorm1d):
    __doc__ = (_InstanceNorm.__doc__ or "") + "\n    Input (N, C, L) or unbatched (C, L).\n"
    _dims = (2, 3)
    _layout = "(C, L) or (N, C, L)"


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    __doc__ = (_InstanceNorm.__doc__ or "") + "\n    Input (N, C, H, W) or unbatched (C, H, W).\n"
    _dims = (3, 4)
    _layout = "(C, H, W) or (N, C, H, W)"


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    __doc__ = (
        _InstanceNorm.__doc__ or ""
    ) + "\n    Input (N, C, D, H, W) or unbatched (C, D, H, W).\n"
    _dims = (4, 5)
    _layout = "(C, D, H, W) or (N, C, D, H, W)"


class InstanceNormNd(_InstanceNorm):
    __doc__ = (_InstanceNorm.__doc__ or "") + (
        "\n    Input (N, C, *) of any rank from 3 (always batched): what\n"
        "    ``normlab.create('instance', C)`` builds.\n"
    )

    def _torch_takes(self, input: Tensor) -> bool:
        return False  # torch's InstanceNorm classes each take one rank


class EvoNorm2dS0(nn.Module):
    r"""EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020, "Evolving Normalization-Activation
    Layers").

    .. math::
        y = \frac{x \cdot \sigma(v x)}{\sqrt{\mathrm{Var}_{group}(x) + \epsilon}}
        \cdot \gamma + \beta

    A normalization and activation in one, found by architecture search: a
    Swish-like gate x * sigmoid(v * x) divided by the group standard deviation
    (per sample over each group's C / G channels and the spatial axes, as
    GroupNorm). ``v``, ``weight`` and ``bias`` are per channel. Independent of
    the batch; same in train and eval. Input (N, C, *) of any rank from 2.
    """

    def __init__(
        self,
        num_features: int,
        groups: int = 32,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        checks.check_groups(f"EvoNorm2dS0({num_features}, groups={groups})", num_features, groups)
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        self.v = nn.Parameter(torch.ones(num_features, **factory))

    def reset_parameters(self) -> None:
        """weight and v to 1, bias to 0."""
        reset_affine(self)
        nn.init.ones_(self.v)

    def forward(self, input: Tensor) -> Tensor:
        who = f"EvoNorm2dS0({self.num_features})"
        checks.check_floating(who, input)
        checks.check_min_dims(who, input, 2, "(N, C, *)")
        checks.check_channels(who, input, self.num_features)
        return NF.run("evonorm_s0", input, self.groups, self.weight, self.bias, self.v, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}, eps={self.eps}"
