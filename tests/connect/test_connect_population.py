"""Population evaluation of path and curve points (connect.population) against the per-model reference paths."""

import pytest
import torch
from connect_helpers import classification_data, make_cnn, make_mlp, perturb_bn_stats
from torch import nn

from zooscape.connect import Curve, linear_path, recompute_bn_stats
from zooscape.connect.curve_eval import evaluate_curve, evaluate_curves
from zooscape.connect.path import linear_paths
from zooscape.connect.population import member_chunks, population_supported
from zooscape.train import Population


def _models(factory, n):
    return [perturb_bn_stats(factory(s), s + 1) for s in range(n)]


def _assert_paths_equal(got, ref, tol=1e-6):
    assert got.alphas.tolist() == ref.alphas.tolist()
    for s in ref.loss:
        torch.testing.assert_close(got.loss[s], ref.loss[s], rtol=tol, atol=tol)
        torch.testing.assert_close(got.error[s], ref.error[s], rtol=0, atol=1e-12)
    assert got.distance == pytest.approx(ref.distance, rel=1e-12)
    for k, v in ref.flat_barriers().items():
        assert got.flat_barriers()[k] == pytest.approx(v, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("bn_mode", ["interpolate", "reset"])
@pytest.mark.parametrize("factory,shape,classes", [(make_mlp, (6,), 3), (make_cnn, (1, 6, 6), 4)])
def test_many_pairs_equal_the_per_pair_loop(factory, shape, classes, bn_mode):
    data = classification_data(5, shape, classes)
    ms = _models(factory, 4)
    pairs = [(ms[0], ms[1]), (ms[2], ms[3]), (ms[1], ms[3])]
    # 3 pairs x 6 alphas = 18 points in chunks of at most 4 (the last one padded): chunking must not matter
    got = linear_paths(pairs, data, 5, bn_mode=bn_mode, max_members=4)
    for (a, b), path in zip(pairs, got):
        ref = linear_path(a, b, data, 5, bn_mode=bn_mode, method="loop")
        assert path.method == "population"
        _assert_paths_equal(path, ref)
    # the endpoints were not modified, and the points differ from pair to pair (the test can fail)
    assert not torch.allclose(got[0].loss["test"], got[1].loss["test"])


def test_reset_differs_from_interpolated_statistics():
    data = classification_data(5, (6,), 3)
    a, b = _models(make_mlp, 2)
    reset = linear_paths([(a, b)], data, 3, bn_mode="reset")[0]
    interp = linear_paths([(a, b)], data, 3, bn_mode="interpolate")[0]
    assert (reset.loss["train"] - interp.loss["train"]).abs().max() > 1e-3


def test_linear_path_population_method_equals_loop_with_dropout_and_state_dicts(mlp_pair, mlp_data):
    a, b = mlp_pair  # dropout 0.3: evaluation must run it in eval mode
    ref = linear_path(a, b, mlp_data, 7, bn_mode="reset", method="loop")
    _assert_paths_equal(linear_path(a, b, mlp_data, 7, bn_mode="reset", method="population"), ref)
    from_states = linear_paths([(a.state_dict(), b.state_dict())], mlp_data, 7, template=a, bn_mode="reset")[0]
    _assert_paths_equal(from_states, ref)
    with pytest.raises(ValueError, match="template"):
        linear_paths([(a.state_dict(), b.state_dict())], mlp_data, 7)


def test_recompute_bn_stats_on_a_population_equals_each_model():
    x = torch.randn(45, 1, 6, 6)
    ms = _models(make_cnn, 3)
    pop = Population(ms).eval()
    pop.forward_shared(x[:2])  # the population's one-time checks, in eval mode
    recompute_bn_stats(pop, x, batch_size=16, forward=pop.forward_shared)
    for i, m in enumerate(ms):
        ref = recompute_bn_stats(m, x, batch_size=16)
        got = pop.member_state_dict(i)
        for k in ("1.running_mean", "1.running_var"):
            torch.testing.assert_close(got[k], ref.state_dict()[k], rtol=1e-5, atol=1e-6)
    assert not pop.training and ms[0].training  # modes restored (the models were in training mode)


def test_curves_of_many_pairs_equal_evaluate_curve():
    data = classification_data(6, (1, 6, 6), 4)
    ms = _models(make_cnn, 3)
    curves = [Curve("bezier", ms[0], ms[1], 1, seed=0), Curve("polychain", ms[1], ms[2], 2, seed=1)]
    got = evaluate_curves(curves, data, 5, max_members=3, weight_decay=1e-3)
    assert [g.method for g in got] == ["population", "population"]
    for curve, ev in zip(curves, got):
        ref = evaluate_curve(curve, data, 5, method="loop", weight_decay=1e-3)
        for s in ("train", "test"):
            for metric in ("loss", "nll", "error"):
                torch.testing.assert_close(ev.values(metric, s), ref.values(metric, s), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ev.dl, ref.dl)
        assert ev.flat() == pytest.approx(ref.flat(), rel=1e-4, abs=1e-6)
    assert evaluate_curve(curves[0], data, 5).method == "population"  # the default for small networks


def test_member_chunks_stay_within_the_memory_budget():
    big = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(), nn.Linear(1000, 10))  # 0.4 MB of weights
    size = sum(p.numel() for p in big.parameters()) * 4
    m, b = member_chunks(big, torch.randn(2, 100), 50, batch_size=1024, memory_bytes=8 * size)
    assert m <= 4 and 2 * m * size <= 8 * size
    assert 50 % m == 0 or -(-50 // m) * m - 50 < -(-50 // m)  # nearly equal chunks
    m_all, b_all = member_chunks(big, torch.randn(2, 100), 5, batch_size=256)
    assert (m_all, b_all) == (5, 256)


def test_population_supported():
    assert population_supported(make_cnn(0))

    class OwnParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(x) * self.scale

    assert not population_supported(OwnParam())
    data = classification_data(0, (3,), 3)
    a, b = OwnParam(), OwnParam()
    assert linear_path(a, b, data, 3).method in ("vmap", "loop")  # auto falls back
