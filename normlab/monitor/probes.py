"""Probes that look at the loss around the current parameters and leave no trace:
internal covariate shift as Santurkar et al. (2018) measured it, and the
smoothness of the loss landscape (their Figure 4).

Both evaluate the model on one batch at parameters other than the current
ones; :class:`preserved_state` puts back, bitwise, the parameters, their
gradients, every buffer (BatchNorm running statistics included), the
optimizer's state and the random number generators, and hides the probe's
passes from any attached :class:`~normlab.monitor.Monitor`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from normlab.monitor.monitor import unrecorded

LossFn = Callable[[Tensor, Tensor], Tensor]


class preserved_state:  # lower case: used like torch.no_grad
    """Snapshot a model's (and optimizer's) state on entry, restore it on exit."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.optimizer = optimizer

    def __enter__(self) -> preserved_state:
        self._unseen = unrecorded()  # attached Monitors see none of the probe's passes
        self._unseen.__enter__()
        self.params = [p.detach().clone() for p in self.model.parameters()]
        self.grads = [None if p.grad is None else p.grad.clone() for p in self.model.parameters()]
        self.buffers = [b.clone() for b in self.model.buffers()]
        self.training = [m.training for m in self.model.modules()]
        self.optimizer_state = (
            copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        )
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return self

    def restore_rng(self) -> None:
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), self.params, strict=True):
                p.copy_(saved)
            for p, grad in zip(self.model.parameters(), self.grads, strict=True):
                p.grad = None if grad is None else grad.clone()
            for b, saved in zip(self.model.buffers(), self.buffers, strict=True):
                b.copy_(saved)
        for m, training in zip(self.model.modules(), self.training, strict=True):
            m.training = training
        if self.optimizer is not None and self.optimizer_state is not None:
            self.optimizer.state.clear()
            self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        self.restore_rng()

    def __exit__(self, *exc) -> None:
        try:
            self.restore()
        finally:
            self._unseen.__exit__(*exc)


def _gradients(model, loss_fn, inputs, targets, state: preserved_state) -> tuple[float, list]:
    """Loss and parameter gradients on the batch, from the same random state each time."""
    state.restore_rng()
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    grads = [
        torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for p in model.parameters()
    ]
    return loss.item(), grads


def _forward_order(model: nn.Module, inputs: Tensor) -> list[nn.Module]:
    """Modules that own parameters directly, in the order the forward pass calls them."""
    order: list[nn.Module] = []
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args: order.append(mod) if mod not in order else None
        )
        for m in owners
    ]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def internal_covariate_shift(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    optimizer: torch.optim.Optimizer,
    layers: list[nn.Module] | None = None,
) -> list[dict]:
    """Internal covariate shift as defined by Santurkar, Tsipras, Ilyas & Madry
    (2018, "How Does Batch Normalization Help Optimization?").

    For layer i: G = the gradient of its weight at the current parameters;
    G' = the same gradient on the same batch after every module that runs
    before layer i has taken the update the optimizer actually makes from
    here (``optimizer.step()``, so SGD, momentum and Adam all work). Returns,
    per layer in forward order, ``{"layer", "ics_l2": ||G - G'||,
    "ics_cosine": cos(G, G')}``. ``layers`` defaults to every module with a
    ``weight`` parameter. Model, optimizer, buffers, gradients and random
    state are restored exactly afterwards.
    """
    with preserved_state(model, optimizer) as state:
        state.restore_rng()
        order = _forward_order(model, inputs)
        state.restore()
        chosen = layers or [m for m in order if isinstance(getattr(m, "weight", None), Tensor)]
        names = {m: name for name, m in model.named_modules()}
        params = list(model.parameters())
        _, grads = _gradients(model, loss_fn, inputs, targets, state)
        g_now = {p: g for p, g in zip(params, grads, strict=True)}
        optimizer.step()  # the real update, then undone
        updated = [p.detach().clone() for p in params]
        state.restore()
        results = []
        for layer in chosen:
            earlier = {
                id(p) for m in order[: order.index(layer)] for p in m.parameters(recurse=False)
            }
            with torch.no_grad():
                for p, new in zip(params, updated, strict=True):
                    if id(p) in earlier:
                        p.copy_(new)
            _, shifted = _gradients(model, loss_fn, inputs, targets, state)
            g_shift = dict(zip(params, shifted, strict=True))
            g, g2 = g_now[layer.weight].flatten(), g_shift[layer.weight].flatten()
            cosine = torch.nn.functional.cosine_similarity(g, g2, dim=0, eps=1e-30)
            results.append(
                {
                    "layer": names.get(layer, type(layer).__name__),
                    "ics_l2": (g - g2).norm().item(),
                    "ics_cosine": cosine.item(),
                }
            )
            state.restore()
    return results


def loss_landscape(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    step_sizes: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4),
    optimizer: torch.optim.Optimizer | None = None,
) -> dict:
    """Loss-landscape smoothness along the gradient (Santurkar et al., 2018, Figure 4).

    From the current parameters w with gradient g on the batch, for each step
    size eta, evaluate the loss and the gradient at w - eta g. Returns:
    ``loss_variation`` = max - min of those losses (w included);
    ``gradient_predictiveness`` = max over eta of ||grad L(w) - grad L(w - eta g)||;
    ``beta_smoothness`` = max over eta of that change divided by the distance
    moved, ||eta g||; ``gradient_norm`` = ||g||; and the per-step-size ``losses``
    and ``gradient_changes``.
    Everything (parameters, gradients, buffers, optimizer state, random state)
    is restored exactly afterwards.
    """
    with preserved_state(model, optimizer) as state:
        params = list(model.parameters())
        loss0, g = _gradients(model, loss_fn, inputs, targets, state)
        flat_g = torch.cat([t.flatten() for t in g])
        g_norm = flat_g.norm().item()
        losses, changes, betas = [loss0], [], []
        for eta in step_sizes:
            state.restore()
            with torch.no_grad():
                for p, grad in zip(params, g, strict=True):
                    p.sub_(grad, alpha=eta)
            loss, g_eta = _gradients(model, loss_fn, inputs, targets, state)
            change = (torch.cat([t.flatten() for t in g_eta]) - flat_g).norm().item()
            losses.append(loss)
            changes.append(change)
            betas.append(change / max(eta * g_norm, 1e-30))
    return {
        "loss": loss0,
        "gradient_norm": g_norm,
        "losses": losses[1:],
        "gradient_changes": changes,
        "loss_variation": max(losses) - min(losses),
        "gradient_predictiveness": max(changes),
        "beta_smoothness": max(betas),
    }


class Probe:
    """Run a probe every ``every`` steps of a training loop and keep its results.

    >>> ics = Probe(internal_covariate_shift, every=50, model=model, loss_fn=loss_fn,
    ...             optimizer=optimizer)
    >>> for step, (x, y) in enumerate(loader):
    ...     ics(step, x, y)          # before optimizer.step()
    ...     ...
    >>> ics.to_frame()               # step, layer/quantity columns, seconds
    """

    def __init__(self, probe: Callable[..., list | dict], every: int = 50, **kwargs) -> None:
        if every < 1:
            raise ValueError(f"Probe: every must be >= 1, got {every}")
        self.probe = probe
        self.every = every
        self.kwargs = kwargs
        self.records: list[dict] = []

    def __call__(self, step: int, inputs: Tensor, targets: Tensor) -> None:
        if step % self.every:
            return
        start = time.perf_counter()
        result = self.probe(inputs=inputs, targets=targets, **self.kwargs)
        seconds = time.perf_counter() - start
        rows = result if isinstance(result, list) else [result]
        for row in rows:
            self.records.append({"step": step, **row, "seconds": seconds})

    def to_frame(self):
        """The results as a pandas DataFrame, one row per step (and layer)."""
        import pandas as pd

        return pd.DataFrame(self.records)
