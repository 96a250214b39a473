"""Features, ridge regression and the linear classifier against closed forms and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from zooscape.predict import (
    DEFAULT_ALPHAS,
    LinearClassifier,
    RidgeRegression,
    fit_classifier,
    fit_ridge,
    make_features,
    quantiles,
    r2_score,
    weight_stats,
)
from zooscape.zoo.weights import IndexMap, ParamSlot


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("m", [1, 2, 7, 100])
def test_quantiles_match_numpy(m):
    x = torch.randn(5, m, generator=gen(m), dtype=torch.float64)
    q = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0]
    expected = np.percentile(x.numpy(), [100 * v for v in q], axis=1).T
    np.testing.assert_allclose(quantiles(x, q).numpy(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="quantiles"):
        quantiles(x, [1.5])


def test_weight_stats_per_parameter_match_numpy():
    imap = IndexMap([ParamSlot("a.weight", (3, 4), 0, 0, "a", "linear", "weight"),
                     ParamSlot("a.bias", (3,), 0, 0, "a", "linear", "bias"),
                     ParamSlot("b.weight", (1,), 0, 0, "b", "other", "weight")])
    w = torch.randn(6, imap.size, generator=gen(0), dtype=torch.float64)
    feats, names = weight_stats(w, imap)
    assert feats.shape == (6, 21) and names[:2] == ["a.weight:mean", "a.weight:var"] and names[-1] == "b.weight:p99"
    for j, s in enumerate(imap):
        block = w[:, s.offset:s.stop].numpy()
        expected = np.concatenate([block.mean(1, keepdims=True), block.var(1, keepdims=True),
                                   np.percentile(block, [1, 25, 50, 75, 99], axis=1).T], axis=1)
        np.testing.assert_allclose(feats[:, 7 * j:7 * j + 7].numpy(), expected, atol=1e-12)
    raw, raw_names = make_features(w, imap, "w")
    assert raw is w and len(raw_names) == imap.size and raw_names[12] == "a.bias[0]"
    with pytest.raises(ValueError, match="feature kind"):
        make_features(w, imap, "pca")


def test_r2_closed_forms():
    y = torch.tensor([1.0, 2.0, 4.0, 7.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, torch.full_like(y, float(y.mean()))) == pytest.approx(0.0, abs=1e-12)
    pred = torch.tensor([2.0, 2.0, 3.0, 8.0])
    assert r2_score(y, pred) == pytest.approx(1 - 3.0 / 4 / float(y.var(correction=0)))
    assert math.isnan(r2_score(torch.ones(3), torch.zeros(3)))


@pytest.mark.parametrize("n,d", [(40, 5), (12, 30)])
def test_ridge_matches_sklearn_on_standardised_features(n, d):
    x = torch.randn(n, d, generator=gen(1), dtype=torch.float64) * torch.linspace(0.1, 5, d, dtype=torch.float64) + 3
    y = x[:, 0] - 2 * x[:, 1] + 0.1 * torch.randn(n, generator=gen(2), dtype=torch.float64)
    for alpha in (1e-3, 1.0, 100.0):
        ours = RidgeRegression(alpha).fit(x, y)
        z = (x - x.mean(0)) / x.std(0, correction=0)
        sk = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(z.numpy(), y.numpy())
        np.testing.assert_allclose(ours.predict(x).numpy(), sk.predict(z.numpy()), atol=1e-8)
        np.testing.assert_allclose((ours.coef_ * x.std(0, correction=0)).numpy(), sk.coef_, atol=1e-8)


def test_fit_ridge_picks_the_best_validation_penalty():
    x = torch.randn(30, 8, generator=gen(3))
    y = x @ torch.randn(8, generator=gen(4)) + torch.randn(30, generator=gen(5))
    xv, yv = torch.randn(15, 8, generator=gen(6)), torch.randn(15, generator=gen(7))
    model, scores = fit_ridge(x, y, xv, yv)
    brute = [RidgeRegression(a).fit(x, y).score(xv, yv) for a in DEFAULT_ALPHAS]
    np.testing.assert_allclose(scores, brute, atol=1e-9)
    assert model.alpha == DEFAULT_ALPHAS[int(np.argmax(brute))]
    assert len(DEFAULT_ALPHAS) == 17 and DEFAULT_ALPHAS[0] == 1e3 and DEFAULT_ALPHAS[-1] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="validation"):
        fit_ridge(x, y, xv[:0], yv[:0])


@pytest.mark.parametrize("n,d", [(60, 4), (20, 40)])
def test_classifier_matches_sklearn_logistic_regression(n, d):
    x = torch.randn(n, d, generator=gen(8), dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(n, generator=gen(9), dtype=torch.float64) > 0).long() + (x[:, 1] > 1).long()
    alpha = 0.1
    ours = LinearClassifier(3, alpha, max_iter=500).fit(x, y)
    z = (x - x.mean(0)) / x.std(0, correction=0)
    sk = LogisticRegression(C=1.0 / (alpha * n), tol=1e-10, max_iter=5000).fit(z.numpy(), y.numpy())
    p_ours = torch.softmax(ours.decision_function(x), 1).numpy()
    np.testing.assert_allclose(p_ours, sk.predict_proba(z.numpy()), atol=1e-4)


def test_fit_classifier_separates_and_selects_on_validation():
    centers = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    y = torch.arange(3).repeat(20)
    x = centers[y] + 0.5 * torch.randn(60, 2, generator=gen(10))
    yv = torch.arange(3).repeat(5)
    xv = centers[yv] + 0.5 * torch.randn(15, 2, generator=gen(11))
    clf, scores = fit_classifier(x, y, xv, yv, 3)
    assert clf.score(x, y) == 1.0 and clf.score(xv, yv) == 1.0
    assert max(scores) == 1.0 and clf.alpha == max(a for a, s in zip(DEFAULT_ALPHAS, scores) if s == 1.0)
    with pytest.raises(ValueError, match="labels"):
        LinearClassifier(2).fit(x, y)
