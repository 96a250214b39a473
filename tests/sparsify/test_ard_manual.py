"""MLP twins ("weight" estimator) through the manual MLP step: the same gradients, trajectories and metrics as
through autograd, each twin independent of its population; where the step does not apply, autograd."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from zooscape.models import create_model
from zooscape.sparsify import ARDControl, kl_approx, to_ard, train_twins
from zooscape.sparsify.counter_noise import counter_normal
from zooscape.train import Member, Population, TrainConfig
from zooscape.train._flags import override
from zooscape.train.losses import gather_rows, task_loss
from zooscape.train.manual_mlp import plan


def _data(n=300, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return SimpleNamespace(task="classification", train_x=x[:200], train_y=y[:200], val_x=x[200:250],
                           val_y=y[200:250], test_x=x[250:], test_y=y[250:])


def _twins(n, estimator="weight", dtype=torch.float32, depth=2, scale=0.0, **kw):
    control = ARDControl(estimator=estimator, penalty_scale=scale)
    models = [to_ard(create_model("mlp", input_size=64, depth=depth, width=12, seed=s, **kw).to(dtype),
                     control=control) for s in range(n)]
    pop = Population(models).train()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # log sigma^2 spread over [-14, 2]: log alpha inside and at both clips
        for m in pop.net.modules():
            if hasattr(m, "log_sigma2"):
                m.log_sigma2.copy_(torch.rand(m.log_sigma2.shape, generator=g, dtype=dtype) * 16 - 14)
    return pop


def _reference_grads(pop, x, y, scale, seed):
    """An independent slow path: the sample and the KL written out with autograd on the formulas."""
    layers = [m for m in pop.net.modules() if hasattr(m, "log_sigma2")]
    torch.manual_seed(seed)  # no generators: each layer draws its twins' stream keys from the global RNG
    eps = [counter_normal(torch.randint(0, 1 << 32, (m.weight.shape[0], 2), dtype=torch.int64), 0,
                          m.weight[0].numel(), dtype=m.weight.dtype).reshape(m.weight.shape) for m in layers]
    params = [(m.weight.detach().clone().requires_grad_(), m.log_sigma2.detach().clone().requires_grad_(),
               m.bias.detach().clone().requires_grad_()) for m in layers]
    h = x.reshape(x.shape[0], x.shape[1], -1)
    penalty = 0.0
    for i, ((w, ls, b), e) in enumerate(zip(params, eps)):
        la = (ls - torch.log(w * w + 1e-8)).clamp(-10, 10)
        ws = w + torch.exp(la / 2) * w.abs() * e
        penalty = penalty + kl_approx(la).sum()
        h = torch.baddbmm(b.unsqueeze(1), h, ws.transpose(1, 2))
        if i < len(layers) - 1:
            h = h.relu()
    ce = torch.stack([F.cross_entropy(h[i], y[i]) for i in range(h.shape[0])])
    (ce.sum() + scale * penalty).backward()
    return ce.detach(), [(w.grad, ls.grad, b.grad) for w, ls, b in params]


@pytest.mark.parametrize("scale", [0.0, 0.7])
def test_one_step_gradients_equal_autograd_float64(scale):
    """One step's gradients (weight, log sigma^2 incl. the KL penalty's, bias) and CE loss: manual step =
    the population's autograd path = the formulas differentiated by autograd (float64)."""
    pop = _twins(3, dtype=torch.float64, scale=scale)
    data = _data()
    x64 = data.train_x.double()
    step = plan(pop, x64, "classification")
    assert step is not None
    idx = torch.randint(0, 200, (3, 17), generator=torch.Generator().manual_seed(1))
    x, y = gather_rows(x64, idx), gather_rows(data.train_y, idx)
    want_loss, want = _reference_grads(pop, x, y, scale, seed=4)
    layers = [m for m in pop.net.modules() if hasattr(m, "log_sigma2")]

    torch.manual_seed(4)  # no generators set: the layers draw from the global RNG, layer by layer
    pop.zero_grad(set_to_none=True)
    with override(manual_mlp=False):
        auto_loss = task_loss(pop.forward_model_major(x), y.t(), "classification")
    auto_loss.sum().backward()
    auto = [(m.weight.grad.clone(), m.log_sigma2.grad.clone(), m.bias.grad.clone()) for m in layers]

    for p in pop.parameters():
        p.grad = torch.full_like(p, 7.0)  # stale gradients are overwritten
    torch.manual_seed(4)
    loss, pred = step(x, y, predict=True)
    assert pred.shape == (3, 17) and pred.dtype == torch.int64
    for got_loss in (auto_loss.detach(), loss):
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-12, atol=1e-12)
    for m, a, w in zip(layers, auto, want):
        for got in (a, (m.weight.grad, m.log_sigma2.grad, m.bias.grad)):
            for g, r in zip(got, w):
                torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    if scale:  # the penalty reaches log sigma^2 (the test would notice it missing)
        assert not torch.allclose(want[0][1], _reference_grads(pop, x, y, 0.0, seed=4)[1][0][1])


def _run(n_sources, manual, members=None, first=0, epochs=3):
    sources = [create_model("mlp", input_size=64, depth=2, width=16, seed=s) for s in range(first, first + n_sources)]
    cfg = TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=3e-3, train_metrics="running")
    with override(manual_mlp=manual):
        return train_twins(sources, _data(), cfg, members, estimator="weight", kl_scale=3.0, device="cpu")


@pytest.mark.parametrize("n", [1, 3])
def test_training_equals_the_autograd_path(n):
    """Three epochs (the KL weight ramping): histories (losses, accuracies, sparsity, kl) and final weights and
    log sigma^2 of the manual step equal those through autograd to float rounding."""
    a, b = _run(n, True), _run(n, False)
    for ha, hb in zip(a.history, b.history):
        assert len(ha) == len(hb) == 4
        for ra, rb in zip(ha, hb):
            for key in ("train_loss", "train_acc", "val_loss", "test_loss", "test_acc", "sparsity", "kl"):
                assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), key
    assert any(r["sparsity"] > 0 for h in a.history for r in h)  # log alpha moves: the check is not vacuous
    for sa, sb in zip(a.state_dicts, b.state_dicts):
        assert sa.keys() == sb.keys() and any(k.endswith("log_sigma2") for k in sa)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


def test_a_twin_does_not_depend_on_its_population():
    """Twin 2 of a population of three ends where it ends trained alone (same seed, same source)."""
    full = _run(3, True, epochs=2)
    alone = _run(1, True, members=[Member(seed=2)], first=2, epochs=2)
    for k, v in alone.state_dicts[0].items():
        torch.testing.assert_close(v, full.state_dicts[2][k], rtol=1e-6, atol=1e-7)
    assert alone.history[0][-1]["kl"] == pytest.approx(full.history[2][-1]["kl"], rel=1e-6)


def test_the_plan_draws_no_noise():
    """plan()'s numerical check runs in eval mode: no twin's noise stream moves, the modes are restored."""
    pop = _twins(2)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    pop.set_dropout_generators(gens)
    before = [g.get_state() for g in gens]
    rng = torch.get_rng_state()
    assert plan(pop, _data().train_x, "classification") is not None
    assert all(torch.equal(g.get_state(), s) for g, s in zip(gens, before))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in pop.modules())


@pytest.mark.parametrize("case", ["local", "dropout", "tanh", "regression"])
def test_autograd_where_the_step_does_not_apply(case):
    """The local estimator and nets that are not ReLU MLPs keep autograd (plan() is None)."""
    kw = {"dropout": {"dropout": 0.3}, "tanh": {"activation": "tanh"}}.get(case, {})
    pop = _twins(2, estimator="local" if case == "local" else "weight", **kw)
    x = _data().train_x
    assert plan(pop, x, "regression" if case == "regression" else "classification") is None
    if case in ("local", "regression"):  # the same net qualifies with the weight estimator, for classification
        assert plan(_twins(2), x, "classification") is not None
