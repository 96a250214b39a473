"""Tests for the local-file readers (IDX for MNIST / Fashion-MNIST, CIFAR binary version) with fake files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from zooscape.data import load_dataset, read_cifar_bin, read_idx, write_idx


def _idx_bytes(arr: np.ndarray) -> bytes:
    """Independent IDX writer (uint8 only) used to build the fixtures."""
    assert arr.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write(path: Path, payload: bytes, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def _fake_mnist(folder: Path, n_train: int = 40, n_test: int = 12, gz_test: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in data.items():
        _write(folder / name, _idx_bytes(arr), gz=gz_test and name.startswith("t10k"))
    return data


def _pixels(x: torch.Tensor) -> np.ndarray:
    return np.rint(x.numpy() * 255).astype(np.uint8)


@pytest.mark.parametrize("name, sub", [("mnist", "mnist/raw"), ("fashion_mnist", "fashion_mnist"), ("mnist", ".")])
def test_idx_round_trip(tmp_path, name, sub):
    data = _fake_mnist(tmp_path / sub)
    ds = load_dataset(name, data_root=tmp_path, val_size=10, seed=1)
    assert ds.input_shape == (1, 28, 28) and (ds.n_train, ds.n_val, ds.n_test) == (30, 10, 12)
    # test split is the official one, in file order
    assert np.array_equal(_pixels(ds.test_x)[:, 0], data["t10k-images-idx3-ubyte"])
    assert np.array_equal(ds.test_y.numpy(), data["t10k-labels-idx1-ubyte"])
    # train + val is the official training set, each image with its own label
    imgs, labels = data["train-images-idx3-ubyte"], data["train-labels-idx1-ubyte"]
    lookup = {img.tobytes(): int(lab) for img, lab in zip(imgs, labels)}
    seen = set()
    for x, y in (ds.split("train"), ds.split("val")):
        for img, lab in zip(_pixels(x)[:, 0], y.tolist()):
            assert lookup[img.tobytes()] == lab
            seen.add(img.tobytes())
    assert len(seen) == 40
    assert torch.equal(load_dataset(name, data_root=tmp_path, val_size=10, seed=1).val_x, ds.val_x)
    assert float(ds.train_x.max()) <= 1.0 and ds.train_x.dtype == torch.float32


def test_idx_options_flat_fraction_and_env_root(tmp_path, monkeypatch):
    _fake_mnist(tmp_path / "MNIST" / "raw", gz_test=False)
    monkeypatch.setenv("ZOOSCAPE_DATA_ROOT", str(tmp_path))
    ds = load_dataset("mnist", val_size=0.25, flat=True, train_fraction=0.5, label_noise=0.2)
    assert ds.input_shape == (784,) and ds.n_val == 10 and ds.n_train == 15 and ds.meta["n_noisy"] == 3


def test_missing_files_message_names_paths_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist", data_root=tmp_path)
    msg = str(err.value)
    for folder in (tmp_path, tmp_path / "fashion_mnist", tmp_path / "fashion_mnist" / "raw"):
        assert str(folder) in msg
    for fname in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", ".gz"):
        assert fname in msg
    assert str(tmp_path / "fashion_mnist" / "raw" / "t10k-labels-idx1-ubyte") in msg
    with pytest.raises(FileNotFoundError, match=r"test_batch\.bin.*cifar-10-batches-bin"):
        load_dataset("cifar10", data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train\.bin.*cifar-100-binary"):
        load_dataset("cifar100", data_root=tmp_path)


def test_read_idx_dtypes_and_corrupt_files(tmp_path):
    for arr in (np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5, np.linspace(-1, 1, 7).astype(np.float32)):
        write_idx(tmp_path / "a.idx.gz", arr)
        back = read_idx(tmp_path / "a.idx.gz")
        assert back.dtype == arr.dtype and np.array_equal(back, arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((3, 2, 2), np.uint8))[:-1])
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(tmp_path / "short")


def _cifar_records(labels: np.ndarray, images: np.ndarray) -> bytes:
    return b"".join(bytes(lab.tolist()) + img.tobytes() for lab, img in zip(labels, images))


def test_cifar10_round_trip_channel_order(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    train_imgs, train_labels = [], []
    for i in range(1, 6):
        imgs = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
        labs = rng.integers(0, 10, (4, 1), dtype=np.uint8)
        _write(folder / f"data_batch_{i}.bin", _cifar_records(labs, imgs))
        train_imgs.append(imgs)
        train_labels.append(labs[:, 0])
    test_imgs = np.zeros((3, 3, 32, 32), np.uint8)
    test_imgs[:, 0, 0, 1] = 255  # red channel, row 0, column 1
    test_imgs[:, 2, 31, 0] = 128  # blue channel, last row, first column
    _write(folder / "test_batch.bin", _cifar_records(np.array([[1], [2], [3]], np.uint8), test_imgs))

    ds = load_dataset("cifar10", data_root=tmp_path, val_size=5, seed=0)
    assert ds.input_shape == (3, 32, 32) and (ds.n_train, ds.n_val, ds.n_test) == (15, 5, 3)
    assert ds.test_y.tolist() == [1, 2, 3]
    assert torch.all(ds.test_x[:, 0, 0, 1] == 1.0) and torch.allclose(ds.test_x[:, 2, 31, 0], torch.tensor(128 / 255))
    assert float(ds.test_x.sum()) == pytest.approx(3 * (1 + 128 / 255), rel=1e-6)
    every = {img.tobytes(): int(lab) for img, lab in zip(np.concatenate(train_imgs), np.concatenate(train_labels))}
    got = {
        img.tobytes(): lab
        for img, lab in zip(_pixels(torch.cat([ds.train_x, ds.val_x])), ds.train_y.tolist() + ds.val_y.tolist())
    }
    assert got == every


@pytest.mark.parametrize("label, k, byte", [("fine", 100, 1), ("coarse", 20, 0)])
def test_cifar100_fine_and_coarse_labels(tmp_path, label, k, byte):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar100" / "cifar-100-binary"
    labs = np.stack([rng.integers(0, 20, 12), rng.integers(0, 100, 12)], 1).astype(np.uint8)
    imgs = rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    _write(folder / "train.bin", _cifar_records(labs[:8], imgs[:8]))
    _write(folder / "test.bin", _cifar_records(labs[8:], imgs[8:]))
    ds = load_dataset("cifar100", data_root=tmp_path, val_size=2, label=label)
    assert ds.num_outputs == k and ds.test_y.tolist() == labs[8:, byte].tolist()
    assert np.array_equal(_pixels(ds.test_x), imgs[8:])
    with pytest.raises(ValueError, match="label"):
        load_dataset("cifar100", data_root=tmp_path, label="medium")


def test_read_cifar_bin_rejects_wrong_record_size(tmp_path):
    (tmp_path / "x.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(ValueError, match="3073-byte"):
        read_cifar_bin(tmp_path / "x.bin", 1)
    (tmp_path / "ok.bin").write_bytes(bytes(range(7)) + bytes(3066))
    imgs, labels = read_cifar_bin(tmp_path / "ok.bin", 1)
    assert imgs.shape == (1, 3, 32, 32) and labels.tolist() == [[0]]
    assert imgs[0, 0, 0, :6].tolist() == [1, 2, 3, 4, 5, 6]
