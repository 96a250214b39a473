"""ARD (variational dropout) layers: eval equivalence, the KL approximation, population versions, twins."""

import math

import pytest
import torch
from torch import nn

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.sparsify import (
    K1,
    K2,
    K3,
    ARDControl,
    ARDConv2d,
    ARDLinear,
    from_ard,
    kl_approx,
    kl_weight,
    sparse_state_dict,
    sparsity_ratio,
    to_ard,
    train_twins,
)
from zooscape.sparsify.ard import ard_layers
from zooscape.sparsify.pop_ard import PopARDConv2d, PopARDLinear
from zooscape.train import Member, Population, TrainConfig


def _ref_mask(w, ls, thr=3.0):
    pairs = zip(w.flatten().tolist(), ls.flatten().tolist())
    la = [min(10.0, max(-10.0, s - math.log(v * v + 1e-8))) for v, s in pairs]
    return torch.tensor([a < thr for a in la]).view(w.shape)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_eval_is_deterministic_layer_with_pruned_weights_zero(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "linear":
        layer = ARDLinear(7, 5)
        x = torch.randn(4, 7, generator=g)
        ref = nn.Linear(7, 5)
    else:
        layer = ARDConv2d(3, 4, 3, padding=1)
        x = torch.randn(2, 3, 6, 6, generator=g)
        ref = nn.Conv2d(3, 4, 3, padding=1)
    ref.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "log_sigma2"})
    layer.eval()
    with torch.no_grad():  # log alpha = -5 < 3 everywhere: exactly the deterministic layer
        layer.log_sigma2.copy_(torch.log(layer.weight ** 2 + 1e-8) - 5.0)
    assert bool(layer.mask().all())
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)
    # raise log sigma^2 of some weights: those with log alpha >= 3 act as zeros, the rest unchanged
    with torch.no_grad():
        layer.log_sigma2.copy_(torch.where(torch.rand(layer.weight.shape, generator=g) < 0.5, 5.0, -20.0))
    mask = _ref_mask(layer.weight, layer.log_sigma2)
    assert 0 < int((~mask).sum()) < mask.numel()
    assert torch.equal(layer.mask(), mask)
    with torch.no_grad():
        ref.weight.mul_(mask.float())
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)
    assert sparsity_ratio(layer) == pytest.approx(float((~mask).float().mean()))


def test_kl_matches_closed_form_at_chosen_points():
    for la in (-10.0, -3.0, 0.0, 1.5, 3.0, 10.0):
        expect = K1 - K1 / (1.0 + math.exp(-(K2 + K3 * la))) + 0.5 * math.log(1.0 + math.exp(-la))
        assert float(kl_approx(torch.tensor(la, dtype=torch.float64))) == pytest.approx(expect, rel=1e-12)
    # log alpha -> inf: no KL; decreasing in log alpha
    la = torch.linspace(-10, 20, 301, dtype=torch.float64)
    kl = kl_approx(la)
    assert float(kl[-1]) == pytest.approx(0.0, abs=2e-6)
    assert bool((kl[1:] < kl[:-1]).all())


def test_kl_approximation_tracks_the_true_kl_up_to_a_constant():
    """-KL = 0.5 log a - E_{e ~ N(1, a)} log|e| + C (Molchanov et al. eq. 14): the fit differs by a constant."""
    diffs = []
    for la in (-2.0, 0.0, 2.0, 4.0):
        a = math.exp(la)
        z = torch.linspace(-12, 12, 2_000_001, dtype=torch.float64)
        dens = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        e_log = float((torch.log((1 + math.sqrt(a) * z).abs() + 1e-300) * dens).sum() * (z[1] - z[0]))
        neg_kl_true = 0.5 * la - e_log
        diffs.append(neg_kl_true - (-float(kl_approx(torch.tensor(la, dtype=torch.float64)))))
    assert max(diffs) - min(diffs) < 0.02  # the published fit's error is about 0.01


def test_kl_weight_ramp():
    assert kl_weight(0, 25) == 0.0
    assert kl_weight(25, 25) == pytest.approx(1e-2)
    assert kl_weight(10, 20, kl_scale=4.0) == 1.0


def test_to_ard_from_ard_roundtrip_on_a_registry_model():
    m = create_model("cnn_s", seed=0).eval()
    a = to_ard(m).eval()
    kinds = [type(x) for x in a.modules()]
    assert ARDConv2d in kinds and ARDLinear in kinds and nn.Conv2d not in [k for k in kinds if k is not ARDConv2d]
    x = torch.randn(3, 1, 28, 28)
    # at log sigma^2 = -10 only weights with |w| < ~1.5e-3 have log alpha >= 3: the output is the source's with
    # exactly those weights zeroed
    ref = from_ard(a)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("weight"):
                layer = a.get_submodule(name.rsplit(".", 1)[0])
                assert torch.equal(layer.mask(), _ref_mask(p, layer.log_sigma2))
    torch.testing.assert_close(a(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(a(x), m(x), rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        a.module_list[0].log_sigma2.fill_(8.0)  # prune the whole first conv
    back = from_ard(a)
    assert type(back.module_list[0]) is nn.Conv2d and float(back.module_list[0].weight.detach().abs().sum()) == 0.0
    assert set(back.state_dict()) == set(m.state_dict())
    torch.testing.assert_close(back(x), a(x))
    sd = sparse_state_dict(a.state_dict())
    assert sd.keys() == m.state_dict().keys()
    assert sparsity_ratio(back) == pytest.approx(sparsity_ratio(a)) == pytest.approx(sparsity_ratio(a.state_dict()))


def test_to_ard_leaves_the_source_untouched_and_shares_nothing():
    """to_ard does not copy the leaves it replaces (a memo in its deep copy), yet the source keeps its own modules
    and weights and the twin shares no module or tensor storage with it."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    kinds = [type(x) for x in m.modules()]
    a = to_ard(m)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    assert [type(x) for x in m.modules()] == kinds
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert not {id(x) for x in m.modules()} & {id(x) for x in a.modules()}
    assert not {t.untyped_storage().data_ptr() for t in m.state_dict().values()} & \
        {t.untyped_storage().data_ptr() for t in a.state_dict().values()}


@pytest.mark.parametrize("estimator", ["local", "weight"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_population_layer_equals_single_layers_with_penalty_gradient(kind, estimator):
    torch.manual_seed(0)
    n = 3
    control = ARDControl(estimator=estimator)
    if kind == "linear":
        singles = [ARDLinear(5, 4, control=control) for _ in range(n)]
        xs = [torch.randn(6, 5) for _ in range(n)]
        wide_x = torch.stack(xs, 1).reshape(6, n * 5)  # channel layout [B, N*in]
        pop_cls = PopARDLinear
    else:
        singles = [ARDConv2d(2, 3, 3, control=control) for _ in range(n)]
        xs = [torch.randn(2, 2, 5, 5) for _ in range(n)]
        wide_x = torch.stack(xs, 1).reshape(2, n * 2, 5, 5)
        pop_cls = PopARDConv2d
    for s in singles:
        with torch.no_grad():
            s.log_sigma2.uniform_(-6, 2)
            s.log_sigma2[0].fill_(30.0)  # clipped log alpha: no gradient through the clip
    pop = pop_cls(singles)
    pop.control = ARDControl(estimator=estimator, penalty_scale=0.3)  # singles keep a zero penalty
    pop.train()
    pop.noise.set_generators([torch.Generator().manual_seed(10 + i) for i in range(n)])
    out = pop(wide_x)
    out.sum().backward()
    for i, s in enumerate(singles):
        s.train()
        s.generator = torch.Generator().manual_seed(10 + i)
        o = s(xs[i])
        chunk = out.reshape(out.shape[0], n, -1)[:, i].reshape(o.shape)
        torch.testing.assert_close(chunk, o, rtol=1e-5, atol=1e-5)
        (o.sum() + 0.3 * s.kl()).backward()
        torch.testing.assert_close(pop.log_sigma2.grad[i], s.log_sigma2.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pop.weight.grad[i], s.weight.grad, rtol=1e-4, atol=1e-5)
    pop.eval()
    for s in singles:
        s.eval()
    torch.testing.assert_close(pop(wide_x).reshape(out.shape[0], n, -1)[:, 1].reshape(singles[1](xs[1]).shape),
                               singles[1](xs[1]))


def test_population_of_ard_models_builds_and_evaluates_shared_input():
    models = [to_ard(create_model("cnn_s", seed=i)) for i in range(3)]
    for m in models:
        with torch.no_grad():
            m.module_list[3].log_sigma2.fill_(6.0)
    pop = Population(models).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        out = pop.forward_shared(x)
        ref = torch.stack([m.eval()(x) for m in models], 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["local", "weight"])
def test_twins_do_not_depend_on_their_population_and_sparsify(estimator):
    ds = load_dataset("digits", seed=0)
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=1e-2)
    srcs = [create_model("mlp", input_size=64, depth=1, width=32, seed=i) for i in range(2)]
    both = train_twins(srcs, ds, cfg, [Member(seed=0), Member(seed=1)], kl_scale=50.0, estimator=estimator)
    alone = train_twins(srcs[1:], ds, cfg, [Member(seed=1)], kl_scale=50.0, estimator=estimator)
    for k in ("test_acc", "sparsity", "kl"):
        assert both.history[1][-1][k] == pytest.approx(alone.history[0][-1][k], rel=1e-4, abs=1e-4)
    first, last = both.history[0][0], both.history[0][-1]
    assert first["sparsity"] < 0.05 and last["sparsity"] > first["sparsity"] + 0.05 and last["kl"] < first["kl"]
    assert len(both.history[0]) == 3 and "kl_weight" in last
    # a twin's state is an ARD state; its deterministic sparse weights load into the source architecture
    sd = sparse_state_dict(both.state_dicts[0])
    m = create_model("mlp", input_size=64, depth=1, width=32)
    m.load_state_dict(sd)
    assert sparsity_ratio(m) == pytest.approx(last["sparsity"], abs=1e-9)
    x, y = ds.test_x, ds.test_y
    acc = float((m.eval()(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(last["test_acc"], abs=1e-6)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no nn.Linear"):
        to_ard(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="epochs"):
        kl_weight(1, 0)
    with pytest.raises(ValueError, match="estimator"):
        ARDControl(estimator="exact")
    with pytest.raises(ValueError, match="kl_reduction"):
        train_twins([create_model("mlp", input_size=64, depth=1, width=8)], load_dataset("digits", seed=0),
                    kl_reduction="mean")


def test_kl_reduction_model_zoos_is_the_elbo_times_n_train():
    """The Model Zoos weighting adds the undivided KL: the same run as the per-sample ELBO with kl_scale * n_train
    (no clipping of the ramp at these values), and far sparser than the ELBO at the same kl_scale."""
    ds = load_dataset("digits", seed=0)
    n_train = int(ds.train_x.shape[0])
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=1e-2)
    src = [create_model("mlp", input_size=64, depth=1, width=16, seed=0)]
    zoos = train_twins(src, ds, cfg, kl_scale=2e-4, kl_reduction="model_zoos", estimator="weight").history[0]
    elbo = train_twins(src, ds, cfg, kl_scale=2e-4 * n_train, kl_reduction="elbo", estimator="weight").history[0]
    same = train_twins(src, ds, cfg, kl_scale=2e-4, kl_reduction="elbo", estimator="weight").history[0]
    for a, b in zip(zoos, elbo):
        assert a["sparsity"] == pytest.approx(b["sparsity"], abs=1e-3)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-3)
    assert zoos[-1]["kl"] < same[-1]["kl"]


def test_sample_preactivation_gradient():
    from zooscape.sparsify.ard import sample_preactivation

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    var = (torch.rand(3, 4, dtype=torch.float64, generator=g) + 0.1).requires_grad_()
    noise = torch.randn(3, 4, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda m, v: sample_preactivation(m, v, noise), (mu, var))
    torch.testing.assert_close(sample_preactivation(mu, var, noise), mu + torch.sqrt(var + 1e-8) * noise)


def test_population_conv_input_gradient_on_channels_last_input():
    """The population's fast paths (channels-last input, input gradient as a forward convolution) give the single
    layers' input and weight gradients."""
    torch.manual_seed(1)
    n = 3
    singles = [ARDConv2d(4, 5, 3) for _ in range(n)]
    xs = [torch.randn(2, 4, 7, 7) for _ in range(n)]
    pop = PopARDConv2d(singles)
    pop.train()
    pop.noise.set_generators([torch.Generator().manual_seed(i) for i in range(n)])
    wide = torch.stack(xs, 1).reshape(2, n * 4, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert pop._input_grad_as_forward(wide, pop.weight.reshape(-1, 4, 3, 3))
    out = pop(wide)
    (out * out).sum().backward()
    gx = wide.grad.reshape(2, n, 4, 7, 7)
    for i, s in enumerate(singles):
        s.train()
        s.generator = torch.Generator().manual_seed(i)
        x = xs[i].clone().requires_grad_()
        o = s(x)
        (o * o).sum().backward()
        torch.testing.assert_close(out.reshape(2, n, 5, 5, 5)[:, i], o, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx[:, i], x.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pop.weight.grad[i], s.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pop.log_sigma2.grad[i], s.log_sigma2.grad, rtol=1e-4, atol=1e-4)


def test_weight_sample_gradient_and_value():
    """The 'weight' estimator's hand-written backward against finite differences (no KL penalty: scale 0), with
    weights whose log alpha is clipped at both ends, and its value against the plain formula."""
    from zooscape.sparsify.ard import log_alpha, sample_weight
    from zooscape.sparsify.pop_ard import _WeightSample

    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    ls = torch.empty(2, 3, 4, dtype=torch.float64).uniform_(-6, 2, generator=g)
    ls[0, 0] = 40.0  # log alpha clipped at 10
    ls[1, 0] = -40.0  # clipped at -10
    eps = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    w.requires_grad_()
    ls.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _WeightSample.apply(a, b, eps, 0.0), (w, ls))
    torch.testing.assert_close(_WeightSample.apply(w, ls, eps, 0.0), sample_weight(w, log_alpha(w, ls), eps))


def test_population_twin_metrics_equal_per_member_state_dicts():
    """The twins' per-epoch sparsity/KL computed on the stacked population equals the per-member state-dict path."""
    from zooscape.sparsify import population_twin_metrics, twin_metrics

    models = [to_ard(create_model("cnn_s", seed=i)) for i in range(3)]
    g = torch.Generator().manual_seed(0)
    for m in models:
        with torch.no_grad():
            for _, layer in ard_layers(m):
                layer.log_sigma2.uniform_(-8, 6, generator=g)
    pop = Population(models)
    got = population_twin_metrics(pop, threshold=2.5)
    for i, sd in enumerate(pop.state_dicts()):
        ref = twin_metrics(sd, threshold=2.5)
        assert got[i]["n_pruned"] == ref["n_pruned"] > 0 and got[i]["n_weights"] == ref["n_weights"]
        assert got[i]["sparsity"] == ref["sparsity"]
        assert got[i]["kl"] == pytest.approx(ref["kl"], rel=1e-6)


def test_population_sparse_weight_cache_follows_changes_in_eval_mode():
    """Evaluation keeps the sparse weight between batches, but a change of log_sigma2, of the weights (in place, or
    through the flat optimiser buffer while training) or of the threshold is seen by the next forward."""
    models = [to_ard(create_model("mlp", input_size=8, depth=1, width=6, seed=i)) for i in range(2)]
    pop = Population(models).eval()
    x = torch.randn(5, 8)
    layer = [m for _, m in ard_layers(pop) if hasattr(m, "n")][0]

    def ref() -> torch.Tensor:
        singles = [from_ard(m) for m in models]
        for i, s in enumerate(singles):
            s.load_state_dict(sparse_state_dict(pop.member_state_dict(i), layer.control.threshold))
        return torch.stack([s.eval()(x) for s in singles], 1)

    with torch.no_grad():
        torch.testing.assert_close(pop.forward_shared(x), ref())
        layer.log_sigma2[0, :3].fill_(8.0)  # prunes weights of member 0
        torch.testing.assert_close(pop.forward_shared(x), ref())
        layer.weight.mul_(0.5)
        torch.testing.assert_close(pop.forward_shared(x), ref())
        layer.control.threshold = -1.0
        torch.testing.assert_close(pop.forward_shared(x), ref())
        layer.control.threshold = 3.0
        params, _ = pop.flatten_parameters()
        torch.testing.assert_close(pop.forward_shared(x), ref())
        pop.train()
        params.add_(0.25)  # a write no version counter of the parameters sees (the trainer's optimiser step)
        pop.eval()
        torch.testing.assert_close(pop.forward_shared(x), ref())
