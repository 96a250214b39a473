"""Population Hessian/Fisher metrics equal the per-model path, model by model (BatchNorm and CNNs included)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zooscape import landscape as ls
from zooscape.landscape.population import (
    population_chunks,
    population_hessian_operator,
    population_top_eigenvalues,
    population_trace,
)
from zooscape.landscape.population_fisher import population_fisher_trace_estimate
from zooscape.models.cnn_s import cnn_s

D64 = torch.float64


def _bn_cnn(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                      nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    with torch.no_grad():  # non-trivial running statistics: eval mode must use them, not the batch's
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
    return m.double()


def _bn_mlp(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 5))
    with torch.no_grad():
        m[2].running_mean.normal_()
        m[2].running_var.uniform_(0.5, 2.0)
    return m.double()


def _data(shape, n=24, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=D64), torch.randint(0, classes, (n,), generator=g)


FAMILIES = {"bn_cnn": (_bn_cnn, (1, 10, 10)), "bn_mlp": (_bn_mlp, (12,))}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    make, shape = FAMILIES[request.param]
    models = [make(s) for s in range(3)]
    for m in models:
        m.train()  # the metrics must switch to eval mode themselves (and restore nothing: they use copies)
    return models, _data(shape)


def test_products_losses_and_gradients_are_each_models_own(family):
    models, (x, y) = family
    before = [copy.deepcopy(m.state_dict()) for m in models]
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    singles = [ls.hessian_operator(m, F.cross_entropy, x, y) for m in models]
    assert (op.size, op.dim) == (3, singles[0].dim)
    v = torch.randn(3, op.dim, dtype=D64, generator=torch.Generator().manual_seed(1))
    hv = op.matvec(v)
    block = op.matmat(torch.stack([v, 2 * v]))
    for n, s in enumerate(singles):
        torch.testing.assert_close(hv[n], s.matvec(v[n]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(block[1, n], 2 * s.matvec(v[n]), rtol=1e-10, atol=1e-12)
        assert float(op.loss()[n]) == pytest.approx(float(s.loss()), rel=1e-12)
        torch.testing.assert_close(op.gradient()[n], s.gradient(), rtol=1e-10, atol=1e-12)
    # block-diagonal: model 0's vector does not reach model 1's product
    w = v.clone()
    w[0] = 0
    torch.testing.assert_close(op.matvec(w)[1:], hv[1:])
    assert torch.all(op.matvec(w)[0] == 0)
    # chunked data (no cached graph) gives the same full-data Hessian
    chunked = population_hessian_operator(models, F.cross_entropy, x, y, batch_size=7)
    torch.testing.assert_close(chunked.matvec(v), hv, rtol=1e-10, atol=1e-12)
    for m, sd in zip(models, before):  # nothing changed: weights, BN statistics, train flags
        assert m.training
        for k, t in m.state_dict().items():
            assert torch.equal(t, sd[k])


def test_dense_blocks_match_an_independent_hessian(family):
    models, (x, y) = family
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    eye = torch.eye(op.dim, dtype=D64)
    blocks = op.matmat(eye[:, None].expand(op.dim, 3, op.dim))  # [P, N, P]
    for n, m in enumerate(models):
        dense = ls.dense_matrix(ls.hessian_operator(m, F.cross_entropy, x, y))
        torch.testing.assert_close(blocks[:, n], dense, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_equal_the_per_model_path(family, method):
    models, (x, y) = family
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    got = population_top_eigenvalues(op, 2, method=method, num_steps=12, max_iter=40, seed=3)
    assert len(got) == 3
    for n, m in enumerate(models):
        ref = ls.top_eigenvalues(ls.hessian_operator(m, F.cross_entropy, x, y), 2, method=method, num_steps=12,
                                 max_iter=40, seed=3)
        torch.testing.assert_close(got[n].eigenvalues, ref.eigenvalues, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(got[n].residuals, ref.residuals, rtol=1e-4, atol=1e-9)
        assert got[n].num_matvecs == ref.num_matvecs and got[n].converged == ref.converged
        overlap = (got[n].eigenvectors * ref.eigenvectors).sum(1).abs()
        torch.testing.assert_close(overlap, torch.ones(2, dtype=D64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method,kwargs", [("hutchinson", {"block_size": 4}), ("hutch++", {}),
                                           ("hutchinson", {"block_size": 2, "tol": 0.3, "min_probes": 4})])
def test_traces_equal_the_per_model_path(family, method, kwargs):
    models, (x, y) = family
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    got = population_trace(op, method=method, num_matvecs=18, seed=5, **kwargs)
    for n, m in enumerate(models):
        single = ls.hessian_operator(m, F.cross_entropy, x, y)
        if "tol" in kwargs:
            ref = ls.hutchinson_trace(single, num_probes=18, seed=5, **kwargs)
        else:
            ref = ls.trace(single, method=method, num_matvecs=18, seed=5, **kwargs)
        assert got[n].estimate == pytest.approx(ref.estimate, rel=1e-9)
        assert got[n].std_error == pytest.approx(ref.std_error, rel=1e-7)
        assert got[n].num_matvecs == ref.num_matvecs
    if "tol" in kwargs:  # early stops are per model (else the test proves nothing about them)
        assert len({t.num_matvecs for t in got}) > 1 or got[0].num_matvecs < 18


@pytest.mark.parametrize("kind,num_samples", [("empirical", 1), ("sampled", 1), ("sampled", 7), ("exact", 1)])
def test_fisher_traces_equal_the_per_model_path(family, kind, num_samples):
    models, (x, y) = family
    got = population_fisher_trace_estimate(models, x, y, kind=kind, num_samples=num_samples, batch_size=10, seed=2)
    for n, m in enumerate(models):
        ref = ls.fisher_trace_estimate(m, x, y, kind=kind, num_samples=num_samples, batch_size=10, seed=2)
        assert got[n].estimate == pytest.approx(ref.estimate, rel=1e-9)
        assert got[n].std_error == pytest.approx(ref.std_error, rel=1e-7, abs=1e-12)
        torch.testing.assert_close(got[n].samples, ref.samples, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind,num_samples", [("sampled", 2), ("sampled", 4), ("exact", 1)])
def test_gaussian_fisher_equals_the_per_model_path(kind, num_samples):
    models = []
    for s in range(2):
        torch.manual_seed(s)
        models.append(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double())
    x, _ = _data((4,), n=9)
    got = population_fisher_trace_estimate(models, x, kind=kind, likelihood="gaussian", num_samples=num_samples,
                                           seed=4)
    for n, m in enumerate(models):
        ref = ls.fisher_trace_estimate(m, x, kind=kind, likelihood="gaussian", num_samples=num_samples, seed=4)
        assert got[n].estimate == pytest.approx(ref.estimate, rel=1e-9)


def test_cnn_s_with_the_trainers_fast_paths_in_float32():
    """CNN-s (conv -> pool -> ReLU: fused pools and native kernels in training) in float32."""
    models = []
    for s in range(2):
        torch.manual_seed(s)
        models.append(cnn_s(num_classes=10, in_channels=1, input_size=28, activation="relu", dropout=0.0))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    eig = population_top_eigenvalues(op, 1, num_steps=8, seed=0)
    tr = population_trace(op, method="hutch++", num_matvecs=9, seed=1)
    fish = population_fisher_trace_estimate(models, x, y, num_samples=12, seed=0)
    for n, m in enumerate(models):
        single = ls.hessian_operator(m, F.cross_entropy, x, y)
        ref = ls.top_eigenvalues(single, 1, num_steps=8, seed=0)
        assert float(eig[n].eigenvalues[0]) == pytest.approx(float(ref.eigenvalues[0]), rel=1e-4)
        assert tr[n].estimate == pytest.approx(ls.trace(single, method="hutch++", num_matvecs=9, seed=1).estimate,
                                               rel=1e-4)
        assert fish[n].estimate == pytest.approx(ls.fisher_trace_estimate(m, x, y, num_samples=12, seed=0).estimate,
                                                 rel=1e-4)


def test_errors_and_chunks():
    assert population_chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="chunk size"):
        population_chunks([1], 0)
    x, y = _data((12,))
    with pytest.raises(ValueError, match="models is empty"):
        population_hessian_operator([], F.cross_entropy, x, y)
    with pytest.raises(ValueError, match=r"models\[1\] (has a different architecture|differentiates other)"):
        population_hessian_operator([_bn_mlp(0), _bn_cnn(0)], F.cross_entropy, x, y)
    op = population_hessian_operator([_bn_mlp(0), _bn_mlp(1)], F.cross_entropy, x, y)
    with pytest.raises(ValueError, match=r"vectors must have shape \[m, 2, "):
        op.matmat(torch.zeros(3, op.dim))
    with pytest.raises(TypeError, match="seed must be an int"):
        population_trace(op, seed=torch.Generator())
    with pytest.raises(ValueError, match="needs the labels"):
        population_fisher_trace_estimate([_bn_mlp(0)], x, kind="empirical")


def test_a_loss_vmap_cannot_batch_falls_back_to_the_per_model_loop(family):
    models, (x, y) = family

    def stubborn(out, target):  # .item() cannot be vmapped: the operator must loop over the models instead
        return F.cross_entropy(out, target) * (1.0 + 0.0 * float(out.sum().item()))

    op = population_hessian_operator(models, stubborn, x, y)
    ref = population_hessian_operator(models, F.cross_entropy, x, y)
    v = torch.randn(3, op.dim, dtype=D64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(op.matvec(v), ref.matvec(v), rtol=1e-10, atol=1e-12)
    assert op._vector_loss is False and ref._vector_loss is True


def test_memory_based_chunk_size_grows_with_the_budget_and_shrinks_with_the_data():
    from zooscape.landscape.population import population_chunk_size

    model = _bn_cnn(0)
    x, _ = _data((1, 10, 10), n=64)
    sizes = [population_chunk_size(model, x, budget=b) for b in (1, 2**20, 2**22, 2**40)]
    assert sizes[0] == 1 and sizes[-1] == 64 and sizes == sorted(sizes) and 1 < sizes[2] < 64
    assert population_chunk_size(model, x[:16], budget=2**22) > sizes[2]  # 4x fewer activations per model
    assert population_chunk_size(model, x, budget=2**40, limit=5) == 5
    assert model[1].training  # the estimate runs in eval mode and restores the flag
