"""Fast paths of population training compute exactly what the plain paths compute.

- ``Population.forward_shared`` (eval mode) applies the first layer of all N models to the shared batch as one
  dense layer; it must equal copying the batch N times (the plain path) for every model family.
- ``tune_allocator`` changes where memory comes from, not results; it can be switched off.
- ``PopulationResult.models`` is built on first access and holds the final weights.
"""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from zooscape.models import create_model
from zooscape.train import Member, Population, TrainConfig, train_population
from zooscape.train._flags import override
from zooscape.train.memory import tune_allocator

FAMILIES = [
    ("mlp", dict(input_size=64, depth=2, width=16), (64,)),
    ("mlp", dict(input_size=(1, 8, 8), depth=1, width=16, dropout=0.2), (1, 8, 8)),
    ("cnn_s", dict(in_channels=1), (1, 28, 28)),
    ("cnn_l", dict(in_channels=3), (3, 32, 32)),
    ("lenet5", dict(in_channels=1), (1, 28, 28)),
    ("resnet20", dict(in_channels=3, width=4), (3, 16, 16)),
    ("vgg11_bn", dict(in_channels=3, width=0.125), (3, 32, 32)),
    ("vgg11_ln", dict(in_channels=3, width=0.125), (3, 32, 32)),
]


@pytest.mark.parametrize("name,kw,shape", FAMILIES, ids=[f[0] + str(i) for i, f in enumerate(FAMILIES)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_shared_dense_first_layer_equals_copying(name, kw, shape, dtype):
    models = [create_model(name, seed=s, **kw).to(dtype) for s in range(3)]
    pop = Population(models).eval()
    x = torch.randn(5, *shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    fast = pop.forward_shared(x)
    assert pop._shared_ok is True, f"{name}: the dense first-layer path was not taken"
    with torch.no_grad():  # without autograd, a 2x2 max-pool after the first convolution is fused into it
        fused = pop.forward_shared(x)
        slow = pop._forward_expanded(x)
    if name in ("cnn_s", "cnn_l"):
        assert len(pop._fused_pools) >= 1
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fast, slow, rtol=tol, atol=tol)
    torch.testing.assert_close(fused, slow, rtol=tol, atol=tol)
    with torch.no_grad():  # and both equal the members run one at a time
        for i, m in enumerate(models):
            torch.testing.assert_close(fast[:, i], m.eval()(x), rtol=tol * 10, atol=tol * 10)


class TwoReaders(nn.Module):
    """Feeds its input to two population layers: the dense path must notice and fall back."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 4)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_forward_shared_falls_back_when_input_feeds_two_layers():
    torch.manual_seed(0)
    models = [TwoReaders() for _ in range(4)]
    pop = Population(models).eval()
    x = torch.randn(8, 6)
    out = pop.forward_shared(x)
    assert pop._shared_ok is False
    with torch.no_grad():
        for i, m in enumerate(models):
            torch.testing.assert_close(out[:, i], m(x))


def test_fused_pool_matches_max_pool_with_ties_and_nan():
    """Blank image regions give tied conv outputs; a NaN weight must propagate like max_pool2d does."""
    models = [create_model("cnn_s", seed=s, in_channels=1) for s in range(2)]
    with torch.no_grad():
        models[1].module_list[0].weight[0, 0, 0, 0] = float("nan")
    pop = Population(models).eval()
    x = torch.zeros(3, 1, 28, 28)
    x[0, 0, 10:20, 10:20] = 1.0
    with torch.no_grad():
        pop._shared_ok = True  # the probe would reject NaN outputs that differ in position; force the fast path
        fast = pop.forward_shared(x)
        slow = pop._forward_expanded(x)
    torch.testing.assert_close(fast, slow, equal_nan=True)
    assert torch.isnan(fast[:, 1]).all() and not torch.isnan(fast[:, 0]).any()


def test_forward_shared_in_train_mode_uses_copying_path():
    models = [create_model("mlp", seed=s, input_size=8, depth=1, width=4) for s in range(2)]
    pop = Population(models).train()
    pop.forward_shared(torch.randn(3, 8))
    assert pop._shared_ok is None  # the probe (which would touch BN statistics / dropout RNG) never ran


def test_tune_allocator_is_idempotent_and_can_be_switched_off():
    first = tune_allocator()
    assert tune_allocator() is first
    if sys.platform.startswith("linux"):
        assert first is (os.environ.get("ZOOSCAPE_MALLOC_TUNE", "1") != "0")
    code = "from zooscape.train.memory import tune_allocator; print(tune_allocator())"
    env = dict(os.environ, ZOOSCAPE_MALLOC_TUNE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_result_models_are_built_lazily_and_hold_final_weights():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    data = type("D", (), dict(task="classification", train_x=x[:40], train_y=y[:40], val_x=x[40:52],
                              val_y=y[40:52], test_x=x[52:], test_y=y[52:]))()
    models = [create_model("mlp", seed=s, input_size=8, depth=1, width=4, num_classes=2) for s in range(3)]
    members = [Member(seed=s) for s in range(3)]
    res = train_population(models, data, TrainConfig(epochs=2, batch_size=8, lr=0.05), members, device="cpu")
    assert "models" not in res.__dict__  # not built yet
    for m, sd in zip(res.models, res.state_dicts):
        for k, v in m.state_dict().items():
            assert torch.equal(v, sd[k])
    key = next(iter(res.state_dicts[0]))
    assert not torch.equal(res.models[0].state_dict()[key], models[0].state_dict()[key])  # trained, not the input


@pytest.mark.parametrize("opt,extra", [
    ("sgd", dict(nesterov=False)), ("sgd", dict(nesterov=True)), ("adam", dict(grad_clip=0.3)), ("adamw", {}),
])
def test_flat_optimizer_equals_per_parameter_updates(opt, extra):
    """The whole-buffer update path and the per-tensor path give the same weights, optimiser state and history,
    with per-member lr / weight decay / momentum (one member without momentum) and a member stopping early."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(120, generator=g) > 0).long()
    data = type("D", (), dict(task="classification", train_x=x[:80], train_y=y[:80], val_x=x[80:100],
                              val_y=y[80:100], test_x=x[100:], test_y=y[100:]))()
    cfg = TrainConfig(epochs=4, batch_size=16, optimizer=opt, lr=0.05 if opt == "sgd" else 1e-2,
                      early_stopping_patience=1, **extra)
    members = [Member(seed=s, lr=cfg.lr * (1 + s), weight_decay=1e-3 * s, momentum=0.9 if s else 0.0)
               for s in range(3)]
    models = [create_model("mlp", seed=s, input_size=6, depth=2, width=8, num_classes=2) for s in range(3)]
    runs = {}
    for flag in (True, False):
        states = []
        with override(flat_optim=flag):
            res = train_population(models, data, cfg, members, device="cpu",
                                   callback=lambda r, states=states: states.append(r.optimizer_states()))
        runs[flag] = (res, states)
    (fast, fs), (slow, ss) = runs[True], runs[False]
    assert fast.status == slow.status
    assert "stopped" in fast.status and "done" in fast.status  # both update paths were exercised
    for a, b in zip(fast.state_dicts, slow.state_dicts):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    for ha, hb in zip(fast.history, slow.history):
        assert [r["val_loss"] for r in ha] == pytest.approx([r["val_loss"] for r in hb], rel=1e-5)
    for sa, sb in zip(fs[-1], ss[-1]):
        for k in sb:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps,beta2", [(1e-8, 0.999), (1e-8, 0.9999), (1e-6, 0.99), (1e-30, 0.999)])
def test_adam_denominator_fast_sqrt_is_bitwise_exact(dtype, eps, beta2):
    from zooscape.train.optim import PopulationOptimizer

    tiny = torch.finfo(dtype).tiny
    v = torch.tensor([0.0, tiny / 3, tiny / 1e6, tiny, tiny * 10, 1e-30, 1e-12, 1e-6, 1.0, 3e4], dtype=dtype)
    opt = PopulationOptimizer([], "adam", torch.zeros(1), torch.zeros(1), betas=(0.9, beta2), eps=eps)
    for t in (1, 2, 10, 1000):
        bc2 = (1 - beta2 ** t) ** 0.5
        want = (v.sqrt() / bc2).add_(eps)
        got = opt._sqrt(v).div_(bc2).add_(eps)
        assert torch.equal(got, want), (t, got - want)


@pytest.mark.parametrize("c,o,k,pad,groups,bias", [
    (8, 6, 5, 0, 4, True), (6, 4, 2, 0, 3, True), (3, 5, 3, 1, 2, False), (4, 4, 3, 2, 1, True),
])
def test_small_grouped_conv_gradients_equal_conv2d(c, o, k, pad, groups, bias):
    from zooscape.train.layers import _SmallGroupedConv

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, groups * c, 9, 9, dtype=torch.float64, generator=g)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(groups * o, c, k, k, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(groups * o, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    inputs = (x, w) + ((b,) if bias else ())
    y_ref = torch.nn.functional.conv2d(x, w, b, 1, pad, 1, groups)
    y = _SmallGroupedConv.apply(x, w, b, (pad, pad), groups)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    up = torch.randn(y.shape, dtype=torch.float64, generator=g)
    want = torch.autograd.grad(y_ref, inputs, up, create_graph=True)
    got = torch.autograd.grad(y, inputs, up, create_graph=True)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    # double backward (Hessian-vector products through a population) agrees too
    hv_want = torch.autograd.grad(sum((t * t).sum() for t in want), (x, w))
    hv_got = torch.autograd.grad(sum((t * t).sum() for t in got), (x, w))
    for a, r in zip(hv_got, hv_want):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda xx, ww: _SmallGroupedConv.apply(xx, ww, None, (pad, pad), groups),
                                    (x.detach()[:1, :, :6, :6].clone().requires_grad_(True), w))


@pytest.mark.parametrize("n,k", [(8, 10), (64, 2), (8, 16), (8, 17), (3, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wide_loss_equals_per_model_cross_entropy(n, k, dtype):
    """The [B, K, N] cross-entropy (switch ``wide_loss``) gives each model's mean loss and gradient as the row-wise
    path and as ``F.cross_entropy`` on that model alone; strided (transposed) logits as the trainer passes them."""
    from zooscape.train.losses import task_loss

    g = torch.Generator().manual_seed(n * 100 + k)
    logits = (3 * torch.randn(n, 32, k, generator=g, dtype=dtype)).requires_grad_()
    y = torch.randint(0, k, (32, n), generator=g)
    got = {}
    for flag in (True, False):
        with override(wide_loss=flag):
            loss = task_loss(logits.transpose(0, 1), y, "classification")
        got[flag] = (loss.detach(), torch.autograd.grad(loss.sum(), logits)[0])
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for a, b in zip(got[True], got[False]):
        torch.testing.assert_close(a, b, **tol)
    alone = torch.stack([torch.nn.functional.cross_entropy(logits[i].detach(), y[:, i]) for i in range(n)])
    torch.testing.assert_close(got[True][0], alone, **tol)


def test_predictions_equal_argmax_with_ties_and_nan():
    from zooscape.train.losses import predictions

    g = torch.Generator().manual_seed(0)
    out = torch.randint(0, 3, (64, 16, 10), generator=g).float().transpose(0, 1)  # many ties, strided as trained
    out[0, 0, 3] = out[1, 1, 0] = out[1, 1, 5] = float("nan")
    assert torch.equal(predictions(out), out.argmax(-1))
    x = torch.randn(7, 5, 3, generator=g)
    assert torch.equal(predictions(x), x.argmax(-1))


@pytest.mark.parametrize("flag", [True, False])
def test_loss_gradient_is_bitwise_independent_of_the_population(flag):
    """A model's loss gradient is the same to the bit in a population of any size and at any place in it (a zoo
    grown seed by seed equals one trained at once)."""
    from zooscape.train.losses import task_loss

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(64, 32, 10, generator=g)
    y = torch.randint(0, 10, (32, 64), generator=g)

    def grads(lo: int, hi: int) -> torch.Tensor:
        x = logits[lo:hi].clone().requires_grad_()
        with override(wide_loss=flag):
            loss = task_loss(x.transpose(0, 1), y[:, lo:hi].clone(), "classification")
        return torch.autograd.grad(loss.sum(), x)[0]

    full = grads(0, 64)
    for lo, hi in [(0, 1), (63, 64), (0, 5), (3, 8), (0, 17), (40, 64), (1, 64), (0, 16)]:
        assert torch.equal(grads(lo, hi), full[lo:hi]), (lo, hi)
