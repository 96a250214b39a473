"""init_weights statistics, get_activation and count_parameters of zooscape.models."""

import math

import pytest
import torch
from torch import nn

from zooscape.models import INIT_SCHEMES, create_model, get_activation, init_weights
from zooscape.models.params import count_parameters


def _big_linear():
    return nn.Sequential(nn.Linear(1000, 400), nn.Conv2d(64, 200, 3))  # fan_in 1000 and 576


@pytest.mark.parametrize(
    ("scheme", "std_fn"),
    [
        ("kaiming_normal", lambda fi, fo: math.sqrt(2 / fi)),
        ("kaiming_uniform", lambda fi, fo: math.sqrt(6 / fi) / math.sqrt(3)),
        ("xavier_normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
        ("xavier_uniform", lambda fi, fo: math.sqrt(6 / (fi + fo)) / math.sqrt(3)),
        ("default", lambda fi, fo: 1 / math.sqrt(fi) / math.sqrt(3)),
        ("normal", lambda fi, fo: 1.0),
    ],
)
def test_init_weight_std_matches_closed_form(scheme, std_fn):
    model = init_weights(_big_linear(), scheme, torch.Generator().manual_seed(0))
    linear, conv = model[0], model[1]
    for weight, fan_in, fan_out in ((linear.weight, 1000, 400), (conv.weight, 64 * 9, 200 * 9)):
        expected = std_fn(fan_in, fan_out)
        assert weight.std().item() == pytest.approx(expected, rel=0.02)
        assert abs(weight.mean().item()) < 0.02 * expected


@pytest.mark.parametrize(("scheme", "bound_fn"), [("kaiming_uniform", lambda fi: math.sqrt(6 / fi)),
                                                  ("default", lambda fi: 1 / math.sqrt(fi))])
def test_uniform_schemes_respect_their_bound(scheme, bound_fn):
    weight = init_weights(_big_linear(), scheme, torch.Generator().manual_seed(1))[0].weight
    bound = bound_fn(1000)
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() > 0.99 * bound


def test_model_zoos_uniform_is_unit_interval_and_normal_is_standard():
    gen = torch.Generator().manual_seed(2)
    w = init_weights(_big_linear(), "uniform", gen)[0].weight
    assert w.min().item() >= 0.0 and w.max().item() <= 1.0
    assert w.mean().item() == pytest.approx(0.5, abs=0.01)
    assert w.min().item() < 0.01 and w.max().item() > 0.99
    n = init_weights(_big_linear(), "normal", gen)[0].weight
    assert n.mean().item() == pytest.approx(0.0, abs=0.01)


def test_biases_constant_and_norm_layers_reset():
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.LayerNorm(6), nn.GroupNorm(2, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(2, 3)
    model[1].running_mean.fill_(4.0)
    init_weights(model, "kaiming_normal")
    assert torch.all(model[0].bias == 0)
    for norm in model[1:]:
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    assert torch.all(model[1].running_mean == 0) and torch.all(model[1].running_var == 1)
    init_weights(model, "xavier_uniform", bias=0.01)
    assert torch.allclose(model[0].bias, torch.full((6,), 0.01))


def test_model_zoos_families_use_bias_001_and_others_zero():
    cnn = create_model("cnn_s", init="kaiming_uniform", seed=0)
    mlp = create_model("mlp", width=8, init="kaiming_uniform", seed=0)
    biases = [m.bias for m in cnn.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(biases) == 5 and all(torch.allclose(b, torch.full_like(b, 0.01)) for b in biases)
    assert all(torch.all(m.bias == 0) for m in mlp.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("layer_fn", [lambda: nn.Linear(20, 30), lambda: nn.Conv2d(3, 8, 5)])
def test_default_scheme_reproduces_pytorch_reset_parameters(layer_fn):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        reference = layer_fn()
    layer = layer_fn()
    init_weights(layer, "default", torch.Generator().manual_seed(9))
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)


def test_generator_makes_init_deterministic_and_keeps_global_rng():
    a = init_weights(_big_linear(), "xavier_normal", torch.Generator().manual_seed(3))
    b = init_weights(_big_linear(), "xavier_normal", torch.Generator().manual_seed(3))
    c = init_weights(_big_linear(), "xavier_normal", torch.Generator().manual_seed(4))
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[1].weight, b[1].weight)
    assert not torch.equal(a[0].weight, c[0].weight)
    state = torch.get_rng_state()
    init_weights(a, "kaiming_normal", torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    init_weights(a, "kaiming_normal")  # without a generator the global RNG is used
    assert not torch.equal(torch.get_rng_state(), state)


def test_init_schemes_and_errors():
    assert set(INIT_SCHEMES) == {"default", "uniform", "normal", "kaiming_uniform", "kaiming_normal",
                                 "xavier_uniform", "xavier_normal"}
    assert init_weights(nn.Linear(2, 2), None) is not None
    with pytest.raises(ValueError, match="glorot"):
        init_weights(nn.Linear(2, 2), "glorot")
    with pytest.raises(ValueError, match="generator"):
        init_weights(nn.Linear(2, 2), "normal", generator=3)
    with pytest.raises(ValueError, match="model"):
        init_weights("not a model", "normal")


@pytest.mark.parametrize(
    ("name", "cls"),
    [("relu", nn.ReLU), ("leakyrelu", nn.LeakyReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid),
     ("gelu", nn.GELU), ("silu", nn.SiLU)],
)
def test_get_activation_returns_fresh_instances(name, cls):
    a, b = get_activation(name), get_activation(name)
    assert type(a) is cls and a is not b
    assert not getattr(a, "inplace", False)
    x = torch.linspace(-3, 3, 13)
    reference = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                 "leakyrelu": lambda t: torch.where(t > 0, t, 0.01 * t),
                 "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2))),
                 "silu": lambda t: t * torch.sigmoid(t)}[name]
    torch.testing.assert_close(a(x), reference(x))


def test_get_activation_unknown():
    with pytest.raises(ValueError, match="'softplus'.*relu"):
        get_activation("softplus")


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    assert count_parameters(model) == 3 * 4 + 4 + 2 * 4 + 4 * 2
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 4 + 8 + 8
    shared = nn.Linear(2, 2)
    assert count_parameters(nn.Sequential(shared, shared)) == 6
    with pytest.raises(ValueError, match="model"):
        count_parameters([1, 2])
