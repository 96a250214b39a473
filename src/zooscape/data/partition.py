"""Seeded, stratified index partitions: splits, training subsets and label noise.

Every function takes an explicit seed (or ``numpy.random.Generator``) and never touches global RNG state.
Randomness for different purposes comes from independent streams (``rng_for(seed, purpose)``), so changing
one knob (e.g. ``train_fraction``) never changes the result of another (e.g. the val/test split).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "rng_for",
    "stratified_order",
    "split_by_fractions",
    "carve_validation",
    "subset_train",
    "flip_labels",
    "check_train_fraction",
    "check_label_noise",
]

# Fixed stream ids: never renumber them, results depend on them.
_STREAMS = {"split": 0, "val": 1, "subset": 2, "noise": 3}


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """Return an independent NumPy generator for one purpose of one seed.

    Args:
        seed: non-negative integer seed of the data set.
        purpose: one of ``"split"``, ``"val"``, ``"subset"``, ``"noise"``.

    Returns:
        A fresh ``numpy.random.Generator`` seeded from ``SeedSequence([seed, stream_id])``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if purpose not in _STREAMS:
        raise ValueError(f"unknown rng purpose {purpose!r}; valid: {sorted(_STREAMS)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAMS[purpose]]))


def stratified_order(y: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Return a random permutation of ``range(n)`` whose every prefix is (nearly) stratified by class.

    Each sample gets the key ``(rank within its class + u) / class size`` with a random within-class rank and
    ``u ~ U(0, 1)``; sorting by the key interleaves the classes, so any prefix of length ``m`` holds
    ``m * n_c / n`` samples of class ``c`` up to +-1. Without labels it is a plain random permutation.

    Args:
        y: integer labels, shape ``[n]``, or ``None`` (no stratification, e.g. regression).
        n: number of samples.
        rng: NumPy generator (consumed).

    Returns:
        int64 array of shape ``[n]``, a permutation of ``range(n)``.
    """
    if y is None:
        return rng.permutation(n).astype(np.int64)
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    key = np.empty(n, dtype=np.float64)
    ordered = np.sort(y)  # the classes, ascending: np.unique(y) without its lazy import of numpy.ma (~0.1 s)
    for c in ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if n else ordered:
        idx = np.flatnonzero(y == c)
        rank = rng.permutation(len(idx))
        key[idx] = (rank + rng.random(len(idx))) / len(idx)
    return np.argsort(key, kind="stable").astype(np.int64)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if isinstance(fractions, (str, bytes)) or len(fractions) != 3:
        raise ValueError(f"split must be a (train, val, test) tuple of 3 fractions, got {fractions!r}")
    f = tuple(float(v) for v in fractions)
    if any(not np.isfinite(v) or v < 0 for v in f) or f[0] <= 0 or f[2] <= 0:
        raise ValueError(f"split fractions must be >= 0 with train > 0 and test > 0, got {fractions!r}")
    if abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions!r} (sum {sum(f):.6g})")
    return f  # type: ignore[return-value]


def split_by_fractions(
    y: np.ndarray | None, n: int, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partition ``range(n)`` into disjoint seeded train/val/test index sets (stratified when labelled).

    Sizes are ``n_val = round(f_val * n)``, ``n_test = round(f_test * n)``, ``n_train = n - n_val - n_test``.

    Args:
        y: integer labels ``[n]`` for stratification, or ``None``.
        n: number of samples.
        fractions: ``(train, val, test)`` fractions summing to 1 (val may be 0).
        seed: split seed (stream ``"split"``).

    Returns:
        ``(train_idx, val_idx, test_idx)``, sorted int64 arrays that partition ``range(n)``.
    """
    f_train, f_val, f_test = _check_fractions(fractions)
    n_val, n_test = round(f_val * n), round(f_test * n)
    n_train = n - n_val - n_test
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"split {tuple(fractions)!r} of {n} samples leaves an empty train or test split")
    order = stratified_order(y, n, rng_for(seed, "split"))
    # test first, then val, then train: each is a contiguous run of a stratified order.
    test = np.sort(order[:n_test])
    val = np.sort(order[n_test : n_test + n_val])
    train = np.sort(order[n_test + n_val :])
    return train, val, test


def carve_validation(
    y: np.ndarray | None, n: int, val_size: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split an official training set of ``n`` samples into seeded train and validation indices.

    Args:
        y: integer labels ``[n]`` for stratification, or ``None``.
        n: size of the official training set.
        val_size: int -> number of validation samples; float in [0, 1) -> fraction of ``n``.
        seed: split seed (stream ``"val"``).

    Returns:
        ``(train_idx, val_idx)``, sorted disjoint int64 arrays covering ``range(n)``.
    """
    if isinstance(val_size, bool):
        raise ValueError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, (int, np.integer)):
        n_val = int(val_size)
    elif isinstance(val_size, (float, np.floating)) and 0.0 <= val_size < 1.0:
        n_val = round(float(val_size) * n)
    else:
        raise ValueError(f"val_size must be an int count or a float fraction in [0, 1), got {val_size!r}")
    if not 0 <= n_val < n:
        raise ValueError(
            f"val_size={val_size!r} must leave a non-empty train split of the {n} training samples"
        )
    order = stratified_order(y, n, rng_for(seed, "val"))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def subset_train(y: np.ndarray | None, n: int, train_fraction: float, seed: int) -> np.ndarray:
    """Pick a seeded, stratified subset of ``round(train_fraction * n)`` (at least 1) training indices.

    Subsets are nested: for a fixed seed, the subset for a smaller fraction is contained in the subset for
    a larger one (both are prefixes of one stratified order).

    Args:
        y: integer labels ``[n]`` for stratification, or ``None``.
        n: number of training samples.
        train_fraction: fraction in (0, 1].
        seed: seed (stream ``"subset"``).

    Returns:
        Sorted int64 array of kept indices.
    """
    check_train_fraction(train_fraction)
    n_keep = max(1, round(float(train_fraction) * n))
    order = stratified_order(y, n, rng_for(seed, "subset"))
    return np.sort(order[:n_keep])


def flip_labels(
    y: np.ndarray, num_classes: int, label_noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace exactly ``round(label_noise * n)`` labels, chosen at random, by a *different* random class.

    The new label is ``(y + k) mod num_classes`` with ``k`` uniform in ``{1, ..., num_classes - 1}``, so every
    chosen label changes and the new class is uniform over the other classes.

    References:
        Zhang, Bengio, Hardt, Recht, Vinyals (2017), "Understanding deep learning requires rethinking
        generalization" (random-label corruption).

    Args:
        y: int64 labels, shape ``[n]`` (not modified).
        num_classes: number of classes (>= 2).
        label_noise: fraction in [0, 1).
        seed: seed (stream ``"noise"``).

    Returns:
        ``(noisy_y, noisy_idx)``: a new int64 array ``[n]`` and the sorted indices that were changed.
    """
    check_label_noise(label_noise)
    if num_classes < 2:
        raise ValueError(f"label_noise needs num_classes >= 2, got {num_classes}")
    y = np.asarray(y, dtype=np.int64)
    n_noisy = round(float(label_noise) * len(y))
    rng = rng_for(seed, "noise")
    idx = np.sort(rng.choice(len(y), size=n_noisy, replace=False)).astype(np.int64)
    shift = rng.integers(1, num_classes, size=n_noisy)
    out = y.copy()
    out[idx] = (y[idx] + shift) % num_classes
    return out, idx


def check_train_fraction(train_fraction: float) -> float:
    """Validate ``train_fraction`` in (0, 1] and return it as float.

    Args:
        train_fraction: fraction of the training split to keep.

    Returns:
        The fraction as a Python float.
    """
    if isinstance(train_fraction, bool) or not isinstance(
        train_fraction, (int, float, np.floating, np.integer)
    ):
        raise ValueError(f"train_fraction must be a number in (0, 1], got {train_fraction!r}")
    if not 0.0 < float(train_fraction) <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction!r}")
    return float(train_fraction)


def check_label_noise(label_noise: float) -> float:
    """Validate ``label_noise`` in [0, 1) and return it as float.

    Args:
        label_noise: fraction of training labels to corrupt.

    Returns:
        The fraction as a Python float.
    """
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float, np.floating, np.integer)):
        raise ValueError(f"label_noise must be a number in [0, 1), got {label_noise!r}")
    if not 0.0 <= float(label_noise) < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise!r}")
    return float(label_noise)
