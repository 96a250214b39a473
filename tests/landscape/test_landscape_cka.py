"""Tests for zooscape.landscape.cka: identities, invariances, independent HSIC paths and hook hygiene."""

import pytest
import torch
from torch import nn

from zooscape.landscape.cka import (
    MinibatchCKA,
    cka,
    cka_heatmap,
    default_layers,
    gram_linear,
    gram_rbf,
    hsic_biased,
    hsic_unbiased,
    layer_features,
)

D64 = torch.float64


def _data(n=64, p=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=D64)
    y = torch.tanh(x @ torch.randn(p, 7, generator=g, dtype=D64)) + 0.3 * torch.randn(n, 7, generator=g, dtype=D64)
    return x, y, g


def _u_centered(k):
    """Independent path: Szekely-Rizzo U-centring; HSIC_1 = <U(K), U(L)> / (n (n - 3))."""
    n = k.shape[0]
    k = k.clone()
    k.fill_diagonal_(0)
    row = k.sum(1, keepdim=True) / (n - 2)
    col = k.sum(0, keepdim=True) / (n - 2)
    u = k - row - col + k.sum() / ((n - 1) * (n - 2))
    u.fill_diagonal_(0)
    return u


CONFIGS = [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]


@pytest.mark.parametrize("kernel,debiased", CONFIGS)
def test_cka_of_a_representation_with_itself_is_one(kernel, debiased):
    x, y, _ = _data()
    assert float(cka(x, x, kernel=kernel, debiased=debiased)) == pytest.approx(1.0, abs=1e-12)
    value = float(cka(x, y, kernel=kernel, debiased=debiased))
    assert 0.0 < value < 0.99


@pytest.mark.parametrize("kernel,debiased", CONFIGS)
def test_cka_invariances(kernel, debiased):
    x, y, g = _data(seed=1)
    ref = float(cka(x, y, kernel=kernel, debiased=debiased))
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=D64))
    assert float(cka(x @ q, y, kernel=kernel, debiased=debiased)) == pytest.approx(ref, abs=1e-10)
    assert float(cka(3.7 * x, y, kernel=kernel, debiased=debiased)) == pytest.approx(ref, abs=1e-10)
    assert float(cka(x + torch.randn(1, 10, generator=g, dtype=D64) * 5, y, kernel=kernel,
                     debiased=debiased)) == pytest.approx(ref, abs=1e-10)
    # ...but not to an anisotropic linear map
    stretch = torch.diag(torch.logspace(-2, 1, 10, dtype=D64))
    assert abs(float(cka(x @ stretch, y, kernel=kernel, debiased=debiased)) - ref) > 1e-3


def test_linear_cka_feature_and_gram_paths_agree():
    x, y, _ = _data(n=40, p=10)
    feature_path = cka(x, y)  # p < n: feature formula
    k, l = gram_linear(x), gram_linear(y)  # noqa: E741
    gram_path = hsic_biased(k, l) / torch.sqrt(hsic_biased(k, k) * hsic_biased(l, l))
    torch.testing.assert_close(feature_path, gram_path)
    wide = torch.cat([x, x @ torch.randn(10, 60, dtype=D64)], 1)  # p > n: Gram path inside cka
    k2 = gram_linear(wide)
    torch.testing.assert_close(cka(wide, y), hsic_biased(k2, l) / torch.sqrt(hsic_biased(k2, k2) * hsic_biased(l, l)))


def test_unbiased_hsic_matches_u_centering_and_stacks():
    x, y, _ = _data(n=20)
    k, l = gram_linear(x), gram_rbf(y)  # noqa: E741
    expected = (_u_centered(k) * _u_centered(l)).sum() / (20 * 17)
    torch.testing.assert_close(hsic_unbiased(k, l), expected)
    stacked = hsic_unbiased(torch.stack([k, l]), torch.stack([l, k, l]))
    assert stacked.shape == (2, 3)
    torch.testing.assert_close(stacked[0, 0], expected)
    torch.testing.assert_close(stacked[1, 1], expected)
    with pytest.raises(ValueError, match="n >= 4"):
        hsic_unbiased(k[:3, :3], l[:3, :3])


def test_debiasing_removes_high_dimensional_bias():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 500, generator=g, dtype=D64)
    y = torch.randn(50, 500, generator=g, dtype=D64)  # independent: population CKA is 0
    assert float(cka(x, y)) > 0.5  # biased CKA is far from 0 when p >> n
    assert abs(float(cka(x, y, debiased=True))) < 0.1


def test_minibatch_cka_is_close_to_full_data_cka():
    g = torch.Generator().manual_seed(3)
    n = 2048
    x = torch.randn(n, 16, generator=g, dtype=D64)
    y = x @ torch.randn(16, 12, generator=g, dtype=D64) + 2.0 * torch.randn(n, 12, generator=g, dtype=D64)
    full = float(cka(x, y, debiased=True))
    acc = MinibatchCKA()
    for i in range(0, n, 256):
        acc.update(x[i:i + 256], y[i:i + 256])
    assert acc.num_batches == 8 and acc.num_samples == n
    mb = float(acc.compute()[0, 0])
    assert 0.2 < full < 0.9
    assert mb == pytest.approx(full, abs=0.01)


def test_constant_representation_gives_nan_not_an_error():
    x, _, _ = _data()
    assert torch.isnan(cka(x, torch.zeros(64, 3, dtype=D64)))
    assert torch.isnan(cka(x, torch.ones(64, 3, dtype=D64), kernel="rbf"))


def test_input_validation():
    x, y, _ = _data()
    with pytest.raises(ValueError, match="same inputs"):
        cka(x, y[:10])
    with pytest.raises(ValueError, match="kernel"):
        cka(x, y, kernel="poly")
    with pytest.raises(ValueError, match=r"\[n, features"):
        cka(torch.zeros(5), y)
    acc = MinibatchCKA(2, 1)
    with pytest.raises(ValueError, match="expected 2 x"):
        acc.update(x, y)
    with pytest.raises(ValueError, match=">= 4"):
        acc.update([x[:3], x[:3]], y[:3])
    with pytest.raises(ValueError, match="no batch"):
        acc.compute()


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 8), nn.BatchNorm1d(8),
                         nn.ReLU(), nn.Linear(8, 3))


def test_layer_features_and_hooks_are_removed():
    model = _net(0)
    model.train()
    x = torch.randn(30, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert default_layers(model) == ["0", "1", "3", "4", "5", "6", ""]
    feats = layer_features(model, x, ["0", "6", ""], batch_size=7)
    assert feats["0"].shape == (30, 16)
    with torch.no_grad():
        model.eval()
        expected = model(x)
        model.train()
    torch.testing.assert_close(feats[""], expected)
    torch.testing.assert_close(feats["6"], expected)  # the last layer's output is the model's output
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert model.training and model[4].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(KeyError, match="nope"):
        layer_features(model, x, ["nope"])
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_hooks_removed_when_forward_fails():
    model = _net(0)
    with pytest.raises(RuntimeError):
        layer_features(model, torch.randn(5, 4), ["0", "3"])  # wrong input width
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_cka_heatmap_diagonal_of_self_comparison_and_agreement_with_features():
    a, b = _net(0), _net(1)
    x = torch.randn(203, 6)  # 203 = 3 x 64 + 11: the remainder forms its own batch
    layers = ["0", "3", "6"]
    self_map = cka_heatmap(a, a, x, layers_a=layers, layers_b=layers, batch_size=64)
    torch.testing.assert_close(torch.diagonal(self_map), torch.ones(3, dtype=D64))
    torch.testing.assert_close(self_map, self_map.T)
    merged = cka_heatmap(a, a, x[:130], layers_a=["3"], layers_b=["3"], batch_size=64)  # tail of 2 is merged
    assert float(merged[0, 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="batch_size"):
        cka_heatmap(a, a, x, batch_size=3)
    cross = cka_heatmap(a, b, x, layers_a=layers, layers_b=["3", ""], batch_size=64)
    assert cross.shape == (3, 2)
    fa = layer_features(a, x, layers)
    fb = layer_features(b, x, ["3", ""])
    acc = MinibatchCKA(3, 2)
    for i in range(0, 203, 64):
        sl = slice(i, min(i + 64, 203))
        acc.update([fa[n][sl] for n in layers], [fb[n][sl] for n in ["3", ""]])
    torch.testing.assert_close(cross, acc.compute())
    rbf = cka_heatmap(a, b, x[:64], layers_a=[""], layers_b=[""], batch_size=64, kernel="rbf")
    torch.testing.assert_close(rbf[0, 0], cka(fa["6"][:64], fb[""][:64], kernel="rbf", debiased=True))


# --- Kornblith et al.'s reference notebook, written independently in numpy from its formulas -----------------


def _np_gram_rbf(x, threshold):
    """The notebook's ``gram_rbf``: sigma^2 = threshold^2 * numpy.median of all n^2 squared distances."""
    import numpy as np

    dot = x @ x.T
    sq = np.diag(dot)
    d2 = -2 * dot + sq[:, None] + sq[None, :]
    return np.exp(-d2 / (2 * threshold ** 2 * np.median(d2)))


def _np_cka(gx, gy):
    """The notebook's biased ``cka``: <HKH, HLH>_F / (||HKH||_F ||HLH||_F)."""
    import numpy as np

    def center(g):
        h = np.eye(g.shape[0]) - 1.0 / g.shape[0]
        return h @ g @ h

    gx, gy = center(gx), center(gy)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def _golden_pair():
    import numpy as np

    rs = np.random.RandomState(1337)
    x = rs.randn(100, 10)
    y = rs.randn(100, 10) + x
    return x, y


def test_rbf_cka_reproduces_the_reference_notebook_golden_value():
    x, y = _golden_pair()
    ours = float(cka(torch.from_numpy(x), torch.from_numpy(y), kernel="rbf", threshold=0.5))
    reference = _np_cka(_np_gram_rbf(x, 0.5), _np_gram_rbf(y, 0.5))
    assert round(reference, 5) == 0.65483  # the value the notebook prints
    assert ours == pytest.approx(reference, abs=1e-12)
    for threshold in (0.2, 1.0, 3.0):
        assert float(cka(torch.from_numpy(x), torch.from_numpy(y), kernel="rbf", threshold=threshold)) == \
            pytest.approx(_np_cka(_np_gram_rbf(x, threshold), _np_gram_rbf(y, threshold)), abs=1e-12)


def test_rbf_bandwidth_rules_are_named_and_differ_as_documented():
    import numpy as np

    x, y = _golden_pair()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    distinct = float(cka(xt, yt, kernel="rbf", threshold=0.5, bandwidth="distinct_pairs"))
    assert round(distinct, 5) == 0.65403  # zooscape's former rule
    # distinct_pairs: the lower middle value of the i < j distances (torch.median semantics)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    pairs = np.sort(d2[np.triu_indices(100, 1)])
    lower_mid = pairs[(len(pairs) - 1) // 2]
    k = torch.exp(-torch.from_numpy(d2) / (2 * 0.25 * lower_mid))
    torch.testing.assert_close(gram_rbf(xt, 0.5, "distinct_pairs"), k)
    torch.testing.assert_close(gram_rbf(xt, 0.5), torch.from_numpy(_np_gram_rbf(x, 0.5)))
    with pytest.raises(ValueError, match="bandwidth"):
        cka(xt, yt, kernel="rbf", bandwidth="mean")


def test_median_of_all_pairs_averages_the_two_middle_values():
    from zooscape.landscape.cka import _median_all

    assert float(_median_all(torch.tensor([[4.0, 1.0], [3.0, 2.0]]))) == 2.5
    assert float(_median_all(torch.tensor([5.0, 1.0, 3.0]))) == 3.0
