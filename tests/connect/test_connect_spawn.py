"""Instability analysis (spawn) on digits: k1 = 0 children are less stable than children spawned later."""

import pytest
import torch
from torch import nn

from zooscape.connect.spawn import child_data_seed, instability_analysis
from zooscape.data import load_dataset
from zooscape.train import TrainConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


CFG = dict(epochs=4, batch_size=32, optimizer="adam", lr=0.02)


def test_children_spawned_at_init_have_larger_barrier(digits):
    res = instability_analysis(
        _mlp(0), digits, TrainConfig(**CFG), k1s=[0, 2], k2s=[4], n_points=9, splits=("train",), device="cpu"
    )
    by_k1 = {r["k1"]: r for r in res.records}
    assert sorted(by_k1) == [0, 2] and all(r["k2"] == 4 for r in res.records)
    assert by_k1[0]["barrier_loss_train_linear"] > by_k1[2]["barrier_loss_train_linear"] + 0.02
    assert by_k1[0]["barrier_error_train_linear"] > by_k1[2]["barrier_error_train_linear"]
    # later spawn -> shorter independent training -> closer in weight space
    assert by_k1[0]["distance"] > by_k1[2]["distance"] > 0
    # the table used by the plot: one line per k2, indexed by k1
    table = res.barrier_table("loss", "train")
    assert table == {4: {0: by_k1[0]["barrier_loss_train_linear"], 2: by_k1[2]["barrier_loss_train_linear"]}}
    assert sorted(res.main_checkpoints) == [0, 2]
    assert "0.weight.exp_avg" in res.main_checkpoints[2].optimizer_states[0]
    assert len(res.main_history) == 5 and len(res.child_history[(0, 0)]) == 4 and len(res.child_history[(2, 0)]) == 2


def test_child_with_main_data_seed_reproduces_main_branch(digits):
    # control: same data order as the main branch -> resuming is exact -> the child is the main branch
    res = instability_analysis(
        _mlp(1), digits, TrainConfig(**dict(CFG, epochs=3)), k1s=[1], k2s=[3], seed=5, child_data_seeds=[5],
        n_points=3, splits=("test",), device="cpu",
    )
    (rec,) = res.records
    assert rec["distance"] < 1e-4
    assert abs(rec["barrier_loss_test_linear"]) < 1e-5
    assert rec["child_test_loss"] == pytest.approx(rec["main_test_loss"], abs=1e-5)


def test_growing_population_matches_separate_runs(digits):
    # a child's result does not depend on the other children it trained with
    cfg = TrainConfig(**dict(CFG, epochs=3))
    seeds = [child_data_seed(0, 0, 0), child_data_seed(0, 1, 0)]
    both = instability_analysis(
        _mlp(2), digits, cfg, k1s=[0, 1], k2s=[3], child_data_seeds=seeds, n_points=3, splits=("test",), device="cpu"
    )
    alone = instability_analysis(
        _mlp(2), digits, cfg, k1s=[1], k2s=[3], child_data_seeds=seeds[1:], n_points=3, splits=("test",), device="cpu"
    )
    rec_both = next(r for r in both.records if r["k1"] == 1)
    (rec_alone,) = alone.records
    assert rec_both["distance"] == pytest.approx(rec_alone["distance"], rel=1e-4, abs=1e-5)
    assert rec_both["child_test_loss"] == pytest.approx(rec_alone["child_test_loss"], rel=1e-5)


def test_records_cover_every_later_k2_and_replicate(digits):
    res = instability_analysis(
        _mlp(3), digits, TrainConfig(**dict(CFG, epochs=3)), k1s=[0, 1], replicates=2, n_points=3,
        splits=("test",), device="cpu",
    )
    pairs = sorted((r["k1"], r["k2"], r["replicate"]) for r in res.records)
    expected = sorted((k1, k2, rep) for k1 in (0, 1) for k2 in (1, 2, 3) for rep in (0, 1) if k2 > k1)
    assert pairs == expected
    assert len({r["child_data_seed"] for r in res.records}) == 4
    assert all(r["epochs_after_spawn"] == r["k2"] - r["k1"] for r in res.records)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k1s=[3]), "k1s"),
        (dict(k1s=[-1]), "k1s"),
        (dict(k1s=[]), "k1s"),
        (dict(k1s=[0], k2s=[4]), "k2s"),
        (dict(k1s=[1], k2s=[1]), "later"),
        (dict(k1s=[0], child_data_seeds=[1, 2]), "child_data_seeds"),
        (dict(k1s=[0], replicates=0), "replicates"),
        (dict(k1s=[0], bn_mode="fresh"), "bn_mode"),
    ],
)
def test_bad_arguments(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        instability_analysis(_mlp(0), digits, TrainConfig(**dict(CFG, epochs=3)), device="cpu", **kwargs)
