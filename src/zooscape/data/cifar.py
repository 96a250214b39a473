"""Local-file readers for the CIFAR-10 / CIFAR-100 *binary versions* (no downloads, no pickles)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .files import find_files, readonly, resolve_data_root
from .partition import carve_validation
from .preprocess import NormalizeSpec, build_image_splits
from .registry import register_dataset
from .splits import DataSplits

__all__ = ["read_cifar_bin", "cifar_folders", "CIFAR10_FILES", "CIFAR100_FILES"]

CIFAR10_FILES = {
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["test_batch.bin"],
}
CIFAR100_FILES = {"train": ["train.bin"], "test": ["test.bin"]}
_ARCHIVE_FOLDERS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}
_PIXELS = 3 * 32 * 32


def read_cifar_bin(path: str | os.PathLike, n_label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR binary-version file.

    Each record is ``n_label_bytes`` label bytes (CIFAR-10: 1; CIFAR-100: coarse then fine) followed by
    3072 pixel bytes: the 1024 red, then green, then blue values of a 32x32 image in row-major order.

    References:
        Krizhevsky (2009), "Learning multiple layers of features from tiny images".

    Args:
        path: ``.bin`` file.
        n_label_bytes: 1 (CIFAR-10) or 2 (CIFAR-100).

    Returns:
        ``(images uint8 [n, 3, 32, 32], labels uint8 [n, n_label_bytes])``, read-only, cached in-process.
    """
    path = Path(path)
    st = path.stat()
    return _read_cifar_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, int(n_label_bytes))


@lru_cache(maxsize=16)
def _read_cifar_cached(
    path: str, mtime_ns: int, size: int, n_label_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    record = n_label_bytes + _PIXELS
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise ValueError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the {record}-byte CIFAR record "
            f"({n_label_bytes} label byte(s) + {_PIXELS} pixels)"
        )
    rec = raw.reshape(-1, record)
    return readonly(rec[:, n_label_bytes:].reshape(-1, 3, 32, 32).copy(), rec[:, :n_label_bytes].copy())


def cifar_folders(name: str, data_root: str | os.PathLike | None) -> list[Path]:
    """Folders searched for the CIFAR binary files of ``name``, in order.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        data_root: root folder (``None`` -> ``$ZOOSCAPE_DATA_ROOT`` or ``./data``).

    Returns:
        ``[root/<archive folder>, root/<name>/<archive folder>, root/<name>, root]`` where the archive
        folder is ``cifar-10-batches-bin`` or ``cifar-100-binary``.
    """
    root = resolve_data_root(data_root)
    archive = _ARCHIVE_FOLDERS[name]
    return [root / archive, root / name / archive, root / name, root]


def _load_cifar(
    name: str,
    files: dict[str, list[str]],
    n_label_bytes: int,
    label_byte: int,
    num_classes: int,
    *,
    seed: int,
    data_root: Path | None,
    val_size: int | float,
    flat: bool,
    resize: int | None,
    normalize: NormalizeSpec,
    extra_meta: dict,
) -> DataSplits:
    wanted = {f"{split}:{f}": [f] for split, names in files.items() for f in names}
    paths = find_files(cifar_folders(name, data_root), wanted, name)
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, names in files.items():
        chunks = [read_cifar_bin(paths[f"{split}:{f}"], n_label_bytes) for f in names]
        x = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
        y = np.concatenate([c[1][:, label_byte] for c in chunks]).astype(np.int64)
        if y.max() >= num_classes:
            raise ValueError(f"{name}: {split} labels must be < {num_classes}, found {int(y.max())}")
        arrays[split] = (x, y)
    x_tr, y_tr = arrays["train"]
    tr, va = carve_validation(y_tr, len(y_tr), val_size, seed)
    parts = {"train": (x_tr[tr], y_tr[tr]), "val": (x_tr[va], y_tr[va]), "test": arrays["test"]}
    meta = {"source": sorted(str(p) for p in paths.values()), **extra_meta}
    return build_image_splits(
        name,
        parts,
        num_classes=num_classes,
        scale=255.0,
        flat=flat,
        resize=resize,
        normalize=normalize,
        meta=meta,
    )


@register_dataset("cifar10")
def load_cifar10(
    *,
    seed: int,
    data_root: Path | None = None,
    val_size: int | float = 5000,
    flat: bool = False,
    resize: int | None = None,
    normalize: NormalizeSpec = False,
) -> DataSplits:
    """CIFAR-10 from the local binary version: ``[n, 3, 32, 32]`` in [0, 1], 10 classes.

    Needs ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin`` in one of
    ``data_root/cifar-10-batches-bin``, ``data_root/cifar10/cifar-10-batches-bin``, ``data_root/cifar10``,
    ``data_root`` (extract ``cifar-10-binary.tar.gz`` into ``data_root``).

    References:
        Krizhevsky (2009), "Learning multiple layers of features from tiny images".

    Args:
        seed: seed of the validation carve-out.
        data_root: root folder (see ``cifar_folders``).
        val_size: int count or float fraction of the 50k training images (default 5000 -> 45k/5k/10k).
        flat: return ``[n, 3072]``.
        resize: optional bilinear resize.
        normalize: ``False``; ``True`` (training-split per-channel mean/std); or ``(mean, std)``.

    Returns:
        The full splits.
    """
    return _load_cifar(
        "cifar10",
        CIFAR10_FILES,
        1,
        0,
        10,
        seed=seed,
        data_root=data_root,
        val_size=val_size,
        flat=flat,
        resize=resize,
        normalize=normalize,
        extra_meta={},
    )


@register_dataset("cifar100")
def load_cifar100(
    *,
    seed: int,
    data_root: Path | None = None,
    val_size: int | float = 5000,
    label: str = "fine",
    flat: bool = False,
    resize: int | None = None,
    normalize: NormalizeSpec = False,
) -> DataSplits:
    """CIFAR-100 from the local binary version: ``[n, 3, 32, 32]`` in [0, 1], 100 fine or 20 coarse classes.

    Needs ``train.bin`` and ``test.bin`` in one of ``data_root/cifar-100-binary``,
    ``data_root/cifar100/cifar-100-binary``, ``data_root/cifar100``, ``data_root``.

    References:
        Krizhevsky (2009), "Learning multiple layers of features from tiny images".

    Args:
        seed: seed of the validation carve-out.
        data_root: root folder.
        val_size: int count or float fraction of the 50k training images (default 5000).
        label: ``"fine"`` (100 classes, 2nd label byte) or ``"coarse"`` (20 superclasses, 1st byte).
        flat: return ``[n, 3072]``.
        resize: optional bilinear resize.
        normalize: ``False``; ``True``; or ``(mean, std)``.

    Returns:
        The full splits.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"cifar100 option label must be 'fine' or 'coarse', got {label!r}")
    byte, classes = (1, 100) if label == "fine" else (0, 20)
    return _load_cifar(
        "cifar100",
        CIFAR100_FILES,
        2,
        byte,
        classes,
        seed=seed,
        data_root=data_root,
        val_size=val_size,
        flat=flat,
        resize=resize,
        normalize=normalize,
        extra_meta={"label": label},
    )
