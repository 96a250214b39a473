"""Curves between networks: coefficients, the Curve wrapper, curve training, evaluation and the mc metric."""

import copy
import math
import time

import pytest
import torch
from connect_helpers import make_cnn, make_mlp, perturb_bn_stats
from torch import nn

from zooscape.connect import (
    Curve,
    CurveTrainConfig,
    bezier_coefficients,
    curve_coefficients,
    curve_stats,
    curve_ts,
    evaluate_curve,
    garipov_lr_factor,
    linear_path,
    load_curve,
    mode_connectivity,
    polychain_coefficients,
    recompute_bn_stats,
    save_curve,
    segment_lengths,
    train_curve,
)
from zooscape.connect.curve_train import curve_loss, sample_ts
from zooscape.connect.metrics import evaluate_model

# ------------------------------------------------------------------------------------------------ coefficients


def test_reference_coefficients():
    assert bezier_coefficients(0.25, 1).tolist() == pytest.approx([0.5625, 0.375, 0.0625], abs=1e-12)
    assert polychain_coefficients(0.25, 1).tolist() == pytest.approx([0.5, 0.5, 0.0], abs=1e-12)
    assert polychain_coefficients(0.5, 4).tolist() == pytest.approx([0, 0, 0.5, 0.5, 0, 0], abs=1e-12)
    assert curve_coefficients("Bezier", 0.25, 1).tolist() == bezier_coefficients(0.25, 1).tolist()
    # num_bends = 0 is the straight line for both kinds
    for kind in ("bezier", "polychain"):
        assert curve_coefficients(kind, 0.3, 0).tolist() == pytest.approx([0.7, 0.3], abs=1e-12)


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
@pytest.mark.parametrize("num_bends", [0, 1, 2, 5])
def test_coefficients_partition_reverse_and_exact_ends(kind, num_bends):
    ts = torch.rand(33, generator=torch.Generator().manual_seed(num_bends), dtype=torch.float64)
    c = curve_coefficients(kind, ts, num_bends)
    assert c.shape == (33, num_bends + 2)
    assert torch.allclose(c.sum(1), torch.ones(33, dtype=torch.float64), atol=1e-12)
    assert (c >= 0).all()
    # w(1 - t) is w(t) reversed
    assert torch.allclose(curve_coefficients(kind, 1 - ts, num_bends), c.flip(1), atol=1e-12)
    ends = curve_coefficients(kind, torch.tensor([0.0, 1.0]), num_bends)
    assert ends[0].tolist() == [1.0] + [0.0] * (num_bends + 1)
    assert ends[1].tolist() == [0.0] * (num_bends + 1) + [1.0]


def test_bezier_matches_de_casteljau():
    points = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # 2 bends
    for t in (0.1, 0.37, 0.8):
        level = points.clone()
        while level.shape[0] > 1:
            level = (1 - t) * level[:-1] + t * level[1:]
        assert torch.allclose(bezier_coefficients(t, 2) @ points, level[0], atol=1e-12)


def test_polychain_passes_through_nodes_at_even_positions():
    for j in range(5):
        c = polychain_coefficients(j / 4, 3)
        assert c.tolist() == pytest.approx([1.0 if k == j else 0.0 for k in range(5)], abs=1e-12)


def test_coefficient_errors():
    with pytest.raises(ValueError, match="t must lie"):
        bezier_coefficients(1.5, 1)
    with pytest.raises(ValueError, match="num_bends"):
        polychain_coefficients(0.5, -1)
    with pytest.raises(ValueError, match="kind"):
        curve_coefficients("spline", 0.5, 1)


# ------------------------------------------------------------------------------------------------ Curve


def _bn_pair():
    return perturb_bn_stats(make_mlp(0, dropout=0.2), 1), perturb_bn_stats(make_mlp(1, dropout=0.2), 2)


@pytest.mark.parametrize("make", ["mlp", "cnn"])
def test_endpoints_reproduce_outputs_with_batchnorm(make):
    if make == "mlp":
        a, b = _bn_pair()
        x = torch.randn(17, 6, generator=torch.Generator().manual_seed(5))
    else:
        a, b = perturb_bn_stats(make_cnn(3), 3), perturb_bn_stats(make_cnn(4), 4)
        x = torch.randn(9, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    for kind in ("bezier", "polychain"):
        curve = Curve(kind, a, b, num_bends=2, init="random", seed=3)
        a.eval(), b.eval(), curve.eval()
        assert torch.allclose(curve(x, 0.0), a(x), atol=1e-5)
        assert torch.allclose(curve(x, 1.0), b(x), atol=1e-5)
        # training mode (batch statistics); dropout off so that outputs are deterministic
        for m in (a, b, curve.template):
            for mod in m.modules():
                if isinstance(mod, nn.Dropout):
                    mod.p = 0.0
        a.train(), b.train(), curve.train()
        assert torch.allclose(curve(x, 0.0), a(x), atol=1e-5)
        assert torch.allclose(curve(x, 1.0), b(x), atol=1e-5)
        a.eval(), b.eval()


def test_endpoints_with_recomputed_batchnorm(mlp_data):
    a, b = _bn_pair()
    curve = Curve("bezier", a, b, 1)
    x_train, x_test = mlp_data["train"][0], mlp_data["test"][0]
    for t, ref in ((0.0, a), (1.0, b)):
        expected = recompute_bn_stats(copy.deepcopy(ref), x_train).eval()(x_test)
        assert torch.allclose(curve.model_at(t, data=x_train)(x_test), expected, atol=1e-5)


def test_reversed_curve():
    a, b = _bn_pair()
    curve = Curve("bezier", a, b, 3, init="random", seed=1)
    rev = curve.reversed()
    for t in (0.0, 0.2, 0.5, 0.9, 1.0):
        w, wr = curve.weights(t), rev.weights(1 - t)
        assert all(torch.allclose(w[k], wr[k], atol=1e-6) for k in w)
    assert rev.fix_start == curve.fix_end
    x = torch.randn(5, 6)
    rev.eval(), b.eval()
    assert torch.allclose(rev(x, 0.0), b(x), atol=1e-6)


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_linear_init_is_the_straight_line_in_order(kind):
    a, b = _bn_pair()
    curve = Curve(kind, a, b, num_bends=3)  # would fail with bends in reversed order (TF port bug)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for t in (0.13, 0.5, 0.71):
        w = curve.weights(t)
        for n in w:
            assert torch.allclose(w[n], torch.lerp(pa[n], pb[n], t), atol=1e-6), (kind, t, n)
    for j in range(1, 4):
        state = curve.node_state(j)
        assert torch.allclose(state["0.weight"], torch.lerp(pa["0.weight"], pb["0.weight"], j / 4), atol=1e-7)


def test_fixed_and_free_endpoints_and_random_init():
    a, b = _bn_pair()
    n_tensors = len(list(a.parameters()))
    assert len(Curve("bezier", a, b, 2).trainable_parameters()) == 2 * n_tensors
    assert len(Curve("bezier", a, b, 2, fix_start=False).trainable_parameters()) == 3 * n_tensors
    assert len(Curve("bezier", a, b, 0, fix_start=False, fix_end=False).trainable_parameters()) == 2 * n_tensors
    state = torch.get_rng_state()
    r1 = Curve("polychain", a, b, 1, init="random", seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    r2 = Curve("polychain", a, b, 1, init="random", seed=7)
    r3 = Curve("polychain", a, b, 1, init="random", seed=8)
    assert torch.equal(r1.node_state(1)["0.weight"], r2.node_state(1)["0.weight"])
    assert not torch.equal(r1.node_state(1)["0.weight"], r3.node_state(1)["0.weight"])
    line = torch.lerp(a.state_dict()["0.weight"], b.state_dict()["0.weight"], 0.5)
    assert not torch.allclose(r1.node_state(1)["0.weight"], line, atol=1e-3)


def test_arbitrary_model_without_curve_layers():
    class Residual(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.inp = nn.Linear(6, 8)
            self.norm = nn.LayerNorm(8)
            self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
            self.out = nn.Linear(8, 3)
            self.register_buffer("scale", torch.tensor(2.0 + seed))

        def forward(self, x):
            h = self.norm(self.inp(x))
            return self.out(h + self.block(h) * self.scale)

    a, b = Residual(0), Residual(1)
    curve = Curve("bezier", a, b, 1)
    x = torch.randn(4, 6)
    assert torch.allclose(curve(x, 0.0), a(x), atol=1e-6) and torch.allclose(curve(x, 1.0), b(x), atol=1e-6)
    assert float(curve.buffers_at(0.5)["scale"]) == pytest.approx(2.5)  # floating buffers ride on the curve
    with pytest.raises(ValueError, match="architecture"):
        Curve("bezier", a, make_mlp(0), 1)


def test_save_and_load_roundtrip(tmp_path):
    a, b = _bn_pair()
    curve = Curve("polychain", a, b, 2, init="random", seed=2, fix_end=False)
    path = save_curve(curve, tmp_path / "sub" / "curve.safetensors", metadata={"note": "x"})
    loaded, extra = load_curve(path, make_mlp(5, dropout=0.2))
    assert extra == {"note": "x"} and loaded.kind == "polychain" and loaded.num_bends == 2
    assert loaded.fix_end is False and loaded.fix_start is True
    for j in range(curve.num_nodes):
        s, s2 = curve.node_state(j), loaded.node_state(j)
        assert all(torch.equal(s[k], s2[k]) for k in s)
    x = torch.randn(6, 6)
    curve.eval(), loaded.eval()
    assert torch.equal(curve(x, 0.4), loaded(x, 0.4))
    with pytest.raises(ValueError, match="parameter names|architecture"):
        load_curve(path, make_mlp(5, bn=False))
    with pytest.raises(FileNotFoundError):
        load_curve(tmp_path / "missing.safetensors", a)


# ------------------------------------------------------------------------------------------------ training


def test_garipov_schedule():
    assert garipov_lr_factor(14, 20) == pytest.approx(0.505)
    assert [garipov_lr_factor(e, 10) for e in range(1, 6)] == [1.0] * 5
    assert garipov_lr_factor(9, 10) == pytest.approx(0.01) and garipov_lr_factor(10, 10) == pytest.approx(0.01)
    factors = [garipov_lr_factor(e, 20) for e in range(1, 21)]
    assert all(x >= y for x, y in zip(factors, factors[1:]))
    with pytest.raises(ValueError, match="epoch"):
        garipov_lr_factor(0, 10)


def test_curve_loss_is_nll_plus_half_wd_squared_norm(mlp_data):
    a, b = _bn_pair()
    curve = Curve("bezier", a, b, 1, init="random", seed=0).eval()
    x, y = mlp_data["train"]
    loss, nll, _ = curve_loss(curve, x, y, 0.3, 0.1)
    model = curve.model_at(0.3)
    with torch.no_grad():
        expected_nll = nn.functional.cross_entropy(model(x), y)
        sq = sum(p.pow(2).sum() for p in model.parameters())
    assert float(nll.detach()) == pytest.approx(float(expected_nll), abs=1e-5)
    assert float(loss.detach()) == pytest.approx(float(expected_nll + 0.05 * sq), abs=1e-4)
    loss.backward()
    assert curve.nodes[1].p0.grad is not None and curve.nodes[0].p0.grad is None  # start fixed


def test_training_is_seeded_keeps_fixed_ends_and_global_rng(mlp_data):
    a, b = _bn_pair()
    cfg = CurveTrainConfig(epochs=2, batch_size=8, lr=0.05, weight_decay=1e-3, seed=3)
    runs = []
    for _ in range(2):
        curve = Curve("bezier", a, b, 1)
        state = torch.get_rng_state()
        res = train_curve(curve, mlp_data, cfg)
        assert torch.equal(state, torch.get_rng_state())
        runs.append((curve, res))
    (c1, r1), (c2, r2) = runs
    assert torch.equal(c1.node_state(1)["0.weight"], c2.node_state(1)["0.weight"])
    assert [h["train_loss"] for h in r1.history] == [h["train_loss"] for h in r2.history]
    assert torch.equal(c1.node_state(0)["0.weight"], a.state_dict()["0.weight"])  # fixed start
    assert torch.equal(c1.node_state(2)["0.weight"], b.state_dict()["0.weight"])  # fixed end
    line = torch.lerp(a.state_dict()["0.weight"], b.state_dict()["0.weight"], 0.5)
    assert not torch.allclose(c1.node_state(1)["0.weight"], line)  # the bend moved
    c3 = Curve("bezier", a, b, 1)
    train_curve(c3, mlp_data, CurveTrainConfig(epochs=2, batch_size=8, lr=0.05, seed=4))
    assert not torch.equal(c1.node_state(1)["0.weight"], c3.node_state(1)["0.weight"])
    assert [h["lr"] for h in r1.history] == pytest.approx([0.05, 0.05 * 0.01])
    free = Curve("bezier", a, b, 1, fix_start=False)
    train_curve(free, mlp_data, CurveTrainConfig(epochs=1, batch_size=8, optimizer="adam", lr=0.01))
    assert not torch.equal(free.node_state(0)["0.weight"], a.state_dict()["0.weight"])


def test_sampled_positions():
    ts = sample_ts(0, 1, 1000)
    assert ts.shape == (1000,) and float(ts.min()) >= 0 and float(ts.max()) < 1
    assert abs(float(ts.mean()) - 0.5) < 0.05
    assert torch.equal(ts, sample_ts(0, 1, 1000)) and not torch.equal(ts, sample_ts(0, 2, 1000))


def test_training_rejects_bad_config(mlp_data):
    a, b = _bn_pair()
    with pytest.raises(ValueError, match="optimizer"):
        CurveTrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="schedule"):
        CurveTrainConfig(schedule="warm")
    with pytest.raises(ValueError, match="nothing to train"):
        train_curve(Curve("bezier", a, b, 0), mlp_data, CurveTrainConfig(epochs=1))


# ------------------------------------------------------------------------------------------------ evaluation


def test_mc_closed_forms():
    s = torch.linspace(-1, 1, 5, dtype=torch.float64)
    assert mode_connectivity((s**2 - 1) ** 2) == pytest.approx(-1.0)  # barrier of height 1
    assert mode_connectivity(torch.full((5,), 0.3)) == 0.0  # identical endpoints, flat path
    assert mode_connectivity(torch.tensor([1.0, 0.6, 0.4, 0.7, 1.0])) == pytest.approx(0.6)  # better inside
    # t* may be an endpoint: on a straight monotone path both ends tie and the first (the start) wins, as with
    # numpy.argmax in the reference, so mc = m - v_0 = (v_1 - v_0) / 2
    assert mode_connectivity(torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64)) == pytest.approx(0.2)
    assert mode_connectivity(torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0], dtype=torch.float64)) == pytest.approx(-0.2)
    ts = curve_ts(61)
    assert torch.allclose(ts, torch.linspace(0, 1, 61, dtype=torch.float64))
    values = torch.zeros(61, dtype=torch.float64)
    values[30] = 2.0  # t = 0.5 is an mc position
    values[31] = 5.0  # t = 0.5167 is not
    assert mode_connectivity(values, ts) == pytest.approx(-2.0)
    ts10 = curve_ts(10)
    assert {0.25, 0.5, 0.75} <= {round(v, 12) for v in ts10.tolist()}
    with pytest.raises(ValueError, match="mc positions"):
        mode_connectivity(torch.zeros(7), torch.linspace(0, 1, 7))


def test_curve_stats_closed_forms():
    dl = torch.tensor([0.0, 1.0, 1.0, 2.0])
    st = curve_stats(torch.tensor([1.0, 3.0, 3.0, 1.0]), dl)
    assert st == pytest.approx({"min": 1.0, "max": 3.0, "mean": 2.0, "int": (2 + 3 + 2 * 2) / 4})
    assert curve_stats(torch.tensor([1.0, 2.0]), torch.zeros(2))["int"] == pytest.approx(1.5)  # zero length


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_straight_curve_matches_linear_path(mlp_data, method):
    a, b = _bn_pair()
    line = Curve("polychain", a, b, 0)
    ev = evaluate_curve(line, mlp_data, 9, method=method)
    path = linear_path(a, b, mlp_data, n_points=9, bn_mode="reset")
    for split in ("train", "test"):
        assert torch.allclose(ev.nll[split], path.loss[split], atol=1e-5)
        assert torch.allclose(ev.error[split], path.error[split], atol=1e-9)
    assert ev.length == pytest.approx(path.distance, rel=1e-6)
    assert torch.allclose(ev.dl[1:], torch.full((8,), path.distance / 8, dtype=torch.float64), rtol=1e-5)


def test_vmap_and_loop_agree_and_endpoints_match(mlp_data):
    a, b = _bn_pair()
    curve = Curve("bezier", a, b, 2, init="random", seed=1)
    fast = evaluate_curve(curve, mlp_data, 7, weight_decay=0.01)
    slow = evaluate_curve(curve, mlp_data, 7, weight_decay=0.01, method="loop")
    assert fast.ts.shape == (9,)  # 7 points plus t = 0.25, 0.75
    for split in ("train", "test"):
        for metric in ("loss", "nll", "error"):
            assert torch.allclose(fast.values(metric, split), slow.values(metric, split), atol=1e-5)
    x_tr = mlp_data["train"][0]
    for index, ref in ((0, a), (-1, b)):
        model = recompute_bn_stats(copy.deepcopy(ref), x_tr)
        loss, err = evaluate_model(model, *mlp_data["test"], "classification")
        assert float(fast.nll["test"][index]) == pytest.approx(loss, abs=1e-5)
        assert float(fast.error["test"][index]) == pytest.approx(err, abs=1e-9)
    sq = torch.tensor([sum(float(p.detach().pow(2).sum()) for p in curve.model_at(t).parameters()) for t in fast.ts])
    assert torch.allclose(fast.loss["test"] - fast.nll["test"], 0.005 * sq.double(), atol=1e-4)
    assert torch.allclose(segment_lengths(curve, fast.ts), fast.dl)
    flat = fast.flat()
    assert flat["mc_error_test"] == fast.mc["test"]["error"] and flat["length"] == fast.length
    assert set(fast.to_dict()) >= {"ts", "dl", "loss", "nll", "error", "stats", "mc"}


def test_curve_length_of_linear_init_is_the_distance(mlp_data):
    a, b = _bn_pair()
    ev = evaluate_curve(Curve("bezier", a, b, 3), mlp_data, 11, splits=("test",))
    path = linear_path(a, b, mlp_data, n_points=3, splits=("test",))
    assert ev.length == pytest.approx(path.distance, rel=1e-6)


def test_regression_curve():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    data = {"train": (x, x[:, :1] * 2.0), "test": (x[:8], x[:8, :1] * 2.0)}
    a, b = make_mlp(0, bn=False), make_mlp(1, bn=False)
    a[-1], b[-1] = nn.Linear(8, 1), nn.Linear(8, 1)
    curve = Curve("bezier", a, b, 1)
    train_curve(curve, data, CurveTrainConfig(epochs=2, batch_size=10, lr=0.01))
    ev = evaluate_curve(curve, data, 5)
    assert ev.task == "regression" and not ev.error and math.isfinite(ev.mc["test"]["loss"])


# ------------------------------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits_pair():
    from zooscape.data import load_dataset
    from zooscape.models import create_model
    from zooscape.train import Member, TrainConfig, train_population

    ds = load_dataset("digits", seed=0)
    models = [create_model("mlp", seed=s, num_classes=10, input_size=[64], width=32, depth=2) for s in (0, 1)]
    res = train_population(models, ds, TrainConfig(epochs=5, batch_size=32, optimizer="adam", lr=0.01),
                           [Member(seed=0), Member(seed=1)], device="cpu")
    return ds, res.models[0], res.models[1]


def test_trained_curve_beats_straight_line_on_digits(digits_pair):
    start = time.perf_counter()
    ds, a, b = digits_pair
    line = evaluate_curve(Curve("bezier", a, b, 0), ds, 21)
    curve = Curve("bezier", a, b, 1)
    train_curve(curve, ds, CurveTrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=0.005,
                                            weight_decay=0.0, seed=0))
    ev = evaluate_curve(curve, ds, 21)
    ends = max(float(line.error["test"][0]), float(line.error["test"][-1]))
    line_max, curve_max = line.stats["test"]["error"]["max"], ev.stats["test"]["error"]["max"]
    assert line_max > ends + 0.1  # independently trained MLPs: a real barrier on the straight line
    assert curve_max < 0.5 * line_max and curve_max < ends + 0.05
    assert line.mc["test"]["error"] < -0.1 and ev.mc["test"]["error"] > line.mc["test"]["error"] + 0.1
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("opt, kw", [("sgd", {"momentum": 0.0}), ("sgd", {"momentum": 0.9}),
                                     ("sgd", {"momentum": 0.9, "nesterov": True}), ("adam", {})])
def test_curve_optimizer_matches_torch_optim(opt, kw):
    from zooscape.connect.curve_train import CurveOptimizer

    g = torch.Generator().manual_seed(0)
    init = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in init] for _ in range(4)]
    mine = [nn.Parameter(t.clone()) for t in init]
    ref = [nn.Parameter(t.clone()) for t in init]
    cfg = CurveTrainConfig(optimizer=opt, **kw)
    ours = CurveOptimizer(mine, cfg)
    if opt == "sgd":
        theirs = torch.optim.SGD(ref, lr=0.1, momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        theirs = torch.optim.Adam(ref, lr=0.1, betas=cfg.betas, eps=cfg.eps)
    for step, gs in enumerate(grads):
        lr = 0.1 / (step + 1)
        for group in theirs.param_groups:
            group["lr"] = lr
        for p, q, gr in zip(mine, ref, gs):
            p.grad, q.grad = gr.clone(), gr.clone()
        ours.step(lr)
        theirs.step()
        for p, q in zip(mine, ref):
            assert torch.allclose(p, q, atol=1e-6)
