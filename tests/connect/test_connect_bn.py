"""BatchNorm re-estimation is an exact cumulative average over one pass."""

import copy

import pytest
import torch
import torch.nn.functional as F
from connect_helpers import make_mlp, perturb_bn_stats
from torch import nn

from zooscape.connect import clear_bn_stats, has_batchnorm, recompute_bn_stats, reset_bn_stats
from zooscape.connect.bn import batch_slices


def _unbiased_channel_var(h):
    return h.var(dim=0, unbiased=True)


@torch.no_grad()
def _manual_stats(model, x, slices):
    """Independent slow path: per-batch forward with functional batch norm, sample-weighted averages."""
    lin1, bn1, act, lin2 = model[0], model[1], model[2], model[4]
    sums = {k: 0.0 for k in ("m1", "v1", "m2", "v2")}
    for sl in slices:
        xb = x[sl]
        b = xb.shape[0]
        h1 = lin1(xb)
        sums["m1"] = sums["m1"] + b * h1.mean(0)
        sums["v1"] = sums["v1"] + b * _unbiased_channel_var(h1)
        z1 = F.batch_norm(h1, None, None, bn1.weight, bn1.bias, training=True, eps=bn1.eps)
        h2 = lin2(act(z1))  # no dropout: only BatchNorm layers are put into training mode
        sums["m2"] = sums["m2"] + b * h2.mean(0)
        sums["v2"] = sums["v2"] + b * _unbiased_channel_var(h2)
    n = x.shape[0]
    return {k: v / n for k, v in sums.items()}


@pytest.mark.parametrize("batch_size", [10, 37, 6])
def test_recompute_equals_sample_weighted_cumulative_average(batch_size):
    model = perturb_bn_stats(make_mlp(0, dropout=0.5), 3)
    x = torch.randn(37, 6, generator=torch.Generator().manual_seed(0))
    expected = _manual_stats(model, x, batch_slices(37, batch_size))
    model.train()  # the caller's mode must be restored
    momentum = model[1].momentum
    recompute_bn_stats(model, x, batch_size=batch_size)
    torch.testing.assert_close(model[1].running_mean, expected["m1"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, expected["v1"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[5].running_mean, expected["m2"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[5].running_var, expected["v2"], rtol=1e-5, atol=1e-6)
    assert int(model[1].num_batches_tracked) == len(batch_slices(37, batch_size))
    assert model.training and model[1].training and model[3].training
    assert model[1].momentum == momentum


def test_first_layer_mean_is_exact_data_mean():
    # closed form, independent of batching: running mean of the first BN = mean of its input over all data
    model = make_mlp(1)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model[0](x)
    for bs in (7, 16, 50):
        recompute_bn_stats(model, x, batch_size=bs)
        torch.testing.assert_close(model[1].running_mean, full.mean(0), rtol=1e-5, atol=1e-6)
    # one batch: the variance is the full-data unbiased variance
    recompute_bn_stats(model, x, batch_size=50)
    torch.testing.assert_close(model[1].running_var, full.var(0, unbiased=True), rtol=1e-5, atol=1e-6)


def test_recompute_differs_from_default_momentum_update():
    # the default exponential moving average (momentum 0.1) over the same pass would give something else
    model = make_mlp(2)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    ema = copy.deepcopy(model)
    clear_bn_stats(ema)
    ema.train()
    with torch.no_grad():
        for sl in batch_slices(40, 10):
            ema(x[sl])
    recompute_bn_stats(model, x, batch_size=10)
    assert not torch.allclose(ema[1].running_mean, model[1].running_mean, atol=1e-3)


def test_batch_slices_merge_single_sample_tail():
    assert batch_slices(21, 10) == [slice(0, 10), slice(10, 21)]
    assert batch_slices(22, 10) == [slice(0, 10), slice(10, 20), slice(20, 22)]
    assert batch_slices(1, 10) == [slice(0, 1)]
    with pytest.raises(ValueError, match="batch_size"):
        batch_slices(5, 0)


def test_reset_and_has_batchnorm():
    model = perturb_bn_stats(make_mlp(0), 5)
    assert has_batchnorm(model) and not has_batchnorm(make_mlp(0, bn=False))
    clear_bn_stats(model)
    assert torch.equal(model[1].running_mean, torch.zeros(8))
    assert torch.equal(model[1].running_var, torch.ones(8))
    assert int(model[1].num_batches_tracked) == 0


def test_untracked_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    assert not has_batchnorm(model)
    assert recompute_bn_stats(model, torch.randn(5, 3)) is model


def test_one_bn_reestimator_for_align_and_connect():
    """align.reset_bn_stats is connect's: a re-estimated copy, equal to recompute_bn_stats on a copy."""
    import copy

    from zooscape import align

    assert align.reset_bn_stats is reset_bn_stats
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(50, 5) * 3 + 1
    fresh = reset_bn_stats(model, x, batch_size=16)
    assert fresh is not model and torch.equal(model[1].running_mean, torch.zeros(7))
    ref = recompute_bn_stats(copy.deepcopy(model), x, batch_size=16)
    assert torch.equal(fresh[1].running_mean, ref[1].running_mean)
    # an iterable of (x, y) batches gives the same sample-weighted estimate as the tensor
    loader = [(x[i:i + 16], torch.zeros(len(x[i:i + 16]))) for i in range(0, 48, 16)] + [(x[48:], torch.zeros(2))]
    via_loader = reset_bn_stats(model, loader)
    assert torch.allclose(via_loader[1].running_mean, ref[1].running_mean, atol=1e-6)
    assert torch.allclose(via_loader[1].running_mean, (x @ model[0].weight.T + model[0].bias).mean(0), atol=1e-5)


def test_reset_bn_stats_without_data_is_the_deprecated_in_place_reset():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[1].running_mean.fill_(5.0)
    with pytest.warns(DeprecationWarning, match="clear_bn_stats"):
        assert reset_bn_stats(model) is model
    assert torch.equal(model[1].running_mean, torch.zeros(4))
