"""The training monitor: what each layer's activations and gradients do while a
model trains, recorded through hooks, with no change to the model."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from normlab.monitor.statistics import quantities, statistics_matrix, wasserstein_1, work_size
from normlab.norms import registry

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
)
# |x| beyond which an activation's derivative is under ~5-7% of its peak.
SATURATION = {nn.Sigmoid: 4.0, nn.Tanh: 2.0, nn.Hardtanh: 1.0}
DEAD = (nn.ReLU, nn.ReLU6)

Selector = str | type[nn.Module] | Callable[[str, nn.Module], bool]
STEPS = ("forward", "manual")  # what marks a step: see Monitor(steps=)

_unrecorded = 0  # > 0 while passes run that no Monitor may see (see unrecorded())


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Forward and backward passes, optimizer steps and manual step calls
    (:meth:`Monitor.begin_step` etc.) run inside are invisible to every attached
    :class:`Monitor`: not counted as steps, not recorded. The probes
    (:mod:`normlab.monitor.probes`) run their trial passes in it."""
    global _unrecorded
    _unrecorded += 1
    try:
        yield
    finally:
        _unrecorded -= 1


@dataclass
class _Site:
    """One watched tensor: a module's input or output, one call per step."""

    name: str
    what: str  # e.g. "input of Sigmoid"
    saturation: float | None
    dead: bool
    rows: Tensor | None = None  # (capacity, width) ring of samples
    targets: list[Tensor] = field(default_factory=list)  # its rows' first `kept` values
    kept: int = 0  # values a record keeps: min(numel, width)
    dtype: torch.dtype | None = None  # the dtype gathered straight into rows (None: widened)
    lengths: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    grad_norms: list[tuple[int, Tensor]] = field(default_factory=list)  # (slot, ||dL/dx||)
    sample_index: Tensor | None = None  # the positions recorded, in random order
    sample_numel: int = -1  # the size sample_index was drawn for
    spare: tuple | Future | None = None  # the other buffer (rows, targets), or its
    # making on the summarizing thread (submitted at the site's first record)

    def make_spare(self) -> tuple[Tensor, list[Tensor]]:
        """A buffer like the site's (the summarizing thread makes it, ahead of use)."""
        assert self.rows is not None
        rows = torch.zeros_like(self.rows)
        return rows, list(rows[:, : self.kept])

    def swap_buffers(self) -> None:
        """Record on into the spare buffer while the filled one is summarized;
        the bookkeeping lists start afresh. Each buffer's row views are made once,
        not per swap (a few thousand views cost milliseconds)."""
        assert self.rows is not None
        filled = (self.rows, self.targets)
        if isinstance(self.spare, Future):
            self.spare = self.spare.result()
        self.rows, self.targets = self.spare
        self.spare = filled
        if len(self.targets[0]) != self.kept:  # the spare's views predate a new size
            self.targets = list(self.rows[:, : self.kept])
        self.lengths, self.steps, self.grad_norms = [], [], []


class _Job(NamedTuple):
    """One site's records, handed over to the summarizing thread."""

    name: str
    rows: Tensor  # (k, width)
    lengths: list[int]
    steps: list[int]
    grad_norms: list[tuple[int, Tensor]]
    saturation: float | None
    dead: bool


@dataclass(frozen=True)
class _Chunk:
    """Records of one site from one flush, on the host as compact arrays."""

    module: str
    quantities: tuple[str, ...]
    steps: np.ndarray  # (k,) int64
    values: np.ndarray  # (k, len(quantities)) float32
    sketch: np.ndarray | None  # (k, SKETCH_LEVELS) float32 quantiles, for activations
    absent: np.ndarray | None = None  # (k, len(quantities)) bool: no record there (a NaN)

    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.sketch, self.absent) if a is not None)
        return self.steps.nbytes + self.values.nbytes + extra


def _to_host(records: list[Tensor]) -> np.ndarray:
    """Parameter records' norm vectors (all of one length: a monitor makes them one
    way) as one float64 host array: one stack, one copy to the host."""
    return torch.stack(records).double().cpu().numpy()


def _norm(grad: Tensor) -> Tensor:
    """||grad||, in float32 at least (a scaled half-precision norm overflows)."""
    if grad.requires_grad:  # a backward with create_graph=True
        grad = grad.detach()
    half = grad.dtype in (torch.float16, torch.bfloat16)
    return torch.linalg.vector_norm(grad, dtype=torch.float32 if half else None)


class _Hook(functools.partial):
    """A Monitor's hook on a model or a parameter (a partial without arguments: its
    call costs no Python frame). A copy of it is inert: a model deep-copied (an EMA
    or SWA copy), pickled or saved whole while watched carries hooks that record
    nothing, and the original stays watched."""

    __slots__ = ()

    def __deepcopy__(self, memo) -> Callable:
        return _inert

    def __reduce__(self):
        return _inert_hook, ()


def _inert(*args, **kwargs) -> None:
    """What a copied Monitor hook does: nothing."""


def _inert_hook() -> Callable:
    return _inert


def _watch_gradient(tensor: Tensor, norms: list[tuple[int, Tensor]], slot: int) -> None:
    """Append ``(slot, ||dL/d tensor||)`` to ``norms`` when the backward reaches
    ``tensor``: through a pre-hook of the function that made it (cheaper than a
    tensor hook), else (a leaf) a tensor hook. The norm is left on the device."""
    grad_fn = tensor.grad_fn
    if grad_fn is None:

        def tensor_hook(grad: Tensor) -> None:  # a leaf outlives the step: once only
            norms.append((slot, _norm(grad)))
            handle.remove()

        handle = tensor.register_hook(tensor_hook)
        return
    index = tensor.output_nr

    def prehook(grads: tuple) -> None:
        if grads[index] is not None:
            norms.append((slot, _norm(grads[index])))

    grad_fn.register_prehook(prehook)


class Monitor:
    """Record activation statistics, gradient flow and parameter updates of a model.

    ``Monitor(model)`` watches, by default, the **input** of every activation
    module (the pre-activation a sigmoid or ReLU sees), the **output** of every
    normalization layer, and every parameter. ``modules=`` replaces the
    default sites with a selection: name patterns (``"layers.*.act"``), module
    types, or a predicate ``f(name, module)``; a selected module that is an
    activation is watched at its input, any other at its output.

    Every ``every``-th step is recorded; a step is a training-mode forward pass
    of ``model`` (or see ``steps="manual"`` below). Per recorded step and
    watched site: mean, std, the ``percentiles``, min, max, ``saturated``
    (fraction of |x| beyond a threshold, for sigmoid/tanh inputs) and ``dead``
    (fraction <= 0, for ReLU inputs). Gradient quantities are recorded on the
    recorded steps whose index is a multiple of ``grad_every`` (default 10; 1
    records them every step, at several times the cost: see docs/monitor.md):
    per site ``grad_norm`` (the L2 norm of
    dL/d(tensor)); per parameter ``grad_norm`` and, when ``optimizer`` is
    given, ``update_ratio`` = ||w_after - w_before|| / ||w_before|| measured
    around ``optimizer.step()``.

    ``steps="manual"`` is for loops whose steps are not one forward pass of
    ``model`` each, or that run the backward inside ``optimizer.step(closure)``
    (Lightning, L-BFGS): nothing is hooked on the model's forward or on the
    optimizer; call :meth:`begin_step` at the start of each step and, when
    ``optimizer`` is given, :meth:`before_optimizer_step` and
    :meth:`after_optimizer_step` around its update.

    Tensors above ``sample_size`` elements are summarized by a fixed random
    sample of that many elements (exact below; percentiles and the quantile
    sketch use at most 512 of them, a random subset). Samples are copied into a buffer on the
    tensor's device and summarized every ``flush_every`` steps (or on
    :meth:`flush`, :meth:`to_frame`, :meth:`detach`): the host is not
    synchronized every step, and the buffer never grows.

    A module called several times in one step is recorded once per
    call: the first as ``name``, the k-th as ``name#k-1``. Models wrapped in
    DistributedDataParallel are watched under their inner names.

    Use as a context manager (hooks are removed on exit, also on an
    exception), or with :meth:`attach` / :meth:`detach`.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Iterable[Selector] | None = None,
        every: int = 1,
        percentiles: tuple[float, ...] = (15, 50, 85),
        optimizer: torch.optim.Optimizer | None = None,
        grad_every: int = 10,
        sample_size: int = 1024,
        flush_every: int = 256,
        parameters: bool = True,
        record_eval: bool = False,
        steps: Literal["forward", "manual"] = "forward",
    ) -> None:
        for arg, value in (
            ("every", every),
            ("grad_every", grad_every),
            ("sample_size", sample_size),
            ("flush_every", flush_every),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Monitor: {arg} must be an integer >= 1, got {value!r}")
        if any(not 0 <= p <= 100 for p in percentiles):
            raise ValueError(f"Monitor: percentiles must lie in [0, 100], got {percentiles}")
        if steps not in STEPS:
            raise ValueError(f"Monitor: steps must be 'forward' or 'manual', got {steps!r}")
        self.model = model
        self.every = every
        self.grad_every = grad_every
        self.percentiles = tuple(dict.fromkeys(percentiles))  # each once, in order
        self.optimizer = optimizer
        self.sample_size = sample_size
        self.flush_every = flush_every
        self.record_eval = record_eval
        self.steps = steps
        self.step = -1  # index of the current step
        self._attached = False
        self._recording = False
        self._gradients = False  # whether this step records gradient quantities
        self._handles: list = []
        # steps="forward" with an optimizer: its step hooks, registered on the steps that
        # record gradients only (two hook calls a step cost more than registering them
        # every grad_every-th step: some 7 of 690 us on the BN paper's MLP)
        self._hook_updates = False
        self._update_handles: list = []
        self._sites: dict[str, _Site] = {}
        self._calls: dict[str, int] = {}
        self._buffered = 0  # recorded steps since the last flush
        self._chunks: list[_Chunk] = []
        self._summarizer: ThreadPoolExecutor | None = None  # summarizes handed-over records
        self._summary: Future | None = None  # its last job
        self._held: dict[int, tuple] = {}  # its buffers (_summary_buffers)
        self._selected = self._select(modules)
        self._params = (
            [(self._clean(n), p) for n, p in model.named_parameters() if p.requires_grad]
            if parameters
            else []
        )
        self._param_data = [p.detach() for _, p in self._params]  # updated in place by steps
        # per recorded step: [step, norms, moved]: norms (P,) gradient norms, or (2P,)
        # gradient then weight norms around an optimizer step; moved (P,) ||Δw|| or None
        self._param_records: list[list] = []
        self._snapshot: list[Tensor] | None = None  # weights before optimizer.step()
        self._snapshot_step = -1  # the step it was taken in, until the update is measured

    # ------------------------------------------------------------ selection

    @staticmethod
    def _clean(name: str) -> str:
        return name.removeprefix("module.")  # DistributedDataParallel's wrapper

    def _select(self, selectors: Iterable[Selector] | None) -> list[tuple[str, nn.Module, bool]]:
        """(name, module, watch_input) for every watched module; a selector that
        matches no module is named in a UserWarning (a typo would watch nothing)."""
        chosen = []
        selectors = None if selectors is None else list(selectors)
        used: set[int] = set()
        for name, module in self.model.named_modules():
            name = self._clean(name)
            if selectors is None:
                hit = isinstance(module, ACTIVATIONS) or registry.spec_of(module) is not None
            else:
                hits = [i for i, s in enumerate(selectors) if self._matches(s, name, module)]
                used.update(hits)
                hit = bool(hits)
            if hit and module is not self.model:
                chosen.append((name, module, isinstance(module, ACTIVATIONS)))
        unused = [s for i, s in enumerate(selectors or ()) if i not in used]
        if unused:
            warnings.warn(
                "Monitor: modules= selectors that match no module of the model, so watch "
                f"nothing: {', '.join(map(repr, unused))}",
                UserWarning,
                stacklevel=3,
            )
        return chosen

    @staticmethod
    def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
        if isinstance(selector, str):
            return fnmatch.fnmatchcase(name, selector)
        if isinstance(selector, type):
            return isinstance(module, selector)
        return bool(selector(name, module))

    # ------------------------------------------------------------ hooks

    def attach(self) -> Monitor:
        """Register the hooks (idempotent); returns the monitor."""
        if self._attached:
            return self
        self._attached = True
        if self.steps == "forward":
            self._handles.append(self.model.register_forward_pre_hook(_Hook(self._on_step)))
        for name, module, watch_input in self._selected:
            what = f"{'input' if watch_input else 'output'} of {type(module).__name__}"
            saturation = next((t for c, t in SATURATION.items() if isinstance(module, c)), None)
            dead = isinstance(module, DEAD)
            hook = _Hook(self._make_hook(name, what, saturation, dead, watch_input))
            if watch_input:
                self._handles.append(module.register_forward_pre_hook(hook))
            else:
                self._handles.append(module.register_forward_hook(hook))
        if self._params:
            if self.optimizer is None:
                for i, (_, p) in enumerate(self._params):
                    hook = _Hook(self._grad_hook(i))
                    self._handles.append(p.register_post_accumulate_grad_hook(hook))
            else:  # its copy of the weights now, not in the first step that needs it
                self._snapshot = [p.clone() for p in self._param_data]
                self._hook_updates = self.steps == "forward"
        self._threads()  # started now, not amid the first steps
        return self

    def detach(self) -> None:
        """Remove every hook and flush what is buffered."""
        self._hook_updates = False
        self._toggle_update_hooks(False)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._attached = False
        self.flush()
        self._held.clear()
        if self._summarizer is not None:
            self._summarizer.shutdown()
            self._summarizer = None

    def __enter__(self) -> Monitor:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ------------------------------------------------------------ steps

    def begin_step(self, training: bool = True) -> None:
        """Start a step (``steps="manual"``): the forward passes until the next
        call belong to it. Counted, and recorded every ``every``-th, when
        ``training`` or ``record_eval``; an evaluation step (``training=False``)
        otherwise records nothing. Ignored inside :func:`unrecorded`."""
        self._check_manual("begin_step")
        self._begin_step(training)

    def before_optimizer_step(self) -> None:
        """Right before the update, once the gradients are final (after the
        backward, gradient accumulation, unscaling and clipping): take the
        parameters' gradient norms and a copy of the weights, on steps that
        record gradients. Needs ``steps="manual"`` and ``optimizer``."""
        self._check_manual("before_optimizer_step", update=True)
        self._before_update()

    def after_optimizer_step(self) -> None:
        """Right after the update: the update ratios, against the weights
        :meth:`before_optimizer_step` copied in this step (nothing without that
        call). Needs ``steps="manual"`` and ``optimizer``."""
        self._check_manual("after_optimizer_step", update=True)
        self._after_update()

    def _check_manual(self, method: str, update: bool = False) -> None:
        if self.steps != "manual":
            raise RuntimeError(
                f"Monitor.{method}: this monitor finds its steps and updates through hooks "
                "(steps='forward'); create it with steps='manual' to mark them yourself"
            )
        if not self._attached:
            raise RuntimeError(
                f"Monitor.{method}: the monitor is not attached (use it in a with block, or "
                "call attach())"
            )
        if update and self.optimizer is None:
            raise RuntimeError(
                f"Monitor.{method}: update ratios need Monitor(optimizer=...); without it "
                "parameter gradient norms are taken in the backward, with no call"
            )

    def _on_step(self, module, args) -> None:  # steps="forward": the model's forward pre-hook
        if torch._C._current_graph_task_id() != -1:
            return  # inside a backward: activation checkpointing recomputing the forward
        self._begin_step(module.training)

    def _begin_step(self, training: bool) -> None:
        if _unrecorded:
            return
        if not (training or self.record_eval):
            self._recording = False
            return
        self.step += 1
        self._recording = self.step % self.every == 0
        self._gradients = self._recording and self.step % self.grad_every == 0
        if self._hook_updates and (self._gradients or self._update_handles):
            self._toggle_update_hooks(self._gradients)
        if self._recording:
            self._calls.clear()
            if self._buffered >= self.flush_every:
                self._hand_over()
            self._buffered += 1  # every site holds at most one record per step

    def _make_hook(self, name, what, saturation, dead, watch_input):
        calls, sites, record = self._calls, self._sites, self._record

        def hook(module, args, output=None):
            if not self._recording or _unrecorded:
                return
            tensor = args[0] if watch_input else output
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                return
            call = calls.get(name, 0)
            if call and torch._C._current_graph_task_id() != -1:
                return  # a call inside a backward: activation checkpointing recomputing
            calls[name] = call + 1
            key = name if call == 0 else f"{name}#{call}"
            site = sites.get(key)
            if site is None:
                site = sites[key] = _Site(key, what, saturation, dead)
            record(site, tensor)

        return hook

    def _record(self, site: _Site, tensor: Tensor) -> None:
        # The hot path (every step, every site): one gather into the ring buffer,
        # as few torch calls as it takes; the statistics wait for flush().
        # detached: out= refuses inputs that carry a gradient, backward or forward-mode
        source = tensor.detach()
        slot = len(site.steps)
        if source.numel() == site.sample_numel and source.dtype == site.dtype:
            torch.take(source, site.sample_index, out=site.targets[slot])  # flat positions
        else:
            self._record_new_shape(site, source, slot)
        site.lengths.append(site.kept)
        site.steps.append(self.step)
        if self._gradients and tensor.requires_grad:
            _watch_gradient(tensor, site.grad_norms, slot)

    def _record_new_shape(self, site: _Site, source: Tensor, slot: int) -> None:
        """The first record of a site, or one of a new size or dtype: set the site's
        buffers, sample positions and row views up, then record. The site changes
        only once all of it worked: a failure (say, a random op refused inside
        vmap) leaves it as it was, to be set up at its next record."""
        numel = source.numel()
        new_site, rows = site.rows is None, site.rows
        if rows is None:  # as wide as the first record needs, at most sample_size; zeros,
            width = max(1, min(numel, self.sample_size))  # not empty: pages touched once here
            rows = torch.zeros(self.flush_every, width, device=source.device)
        kept = min(numel, rows.shape[1])
        index = self._index(numel, kept, source.device)
        dtype = source.dtype if source.dtype == rows.dtype else None
        targets = list(rows[:, :kept])
        if dtype is None:  # half precision: gather, then widen the sample only
            targets[slot].copy_(source.take(index))
        else:
            torch.take(source, index, out=targets[slot])
        site.rows, site.kept, site.targets = rows, kept, targets
        site.sample_index, site.sample_numel, site.dtype = index, numel, dtype
        if new_site:  # the next hand-over's buffers, made beside training
            site.spare = self._threads().submit(site.make_spare)

    @staticmethod
    def _index(numel: int, kept: int, device: torch.device) -> Tensor:
        """``kept`` of ``numel`` flat positions, fixed per size, in random order: a
        record is a random sample, and every prefix of it one too (the quantiles
        are read off a prefix: :func:`~normlab.monitor.statistics.statistics_matrix`)."""
        generator = torch.Generator().manual_seed(numel)
        return torch.randperm(numel, generator=generator)[:kept].to(device)

    def _param_record(self, norms: Tensor | None = None) -> list:
        """This step's parameter record: made with ``norms`` (or NaNs) on first use,
        its norms replaced by ``norms`` when given."""
        records = self._param_records
        if not records or records[-1][0] != self.step:
            if norms is None:
                device = self._params[0][1].device
                norms = torch.full((len(self._params),), float("nan"), device=device)
            records.append([self.step, norms, None])
        elif norms is not None:
            records[-1][1:] = [norms, None]
        return records[-1]

    def _grad_hook(self, i: int):
        def hook(p: Tensor) -> None:
            if self._gradients and p.grad is not None and not _unrecorded:
                self._param_record()[1][i] = torch.linalg.vector_norm(p.grad.detach())

        return hook

    def _toggle_update_hooks(self, on: bool) -> None:
        """Remove the optimizer's step hooks (steps="forward") and, when ``on``,
        register them afresh: the pre-hook last of the pre-hooks, so that the
        gradients it reads are final (after the user's clipping hooks, whenever
        those were registered); the post-hook first of the post-hooks, so that
        ``update_ratio`` is the optimizer's own update and the user's post-hooks
        (a logger calling :meth:`latest`) see it. torch has no ``prepend`` for
        optimizer hooks: the post-hook is moved to the front of the optimizer's
        hook dict where that dict is the OrderedDict torch keeps (else it runs last)."""
        for handle in self._update_handles:
            handle.remove()
        self._update_handles = []
        if on and self.optimizer is not None:
            pre = self.optimizer.register_step_pre_hook(self._before_step)
            post = self.optimizer.register_step_post_hook(self._after_step)
            hooks = getattr(self.optimizer, "_optimizer_step_post_hooks", None)
            if isinstance(hooks, OrderedDict) and post.id in hooks:
                hooks.move_to_end(post.id, last=False)
            self._update_handles = [pre, post]

    def _before_step(self, optimizer, args, kwargs) -> None:  # the optimizer's step hooks
        self._before_update()

    def _after_step(self, optimizer, args, kwargs) -> None:
        self._after_update()

    def _before_update(self) -> None:
        if not self._gradients or _unrecorded or not self._params:
            return
        params = self._param_data
        if any(
            a.data_ptr() != p.data_ptr() for a, (_, p) in zip(params, self._params, strict=True)
        ):
            # the model was moved or cast since (model.double() swaps every weight's data)
            params = self._param_data = [p.detach() for _, p in self._params]
            self._snapshot = [p.clone() for p in params]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self._params]
        assert self._snapshot is not None  # made by attach()
        torch._foreach_copy_(self._snapshot, params)
        # As few torch calls as it takes: each small op costs several microseconds
        # amid training (its code is cold); the split and the ratios wait for the
        # summary. The weights' norms from the copy just written: it is in cache.
        # Stacked now: hundreds of 0-d tensors kept until the hand-over cost more
        # (made, freed and gathered beside training) than one stack here.
        self._param_record(torch.stack(torch._foreach_norm(grads + self._snapshot)))
        self._snapshot_step = self.step

    def _after_update(self) -> None:
        if self._snapshot_step != self.step or self._snapshot is None or _unrecorded:
            return  # no copy of this step's weights (or measured already)
        self._snapshot_step = -1
        records = self._param_records
        if not records or records[-1][0] != self.step:
            return  # handed over already (a flush between the two hooks): left NaN
        torch._foreach_sub_(self._snapshot, self._param_data)  # -delta w
        self._param_records[-1][2] = torch.stack(torch._foreach_norm(self._snapshot))

    # ------------------------------------------------------------ results

    def flush(self) -> None:
        """Summarize the buffered samples and move the results to the host (waits
        for the summaries to be done)."""
        self._hand_over()
        self._wait()

    def _hand_over(self) -> None:
        """Give the buffered records to the summarizing thread and record on into
        fresh buffers. The statistics (a sort per record, a copy to the host) run
        beside training instead of stalling it: on a GPU the copy to the host
        would synchronize the device; on a CPU another core does the work."""
        self._wait()  # the previous hand-over's buffers are free again
        jobs = []
        for site in self._sites.values():
            k = len(site.steps)
            if k == 0 or site.rows is None:
                continue
            jobs.append(
                _Job(site.name, site.rows[:k], site.lengths, site.steps, site.grad_norms,
                     site.saturation, site.dead)
            )  # fmt: skip
            site.swap_buffers()
        params, self._param_records = self._param_records, []
        self._buffered = 0
        if jobs or params:
            try:
                self._summary = self._threads().submit(self._summarize, jobs, params)
            except RuntimeError:  # the interpreter is exiting (saving at exit): here
                self._summarize(jobs, params)

    def _threads(self) -> ThreadPoolExecutor:
        """The summarizing thread (one: its jobs run in order)."""
        if self._summarizer is None:
            self._summarizer = ThreadPoolExecutor(1, thread_name_prefix="normlab-monitor")
        return self._summarizer

    def _wait(self) -> None:
        """Wait for the summarizing thread's last job (and raise what it raised)."""
        if self._summary is not None:
            summary, self._summary = self._summary, None
            summary.result()

    def _summarize(self, jobs: list, params: list) -> None:
        """The statistics of handed-over records (on the summarizing thread). Sites
        whose buffers share a width and device are summarized together: a few
        large torch calls instead of many small ones, each of which holds the GIL
        that the training thread needs."""
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            groups.setdefault((job.rows.shape[1], job.rows.device), []).append(job)
        for group in groups.values():
            self._summarize_sites(group)
        if params:
            self._summarize_parameters(params)

    def _summarize_sites(self, group: list[_Job]) -> None:
        count = sum(len(job.steps) for job in group)
        width, device = group[0].rows.shape[1], group[0].rows.device
        joined, work = self._summary_buffers(count, width, device, len(group) > 1)
        rows = group[0].rows
        if len(group) > 1:
            rows = torch.cat([job.rows for job in group], out=joined)
        lengths = [n for job in group for n in job.lengths]
        limits = None  # per row: the site's saturation threshold, inf for none
        if any(job.saturation is not None for job in group):
            limits = torch.tensor(
                [np.inf if job.saturation is None else job.saturation for job in group
                 for _ in job.steps],
                dtype=torch.float64,
            )  # fmt: skip
        dead = any(job.dead for job in group)  # counted for every row, kept for ReLU sites
        matrix, sketch = statistics_matrix(rows, lengths, self.percentiles, limits, dead, work)
        matrix, sketch = matrix.cpu().numpy(), sketch.cpu().numpy().astype(np.float32)
        # the gradient norms: a slot's last backward wins; one copy to the host
        by_slot = [dict(job.grad_norms) for job in group]
        norms = [norm for slots in by_slot for norm in slots.values()]
        host = iter(torch.stack(norms).to(torch.float64).cpu().numpy() if norms else ())
        names = quantities(self.percentiles)
        saturated, counted_dead = names.index("saturated"), names.index("dead")
        start = 0
        for job, slots in zip(group, by_slot, strict=True):
            k = len(job.steps)
            columns = list(range(saturated))  # mean ... max, then what the site's kind has
            columns += [saturated] * (job.saturation is not None) + [counted_dead] * job.dead
            grad = np.full((k, 1), np.nan)  # NaN where no gradient came
            absent = np.zeros((k, len(columns) + 1), bool)
            absent[:, -1] = True
            for slot in slots:
                grad[slot] = next(host)
                absent[slot, -1] = False
            values = np.hstack([matrix[start : start + k, columns], grad]).astype(np.float32)
            quantity = (*(names[c] for c in columns), "grad_norm")
            steps = np.asarray(job.steps, np.int64)
            chunk = _Chunk(job.name, quantity, steps, values, sketch[start : start + k], absent)
            self._chunks.append(chunk)
            start += k

    def _summary_buffers(self, count: int, width: int, device: torch.device, join: bool):
        """(rows, work) buffers of the summarizing thread for ``count`` records of
        ``width`` values (rows only to ``join`` several sites' records), kept from
        flush to flush on the CPU, where a fresh megabyte-sized tensor costs more
        in page faults than the arithmetic done in it (off the CPU the caching
        allocator reuses memory: (None, None))."""
        if device.type != "cpu":
            return None, None
        rows, work = self._held.get(width, (None, None))
        if work is None or work.numel() < work_size((count, width)):
            work = torch.empty(work_size((count, width)))
        if join and (rows is None or rows.shape[0] < count):
            rows = torch.empty(count, width)
        self._held[width] = rows, work
        return (rows[:count] if join and rows is not None else None), work

    def _summarize_parameters(self, params: list) -> None:
        count = len(self._params)
        ratio = np.full((len(params), count), np.nan)
        norms = _to_host([n for _, n, _ in params])  # (P,) or, around an update, (2P,)
        moved = [(row, m) for row, (_, _, m) in enumerate(params) if m is not None]
        if moved:  # ||Δw|| / ||w before||
            rows = [row for row, _ in moved]
            delta = _to_host([m for _, m in moved])
            with np.errstate(divide="ignore", invalid="ignore"):  # a zero weight: inf, NaN
                ratio[rows] = delta / norms[rows, count:]
        grad = norms[:, :count]
        steps = np.asarray([step for step, _, _ in params], np.int64)
        absent = np.isnan(grad)[:, :, None]  # no gradient recorded (made NaN)
        if self.optimizer is None:
            quantity, values = ("grad_norm",), grad[:, :, None]
        else:
            quantity, values = ("grad_norm", "update_ratio"), np.stack([grad, ratio], axis=2)
            # no update measured, or a weight of norm 0, whose ratio is undefined
            undefined = np.isnan(ratio) | (norms[:, count:] == 0)
            absent = np.stack([absent[:, :, 0], undefined], axis=2)
        values = values.astype(np.float32)
        for i, (name, _) in enumerate(self._params):
            self._chunks.append(_Chunk(name, quantity, steps, values[:, i], None, absent[:, i]))

    @property
    def sites(self) -> dict[str, str]:
        """Watched sites recorded so far: name -> what is watched."""
        return {name: site.what for name, site in self._sites.items()}

    def latest(self, quantities: Iterable[str] | None = None) -> dict[str, float]:
        """The most recent record of each quantity, as ``{"module/quantity": value}``,
        for loggers; ``quantities`` keeps only those (e.g. ``("std", "grad_norm")``).
        A non-finite value is the record of its step (activations that went NaN show
        as NaN then, not as the last healthy value); a step that recorded no value
        (no gradient on a step without gradient records) is skipped. Flushes, so
        call it every few dozen steps, not every step."""
        self.flush()
        wanted = None if quantities is None else set(quantities)
        out: dict[str, float] = {}
        for chunk in reversed(self._chunks):
            for j, quantity in enumerate(chunk.quantities):
                key = f"{chunk.module}/{quantity}"
                if key in out or (wanted is not None and quantity not in wanted):
                    continue
                column = chunk.values[:, j]
                there = (
                    np.arange(len(column))
                    if chunk.absent is None
                    else (np.flatnonzero(~chunk.absent[:, j]))
                )
                if there.size:
                    out[key] = float(column[there[-1]])
        return dict(sorted(out.items()))

    def histograms(self, edges: Tensor) -> dict[str, Tensor]:
        """Per site, the histogram of its latest record's sample over fixed bin
        ``edges`` (K + 1 increasing values): K + 2 counts, the first and last
        for values below and above the range. Computed on the record's device;
        empty when the latest records have been flushed already (call it right
        after the step: the integrations do). Non-finite values are in no bin: the
        record's statistics (NaN) say they happened."""
        out = {}
        for name, site in self._sites.items():
            if not site.steps or site.steps[-1] != self.step or site.rows is None:
                continue
            sample = site.targets[len(site.steps) - 1][: site.lengths[-1]]
            sample = sample[torch.isfinite(sample)]
            bucket = torch.bucketize(sample, edges.to(sample.device, sample.dtype))
            out[name] = torch.bincount(bucket, minlength=edges.numel() + 1)
        return out

    def unscale_gradients(self, factor: float) -> None:
        """Multiply the gradient norms recorded during this step's backward by
        ``factor``: under mixed precision those are of the scaled loss, so pass
        1 / the loss scale (the Lightning and Hugging Face callbacks do). The
        parameter gradients taken around ``optimizer.step()`` are unscaled
        already and are left alone."""
        for site in self._sites.values():
            if site.grad_norms and site.steps and site.steps[-1] == self.step:
                slot = len(site.steps) - 1
                for recorded, norm in reversed(site.grad_norms):
                    if recorded != slot:
                        break
                    norm.mul_(factor)
        records = self._param_records
        if self.optimizer is None and records and records[-1][0] == self.step:
            records[-1][1].mul_(factor)

    def nbytes(self) -> int:
        """Bytes held on the host by flushed records."""
        return sum(chunk.nbytes() for chunk in self._chunks)

    def to_frame(self):
        """All records as a tidy pandas DataFrame: step, module, quantity, value."""
        import pandas as pd

        self.flush()
        parts = []
        for chunk in self._chunks:
            k, q = chunk.values.shape
            parts.append(
                pd.DataFrame(
                    {
                        "step": np.repeat(chunk.steps, q),
                        "module": chunk.module,
                        "quantity": np.tile(np.asarray(chunk.quantities, dtype=object), k),
                        "value": chunk.values.reshape(-1).astype(np.float64),
                    }
                )
            )
        if not parts:
            return pd.DataFrame(
                {
                    "step": pd.Series(dtype="int64"),
                    "module": pd.Series(dtype="object"),
                    "quantity": pd.Series(dtype="object"),
                    "value": pd.Series(dtype="float64"),
                }
            )
        frame = pd.concat(parts, ignore_index=True)
        return frame.sort_values(["step", "module", "quantity"], kind="stable", ignore_index=True)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_frame` as Parquet to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_parquet(path, index=False)
        return path

    def sketches(self):
        """Each activation record's quantile sketch as a DataFrame: step, module,
        level (0..1, evenly spaced) and value — the recorded distributions
        themselves, for drawing them or measuring distances between them.
        ``frame.attrs["sites"]`` is :attr:`sites` (stored with the frame as Parquet)."""
        import pandas as pd

        self.flush()
        parts = []
        for chunk in self._chunks:
            if chunk.sketch is None:
                continue
            k, levels = chunk.sketch.shape
            parts.append(
                pd.DataFrame(
                    {
                        "step": np.repeat(chunk.steps, levels),
                        "module": chunk.module,
                        "level": np.tile(np.linspace(0.0, 1.0, levels), k),
                        "value": chunk.sketch.reshape(-1).astype(np.float64),
                    }
                )
            )
        columns = ["step", "module", "level", "value"]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
        frame.attrs["sites"] = self.sites  # kept by Parquet: what each site is, for titles
        return frame

    def distribution_shift(self):
        """Internal covariate shift as Ioffe & Szegedy (2015) described it: for each
        watched site, the change of its distribution between successive records.

        A DataFrame with step, module, mean_shift (change of the mean),
        std_shift (change of the std) and w1 (1-Wasserstein distance between the
        two records' distributions, from their quantile sketches).
        """
        import pandas as pd

        self.flush()
        by_module: dict[str, list] = {}
        for chunk in self._chunks:
            if chunk.sketch is None:
                continue
            mean = chunk.values[:, chunk.quantities.index("mean")]
            std = chunk.values[:, chunk.quantities.index("std")]
            by_module.setdefault(chunk.module, []).append((chunk.steps, mean, std, chunk.sketch))
        rows = []
        for module, chunks in by_module.items():
            steps = np.concatenate([c[0] for c in chunks])
            mean = np.concatenate([c[1] for c in chunks])
            std = np.concatenate([c[2] for c in chunks])
            sketch = torch.from_numpy(np.concatenate([c[3] for c in chunks]))
            if len(steps) < 2:
                continue
            w1 = wasserstein_1(sketch[1:], sketch[:-1]).numpy()
            rows.append(
                pd.DataFrame(
                    {
                        "step": steps[1:],
                        "module": module,
                        "mean_shift": np.diff(mean),
                        "std_shift": np.diff(std),
                        "w1": w1,
                    }
                )
            )
        columns = ["step", "module", "mean_shift", "std_shift", "w1"]
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)

    def plot_activations(
        self,
        sites: Iterable[str] | None = None,
        bins: int = 40,
        path: str | Path | None = None,
        limits: tuple[float, float] | None = None,
    ):
        """fastai's "colorful dimension": per watched site (all, or ``sites``), the
        histogram of its values at every recorded step, stacked over training
        (x: step, y: value in ``bins`` bins shared by all steps of the site, over
        its whole recorded range or ``limits``; colour: the fraction of the values
        per bin, log scale, one colour bar). Derived from the quantile sketches
        (:meth:`sketches`; see :func:`normlab.monitor.pictures.sketch_histogram`).
        Returns the matplotlib Figure, also saved to ``path`` when given."""
        from normlab.monitor import pictures

        sketches = self.sketches()
        recorded = pictures.sketch_sites(sketches)
        if not recorded:
            raise ValueError("Monitor.plot_activations: no activation records yet")
        chosen = recorded if sites is None else [sites] if isinstance(sites, str) else list(sites)
        unknown = [s for s in chosen if s not in recorded]
        if unknown or not chosen:
            raise ValueError(
                f"Monitor.plot_activations: no records of {', '.join(map(repr, unknown))}; "
                f"recorded sites: {', '.join(recorded)}"
            )
        what = self.sites
        panels = [(f"{s}: {what[s]}" if s in what else s, sketches, s) for s in chosen]
        fig = pictures.colorful_dimension(
            panels, bins, limits, title=f"Activations over training ({type(self.model).__name__})"
        )
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
        return fig
