"""Streaming statistics and batch iteration used by activation matching and REPAIR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from zooscape.align.stats import ChannelStats, CrossStats, iter_batches, normalize_weights, unit_columns
from zooscape.data import load_dataset


def test_cross_stats_match_numpy_corrcoef_across_batches():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g) * 3 + 1
    b = a[:, [2, 0, 1, 5, 4, 3]] * 0.5 + 0.1 * torch.randn(500, 6, generator=g)
    st = CrossStats(6)
    for i in range(0, 500, 128):
        st.update(a[i:i + 128], b[i:i + 128])
    ref = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:6, 6:]
    assert np.allclose(st.correlation(eps=0).numpy(), ref, atol=1e-10)
    assert st.correlation().argmax(1).tolist() == [1, 2, 0, 5, 4, 3]


def test_channel_stats_match_torch_and_need_samples():
    x = torch.randn(300, 4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 5
    st = ChannelStats(4)
    for chunk in x.split(70):
        st.update(chunk)
    assert torch.allclose(st.mean(), x.mean(0), atol=1e-12)
    assert torch.allclose(st.var(), x.var(0, unbiased=False), atol=1e-10)
    with pytest.raises(ValueError, match="no samples"):
        ChannelStats(3).mean()


def test_unit_columns_blocks():
    t = torch.arange(2 * 12).view(2, 12)  # dim 1 = outer 2 x n 3 x inner 2
    cols = unit_columns(t, 1, 3, 2)
    assert cols.shape == (8, 3)
    # unit c collects the entries (a*3 + c)*2 + b for every sample, outer a and inner b
    assert sorted(cols[:, 1].tolist()) == sorted([r * 12 + (a * 3 + 1) * 2 + b for r in range(2) for a in range(2)
                                                  for b in range(2)])
    with pytest.raises(ValueError, match="multiple"):
        unit_columns(t, 1, 5, 1)


def test_iter_batches_accepts_every_data_form():
    x = torch.randn(10, 3)
    y = torch.arange(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    forms = [x, (x, y), [(x[:4], y[:4]), (x[4:], y[4:])], [x[:5], x[5:]], loader]
    for form in forms:
        assert torch.equal(torch.cat(list(iter_batches(form, batch_size=4))), x)
    ds = load_dataset("digits", seed=0)
    assert torch.equal(torch.cat(list(iter_batches(ds, 500))), ds.train_x)
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches(x, 0))
    with pytest.raises(ValueError, match="non-empty"):
        list(iter_batches(torch.zeros(0, 3)))
    with pytest.raises(ValueError, match="type str"):
        list(iter_batches(["a"]))


def test_normalize_weights():
    assert normalize_weights(None, 4).tolist() == [0.25] * 4
    assert normalize_weights([1, 3], 2).tolist() == [0.25, 0.75]
    for bad in ([1.0], [0.0, 0.0], [1.0, float("nan")], [2.0, -1.0]):
        with pytest.raises(ValueError, match="weights"):
            normalize_weights(bad, 2)
