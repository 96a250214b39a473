"""The manual MLP step (switch ``manual_mlp``) computes what autograd computes, and only runs where it applies."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zooscape.models import create_model
from zooscape.train import Population, TrainConfig, train_population
from zooscape.train._flags import override
from zooscape.train.losses import gather_rows, task_loss
from zooscape.train.manual_mlp import plan


def _data(n=300, shape=(64,), k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return SimpleNamespace(task="classification", train_x=x[:200], train_y=y[:200], val_x=x[200:250],
                           val_y=y[200:250], test_x=x[250:], test_y=y[250:])


def _autograd_grads(pop, x, y):
    pop.zero_grad(set_to_none=True)
    with override(manual_mlp=False):
        out = pop.forward_model_major(x)
        loss = task_loss(out, y.t(), "classification")
    loss.sum().backward()
    return loss.detach(), [p.grad.clone() for p in pop.parameters()]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("depth,shape", [(1, (64,)), (3, (1, 8, 8))])
def test_manual_step_equals_autograd(dtype, tol, depth, shape):
    models = [create_model("mlp", input_size=shape if len(shape) > 1 else shape[0], depth=depth, width=24,
                           seed=s).to(dtype) for s in range(5)]
    pop = Population(models).train()
    data = _data(shape=shape)
    step = plan(pop, data.train_x.to(dtype), "classification")
    assert step is not None
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 200, (5, 17), generator=g)
    x, y = gather_rows(data.train_x.to(dtype), idx), gather_rows(data.train_y, idx)
    want_loss, want = _autograd_grads(pop, x, y)
    for p in pop.parameters():
        p.grad = torch.full_like(p, 7.0)  # stale gradients are overwritten, not accumulated
    loss, pred = step(x, y, predict=True)
    torch.testing.assert_close(loss, want_loss, rtol=tol, atol=tol)
    with torch.no_grad():
        assert torch.equal(pred, pop.forward_model_major(x).argmax(-1).t())
    for p, w in zip(pop.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=tol, atol=tol)


def test_manual_member_gradient_does_not_depend_on_the_population():
    """A model's gradient is the same to the bit alone and at any place in a population (a zoo grown seed by seed
    equals one trained at once)."""
    models = [create_model("mlp", input_size=64, depth=2, width=32, seed=s) for s in range(8)]
    data = _data()
    idx = torch.randint(0, 200, (8, 32), generator=torch.Generator().manual_seed(2))
    pop = Population(models).train()
    plan(pop, data.train_x, "classification")(gather_rows(data.train_x, idx), gather_rows(data.train_y, idx))
    full = [p.grad.clone() for p in pop.parameters()]
    for i in (0, 5, 7):
        one = Population([models[i]]).train()
        plan(one, data.train_x, "classification")(gather_rows(data.train_x, idx[i:i + 1]),
                                                  gather_rows(data.train_y, idx[i:i + 1]))
        for p, f in zip(one.parameters(), full):
            assert torch.equal(p.grad[0], f[i])


class _Residual(nn.Module):
    """Linear, ReLU, Linear modules, but a forward that adds a skip: the numerical check must reject it."""

    def __init__(self):
        super().__init__()
        self.a, self.r, self.b = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(self.r(self.a(x)) + x)


@pytest.mark.parametrize("case", ["dropout", "bn", "tanh", "cnn", "residual", "regression", "augment"])
def test_manual_step_only_where_it_applies(case):
    task, augment, shape = "classification", False, (64,)
    if case == "dropout":
        models = [create_model("mlp", input_size=64, depth=2, width=8, dropout=0.3, seed=s) for s in range(2)]
    elif case == "bn":
        models = [create_model("mlp", input_size=64, depth=2, width=8, norm="bn", seed=s) for s in range(2)]
    elif case == "tanh":
        models = [create_model("mlp", input_size=64, depth=2, width=8, activation="tanh", seed=s) for s in range(2)]
    elif case == "cnn":
        models, shape = [create_model("cnn_s", in_channels=1, seed=s) for s in range(2)], (1, 28, 28)
    elif case == "residual":
        models, shape = [_Residual() for _ in range(2)], (8,)
    else:
        models = [create_model("mlp", input_size=64, depth=2, width=8, seed=s) for s in range(2)]
        task, augment = ("regression", False) if case == "regression" else ("classification", True)
    pop = Population(models).train()
    assert plan(pop, torch.randn(4, *shape), task, augment=augment) is None
    if case in ("regression", "augment"):  # the same population qualifies otherwise
        assert plan(pop, torch.randn(4, *shape), "classification") is not None


def test_training_with_and_without_the_manual_step_agree():
    """Three epochs of a 4-MLP population: the same histories and weights (float rounding) as through autograd."""
    data = _data(n=400)
    data.train_x, data.train_y = torch.cat([data.train_x] * 2), torch.cat([data.train_y] * 2)
    cfg = TrainConfig(epochs=3, batch_size=30, optimizer="adam", lr=3e-3, train_metrics="running")
    runs = {}
    for flag in (True, False):
        models = [create_model("mlp", input_size=64, depth=2, width=32, seed=s) for s in range(4)]
        with override(manual_mlp=flag):
            runs[flag] = train_population(models, data, cfg, device="cpu")
    a, b = runs[True], runs[False]
    for ha, hb in zip(a.history, b.history):
        for ra, rb in zip(ha, hb):
            for key in ("train_loss", "val_loss", "test_loss", "train_acc", "test_acc"):
                assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-4), key
    for ma, mb in zip(a.models, b.models):
        for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)


def test_manual_step_does_not_depend_on_the_parameter_layout():
    """Standalone parameters and views into the flat [N, P] buffer give bitwise the same step (a resumed run, whose
    first step runs before the flat buffer exists, equals the uninterrupted one)."""
    import copy

    models = [create_model("mlp", input_size=64, depth=1, width=16, seed=s) for s in range(2)]
    data = _data()
    idx = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(2))
    a, b = Population(copy.deepcopy(models)).train(), Population(copy.deepcopy(models)).train()
    for p in b.parameters():
        p.grad = torch.zeros_like(p)
    b.flatten_parameters()
    assert [p.stride() for p in a.parameters()] != [p.stride() for p in b.parameters()]
    xb, yb = gather_rows(data.train_x, idx), gather_rows(data.train_y, idx)
    la, _ = plan(a, data.train_x, "classification")(xb, yb)
    lb, _ = plan(b, data.train_x, "classification")(xb, yb)
    assert torch.equal(la, lb)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
