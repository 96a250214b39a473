"""The plain population forward of the Hessian (``landscape.population_plain``) equals the per-model path and the
trainer's population layers: MLP, BatchNorm CNN, CNN-s, float64 and float32, and falls back where it must."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zooscape import landscape as ls
from zooscape.landscape.population import population_hessian_operator, population_top_eigenvalues, population_trace
from zooscape.landscape.population_plain import has_plain_form, hessian_forward
from zooscape.models.cnn_s import cnn_s
from zooscape.models.mlp import MLP
from zooscape.train.population import Population

D64 = torch.float64


def _mlp(seed):
    torch.manual_seed(seed)
    return MLP(12, 5, 2, 7, "relu", 0.0, True, "none").double()


def _bn_cnn(seed):  # padding, stride, a BatchNorm with running statistics, two pools, no bias on one conv
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(3, 4, 2, stride=2, bias=False), nn.Tanh(), nn.AvgPool2d(1), nn.Flatten(),
                      nn.Linear(4 * 2 * 2, 6), nn.BatchNorm1d(6), nn.GELU(), nn.Dropout(0.3), nn.Linear(6, 5))
    with torch.no_grad():
        for bn in (m[1], m[9]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m.double()


def _cnn_s(seed):
    torch.manual_seed(seed)
    return cnn_s(num_classes=5, in_channels=1, input_size=20, activation="tanh", dropout=0.0).double()


def _data(shape, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=D64), torch.randint(0, 5, (n,), generator=g)


FAMILIES = {"mlp": (_mlp, (3, 4)), "bn_cnn": (_bn_cnn, (2, 8, 8)), "cnn_s": (_cnn_s, (1, 20, 20))}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_plain_products_equal_the_per_model_and_population_layers(name):
    make, shape = FAMILIES[name]
    models = [make(s) for s in range(3)]
    x, y = _data(shape)
    plain = population_hessian_operator(models, F.cross_entropy, x, y, layers="plain")
    layers = population_hessian_operator(models, F.cross_entropy, x, y, layers="population")
    assert (plain.layers, layers.layers) == ("plain", "population")
    assert population_hessian_operator(models, F.cross_entropy, x, y).layers == "plain"  # auto
    v = torch.randn(2, 3, plain.dim, dtype=D64, generator=torch.Generator().manual_seed(1))
    got = plain.matmat(v)
    torch.testing.assert_close(got, layers.matmat(v), rtol=1e-10, atol=1e-12)
    for n, m in enumerate(models):
        single = ls.hessian_operator(m, F.cross_entropy, x, y)
        torch.testing.assert_close(got[1, n], single.matvec(v[1, n]), rtol=1e-10, atol=1e-12)
        assert float(plain.loss()[n]) == pytest.approx(float(single.loss()), rel=1e-12)
        torch.testing.assert_close(plain.gradient()[n], single.gradient(), rtol=1e-10, atol=1e-12)
    # chunked data: the first convolution's cached im2col must follow the chunk
    chunked = population_hessian_operator(models, F.cross_entropy, x, y, batch_size=4, layers="plain")
    torch.testing.assert_close(chunked.matmat(v), got, rtol=1e-10, atol=1e-12)


def test_cnn_s_float32_eigenvalues_and_traces_equal_the_per_model_path():
    models = [_cnn_s(s).float() for s in range(2)]
    x, y = _data((1, 20, 20), n=16)
    x = x.float()
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    assert op.layers == "plain"
    eig = population_top_eigenvalues(op, 1, num_steps=8, seed=2)
    tr = population_trace(op, method="hutch++", num_matvecs=9, seed=3)
    for n, m in enumerate(models):
        single = ls.hessian_operator(m, F.cross_entropy, x, y)
        ref = ls.top_eigenvalues(single, 1, num_steps=8, seed=2)
        torch.testing.assert_close(eig[n].eigenvalues, ref.eigenvalues, rtol=1e-4, atol=1e-5)
        assert tr[n].estimate == pytest.approx(ls.trace(single, method="hutch++", num_matvecs=9, seed=3).estimate,
                                               rel=1e-4, abs=1e-5)


class _Residual(nn.Module):  # leaves in registration order, but a skip connection: not a chain
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x)) + x)


class _Odd(nn.Module):  # a leaf without a plain form
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


@pytest.mark.parametrize("cls,structural", [(_Residual, True), (_Odd, False)])
def test_architectures_without_a_plain_chain_keep_the_population_layers(cls, structural):
    models = [cls().double() for _ in range(2)]
    x = torch.randn(6, 4, dtype=D64)
    y = torch.randint(0, 3, (6,))
    assert has_plain_form(models[0]) is structural  # the residual net passes the structural test ...
    op = population_hessian_operator(models, F.cross_entropy, x, y)
    assert op.layers == "population"  # ... and fails the check against the population's forward
    with pytest.raises(ValueError, match="no plain population network"):
        population_hessian_operator(models, F.cross_entropy, x, y, layers="plain")
    v = torch.randn(2, op.dim, dtype=D64)
    single = ls.hessian_operator(models[1], F.cross_entropy, x, y)
    torch.testing.assert_close(op.matvec(v)[1], single.matvec(v[1]), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="layers must be one of"):
        hessian_forward(Population(models).eval(), x, "grouped")


def test_chunk_size_keeps_one_population_activation_under_the_tensor_limit():
    from zooscape.landscape.population import population_chunk_size

    model = _cnn_s(0)
    x, _ = _data((1, 20, 20), n=32)
    largest = 32 * 8 * 16 * 16 * 8  # the first convolution's output, float64
    assert population_chunk_size(model, x, budget=2**40, tensor_limit=None) == 64
    assert population_chunk_size(model, x, budget=2**40, tensor_limit=5 * largest) == 5
    assert population_chunk_size(model, x, budget=2**40, tensor_limit=1) == 1
