"""Re-normalisation after pruning (reset BN / REPAIR / RESCALE via zooscape.align) and the pruned LMC barrier."""

import pytest
import torch
from torch import nn

from zooscape.align import correction_points
from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.sparsify import masks, prune, pruned_barrier, renormalize
from zooscape.sparsify.renorm import renorm_inputs


def _bn_mlp(seed=0):
    m = create_model("mlp", input_size=64, depth=2, width=16, norm="bn", seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for b in m.modules():
            if isinstance(b, nn.BatchNorm1d):
                b.running_mean.normal_(generator=g)
                b.running_var.uniform_(0.5, 2.0, generator=g)
                b.weight.uniform_(0.5, 1.5, generator=g)
    return m


def _recompute_bn(model, x):
    """Independent recomputation: walk the Sequential, normalising each BN input with its own batch statistics,
    and return every BN's (mean, unbiased var)."""
    out = []
    h = model.flatten(x)
    for layer in model.module_list:
        if isinstance(layer, nn.BatchNorm1d):
            mean, var_u, var_b = h.mean(0), h.var(0, unbiased=True), h.var(0, unbiased=False)
            out.append((mean, var_u))
            h = (h - mean) / torch.sqrt(var_b + layer.eps) * layer.weight + layer.bias
        else:
            h = layer(h)
    return out


@pytest.mark.parametrize("n_samples", [None, 300])
def test_reset_bn_after_pruning_restores_bn_statistics(n_samples):
    ds = load_dataset("digits", seed=0)
    pruned = prune(_bn_mlp(), 0.7, "globalmagni")
    fixed = renormalize(pruned, None, ds, "reset_bn", n_samples=n_samples, batch_size=10_000, seed=3)
    x = renorm_inputs(ds, n_samples, seed=3)
    assert x.shape[0] == (n_samples or ds.train_x.shape[0])
    with torch.no_grad():
        expect = _recompute_bn(pruned, x)
    bns = [b for b in fixed.modules() if isinstance(b, nn.BatchNorm1d)]
    assert len(bns) == len(expect) == 2
    for b, (mean, var) in zip(bns, expect):
        torch.testing.assert_close(b.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.running_var, var, rtol=1e-4, atol=1e-5)
    for n, mk in masks(fixed).items():  # masks kept, pruned weights still zero
        assert torch.equal(mk, masks(pruned)[n])
        assert bool((fixed.get_submodule(n).weight[~mk] == 0).all())


def _point_stats(model, x):
    stats = {}
    mods = dict(model.named_modules())
    hooks = [mods[p.module].register_forward_hook(
        lambda _m, _i, o, name=p.module: stats.__setitem__(name, (o.mean(0), o.std(0, unbiased=False))))
        for p in correction_points(model)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return stats


@pytest.mark.parametrize("method", ["repair", "rescale"])
def test_repair_after_pruning_restores_the_source_channel_statistics(method):
    ds = load_dataset("digits", seed=0)
    src = create_model("mlp", input_size=64, depth=2, width=16, seed=1)
    pruned = prune(src, 0.8, "globalmagni")
    x = ds.train_x
    before, goal = _point_stats(pruned, x), _point_stats(src, x)
    fixed = renormalize(pruned, src, ds, method, batch_size=10_000)
    after = _point_stats(fixed, x)
    for k, (mean, std) in goal.items():
        live = std > 1e-4
        torch.testing.assert_close(after[k][1][live], std[live], rtol=1e-3, atol=1e-4)
        if method == "repair":
            torch.testing.assert_close(after[k][0][live], mean[live], rtol=1e-3, atol=1e-4)
        assert float((before[k][1] - std).abs().max()) > 1e-2  # pruning had moved them
    for n, mk in masks(fixed).items():
        assert bool((fixed.get_submodule(n).weight[~mk] == 0).all())


def test_renormalize_errors():
    with pytest.raises(ValueError, match="source"):
        renormalize(prune(_bn_mlp(), 0.5), None, torch.rand(4, 64), "repair")
    with pytest.raises(ValueError, match="method"):
        renormalize(prune(_bn_mlp(), 0.5), None, torch.rand(4, 64), "reshape")


def test_pruned_barrier():
    ds = load_dataset("digits", seed=0)
    a = prune(create_model("mlp", input_size=64, depth=1, width=16, seed=0), 0.5)
    same = pruned_barrier(a, a, ds, n_points=5)
    assert same["barrier_loss_test_linear"] == pytest.approx(0.0, abs=1e-6)
    b = prune(create_model("mlp", input_size=64, depth=1, width=16, seed=1), 0.5)
    other = pruned_barrier(a, b, ds, n_points=5)
    with torch.no_grad():
        err_b = float((b.eval()(ds.test_x).argmax(1) != ds.test_y).float().mean())
    assert other["error_b_test"] == pytest.approx(err_b, abs=1e-6)
    assert other["barrier_loss_test_linear"] >= 0.0 and "barrier_error_test_midpoint" in other
