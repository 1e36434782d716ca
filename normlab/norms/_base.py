"""The base of the layers that keep running statistics (batch and instance norms).

It owns what torch.nn's ``_NormBase`` owns, with the same names so that a
torch state_dict loads as is: parameters ``weight``/``bias`` (when ``affine``),
buffers ``running_mean``, ``running_var`` and ``num_batches_tracked`` (when
``track_running_stats``; None otherwise, and then absent from the state_dict).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from normlab.functional import checks

# The names a layer's size argument goes by (its constructor's first parameter).
SIZE_PARAMETERS = ("num_features", "num_channels", "normalized_shape", "head_dim", "dim", "size")


def checks_its_size(cls: type[nn.Module]) -> type[nn.Module]:
    """Make ``cls``'s constructor refuse, naming the class, a size argument (its first
    parameter, if one of :data:`SIZE_PARAMETERS`) that is not a positive integer,
    as :func:`normlab.create` does; in place, returns ``cls``."""
    init = cls.__init__
    parameters = list(inspect.signature(init).parameters)[1:]
    if not parameters or parameters[0] not in SIZE_PARAMETERS:
        return cls
    name = parameters[0]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs) -> None:
        value = args[0] if args else kwargs.get(name)
        checks.check_size(type(self).__name__, name, value)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def add_affine(
    module: nn.Module,
    shape: int | tuple[int, ...],
    affine: bool,
    bias: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> None:
    """Register ``weight`` (and ``bias`` when ``bias``) of ``shape`` on ``module``,
    torch.nn's way: both registered as None when not ``affine``."""
    factory = {"device": device, "dtype": dtype}
    weight = nn.Parameter(torch.empty(shape, **factory)) if affine else None
    module.register_parameter("weight", weight)
    has_bias = affine and bias
    module.register_parameter(
        "bias", nn.Parameter(torch.empty(shape, **factory)) if has_bias else None
    )


def init_torch_norm(init: Callable[..., None], *args, bias: bool, **kwargs) -> None:
    """Run torch's norm constructor ``init`` (bound, e.g. ``super().__init__``) with
    ``bias``. Older torch (2.11 has none) lacks that keyword on GroupNorm and the
    batch/instance norms: there the bias parameter is dropped afterwards, as newer
    torch does (registered as None)."""
    if "bias" in inspect.signature(init).parameters:
        init(*args, bias=bias, **kwargs)
        return
    init(*args, **kwargs)
    if not bias:
        init.__self__.register_parameter("bias", None)


def reset_affine(module: nn.Module) -> None:
    """``weight`` to 1 and ``bias`` to 0, each where present."""
    if getattr(module, "weight", None) is not None:
        nn.init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


class RunningStatsNorm(nn.modules.batchnorm._NormBase):
    """Per-channel affine and running statistics: torch.nn's ``_NormBase`` (its
    state and reset methods), with normlab's input checks and momentum rule."""

    # Accepted input ranks and their layout, for messages; None accepts any (N, C, *).
    _dims: tuple[int, ...] | None = None
    _layout: str = "(N, C, *)"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        if num_features <= 0:
            raise ValueError(
                f"{type(self).__name__}: num_features must be positive, got {num_features}"
            )
        init_torch_norm(
            super().__init__,
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )

    @property
    def _who(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def _check_input(self, input: Tensor) -> None:
        """Floating point, an accepted rank, and num_features channels at dim 1."""
        who = self._who
        checks.check_floating(who, input)
        if self._dims is None:
            checks.check_min_dims(who, input, 2, self._layout)
        else:
            checks.check_dims(who, input, self._dims, self._layout)
        checks.check_channels(who, input, self.num_features)

    def _momentum_for_step(self) -> float | Tensor:
        """Count this training batch and return the factor of its statistics.

        ``momentum=None`` gives the cumulative moving average: the k-th batch
        gets weight 1/k, so the running value is the mean over all batches.
        That factor is a 0-d tensor computed from ``num_batches_tracked``, so a
        compiled model neither breaks its graph nor recompiles on it.
        """
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / self.num_batches_tracked.double()
        return 0.0 if self.momentum is None else self.momentum

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict,
        prefix,
        local_metadata,
        strict,
        missing_keys,
        unexpected_keys,
        error_msgs,
    ) -> None:
        # Checkpoints written before num_batches_tracked existed (or stripped of
        # it) load with the count left as it is (0 for a fresh layer).
        key = prefix + "num_batches_tracked"
        if self.num_batches_tracked is not None and key not in state_dict:
            state_dict[key] = self.num_batches_tracked.detach().clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
