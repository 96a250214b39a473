"""Tests for zooscape.landscape.hessian: closed forms, a dense oracle and side-effect freedom."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zooscape.landscape.hessian import (
    DenseOperator,
    dense_matrix,
    hessian_operator,
    lanczos,
    lanczos_eigenvalues,
    power_iteration,
    top_eigenvalues,
)
from zooscape.landscape.stochastic import hutchinson_trace, hutchpp_trace, spectral_density, trace

D64 = torch.float64


def _spd_with_spectrum(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=D64))
    return q @ torch.diag(torch.tensor(eigs, dtype=D64)) @ q.T, q


class Quadratic(nn.Module):
    """Output is the parameter vector itself: with loss 1/2 t^T A t + b^T t the Hessian is A."""

    def __init__(self, dim):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(dim, dtype=D64))

    def forward(self, x):
        return self.theta.expand(x.shape[0], -1)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _flat_params_hessian(model, x, y, loss_fn):
    """Independent oracle: torch.autograd.functional.hessian on a flat parameter vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(v):
        tensors, i = {}, 0
        for n, s in zip(names, shapes):
            k = s.numel()
            tensors[n] = v[i:i + k].reshape(s)
            i += k
        return loss_fn(torch.func.functional_call(model, tensors, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


def test_quadratic_hessian_is_a():
    a, _ = _spd_with_spectrum([5.0, 3.0, 1.0, 0.5, -0.2, -2.0])
    b = torch.arange(6, dtype=D64)
    model = Quadratic(6)
    loss = lambda out, _y: 0.5 * out[0] @ a @ out[0] + b @ out[0]
    op = hessian_operator(model, loss, torch.zeros(1, 1, dtype=D64), torch.zeros(1, dtype=D64))
    v = torch.randn(4, 6, dtype=D64)
    torch.testing.assert_close(op.matmat(v), v @ a)
    torch.testing.assert_close(dense_matrix(op), a)
    # gradient of the quadratic: A t + b
    torch.testing.assert_close(op.gradient(), a @ model.theta.detach() + b)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_regression_hessian_closed_form_and_full_data_weighting(bias):
    g = torch.Generator().manual_seed(1)
    n, d = 30, 4
    x = torch.randn(n, d, generator=g, dtype=D64)
    y = torch.randn(n, 1, generator=g, dtype=D64)
    model = nn.Linear(d, 1, bias=bias).double()
    xa = torch.cat([x, torch.ones(n, 1, dtype=D64)], 1) if bias else x
    expected = 2.0 / n * xa.T @ xa
    one = dense_matrix(hessian_operator(model, F.mse_loss, x, y))
    torch.testing.assert_close(one, expected)
    # chunks of unequal size (7, 7, 7, 7, 2) must be weighted by their sample counts
    full = dense_matrix(hessian_operator(model, F.mse_loss, x, y, batch_size=7))
    torch.testing.assert_close(full, expected)
    # an unweighted mean of chunk Hessians would be wrong: make sure the test can tell
    chunks = [2.0 / len(c) * c.T @ c for c in xa.split(7)]
    assert not torch.allclose(sum(chunks) / len(chunks), expected)


@pytest.mark.parametrize("mode", ["rev-rev", "fwd-rev"])
def test_dense_hessian_of_tiny_network_matches_autograd(mode):
    model = _tiny_net()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 3, generator=g, dtype=D64)
    y = torch.randint(0, 3, (16,), generator=g)
    expected = _flat_params_hessian(model, x, y, F.cross_entropy)
    got = dense_matrix(hessian_operator(model, F.cross_entropy, x, y, mode=mode), chunk_size=5)
    torch.testing.assert_close(got, expected)
    # exact full-data Hessian through chunks
    got_chunked = dense_matrix(hessian_operator(model, F.cross_entropy, x, y, batch_size=5, mode=mode))
    torch.testing.assert_close(got_chunked, expected)


def test_float32_model_with_float64_compute():
    model = _tiny_net().float()
    x = torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    op = hessian_operator(model, F.cross_entropy, x, y, dtype=D64)
    assert op.dtype == D64
    expected = _flat_params_hessian(model.double(), x.double(), y, F.cross_entropy)
    torch.testing.assert_close(dense_matrix(op), expected)


def test_param_names_restricts_the_hessian_block():
    model = _tiny_net()
    x = torch.randn(10, 3, dtype=D64)
    y = torch.randint(0, 3, (10,))
    full = dense_matrix(hessian_operator(model, F.cross_entropy, x, y))
    block = dense_matrix(hessian_operator(model, F.cross_entropy, x, y, param_names=["2.weight", "2.bias"]))
    start = 4 * 3 + 4  # first layer weight + bias
    torch.testing.assert_close(block, full[start:, start:])
    with pytest.raises(KeyError, match="nope"):
        hessian_operator(model, F.cross_entropy, x, y, param_names=["nope"])


def test_no_side_effects_on_batchnorm_model():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2))
    model.train()
    model[1].running_mean.uniform_()
    model[0].bias.requires_grad_(False)
    calls = []
    handle = model[0].register_forward_hook(lambda *a: calls.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m, m.training) for m in model.modules()]
    x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
    op = hessian_operator(model, F.cross_entropy, x, y)
    assert op.dim == sum(p.numel() for p in model.parameters() if p.requires_grad)
    top_eigenvalues(op, k=2)
    trace(op, num_matvecs=6, block_size=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training == f for m, f in flags)
    assert model[0].bias.requires_grad is False and model[0].weight.requires_grad is True
    assert all(p.grad is None for p in model.parameters())
    assert len(model[0]._forward_hooks) == 1 and calls  # the user's hook is still there (and ran)
    handle.remove()
    # computed in eval mode although the model is in train mode: Dropout is off (deterministic products) and
    # BatchNorm uses its running statistics (the Hessian equals that of the model in eval mode)
    v = torch.randn(3, op.dim)
    torch.testing.assert_close(op.matmat(v), op.matmat(v), rtol=0, atol=0)
    model.eval()
    torch.testing.assert_close(op.matmat(v), hessian_operator(model, F.cross_entropy, x, y).matmat(v))
    assert model[1].training is False


def test_top_eigenvalues_lanczos_and_power_on_known_spectrum():
    eigs = [10.0, 7.0, 4.0, 1.0, 0.5, 0.1, -0.3, -1.0]
    a, q = _spd_with_spectrum(eigs, seed=4)
    op = DenseOperator(a)
    res = lanczos_eigenvalues(op, k=3, tol=1e-8)
    torch.testing.assert_close(res.eigenvalues, torch.tensor(eigs[:3], dtype=D64))
    assert res.converged and res.num_matvecs == 8 + 3  # the Krylov steps + one product per Ritz vector
    # eigenvectors match up to sign, and the residuals are the true ||Av - lambda v||
    for i in range(3):
        assert abs(float(res.eigenvectors[i] @ q[:, i])) == pytest.approx(1.0, abs=1e-8)
        r = (a @ res.eigenvectors[i] - res.eigenvalues[i] * res.eigenvectors[i]).norm()
        assert float(res.residuals[i]) == pytest.approx(float(r), rel=1e-6, abs=1e-13)
    low = lanczos_eigenvalues(op, k=2, which="SA")
    torch.testing.assert_close(low.eigenvalues, torch.tensor([-1.0, -0.3], dtype=D64))
    pw = power_iteration(op, k=2, max_iter=500, tol=1e-10)
    torch.testing.assert_close(pw.eigenvalues, torch.tensor([10.0, 7.0], dtype=D64), rtol=1e-6, atol=1e-6)
    assert pw.converged
    via = top_eigenvalues(op, k=1, method="power", max_iter=500, tol=1e-10)
    assert float(via.eigenvalues[0]) == pytest.approx(10.0, rel=1e-6)


def test_power_iteration_finds_largest_magnitude_and_lanczos_la_does_not():
    a, _ = _spd_with_spectrum([-9.0, 3.0, 2.0, 1.0], seed=5)
    op = DenseOperator(a)
    pw = power_iteration(op, max_iter=1000, tol=1e-12)
    assert float(pw.eigenvalues[0]) == pytest.approx(-9.0, rel=1e-6)
    assert float(lanczos_eigenvalues(op).eigenvalues[0]) == pytest.approx(3.0, rel=1e-8)
    assert float(lanczos_eigenvalues(op, which="LM").eigenvalues[0]) == pytest.approx(-9.0, rel=1e-8)


def test_lanczos_top_eigenvalue_of_network_hessian_matches_dense():
    model = _tiny_net()
    x = torch.randn(32, 3, dtype=D64)
    y = torch.randint(0, 3, (32,))
    op = hessian_operator(model, F.cross_entropy, x, y)
    exact = torch.linalg.eigvalsh(dense_matrix(op))
    res = top_eigenvalues(op, k=3, num_steps=op.dim)
    torch.testing.assert_close(res.eigenvalues, exact.flip(0)[:3])


def test_slq_with_dim_steps_recovers_exact_eigenvalues():
    eigs = [4.0, 2.5, 1.0, 0.25, -0.5, -3.0, 6.0, 0.1, 0.0, 1.5]
    a, _ = _spd_with_spectrum(eigs, seed=6)
    dens = spectral_density(DenseOperator(a), num_steps=10, num_probes=3)
    for i in range(3):
        torch.testing.assert_close(dens.nodes[i], torch.tensor(sorted(eigs), dtype=D64), atol=1e-9, rtol=0)
        assert float(dens.weights[i].sum()) == pytest.approx(1.0, abs=1e-12)
    grid = torch.linspace(-5, 8, 4001)
    integral = float(torch.trapezoid(dens.evaluate(grid, sigma=0.05), grid.double()))
    assert integral == pytest.approx(1.0, abs=1e-3)
    assert dens.eigenvalue_range() == pytest.approx((-3.0, 6.0))


def test_lanczos_stops_early_on_invariant_subspace():
    a = torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 3.0], dtype=D64))
    run = lanczos(DenseOperator(a), 6, num_runs=2)
    assert run.lengths.tolist() == [3, 3]
    theta, _ = run.ritz(1)
    torch.testing.assert_close(theta, torch.tensor([1.0, 2.0, 3.0], dtype=D64))
    dens = spectral_density(DenseOperator(a), num_steps=6, num_probes=2)
    assert not torch.isnan(dens.nodes).any()
    # Rademacher probes: weights are the eigenspace masses 3/6, 2/6, 1/6
    torch.testing.assert_close(dens.weights[0, :3], torch.tensor([0.5, 1 / 3, 1 / 6], dtype=D64))


def test_hutchinson_exact_on_diagonal_and_unbiased_on_dense():
    diag = DenseOperator(torch.diag(torch.arange(1.0, 21.0, dtype=D64)))
    est = hutchinson_trace(diag, num_probes=8, block_size=3)
    assert est.estimate == pytest.approx(210.0) and est.std_error == pytest.approx(0.0, abs=1e-9)
    assert est.num_matvecs == 8 and est.samples.shape == (8,)
    a, _ = _spd_with_spectrum([float(i) for i in range(1, 31)], seed=7)
    a = a + 0.5 * torch.ones(30, 30, dtype=D64)  # off-diagonal mass makes the estimator noisy
    est = hutchinson_trace(DenseOperator(a), num_probes=400, block_size=50, seed=3)
    true = float(torch.trace(a))
    assert est.std_error > 0
    assert abs(est.estimate - true) < 4 * est.std_error
    early = hutchinson_trace(DenseOperator(a), num_probes=400, tol=0.02, seed=3)
    assert early.num_matvecs < 400 and early.std_error <= 0.02 * abs(early.estimate)


def test_hutchpp_exact_for_low_rank_and_beats_hutchinson_on_decaying_spectrum():
    g = torch.Generator().manual_seed(8)
    u = torch.randn(50, 3, generator=g, dtype=D64)
    low_rank = u @ u.T
    est = hutchpp_trace(DenseOperator(low_rank), num_matvecs=12)
    assert est.estimate == pytest.approx(float(torch.trace(low_rank)), rel=1e-9)
    assert est.std_error == pytest.approx(0.0, abs=1e-6)
    a, _ = _spd_with_spectrum([100.0 * 0.5 ** i for i in range(60)], seed=9)
    true = float(torch.trace(a))
    errs_pp = [abs(hutchpp_trace(DenseOperator(a), num_matvecs=30, seed=s).estimate - true) for s in range(10)]
    errs_h = [abs(trace(DenseOperator(a), num_matvecs=30, seed=s).estimate - true) for s in range(10)]
    assert sum(errs_pp) < 0.1 * sum(errs_h)
    via = trace(DenseOperator(a), method="hutch++", num_matvecs=30)
    assert via.num_matvecs == 30


def test_input_validation():
    model = _tiny_net()
    x, y = torch.randn(5, 3, dtype=D64), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match="samples"):
        hessian_operator(model, F.cross_entropy, x, y[:4])
    with pytest.raises(ValueError, match="mode"):
        hessian_operator(model, F.cross_entropy, x, y, mode="bogus")
    with pytest.raises(ValueError, match="batch_size"):
        hessian_operator(model, F.cross_entropy, x, y, batch_size=0)
    op = hessian_operator(model, F.cross_entropy, x, y)
    with pytest.raises(ValueError, match=r"\[m, 31\]"):
        op.matmat(torch.zeros(2, 7, dtype=D64))
    with pytest.raises(ValueError, match="scalar"):
        hessian_operator(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), x, y).matvec(
            torch.zeros(op.dim, dtype=D64))
    with pytest.raises(ValueError, match="method"):
        top_eigenvalues(op, method="qr")
    with pytest.raises(ValueError, match="k must"):
        top_eigenvalues(op, k=0)
    with pytest.raises(ValueError, match="symmetric"):
        DenseOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="num_probes"):
        hutchinson_trace(op, num_probes=1)
    assert math.isfinite(float(op.loss()))


def test_float32_lanczos_residual_is_the_true_residual_and_bounds_the_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))  # float32
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 5, (64,))
    h = dense_matrix(hessian_operator(model, F.cross_entropy, x, y, dtype=D64))  # the truth
    exact = torch.linalg.eigvalsh(h).flip(0)
    op = hessian_operator(model, F.cross_entropy, x, y)
    for steps in (10, 20, 40):
        res = lanczos_eigenvalues(op, k=2, num_steps=steps, seed=1)
        assert res.num_matvecs == steps + 2
        v = res.eigenvectors.double()
        true_residual = (v @ h - res.eigenvalues.double()[:, None] * v).norm(dim=1)
        ratio = res.residuals.double() / true_residual
        assert bool(((ratio > 0.1) & (ratio < 10)).all()), (steps, ratio)
        # the residual bounds the distance to the spectrum (here: the eigenvalue error, the pairs being isolated)
        errors = (res.eigenvalues.double() - exact[:2]).abs()
        assert bool((errors <= res.residuals.double() * 1.01 + 1e-7).all()), (steps, errors, res.residuals)
    # the Ritz estimate |beta_m s_mi| that was stored before underflows far below the real residual in float32
    run = lanczos(op, 40, seed=1)
    theta, s = run.ritz(0)
    ritz_estimate = float(run.residual[0]) * float(s[-1, -1].abs())
    assert ritz_estimate < 1e-3 * float(true_residual[0])


def test_hutchinson_standard_error_is_calibrated_over_seeds():
    a, _ = _spd_with_spectrum([float(i) for i in range(1, 41)], seed=10)
    a = a + 0.3 * torch.ones(40, 40, dtype=D64)
    runs = [hutchinson_trace(DenseOperator(a), num_probes=50, seed=s) for s in range(100)]
    values = torch.tensor([r.estimate for r in runs], dtype=D64)
    reported = float(torch.tensor([r.std_error for r in runs], dtype=D64).pow(2).mean().sqrt())
    assert 1 / 1.3 < reported / float(values.std()) < 1.3
    assert abs(float(values.mean()) - float(torch.trace(a))) < 4 * reported / 10
