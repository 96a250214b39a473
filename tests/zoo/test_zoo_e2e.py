"""End to end: train tiny zoos, read them back, re-run, refuse other specs, record failures."""

import math
from pathlib import Path

import pytest
import torch

import zooscape.zoo as zz
from zooscape.zoo import SpecError, ZooExistsError, train_zoo

SPEC = """
[zoo]
name = "tiny"

[dataset]
name = "digits"
seed = 42

[model]
name = "mlp"
width = 16
depth = 1

[training]
epochs = 2
batch_size = 64
optimizer = "adam"
lr = 0.001

[checkpoints]
epochs = "all"

[grid]
"training.seed" = [0, 1]
"training.lr" = [0.001, 0.01]
"""

METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr"]


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    spec = write(tmp, SPEC)
    zoo = train_zoo(spec, tmp / "zoo", device="cpu", progress=False)
    return spec, zoo


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def test_table_has_one_row_per_model_and_epoch(tiny_zoo):
    _, zoo = tiny_zoo
    table = zoo.table()
    assert len(zoo.model_ids) == 4
    assert len(table) == 4 * (2 + 1)
    assert sorted(table.groupby("model_id")["epoch"].apply(list).tolist()) == [[0, 1, 2]] * 4
    for col in ["training.lr", "training.seed", "model.width", "temperature", "load", "status", *METRICS]:
        assert col in table.columns, col
    assert (table["status"] == "done").all()
    assert table["temperature"].tolist() == pytest.approx((table["training.lr"] / 64).tolist())
    assert (table["load"] * table["n_params"]).tolist() == pytest.approx(table["n_train"].astype(float).tolist())
    assert table[METRICS].notna().all().all()
    assert zoo.status_counts() == {"done": 4}


def test_load_model_reproduces_recorded_accuracy(tiny_zoo):
    _, zoo = tiny_zoo
    data = zoo.data()
    table = zoo.table().set_index(["model_id", "epoch"])
    n_test = len(data.test_y)
    for mid in zoo.model_ids:
        assert zoo.epochs(mid) == [0, 1, 2]
        for epoch in (0, 2):
            model = zoo.load_model(mid, epoch)
            recorded = table.loc[(mid, epoch), "test_acc"]
            assert abs(accuracy(model, data.test_x, data.test_y) - recorded) <= 1.0 / n_test + 1e-12
    # trained models differ from their initialisation and from each other
    a, b = zoo.state_dict(zoo.model_ids[0], 2), zoo.state_dict(zoo.model_ids[1], 2)
    first = next(iter(a))
    assert not torch.equal(a[first], b[first])
    assert not torch.equal(a[first], zoo.state_dict(zoo.model_ids[0], 0)[first])
    opt = zoo.optimizer_state(zoo.model_ids[0], 2)
    assert opt and all(torch.isfinite(v).all() for v in opt.values())


def test_unknown_ids_and_epochs(tiny_zoo):
    _, zoo = tiny_zoo
    with pytest.raises(KeyError, match="unknown model_id 'nope'"):
        zoo.load_model("nope", 0)
    with pytest.raises(KeyError, match=r"available epochs: \[0, 1, 2\]"):
        zoo.load_model(zoo.model_ids[0], 9)


def test_configs_and_spec(tiny_zoo):
    spec_path, zoo = tiny_zoo
    cfg = zoo.configs()
    assert len(cfg) == 4 and set(cfg["model_id"]) == set(zoo.model_ids)
    assert sorted(zip(cfg["training.seed"], cfg["training.lr"])) == [(0, 0.001), (0, 0.01), (1, 0.001), (1, 0.01)]
    assert zoo.spec.fingerprint() == zz.load_spec(spec_path).fingerprint()
    assert (zoo.path / "spec.toml").read_text() == spec_path.read_text()
    assert len(cfg["group_id"].unique()) == 1  # seeds and lrs train as one population


def test_rerun_is_a_noop(tiny_zoo):
    spec, zoo = tiny_zoo
    files = {p: p.stat().st_mtime_ns for p in (zoo.path / "checkpoints").rglob("*")}
    before = zoo.metrics()
    again = train_zoo(spec, zoo.path, device="cpu", progress=False)
    assert {p: p.stat().st_mtime_ns for p in (zoo.path / "checkpoints").rglob("*")} == files
    assert again.metrics().equals(before)


def test_other_spec_is_refused(tiny_zoo, tmp_path):
    _, zoo = tiny_zoo
    other = write(tmp_path, SPEC.replace("width = 16", "width = 8"))
    with pytest.raises(ZooExistsError, match="different spec"):
        train_zoo(other, zoo.path, progress=False)


def test_bad_spec_writes_nothing(tmp_path):
    bad = write(tmp_path, SPEC.replace('"training.lr" = [0.001, 0.01]', '"training.lr" = []'))
    with pytest.raises(SpecError, match=r"\[grid\] 'training.lr': empty list"):
        train_zoo(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # a model that cannot be built is caught before anything is written, too
    bad = write(tmp_path, SPEC.replace("depth = 1", "depth = -1"), "b.toml")
    with pytest.raises(SpecError, match=r"\[model\]: cannot build model"):
        train_zoo(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # so is a model whose output does not fit the data set (5 outputs for 10 classes)
    bad = write(tmp_path, SPEC.replace("depth = 1", "depth = 1\nnum_classes = 5"), "c.toml")
    with pytest.raises(SpecError, match=r"\[model\]: .* needs \(2, 10\)"):
        train_zoo(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_diverging_models_are_marked_failed(tmp_path):
    text = (SPEC.replace('optimizer = "adam"', 'optimizer = "sgd"')
            .replace('"training.seed" = [0, 1]', '"training.seed" = [0]')
            .replace("[0.001, 0.01]", "[0.01, 1e12]"))
    zoo = train_zoo(write(tmp_path, text), tmp_path / "zoo", device="cpu", progress=False)
    cfg = zoo.configs().set_index("training.lr")
    assert cfg.loc[0.01, "status"] == "done"
    assert cfg.loc[1e12, "status"] == "failed"
    assert "non-finite" in cfg.loc[1e12, "reason"]
    bad = cfg.loc[1e12, "model_id"]
    assert zoo.epochs(bad) == [0]  # no checkpoint after the failure
    assert zoo.table().query("model_id == @bad")["epoch"].max() >= 1


def test_workers_match_in_process(tmp_path):
    text = SPEC.replace('"training.seed" = [0, 1]', '"training.seed" = [0]\n"model.width" = [8, 16]')
    spec = write(tmp_path, text)
    inline = train_zoo(spec, tmp_path / "inline", device="cpu", progress=False)
    assert len(inline.configs()["group_id"].unique()) == 2  # two groups: the engine really uses two workers
    other = train_zoo(spec, tmp_path / "workers", workers=2, device="cpu", progress=False)
    a = inline.metrics().query("name != 'epoch_time_s'").reset_index(drop=True)
    b = other.metrics().query("name != 'epoch_time_s'").reset_index(drop=True)
    assert len(a) == 4 * 3 * len(METRICS)  # every metric of every model and epoch
    assert a[["model_id", "epoch", "name"]].equals(b[["model_id", "epoch", "name"]])
    assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) for x, y in zip(a["value"], b["value"]))
    assert other.status_counts() == {"done": 4}
    assert not list((tmp_path / "workers").rglob("resume.safetensors"))
