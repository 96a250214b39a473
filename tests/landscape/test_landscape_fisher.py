"""Tests for zooscape.landscape.fisher: closed forms, the Hessian identity for linear models, a slow loop."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zooscape.landscape.fisher import fisher_diagonal, fisher_trace, fisher_trace_estimate
from zooscape.landscape.hessian import dense_matrix, hessian_operator

D64 = torch.float64


def _flat(d):
    return torch.cat([t.reshape(-1) for t in d.values()])


def test_exact_categorical_fisher_equals_hessian_diagonal_for_linear_softmax():
    # For a model linear in its parameters, the cross-entropy Hessian equals the GGN, which equals the Fisher.
    torch.manual_seed(0)
    model = nn.Linear(5, 4).double()
    x = torch.randn(40, 5, dtype=D64)
    y = torch.randint(0, 4, (40,))
    fisher = _flat(fisher_diagonal(model, x, kind="exact", batch_size=16))
    hess = torch.diagonal(dense_matrix(hessian_operator(model, F.cross_entropy, x, y)))
    torch.testing.assert_close(fisher, hess)


def test_exact_gaussian_fisher_closed_form_for_linear_regression():
    torch.manual_seed(1)
    model = nn.Linear(3, 2).double()
    x = torch.randn(25, 3, dtype=D64)
    diag = fisher_diagonal(model, x, kind="exact", likelihood="gaussian")
    # g for W_oi is x_i * (f_o - y_o) with E(f_o - y_o)^2 = 1  ->  F_(oi) = mean x_i^2 ; bias -> 1
    torch.testing.assert_close(diag["weight"], x.pow(2).mean(0).expand(2, 3))
    torch.testing.assert_close(diag["bias"], torch.ones(2, dtype=D64))


def _net():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def test_empirical_fisher_matches_slow_per_sample_autograd_loop():
    model = _net()
    x = torch.randn(17, 4, dtype=D64)
    y = torch.randint(0, 3, (17,))
    got = fisher_diagonal(model, x, y, kind="empirical", batch_size=5)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(17):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad.pow(2) / 17
    model.zero_grad(set_to_none=True)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n])


def test_sampled_fisher_converges_to_exact():
    model = _net()
    x = torch.randn(12, 4, dtype=D64)
    exact = fisher_trace(model, x, kind="exact")
    sampled = fisher_trace(model, x, kind="sampled", num_samples=400, seed=1)
    assert sampled == pytest.approx(exact, rel=0.05)
    one = fisher_trace(model, x, kind="sampled", num_samples=1, seed=1)
    assert one != pytest.approx(exact, rel=1e-6)  # a single draw is noisy: the test can tell the two apart
    g_exact = fisher_trace(model, x, kind="exact", likelihood="gaussian")
    g_sampled = fisher_trace(model, x, kind="sampled", likelihood="gaussian", num_samples=400, seed=2)
    assert g_sampled == pytest.approx(g_exact, rel=0.05)


def test_trace_is_sum_of_diagonal_and_param_names():
    model = _net()
    x = torch.randn(9, 4, dtype=D64)
    diag = fisher_diagonal(model, x, kind="exact")
    assert fisher_trace(model, x, kind="exact") == pytest.approx(float(sum(t.sum() for t in diag.values())))
    part = fisher_diagonal(model, x, kind="exact", param_names=["2.weight"])
    assert list(part) == ["2.weight"]
    torch.testing.assert_close(part["2.weight"], diag["2.weight"])


def test_no_side_effects_and_eval_mode():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    a = fisher_diagonal(model, x, y, kind="empirical")
    b = fisher_diagonal(model, x, y, kind="empirical")
    for n in a:  # dropout is off: deterministic
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=0)
    assert model.training and model[3].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_input_validation():
    model = _net()
    x = torch.randn(4, 4, dtype=D64)
    with pytest.raises(ValueError, match="labels y"):
        fisher_diagonal(model, x, kind="empirical")
    with pytest.raises(ValueError, match="kind"):
        fisher_diagonal(model, x, kind="true")
    with pytest.raises(ValueError, match="likelihood"):
        fisher_diagonal(model, x, likelihood="poisson")
    with pytest.raises(ValueError, match="num_samples"):
        fisher_diagonal(model, x, num_samples=0)


def _confident_net():
    """A classifier with peaked predictions, where label draws are heavy-tailed (the hard case for the SE)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    with torch.no_grad():
        model[2].weight.mul_(4.0)
    return model


def test_sampled_fisher_standard_error_is_calibrated_over_seeds():
    model = _confident_net()
    x = torch.randn(48, 4, dtype=D64, generator=torch.Generator().manual_seed(5))
    exact = fisher_trace_estimate(model, x, kind="exact")
    assert exact.std_error == 0.0 and exact.num_draws == 1 and exact.samples.shape == (48, 1)
    assert exact.estimate == pytest.approx(fisher_trace(model, x, kind="exact"))
    runs = [fisher_trace_estimate(model, x, kind="sampled", num_samples=8, seed=s) for s in range(60)]
    values = torch.tensor([r.estimate for r in runs], dtype=D64)
    empirical = float(values.std())
    reported = float(torch.tensor([r.std_error for r in runs]).pow(2).mean().sqrt())
    assert 1 / 1.5 < reported / empirical < 1.5  # the SE matches the spread across seeds
    # the seeds scatter around the exact (noise-free) trace by the reported error
    assert abs(float(values.mean()) - exact.estimate) < 4 * reported / math.sqrt(60)
    assert runs[0].samples.shape == (48, 8) and runs[0].estimate == pytest.approx(float(runs[0].samples.mean()))
    # one draw per input: the within-input variance is not identifiable; the reported SE is conservative
    ones = [fisher_trace_estimate(model, x, kind="sampled", num_samples=1, seed=s) for s in range(60)]
    spread = float(torch.tensor([r.estimate for r in ones], dtype=D64).std())
    assert float(torch.tensor([r.std_error for r in ones]).mean()) >= 0.8 * spread
