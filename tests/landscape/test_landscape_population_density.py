"""Population spectral density (SLQ) equals the per-model ``spectral_density`` of every model."""

import pytest
import torch
import torch.nn.functional as F
from test_landscape_population import FAMILIES, _data

from zooscape import landscape as ls
from zooscape.landscape import population_hessian_operator, population_spectral_density


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("num_probes,num_steps", [(1, 10), (3, 8)])
def test_population_density_equals_the_per_model_path(name, num_probes, num_steps):
    make, shape = FAMILIES[name]
    models = [make(s) for s in range(3)]
    x, y = _data(shape)
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    got = population_spectral_density(op, num_steps=num_steps, num_probes=num_probes, seed=5)
    assert len(got) == 3
    for n, m in enumerate(models):
        single = ls.hessian_operator(m, F.cross_entropy, x, y)
        ref = ls.spectral_density(single, num_steps=num_steps, num_probes=num_probes, seed=5)
        assert got[n].nodes.shape == ref.nodes.shape == (num_probes, min(num_steps, single.dim))
        torch.testing.assert_close(got[n].weights, ref.weights, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(got[n].nodes, ref.nodes, rtol=1e-7, atol=1e-9)
        assert got[n].dim == ref.dim
        assert got[n].trace() == pytest.approx(ref.trace(), rel=1e-7)
    # the models differ, so their densities do
    assert not torch.allclose(got[0].nodes, got[1].nodes)


def test_population_density_with_full_krylov_gives_each_models_eigenvalues():
    """With num_steps = P the Ritz values are the exact eigenvalues of each model's own (dense) Hessian."""
    make, shape = FAMILIES["bn_mlp"]
    models = [make(s) for s in range(2)]
    x, y = _data(shape)
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    got = population_spectral_density(op, num_steps=op.dim, seed=0)
    for n, m in enumerate(models):
        eig = torch.linalg.eigvalsh(ls.dense_matrix(ls.hessian_operator(m, F.cross_entropy, x, y)))
        nodes = got[n].nodes[0][got[n].weights[0] > 1e-10]
        for v in nodes:  # every node with weight is an eigenvalue
            assert float((eig - v).abs().min()) < 1e-6 * max(1.0, float(eig.abs().max()))
    with pytest.raises(ValueError, match="num_probes"):
        population_spectral_density(op, num_probes=0)
