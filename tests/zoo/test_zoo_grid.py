"""Grid expansion: Cartesian product, stable ids, derived fields, grouping."""

import itertools
from pathlib import Path

import pytest

from zooscape.zoo import checkpoint_epochs, expand_spec, group_configs, load_spec
from zooscape.zoo.grid import MEMBER_KEYS, group_key, model_id, resolve_sizes

HEAD = """
[zoo]
name = "{name}"
description = "{desc}"

[dataset]
name = "digits"

[model]
name = "mlp"

[training]
epochs = 2
batch_size = 16
lr = 0.01

[checkpoints]
epochs = {ckpt}

[population]
max_size = {max_size}

[grid]
"""


def spec_from(tmp_path: Path, grid: dict, name="a", desc="", ckpt='"all"', max_size=64, file="s.toml"):
    lines = [f'"{k}" = {v!r}'.replace("'", '"') for k, v in grid.items()]
    text = HEAD.format(name=name, desc=desc, ckpt=ckpt, max_size=max_size) + "\n".join(lines) + "\n"
    path = tmp_path / file
    path.write_text(text)
    return load_spec(path)


GRID = {"training.seed": [0, 1, 2], "training.lr": [0.1, 0.01], "model.width": [4, 8]}


def test_full_cartesian_product(tmp_path):
    configs = expand_spec(spec_from(tmp_path, GRID))
    assert len(configs) == 3 * 2 * 2
    seen = {(c["training"]["seed"], c["training"]["lr"], c["model"]["width"]) for c in configs}
    assert seen == set(itertools.product(*GRID.values()))
    assert len({c["model_id"] for c in configs}) == len(configs)
    for c in configs:  # base values survive, grid values override
        assert c["training"]["epochs"] == 2 and c["dataset"] == {"name": "digits"}


def test_ids_stable_under_grid_reordering(tmp_path):
    a = expand_spec(spec_from(tmp_path, GRID, file="a.toml"))
    reordered = {k: list(reversed(GRID[k])) for k in reversed(list(GRID))}
    b = expand_spec(spec_from(tmp_path, reordered, name="other", desc="renamed", ckpt="[1]", file="b.toml"))
    key = lambda c: (c["training"]["seed"], c["training"]["lr"], c["model"]["width"])
    ids_a = {key(c): (c["model_id"], c["group_id"]) for c in a}
    ids_b = {key(c): (c["model_id"], c["group_id"]) for c in b}
    assert ids_a == ids_b
    assert all(len(c["model_id"]) == 12 and int(c["model_id"], 16) >= 0 for c in a)


def test_id_depends_on_every_config_value(tmp_path):
    configs = expand_spec(spec_from(tmp_path, GRID))
    base = configs[0]
    for section, key, value in [("training", "lr", 0.5), ("training", "epochs", 3), ("model", "width", 5),
                                ("dataset", "seed", 7), ("model", "activation", "tanh")]:
        changed = {s: dict(base[s]) for s in ("dataset", "model", "training")}
        changed[section][key] = value
        assert model_id(changed) != base["model_id"]
    assert model_id({s: dict(base[s]) for s in ("dataset", "model", "training")}) == base["model_id"]


def test_temperature_is_lr_over_batch_size(tmp_path):
    spec = spec_from(tmp_path, {"training.lr": [0.1, 0.02], "training.batch_size": [8, 32]})
    for c in expand_spec(spec):
        assert c["derived"]["temperature"] == pytest.approx(c["training"]["lr"] / c["training"]["batch_size"])
        assert c["derived"]["width"] is None and c["derived"]["train_fraction"] == 1.0


def test_grouping_by_non_member_keys(tmp_path):
    grid = {**GRID, "model.init": ["kaiming_uniform", "xavier_normal"], "training.batch_size": [8, 16]}
    configs = expand_spec(spec_from(tmp_path, grid))
    groups = group_configs(configs, 64)
    # width x batch_size define the groups; seed, lr and init are member-level
    assert len(groups) == 2 * 2
    by_id = {c["model_id"]: c for c in configs}
    for g in groups:
        members = [by_id[m] for m in g.model_ids]
        assert len(members) == 3 * 2 * 2
        assert len({(m["model"]["width"], m["training"]["batch_size"]) for m in members}) == 1
        assert all(by_id[m]["group_id"] == g.group_id for m in g.model_ids)
    assert sorted(m for g in groups for m in g.model_ids) == sorted(by_id)


def test_group_chunks_respect_max_size(tmp_path):
    configs = expand_spec(spec_from(tmp_path, GRID, max_size=5))
    groups = group_configs(configs, 5)
    assert all(1 <= len(g.model_ids) <= 5 for g in groups)
    assert sorted(m for g in groups for m in g.model_ids) == sorted(c["model_id"] for c in configs)
    # each width (6 models) needs two chunks
    assert len(groups) == 4
    assert len({g.group_id for g in groups}) == 4
    for g in groups:
        assert len({group_key(c) for c in configs if c["model_id"] in g.model_ids}) == 1


def test_member_keys_are_the_documented_ones():
    assert set(MEMBER_KEYS) == {("training", "seed"), ("training", "data_seed"), ("training", "lr"),
                                ("training", "weight_decay"), ("training", "momentum"), ("model", "init")}


def test_checkpoint_epochs():
    assert checkpoint_epochs("all", 3) == (0, 1, 2, 3)
    assert checkpoint_epochs([2], 5) == (0, 2, 5)
    assert checkpoint_epochs([7, 3], 5) == (0, 3, 5)
    with pytest.raises(ValueError, match="spec_epochs"):
        checkpoint_epochs("some", 3)


def test_resolve_sizes_measures_each_distinct_model_once(tmp_path):
    configs = expand_spec(spec_from(tmp_path, {**GRID, "model.init": ["normal", "uniform"]}))
    calls = []

    def describe(ds):
        return {"n_train": 1000, "model_args": {"num_classes": 10, "input_size": [64]}}

    def count(model, args, info):
        assert info["n_train"] == 1000
        calls.append((model["width"], model.get("init")))
        assert args == {"num_classes": 10, "input_size": [64]}
        return 100 * model["width"]

    resolve_sizes(configs, describe, count)
    assert sorted(w for w, _ in calls) == [4, 8]  # init does not change the architecture
    for c in configs:
        d = c["derived"]
        assert d["n_params"] == 100 * c["model"]["width"]
        assert d["load"] == pytest.approx(1000 / d["n_params"])
