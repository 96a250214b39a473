"""The plane of a curve: orthonormal basis, projections, grid evaluation against single-model evaluation, plots."""

import copy

import pytest
import torch
from connect_helpers import make_mlp, perturb_bn_stats

from zooscape.connect import Curve, curve_plane, evaluate_curve, evaluate_plane, recompute_bn_stats
from zooscape.connect.curve_plot import plot_curve, plot_plane, save_png
from zooscape.connect.metrics import evaluate_model


def _bent_curve(bn=True, num_bends=1):
    a, b = make_mlp(0, bn=bn), make_mlp(1, bn=bn)
    if bn:
        a, b = perturb_bn_stats(a, 1), perturb_bn_stats(b, 2)
    return a, b, Curve("bezier", a, b, num_bends, init="random", seed=4)


def test_basis_is_orthonormal_and_nodes_land_where_expected():
    a, b, curve = _bent_curve()
    plane = curve_plane(curve)
    assert float(plane.u @ plane.u) == pytest.approx(1.0) and float(plane.v @ plane.v) == pytest.approx(1.0)
    assert abs(float(plane.u @ plane.v)) < 1e-10
    xy = plane.coordinates(curve.node_vectors())
    assert torch.allclose(xy[0], torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(xy[2], torch.tensor([plane.dx, 0.0], dtype=torch.float64), atol=1e-9)
    assert float(xy[1, 1]) == pytest.approx(plane.dy)
    # start, end and bend lie in the plane: projecting and lifting gives them back
    w = curve.node_vectors()
    assert torch.allclose(plane.points(xy), w, atol=1e-9)
    dist = sum(float((pa - pb).detach().pow(2).sum()) for pa, pb in zip(a.parameters(), b.parameters())) ** 0.5
    assert plane.dx == pytest.approx(dist, rel=1e-6)


def test_plane_errors():
    a, b, _ = _bent_curve()
    with pytest.raises(ValueError, match="no bend"):
        curve_plane(Curve("bezier", a, b, 0))
    with pytest.raises(ValueError, match="straight line"):
        curve_plane(Curve("bezier", a, b, 1))  # linear init: the bend is on the line
    with pytest.raises(ValueError, match="bend"):
        curve_plane(Curve("bezier", a, b, 2, init="random"), bend=3)


def test_grid_matches_single_model_evaluation(mlp_data):
    a, b, curve = _bent_curve()
    grid = evaluate_plane(curve, mlp_data, 5, margin=0.5, curve_points=11, point_batch_size=7, weight_decay=0.1)
    assert grid.xs.shape == (5,) and grid.loss["test"].shape == (5, 5)
    # alphas = [-0.5, 0, 0.5, 1, 1.5]: (1, 1) is the start, (3, 1) the end, (1, 3) is start + dy v
    x_tr = mlp_data["train"][0]
    for (i, j), ref in (((1, 1), a), ((3, 1), b)):
        model = recompute_bn_stats(copy.deepcopy(ref), x_tr)
        loss, err = evaluate_model(model, *mlp_data["test"], "classification")
        assert float(grid.nll["test"][i, j]) == pytest.approx(loss, abs=1e-5)
        assert float(grid.error["test"][i, j]) == pytest.approx(err, abs=1e-9)
        sq = sum(float(p.detach().pow(2).sum()) for p in ref.parameters())
        assert float(grid.loss["test"][i, j] - grid.nll["test"][i, j]) == pytest.approx(0.05 * sq, rel=1e-5)
    # an off-line grid point against a network built from the plane coordinates by hand
    vec = grid.plane.points(torch.tensor([[float(grid.xs[2]), float(grid.ys[4])]]))[0]
    model = copy.deepcopy(a)
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(vec[offset:offset + p.numel()].reshape(p.shape))
            offset += p.numel()
    recompute_bn_stats(model, x_tr)
    loss, _ = evaluate_model(model, *mlp_data["train"], "classification")
    assert float(grid.nll["train"][2, 4]) == pytest.approx(loss, abs=1e-5)
    # the curve is drawn from its start to its end
    assert torch.allclose(grid.curve_xy[0], torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(grid.curve_xy[-1], torch.tensor([grid.plane.dx, 0.0], dtype=torch.float64), atol=1e-6)


def test_quadratic_bezier_lies_in_its_plane():
    _, _, curve = _bent_curve(bn=False)
    plane = curve_plane(curve)
    ts = torch.linspace(0, 1, 7, dtype=torch.float64)
    w = curve.stacked_weights(ts)
    flat = torch.cat([w[n].reshape(7, -1).double() for n in plane.names], 1)
    assert torch.allclose(plane.points(plane.coordinates(flat)), flat, atol=1e-5)


def test_plots_write_pngs(tmp_path, mlp_data):
    a, b, curve = _bent_curve()
    grid = evaluate_plane(curve, mlp_data, 4, splits=("train",), curve_points=9)
    out = save_png(plot_plane(grid, "loss", "train"), tmp_path / "plots" / "plane.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert save_png(plot_plane(grid, "error", "train"), tmp_path / "err.png").stat().st_size > 0
    ev = evaluate_curve(curve, mlp_data, 9)
    line = evaluate_curve(Curve("bezier", a, b, 0), mlp_data, 9)
    assert save_png(plot_curve(ev, "error", linear=line), tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob(".*.tmp"))
