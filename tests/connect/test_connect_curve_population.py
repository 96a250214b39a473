"""connect.curve_population.train_curves: many curves trained as one population equal train_curve per curve."""

import copy
import dataclasses
import itertools
from unittest import mock

import pytest
import torch
from connect_helpers import classification_data, make_cnn, make_mlp, perturb_bn_stats

from zooscape.connect import Curve, CurveTrainConfig, train_curve, train_curves
from zooscape.connect.curve_population import curve_train_chunk

CFG = CurveTrainConfig(epochs=2, batch_size=8, lr=0.05, weight_decay=1e-3, seed=3)


def _curves(factory, kind="bezier", num_bends=1, dtype=torch.float64, n_models=4, **kw):
    models = [perturb_bn_stats(factory(s), s).to(dtype) for s in range(n_models)]
    pairs = list(itertools.combinations(range(n_models), 2))[:4]
    return [Curve(kind, models[a], models[b], num_bends, **kw) for a, b in pairs]


def _data(shape, classes, dtype=torch.float64, **kw):
    return {k: (x.to(dtype), y) for k, (x, y) in classification_data(0, shape, classes, **kw).items()}


def _assert_same(ref, got, ref_results, got_results, atol):
    for a, b in zip(ref, got):
        assert torch.allclose(a.node_vectors(), b.node_vectors(), rtol=0, atol=atol)
    for r, g in zip(ref_results, got_results):
        assert len(r.history) == len(g.history)
        for x, y in zip(r.history, g.history):
            assert x.keys() == y.keys()
            for key in ("train_loss", "train_nll", "train_error", "t_mean", "lr"):
                if key in x:
                    assert y[key] == pytest.approx(x[key], abs=atol), key


def _check(curves, data, config, atol, population=True, **kw):
    got = [copy.deepcopy(c) for c in curves]
    before = [c.node_vectors() for c in curves]
    ref_results = [train_curve(c, data, config, task=kw.get("task")) for c in curves]
    # the population path never falls back to train_curve (only networks with active Dropout do)
    fallback = {"side_effect": AssertionError("fell back to train_curve")} if population else {"wraps": train_curve}
    with mock.patch("zooscape.connect.curve_train.train_curve", **fallback) as per_curve:
        got_results = train_curves(got, data, config, **kw)
    assert per_curve.call_count == (0 if population else len(curves))
    _assert_same(curves, got, ref_results, got_results, atol)
    moved = [float((c.node_vectors() - b).abs().max()) for c, b in zip(got, before)]
    assert min(moved) > max(1e-4, 10 * atol)  # the bends were trained (far more than the tolerance)
    for c, b in zip(got, before):  # the endpoints were not
        assert torch.equal(c.node_vectors()[[0, -1]], b[[0, -1]])
    return got_results


@pytest.mark.parametrize("bn,kind,num_bends", [(False, "bezier", 1), (True, "polychain", 2), (True, "bezier", 3)])
def test_mlp_curves_equal_train_curve_per_curve(bn, kind, num_bends):
    curves = _curves(lambda s: make_mlp(s, bn=bn), kind, num_bends)
    _check(curves, _data((6,), 3), CFG, 1e-12)


def test_batchnorm_cnn_curves_equal_train_curve_per_curve():
    curves = _curves(make_cnn, "bezier", 1)
    _check(curves, _data((1, 6, 6), 4), CFG, 1e-12)


def test_cnn_s_curves_equal_train_curve_in_float32():
    from zooscape.models import create_model

    models = [create_model("cnn_s", num_classes=10, input_size=[1, 28, 28], seed=s) for s in range(3)]
    curves = [Curve("bezier", models[a], models[b], 1) for a, b in itertools.combinations(range(3), 2)]
    data = _data((1, 28, 28), 10, torch.float32, n_train=48, n_test=4)
    cfg = CurveTrainConfig(epochs=2, batch_size=16, lr=0.5, seed=1)
    _check(curves, data, cfg, 2e-5)


def test_adam_cosine_free_endpoint_and_own_seeds():
    curves = _curves(lambda s: make_mlp(s, bn=True), "bezier", 1, fix_end=False)
    cfg = dataclasses.replace(CFG, optimizer="adam", lr=0.01, schedule="cosine", drop_last=True)
    seeds = [5, 6, 7, 5]
    got = [copy.deepcopy(c) for c in curves]
    results = train_curves(got, _data((6,), 3), cfg, seeds=seeds)
    for curve, mine, seed, res in zip(curves, got, seeds, results):
        ref = train_curve(curve, _data((6,), 3), dataclasses.replace(cfg, seed=seed))
        assert torch.allclose(curve.node_vectors(), mine.node_vectors(), rtol=0, atol=1e-12)
        assert res.config.seed == seed
        assert [r["train_loss"] for r in res.history] == pytest.approx([r["train_loss"] for r in ref.history],
                                                                        abs=1e-12)
    assert not torch.equal(got[0].node_vectors()[-1], curves[0].node_vectors()[-1] * 0)  # the end node moved too
    assert not torch.allclose(got[0].nodes[-1].p0, _curves(lambda s: make_mlp(s, bn=True))[0].nodes[-1].p0)


def test_chunks_and_dropout_fallback_give_the_same_curves():
    curves = _curves(lambda s: make_mlp(s, bn=True), "bezier", 1)
    data = _data((6,), 3)
    whole = [copy.deepcopy(c) for c in curves]
    train_curves(whole, data, CFG)
    done = []
    chunked = [copy.deepcopy(c) for c in curves]
    rows = []
    train_curves(chunked, data, CFG, max_members=3, progress=done.append, callback=lambda i, r: rows.append(i))
    assert done == [2, 2]  # 4 curves in two equal chunks
    assert sorted(set(rows)) == [0, 1, 2, 3] and len(rows) == 4 * CFG.epochs
    for a, b in zip(whole, chunked):
        assert torch.allclose(a.node_vectors(), b.node_vectors(), rtol=0, atol=1e-12)
    # Dropout: each curve trained by train_curve itself (the same masks as alone)
    drop = _curves(lambda s: make_mlp(s, bn=False, dropout=0.3), "bezier", 1)
    _check(drop, data, CFG, 0.0, population=False)


def test_chunk_size_follows_the_memory_budget():
    curves = _curves(lambda s: make_mlp(s, bn=True))
    x = torch.zeros(2, 6, dtype=torch.float64)
    assert curve_train_chunk(curves[0], x, 10, 8) == 10
    assert curve_train_chunk(curves[0], x, 10, 8, max_members=4) == 4  # 10 curves in chunks of 4, 3, 3 -> 4
    assert curve_train_chunk(curves[0], x, 10, 8, memory_bytes=1) == 1
    with pytest.raises(ValueError, match="n_curves"):
        curve_train_chunk(curves[0], x, 0, 8)


def test_errors():
    data = _data((6,), 3)
    mlp = _curves(lambda s: make_mlp(s, bn=False))
    other = _curves(lambda s: make_mlp(s, bn=False), "polychain")
    assert train_curves([], data, CFG) == []
    with pytest.raises(ValueError, match="differs from curves"):
        train_curves([mlp[0], other[1]], data, CFG)
    with pytest.raises(ValueError, match="dtype"):
        train_curves([mlp[0], copy.deepcopy(mlp[1]).float()], data, CFG)
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 curves"):
        train_curves(mlp[:2], data, CFG, seeds=[1])
    with pytest.raises(TypeError, match="Curve"):
        train_curves([mlp[0], object()], data, CFG)
    line = _curves(lambda s: make_mlp(s, bn=False), num_bends=0)
    with pytest.raises(ValueError, match="nothing to train"):
        train_curves(line, data, CFG)
    with pytest.raises(ValueError, match="batch_size 64 exceeds"):
        train_curves(mlp, data, dataclasses.replace(CFG, batch_size=64, drop_last=True))
    bad = [copy.deepcopy(c) for c in mlp]
    with pytest.raises(RuntimeError, match="diverged"):
        train_curves(bad, data, dataclasses.replace(CFG, lr=1e30, epochs=3))


def test_regression_curves_equal_train_curve_per_curve():
    def net(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    g = torch.Generator().manual_seed(1)
    data = {s: (torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g,
                                                                                dtype=torch.float64))
            for s, n in (("train", 30), ("test", 10))}
    curves = _curves(net, "bezier", 1)
    results = _check(curves, data, dataclasses.replace(CFG, lr=0.01), 1e-12, task="regression")
    assert "train_error" not in results[0].history[0]


@pytest.mark.parametrize("manual", [True, False])
def test_relu_mlp_curves_take_the_autograd_free_step_and_equal_train_curve(manual):
    from zooscape.connect.curve_population import _CurveChunk
    from zooscape.train._flags import override

    def net(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                   torch.nn.ReLU(), torch.nn.Linear(8, 3))

    curves = _curves(net, "bezier", 2)
    data = _data((6,), 3)
    with override(manual_mlp=manual):
        chunk = _CurveChunk(curves, CFG, [CFG.seed] * len(curves), torch.device("cpu"))
        assert chunk.use_manual_step(data["train"][0], "classification") is manual
        _check(curves, data, CFG, 1e-12)
    # BatchNorm MLPs and regression keep autograd
    assert not _CurveChunk(_curves(lambda s: make_mlp(s, bn=True)), CFG, [0] * 4,
                           torch.device("cpu")).use_manual_step(data["train"][0], "classification")
    assert not _CurveChunk(curves, CFG, [0] * 4, torch.device("cpu")).use_manual_step(data["train"][0], "regression")
