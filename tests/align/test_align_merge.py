"""merge (MergeMany), weighted averaging, and renormalisation (reset BN, REPAIR, RESCALE, RESHIFT)."""

from __future__ import annotations

import warnings

import pytest
import torch
from align_testlib import MLP, VGG, digits, evaluate, inputs, randomize_bn, seeded, trained
from torch import nn

from zooscape.align import (
    Permutation,
    apply_permutation,
    correction_points,
    merge,
    permutation_spec,
    renormalize,
    repair,
    reset_bn_stats,
)
from zooscape.align.renorm import _point_stats
from zooscape.models import create_model


def _close(m1: nn.Module, m2: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> bool:
    with torch.no_grad():
        return torch.allclose(m1.eval()(x), m2.eval()(x), atol=atol)


def _stats(model, points, x):
    st = _point_stats(model, points, x, 128, torch.device("cpu"))
    return {k: (v.mean(), v.var().sqrt()) for k, v in st.items()}


@pytest.mark.parametrize("align,kind", [("weight", "vgg_bn"), ("activation", "resnet20")])
def test_merging_permuted_copies_gives_back_the_model(align, kind):
    model = trained(kind)
    x, xt = inputs(kind)
    spec = permutation_spec(model, x[:2])
    gen = torch.Generator().manual_seed(0)
    copies = [apply_permutation(model, Permutation.random(spec, gen)) for _ in range(3)]
    res = merge(copies, align=align, data=x[:400], spec=spec)
    assert type(res.model) is type(model)
    assert len(res.perms) == 3
    for m in res.models[1:]:  # all copies end up in one basis...
        for k, v in res.models[0].state_dict().items():
            assert torch.equal(v, m.state_dict()[k]), k
    assert _close(res.model, model, xt)  # ... so their average is the model itself
    naive = merge(copies, align=None)
    assert not _close(naive.model, model, xt, atol=1e-2)


def test_merge_without_alignment_is_the_weighted_average():
    models = [seeded(lambda: MLP((6,), norm="bn"), s) for s in range(3)]
    for s, m in enumerate(models):
        randomize_bn(m, seed=s)
    res = merge(models, weights=[1.0, 2.0, 3.0], align=None)
    assert res.perms is None
    for k, v in res.model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        expected = sum(w * m.state_dict()[k] for w, m in zip((1 / 6, 2 / 6, 3 / 6), models))
        assert torch.allclose(v, expected, atol=1e-6), k


def test_merge_many_of_independent_models_beats_naive_averaging():
    models = [trained("mlp_wide", s) for s in range(3)]
    _, xt = inputs("mlp_wide")
    yt = digits()[3]
    aligned = merge(models, align="weight", seed=0)
    naive = merge(models, align=None)
    acc_aligned, acc_naive = evaluate(aligned.model, xt, yt)[1], evaluate(naive.model, xt, yt)[1]
    assert aligned.iterations >= 2
    assert acc_aligned > acc_naive + 0.2
    for m, src, p in zip(aligned.models, models, aligned.perms):
        assert _close(m, src, xt)  # alignment never changes a model's function
        assert not p.is_identity() or m is src


@pytest.mark.parametrize("kind,method", [("mlp", "repair"), ("mlp", "rescale"), ("mlp", "reshift"),
                                         ("vgg_bn", "repair")])
def test_renormalisation_hits_the_goal_statistics_exactly(kind, method):
    a, b = trained(kind, 0), trained(kind, 1)
    x, _ = inputs(kind)
    x = x[:600]
    b = merge([a, b], align="weight").models[1]
    mid = merge([a, b], weights=[0.3, 0.7], align=None).model
    fixed = repair(mid, [a, b], x, weights=[0.3, 0.7], method=method)
    points = correction_points(mid)
    if kind == "mlp":
        assert [p.module for p in points] == ["module_list.0", "module_list.2", "module_list.4"]  # no classifier
    else:  # corrections sit on the BatchNorm after every conv; fused into its affine parameters
        assert all(isinstance(dict(mid.named_modules())[p.module], nn.BatchNorm2d) for p in points)
        assert len(points) == 8
    sa, sb, sm, sf = (_stats(m, points, x) for m in (a, b, mid, fixed))
    for p in points:
        goal_mean = 0.3 * sa[p.module][0] + 0.7 * sb[p.module][0]
        goal_std = 0.3 * sa[p.module][1] + 0.7 * sb[p.module][1]
        mean, std = sf[p.module]
        live = sm[p.module][1] > 1e-6
        if method in ("repair", "reshift"):
            assert torch.allclose(mean, goal_mean, atol=1e-4), p.module
        if method in ("repair", "rescale"):
            assert torch.allclose(std[live], goal_std[live], rtol=1e-4, atol=1e-5), p.module
        if method == "rescale":  # scaling only: mean / std ratio is unchanged at the first point
            if p.module == "module_list.0":
                ratio_before = sm[p.module][0][live] / sm[p.module][1][live]
                assert torch.allclose(mean[live] / std[live], ratio_before, rtol=1e-4, atol=1e-5)
    # the input is untouched and the result is a plain model of the same class
    assert type(fixed) is type(mid)
    assert _close(mid, merge([a, b], weights=[0.3, 0.7], align=None).model, x[:50])


def test_repair_raises_midpoint_accuracy_of_a_plain_mlp():
    a, b = trained("mlp", 0), trained("mlp", 1)
    x, xt = inputs("mlp")
    yt = digits()[3]
    plain = merge([a, b], align="weight")
    repaired = merge([a, b], align="weight", data=x, renorm="repair")
    assert evaluate(repaired.model, xt, yt)[1] > evaluate(plain.model, xt, yt)[1] + 0.02


def test_reset_bn_stats_is_the_cumulative_average_over_batches():
    model = randomize_bn(seeded(lambda: VGG(4, "bn", dropout=0.0), 0), seed=0).eval()
    x = torch.randn(400, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fresh = reset_bn_stats(model, x, batch_size=100)
    with torch.no_grad():
        conv_out = model.features[0](x)  # input of the first BatchNorm (no BN upstream)
    batch_vars = torch.stack([conv_out[i:i + 100].var((0, 2, 3), unbiased=True) for i in range(0, 400, 100)])
    bn = fresh.features[1]
    assert torch.allclose(bn.running_mean, conv_out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, batch_vars.mean(0), atol=1e-5)
    assert not torch.allclose(model.features[1].running_mean, bn.running_mean)  # input untouched
    assert bn.momentum == model.features[1].momentum and not fresh.training


def test_reset_then_repair_on_batchnorm_merge():
    a, b = trained("vgg_bn", 0), trained("vgg_bn", 1)
    x, xt = inputs("vgg_bn")
    yt = digits()[3]
    res = merge([a, b], align="weight")
    both = renormalize(res.model, x, ("reset_bn", "repair"), endpoints=res.models)
    reset = renormalize(res.model, x, "reset_bn")
    acc = [evaluate(m, xt, yt)[1] for m in (res.model, reset, both)]
    assert acc[1] > acc[0] and acc[2] > acc[0]


def test_repair_warns_when_a_shift_cannot_be_fused():
    x, _ = inputs("resnet20")
    nets = [create_model("resnet20", input_size=8, width=4, norm="none", seed=s) for s in (0, 1)]
    mid = merge(nets, align=None).model
    with pytest.warns(UserWarning, match="no bias"):
        repair(mid, nets, x[:200])
    # RESCALE needs no bias, so it works on the same model without warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repair(mid, nets, x[:200], method="rescale")


def test_merge_and_renorm_errors():
    m = MLP((4,))
    with pytest.raises(ValueError, match="at least 2"):
        merge([m])
    with pytest.raises(ValueError, match="align"):
        merge([m, m], align="magic")
    with pytest.raises(ValueError, match="data is required"):
        merge([m, m], renorm="repair")
    with pytest.raises(ValueError, match="weights"):
        merge([m, m], weights=[1.0, -1.0], align=None)
    with pytest.raises(ValueError, match="architecture"):
        merge([m, MLP((5,))], align=None)
    with pytest.raises(ValueError, match="method"):
        renormalize(m, torch.randn(4, 64), "nope")
    with pytest.raises(ValueError, match="endpoints"):
        renormalize(m, torch.randn(4, 64), "repair")
    with pytest.raises(ValueError, match="method"):
        repair(m, [m], torch.randn(4, 64), method="reset_bn")
