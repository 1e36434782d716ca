"""Your model and data in the lab: ``model="package.module:build"`` and
``dataset="package.module:load"`` in a run configuration (``--model`` and
``--dataset`` on the command line) name a user's builder and loader.

- A **model builder** is called as ``build(norm=factory, input_shape=shape,
  num_classes=k)`` and returns an ``nn.Module`` mapping ``(N, *shape)`` inputs to
  ``(N, k)`` logits. ``factory(channels)`` makes the run's normalization layer,
  channels-first (it takes ``(N, C, *)`` tensors); call it once per layer.
- A **data loader** is called as ``load(seed=seed, train_size=n, test_size=m)``
  (either size may be None: all) and returns a :class:`normlab.data.Dataset`, or a
  tuple ``(train_x, train_y, test_x, test_y)`` of arrays or tensors (inputs as
  float32 and labels as class indices; normlab does not standardize them).

Modules are imported by name, from ``sys.path`` and the current directory.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from normlab.data import Dataset

KINDS = {"model": "a model builder", "dataset": "a data loader"}


def resolve(spec: str, kind: str) -> Callable:
    """The callable ``spec`` ('package.module:attribute') names; ValueError saying why not."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected 'package.module:attribute' for {KINDS[kind]}, got {spec!r}")
    if os.getcwd() not in sys.path:  # as `python -m` does: the user's files are found
        sys.path.append(os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except Exception as e:  # an ImportError, or whatever the module raised on import
        raise ValueError(f"cannot import {module_name!r} ({type(e).__name__}: {e})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable; expected {KINDS[kind]}")
    return target


def source_hash(specs: list[str]) -> str:
    """A hash of the source files of the modules ``specs`` name ('' where one cannot
    be read: a module without a file, or one that does not import)."""
    digest = hashlib.sha256()
    for spec in sorted(set(specs)):
        name = spec.partition(":")[0]
        try:
            path = inspect.getsourcefile(importlib.import_module(name))
            digest.update(Path(path).read_bytes() if path else b"")
        except Exception:  # resolve() says what is wrong with the name, when it checks
            return ""
    return digest.hexdigest()[:12]


def load_dataset(spec: str, seed: int, train_size: int | None, test_size: int | None) -> Dataset:
    """Call the user's loader and check what it returns; keep the first ``train_size``
    and ``test_size`` examples (a loader that ignores them still gets them)."""
    loaded = resolve(spec, "dataset")(seed=seed, train_size=train_size, test_size=test_size)
    if isinstance(loaded, Dataset):
        loaded = (loaded.train_x, loaded.train_y, loaded.test_x, loaded.test_y)
    if not (isinstance(loaded, tuple | list) and len(loaded) == 4):
        raise TypeError(
            f"data loader {spec!r} returned {type(loaded).__name__}; expected a "
            "normlab.data.Dataset or (train_x, train_y, test_x, test_y)"
        )
    train_x, train_y, test_x, test_y = (torch.as_tensor(np.asarray(a)) for a in loaded)
    train_x, train_y = train_x[:train_size], train_y[:train_size]
    test_x, test_y = test_x[:test_size], test_y[:test_size]
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(
            f"data loader {spec!r}: {len(train_x)} train inputs but {len(train_y)} labels, "
            f"{len(test_x)} test inputs but {len(test_y)} labels"
        )
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(f"data loader {spec!r} returned an empty split")
    for labels in (train_y, test_y):
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            example = labels[labels != labels.round()][0].item()
            raise ValueError(
                f"data loader {spec!r}: labels must be integer class indices, got values "
                f"such as {example:g}"
            )
    train_y, test_y = train_y.long(), test_y.long()
    classes = int(max(train_y.max(), test_y.max())) + 1
    return Dataset(spec, train_x.float(), train_y, test_x.float(), test_y, classes)


def build_model(spec: str, norm: Callable, input_shape: tuple[int, ...], num_classes: int):
    """Call the user's builder and check it returned a module."""
    model = resolve(spec, "model")(norm=norm, input_shape=input_shape, num_classes=num_classes)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model builder {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model
