"""interpolate / interpolate_state / check_compatible / l2_distance."""

import math

import pytest
import torch
from connect_helpers import make_cnn, make_mlp, perturb_bn_stats
from torch import nn

from zooscape.connect import (
    check_compatible,
    interpolate,
    interpolate_state,
    l2_distance,
    recompute_bn_stats,
)


def _states_equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_endpoints_are_exact(mlp_pair):
    a, b = mlp_pair
    assert _states_equal(interpolate(a, b, 0.0).state_dict(), a.state_dict())
    assert _states_equal(interpolate(a, b, 1.0).state_dict(), b.state_dict())


def test_interior_point_matches_formula_for_params_and_buffers(mlp_pair):
    a, b = mlp_pair
    alpha = 0.3
    sa, sb = a.state_dict(), b.state_dict()
    out = interpolate(a, b, alpha).state_dict()
    for key in sa:
        if sa[key].is_floating_point():
            torch.testing.assert_close(out[key], (1 - alpha) * sa[key] + alpha * sb[key])
        else:  # integer buffers: nearer endpoint
            assert torch.equal(out[key], sa[key])
    out = interpolate(a, b, 0.8).state_dict()
    assert torch.equal(out["1.num_batches_tracked"], sb["1.num_batches_tracked"])
    # running statistics really were interpolated (they differ between the endpoints)
    assert not torch.equal(sa["1.running_mean"], sb["1.running_mean"])


def test_extrapolation_and_inputs_untouched(mlp_pair):
    a, b = mlp_pair
    before_a = {k: v.clone() for k, v in a.state_dict().items()}
    before_b = {k: v.clone() for k, v in b.state_dict().items()}
    out = interpolate(a, b, -0.5).state_dict()
    torch.testing.assert_close(out["0.weight"], 1.5 * before_a["0.weight"] - 0.5 * before_b["0.weight"])
    assert _states_equal(a.state_dict(), before_a) and _states_equal(b.state_dict(), before_b)


def test_returned_model_is_independent_copy(mlp_pair):
    a, b = mlp_pair
    m = interpolate(a, b, 0.0)
    with torch.no_grad():
        m[0].weight.add_(1.0)
    assert not torch.equal(m[0].weight, a[0].weight)


def test_bn_reset_reestimates(mlp_pair, mlp_data):
    a, b = mlp_pair
    x = mlp_data["train"][0]
    m = interpolate(a, b, 0.4, bn_mode="reset", data=mlp_data, batch_size=16)
    ref = recompute_bn_stats(interpolate(a, b, 0.4), x, batch_size=16)
    assert _states_equal(m.state_dict(), ref.state_dict())
    # a tensor or an (x, y) pair is accepted as data too
    m2 = interpolate(a, b, 0.4, bn_mode="reset", data=mlp_data["train"], batch_size=16)
    assert _states_equal(m2.state_dict(), ref.state_dict())
    # and the statistics changed away from the interpolated ones
    interp = interpolate(a, b, 0.4).state_dict()
    assert not torch.allclose(m.state_dict()["1.running_mean"], interp["1.running_mean"])


def test_bn_reset_requires_data(mlp_pair):
    a, b = mlp_pair
    with pytest.raises(ValueError, match="data"):
        interpolate(a, b, 0.5, bn_mode="reset")
    # without BatchNorm no data is needed
    interpolate(make_mlp(0, bn=False), make_mlp(1, bn=False), 0.5, bn_mode="reset")


def test_bad_bn_mode(mlp_pair):
    with pytest.raises(ValueError, match="bn_mode"):
        interpolate(*mlp_pair, 0.5, bn_mode="recompute")


def test_shape_mismatch_is_clear():
    a = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    b = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"'0.weight'.*\(3, 4\).*\(5, 4\)"):
        interpolate(a, b, 0.5)


def test_architecture_mismatch_is_clear():
    with pytest.raises(ValueError, match="Tanh"):
        check_compatible(make_mlp(0, act=nn.ReLU), make_mlp(0, act=nn.Tanh))
    with pytest.raises(ValueError, match="architecture"):
        interpolate(make_mlp(0), make_cnn(0), 0.5)
    with pytest.raises(ValueError, match="architecture"):
        interpolate(make_mlp(0, bn=True), make_mlp(0, bn=False), 0.5)
    with pytest.raises(TypeError, match="nn.Module"):
        interpolate(make_mlp(0), make_mlp(0).state_dict(), 0.5)


def test_interpolate_state_dtype_and_key_mismatch():
    sa = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="dtype"):
        interpolate_state(sa, {"w": torch.zeros(2, dtype=torch.float64)}, 0.5)
    with pytest.raises(ValueError, match="'v'"):
        interpolate_state(sa, {"v": torch.zeros(2)}, 0.5)


def test_l2_distance(cnn_pair):
    a, b = cnn_pair
    pairs = zip(a.parameters(), b.parameters())
    manual = math.sqrt(sum(float((pa - pb).detach().double().pow(2).sum()) for pa, pb in pairs))
    assert l2_distance(a, b) == pytest.approx(manual)
    assert l2_distance(a, a) == 0.0
    with_buffers = l2_distance(a, b, include_buffers=True)
    assert with_buffers > l2_distance(a, b)
    # the distance along the path scales linearly with alpha
    assert l2_distance(a, interpolate(a, b, 0.25)) == pytest.approx(0.25 * manual, rel=1e-5)


def test_bn_reset_on_cnn_matches_perturbed_free_copy(cnn_pair, cnn_data):
    # re-estimated statistics do not depend on the running statistics the endpoints carried
    a, b = cnn_pair
    clean_a, clean_b = make_cnn(3), make_cnn(4)
    m1 = interpolate(a, b, 0.6, bn_mode="reset", data=cnn_data)
    clean_a, clean_b = perturb_bn_stats(clean_a, 9), perturb_bn_stats(clean_b, 8)
    m2 = interpolate(clean_a, clean_b, 0.6, bn_mode="reset", data=cnn_data)
    torch.testing.assert_close(m1.state_dict()["1.running_var"], m2.state_dict()["1.running_var"])
