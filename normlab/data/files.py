"""Readers for the standard on-disk formats: IDX (MNIST, Fashion-MNIST) and the
CIFAR-10 python batches. Every failure names the file and what was expected.

The CIFAR-10 batches are pickles, read by an unpickler that admits only what a
batch holds (dicts, bytes, lists, ints and NumPy arrays): a pickle naming any
other global is refused before it can run code."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # NumPy 1
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

# IDX element types (the third byte of the magic number).
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFileError(ValueError):
    """A data file is missing, truncated or not in the expected format."""


def find_file(directory: Path, stem: str) -> Path:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataFileError(
        f"missing data file: expected {directory / stem} (or {stem}.gz) in {directory}"
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a NumPy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataFileError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataFileError(
            f"{path} is not an IDX file: expected a magic number 0x0000TTNN "
            f"(TT a type code in {sorted(_IDX_TYPES)}), got {data[:4].hex() or 'an empty file'}"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{path}: truncated header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFileError(
            f"{path}: header declares shape {shape} ({expected} bytes of data), "
            f"file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx_split(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split (``train`` or ``t10k``) from an IDX directory."""
    images = read_idx(find_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find_file(directory, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DataFileError(
            f"{directory}: {prefix} has {len(images)} images but {len(labels)} labels"
        )
    return images, labels


# Every global a CIFAR-10 python batch names: those that rebuild a NumPy array,
# pickled under NumPy 1 or 2 (``_frombuffer``: by pickle protocol 5).
_BATCH_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Refuses every global but those in ``_BATCH_GLOBALS``."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _BATCH_GLOBALS:
            raise pickle.UnpicklingError(
                f"it names the global {module}.{name}, which a CIFAR-10 batch never holds "
                "(refused, not run)"
            )
        return _BATCH_GLOBALS[module, name]


def read_cifar10(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10's python batches (data_batch_1..5, test_batch) as (N, 3, 32, 32) uint8."""

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = directory / name
        if not path.is_file():
            raise DataFileError(f"missing data file: expected CIFAR-10 batch {path}")
        try:
            with open(path, "rb") as f:
                content = _BatchUnpickler(f, encoding="bytes").load()
            data = np.asarray(content[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(content[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
            raise DataFileError(
                f"{path} is not a CIFAR-10 python batch (a pickled dict with b'data' of "
                f"N x 3072 bytes and b'labels'): {e}"
            ) from e
        return data, labels

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = batch("test_batch")
    return (
        np.concatenate([t[0] for t in train]),
        np.concatenate([t[1] for t in train]),
        test_x,
        test_y,
    )
