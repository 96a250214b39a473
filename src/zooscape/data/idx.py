"""Local-file readers for the IDX format and the ``mnist`` / ``fashion_mnist`` data sets (no downloads)."""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .files import find_files, readonly, resolve_data_root
from .partition import carve_validation
from .preprocess import NormalizeSpec, build_image_splits
from .registry import register_dataset
from .splits import DataSplits

__all__ = ["read_idx", "write_idx", "idx_folders", "IDX_FILES"]

# IDX type code -> big-endian NumPy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), optionally gzip-compressed (``.gz`` suffix).

    Format: 2 zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), a byte with the number of dimensions ``d``, ``d`` big-endian uint32 sizes, then the data
    in row-major big-endian order.

    References:
        LeCun, Cortes, Burges, "The MNIST database" (file format description).

    Args:
        path: file path.

    Returns:
        Array of the stored shape, native byte order, read-only; cached in-process by (path, mtime, size).
    """
    path = Path(path)
    st = path.stat()
    return _read_idx_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    raw = _read_bytes(Path(path))
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says shape {shape} ({expected} bytes), file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
    return readonly(data)[0]


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzip-compressed if the name ends in ``.gz``), atomically.

    Args:
        path: destination.
        array: array of dtype uint8, int8, int16, int32, float32 or float64 with 1..255 dimensions.
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None or not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: unsupported dtype {array.dtype} or ndim {array.ndim}")
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + array.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    )
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def idx_folders(name: str, data_root: str | os.PathLike | None) -> list[Path]:
    """Folders searched for the IDX files of ``name``, in order.

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        data_root: root folder (``None`` -> ``$ZOOSCAPE_DATA_ROOT`` or ``./data``).

    Returns:
        ``[root, root/<name>, root/<name>/raw, root/<TorchvisionName>/raw]``.
    """
    root = resolve_data_root(data_root)
    folders = [root, root / name, root / name / "raw"]
    if name in _TORCHVISION_FOLDERS:
        folders.append(root / _TORCHVISION_FOLDERS[name] / "raw")
    return folders


def _load_idx_dataset(
    name: str,
    *,
    seed: int,
    data_root: Path | None,
    val_size: int | float,
    flat: bool,
    resize: int | None,
    normalize: NormalizeSpec,
) -> DataSplits:
    wanted = {k: [v, v + ".gz"] for k, v in IDX_FILES.items()}
    paths = find_files(idx_folders(name, data_root), wanted, name)
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{name}: {split} images {paths[f'{split}_images']} have shape {x.shape} and labels "
                f"{paths[f'{split}_labels']} shape {y.shape}; expected [n, H, W] and [n]"
            )
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(
                f"{name}: labels in {paths[f'{split}_labels']} must be in 0..9, got {y.min()}..{y.max()}"
            )
    x_tr, y_tr = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    tr, va = carve_validation(y_tr, len(y_tr), val_size, seed)
    parts = {
        "train": (x_tr[tr][:, None], y_tr[tr]),
        "val": (x_tr[va][:, None], y_tr[va]),
        "test": (arrays["test_images"][:, None], arrays["test_labels"].astype(np.int64)),
    }
    meta = {"source": {k: str(p) for k, p in paths.items()}}
    return build_image_splits(
        name, parts, num_classes=10, scale=255.0, flat=flat, resize=resize, normalize=normalize, meta=meta
    )


@register_dataset("mnist")
def load_mnist(
    *,
    seed: int,
    data_root: Path | None = None,
    val_size: int | float = 10000,
    flat: bool = False,
    resize: int | None = None,
    normalize: NormalizeSpec = False,
) -> DataSplits:
    """MNIST from local IDX files: ``[n, 1, 28, 28]`` in [0, 1]; official test set; seeded val from train.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``) in ``data_root``, ``data_root/mnist``,
    ``data_root/mnist/raw`` and ``data_root/MNIST/raw`` (torchvision's layout).

    References:
        LeCun, Bottou, Bengio, Haffner (1998), "Gradient-based learning applied to document recognition".

    Args:
        seed: seed of the validation carve-out.
        data_root: root folder (see ``idx_folders``).
        val_size: int count or float fraction of the official training set; default 10000 -> 50k/10k/10k
            (the Model Zoos split).
        flat: return ``[n, 784]``.
        resize: optional bilinear resize (e.g. 32).
        normalize: ``False``; ``True`` (training-split mean/std); or ``(mean, std)``.

    Returns:
        The full splits.
    """
    return _load_idx_dataset(
        "mnist",
        seed=seed,
        data_root=data_root,
        val_size=val_size,
        flat=flat,
        resize=resize,
        normalize=normalize,
    )


@register_dataset("fashion_mnist", aliases=("fashionmnist",))
def load_fashion_mnist(
    *,
    seed: int,
    data_root: Path | None = None,
    val_size: int | float = 10000,
    flat: bool = False,
    resize: int | None = None,
    normalize: NormalizeSpec = False,
) -> DataSplits:
    """Fashion-MNIST from local IDX files (same names and layout as ``mnist``, folder ``fashion_mnist``).

    Searched folders: ``data_root``, ``data_root/fashion_mnist``, ``data_root/fashion_mnist/raw``,
    ``data_root/FashionMNIST/raw``.

    References:
        Xiao, Rasul, Vollgraf (2017), "Fashion-MNIST: a novel image dataset for benchmarking machine
        learning algorithms".

    Args:
        seed: seed of the validation carve-out.
        data_root: root folder.
        val_size: int count or float fraction of the training set (default 10000).
        flat: return ``[n, 784]``.
        resize: optional bilinear resize.
        normalize: ``False``; ``True``; or ``(mean, std)``.

    Returns:
        The full splits.
    """
    return _load_idx_dataset(
        "fashion_mnist",
        seed=seed,
        data_root=data_root,
        val_size=val_size,
        flat=flat,
        resize=resize,
        normalize=normalize,
    )
