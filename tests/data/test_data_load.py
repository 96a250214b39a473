"""Tests for zooscape.data.load_dataset: splits, shapes, knobs, registry and errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zooscape.data import DataSplits, dataset_options, list_datasets, load_dataset, register_dataset
from zooscape.data.partition import flip_labels, split_by_fractions, subset_train

IN_MEMORY = {
    # name: (input_shape, num_outputs, n_total)
    "digits": ((64,), 10, 1797),
    "mnist5k": ((1, 28, 28), 10, 5000),
    "mnist1d": ((1, 40), 10, 5000),
    "blobs": ((2,), 3, 1000),
    "moons": ((2,), 2, 1000),
    "regression": ((1,), 1, 600),
}


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(x.shape[0], -1).numpy()}


def test_registry_lists_all_required_datasets():
    names = list_datasets()
    required = {"digits", "mnist5k", "mnist1d", "blobs", "moons", "regression"}
    assert required | {"mnist", "fashion_mnist", "cifar10", "cifar100"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(IN_MEMORY))
def test_shapes_dtypes_and_label_ranges(name):
    shape, k, n_total = IN_MEMORY[name]
    ds = load_dataset(name, seed=3)
    assert isinstance(ds, DataSplits)
    assert ds.input_shape == shape and ds.num_outputs == k
    assert ds.n_train + ds.n_val + ds.n_test == n_total
    for split in ("train", "val", "test"):
        x, y = ds.split(split)
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        assert tuple(x.shape[1:]) == shape
        assert torch.isfinite(x).all()
        if ds.task == "classification":
            assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
            assert 0 <= int(y.min()) and int(y.max()) < k
        else:
            assert y.dtype == torch.float32 and y.shape == (x.shape[0], 1)
    if ds.task == "classification":  # every class appears in every split (stratified)
        for split in ("train", "val", "test"):
            assert len(torch.unique(ds.split(split)[1])) == k
    assert ds.meta["seed"] == 3 and ds.meta["n_noisy"] == 0 and "source" in ds.meta


@pytest.mark.parametrize("name", ["digits", "mnist1d", "regression", "moons"])
def test_same_seed_same_splits_other_seed_other_splits(name):
    a, b, c = load_dataset(name, seed=7), load_dataset(name, seed=7), load_dataset(name, seed=8)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split)[0], b.split(split)[0])
        assert torch.equal(a.split(split)[1], b.split(split)[1])
    assert not torch.equal(a.val_x, c.val_x)


@pytest.mark.parametrize("name", ["mnist1d", "regression"])
def test_splits_are_disjoint_and_cover_the_data(name):
    # continuous-valued data sets: every sample is a unique row
    ds = load_dataset(name, seed=1)
    tr, va, te = _rows(ds.train_x), _rows(ds.val_x), _rows(ds.test_x)
    assert len(tr) == ds.n_train and len(va) == ds.n_val and len(te) == ds.n_test
    assert not (tr & va) and not (tr & te) and not (va & te)
    other = load_dataset(name, seed=2)  # another partition of the same pool
    assert tr | va | te == _rows(other.train_x) | _rows(other.val_x) | _rows(other.test_x)


def test_partition_indices_disjoint_stratified():
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    tr, va, te = split_by_fractions(y, len(y), (0.6, 0.2, 0.2), seed=5)
    all_idx = np.concatenate([tr, va, te])
    assert len(all_idx) == len(y) and len(np.unique(all_idx)) == len(y)
    assert (len(va), len(te)) == (40, 40)
    for idx, frac in ((tr, 0.6), (va, 0.2), (te, 0.2)):
        counts = np.bincount(y[idx], minlength=4)
        assert np.all(np.abs(counts - frac * np.bincount(y)) <= 2), counts


def test_loading_does_not_touch_global_rng():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    load_dataset("mnist1d", seed=11, train_fraction=0.5, label_noise=0.2, data_seed=123)
    load_dataset("blobs", seed=11, label_noise=0.1)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


def test_train_fraction_keeps_stratified_nested_subset():
    full = load_dataset("mnist1d", seed=4)
    half = load_dataset("mnist1d", seed=4, train_fraction=0.5)
    tenth = load_dataset("mnist1d", seed=4, train_fraction=0.1)
    assert half.n_train == round(0.5 * full.n_train) and tenth.n_train == round(0.1 * full.n_train)
    assert torch.equal(half.val_x, full.val_x) and torch.equal(half.test_y, full.test_y)
    assert _rows(tenth.train_x) <= _rows(half.train_x) <= _rows(full.train_x)
    expected = 0.1 * torch.bincount(full.train_y, minlength=10).double()
    counts = torch.bincount(tenth.train_y, minlength=10).double()
    assert torch.all((counts - expected).abs() <= 1.0), counts
    assert half.meta["train_fraction"] == 0.5 and half.meta["n_train_full"] == full.n_train
    # regression (unstratified) also subsets
    reg = load_dataset("regression", train_fraction=0.25)
    assert reg.n_train == round(0.25 * load_dataset("regression").n_train)


@pytest.mark.parametrize("noise", [0.1, 0.37])
def test_label_noise_changes_exact_count_of_train_labels(noise):
    clean = load_dataset("digits", seed=5, train_fraction=0.5)
    noisy = load_dataset("digits", seed=5, train_fraction=0.5, label_noise=noise)
    n_expected = round(noise * clean.n_train)
    assert int((noisy.train_y != clean.train_y).sum()) == n_expected == noisy.meta["n_noisy"]
    assert torch.equal(noisy.train_y_clean, clean.train_y)
    assert torch.equal(noisy.train_x, clean.train_x)
    assert torch.equal(noisy.val_y, clean.val_y) and torch.equal(noisy.test_y, clean.test_y)
    assert noisy.meta["label_noise"] == noise
    again = load_dataset("digits", seed=5, train_fraction=0.5, label_noise=noise)
    assert torch.equal(again.train_y, noisy.train_y)


def test_flip_labels_new_class_is_uniform_over_other_classes():
    y = np.zeros(20000, dtype=np.int64)
    out, idx = flip_labels(y, 5, 0.5, seed=0)
    assert len(idx) == 10000 and np.all(out[idx] != 0)
    freq = np.bincount(out[idx], minlength=5)[1:] / len(idx)
    assert np.allclose(freq, 0.25, atol=0.02)
    assert np.array_equal(np.delete(out, idx), np.delete(y, idx))


def test_subset_indices_nested_and_sorted():
    y = np.arange(300) % 3
    small, big = subset_train(y, 300, 0.2, seed=9), subset_train(y, 300, 0.7, seed=9)
    assert set(small) <= set(big) and np.all(np.diff(big) > 0)
    assert np.array_equal(np.bincount(y[small]), [20, 20, 20])


def test_regression_rejects_label_noise():
    with pytest.raises(ValueError, match="label_noise.*regression"):
        load_dataset("regression", label_noise=0.1)


def test_regression_targets_follow_function_with_three_clusters():
    ds = load_dataset("regression", noise=0.0)
    x, y = ds.train_x[:, 0].double(), ds.train_y[:, 0].double()
    assert torch.allclose(y, torch.sin(1.5 * x) + 0.3 * x, atol=1e-5)
    centers = torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64)
    dist, nearest = (x[:, None] - centers[None]).abs().min(1)
    assert float((dist < 1.25).double().mean()) > 0.97  # tight clusters, gaps in between
    assert torch.all((torch.bincount(nearest, minlength=3) - ds.n_train / 3).abs() <= 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"train_fraction": 1.5}, "train_fraction"),
        ({"label_noise": 1.0}, "label_noise"),
        ({"label_noise": -0.1}, "label_noise"),
        ({"seed": -1}, "seed"),
        ({"split": (0.5, 0.5)}, "split"),
        ({"split": (0.5, 0.2, 0.2)}, "sum to 1"),
        ({"bogus": 1}, r"bogus.*valid options.*image"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'nope'.*digits.*mnist1d"):
        load_dataset("nope")


def test_split_accessor_and_aliases():
    ds = load_dataset("mnist_small")
    assert ds.name == "mnist5k"
    x, y = ds.split("val")
    assert x is ds.val_x and y is ds.val_y
    with pytest.raises(ValueError, match="'validation'.*train.*val.*test"):
        ds.split("validation")
    assert set(dataset_options("mnist5k")) >= {"split", "flat", "resize", "normalize"}


def test_digits_image_resize_and_scaling():
    flat = load_dataset("digits")
    img = load_dataset("digits", image=True)
    big = load_dataset("digits", resize=28)
    assert img.input_shape == (1, 8, 8) and big.input_shape == (1, 28, 28)
    assert torch.equal(img.train_x.reshape(img.n_train, -1), flat.train_x)
    assert float(flat.train_x.min()) == 0.0 and float(flat.train_x.max()) == 1.0
    expected = F.interpolate(img.train_x, size=(28, 28), mode="bilinear", align_corners=False)
    assert torch.allclose(big.train_x, expected)


def test_normalize_uses_training_statistics_or_given_values():
    ds = load_dataset("mnist5k", normalize=True)
    assert abs(float(ds.train_x.mean())) < 1e-4 and abs(float(ds.train_x.std()) - 1) < 1e-3
    raw = load_dataset("mnist5k")
    given = load_dataset("mnist5k", normalize=(0.1307, 0.3081))
    assert torch.allclose(given.test_x, (raw.test_x - 0.1307) / 0.3081, atol=1e-6)
    assert given.meta["normalize_mean"] == [0.1307]


def test_mnist5k_is_real_balanced_mnist_and_loads_fast():
    t0 = time.perf_counter()
    ds = load_dataset("mnist5k", seed=0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0  # cached after the first call; ~0.2 s cold on one core
    ys = torch.cat([ds.train_y, ds.val_y, ds.test_y])
    assert torch.equal(torch.bincount(ys), torch.full((10,), 500))
    assert torch.equal(torch.bincount(ds.train_y), torch.full((10,), 350))
    # real digits: most pixels are background, and the class-mean images differ
    assert float((ds.train_x == 0).float().mean()) > 0.7
    means = torch.stack([ds.train_x[ds.train_y == c].mean(0) for c in range(10)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 1.0


def test_blobs_and_moons_options():
    ds = load_dataset("blobs", centers=5, n_features=3, n_samples=500)
    assert ds.num_outputs == 5 and ds.input_shape == (3,) and ds.n_train + ds.n_val + ds.n_test == 500
    quiet, loud = load_dataset("moons", noise=0.0), load_dataset("moons", noise=0.3)
    r = (quiet.train_x - torch.tensor([[0.0, 0.0]])).norm(dim=1)[quiet.train_y == 0]
    assert torch.allclose(r, torch.ones_like(r), atol=1e-5)  # class 0 lies on the unit circle without noise
    assert not torch.equal(quiet.train_x, loud.train_x)


def test_register_custom_dataset_and_option_validation():
    @register_dataset("_test_tiny")
    def _tiny(*, seed: int, n: int = 20) -> DataSplits:
        x = torch.arange(n, dtype=torch.float32)[:, None]
        y = torch.arange(n) % 2
        return DataSplits("_test_tiny", "classification", 2, (1,), x, y, x[:2], y[:2], x[:2], y[:2])

    ds = load_dataset("_test_tiny", n=10, train_fraction=0.5, label_noise=0.4)
    assert ds.n_train == 5 and ds.meta["n_noisy"] == 2 and ds.meta["options"] == {"n": 10}
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("_test_tiny")(_tiny)
    with pytest.raises(ValueError, match="keyword-only"):
        register_dataset("_test_bad")(lambda seed, n: None)


def test_datasplits_validates_dtypes_and_to_device():
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="train_x must be float32"):
        DataSplits("t", "classification", 2, (2,), x.double(), y, x, y, x, y)
    with pytest.raises(ValueError, match="val_y"):
        DataSplits("t", "classification", 2, (2,), x, y, x, y + 5, x, y)
    ds = DataSplits("t", "classification", 2, (2,), x, y, x, y, x, y).to("cpu")
    assert ds.train_y_clean is not None and ds.n_test == 4
