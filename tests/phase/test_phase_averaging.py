"""Model averaging and soups (zooscape.phase.averaging): closed forms and invariances."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zooscape.align import Permutation, apply_permutation, permutation_spec
from zooscape.connect.bn import recompute_bn_stats
from zooscape.models import create_model
from zooscape.phase import average_models, average_states, epoch_average, greedy_soup, uniform_soup


def _mlp(seed: int, norm: str = "bn", width: int = 12) -> nn.Module:
    model = create_model("mlp", seed=seed, num_classes=3, in_channels=1, input_size=6, activation="relu",
                         dropout=0.0, depth=2, width=width, norm=norm)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for t in model.state_dict().values():  # biases and BN statistics away from their defaults
            if torch.is_floating_point(t):
                t.add_(0.3 * torch.randn(t.shape, generator=g))
                if t.dim() == 1:
                    t.abs_()
    return model.eval()


def _data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _bn_reference(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Slow path: BN statistics of one full-batch train-mode forward (momentum 1 = the batch statistics)."""
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = 1.0
            m.train()
    with torch.no_grad():
        ref(x)
    return {k: v for k, v in ref.state_dict().items() if "running" in k}


@pytest.mark.parametrize("align", ["none", "weight"])
def test_average_of_identical_models_is_that_model(align):
    model = _mlp(0)
    avg = average_models([copy.deepcopy(model) for _ in range(3)], align=align)
    _assert_same_state(avg, model)
    x, _ = _data()
    with_bn = average_models([copy.deepcopy(model) for _ in range(3)], align=align, bn_data=x, batch_size=1000)
    expected = recompute_bn_stats(copy.deepcopy(model), x, batch_size=1000)
    for k, v in expected.state_dict().items():
        torch.testing.assert_close(with_bn.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_epoch_average_of_constant_trajectory_is_exact():
    model = _mlp(1)
    states = [copy.deepcopy(model.state_dict()) for _ in range(5)]
    _assert_same_state(epoch_average(_mlp(7), states), model)


def test_every_parameter_and_buffer_is_averaged_or_reestimated():
    models = [_mlp(s) for s in range(3)]
    x, _ = _data()
    avg = average_models(models, align="none", bn_data=x, batch_size=1000).state_dict()
    states = [m.state_dict() for m in models]
    bn_ref = _bn_reference(_with_state(models[0], avg), x)
    covered = set()
    for key, value in avg.items():
        if "running" in key:
            torch.testing.assert_close(value, bn_ref[key], rtol=1e-5, atol=1e-6, msg=key)
            assert not torch.allclose(value, states[0][key]), key
            covered.add(key)
        elif key.endswith("num_batches_tracked"):
            assert int(value) == 1  # one pass of one batch
            covered.add(key)
        else:
            mean = sum(s[key].double() for s in states) / 3
            torch.testing.assert_close(value.double(), mean, rtol=1e-6, atol=1e-7, msg=key)
            assert not torch.allclose(value, states[0][key]), key  # really changed (biases included)
            covered.add(key)
    assert covered == set(avg)
    assert any(k.endswith(".bias") for k in covered) and any("running_var" in k for k in covered)


def _with_state(template: nn.Module, state: dict) -> nn.Module:
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model


def test_weighted_states_and_key_errors():
    a, b = _mlp(0, norm="none"), _mlp(1, norm="none")
    avg = average_states(a, [a.state_dict(), b.state_dict()], weights=[3, 1]).state_dict()
    for k, v in avg.items():
        torch.testing.assert_close(v, 0.75 * a.state_dict()[k] + 0.25 * b.state_dict()[k])
    with pytest.raises(ValueError, match="keys differ"):
        average_states(a, [{"x": torch.zeros(1)}])
    with pytest.raises(ValueError, match="align"):
        average_models([a, b], align="activation")


def test_aligned_average_of_a_model_and_its_permutation_is_the_model():
    model = _mlp(2, norm="none", width=8)
    x, _ = _data()
    spec = permutation_spec(model, x[:2])
    g = torch.Generator().manual_seed(5)
    perm = Permutation(spec, {name: torch.randperm(n, generator=g) for name, n in spec.group_sizes.items()})
    twin = apply_permutation(model, perm, spec)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))
    aligned = average_models([model, twin], align="weight", bn_data=x)
    naive = average_models([model, twin], align="none")
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), model(x), rtol=1e-5, atol=1e-5)
        assert (naive(x) - model(x)).abs().max() > 1e-2


def test_soup_of_one_model_is_the_model():
    model = _mlp(3)
    x, y = _data()
    _assert_same_state(uniform_soup([model], bn_data=x), model)
    res = greedy_soup([model], x, y, bn_data=x)
    _assert_same_state(res.model, model)
    assert res.ingredients == [0]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def test_greedy_soup_never_below_its_best_ingredient():
    x, y = _data(256, seed=1)
    xv, yv = _data(128, seed=2)
    base = _train(_mlp(4), x, y, 60, seed=0)
    # fine-tuned variants of one model (soups' setting) plus a far-away model that should be rejected
    models = [_train(copy.deepcopy(base), x, y, 10 * (i + 1), seed=i + 1) for i in range(3)] + [_mlp(9)]
    res = greedy_soup(models, xv, yv, bn_data=x)
    with torch.no_grad():
        soup_acc = (res.model(xv).argmax(1) == yv).double().mean().item()
    assert soup_acc == pytest.approx(res.accuracy)
    assert res.accuracy >= max(res.accuracies)
    assert res.ingredients[0] == res.order[0] == max(range(4), key=lambda i: (res.accuracies[i], -i))
    assert len(res.history) == 3
