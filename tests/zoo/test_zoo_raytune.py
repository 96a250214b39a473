"""Import/export of the Ray Tune layout: a small Model-Zoos-style zoo built here, broken trials included."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

import zooscape.zoo as zz
from zooscape.cli import main
from zooscape.zoo import ZooExistsError
from zooscape.zoo.raytune import (
    TrialError,
    find_trials,
    import_raytune,
    map_params,
    optimizer_from_torch,
    optimizer_to_torch,
    read_state_dict,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_zoo_raytune_lib import BROKEN, DATASET, EPOCHS, build_raytune_zoo, params_for, train_members  # noqa: E402


@pytest.fixture(scope="module")
def ray_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    runs, data = train_members(4)
    info = build_raytune_zoo(root / "src", runs, data)
    report = import_raytune(root / "src", root / "zoo", dataset=DATASET)
    return root, info, report, data


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def test_broken_trials_are_reported_and_skipped(ray_zoo):
    root, info, report, _ = ray_zoo
    skipped = {Path(t).name: reason for t, reason in report.skipped}
    assert set(skipped) == set(BROKEN)
    for name, pattern in BROKEN.items():
        assert re.search(pattern, skipped[name]), (name, skipped[name])
    assert "weights_only" in skipped["trial_unpicklable"]
    assert sorted(Path(t).name for t, _ in report.imported) == sorted(info["good"])
    assert report.n_checkpoints == len(info["good"]) * (EPOCHS + 1)
    assert len(find_trials(root / "src")) == len(BROKEN) + len(info["good"])


def test_imported_zoo_is_a_normal_zoo(ray_zoo):
    root, info, report, _ = ray_zoo
    zoo = zz.open(root / "zoo")
    assert zoo.spec.model["name"] == "cnn_s" and zoo.spec.dataset == DATASET
    assert set(zoo.spec.grid) == {"training.lr", "training.seed"}
    assert zoo.status_counts() == {"done": len(info["good"])}
    table = zoo.table()
    assert len(table) == len(info["good"]) * (EPOCHS + 1)
    # the -999 sentinel of the evaluation before training is stored as missing, the rest as recorded
    assert table[table.epoch == 0]["train_acc"].isna().all()
    assert table[table.epoch > 0][["train_acc", "test_acc", "val_loss"]].notna().all().all()
    for trial, mid in report.imported:
        cfg = zoo.config(mid)
        run = info["good"][Path(trial).name]
        src = cfg["derived"]["source"]["params"]
        assert src == params_for(run["seed"], run["lr"])  # original keys kept
        assert cfg["training"]["lr"] == run["lr"] and cfg["training"]["seed"] == run["seed"]
        assert cfg["model"]["activation"] == "tanh" and cfg["training"]["batch_size"] == 32
        assert zoo.epochs(mid) == list(range(EPOCHS + 1))
        got = table[table.model_id == mid].set_index("epoch")["test_acc"]
        assert got.tolist() == pytest.approx([m["test_acc"] for m in run["metrics"]], abs=1e-12)
    assert "imported_from" in zoo.catalog.meta()
    zoo.close()


def test_imported_checkpoints_evaluate_to_recorded_accuracy(ray_zoo):
    root, info, report, data = ray_zoo
    zoo = zz.open(root / "zoo")
    test = zoo.data()
    assert torch.equal(test.test_x, data.test_x)
    for trial, mid in report.imported:
        run = info["good"][Path(trial).name]
        for e in range(EPOCHS + 1):
            sd = zoo.state_dict(mid, e)
            assert all(torch.equal(sd[k], v) for k, v in run["states"][e].items())  # 'module.' prefix stripped
            acc = accuracy(zoo.load_model(mid, e), test.test_x, test.test_y)
            assert acc == pytest.approx(run["metrics"][e]["test_acc"], abs=1e-9)
    zoo.close()


def test_torch_optimizer_state_is_mapped_to_our_layout(ray_zoo):
    root, info, report, _ = ray_zoo
    trial, torch_state, names = info["optimizer"]
    mid = dict((Path(t).name, m) for t, m in report.imported)[trial]
    zoo = zz.open(root / "zoo")
    assert zoo.epochs(mid, "optimizer") == [EPOCHS]
    flat = zoo.optimizer_state(mid, EPOCHS)
    for i, name in enumerate(names):
        assert torch.equal(flat[f"{name}.exp_avg"], torch_state["state"][i]["exp_avg"])
        assert torch.equal(flat[f"{name}.exp_avg_sq"], torch_state["state"][i]["exp_avg_sq"])
    assert flat["step"].item() == 1.0
    back = optimizer_to_torch(flat, names, {"lr": 0.01})
    assert torch.equal(back["state"][3]["exp_avg"], torch_state["state"][3]["exp_avg"])
    assert optimizer_from_torch(back, names).keys() == flat.keys()
    zoo.close()


def test_checkpoints_are_read_with_weights_only(ray_zoo, monkeypatch):
    root, info, _, _ = ray_zoo
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    trial = root / "src" / "tune_zoo_digits_hyperparameter" / next(iter(info["good"]))
    sd = read_state_dict(trial / "checkpoint_000001" / "checkpoints")
    assert calls == [True] and "module_list.0.weight" in sd
    with pytest.raises(TrialError, match="weights_only"):
        read_state_dict(root / "src" / "tune_zoo_digits_hyperparameter" / "trial_unpicklable" / "checkpoint_000001"
                        / "checkpoints")


def test_reimport_is_idempotent_and_other_dirs_are_refused(ray_zoo, tmp_path):
    root, _, report, _ = ray_zoo
    before = zz.open(root / "zoo").table()
    again = import_raytune(root / "src", root / "zoo", dataset=DATASET)
    assert again.imported == report.imported
    after = zz.open(root / "zoo").table()
    assert before.equals(after)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(ZooExistsError):
        import_raytune(root / "src", tmp_path / "busy", dataset=DATASET)


def test_export_then_import_round_trips(ray_zoo, tmp_path):
    root, _, report, _ = ray_zoo
    assert main(["zoo", "export", str(root / "zoo"), "--out", str(tmp_path / "ray")]) == 0
    params = json.loads(next((tmp_path / "ray").glob("NN_tune_trainable_*/params.json")).read_text())
    assert params["model::type"] == "CNN" and params["model::nlin"] == "tanh" and "optim::lr" in params
    back = import_raytune(tmp_path / "ray", tmp_path / "zoo2")  # data set from the exported keys
    assert not back.skipped
    assert sorted(m for _, m in back.imported) == sorted(m for _, m in report.imported)
    a, b = zz.open(root / "zoo"), zz.open(tmp_path / "zoo2")
    for mid in a.model_ids:
        for e in a.epochs(mid):
            sa, sb = a.state_dict(mid, e), b.state_dict(mid, e)
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    cols = ["model_id", "epoch", "test_acc", "train_acc", "val_loss"]
    assert a.table()[cols].equals(b.table()[cols])
    mid = a.model_ids[0]
    if a.epochs(mid, "optimizer"):
        fa, fb = a.optimizer_state(mid, EPOCHS), b.optimizer_state(mid, EPOCHS)
        assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_cli_import_reports_skipped_trials(ray_zoo, tmp_path, capsys):
    root, info, _, _ = ray_zoo
    code = main(["zoo", "import", str(root / "src"), "--out", str(tmp_path / "z"), "--dataset", "digits",
                 "--dataset-option", "seed=42", "--dataset-option", "resize=28", "--dataset-option",
                 "train_fraction=0.2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"imported {len(info['good'])} trials" in out and f"skipped {len(BROKEN)}" in out
    assert zz.open(tmp_path / "z").spec.dataset == DATASET
    # no data set given and none in params.json: every trial is reported, and the import fails cleanly
    assert main(["zoo", "import", str(root / "src"), "--out", str(tmp_path / "z2"), "--quiet"]) == 1
    assert "cannot tell which data set" in capsys.readouterr().err
    assert not (tmp_path / "z2").exists()


def test_map_params_maps_known_keys_and_rejects_unknown_types():
    p = params_for(7, 0.001)
    cfg = map_params(p, DATASET)
    assert cfg["model"] == {"name": "cnn_s", "in_channels": 1, "num_classes": 10, "activation": "tanh",
                            "dropout": 0.0, "init": "kaiming_uniform"}
    assert cfg["training"] == {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "momentum": 0.9, "seed": 7,
                               "batch_size": 32, "epochs": EPOCHS}
    ptmz = {"model::type": "Resnet18_width", "model::width": 4, "model::nlin": "relu", "optim::scheduler": "OneCycleLR",
            "training::batchsize": 64, "seed": 1, "dataset::dump": "/data/cifar_10/dataset_preprocessed.pt"}
    cfg = map_params(ptmz, None, n_epochs=3)
    assert cfg["model"]["name"] == "resnet18" and cfg["model"]["stem"] == "imagenet" and cfg["model"]["width"] == 4
    assert cfg["training"]["schedule"] == "onecycle" and cfg["training"]["epochs"] == 3
    assert cfg["dataset"] == {"name": "cifar10"}
    with pytest.raises(TrialError, match="unsupported model::type 'MLP'"):
        map_params({**p, "model::type": "MLP"}, DATASET)
    assert map_params({**p, "model::type": "MLP"}, DATASET, model_types={"MLP": "mlp"})["model"]["name"] == "mlp"
    with pytest.raises(TrialError, match="model::nlin"):
        map_params({**p, "model::nlin": "swish"}, DATASET)
