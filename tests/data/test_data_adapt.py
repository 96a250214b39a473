"""The one data adapter (zooscape.data.adapt): DataSplits, mappings, (x, y) pairs and loaders."""

import pytest
import torch

from zooscape.data import load_dataset
from zooscape.data.adapt import get_split, iter_batches, train_inputs


def test_every_form_gives_the_same_split():
    data = load_dataset("digits")
    x, y = data.split("test")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    for form in (data, {"test": (x, y)}, (x, y), loader, [(x[:100], y[:100]), (x[100:], y[100:])]):
        gx, gy = get_split(form, "test")
        assert torch.equal(gx, x) and torch.equal(gy, y)
    assert torch.equal(train_inputs(data), data.split("train")[0])
    assert torch.equal(torch.cat(list(iter_batches(loader))), x)
    assert torch.equal(torch.cat(list(iter_batches(x, batch_size=7))), x)


def test_bad_forms_name_the_problem():
    with pytest.raises(KeyError, match="no split 'val'"):
        get_split({"test": (torch.zeros(2, 3), torch.zeros(2))}, "val")
    with pytest.raises(ValueError, match="3 samples but y has 2"):
        get_split({"test": (torch.zeros(3, 1), torch.zeros(2))}, "test")
    with pytest.raises(TypeError, match="item 0 of the iterable is not an \\(x, y\\) pair"):
        get_split([torch.zeros(2, 3)], "test")
    with pytest.raises(ValueError, match="no batches"):
        list(iter_batches([]))
