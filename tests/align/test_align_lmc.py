"""Published qualitative re-basin results at small scale: digits MLPs of widths 8 to 512.

Ainsworth et al. (2023): after weight matching the loss barrier shrinks as width grows and the midpoint
approaches the endpoints; Jordan et al. (2023): REPAIR raises the midpoint accuracy of networks without
normalisation.  Pairs of MLPs (64-w-w-10) are trained with zooscape.train; barriers use zooscape.connect.
"""

from __future__ import annotations

import pytest
import torch

from zooscape.align import merge, repair, weight_matching
from zooscape.connect import linear_path
from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.train import Member, TrainConfig, train_population

WIDTHS = (8, 32, 128, 512)
pytestmark = pytest.mark.slow


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def results():
    ds = load_dataset("digits", seed=0)
    cfg = TrainConfig(epochs=15, batch_size=64, optimizer="adam", lr=3e-3)
    out = {}
    for width in WIDTHS:
        models = [create_model("mlp", input_size=64, depth=2, width=width, seed=s) for s in (0, 1)]
        trained = train_population(models, ds, cfg, [Member(seed=0), Member(seed=1)], device="cpu")
        for m, sd in zip(models, trained.state_dicts):
            m.load_state_dict(sd)
            m.eval()
        a, b = models
        b_wm = weight_matching(a, b).model
        mid_wm = merge([a, b_wm], align=None).model
        mid_repair = repair(mid_wm, [a, b_wm], ds.train_x)
        out[width] = {
            "endpoints": (_acc(a, ds.test_x, ds.test_y), _acc(b, ds.test_x, ds.test_y)),
            "mid_wm": _acc(mid_wm, ds.test_x, ds.test_y),
            "mid_repair": _acc(mid_repair, ds.test_x, ds.test_y),
            "barrier_wm": linear_path(a, b_wm, ds, n_points=5, splits=("train",)).barrier("train", "loss"),
            "barrier_naive": linear_path(a, b, ds, n_points=5, splits=("train",)).barrier("train", "loss"),
        }
    return out


def test_weight_matching_barrier_shrinks_with_width(results):
    barriers = [results[w]["barrier_wm"] for w in WIDTHS]
    assert all(b1 > b2 for b1, b2 in zip(barriers, barriers[1:])), barriers
    assert barriers[-1] < 0.05
    for w in WIDTHS:
        assert results[w]["barrier_wm"] < results[w]["barrier_naive"], w


def test_midpoint_accuracy_approaches_endpoints_at_large_width(results):
    gap = {w: sum(results[w]["endpoints"]) / 2 - results[w]["mid_wm"] for w in WIDTHS}
    assert gap[512] < 0.02
    assert gap[8] > gap[512] + 0.03


def test_repair_raises_midpoint_accuracy_without_normalisation(results):
    for w in (8, 32):
        assert results[w]["mid_repair"] > results[w]["mid_wm"], (w, results[w])
    for w in WIDTHS:
        assert results[w]["mid_repair"] >= results[w]["mid_wm"] - 0.01, (w, results[w])
