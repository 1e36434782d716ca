"""The words for what ran, read from stored runs (their config and summary fields),
never from an experiment's defaults: the article's leads, its "paper / here"
tables and its setup part say what the runs did, whatever was overridden."""

from __future__ import annotations

import math

import pandas as pd

DATASETS = {
    "mnist": "MNIST",
    "fashion-mnist": "Fashion-MNIST",
    "digits": "scikit-learn's 8×8 digits",
    "mnist1d": "MNIST-1D",
    "synthetic": "a Gaussian mixture",
    "cifar10": "CIFAR-10",
}
OPTIMIZERS = {"sgd": "SGD", "momentum": "SGD with momentum 0.9", "adam": "Adam"}


def first(runs: pd.DataFrame) -> pd.Series:
    """One run standing for the settings all runs share (the first by id)."""
    return runs.sort_values("run_id").iloc[0]


def values(runs: pd.DataFrame, field: str) -> list:
    """The distinct values of ``field`` among the runs, sorted."""
    return sorted(set(runs[field].dropna())) if field in runs else []


def number(value: float) -> str:
    """3000 -> '3,000'; 0.05 -> '0.05'."""
    value = float(value)
    return f"{int(value):,}" if value == int(value) and abs(value) >= 1000 else f"{value:g}"


def count(n: float, unit: str) -> str:
    """'1 epoch', '3 epochs', '1,500 steps'."""
    return f"{number(n)} {unit}{'' if float(n) == 1 else 's'}"


def capital(text: str) -> str:
    """The first letter upper-cased, the rest untouched (str.capitalize lowers it)."""
    return text[:1].upper() + text[1:]


def span(runs: pd.DataFrame, field: str, unit: str = "") -> str:
    """'3,000' or '375–6,000' (the range of ``field`` over the runs), with ``unit``."""
    found = values(runs, field)
    if not found:
        return "?"
    low, high = found[0], found[-1]
    text = number(low) if low == high else f"{number(low)}–{number(high)}"
    return f"{text} {unit}".rstrip()


def data(runs: pd.DataFrame) -> str:
    """'MNIST (4,000 training and 1,000 test images, 1×28×28)'."""
    run = first(runs)
    name = DATASETS.get(run.dataset, run.dataset)
    shape = run.get("input_shape")
    dims = "×".join(str(int(d)) for d in shape) if isinstance(shape, list | tuple) else "?"
    return (
        f"{name} ({number(run.train_examples)} training and {number(run.test_examples)} "
        f"test examples, {dims})"
    )


def image_size(runs: pd.DataFrame) -> str:
    """'28×28' for image data, '' otherwise."""
    shape = first(runs).get("input_shape")
    if isinstance(shape, list | tuple) and len(shape) == 3:
        return f"{int(shape[1])}×{int(shape[2])}"
    return ""


def model(runs: pd.DataFrame) -> str:
    """The model the runs trained, from its config fields."""
    run = first(runs)
    if ":" in str(run.model):
        return f"your model {run.model}"
    if run.model == "mlp":
        depths = span(runs, "depth")
        return f"an MLP of {depths} hidden layers of {int(run.width)} {run.activation} units"
    channels = "-".join(str(c) for c in run.channels)
    if run.model == "cnn":
        return f"a CNN of {len(run.channels)} conv stages ({channels} channels)"
    if run.model == "resnet":
        return f"a ResNet of {len(run.channels)} stages ({channels} channels)"
    return f"a {span(runs, 'depth')}-block patch transformer of width {int(run.width)}"


def init(run: pd.Series) -> str:
    """'N(0, 0.01²) weights' or 'Kaiming-normal weights × 3'."""
    text = {
        "small-gaussian": f"N(0, {run.init_std:g}²) weights",
        "kaiming": "Kaiming-normal weights",
        "xavier": "Xavier-normal weights",
        "default": "PyTorch's default initialization",
    }[run.init]
    return text if run.init_scale == 1 else f"{text} × {run.init_scale:g}"


def training(runs: pd.DataFrame) -> str:
    """'SGD with momentum 0.9, lr 0.05 × batch/32, 50 warm-up steps, lr ÷10 at 30/60/90%,
    weight decay 1e-4, batch 2–32, 5 epochs (1,562–25,000 steps)'."""
    run = first(runs)
    lrs = span(runs, "lr")
    parts = [OPTIMIZERS[run.optimizer], f"lr {lrs}" + (" × batch/32" if run.lr_scaling else "")]
    if run.warmup_steps:
        parts.append(f"{number(run.warmup_steps)} warm-up steps")
    parts.append(
        {
            "constant": "constant lr",
            "step": "lr ÷10 at 30, 60 and 90% of the run",
            "cosine": "cosine decay to 0",
        }[run.lr_schedule]
    )
    if run.weight_decay:
        parts.append(f"weight decay {run.weight_decay:g}")
    parts.append(f"batch {span(runs, 'batch_size')}")
    steps = span(runs, "steps_planned", "steps")
    epochs = run.get("epochs")
    if epochs is not None and not (isinstance(epochs, float) and math.isnan(epochs)):
        parts.append(f"{count(epochs, 'epoch')} ({steps})")
    else:
        parts.append(steps)
    return ", ".join(parts)


def seeds(runs: pd.DataFrame) -> int:
    """How many seeds the runs have."""
    return int(runs.seed.nunique()) if "seed" in runs else 0


def seed_count(runs: pd.DataFrame) -> str:
    """'3 seeds', '1 seed'."""
    return count(seeds(runs), "seed")
