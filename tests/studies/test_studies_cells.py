"""One definition of a grid cell for every study (zooscape.studies.cells)."""

import pytest

from zooscape.studies.cells import Cell, cell_key, grid_cells, is_grid_member

SPEC = """
[zoo]
name = "cells"

[dataset]
name = "digits"
seed = 42

[model]
name = "mlp"
width = 8
depth = 1

[training]
epochs = 1
batch_size = 128
optimizer = "adam"
lr = 0.01

[grid]
"dataset.seed" = [1, 2]
"training.seed" = [0, 1]
"""


def _cfg(lr=0.1, seed=0, data_seed=0, split_seed=42, width=8, derived=None):
    return {"dataset": {"name": "digits", "seed": split_seed}, "model": {"name": "mlp", "width": width},
            "training": {"lr": lr, "seed": seed, "data_seed": data_seed}, "derived": derived or {}}


def test_seeds_of_training_vary_within_a_cell_but_the_split_seed_does_not():
    assert cell_key(_cfg(seed=0, data_seed=0)) == cell_key(_cfg(seed=5, data_seed=7))
    assert cell_key(_cfg(split_seed=1)) != cell_key(_cfg(split_seed=2))
    assert cell_key(_cfg(lr=0.1)) != cell_key(_cfg(lr=0.2))


def test_cells_sort_numeric_settings_numerically_and_label_them():
    configs = {f"m{w}-{s}": _cfg(width=w, seed=s) for w in (128, 8, 64) for s in (0, 1)}
    cells = grid_cells(configs)
    assert [c.settings for c in cells] == [{"model.width": 8}, {"model.width": 64}, {"model.width": 128}]
    assert cells[2] == Cell(2, cells[2].key, ("m128-0", "m128-1"), {"model.width": 128})
    assert cells[1].label == "cell 1 (model.width=64)"


def test_failed_and_derived_models_are_not_grid_members():
    configs = {
        "a": _cfg(seed=0), "b": _cfg(seed=1), "failed": _cfg(seed=2),
        "main": _cfg(seed=3, derived={"lmc": {"role": "main"}}),
        "child": _cfg(seed=4, derived={"lmc": {"role": "child", "parent": "main"}}),
        "twin": _cfg(seed=5, derived={"twin": {"source_id": "a"}}),
        "merged": _cfg(seed=6, derived={"merge": {"sources": ["a", "b"]}}),
    }
    assert not is_grid_member(configs["child"]) and is_grid_member(configs["main"])
    (cell,) = grid_cells(configs, {"failed": "failed"})
    assert cell.model_ids == ("a", "b", "main")


@pytest.mark.slow
def test_metrics_run_lmc_pairs_and_curve_pairs_agree_on_cells(tmp_path):
    """Two split seeds x two training seeds: two cells of one pair each, for every pairwise study."""
    from zooscape.connect import CurveTrainConfig
    from zooscape.studies.curves import curve_pairs
    from zooscape.studies.lmc import pair_barriers
    from zooscape.studies.metrics import run_metrics
    from zooscape.zoo import open_zoo, train_zoo

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "zoo"
    train_zoo(spec, out, device="cpu", progress=False).close()
    with open_zoo(out) as zoo:
        by_key = {}
        for m in zoo.model_ids:
            by_key.setdefault(cell_key(zoo.config(m)), set()).add(m)
    expected = {frozenset(ids) for ids in by_key.values()}
    assert len(expected) == 2 and all(len(p) == 2 for p in expected)

    run_metrics(out, "cka", params={"n_samples": 64})
    with open_zoo(out) as zoo:
        cka = {frozenset((r.model_id, r.other_id)) for r in zoo.analyses("cka").itertuples()}
    lmc = {frozenset((r["model_id"], r["other_id"])) for r in pair_barriers(out, n_points=3, splits=("test",))}
    curves = {frozenset((r["model_id"], r["other_id"])) for r in curve_pairs(
        out, train_config=CurveTrainConfig(epochs=1, batch_size=128, lr=0.05), splits=("test",), n_points=3)}
    assert cka == lmc == curves == expected
