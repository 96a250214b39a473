"""Population training agrees with one-model-at-a-time training in plain PyTorch (the independent slow path)."""

import math
from types import SimpleNamespace

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from zooscape.train import (
    Member,
    Population,
    PopulationState,
    TrainConfig,
    lr_factor,
    train_population,
    train_sequential,
)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    p = torch.randperm(len(y), generator=g)[:900]
    x, y = x[p], y[p]
    return SimpleNamespace(task="classification", train_x=x[:600], train_y=y[:600], val_x=x[600:750],
                           val_y=y[600:750], test_x=x[750:], test_y=y[750:])


@pytest.fixture(scope="module")
def digits_img(digits):
    return SimpleNamespace(**{k: (v.view(-1, 1, 8, 8) if k.endswith("_x") else v) for k, v in vars(digits).items()})


def mlp(seed, norm=None, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(64, 24)]
    if norm == "ln":
        layers.append(nn.LayerNorm(24))
    if norm == "bn":
        layers.append(nn.BatchNorm1d(24))
    layers += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(24, 10)]
    return nn.Sequential(*layers)


def cnn(seed, norm="bn"):
    torch.manual_seed(seed)
    normf = {"bn": lambda c: nn.BatchNorm2d(c), "gn": lambda c: nn.GroupNorm(2, c), None: lambda c: nn.Identity()}
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), normf[norm](4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3), normf[norm](6), nn.ReLU(), nn.Flatten(), nn.Linear(24, 10))


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize(
    "opt,extra",
    [("sgd", dict(momentum=0.9)), ("sgd", dict(momentum=0.9, nesterov=True, schedule="cosine")),
     ("adam", dict(schedule="onecycle", grad_clip=0.5)),
     ("adamw", dict(schedule="step", step_size=1, warmup_epochs=0.5))],
)
def test_population_matches_sequential(digits, opt, extra):
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer=opt, lr=0.05 if opt == "sgd" else 3e-3, weight_decay=1e-3,
                      **extra)
    members = [Member(seed=s, lr=cfg.lr * (1 + s), weight_decay=1e-3 * s) for s in range(3)]
    models = [mlp(s) for s in range(3)]
    res = train_population(models, digits, cfg, members, device="cpu")
    for i in range(3):
        ref, hist = train_sequential(models[i], digits, cfg, members[i], device="cpu")
        assert max_diff(res.state_dicts[i], ref.state_dict()) < 1e-5
        assert res.history[i][-1]["test_acc"] == pytest.approx(hist[-1]["test_acc"])
        assert res.history[i][0]["test_loss"] == pytest.approx(hist[0]["test_loss"], rel=1e-5)
    # models really differ from each other and from their initialisation
    assert max_diff(res.state_dicts[0], res.state_dicts[1]) > 1e-2
    assert max_diff(res.state_dicts[0], models[0].state_dict()) > 1e-3


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_cnn_population_matches_sequential(digits_img, norm):
    # float64: convolutions sum in a different order in the population (grouped, channels-last) than alone, and
    # in float32 that rounding is amplified by training (~1e-4 after an epoch); in float64 the paths must agree.
    data = SimpleNamespace(**{k: (v.double() if k.endswith("_x") else v) for k, v in vars(digits_img).items()})
    cfg = TrainConfig(epochs=1, batch_size=50, optimizer="sgd", lr=0.1, momentum=0.9)
    members = [Member(seed=s) for s in range(2)]
    models = [cnn(s, norm).double() for s in range(2)]
    res = train_population(models, data, cfg, members, device="cpu")
    for i in range(2):
        ref, hist = train_sequential(models[i], data, cfg, members[i], device="cpu")
        assert max_diff(res.state_dicts[i], ref.state_dict()) < 1e-9  # includes BN running statistics
        assert res.history[i][-1]["test_acc"] == hist[-1]["test_acc"]
    # and in float32 the same final accuracy up to a sample or two
    res32 = train_population([cnn(s, norm) for s in range(2)], digits_img, cfg, members, device="cpu")
    ref32, hist32 = train_sequential(cnn(1, norm), digits_img, cfg, members[1], device="cpu")
    assert max_diff(res32.state_dicts[1], ref32.state_dict()) < 1e-3
    assert abs(res32.history[1][-1]["test_acc"] - hist32[-1]["test_acc"]) <= 2 / 150


def test_regression_matches_sequential():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, generator=g)
    y = torch.sin(2 * x) + 0.05 * torch.randn(300, 1, generator=g)
    data = SimpleNamespace(task="regression", train_x=x[:200], train_y=y[:200], val_x=x[200:250], val_y=y[200:250],
                           test_x=x[250:], test_y=y[250:])

    def net(s):
        torch.manual_seed(s)
        return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))

    cfg = TrainConfig(epochs=2, batch_size=20, optimizer="adam", lr=1e-2)
    res = train_population([net(0), net(1)], data, cfg, [Member(0), Member(1)], device="cpu")
    ref, hist = train_sequential(net(1), data, cfg, Member(1), device="cpu")
    assert max_diff(res.state_dicts[1], ref.state_dict()) < 1e-5
    assert "test_acc" not in res.history[1][-1]
    assert res.history[1][-1]["test_loss"] == pytest.approx(hist[-1]["test_loss"], rel=1e-4)
    assert res.history[1][-1]["test_loss"] < res.history[1][0]["test_loss"]


def test_result_independent_of_population_with_dropout_and_layernorm(digits):
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=2e-3)
    alone = train_population([mlp(7, "ln", 0.3)], digits, cfg, [Member(seed=7)], device="cpu")
    crowd = train_population([mlp(s, "ln", 0.3) for s in (3, 7, 9)], digits, cfg,
                             [Member(seed=s) for s in (3, 7, 9)], device="cpu")
    assert max_diff(alone.state_dicts[0], crowd.state_dicts[1]) < 1e-5
    other = train_population([mlp(7, "ln", 0.3)], digits, cfg, [Member(seed=7, data_seed=8)], device="cpu")
    assert max_diff(alone.state_dicts[0], other.state_dicts[0]) > 1e-3  # data order/dropout follow data_seed


def test_resume_equals_uninterrupted(digits_img):
    cfg = TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=3e-3, schedule="cosine")
    members = [Member(seed=s) for s in range(2)]
    full = train_population([cnn(s) for s in range(2)], digits_img, cfg, members, device="cpu")
    saved = {}

    def cb(rep):
        if rep.epoch == 1:
            saved["state"] = rep.state().to_tensors()

    first = TrainConfig(**{**cfg.to_dict(), "betas": tuple(cfg.betas), "augment": ()})
    train_population([cnn(s) for s in range(2)], digits_img, first, members, device="cpu", callback=cb)
    state = PopulationState.from_tensors(*saved["state"])
    assert state.epoch == 1
    resumed = train_population([cnn(s) for s in range(2)], digits_img, cfg, members, device="cpu", resume=state)
    assert [h["epoch_time_s"] >= 0 for h in resumed.history[0]] == [True, True]  # epochs 2 and 3 only
    for i in range(2):
        assert max_diff(full.state_dicts[i], resumed.state_dicts[i]) == 0.0
        assert resumed.history[i][-1]["test_loss"] == full.history[i][-1]["test_loss"]


def test_diverging_member_fails_without_affecting_others(digits):
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05)
    members = [Member(seed=0), Member(seed=1, lr=1e38)]
    res = train_population([mlp(0), mlp(1)], digits, cfg, members, device="cpu")
    assert res.status == ["done", "failed"]
    assert "non-finite" in res.reasons[1]
    alone = train_population([mlp(0)], digits, cfg, [Member(seed=0)], device="cpu")
    assert max_diff(alone.state_dicts[0], res.state_dicts[0]) < 1e-6


def test_early_stopping_freezes_member(digits):
    cfg = TrainConfig(epochs=6, batch_size=32, optimizer="sgd", lr=0.05, early_stopping_patience=1)
    members = [Member(seed=0), Member(seed=1, lr=3.0)]  # the second one oscillates; its val loss stops improving
    snapshots = []
    res = train_population([mlp(0), mlp(1)], digits, cfg, members, device="cpu",
                           callback=lambda r: snapshots.append((r.status[1], r.state_dicts()[1])))
    assert res.status[1] == "stopped" and "early stopping" in res.reasons[1]
    first = next(i for i, (s, _) in enumerate(snapshots) if s == "stopped")
    assert max_diff(snapshots[first][1], snapshots[-1][1]) == 0.0
    assert res.status[0] in ("done", "stopped")


def test_population_forward_matches_members():
    models = [cnn(s, "bn") for s in range(3)]
    for m in models:
        m.eval()
    pop = Population(models).eval()
    x = torch.randn(5, 1, 8, 8)
    out = pop.forward_shared(x)
    for i, m in enumerate(models):
        assert torch.allclose(out[:, i], m(x), atol=1e-6)
    for sd, m in zip(pop.state_dicts(), models):
        assert max_diff(sd, m.state_dict()) == 0.0
    exported = pop.export_models()
    assert type(exported[0]) is nn.Sequential
    assert torch.allclose(exported[2].eval()(x), models[2](x))


def test_population_rejects_mixed_architectures():
    with pytest.raises(ValueError, match="different architecture|shape"):
        Population([mlp(0), cnn(0)])
    with pytest.raises(ValueError, match="members"):
        train_population([mlp(0)], SimpleNamespace(task="classification", train_x=0, train_y=0, val_x=0, val_y=0,
                                                   test_x=0, test_y=0), TrainConfig(), [Member(0), Member(1)])


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_schedules_match_torch():
    p = nn.Parameter(torch.zeros(1))
    total, spe = 40, 10
    cases = {
        "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=total,
                                                                  cycle_momentum=False),
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total),
        "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=spe * 2, gamma=0.5),
    }
    for name, make in cases.items():
        opt = torch.optim.SGD([p], lr=0.1)
        sched = make(opt)
        for step in range(total):
            ours = 0.1 * lr_factor(name, step, total, spe, step_size=2, gamma=0.5)
            assert math.isclose(opt.param_groups[0]["lr"], ours, rel_tol=1e-9, abs_tol=1e-12), (name, step)
            opt.step()
            sched.step()


def test_batchnorm_model_trains_when_the_last_batch_would_hold_one_sample():
    """digits' 1,257 training samples with batch size 8 leave one sample over: it joins the last batch."""
    from torch import nn

    from zooscape.data import load_dataset
    from zooscape.train import Member, TrainConfig, train_population

    data = load_dataset("digits", seed=42)
    n = data.train_x.shape[0]
    bs = next(b for b in range(4, 64) if n % b == 1)

    def model(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))

    cfg = TrainConfig(epochs=1, batch_size=bs, optimizer="sgd", lr=0.05)
    result = train_population([model(0), model(1)], data, cfg, [Member(seed=0), Member(seed=1)])
    assert "failed" not in result.status
    assert all(h[-1]["test_acc"] > 0.3 for h in result.history)


def test_population_of_eight_matches_sequential_through_the_wide_loss(digits):
    """A classification loss with few classes takes the [B, K, N] cross-entropy on the CPU (switch ``wide_loss``);
    members still train as they do alone."""
    n = 8
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=3e-3)
    models = [mlp(s) for s in range(n)]
    res = train_population(models, digits, cfg, device="cpu")
    for i in (0, n - 1):
        ref, hist = train_sequential(models[i], digits, cfg, Member(seed=i), device="cpu")
        assert max_diff(res.state_dicts[i], ref.state_dict()) < 1e-5
        assert res.history[i][-1]["test_loss"] == pytest.approx(hist[-1]["test_loss"], rel=1e-5)
