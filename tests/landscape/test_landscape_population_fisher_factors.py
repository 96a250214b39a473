"""The population Fisher's per-layer factorisation equals the per-model reference and an explicit Jacobian."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from zooscape import landscape as ls
from zooscape.landscape.population import _build, _plain_layers
from zooscape.landscape.population_fisher import population_fisher_trace_estimate
from zooscape.landscape.population_fisher_factors import FactorGrams, NotFactorable, _weight_gram, factor_layers
from zooscape.models.cnn_s import cnn_s

D64 = torch.float64


def _mlp(seed, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 7, bias=bias), nn.ReLU(), nn.Linear(7, 5, bias=bias),
                         nn.Tanh(), nn.Linear(5, 4)).double()


def _bn_cnn(seed):
    """Conv -> BN -> pool -> conv to a 1x1 map (the ghost form) -> Linear; BN with non-trivial running stats."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(),
                      nn.Linear(5, 4))
    with torch.no_grad():
        for bn in (m[1], m[8]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    return m.double()


def _ln_mlp(seed):
    """LayerNorm in the stacked layout (an MLP), one without bias."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(6, 7), nn.LayerNorm(7), nn.ReLU(), nn.Linear(7, 5),
                      nn.LayerNorm(5, bias=False), nn.Tanh(), nn.Linear(5, 4))
    with torch.no_grad():
        for ln in (m[2], m[5]):
            ln.weight.normal_()
    return m.double()


def _norm_cnn(seed):
    """GroupNorm, LayerNorm over (C, H, W) and over features, in the channel layout."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 3, 2), nn.LayerNorm((3, 3, 3)),
                      nn.Tanh(), nn.Flatten(), nn.Linear(27, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 4))
    with torch.no_grad():
        for norm in (m[1], m[4], m[8]):
            norm.weight.normal_()
            norm.bias.normal_()
    return m.double()


def _cnn_s(seed):
    torch.manual_seed(seed)
    return cnn_s(num_classes=10, in_channels=1, input_size=28, activation="relu", dropout=0.0).double()


FAMILIES = {"mlp": (_mlp, (6,), 4), "mlp_nobias": (lambda s: _mlp(s, bias=False), (2, 3), 4),
            "bn_cnn": (_bn_cnn, (2, 6, 6), 4), "cnn_s": (_cnn_s, (1, 28, 28), 10), "ln_mlp": (_ln_mlp, (6,), 4),
            "norm_cnn": (_norm_cnn, (2, 6, 6), 4)}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    make, shape, classes = FAMILIES[request.param]
    models = [make(s) for s in range(3)]
    for m in models:
        m.train()
    g = torch.Generator().manual_seed(1)
    n = 5 if request.param == "cnn_s" else 9
    x = torch.randn(n, *shape, generator=g, dtype=D64)
    return models, x, torch.randint(0, classes, (n,), generator=g), classes


def test_every_family_is_covered(family):
    models = family[0]
    pop, names, _, _ = _build(models, None, None)
    assert factor_layers(pop, names) is not None


def test_grams_equal_an_explicit_jacobian(family):
    models, x, _, k = family
    pop, names, _, _ = _build(models, None, None)
    fac = FactorGrams(pop, factor_layers(pop, names), budget=700)  # a small budget: several sample chunks
    with _plain_layers():
        out, gram = fac(x)
    assert gram.shape == (x.shape[0], len(models), k, k)
    for n, m in enumerate(models):
        m.eval()
        params = {k2: v.detach() for k2, v in m.named_parameters()}
        jac = jacrev(lambda p, m=m: functional_call(m, p, (x,)))(params)  # {name: [b, K, *shape]}
        flat = torch.cat([j.reshape(x.shape[0], k, -1) for j in jac.values()], dim=2)
        torch.testing.assert_close(gram[:, n], flat @ flat.transpose(1, 2), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out[:, n], m(x).detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,num_samples", [("empirical", 1), ("sampled", 3), ("sampled", 12), ("exact", 1)])
def test_categorical_traces_equal_the_per_model_reference(family, kind, num_samples):
    models, x, y, _ = family
    got = population_fisher_trace_estimate(models, x, y, kind=kind, num_samples=num_samples, batch_size=4, seed=3,
                                           method="factors")
    for n, m in enumerate(models):
        ref = ls.fisher_trace_estimate(m, x, y, kind=kind, num_samples=num_samples, batch_size=4, seed=3)
        torch.testing.assert_close(got[n].samples, ref.samples, rtol=1e-9, atol=1e-12)
        assert got[n].estimate == pytest.approx(ref.estimate, rel=1e-9)
        assert got[n].std_error == pytest.approx(ref.std_error, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("kind,num_samples", [("sampled", 2), ("sampled", 11), ("exact", 1), ("empirical", 1)])
def test_gaussian_traces_equal_the_per_model_reference(family, kind, num_samples):
    models, x, _, k = family
    y = torch.randn(x.shape[0], k, generator=torch.Generator().manual_seed(2), dtype=D64)
    got = population_fisher_trace_estimate(models, x, y, kind=kind, likelihood="gaussian", num_samples=num_samples,
                                           seed=4, method="factors")
    jac = population_fisher_trace_estimate(models, x, y, kind=kind, likelihood="gaussian", num_samples=num_samples,
                                           seed=4, method="jacobian")
    for n, m in enumerate(models):
        ref = ls.fisher_trace_estimate(m, x, y, kind=kind, likelihood="gaussian", num_samples=num_samples, seed=4)
        torch.testing.assert_close(got[n].samples, ref.samples, rtol=1e-9, atol=1e-12)
        assert jac[n].estimate == pytest.approx(got[n].estimate, rel=1e-9)


@pytest.mark.parametrize("form", ["ghost", "dense"])
def test_ghost_and_dense_forms_equal_explicit_per_sample_gradients(form):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 4, generator=g, dtype=D64)  # [B, T, D_in]
    d = torch.randn(3, 2, 6, 5, generator=g, dtype=D64)  # [B, M, D_out, T]
    for bias in (False, True):
        grads = torch.einsum("bmot,bti->bmoi", d, a).reshape(3, 2, -1)
        if bias:
            grads = torch.cat([grads, d.sum(3)], dim=2)
        torch.testing.assert_close(_weight_gram(a, d, bias, form), grads @ grads.transpose(1, 2))


class _Twice(nn.Module):
    """One Linear applied twice (tied weights): not a per-layer factorisation."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(torch.tanh(self.hidden(x)))))


def _grouped(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 1, groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).double()


def _frozen(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    m[0].bias.requires_grad_(False)
    return m


def _twice(seed):
    torch.manual_seed(seed)
    return _Twice().double()


def _batch_stats(seed):
    """BatchNorm without running statistics normalises with each call's batch: samples are not independent."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, affine=False, track_running_stats=False),
                         nn.Flatten(), nn.Linear(8, 3)).double()


@pytest.mark.parametrize("make", [_grouped, _frozen, _twice, _batch_stats])
def test_uncovered_populations_fall_back_to_the_jacobian_path(make):
    models = [make(s) for s in range(2)]
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 4, generator=g, dtype=D64), torch.randint(0, 3, (6,), generator=g)
    if make is _batch_stats:
        x = x.view(6, 1, 2, 2)
    if make is _grouped:
        x = x.view(6, 2, 1, 2)
    got = population_fisher_trace_estimate(models, x, y, kind="exact", seed=0)
    jac = population_fisher_trace_estimate(models, x, y, kind="exact", seed=0, method="jacobian")
    for n, m in enumerate(models):
        assert got[n].estimate == jac[n].estimate  # the automatic choice is the Jacobian path
        if make is not _batch_stats:  # (batch statistics: the population's forward normalises over the batch,
            # the per-model reference over each sample alone -- a limit of the Jacobian path, not tested here)
            ref = ls.fisher_trace_estimate(m, x, y, kind="exact", seed=0)
            assert got[n].estimate == pytest.approx(ref.estimate, rel=1e-9)
    with pytest.raises(NotFactorable):
        population_fisher_trace_estimate(models, x, y, kind="exact", seed=0, method="factors")
    with pytest.raises(ValueError, match="method must be one of"):
        population_fisher_trace_estimate(models, x, y, method="fast")
