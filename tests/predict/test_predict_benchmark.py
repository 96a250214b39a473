"""The Model Zoos benchmark on a small hyperparameter zoo of CNN-s on digits (28x28), trained here."""

from __future__ import annotations

import itertools
import json

import pandas as pd
import pytest
import torch

from zooscape.cli import main
from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.predict import predict_properties
from zooscape.train import Member, TrainConfig, train_population
from zooscape.zoo import open as open_zoo
from zooscape.zoo.raytune import import_raytune
from zooscape.zoo.weights import DatasetReport, WeightsDataset, ZooDatasets, index_map, split_models, vectorize

DATASET = {"name": "digits", "seed": 42, "resize": 28, "train_fraction": 0.3}
INITS = ("kaiming_uniform", "xavier_normal")
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
SEEDS = range(4)
EPOCHS = 3
SAMPLE_EPOCHS = (1, 2, 3)
SPLIT = (0.5, 0.25, 0.25)


@pytest.fixture(scope="module")
def zoo_runs():
    """32 CNN-s (init x lr x seed), Adam, 3 epochs; per model the state dicts and metrics of every epoch."""
    data = load_dataset(**DATASET)
    grid = list(itertools.product(INITS, LRS, SEEDS))
    members = [Member(seed=s, lr=lr) for _, lr, s in grid]
    models = [create_model("cnn_s", seed=s, num_classes=10, in_channels=1, input_size=28, activation="tanh",
                           init=init) for init, _, s in grid]
    runs = [{"init": i, "lr": lr, "seed": s, "states": [], "metrics": []} for i, lr, s in grid]

    def callback(report):
        for run, sd, m in zip(runs, report.state_dicts(), report.metrics):
            run["states"].append(sd)
            run["metrics"].append(dict(m))

    cfg = TrainConfig(epochs=EPOCHS, batch_size=32, optimizer="adam", lr=1e-3, train_metrics="running")
    train_population(models, data, cfg, members, device="cpu", callback=callback)
    return runs, index_map(models[0])


def as_datasets(runs, imap, split_seed: int, permute: bool = False) -> ZooDatasets:
    """Samples = (model, epoch in 1..3); split by model; optionally the models' accuracies are permuted."""
    ids = [f"m{i:02d}" for i in range(len(runs))]
    acc_of = list(range(len(runs)))
    if permute:
        acc_of = torch.randperm(len(runs), generator=torch.Generator().manual_seed(split_seed)).tolist()
    split = split_models(ids, SPLIT, split_seed)
    parts = {}
    for name in ("train", "val", "test"):
        rows = [(i, e) for i in range(len(runs)) for e in SAMPLE_EPOCHS if split[ids[i]] == name]
        parts[name] = WeightsDataset(
            torch.stack([vectorize(runs[i]["states"][e], imap) for i, e in rows]),
            {"test_acc": torch.tensor([runs[acc_of[i]]["metrics"][e]["test_acc"] for i, e in rows]),
             "init": torch.tensor([INITS.index(runs[i]["init"]) for i, _ in rows])},
            [ids[i] for i, _ in rows], torch.tensor([e for _, e in rows]), imap, {"init": list(INITS)})
    return ZooDatasets(parts["train"], parts["val"], parts["test"], imap, ("test_acc", "init"),
                       {"init": list(INITS)}, DatasetReport(), split)


def test_wstats_predict_test_accuracy(zoo_runs):
    runs, imap = zoo_runs
    accs = [m["test_acc"] for r in runs for m in r["metrics"][1:]]
    assert max(accs) - min(accs) > 0.4  # a zoo with a real spread of accuracies
    real, control = [], []
    for seed in (0, 1, 2):
        for permute, out in ((False, real), (True, control)):
            (score,) = predict_properties(as_datasets(runs, imap, seed, permute), ["test_acc"], ("wstats",))
            assert score.metric == "r2" and score.n_test == 8 * len(SAMPLE_EPOCHS)
            out.append(score.test)
    assert min(real) > 0.4, real
    assert sum(real) / 3 > sum(control) / 3 + 0.3, (real, control)


def test_raw_weights_and_categorical_properties(zoo_runs):
    runs, imap = zoo_runs
    scores = {(s.property, s.features): s for s in predict_properties(as_datasets(runs, imap, 0))}
    assert scores[("test_acc", "w")].test > 0.3
    init = scores[("init", "wstats")]
    assert init.task == "classification" and init.metric == "accuracy" and init.test >= 0.75
    assert 1e-5 <= init.alpha <= 1e3


def write_raytune(root, runs):
    """The trained models in the Model Zoos Ray Tune layout (params.json, result.json, checkpoints)."""
    for i, r in enumerate(runs):
        trial = root / f"NN_tune_trainable_{i:05d}"
        trial.mkdir(parents=True)
        params = {"model::type": "CNN", "model::channels_in": 1, "model::o_dim": 10, "model::nlin": "tanh",
                  "model::dropout": 0.0, "model::init_type": r["init"], "optim::optimizer": "adam",
                  "optim::lr": r["lr"], "seed": r["seed"], "training::batchsize": 32, "training::epochs_train": EPOCHS}
        (trial / "params.json").write_text(json.dumps(params))
        (trial / "result.json").write_text("\n".join(json.dumps(m) for m in r["metrics"]) + "\n")
        for e, sd in enumerate(r["states"]):
            (trial / f"checkpoint_{e:06d}").mkdir()
            torch.save(sd, trial / f"checkpoint_{e:06d}" / "checkpoints")


def test_cli_predict_on_an_imported_zoo(zoo_runs, tmp_path, capsys):
    runs, _ = zoo_runs
    write_raytune(tmp_path / "ray", runs)
    report = import_raytune(tmp_path / "ray", tmp_path / "zoo", dataset=DATASET)
    assert len(report.imported) == len(runs) and not report.skipped
    r2 = []
    for seed in range(5):
        csv = tmp_path / f"s{seed}.csv"
        args = ["predict", str(tmp_path / "zoo"), "--properties", "test_acc,model.init", "--features", "wstats",
                "--epochs", "1,2,3", "--fractions", "0.5,0.25,0.25", "--seed", str(seed), "--out", str(csv)]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "96 of 96 samples kept" in out and "test_acc" in out and "model.init" in out
        table = pd.read_csv(csv).set_index("property")
        with open_zoo(tmp_path / "zoo") as zoo:
            ds = zoo.dataset(epochs=[1, 2, 3], properties=["test_acc", "model.init"], split=SPLIT, seed=seed)
            lib = {s.property: s for s in predict_properties(ds, features=("wstats",))}
        assert table.loc["test_acc", "test"] == pytest.approx(lib["test_acc"].test, abs=1e-9)
        assert table.loc["test_acc", "metric"] == "r2" and table.loc["model.init", "metric"] == "accuracy"
        assert table.loc["model.init", "test"] >= 0.75  # chance: 0.5
        r2.append(table.loc["test_acc", "test"])
    # 8 test models: a split can put most of the fastest-learning models into test (then R² < 0), not typically
    assert sorted(r2)[2] > 0.3, r2
    assert main(["predict", str(tmp_path / "zoo"), "--properties", "nonsense"]) == 1
    assert "unknown property 'nonsense'" in capsys.readouterr().err
