"""Tests for zooscape.landscape.surface: filter normalisation, closed-form curves, a slow oracle, PCA, PNGs."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zooscape.landscape.surface import (
    loss_surface,
    loss_surface_1d,
    loss_surface_2d,
    loss_surface_pca,
    normalize_direction,
    plot_surface,
    random_direction,
    trajectory_pca,
)

D64 = torch.float64


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))


def test_filter_normalisation_and_bias_bn_handling():
    model = _cnn()
    params = dict(model.named_parameters())
    d = random_direction(model, seed=1)
    assert set(d) == set(params)
    for name in ["0.weight", "4.weight"]:
        dn = d[name].reshape(d[name].shape[0], -1).norm(dim=1)
        pn = params[name].detach().reshape(params[name].shape[0], -1).norm(dim=1)
        torch.testing.assert_close(dn, pn, rtol=1e-5, atol=1e-6)
    for name in ["0.bias", "1.weight", "1.bias", "4.bias"]:
        assert torch.count_nonzero(d[name]) == 0
    kept = random_direction(model, ignore_bias_bn=False, seed=1)
    for name in ["0.bias", "1.weight", "4.bias"]:
        assert float(kept[name].norm()) == pytest.approx(float(params[name].detach().norm()), rel=1e-5)
    layer = random_direction(model, normalization="layer", seed=1)
    assert float(layer["4.weight"].norm()) == pytest.approx(float(params["4.weight"].detach().norm()), rel=1e-5)
    raw = random_direction(model, normalization="none", ignore_bias_bn=False, seed=1)
    assert float(raw["4.weight"].norm()) != pytest.approx(float(params["4.weight"].detach().norm()), rel=1e-2)
    with pytest.raises(ValueError, match="normalization"):
        normalize_direction(raw, params, normalization="unit")
    with pytest.raises(KeyError, match="0.weight"):
        normalize_direction({}, params)


def test_1d_curve_of_linear_regression_is_the_exact_quadratic():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=g, dtype=D64)
    y = torch.randn(40, 1, generator=g, dtype=D64)
    model = nn.Linear(3, 1).double()
    d = {"weight": torch.randn(1, 3, generator=g, dtype=D64), "bias": torch.randn(1, generator=g, dtype=D64)}
    alphas = torch.linspace(-2, 2, 9, dtype=D64)
    surf = loss_surface_1d(model, F.mse_loss, x, y, direction=d, coords=alphas, batch_size=15)
    xa = torch.cat([x, torch.ones(40, 1, dtype=D64)], 1)
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    dv = torch.cat([d["weight"].reshape(-1), d["bias"]])
    expected = torch.stack([((xa @ (theta + a * dv)) - y[:, 0]).pow(2).mean() for a in alphas])
    torch.testing.assert_close(surf.losses, expected)
    assert surf.ndim == 1 and surf.losses.shape == (9,)


def test_2d_surface_matches_slow_copy_and_load_oracle_and_model_is_untouched():
    model = _cnn()
    model.train()
    model[1].running_mean.uniform_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(24, 1, 6, 6), torch.randint(0, 4, (24,))
    surf = loss_surface_2d(model, F.cross_entropy, x, y, n_points=4, span=(-0.5, 0.5), seed=3,
                           points_per_call=5, batch_size=10)
    assert surf.losses.shape == (4, 4)
    d1, d2 = surf.directions
    for i, a in enumerate(surf.coords[0]):
        for j, b in enumerate(surf.coords[1]):
            probe = copy.deepcopy(model).eval()
            with torch.no_grad():
                for n, p in probe.named_parameters():
                    p.add_(float(a) * d1[n] + float(b) * d2[n])
                expected = F.cross_entropy(probe(x), y)
            assert float(surf.losses[i, j]) == pytest.approx(float(expected), rel=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.training and model[1].training


def test_surface_centre_is_model_loss_and_validation():
    model = _cnn()
    x, y = torch.randn(10, 1, 6, 6), torch.randint(0, 4, (10,))
    surf = loss_surface_1d(model, F.cross_entropy, x, y, n_points=5)
    with torch.no_grad():
        model.eval()
        centre = float(F.cross_entropy(model(x), y))
    assert float(surf.losses[2]) == pytest.approx(centre, rel=1e-6)
    d = random_direction(model)
    with pytest.raises(ValueError, match="1 or 2 directions"):
        loss_surface(model, F.cross_entropy, x, y, [d, d, d], [torch.zeros(1)] * 3)
    with pytest.raises(ValueError, match="grid points"):
        loss_surface_1d(model, F.cross_entropy, x, y, n_points=1)


def _planar_trajectory():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    u = {k: torch.randn_like(v) for k, v in final.items()}
    w = {k: torch.randn_like(v) for k, v in final.items()}
    steps = [(2.0, 1.0), (1.5, -0.5), (1.0, 0.4), (0.3, 0.2), (0.0, 0.0)]
    traj = [{k: final[k] + a * u[k] + b * w[k] for k in final} for a, b in steps]
    return model, traj


def test_trajectory_pca_of_planar_path():
    model, traj = _planar_trajectory()
    pca = trajectory_pca(traj)
    torch.testing.assert_close(pca.explained_variance_ratio.sum(), torch.tensor(1.0), rtol=0, atol=1e-5)
    # distances between trajectory points are preserved by the projection onto the plane
    flat = torch.stack([torch.cat([s[k].reshape(-1) for k in traj[-1]]) for s in traj]).double()
    torch.testing.assert_close(torch.cdist(pca.coords.double(), pca.coords.double()), torch.cdist(flat, flat),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pca.coords[-1], torch.zeros(2), atol=1e-5, rtol=0)
    d1, d2 = pca.directions
    v1 = torch.cat([t.reshape(-1) for t in d1.values()])
    v2 = torch.cat([t.reshape(-1) for t in d2.values()])
    assert float(v1 @ v2) == pytest.approx(0.0, abs=1e-5)
    assert float(v1.norm()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="at least 3"):
        trajectory_pca(traj[:2])
    with pytest.raises(ValueError, match="does not move"):
        trajectory_pca([traj[0]] * 3)


def test_pca_surface_and_png_output(tmp_path):
    model, traj = _planar_trajectory()
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    surf = loss_surface_pca(model, F.cross_entropy, x, y, traj, n_points=5)
    assert surf.losses.shape == (5, 5) and surf.trajectory.shape == (5, 2)
    for k in range(2):  # the grid covers the projected trajectory
        assert float(surf.coords[k].min()) <= float(surf.trajectory[:, k].min())
        assert float(surf.coords[k].max()) >= float(surf.trajectory[:, k].max())
    out = plot_surface(surf, tmp_path / "pca.png", title="pca", log_scale=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = loss_surface_1d(model, F.cross_entropy, x, y, n_points=7)
    assert plot_surface(line, tmp_path / "line.png").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.png", "pca.png"]  # no temp files left
    with pytest.raises(ValueError, match=".png"):
        plot_surface(line, tmp_path / "line.jpg")
    with pytest.raises(FileNotFoundError, match="missing"):
        plot_surface(line, tmp_path / "missing" / "x.png")


def test_old_parameter_names_warn_and_still_work():
    model = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with pytest.warns(DeprecationWarning) as record:
        old = loss_surface_1d(model, F.cross_entropy, x, y, num_points=3, generator=1)
    assert {str(w.message).split("(")[1].split("=")[0] for w in record} == {"num_points", "generator"}
    new = loss_surface_1d(model, F.cross_entropy, x, y, n_points=3, seed=1)
    assert torch.equal(old.losses, new.losses)
