"""The one training loop every experiment runs: data, model, optimizer, Monitor,
evaluation every k steps, divergence detection, cost; tidy results."""

from __future__ import annotations

import functools
import json
import math
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from normlab import data, models
from normlab.experiments import plugins, schedule
from normlab.experiments.config import ConfigError, RunConfig
from normlab.experiments.outcomes import DIVERGED, classify, loss_window
from normlab.experiments.store import RunResult
from normlab.monitor import Monitor, internal_covariate_shift, loss_landscape, preserved_state
from normlab.norms import registry


@functools.lru_cache(maxsize=8)
def _dataset(name: str, seed: int, train_size: int | None, test_size: int | None):
    if ":" in name:
        return plugins.load_dataset(name, seed, train_size, test_size)
    return data.load(name, seed=seed, train_size=train_size, test_size=test_size)


def norm_kwargs_for(config: RunConfig) -> dict:
    """The constructor arguments for ``config.norm``: plain ``key`` entries of
    ``norm_kwargs`` apply to any norm, ``"<norm>:key"`` ones only to that norm."""
    name = registry.spec(config.norm).name
    kwargs = {}
    for key, value in config.norm_kwargs:
        target, sep, arg = key.partition(":")
        if not sep:
            kwargs[key] = value
        elif registry.spec(target).name == name:
            kwargs[arg] = value
    return kwargs


def build_model(config: RunConfig, dataset: data.Dataset) -> nn.Module:
    """The model a config names (a builder here, or the user's), sized for the data
    set. Its norm is one factory,
    ``registry.factory(config.norm, **norm_kwargs_for(config))``; the builder puts
    it in the layout it needs (channels-last in the transformer)."""
    shape, classes = dataset.input_shape, dataset.num_classes
    norm = registry.factory(config.norm, **norm_kwargs_for(config))
    if ":" in config.model:  # the user's builder (normlab.experiments.plugins)
        return plugins.build_model(config.model, norm, shape, classes)
    common = {
        "norm": norm,
        "init": config.init,
        "init_std": config.init_std,
        "init_scale": config.init_scale,
    }
    if config.model == "mlp":
        return models.mlp(
            math.prod(shape),
            classes,
            depth=config.depth,
            width=config.width,
            activation=config.activation,
            norm_position=config.norm_position,
            **common,
        )
    if len(shape) != 3:
        raise ValueError(
            f"model {config.model!r} needs (C, H, W) images; {dataset.name} has {shape}"
        )
    if config.model == "cnn":
        return models.cnn(
            shape[0],
            classes,
            channels=config.channels,
            activation=config.activation,
            norm_position=config.norm_position,
            **common,
        )
    if config.model == "resnet":
        return models.resnet(
            shape[0], classes, widths=config.channels, activation=config.activation, **common
        )
    return models.transformer(
        shape[0],
        classes,
        image_size=shape[1],
        depth=config.depth,
        dim=config.width,
        norm_position=config.norm_position,
        qk_norm=config.qk_norm,
        **common,
    )


def _optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr, decay = config.effective_lr, config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)
    momentum = 0.9 if config.optimizer == "momentum" else 0.0
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=decay)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless shuffled mini-batches of indices, epoch after epoch (incomplete last
    batches dropped, so batch statistics always see batch_size samples)."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model, in its current mode, on (x, y)."""
    correct, loss = 0, 0.0
    for start in range(0, len(x), batch):
        out = model(x[start : start + batch])
        loss += nn.functional.cross_entropy(out, y[start : start + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[start : start + batch]).sum().item()
    return correct / len(x), loss / len(x)


def _activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the tensors one training step saves for its backward pass."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with preserved_state(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nn.functional.cross_entropy(model(x), y).backward()
    return total


def add_noise(model: nn.Module, level: float) -> list:
    """Santurkar et al.'s (2018) "noisy BatchNorm": after every normalization layer,
    each activation of each sample becomes s·a + m, with noise whose distribution
    itself changes at every step. Per layer and step, μ ~ U(−0.5, 0.5) and
    σ ~ U(1, 1.25); per element, m ~ U(μ − 0.1, μ + 0.1) and s ~ N(σ, 0.1), every
    width times ``level`` (1: their values, as their appendix is summarized; see the
    smoothness experiment's recipe). In eval mode the layer's output is scaled by the
    noise's expectation, E[s] = 1 + 0.125·level (E[m] = 0), so the network is
    scored as the deterministic one its noisy training approximates (as dropout
    is). Returns the hook handles."""

    def hook(module, args, output):
        if not module.training:
            return output * (1 + 0.125 * level)
        mu = level * (torch.rand(()) - 0.5)
        sigma = 1 + 0.25 * level * torch.rand(())
        shift = mu + 0.1 * level * (2 * torch.rand(output.shape) - 1)
        scale = sigma + 0.1 * level * torch.randn(output.shape)
        return output * scale.to(output.dtype) + shift.to(output.dtype)

    norms = [m for m in model.modules() if registry.spec_of(m) is not None]
    return [m.register_forward_hook(hook) for m in norms]


def _probe_rows(step, model, optimizer, x, y) -> list[tuple[int, str, float]]:
    loss_fn = nn.functional.cross_entropy
    rows = []
    for layer in internal_covariate_shift(model, loss_fn, x, y, optimizer):
        rows.append((step, f"ics_l2/{layer['layer']}", layer["ics_l2"]))
        rows.append((step, f"ics_cosine/{layer['layer']}", layer["ics_cosine"]))
    smooth = loss_landscape(model, loss_fn, x, y, optimizer=optimizer)
    for key in ("loss_variation", "gradient_predictiveness", "beta_smoothness", "gradient_norm"):
        rows.append((step, key, smooth[key]))
    return rows


def preflight(configs: list[RunConfig]) -> None:
    """Load the data and build the model of every distinct setup in ``configs`` and
    run two examples through it, so that what cannot train (a norm that cannot take
    the model's tensors, images a model cannot take, a batch larger than the data,
    missing data files) is refused before anything trains. Raises ConfigError."""
    skip = {"seed", "lr", "steps", "epochs", "eval_every", "probe_every", "noise", "optimizer"}
    seen = set()
    for config in configs:
        key = json.dumps({k: v for k, v in config.to_dict().items() if k not in skip}, default=str)
        if key in seen:
            continue
        seen.add(key)
        what = f"norm={config.norm} model={config.model} dataset={config.dataset}"
        try:
            dataset = _dataset(config.dataset, config.seed, config.train_size, config.test_size)
            model = build_model(config, dataset).eval()
            with torch.no_grad():
                out = model(dataset.train_x[:2])
        except Exception as e:  # whatever the data, the builder or the model raise
            raise ConfigError(f"{what}: cannot run ({type(e).__name__}: {e})") from None
        expected = (2, dataset.num_classes)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"{what}: the model {config.model} returned {got} for 2 examples; expected "
                f"logits of shape {expected} (examples, classes)"
            )
        examples = config.batch_size * config.nproc
        if examples > len(dataset.train_x):
            raise ConfigError(
                f"batch_size: {examples} examples per step ({config.nproc} process(es) x "
                f"{config.batch_size}) exceed the {len(dataset.train_x)} training examples of "
                f"{dataset.name}"
            )


def _machine() -> str:
    """Where a run ran: processor, cores, torch threads, torch version."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )


def run(config: RunConfig) -> RunResult:
    """Train one configuration and return its results (rank 0's, when data-parallel)."""
    if config.nproc == 1:
        return _train(config)
    return _run_data_parallel(config)


def _run_data_parallel(config: RunConfig) -> RunResult:
    """``config.nproc`` processes on gloo, DistributedDataParallel; rank 0 reports."""
    import multiprocessing
    import os
    import pickle
    import tempfile
    from pathlib import Path

    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        init, out = f"file://{tmp}/store", Path(tmp) / "result.pkl"
        procs = [
            context.Process(
                target=_data_parallel_worker, args=(config, r, init, str(out), os.getpid())
            )
            for r in range(config.nproc)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed or not out.is_file():
            raise RuntimeError(f"data-parallel run failed (exit codes {failed})")
        return pickle.loads(out.read_bytes())


def _data_parallel_worker(config: RunConfig, rank: int, init: str, out: str, parent: int) -> None:
    import pickle
    from pathlib import Path

    import torch.distributed as dist

    from normlab.experiments.executors import exit_with_parent

    exit_with_parent(parent)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=config.nproc)
    try:
        result = _train(config, rank, config.nproc)
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def _train(config: RunConfig, rank: int = 0, world: int = 1) -> RunResult:
    """The training loop; with ``world`` > 1, one data-parallel process of it."""
    import torch.distributed as dist

    began = time.perf_counter()
    torch.manual_seed(config.seed)
    dataset = _dataset(config.dataset, config.seed, config.train_size, config.test_size)
    model = build_model(config, dataset)
    generator = torch.Generator().manual_seed(config.seed)
    global_batch = config.batch_size * world
    batches = _batches(len(dataset.train_x), global_batch, generator)
    rows: list[tuple[int, str, float]] = []
    first = next(batches)
    shard = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
    memory = _activation_bytes(model, dataset.train_x[first[shard]], dataset.train_y[first[shard]])
    local = model  # evaluation and the monitor use the process's own replica
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = _optimizer(config, model)
    noise_hooks = add_noise(local, config.noise) if config.noise > 0 else []
    monitor = (
        Monitor(local, modules=list(config.watch) or None, optimizer=optimizer).attach()
        if config.monitor and rank == 0
        else None
    )
    steps = config.steps
    if config.epochs is not None:
        steps = max(1, config.epochs * len(dataset.train_x) // global_batch)
    evaluations = set(schedule.evaluation_steps(config, steps))
    non_finite, step_ms, losses, step = False, [], [], 0
    try:
        for step in range(1, steps + 1):
            index = (first if step == 1 else next(batches))[shard]
            x, y = dataset.train_x[index], dataset.train_y[index]
            model.train()
            if config.probe_every and (step - 1) % config.probe_every == 0:
                rows += _probe_rows(step - 1, model, optimizer, x, y)
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = schedule.learning_rate(config, step, steps)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            finite = torch.isfinite(loss.detach()).float()
            if world > 1:  # every process stops together
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not finite.item():
                non_finite = True
                rows.append((step, "train_loss", float("nan")))
                break
            loss.backward()
            optimizer.step()
            step_ms.append(1e3 * (time.perf_counter() - start))
            losses.append(loss.item())
            if rank == 0 and step in evaluations:
                rows.append((step, "train_loss", loss.item()))
                local.eval()
                accuracy, test_loss = evaluate(local, dataset.test_x, dataset.test_y)
                rows += [(step, "test_acc", accuracy), (step, "test_loss", test_loss)]
                if config.train_mode_eval:  # batch statistics at test time, no trace
                    with preserved_state(local):
                        local.train()
                        usable = len(dataset.test_x) // config.batch_size * config.batch_size
                        accuracy, _ = evaluate(
                            local,
                            dataset.test_x[:usable],
                            dataset.test_y[:usable],
                            config.batch_size,
                        )
                    rows.append((step, "test_acc_train_mode", accuracy))
    finally:
        if monitor is not None:
            monitor.detach()
        for handle in noise_hooks:
            handle.remove()
    metrics = pd.DataFrame(rows, columns=["step", "metric", "value"])
    final = metrics.groupby("metric").value.last().to_dict() if len(metrics) else {}
    window = loss_window(losses)
    initial_loss = float(np.mean(losses[:window])) if losses else math.nan
    final_loss = float(np.mean(losses[-window:])) if losses else math.nan
    final_acc = final.get("test_acc", math.nan)
    outcome = classify(non_finite, losses, final_acc, dataset.num_classes)
    timings = np.array(step_ms[1:] or step_ms or [math.nan])  # the first step warms caches
    accuracy = metrics[metrics.metric == "test_acc"]
    tail = accuracy[accuracy.step >= schedule.tail_steps(steps)].value
    summary = {
        "final_test_acc": final_acc,
        # the median of the evaluations in the run's last tenth (the last one alone
        # where it has one): the final accuracy without one evaluation's noise
        "final_test_acc_tail": float(tail.median()) if len(tail) else math.nan,
        "final_test_acc_train_mode": final.get("test_acc_train_mode", math.nan),
        "initial_train_loss": initial_loss,
        "final_train_loss": final_loss,
        "outcome": outcome,
        "diverged": outcome == DIVERGED,
        "steps_done": step,
        "steps_planned": steps,
        "train_examples": len(dataset.train_x),
        "test_examples": len(dataset.test_x),
        "input_shape": list(dataset.input_shape),
        "classes": dataset.num_classes,
        "ms_per_step": float(np.median(timings)),
        "ms_per_step_iqr": float(np.subtract(*np.percentile(timings, [75, 25]))),
        "activation_mb": memory / 2**20,
        "parameters": sum(p.numel() for p in local.parameters()),
        "wall_seconds": time.perf_counter() - began,
        "machine": _machine(),
        # The weights of the linear maps (Linear, Conv), input to output: what "per
        # layer" means in gradient-flow analyses (not the norms' scales).
        "weight_layers": ",".join(
            f"{name}.weight"
            for name, m in local.named_modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
        ),
    }
    if monitor is None:
        return RunResult(config, metrics, None, summary)
    return RunResult(config, metrics, monitor.to_frame(), summary, monitor.sketches())
