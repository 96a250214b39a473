"""Tests for zooscape.landscape.spectra: power-law MLE, KS search, closed-form norms and conv slicing."""

import math

import pytest
import torch
from torch import nn

from zooscape.landscape.spectra import (
    esd,
    fit_power_law,
    layer_spectrum,
    spectra_summary,
    weight_matrices,
    weight_spectra,
)

D64 = torch.float64


def _pareto(n, alpha, xmin, seed):
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=D64)
    return xmin * (1 - u).pow(-1 / (alpha - 1))


def _slow_fit(x, min_tail=2):
    """Independent slow path: a Python loop over candidate xmin values."""
    x = sorted(float(v) for v in x if v > 0)
    best = None
    for j, xmin in enumerate(x):
        if j > 0 and x[j - 1] == xmin:
            continue
        tail = x[j:]
        m = len(tail)
        if m < min_tail:
            break
        s = sum(math.log(v / xmin) for v in tail)
        if s <= 0:
            continue
        alpha = 1 + m / s
        d = 0.0
        for k, v in enumerate(tail):
            cdf = 1 - (v / xmin) ** (1 - alpha)
            d = max(d, abs(cdf - (k + 1) / m), abs(cdf - k / m))
        if best is None or d < best[2]:
            best = (alpha, xmin, d, m)
    return best


def test_power_law_mle_recovers_alpha():
    x = _pareto(4000, alpha=3.0, xmin=0.5, seed=0)
    fit = fit_power_law(x)
    assert fit.alpha == pytest.approx(3.0, abs=0.15)
    fixed = fit_power_law(x, xmin=0.5)
    assert fixed.num_tail == 4000
    expected = 1 + 4000 / float(torch.log(x / 0.5).sum())
    assert fixed.alpha == pytest.approx(expected, rel=1e-12)


def test_power_law_ks_search_matches_slow_loop():
    g = torch.Generator().manual_seed(1)
    body = torch.rand(150, generator=g, dtype=D64)  # a non-power-law bulk below a Pareto tail
    x = torch.cat([body, _pareto(60, alpha=2.5, xmin=1.0, seed=2), torch.tensor([0.3, 0.3], dtype=D64)])
    fit = fit_power_law(x)
    alpha, xmin, d, m = _slow_fit(x.tolist())
    assert fit.alpha == pytest.approx(alpha, rel=1e-10)
    assert fit.xmin == pytest.approx(xmin, rel=1e-12)
    assert fit.ks_distance == pytest.approx(d, rel=1e-10)
    assert fit.num_tail == m
    assert fit.xmin > 0.5  # the search skips the uniform bulk
    strict = fit_power_law(x, min_tail=50)
    assert strict.num_tail >= 50 and strict.alpha == pytest.approx(_slow_fit(x.tolist(), 50)[0], rel=1e-10)


def test_degenerate_samples_give_nan():
    assert math.isnan(fit_power_law(torch.ones(20)).alpha)
    assert math.isnan(fit_power_law(torch.tensor([1.0])).alpha)
    assert math.isnan(fit_power_law(torch.tensor([-1.0, 0.0, -2.0])).alpha)
    with pytest.raises(ValueError, match="min_tail"):
        fit_power_law(torch.ones(5), min_tail=1)
    with pytest.raises(ValueError, match="xmin"):
        fit_power_law(torch.ones(5), xmin=-1.0)


def test_scaled_orthogonal_matrix_closed_forms():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(40, 24, generator=g, dtype=D64))  # 40 x 24, orthonormal columns
    s = 1.7
    spec = layer_spectrum(s * q, "w")
    torch.testing.assert_close(spec.eigenvalues, torch.full((24,), s * s, dtype=D64))
    assert spec.stable_rank == pytest.approx(24.0)
    assert spec.log_norm == pytest.approx(math.log10(24 * s * s))
    assert spec.log_spectral_norm == pytest.approx(math.log10(s * s))
    assert math.isnan(spec.alpha)  # all eigenvalues equal: no power law
    assert (spec.n, spec.m, spec.num_matrices, spec.skipped) == (40, 24, 1, False)


def test_metrics_relations_on_random_matrix():
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(4))
    spec = layer_spectrum(w)
    assert math.isfinite(spec.alpha) and spec.alpha > 1
    lam = torch.linalg.svdvals(w.double()).pow(2)
    assert spec.alpha_weighted == pytest.approx(spec.alpha * math.log10(float(lam.max())))
    assert spec.log_alpha_norm == pytest.approx(math.log10(float(lam.pow(spec.alpha).sum())))
    assert spec.log_norm == pytest.approx(2 * math.log10(float(w.double().norm())))
    assert spec.stable_rank == pytest.approx(float(lam.sum() / lam.max()))


def test_conv_slices_are_pooled():
    torch.manual_seed(5)
    conv = nn.Conv2d(12, 16, 3)
    ev = esd(conv.weight)
    w = conv.weight.detach().double()
    slices = [torch.linalg.svdvals(w[:, :, i, j]).pow(2) for i in range(3) for j in range(3)]
    torch.testing.assert_close(ev, torch.sort(torch.cat(slices)).values)
    spec = layer_spectrum(conv.weight)
    assert (spec.num_matrices, spec.n, spec.m, spec.eigenvalues.numel()) == (9, 16, 12, 108)
    one_by_one = nn.Conv2d(12, 16, 1)
    torch.testing.assert_close(esd(one_by_one.weight), esd(one_by_one.weight[:, :, 0, 0]))
    with pytest.raises(ValueError, match="shape"):
        esd(torch.zeros(3))


def test_weight_spectra_on_model_and_state_dict_and_summary():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 32), nn.BatchNorm1d(32),
                          nn.Linear(32, 20))
    from_model = weight_spectra(model)
    assert [s.name for s in from_model] == ["0", "3", "5"]
    assert from_model[0].skipped  # conv slices are 4 x 1: fewer than min_evals eigenvalues each
    from_sd = weight_spectra(model.state_dict())
    assert [s.name for s in from_sd] == ["0", "3", "5"]
    for a, b in zip(from_model, from_sd):
        torch.testing.assert_close(a.eigenvalues, b.eigenvalues)
    summary = spectra_summary(from_model)
    assert summary["num_layers"] == 2.0
    assert summary["log_norm"] == pytest.approx((from_model[1].log_norm + from_model[2].log_norm) / 2)
    assert set(from_model[1].as_dict()) >= {"alpha", "stable_rank", "log_norm", "name"}
    only = weight_spectra(model, layers=["5"])
    assert len(only) == 1 and only[0].name == "5"
    with pytest.raises(KeyError, match="4"):
        weight_matrices(model, ["4"])  # BatchNorm has no weight matrix
    with pytest.raises(TypeError):
        weight_matrices([1, 2])
    all_skipped = spectra_summary(weight_spectra(model, min_evals=1000))
    assert math.isnan(all_skipped["alpha"]) and all_skipped["num_layers"] == 0.0
