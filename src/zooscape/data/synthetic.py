"""Synthetic toy data sets: ``blobs``, ``moons`` (classification) and ``regression`` (three x-clusters)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .partition import split_by_fractions
from .preprocess import build_splits
from .registry import register_dataset
from .splits import DataSplits

__all__ = ["make_three_cluster_regression", "regression_target"]

DEFAULT_SPLIT = (0.7, 0.15, 0.15)


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _split(name, task, num_outputs, x, y, strat, split, seed, meta) -> DataSplits:  # noqa: ANN001
    idx = dict(zip(("train", "val", "test"), split_by_fractions(strat, len(x), split, seed)))
    meta = {**meta, "split": [float(f) for f in split], "n_total": int(len(x))}
    return build_splits(
        name, task, num_outputs, {k: x[i] for k, i in idx.items()}, {k: y[i] for k, i in idx.items()}, meta
    )


@register_dataset("blobs")
def load_blobs(
    *,
    seed: int,
    n_samples: int = 1000,
    n_features: int = 2,
    centers: int = 3,
    cluster_std: float = 1.0,
    data_seed: int = 42,
    split: Sequence[float] = DEFAULT_SPLIT,
) -> DataSplits:
    """Isotropic Gaussian blobs (``sklearn.datasets.make_blobs``), ``[n, n_features]``, ``centers`` classes.

    Args:
        seed: split seed.
        n_samples: total samples.
        n_features: input dimension.
        centers: number of blobs = classes.
        cluster_std: std of each blob.
        data_seed: ``random_state`` of the generator (fixes the samples).
        split: ``(train, val, test)`` fractions, stratified.

    Returns:
        The full splits.
    """
    from sklearn.datasets import make_blobs  # lazy: importing sklearn.datasets is slow

    n_samples = _check_count("n_samples", n_samples, 10)
    centers = _check_count("centers", centers, 2)
    x, y = make_blobs(
        n_samples=n_samples,
        n_features=_check_count("n_features", n_features, 1),
        centers=centers,
        cluster_std=float(cluster_std),
        random_state=int(data_seed),
    )
    meta = {"source": "sklearn.datasets.make_blobs", "data_seed": int(data_seed)}
    return _split("blobs", "classification", centers, x, y, y, split, seed, meta)


@register_dataset("moons")
def load_moons(
    *,
    seed: int,
    n_samples: int = 1000,
    noise: float = 0.1,
    data_seed: int = 42,
    split: Sequence[float] = DEFAULT_SPLIT,
) -> DataSplits:
    """Two interleaving half circles (``sklearn.datasets.make_moons``), ``[n, 2]``, 2 classes.

    Args:
        seed: split seed.
        n_samples: total samples.
        noise: std of Gaussian noise added to the points.
        data_seed: ``random_state`` of the generator.
        split: ``(train, val, test)`` fractions, stratified.

    Returns:
        The full splits.
    """
    from sklearn.datasets import make_moons

    n_samples = _check_count("n_samples", n_samples, 10)
    if float(noise) < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    x, y = make_moons(n_samples=n_samples, noise=float(noise), random_state=int(data_seed))
    meta = {"source": "sklearn.datasets.make_moons", "data_seed": int(data_seed)}
    return _split("moons", "classification", 2, x, y, y, split, seed, meta)


def regression_target(x: np.ndarray) -> np.ndarray:
    """The noise-free regression function ``f(x) = sin(1.5 x) + 0.3 x``.

    Args:
        x: array of inputs, any shape.

    Returns:
        ``f(x)``, same shape.
    """
    return np.sin(1.5 * x) + 0.3 * x


def make_three_cluster_regression(
    n_samples: int = 600,
    *,
    centers: Sequence[float] = (-3.0, 0.0, 3.0),
    cluster_std: float = 0.5,
    noise: float = 0.1,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample 1-D inputs from Gaussian clusters and targets ``f(x) + noise`` (gaps between clusters).

    Args:
        n_samples: total samples, split as evenly as possible over the clusters.
        centers: cluster means of x.
        cluster_std: std of x within a cluster.
        noise: std of the Gaussian noise on y.
        seed: generator seed (private generator).

    Returns:
        ``(x [n, 1], y [n, 1], cluster [n])`` as float64, float64 and int64 arrays.
    """
    centers = np.asarray(centers, dtype=np.float64).reshape(-1)
    if len(centers) < 1 or n_samples < len(centers):
        raise ValueError(
            f"need at least one sample per cluster, got n_samples={n_samples}, centers={centers}"
        )
    if cluster_std < 0 or noise < 0:
        raise ValueError(f"cluster_std and noise must be >= 0, got {cluster_std}, {noise}")
    rng = np.random.default_rng(seed)
    cluster = np.arange(n_samples) % len(centers)
    x = centers[cluster] + cluster_std * rng.standard_normal(n_samples)
    y = regression_target(x) + noise * rng.standard_normal(n_samples)
    return x[:, None], y[:, None], cluster.astype(np.int64)


@register_dataset("regression")
def load_regression(
    *,
    seed: int,
    n_samples: int = 600,
    centers: Sequence[float] = (-3.0, 0.0, 3.0),
    cluster_std: float = 0.5,
    noise: float = 0.1,
    data_seed: int = 42,
    split: Sequence[float] = DEFAULT_SPLIT,
) -> DataSplits:
    """1-D regression with x from three Gaussian clusters and ``y = sin(1.5 x) + 0.3 x + noise``.

    Input shape ``(1,)``, y float32 ``[n, 1]``. Splits are stratified by cluster, so every cluster appears
    in train, val and test (in equal proportions).

    Args:
        seed: split seed.
        n_samples: total samples.
        centers: cluster means of x.
        cluster_std: std of x within a cluster.
        noise: std of the Gaussian noise on y (the regression analogue of label noise).
        data_seed: generator seed.
        split: ``(train, val, test)`` fractions.

    Returns:
        The full splits.
    """
    n_samples = _check_count("n_samples", n_samples, 10)
    x, y, cluster = make_three_cluster_regression(
        n_samples, centers=centers, cluster_std=float(cluster_std), noise=float(noise), seed=int(data_seed)
    )
    meta = {
        "source": "generated (three-cluster 1-D regression)",
        "data_seed": int(data_seed),
        "target": "sin(1.5 x) + 0.3 x",
    }
    return _split("regression", "regression", 1, x, y, cluster, split, seed, meta)
