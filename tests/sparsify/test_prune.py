"""One-shot pruning: exact sparsity, OBD/OBS closed forms, the block Fisher, masks through safetensors."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from zooscape.connect.bn import recompute_bn_stats
from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.sparsify import load_pruned, masks, obd_scores, obs_scores, obs_update, prune, sparsity_ratio
from zooscape.sparsify.prune import fisher_blocks, prunable_layers, prune_by_saliency, saliencies


def _mlp(seed=0):
    return create_model("mlp", input_size=64, depth=2, width=24, seed=seed)


def _digits():
    return load_dataset("digits", seed=0)


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.77, 0.9, 1.0])
def test_global_magnitude_hits_the_sparsity_exactly_and_prunes_the_smallest(s):
    m = _mlp()
    p = prune(m, s, "globalmagni")
    ws = [layer.weight.detach() for _, layer in prunable_layers(m)]
    total = sum(w.numel() for w in ws)
    mk = masks(p)
    assert sum(int((~v).sum()) for v in mk.values()) == round(s * total)
    kept = torch.cat([w[mk[n]].abs() for (n, _), w in zip(prunable_layers(m), ws)])
    gone = torch.cat([w[~mk[n]].abs() for (n, _), w in zip(prunable_layers(m), ws)])
    if kept.numel() and gone.numel():
        assert float(gone.max()) <= float(kept.min())
    assert sparsity_ratio(p) == pytest.approx(round(s * total) / total)
    assert torch.equal(m.module_list[0].weight, _mlp().module_list[0].weight)  # source untouched


@pytest.mark.parametrize("s", [0.25, 0.5, 0.9])
def test_layerwise_magnitude_hits_the_sparsity_in_every_layer(s):
    m = _mlp()
    p = prune(m, s, "magni")
    for name, layer in prunable_layers(p):
        mask = layer.weight_mask
        assert int((~mask).sum()) == round(s * mask.numel()), name
        assert bool((layer.weight.detach()[~mask] == 0).all())
        src = m.get_submodule(name).weight.detach().abs()
        assert float(src[~mask].max()) <= float(src[mask].min())


def test_scope_errors():
    with pytest.raises(ValueError, match="magni"):
        prune(_mlp(), 0.5, "globalmagni", scope="layer")
    with pytest.raises(ValueError, match="needs data"):
        prune(_mlp(), 0.5, "diagfisher")
    with pytest.raises(ValueError, match="method"):
        prune(_mlp(), 0.5, "random")
    with pytest.raises(ValueError, match="sparsity"):
        prune(_mlp(), 1.5)


def _quadratic(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    h = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    return h, w


def test_obd_on_a_diagonal_quadratic_is_the_loss_increase():
    h = torch.tensor([0.5, 2.0, 3.0, 0.1], dtype=torch.float64)
    w = torch.tensor([1.0, -0.3, 0.2, 2.0], dtype=torch.float64)
    loss = lambda v: 0.5 * ((v - w) ** 2 * h).sum()  # noqa: E731  (minimum at w)
    s = obd_scores(w, h)
    for q in range(4):
        v = w.clone()
        v[q] = 0
        assert float(loss(v)) == pytest.approx(float(s[q]), rel=1e-12)


def test_obs_update_on_a_quadratic_matches_the_closed_form():
    h, w = _quadratic()
    hinv = torch.linalg.inv(h)
    loss = lambda v: 0.5 * (v - w) @ h @ (v - w)  # noqa: E731
    s = obs_scores(w, hinv)
    for q in range(len(w)):
        new, inc = obs_update(w, hinv, torch.tensor([q]))
        assert float(new[q]) == 0.0
        assert float(loss(new)) == pytest.approx(float(inc), rel=1e-10)
        assert float(inc) == pytest.approx(float(s[q]), rel=1e-10)
    # several weights at once: the constrained minimiser (free coordinates solved directly)
    rm = torch.tensor([True, False, True, False, False, True])
    new, inc = obs_update(w, hinv, rm)
    f = ~rm
    direct = torch.zeros_like(w)
    direct[f] = w[f] + torch.linalg.solve(h[f][:, f], h[f][:, rm] @ w[rm])
    torch.testing.assert_close(new, direct)
    assert float(loss(new)) == pytest.approx(float(inc), rel=1e-10)
    # and any other point with those weights zero is worse
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        other = new + torch.randn(len(w), generator=g, dtype=torch.float64) * f
        assert float(loss(other)) > float(inc)


def test_fisher_blocks_match_an_independent_per_sample_loop():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    names = ["0.weight", "2.weight"]
    inv = fisher_blocks(m, x, y, names, block_size=8, damping=1e-2, batch_size=3)
    grads = []
    for i in range(7):
        m.zero_grad()
        nn.functional.cross_entropy(m(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append(torch.cat([m.get_parameter(n).grad.reshape(-1) for n in names[:1]]))
    g = torch.stack(grads)  # [7, 20] for layer 0
    fisher = g.T @ g / 7
    for b in range(3):  # 20 weights in blocks of 8 (last padded)
        lo, hi = 8 * b, min(20, 8 * b + 8)
        blk = torch.eye(8, dtype=torch.float64) * 1e-2
        blk[: hi - lo, : hi - lo] += fisher[lo:hi, lo:hi]
        torch.testing.assert_close(inv["0.weight"][b], torch.linalg.inv(blk), rtol=1e-8, atol=1e-8)
    assert inv["2.weight"].shape == (2, 8, 8)


def test_woodfisher_with_one_block_is_obs_on_the_fisher_quadratic():
    """One block over a layer: the pruned weights are removed with the OBS update of the damped empirical Fisher,
    so the Fisher-quadratic loss increase equals the predicted one and beats zeroing them without an update."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 2, (30,))
    p = prune(m, 0.5, "woodfisherblock", (x, y), modules=["0"], block_size=12, damping=1e-3, n_samples=None)
    hinv = fisher_blocks(m, x, y, ["0.weight"], 12, 1e-3)["0.weight"][0]
    h = torch.linalg.inv(hinv)
    w0 = m[0].weight.detach().reshape(-1)
    w1 = p[0].weight.detach().reshape(-1)
    rm = ~p[0].weight_mask.reshape(-1)
    assert int(rm.sum()) == 6 and bool((w1[rm] == 0).all())
    _, predicted = obs_update(w0, hinv, rm)
    quad = lambda v: 0.5 * (v - w0) @ h @ (v - w0)  # noqa: E731
    assert float(quad(w1)) == pytest.approx(float(predicted), rel=1e-8)
    assert float(quad(w1)) < float(quad(w0 * ~rm))
    assert torch.equal(p[2].weight, m[2].weight)  # other layers untouched


def test_fisher_pruners_run_on_a_registry_model_with_exact_sparsity():
    ds = _digits()
    m = _mlp()
    for method in ("diagfisher", "woodfisherblock"):
        p = prune(m, 0.6, method, ds, n_samples=64, block_size=16)
        total = sum(layer.weight.numel() for _, layer in prunable_layers(m))
        assert sum(int((~v).sum()) for v in masks(p).values()) == round(0.6 * total)
        p2 = prune(m, 0.6, method, ds, n_samples=64, block_size=16, scope="layer")
        for _, layer in prunable_layers(p2):
            assert int((~layer.weight_mask).sum()) == round(0.6 * layer.weight.numel())


def test_masks_survive_saving_and_loading(tmp_path):
    m = create_model("cnn_s", seed=0)
    p = prune(m, 0.7, "globalmagni")
    path = tmp_path / "pruned.safetensors"
    save_file({k: v.contiguous() for k, v in p.state_dict().items()}, str(path))
    fresh = load_pruned(create_model("cnn_s", seed=5), load_file(str(path)))
    for (n, a), (n2, b) in zip(sorted(masks(p).items()), sorted(masks(fresh).items())):
        assert n == n2 and torch.equal(a, b) and a.dtype == torch.bool
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), p.eval()(x), rtol=0, atol=0)
    assert sparsity_ratio(fresh) == pytest.approx(0.7, abs=1e-3)
    with pytest.raises(ValueError, match="shape"):
        bad = dict(load_file(str(path)))
        bad["module_list.0.weight_mask"] = torch.ones(3, dtype=torch.bool)
        load_pruned(create_model("cnn_s"), bad)


# ------------------------------------------------- the Fisher behind the pruners, against independent loops
def _bn_mlp_with_stats():
    """A BN MLP (float64) whose running statistics differ from the defaults and from any batch's, with data."""
    ds = _digits()
    m = create_model("mlp", input_size=64, depth=2, width=16, norm="bn", seed=0).double()
    x, y = ds.train_x[:40].double(), ds.train_y[:40]
    m.train()
    with torch.no_grad():
        for k in range(3):
            m(ds.train_x[100 * k:100 * k + 50].double() * (1 + k))
    return m.eval(), x, y


def _per_sample_grads(m, x, y, names, labels=None):
    """Batch-size-1 autograd loop in eval mode (as the WoodFisher scripts): ``[n, P]`` per-sample gradients."""
    out = []
    for i in range(x.shape[0]):
        m.zero_grad()
        yi = y[i:i + 1] if labels is None else labels
        nn.functional.cross_entropy(m(x[i:i + 1]), yi).backward()
        out.append(torch.cat([m.get_parameter(n).grad.reshape(-1).clone() for n in names]))
    return torch.stack(out)


def test_diag_fisher_saliency_matches_an_independent_per_sample_loop_on_a_bn_network():
    """OBD's F_qq is the mean of squared per-sample gradients with BN in eval mode (running statistics), not the
    squared mean gradient."""
    m, x, y = _bn_mlp_with_stats()
    layers = prunable_layers(m)
    names = [f"{n}.weight" for n, _ in layers]
    damping = 1e-4
    got = saliencies(m, "diagfisher", (x, y), n_samples=None, damping=damping, batch_size=7)
    g = _per_sample_grads(m, x, y, names)
    fisher, squared_mean = g.pow(2).mean(0), g.mean(0).pow(2)
    off = 0
    for name, layer in layers:
        w = layer.weight.detach()
        f = fisher[off:off + w.numel()].view(w.shape)
        torch.testing.assert_close(got[name], 0.5 * (f + damping) * w * w, rtol=1e-9, atol=1e-15)
        sq = squared_mean[off:off + w.numel()].view(w.shape)
        assert not torch.allclose(got[name], 0.5 * (sq + damping) * w * w, rtol=1e-3)
        off += w.numel()
    assert not m.training
    # prune removes exactly the lowest of these saliencies (global scope)
    p = prune(m, 0.6, "diagfisher", (x, y), n_samples=None, damping=damping, batch_size=7)
    kept = torch.cat([got[n][layer.weight_mask] for n, layer in prunable_layers(p)])
    gone = torch.cat([got[n][~layer.weight_mask] for n, layer in prunable_layers(p)])
    assert float(gone.max()) <= float(kept.min())


def test_exact_fisher_saliency_is_the_expectation_over_the_model_labels():
    m, x, y = _bn_mlp_with_stats()
    x, y = x[:12], y[:12]
    layers = prunable_layers(m)
    names = [f"{n}.weight" for n, _ in layers]
    got = saliencies(m, "diagfisher", (x, y), fisher="exact", n_samples=None, damping=0.0)
    with torch.no_grad():
        probs = torch.softmax(m(x), dim=1)
    fisher = 0
    for c in range(probs.shape[1]):
        g = torch.stack([_per_sample_grads(m, x[i:i + 1], y, names, labels=torch.tensor([c]))[0]
                         for i in range(x.shape[0])])
        fisher = fisher + (probs[:, c:c + 1] * g.pow(2)).mean(0)
    off = 0
    for name, layer in layers:
        w = layer.weight.detach()
        torch.testing.assert_close(got[name], 0.5 * fisher[off:off + w.numel()].view(w.shape) * w * w,
                                   rtol=1e-9, atol=1e-15)
        off += w.numel()


def test_obd_saliency_is_the_exact_loss_increase_on_least_squares():
    """A linear model at its least-squares minimum: the loss 0.5 mean ||W x + b - y||^2 is quadratic with Hessian
    diagonal equal to the exact Gaussian Fisher's, so OBD's saliency is the loss increase of zeroing one weight."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) + 0.5
    y = torch.randn(40, 3, generator=g, dtype=torch.float64)
    m = nn.Linear(5, 3).double()
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1), y).solution  # [6, 3]
    with torch.no_grad():
        m.weight.copy_(sol[:5].T)
        m.bias.copy_(sol[5])
    loss = lambda mm: float(0.5 * (mm(x) - y).pow(2).sum(1).mean().detach())  # noqa: E731
    base = loss(m)
    s = saliencies(m, "diagfisher", (x, y), fisher="exact", n_samples=None, damping=0.0)[""]
    for o in range(3):
        for j in range(5):
            mm = copy.deepcopy(m)
            with torch.no_grad():
                mm.weight[o, j] = 0.0
            assert loss(mm) - base == pytest.approx(float(s[o, j]), rel=1e-9)


def test_fisher_blocks_on_a_bn_network_use_eval_mode_per_sample_gradients():
    m, x, y = _bn_mlp_with_stats()
    names = ["module_list.6.weight"]
    inv = fisher_blocks(m, x, y, names, block_size=16, damping=1e-3, batch_size=9)["module_list.6.weight"]
    g = _per_sample_grads(m, x, y, names)  # [40, 160]
    fisher = g.T @ g / x.shape[0]
    for b in range(inv.shape[0]):
        blk = fisher[16 * b:16 * b + 16, 16 * b:16 * b + 16] + 1e-3 * torch.eye(16, dtype=torch.float64)
        torch.testing.assert_close(inv[b], torch.linalg.inv(blk), rtol=1e-7, atol=1e-7)


def test_fisher_split_and_errors():
    ds = _digits()
    m = _mlp()
    a = saliencies(m, "diagfisher", ds, split="val", n_samples=None)
    b = saliencies(m, "diagfisher", (ds.val_x, ds.val_y), n_samples=None)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    with pytest.raises(ValueError, match="fisher"):
        prune(m, 0.5, "diagfisher", ds, fisher="true")
    with pytest.raises(ValueError, match="empirical"):
        prune(m, 0.5, "woodfisherblock", ds, fisher="exact")
    mag = saliencies(m, "globalmagni")
    for n, layer in prunable_layers(m):
        assert torch.equal(mag[n], layer.weight.detach().abs())


# ------------------------------------------------- what separates OBD from magnitude pruning (docs/sparsify.md)
def test_diagfisher_removes_the_weights_of_constant_zero_inputs_first_and_magnitude_keeps_them():
    """Digits pixels 0, 32, 39 and 56 are 0 on every training image, so their first-layer weights get
    ``F_qq = 0`` exactly (their gradient is ``delta x_q``): undamped (as the WoodFisher scripts' ``diagfisher``)
    their saliency is the layer's minimum, 0, and OBD removes them with the other zero-saliency weights before any
    other weight, however large they are; magnitude pruning keeps them (they are made the largest here)."""
    ds = _digits()
    dead = (ds.train_x.abs().sum(0) == 0).nonzero().flatten()
    assert dead.tolist() == [0, 32, 39, 56]
    m = create_model("mlp", input_size=64, depth=2, width=16, norm="bn", seed=0)
    first = prunable_layers(m)[0][0]
    with torch.no_grad():
        m.get_submodule(first).weight[:, dead] = 3.0
    recompute_bn_stats(m, (ds.train_x, ds.train_y))  # BN statistics of the data: no unit is dead in eval mode
    f = saliencies(m, "diagfisher", ds, n_samples=None, damping=0.0)[first]
    assert not f[:, dead].any() and bool((f.abs().sum(1) > 0).all())
    zero = int((f == 0).sum())
    assert zero < f.numel() / 4
    s = zero / f.numel()
    obd = masks(prune(m, s, "diagfisher", ds, scope="layer", modules=[first], n_samples=None, damping=0.0))[first]
    mag = masks(prune(m, s, "magni", modules=[first]))[first]
    assert torch.equal(obd, f != 0) and not obd[:, dead].any()
    assert mag[:, dead].all()
    # the global diagfisher ranking also removes them first
    n = sum(layer.weight.numel() for _, layer in prunable_layers(m))
    glob = masks(prune(m, zero / n, "diagfisher", ds, n_samples=None, damping=0.0))
    assert not glob[first][:, dead].any()


def test_diagfisher_with_a_dominant_damping_is_magnitude_pruning_at_the_same_scope():
    """``0.5 (F_qq + damping) w_q^2`` orders the weights by ``|w_q|`` once the damping dominates the Fisher: per
    layer it is ``magni``, globally ``globalmagni``."""
    ds = _digits()
    m = create_model("mlp", input_size=64, depth=2, width=16, norm="bn", seed=0)
    for scope, base in (("layer", "magni"), ("global", "globalmagni")):
        a = masks(prune(m, 0.7, "diagfisher", ds, scope=scope, damping=1e30, n_samples=200))
        b = masks(prune(m, 0.7, base))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        c = masks(prune(m, 0.7, "diagfisher", ds, scope=scope, damping=1e-5, n_samples=200))
        assert not all(torch.equal(c[k], b[k]) for k in c)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_by_saliency_is_prune_with_the_same_scores(scope):
    """Pruning by :func:`saliencies`' scores gives ``prune``'s masks and weights; a partial dict prunes only its
    layers; wrong shapes, names and scopes raise."""
    ds = _digits()
    m = create_model("mlp", input_size=64, depth=2, width=16, norm="bn", seed=0)
    kw = {"n_samples": 200, "damping": 1e-4}
    sal = saliencies(m, "diagfisher", ds, **kw)
    a = prune_by_saliency(m, sal, 0.6, scope)
    b = prune(m, 0.6, "diagfisher", ds, scope=scope, **kw)
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    first = next(iter(sal))
    part = prune_by_saliency(m, {first: sal[first]}, 0.5, scope)
    assert list(masks(part)) == [first] and int((~masks(part)[first]).sum()) == round(0.5 * sal[first].numel())
    with pytest.raises(ValueError, match="shape"):
        prune_by_saliency(m, {first: sal[first].T}, 0.5)
    with pytest.raises(ValueError, match="not Linear/Conv"):
        prune_by_saliency(m, {"nope": sal[first]}, 0.5)
    with pytest.raises(ValueError, match="scope"):
        prune_by_saliency(m, sal, 0.5, "unit")
