"""Data sets: the offline ones load, shuffled and standardized; the file formats
are read from small files written here in the standard layouts; bad files fail
with errors that name them."""

from __future__ import annotations

import gzip
import os
import pickle
import shlex
import struct

import numpy as np
import pytest
import torch

from normlab import data
from normlab.data.files import DataFileError, read_cifar10, read_idx


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        struct.pack(">I", s) for s in array.shape
    )
    payload = header + array.tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _idx_dir(tmp_path, gz: bool, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            gz,
        )
        _write_idx(
            tmp_path / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), gz
        )
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_loads_like_fashion_mnist(tmp_path, gz):
    ds = data.load("fashion-mnist", data_dir=_idx_dir(tmp_path, gz))
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert ds.num_classes == 10 and ds.train_x.dtype == torch.float32
    assert ds.train_y.dtype == torch.int64
    assert abs(ds.train_x.mean().item()) < 1e-5 and ds.train_x.std().item() == pytest.approx(
        1, rel=1e-2
    )


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3", array, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3"), array)


def test_corrupt_and_missing_idx_files_name_the_file(tmp_path):
    directory = _idx_dir(tmp_path, gz=False)
    (directory / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(
        DataFileError, match=r"train-labels-idx1-ubyte: header declares shape \(5,\)"
    ):
        data.load("fashion-mnist", data_dir=directory)
    (directory / "train-labels-idx1-ubyte").write_bytes(b"hello world")
    with pytest.raises(DataFileError, match="is not an IDX file"):
        data.load("fashion-mnist", data_dir=directory)
    (directory / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DataFileError, match=r"missing data file: expected .*train-labels-idx1-ubyte"
    ):
        data.load("fashion-mnist", data_dir=directory)
    with pytest.raises(DataFileError, match="does not exist"):
        data.load("fashion-mnist", data_dir=tmp_path / "nowhere")


def _cifar_dir(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": list(range(4)),
        }
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    return tmp_path


def test_cifar10_python_batches(tmp_path):
    ds = data.load("cifar10", data_dir=_cifar_dir(tmp_path))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    per_channel = ds.train_x.transpose(0, 1).reshape(3, -1)
    assert per_channel.mean(1).abs().max().item() < 1e-5


def test_cifar10_bad_files(tmp_path):
    directory = _cifar_dir(tmp_path)
    (directory / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataFileError, match=r"test_batch is not a CIFAR-10 python batch"):
        data.load("cifar10", data_dir=directory)
    (directory / "data_batch_3").unlink()
    with pytest.raises(
        DataFileError, match=r"missing data file: expected CIFAR-10 batch .*data_batch_3"
    ):
        data.load("cifar10", data_dir=directory)


def test_download_offline_names_the_offline_data_sets(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", offline)
    with pytest.raises(DataFileError, match="offline, use one of mnist, digits"):
        data.load("cifar10", data_dir=tmp_path / "cifar", download=True)
    with pytest.raises(DataFileError, match="offline, use one of mnist"):
        data.load("fashion-mnist", data_dir=tmp_path / "fashion", download=True)
    assert not (tmp_path / "fashion").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == []


def test_embedded_mnist_is_shuffled_split_and_standardized():
    ds = data.load("mnist", seed=3)
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert len(set(ds.train_y[:50].tolist())) >= 8  # stored sorted by class: must be shuffled
    assert torch.bincount(ds.test_y, minlength=10).min() > 60
    assert abs(ds.train_x.mean().item()) < 1e-4 and ds.train_x.std().item() == pytest.approx(
        1, rel=1e-3
    )
    again = data.load("mnist", seed=3)
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)
    other = data.load("mnist", seed=4, train_size=100, test_size=50)
    assert other.train_x.shape[0] == 100 and other.test_x.shape[0] == 50
    assert not torch.equal(other.train_y, ds.train_y[:100])


@pytest.mark.parametrize(
    ("name", "shape", "classes"), [("digits", (1, 8, 8), 10), ("mnist1d", (1, 40), 10)]
)
def test_other_offline_data_sets(name, shape, classes):
    ds = data.load(name, seed=1)
    assert ds.input_shape == shape and ds.num_classes == classes
    assert len(ds.train_x) > len(ds.test_x) > 0


def test_synthetic_gaussian_mixture_of_any_size():
    ds = data.load("synthetic", samples=500, dim=7, classes=3, separation=4.0, seed=2)
    assert ds.train_x.shape == (400, 7) and ds.test_x.shape == (100, 7) and ds.num_classes == 3
    # separable enough that the class means differ clearly
    means = torch.stack([ds.train_x[ds.train_y == k].mean(0) for k in range(3)])
    assert torch.cdist(means, means).max() > 1.0


def test_bad_requests():
    with pytest.raises(KeyError, match="did you mean mnist"):
        data.load("mnsit")
    with pytest.raises(TypeError, match="data set 'digits'"):
        data.load("digits", data_dir="/tmp")
    with pytest.raises(ValueError, match="empty split"):
        data.load("synthetic", train_size=0)
    assert data.available() == [
        "mnist",
        "digits",
        "fashion-mnist",
        "mnist1d",
        "synthetic",
        "cifar10",
    ]


def test_full_mnist_from_an_idx_directory_and_offline_download(tmp_path, monkeypatch):
    directory = tmp_path / "mnist"
    directory.mkdir()
    ds = data.load("mnist", data_dir=_idx_dir(directory, gz=True))
    assert ds.train_x.shape == (30, 1, 28, 28)

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", offline)
    with pytest.raises(DataFileError, match="cannot download https://ossci-datasets"):
        data.load("mnist", data_dir=tmp_path / "absent", download=True)


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize("as_list", [False, True], ids=["array", "list"])
def test_cifar10_batches_load_whatever_the_pickle_protocol(tmp_path, protocol, as_list):
    rng = np.random.default_rng(2)
    pixels = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels[name] = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        batch = {
            b"batch_label": b"a batch",
            b"data": pixels[name].tolist() if as_list else pixels[name],
            b"labels": [3, 7],
            b"filenames": [b"a.png", b"b.png"],
        }
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    train_x, train_y, test_x, test_y = read_cifar10(tmp_path)
    expected = np.concatenate([pixels[f"data_batch_{i}"] for i in range(1, 6)])
    assert (train_x == expected.reshape(-1, 3, 32, 32)).all()
    assert (test_x == pixels["test_batch"].reshape(-1, 3, 32, 32)).all()
    assert list(train_y) == [3, 7] * 5 and list(test_y) == [3, 7]


class _RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar10_pickles_that_would_run_code_are_refused(tmp_path):
    directory = _cifar_dir(tmp_path)
    marker = tmp_path / "code-ran"
    with open(directory / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _RunsCode(f"touch {shlex.quote(str(marker))}"), b"labels": [0]}, f)
    with pytest.raises(
        DataFileError,
        match=rf"data_batch_2 is not a CIFAR-10 python batch .*the global {os.system.__module__}\.system, .*\(refused, not run\)",
    ):
        data.load("cifar10", data_dir=directory)
    assert not marker.exists()
