"""One-shot pruning: exact sparsity, OBD/OBS closed forms, the block Fisher, masks through safetensors."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.sparsify import load_pruned, masks, obd_scores, obs_scores, obs_update, prune, sparsity_ratio
from zooscape.sparsify.prune import fisher_blocks, prunable_layers


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
