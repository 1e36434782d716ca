r"""Cross-Iteration Batch Normalization (Yao, Cao, Zheng, Huang & Lin, 2021,
"Cross-Iteration Batch Normalization", CVPR): BatchNorm whose statistics pool
the batches of the last k training steps, each made current by a first-order
Taylor step in the weights of the layer that produced the norm's input.

The layer needs that producer's weights, which it does not own: it is *linked*
to the producer (a reference kept outside its submodules, so no parameter or
state_dict key is duplicated). :func:`link_cross_iteration` links every such
layer of a model to the convolution or linear layer right before it; the
model builders of :mod:`normlab.models` call it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlab import functional as NF
from normlab.functional import checks
from normlab.functional.reference.common import (
    affine,
    channel_shape,
    per_channel_count,
    spatial_dims,
    unbiased,
    upcast,
    update_running,
)
from normlab.norms._base import RunningStatsNorm


@dataclass(frozen=True)
class _Step:
    """One earlier step of the window: its batch's per-channel mean and biased variance,
    and per producer parameter (by name) dμ/dθ, dν/dθ (ν = mean of x²) and θ, then."""

    mean: Tensor
    var: Tensor
    grads: dict[str, tuple[Tensor, Tensor, Tensor]]

    def compensated(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(μ, σ²) of this step's batch under the current parameters ``params``, to first
        order: μ + dμ/dθ·Δθ and ν + dν/dθ·Δθ, with ν clipped to at least μ² (σ² ≥ 0)."""
        d_mean = torch.zeros_like(self.mean)
        d_square = torch.zeros_like(self.mean)
        for name, (g_mean, g_square, then) in self.grads.items():
            delta = (params[name].detach() - then).reshape(then.shape[0], -1)
            d_mean += (g_mean.reshape(delta.shape) * delta).sum(1).to(d_mean.dtype)
            d_square += (g_square.reshape(delta.shape) * delta).sum(1).to(d_square.dtype)
        # ν' − μ'² with ν = σ² + μ², written so that no large terms cancel
        var = self.var + d_square - d_mean * (2 * self.mean + d_mean)
        return self.mean + d_mean, var.clamp_min(0.0)


def _out_features(module: nn.Module) -> int | None:
    """The output channels of a layer that can produce a cross-iteration norm's input:
    a (non-transposed) convolution or a linear layer; None for any other module."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


class CrossIterationBatchNorm(RunningStatsNorm):
    r"""Cross-Iteration Batch Normalization (Yao, Cao, Zheng, Huang & Lin, 2021,
    "Cross-Iteration Batch Normalization").

    .. math::
        \bar\mu = \frac1k \sum_{\tau=0}^{k-1} \mu_{t-\tau}(\theta_t), \quad
        \bar\nu = \frac1k \sum_{\tau=0}^{k-1}
            \max\!\left(\nu_{t-\tau}(\theta_t),\, \mu_{t-\tau}(\theta_t)^2\right), \quad
        y = \gamma \, \frac{x - \bar\mu}{\sqrt{\bar\nu - \bar\mu^2 + \epsilon}} + \beta

    with μ and ν = mean(x²) per channel over N and the spatial axes of step
    t − τ's batch, brought to the current weights θ_t of the producer (the
    layer whose output this layer normalizes) by a Taylor step:
    :math:`\mu_{t-\tau}(\theta_t) \approx \mu_{t-\tau}(\theta_{t-\tau}) +
    \partial\mu_{t-\tau}/\partial\theta \cdot (\theta_t - \theta_{t-\tau})`, the
    same for ν. Only the producer's weights are compensated (the paper's
    approximation: earlier layers' changes are neglected). Channel c of the
    producer's output depends on its row c of θ only, so one backward pass of
    the channels' sum gives every channel's derivative (as the authors'
    implementation does); that costs two weight-gradient passes of the producer
    per step (one for μ, one for ν).

    ``window`` is k, the steps pooled, the current one included (1: BatchNorm).
    For the first ``burn_in`` training steps (counted by
    ``num_batches_tracked``) the layer is plain BatchNorm and keeps no window:
    the paper waits until the weights change slowly (its released detection
    configurations pool k = 4 steps from the first learning-rate decay on).
    The window's earlier statistics enter the backward pass as constants, as in
    the authors' implementation: gradients flow through the current batch's
    statistics (weighted 1/k). Running statistics follow BatchNorm's rule with
    the current batch's mean and unbiased variance; eval uses them.

    A training step is plain BatchNorm, and is not kept in the window, when the
    layer cannot compensate: no autograd graph reaches its input (under
    ``torch.no_grad()``, or with everything before it frozen) or the batch is
    empty. An **unlinked** layer (see :meth:`link` and
    :func:`link_cross_iteration`) is plain BatchNorm and warns once, at its
    first training step. The window is transient: not in the state_dict, and
    emptied by ``load_state_dict``, ``reset_running_stats``, ``.to()`` and a
    new link; it refills in k − 1 steps. A state_dict is BatchNorm's (the same
    keys), so BatchNorm checkpoints load as they are. Compiles to one graph
    when it is plain BatchNorm; a pooling step takes ``torch.autograd.grad``,
    which breaks a compiled graph. Input (N, C, *) of any rank from 2.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        window: int = 4,
        burn_in: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"{name}({num_features}): window must be an integer >= 1, got {window!r}"
            )
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(
                f"{name}({num_features}): burn_in must be an integer >= 0, got {burn_in!r}"
            )
        # Plain attributes, set first (the base's reset clears the window). The producer is
        # kept out of the submodules: its parameters are not this layer's.
        self.__dict__.update(_producer=None, _steps=[], _warned=False)
        super().__init__(num_features, eps, momentum, affine, True, device=device, dtype=dtype)
        self.window = window
        self.burn_in = burn_in

    # ------------------------------------------------------------ the producer

    @property
    def producer(self) -> nn.Module | None:
        """The layer whose output this layer normalizes (set by :meth:`link`), or None."""
        return self.__dict__["_producer"]

    def link(self, producer: nn.Module) -> CrossIterationBatchNorm:
        """Link to ``producer``, the convolution (not transposed) or linear layer whose
        output this layer normalizes, directly or through per-channel modules
        (activations, pooling); returns self. Every parameter of the producer must
        have its output channels first, as a convolution's weight and bias do."""
        features = _out_features(producer)
        if features is None:
            raise TypeError(
                f"{self._who}.link: expected a convolution (Conv1d/2d/3d, not transposed) or "
                f"nn.Linear producing its input, got {type(producer).__name__}"
            )
        if features != self.num_features:
            raise ValueError(
                f"{self._who}.link: expected a producer of {self.num_features} channels, got "
                f"{producer} with {features}"
            )
        for name, param in producer.named_parameters():
            if param.dim() == 0 or param.shape[0] != self.num_features:
                raise ValueError(
                    f"{self._who}.link: every parameter of the producer must have its "
                    f"{self.num_features} output channels first; {name} has shape "
                    f"{checks.shape_str(param.shape)}"
                )
        self.__dict__["_producer"] = producer
        self._steps.clear()
        return self

    # ------------------------------------------------------------ forward

    def _check_input(self, input: Tensor) -> None:
        super()._check_input(input)
        own = (self.weight, self.bias, self.running_mean, self.running_var)
        checks.check_parameter_dtype(self._who, input, own)
        if self.training:
            checks.check_per_channel(self._who, input)

    def _pools(self, input: Tensor) -> bool:
        """Whether this training step pools the window (else it is plain BatchNorm)."""
        if not self.training or self.window == 1:
            return False
        if self.producer is None:
            if not self._warned and not torch.compiler.is_compiling():
                self._warned = True
                warnings.warn(
                    f"{self._who} is not linked to the layer that produces its input, so it "
                    "normalizes as plain BatchNorm; call normlab.link_cross_iteration(model) "
                    "after building the model, or layer.link(conv)",
                    stacklevel=2,
                )
            return False
        return (
            int(self.num_batches_tracked) >= self.burn_in
            and input.numel() > 0
            and torch.is_grad_enabled()
            and input.requires_grad
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        if self._pools(input):
            return self._pooled(input)
        momentum = self._momentum_for_step()
        return NF.run(
            "batch_norm",
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
        )

    def _derivatives(self, mean: Tensor, square: Tensor, params: dict[str, Tensor]) -> dict:
        """name -> (dμ/dθ, dν/dθ) of this batch, row c holding channel c's; one backward
        pass each, of the channels' sum, through the producer's parameters only."""
        trained = {name: p for name, p in params.items() if p.requires_grad}
        if not trained:  # a frozen producer: θ does not move, nothing to compensate
            return {}
        tensors = list(trained.values())
        g_mean = torch.autograd.grad(mean.sum(), tensors, retain_graph=True, allow_unused=True)
        if all(g is None for g in g_mean):
            raise RuntimeError(
                f"{self._who}: its input does not depend on the parameters of the layer it is "
                f"linked to ({self.producer}); link it to the layer that produces its input"
            )
        g_square = torch.autograd.grad(square.sum(), tensors, retain_graph=True, allow_unused=True)
        return {
            name: (gm, gs)
            for name, gm, gs in zip(trained, g_mean, g_square, strict=True)
            if gm is not None and gs is not None
        }

    def _pooled(self, input: Tensor) -> Tensor:
        x = upcast(input)
        dims = [0, *spatial_dims(x)]
        shape = channel_shape(x)
        mean = x.mean(dims)
        var = (x - mean.view(shape)).square().mean(dims)
        params = dict(self.producer.named_parameters())
        derivatives = self._derivatives(mean, x.square().mean(dims), params)

        means, variances = [mean], [var]
        for step in self._steps:
            m, v = step.compensated(params)
            means.append(m)
            variances.append(v)
        means_, variances_ = torch.stack(means), torch.stack(variances)
        pooled_mean = means_.mean(0)
        # ν̄ − μ̄² = mean of the variances + variance of the means (no E[x²] − E[x]²)
        pooled_var = variances_.mean(0) + (means_ - pooled_mean).square().mean(0)

        momentum = self._momentum_for_step()
        count = per_channel_count(x)
        update_running(
            self.running_mean,
            self.running_var,
            mean.detach(),
            unbiased(var.detach(), count),
            momentum,
        )
        grads = {
            name: (gm, gs, params[name].detach().clone()) for name, (gm, gs) in derivatives.items()
        }
        self._steps.insert(0, _Step(mean.detach(), var.detach(), grads))
        del self._steps[self.window - 1 :]

        y = (x - pooled_mean.view(shape)) * torch.rsqrt(pooled_var.view(shape) + self.eps)
        return affine(y, self.weight, self.bias, shape).to(input.dtype)

    # ------------------------------------------------------------ state

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        self._steps.clear()

    def _apply(self, fn, recurse=True):
        self._steps.clear()  # a new device or dtype: refill rather than convert
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        self._steps.clear()
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, window={self.window}, burn_in={self.burn_in}, "
            f"linked={self.producer is not None}"
        )


# What may sit between a producer and its norm: modules without parameters that act on
# each channel alone (channel c of the norm's input depends on the producer's row c only,
# which the compensation's per-channel derivatives assume).
_PER_CHANNEL = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Threshold,
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def link_cross_iteration(model: nn.Module) -> nn.Module:
    """Link every unlinked :class:`CrossIterationBatchNorm` of ``model`` to its producer,
    and return ``model``.

    The producer is the layer's nearest earlier sibling (in its parent's
    registration order, the order of a Sequential) that is a convolution or a
    linear layer with as many outputs as the layer has channels, with only
    element-wise or per-channel modules without parameters (activations but
    softmax, pooling, dropout) between them:
    conv-norm, linear-norm and conv-activation-norm blocks, in a Sequential or
    a block that registers its layers in call order (as ResNet blocks do).
    A layer left unlinked normalizes as plain BatchNorm; one UserWarning names
    them all. Layers already linked keep their link.
    """
    unlinked = []
    for parent_name, parent in model.named_modules():
        candidate = None
        for name, child in parent.named_children():
            if isinstance(child, CrossIterationBatchNorm):
                fits = candidate is not None and _out_features(candidate) == child.num_features
                if child.producer is None and fits:
                    child.link(candidate)
                elif child.producer is None:
                    unlinked.append((f"{parent_name}.{name}" if parent_name else name, child))
                candidate = None
            elif _out_features(child) is not None:
                candidate = child
            elif not isinstance(child, _PER_CHANNEL):
                candidate = None
    if unlinked:
        names = ", ".join(f"{name!r} ({layer._who})" for name, layer in unlinked)
        warnings.warn(
            f"link_cross_iteration: no convolution or linear layer of matching width right "
            f"before {names}, with only per-channel parameter-free modules between; "
            f"{'it normalizes' if len(unlinked) == 1 else 'they normalize'} as plain "
            "BatchNorm. Link by hand with layer.link(producer)",
            stacklevel=2,
        )
        for _, layer in unlinked:
            layer._warned = True
    return model
