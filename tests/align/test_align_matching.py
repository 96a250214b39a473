"""Weight matching and activation matching: exact recovery, optimality against brute force, API."""

from __future__ import annotations

import itertools

import pytest
import torch
from align_testlib import MLP, VGG, Exotic, inputs, randomize_bn, seeded, trained

from zooscape.align import (
    Permutation,
    activation_matching,
    apply_permutation,
    capture_activations,
    permutation_spec,
    permute_state_dict,
    weight_matching,
)
from zooscape.align.stats import unit_columns


def _objective(sd_a, sd_b, spec, perm) -> float:
    pb = permute_state_dict(sd_b, perm, spec)
    return sum(float((sd_a[k].double() * pb[k].double()).sum()) for k in spec.axes)


@pytest.mark.parametrize("kind", ["mlp", "vgg_bn", "resnet20"])
def test_weight_matching_recovers_a_random_permutation_exactly(kind):
    model = trained(kind)
    x, _ = inputs(kind)
    spec = permutation_spec(model, x[:2])
    for seed in range(3):
        perm = Permutation.random(spec, torch.Generator().manual_seed(seed))
        permuted = apply_permutation(model, perm)
        res = weight_matching(model, permuted, spec, seed=seed)
        assert res.perm == perm.inverse()
        assert res.iterations >= 2  # one improving sweep, one sweep without progress
        for k, v in model.state_dict().items():
            assert torch.equal(v, res.model.state_dict()[k]), k
        sd = model.state_dict()
        assert res.objective == pytest.approx(sum(float((sd[k].double() ** 2).sum()) for k in spec.axes))


@pytest.mark.parametrize("make", [lambda: VGG(4, "bn"), lambda: Exotic(6)], ids=["flatten_blocks", "exotic"])
def test_weight_matching_recovers_permutations_with_unit_blocks(make):
    model = randomize_bn(seeded(make, 0), seed=1)
    spec = permutation_spec(model, torch.randn(2, 1, 8, 8))
    assert any(ap is not None and ap.inner > 1 for axes in spec.axes.values() for ap in axes)
    perm = Permutation.random(spec, torch.Generator().manual_seed(5))
    res = weight_matching(model, apply_permutation(model, perm), spec)
    assert res.perm == perm.inverse()


@pytest.mark.parametrize("kind", ["mlp", "resnet20"])
def test_activation_matching_recovers_a_random_permutation_on_live_units(kind):
    model = trained(kind)
    x, xt = inputs(kind)
    spec = permutation_spec(model, x[:2])
    perm = Permutation.random(spec, torch.Generator().manual_seed(0))
    permuted = apply_permutation(model, perm)
    res = activation_matching(model, permuted, x[:600], spec, batch_size=200)
    names = {p.node for pts in spec.activation_points.values() for p in pts}
    acts = capture_activations(model.eval(), x[:600], names)
    inverse = perm.inverse()
    for g, pts in spec.activation_points.items():
        cols = torch.cat([unit_columns(acts[p.node], p.dim, spec.group_sizes[g], p.inner) for p in pts])
        live = cols.std(0) > 1e-6  # dead ReLUs carry no signal: any order of them is equally good
        assert live.sum() >= spec.group_sizes[g] // 2
        assert torch.equal(res.perm[g][live], inverse[g][live]), g
    with torch.no_grad():
        assert torch.allclose(res.model.eval()(xt), model(xt), atol=1e-5)
    if kind == "resnet20":  # BatchNorm nets have no dead channels here: the recovery is exact
        assert res.perm == inverse


def test_single_group_weight_matching_is_the_brute_force_optimum():
    a, b = seeded(lambda: MLP((5,)), 0), seeded(lambda: MLP((5,)), 1)
    spec = permutation_spec(a, torch.randn(2, 64))
    res = weight_matching(a, b, spec)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    best = max(_objective(sd_a, sd_b, spec, {"net.0": torch.tensor(p)}) for p in itertools.permutations(range(5)))
    assert res.objective == pytest.approx(best, rel=1e-12)
    assert _objective(sd_a, sd_b, spec, res.perm) == pytest.approx(best, rel=1e-12)


def test_weight_matching_ends_in_a_coordinatewise_optimum():
    a, b = seeded(lambda: MLP((4, 3, 4)), 0), seeded(lambda: MLP((4, 3, 4)), 1)
    spec = permutation_spec(a, torch.randn(2, 64))
    sd_a, sd_b = a.state_dict(), b.state_dict()
    res = weight_matching(a, b, spec, seed=0)
    final = _objective(sd_a, sd_b, spec, res.perm)
    assert final >= _objective(sd_a, sd_b, spec, Permutation.identity(spec)) - 1e-12
    for g, n in spec.group_sizes.items():  # no single-group change (others fixed) improves the objective
        for p in itertools.permutations(range(n)):
            trial = dict(res.perm.items())
            trial[g] = torch.tensor(p)
            assert _objective(sd_a, sd_b, spec, trial) <= final + 1e-9


def test_weight_matching_brings_independent_models_closer_without_changing_b():
    a, b = trained("mlp", 0), trained("mlp", 1)
    x, xt = inputs("mlp")
    res = weight_matching(a, b)  # spec inferred from model_a
    dist = lambda m: sum(float(((p - q) ** 2).sum()) for p, q in zip(a.state_dict().values(), m.state_dict().values()))  # noqa: E731
    assert dist(res.model) < 0.8 * dist(b)
    with torch.no_grad():
        assert torch.allclose(res.model(xt), b(xt), atol=1e-5)
    again = weight_matching(a, b, seed=0)
    assert again.perm == res.perm  # deterministic for a seed


def test_activation_matching_accepts_batches_and_matches_tensor_input():
    a, b = trained("mlp", 0), trained("mlp", 1)
    x, _ = inputs("mlp")
    spec = permutation_spec(a, x[:2])
    whole = activation_matching(a, b, x[:512], spec, batch_size=128)
    loader = [(x[i:min(i + 100, 512)], None) for i in range(0, 512, 100)]
    batched = activation_matching(a, b, loader)
    assert whole.perm == batched.perm
    assert whole.objective == pytest.approx(batched.objective, rel=1e-9)


def test_matching_errors():
    a = MLP((4,))
    spec = permutation_spec(a, torch.randn(2, 64))
    with pytest.raises(ValueError, match="model_b"):
        weight_matching(a, MLP((5,)), spec)
    with pytest.raises(ValueError, match="max_iter"):
        weight_matching(a, a, spec, max_iter=0)
    with pytest.raises(ValueError, match="data"):
        activation_matching(a, a, 3.0, spec)
    with pytest.raises(ValueError, match="no batches"):
        activation_matching(a, a, [], spec)


def test_activation_matching_runs_in_eval_mode_even_for_functional_dropout():
    class DropNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(64, 16), torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc2(torch.nn.functional.dropout(torch.tanh(self.fc1(x)), 0.9, self.training))

    model = seeded(DropNet, 0).train()
    spec = permutation_spec(model, torch.randn(2, 64))
    perm = Permutation.random(spec, torch.Generator().manual_seed(0))
    res = activation_matching(model, apply_permutation(model, perm), torch.randn(256, 64), spec)
    assert res.perm == perm.inverse()
    assert res.info["correlation"]["fc1"] > 0.999
    assert model.training and res.model.training
