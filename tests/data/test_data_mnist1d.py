"""Tests for the MNIST-1D generator: agreement with a per-sample slow path, class structure, loader."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from zooscape.data import load_dataset, make_mnist1d, mnist1d_templates
from zooscape.data.mnist1d import interpolate_rows, mnist1d_transform


def _slow_sample(template, pad, scale, shift, corr, iid, shear, n_out):
    """Per-sample reference path written with np.interp / np.roll / gaussian_filter."""
    m = corr.shape[0]
    x = np.concatenate([template + 1e-8, np.zeros(pad)])
    x = np.interp(np.linspace(0, 1, m), np.linspace(0, 1, len(x)), x) * scale
    x = np.roll(x, shift)
    x = np.where(x != 0, x, gaussian_filter(corr, 2)) + iid
    x = x - shear * np.linspace(-0.5, 0.5, m)
    return np.interp(np.linspace(0, 1, n_out), np.linspace(0, 1, m), x)


def test_templates_start_and_end_at_zero():
    t = mnist1d_templates()
    assert t.shape == (10, 12)
    assert np.allclose(t[:, 0], 0) and np.allclose(t[:, -1], 0)
    assert np.allclose(t.std(1), 1 / 6)
    assert len({row.tobytes() for row in t}) == 10


def test_interpolate_rows_matches_np_interp():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 30))
    lengths = np.array([2, 7, 12, 29, 30])
    out = interpolate_rows(x, lengths, 17)
    for i, n in enumerate(lengths):
        assert np.allclose(out[i], np.interp(np.linspace(0, 1, 17), np.linspace(0, 1, n), x[i, :n]))


def test_vectorised_transform_matches_slow_path():
    rng = np.random.default_rng(1)
    n, m = 25, 72
    y = rng.integers(0, 10, n)
    draws = dict(
        pad=rng.integers(36, 61, n),
        scale=1 + 0.4 * (rng.random(n) - 0.5),
        shift=rng.integers(0, 48, n),
        corr_noise=0.25 * rng.standard_normal((n, m)),
        iid_noise=0.02 * rng.standard_normal((n, m)),
        shear=0.75 * (rng.random(n) - 0.5),
    )
    fast = mnist1d_transform(mnist1d_templates()[y], final_seq_length=40, **draws)
    for i in range(n):
        slow = _slow_sample(
            mnist1d_templates()[y[i]], draws["pad"][i], draws["scale"][i], draws["shift"][i],
            draws["corr_noise"][i], draws["iid_noise"][i], draws["shear"][i], 40,
        )  # fmt: skip
        assert np.allclose(fast[i], slow, atol=1e-10)


def test_make_mnist1d_balanced_standardised_and_seeded():
    x, y = make_mnist1d(num_samples=1000, seed=3)
    assert x.shape == (1000, 40) and np.array_equal(np.bincount(y), np.full(10, 100))
    assert abs(x.mean()) < 1e-9 and abs(x.std() - 1) < 1e-9
    x2, y2 = make_mnist1d(num_samples=1000, seed=3)
    x3, _ = make_mnist1d(num_samples=1000, seed=4)
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and not np.allclose(x, x3)
    xs, _ = make_mnist1d(num_samples=1000, seed=3, shuffle_seq=True)
    assert not np.allclose(xs, x) and np.allclose(np.sort(xs, 1), np.sort(x, 1))
    with pytest.raises(ValueError, match="padding"):
        make_mnist1d(padding=(10, 5))


def test_mnist1d_has_class_structure():
    ds = load_dataset("mnist1d", flat=True)
    xtr, ytr = ds.train_x.double().numpy(), ds.train_y.numpy()
    xte, yte = ds.test_x.double().numpy(), ds.test_y.numpy()
    # linear (ridge) classifier: the paper's logistic regression reaches ~32%; chance is 10%
    a = np.c_[xtr, np.ones(len(xtr))]
    w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ np.eye(10)[ytr])
    lin_acc = (np.argmax(np.c_[xte, np.ones(len(xte))] @ w, 1) == yte).mean()
    d = (xte**2).sum(1)[:, None] - 2 * xte @ xtr.T + (xtr**2).sum(1)[None]
    nn_acc = (ytr[d.argmin(1)] == yte).mean()
    assert lin_acc > 0.18 and nn_acc > 0.4, (lin_acc, nn_acc)
    # with labels destroyed the same classifiers are at chance level
    perm = np.random.default_rng(0).permutation(len(ytr))
    assert (ytr[perm][d.argmin(1)] == yte).mean() < 0.16


def test_mnist1d_loader_shapes_and_splits():
    ds = load_dataset("mnist1d", seed=2)
    assert ds.input_shape == (1, 40) and (ds.n_train, ds.n_val, ds.n_test) == (3600, 400, 1000)
    small = load_dataset("mnist1d", num_samples=1000, val_size=50, flat=True)
    assert small.input_shape == (40,) and (small.n_train, small.n_val, small.n_test) == (750, 50, 200)
    other = load_dataset("mnist1d", seed=9)
    assert np.array_equal(other.test_x.numpy(), ds.test_x.numpy())  # official test set is seed-independent
    assert small.meta["data_seed"] == 42
