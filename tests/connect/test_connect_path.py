"""linear_path: vectorized evaluation vs the slow loop, closed-form 1-D paths, endpoints, barriers."""

import json

import pytest
import torch
from connect_helpers import make_mlp
from torch import nn

from zooscape.connect import evaluate_model, interpolate, l2_distance, linear_path, path_alphas


class ProductModel(nn.Module):
    """f(x) = x * w1 * w2 + c: along a straight line in (w1, w2, c) the output is a quadratic in alpha."""

    def __init__(self, w1: float, w2: float, c: float):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(w1, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.tensor(w2, dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, x):
        return x * self.w1 * self.w2 + self.c


ONE = {s: (torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)) for s in ("train", "test")}


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_closed_form_symmetric_bump(method):
    # w1 = w2 = 1 - 2a, c = -1: f(a) = (1 - 2a)^2 - 1, loss = f^2 = 16 a^2 (1 - a)^2; endpoints 0, peak 1 at 0.5
    path = linear_path(ProductModel(1, 1, -1), ProductModel(-1, -1, -1), ONE, n_points=9, method=method)
    a = path.alphas
    torch.testing.assert_close(path.loss["test"], 16 * a**2 * (1 - a) ** 2)
    for definition in ("linear", "mean", "midpoint"):
        assert path.barrier("test", "loss", definition) == pytest.approx(1.0)
    assert path.distance == pytest.approx(8**0.5)
    assert path.task == "regression" and path.error == {}


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_closed_form_definitions_disagree(method):
    # c goes -1 -> 0: f(a) = 4a^2 - 3a, loss = a^2 (4a - 3)^2 with endpoints 0 and 1.
    # loss(a) - a <= 0 on [0, 1] with equality at a = 0, 1/4, 1  -> linear barrier 0
    # max loss = 1 (at a = 1)                                      -> mean barrier 1 - 1/2 = 0.5
    # loss(1/2) = 1/4                                              -> midpoint barrier 1/4 - 1/2 = -0.25
    path = linear_path(ProductModel(1, 1, -1), ProductModel(-1, -1, 0), ONE, n_points=9, method=method)
    a = path.alphas
    torch.testing.assert_close(path.loss["train"], a**2 * (4 * a - 3) ** 2)
    assert path.barrier("train", "loss", "linear") == pytest.approx(0.0, abs=1e-12)
    assert path.barrier("train", "loss", "mean") == pytest.approx(0.5)
    assert path.barrier("train", "loss", "midpoint") == pytest.approx(-0.25)


def test_identical_endpoints_have_zero_barrier(mlp_pair, mlp_data):
    a, _ = mlp_pair
    for bn_mode in ("interpolate", "reset"):
        path = linear_path(a, a, mlp_data, n_points=7, bn_mode=bn_mode)
        assert path.distance == 0.0
        for split in ("train", "test"):
            for metric in ("loss", "error"):
                for definition in ("linear", "mean", "midpoint"):
                    assert abs(path.barrier(split, metric, definition)) < 1e-6


@pytest.mark.parametrize("bn_mode", ["interpolate", "reset"])
@pytest.mark.parametrize("pair, data", [("mlp_pair", "mlp_data"), ("cnn_pair", "cnn_data")])
def test_vmap_agrees_with_loop_of_deep_copies(request, pair, data, bn_mode):
    a, b = request.getfixturevalue(pair)
    data = request.getfixturevalue(data)
    fast = linear_path(a, b, data, n_points=6, bn_mode=bn_mode, bn_batch_size=16, batch_size=10)
    slow = linear_path(a, b, data, n_points=6, bn_mode=bn_mode, bn_batch_size=16, batch_size=10, method="loop")
    assert fast.alphas.shape == (7,)  # 0.5 added to the even grid
    for split in ("train", "test"):
        torch.testing.assert_close(fast.loss[split], slow.loss[split], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast.error[split], slow.error[split])
    for split in ("train", "test"):
        for metric in ("loss", "error"):
            assert fast.barriers[split][metric] == pytest.approx(slow.barriers[split][metric], abs=1e-5)


def test_bn_modes_give_different_curves(mlp_pair, mlp_data):
    a, b = mlp_pair
    interp = linear_path(a, b, mlp_data, n_points=5, splits=("test",))
    reset = linear_path(a, b, mlp_data, n_points=5, splits=("test",), bn_mode="reset")
    assert not torch.allclose(interp.loss["test"], reset.loss["test"])


def test_endpoints_reproduce_models(mlp_pair, mlp_data):
    a, b = mlp_pair
    path = linear_path(a, b, mlp_data, n_points=5)
    for split in ("train", "test"):
        x, y = mlp_data[split]
        loss_a, err_a = evaluate_model(a, x, y, "classification")
        loss_b, err_b = evaluate_model(b, x, y, "classification")
        assert float(path.loss[split][0]) == pytest.approx(loss_a, rel=1e-5)
        assert float(path.loss[split][-1]) == pytest.approx(loss_b, rel=1e-5)
        assert float(path.error[split][0]) == pytest.approx(err_a)
        assert float(path.error[split][-1]) == pytest.approx(err_b)
    assert path.distance == pytest.approx(l2_distance(a, b))


def test_interior_point_matches_interpolated_model(cnn_pair, cnn_data):
    a, b = cnn_pair
    path = linear_path(a, b, cnn_data, n_points=5, splits=("test",), bn_mode="reset")
    m = interpolate(a, b, 0.25, bn_mode="reset", data=cnn_data)
    loss, err = evaluate_model(m, *cnn_data["test"], "classification")
    assert float(path.loss["test"][1]) == pytest.approx(loss, rel=1e-5)
    assert float(path.error["test"][1]) == pytest.approx(err)


def test_alpha_chunks_do_not_change_results(mlp_pair, mlp_data):
    a, b = mlp_pair
    whole = linear_path(a, b, mlp_data, n_points=9, bn_mode="reset")
    chunked = linear_path(a, b, mlp_data, n_points=9, bn_mode="reset", alpha_batch_size=2)
    torch.testing.assert_close(whole.loss["test"], chunked.loss["test"])


def test_inputs_untouched_and_modes_kept(mlp_pair, mlp_data):
    a, b = mlp_pair
    a.train()
    before = {k: v.clone() for k, v in a.state_dict().items()}
    linear_path(a, b, mlp_data, n_points=3, bn_mode="reset")
    assert a.training
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())


class Splits:
    """DataSplits-like object: .split(name) and .task."""

    task = "classification"

    def __init__(self, mapping):
        self._mapping = mapping

    def split(self, name):
        if name not in self._mapping:
            raise KeyError(name)
        return self._mapping[name]


def test_datasplits_like_object(mlp_pair, mlp_data):
    a, b = mlp_pair
    from_obj = linear_path(a, b, Splits(mlp_data), n_points=3, bn_mode="reset")
    from_map = linear_path(a, b, mlp_data, n_points=3, bn_mode="reset")
    torch.testing.assert_close(from_obj.loss["test"], from_map.loss["test"])
    with pytest.raises(KeyError, match="val"):
        linear_path(a, b, Splits(mlp_data), splits=("val",))


def test_path_alphas():
    assert path_alphas(25).shape == (25,)
    assert 0.5 in path_alphas(4).tolist() and path_alphas(4).shape == (5,)
    with pytest.raises(ValueError, match="n_points"):
        path_alphas(1)


def test_result_serializes(mlp_pair, mlp_data):
    path = linear_path(*mlp_pair, mlp_data, n_points=3)
    d = json.loads(json.dumps(path.to_dict()))
    assert d["alphas"] == [0.0, 0.5, 1.0]
    flat = path.flat_barriers()
    assert flat["barrier_error_test_linear"] == path.barrier("test", "error", "linear")
    assert len(flat) == 2 * 2 * 3


def test_bad_arguments(mlp_pair, mlp_data):
    a, b = mlp_pair
    with pytest.raises(KeyError, match="'val'"):
        linear_path(a, b, mlp_data, splits=("val",))
    with pytest.raises(ValueError, match="method"):
        linear_path(a, b, mlp_data, method="scan")
    with pytest.raises(ValueError, match="architecture"):
        linear_path(a, make_mlp(0, bn=False), mlp_data)
    with pytest.raises(TypeError, match="DataSplits"):
        linear_path(a, b, [1, 2, 3])
    with pytest.raises(KeyError, match="split 'val'"):
        linear_path(a, b, mlp_data).barrier("val")


class Shifted(nn.Module):
    """Linear -> BatchNorm with a non-BatchNorm float buffer added to the input."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("shift", torch.randn(6))
        self.lin = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.lin(x + self.shift))))


def test_other_buffers_are_interpolated_in_reset_mode(mlp_data):
    a, b = Shifted(0), Shifted(1)
    fast = linear_path(a, b, mlp_data, n_points=5, bn_mode="reset")
    slow = linear_path(a, b, mlp_data, n_points=5, bn_mode="reset", method="loop")
    torch.testing.assert_close(fast.loss["test"], slow.loss["test"], rtol=1e-5, atol=1e-6)


def test_auto_method_picks_population_for_small_nets_else_vmap_or_loop():
    from zooscape.connect.batched import choose_method, macs_per_sample
    from zooscape.connect.population import POPULATION_MAX_MACS, pick_method
    from zooscape.models import create_model

    small = create_model("mlp", seed=0, num_classes=10, width=32, depth=2, input_size=[64])
    x = torch.randn(4, 64)
    assert macs_per_sample(small, x) == 64 * 32 + 32 * 32 + 32 * 10
    assert choose_method(small, x) == "vmap" and choose_method(small, x, "loop") == "loop"
    cnn = create_model("cnn_s", seed=0, num_classes=10, in_channels=1, input_size=[1, 28, 28])
    assert choose_method(cnn, torch.randn(2, 1, 28, 28)) == "loop"
    data = {"test": (x, torch.randint(0, 10, (4,)))}
    other = create_model("mlp", seed=1, num_classes=10, width=32, depth=2, input_size=[64])
    assert linear_path(small, other, data, 3, splits=("test",)).method == "population"
    assert pick_method(small, x) == "population" and pick_method(small, x, "vmap") == "vmap"
    assert pick_method(cnn, torch.randn(2, 1, 28, 28)) == "population"
    big = create_model("mlp", seed=0, num_classes=10, width=512, depth=3, input_size=[784])
    assert macs_per_sample(big, torch.randn(2, 784)) > POPULATION_MAX_MACS
    assert pick_method(big, torch.randn(2, 784)) == "loop"
    # a container holding its own buffer has no population version: auto falls back to vmap/loop
    assert pick_method(Shifted(0), torch.randn(2, 6)) == "vmap"
