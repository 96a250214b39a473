"""zooscape.align.lmc: functional paths of state dicts agree with connect's per-model path; renormalised paths."""

import pytest
import torch

from zooscape.align import merge, repair
from zooscape.align.lmc import align_states, pair_barriers_aligned, renormalized_path, state_path
from zooscape.connect import evaluate_model, linear_path
from zooscape.data import load_dataset
from zooscape.models import create_model


@pytest.fixture(scope="module")
def setup():
    ds = load_dataset("digits", seed=0)
    models = []
    for seed in (0, 1):
        m = create_model("mlp", input_size=64, depth=2, width=32, norm="bn", seed=seed)
        with torch.no_grad():  # distinct, non-trivial BN statistics without training
            m.train()
            m(ds.train_x[:200] * (1 + seed))
        models.append(m.eval())
    return ds, models


@pytest.mark.parametrize("renorm", ["none", "reset_bn"])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_state_path_agrees_with_the_per_model_path(setup, renorm, method):
    ds, (a, b) = setup
    fast = state_path(a, a.state_dict(), b.state_dict(), ds, 5, splits=("train", "test"), renorm=renorm,
                      method=method)
    slow = linear_path(a, b, ds, 5, splits=("train", "test"), bn_mode="reset" if renorm == "reset_bn" else
                       "interpolate", method="loop")
    assert fast.method == method
    for split in ("train", "test"):
        assert torch.allclose(fast.loss[split], slow.loss[split], atol=1e-5), (split, fast.loss, slow.loss)
        assert torch.allclose(fast.error[split], slow.error[split], atol=1e-6)
    assert fast.distance == pytest.approx(slow.distance, rel=1e-9)


def test_state_path_reads_views_without_changing_them(setup):
    ds, (a, b) = setup
    stacked = {k: torch.stack([a.state_dict()[k], b.state_dict()[k]]) for k in a.state_dict()}
    before = {k: v.clone() for k, v in stacked.items()}
    views = [{k: v[i] for k, v in stacked.items()} for i in (0, 1)]
    path = state_path(a, views[0], views[1], ds, 3, splits=("test",))
    ref = state_path(a, a.state_dict(), b.state_dict(), ds, 3, splits=("test",))
    assert torch.equal(path.loss["test"], ref.loss["test"])
    assert all(torch.equal(stacked[k], before[k]) for k in stacked)


def test_repair_path_points_are_repaired_interpolations(setup):
    ds, (a, b) = setup
    path = renormalized_path(a, b, ds, "repair", 3, splits=("test",))
    x, y = ds.split("test")
    mid = merge([a, b], align=None).model
    fixed = repair(mid, [a, b], ds.train_x, [0.5, 0.5])
    assert path.loss["test"][1].item() == pytest.approx(evaluate_model(fixed, x, y, "classification")[0], abs=1e-6)
    # at the endpoints REPAIR towards a model's own statistics changes nothing
    assert path.loss["test"][0].item() == pytest.approx(evaluate_model(a, x, y, "classification")[0], abs=1e-4)
    assert path.loss["test"][-1].item() == pytest.approx(evaluate_model(b, x, y, "classification")[0], abs=1e-4)


def test_align_states_matches_align_pair_and_stages(setup):
    ds, (a, b) = setup
    res = align_states(a, a.state_dict(), b.state_dict(), "weight", ds, seed=1)
    paths, pair = pair_barriers_aligned(a, b, ds, "weight", "reset_bn", 3, splits=("test",), seed=1)
    assert set(paths) == {"naive", "aligned", "final"}
    assert pair.perm == res.perm and pair.objective == res.objective
    assert all(torch.equal(pair.state[k], res.state[k]) for k in res.state)
    none_paths, none = pair_barriers_aligned(a, b, ds, "none", "none", 3, splits=("test",))
    assert set(none_paths) == {"naive", "final"} and none_paths["final"] is none_paths["naive"]
    assert none.perm is None
    with pytest.raises(ValueError, match="renorm"):
        renormalized_path(a, b, ds, "fix")
