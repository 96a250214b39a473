"""Helpers (no tests): small zoos in the Ray Tune folder layout of the published zoos, broken trials included."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.train import Member, TrainConfig, train_population

DATASET = {"name": "digits", "seed": 42, "resize": 28, "train_fraction": 0.2}
LRS = (0.003, 0.01, 0.001, 0.03)
EPOCHS = 2
RAY_EXTRA = {"done": False, "date": "2022-05-01_12-00-00", "timestamp": 1651400000, "pid": 4242,
             "hostname": "node0", "node_ip": "10.0.0.1", "time_total_s": 1.0}


class NotATensor:
    """Pickled by reference: loading it needs full unpickling, which weights_only=True refuses."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def params_for(seed: int, lr: float) -> dict:
    """Model Zoos hyperparameter-zoo params.json of one CNN-s trial."""
    return {
        "model::type": "CNN", "model::channels_in": 1, "model::o_dim": 10, "model::nlin": "tanh",
        "model::dropout": 0.0, "model::init_type": "kaiming_uniform", "optim::optimizer": "adam", "optim::lr": lr,
        "optim::wd": 0.0, "optim::momentum": 0.9, "seed": seed, "training::batchsize": 32,
        "training::epochs_train": EPOCHS, "training::start_epoch": 1, "training::output_epoch": 1,
        "training::val_epochs": 1, "training::idx_out": 500, "training::checkpoint_dir": None, "cuda": False,
        "dataset::dump": "/ds2/model_zoos/zoos/DIGITS/tune_zoo_digits/dataset.pt",
    }


def train_members(n: int = 4) -> tuple[list[dict], object]:
    """Train n CNN-s on digits 28x28; per member: seed, lr, per-epoch state dicts and metrics."""
    data = load_dataset(**DATASET)
    members = [Member(seed=i, lr=LRS[i % len(LRS)]) for i in range(n)]
    models = [create_model("cnn_s", seed=m.seed, num_classes=10, in_channels=1, input_size=28, activation="tanh",
                           init="kaiming_uniform", dropout=0.0) for m in members]
    cfg = TrainConfig(epochs=EPOCHS, batch_size=32, optimizer="adam", lr=0.003, momentum=0.9)
    runs = [{"seed": m.seed, "lr": m.lr, "states": [], "metrics": []} for m in members]

    def callback(report):
        for i, sd in enumerate(report.state_dicts()):
            runs[i]["states"].append({k: v.clone() for k, v in sd.items()})
            runs[i]["metrics"].append(dict(report.metrics[i]))

    train_population(models, data, cfg, members, device="cpu", callback=callback)
    return runs, data


def write_trial(root: Path, name: str, run: dict, prefix: bool, optimizer_state: dict | None = None) -> Path:
    """One trial folder: params.json, result.json (line 0 with the -999 sentinel), checkpoint_*/checkpoints."""
    trial = root / name
    trial.mkdir(parents=True)
    params = params_for(run["seed"], run["lr"])
    (trial / "params.json").write_text(json.dumps(params, indent=2))
    lines = []
    for e, m in enumerate(run["metrics"]):
        line = {"train_loss": m["train_loss"], "train_acc": m["train_acc"], "test_loss": m["test_loss"],
                "test_acc": m["test_acc"], "val_loss": m["val_loss"], "val_acc": m["val_acc"]}
        if e == 0:
            line["train_loss"] = line["train_acc"] = -999
        line.update(RAY_EXTRA, training_iteration=e + 1, trial_id=name[-8:], time_this_iter_s=0.5,
                    done=e == EPOCHS, config=params)
        lines.append(json.dumps(line))
    (trial / "result.json").write_text("\n".join(lines) + "\n")
    for e, sd in enumerate(run["states"]):
        d = trial / f"checkpoint_{e:06d}"
        d.mkdir()
        torch.save({("module." + k if prefix else k): v for k, v in sd.items()}, d / "checkpoints")
        if optimizer_state is not None and e == EPOCHS:
            torch.save(optimizer_state, d / "optimizer")
    return trial


def torch_adam_state(run: dict, data) -> tuple[dict, list[str]]:
    """A genuine torch.optim.Adam state_dict after one step on the final weights (independent of zooscape)."""
    model = create_model("cnn_s", num_classes=10, in_channels=1, input_size=28, activation="tanh", dropout=0.0)
    model.load_state_dict(run["states"][-1])
    opt = torch.optim.Adam(model.parameters(), lr=run["lr"])
    loss = torch.nn.functional.cross_entropy(model(data.train_x[:16]), data.train_y[:16])
    loss.backward()
    opt.step()
    return opt.state_dict(), [n for n, _ in model.named_parameters()]


#: broken trial name -> pattern of the reason the import must report
BROKEN = {
    "trial_missing_params": r"missing params\.json",
    "trial_truncated_result": r"result\.json line 3: invalid JSON",
    "trial_nan_weights": r"checkpoint_000002/checkpoints: non-finite weights",
    "trial_unpicklable": r"checkpoint_000001/checkpoints: unreadable",
    "trial_garbage_checkpoint": r"checkpoint_000000/checkpoints: unreadable",
    "trial_missing_checkpoint_file": r"checkpoint_000001: missing checkpoints file",
    "trial_wrong_shapes": r"does not fit model cnn_s|has shape",
}


def build_raytune_zoo(root: Path, runs: list[dict], data) -> dict:
    """Good trials (some with a 'module.' prefix, one with a torch optimizer file) and one trial per defect."""
    exp = root / "tune_zoo_digits_hyperparameter"
    info = {"good": {}, "optimizer": None}
    for i, run in enumerate(runs):
        opt = None
        if i == 0:
            opt, names = torch_adam_state(run, data)
            info["optimizer"] = (f"NN_tune_trainable_{i:05d}", opt, names)
        name = f"NN_tune_trainable_{i:05d}"
        write_trial(exp, name, run, prefix=i % 2 == 1, optimizer_state=opt)
        info["good"][name] = run
    base = runs[0]

    def broken(name: str, seed: int) -> Path:
        return write_trial(exp, name, {**base, "seed": seed}, prefix=False)

    (broken("trial_missing_params", 101) / "params.json").unlink()
    t = broken("trial_truncated_result", 102)
    text = (t / "result.json").read_text().splitlines()
    (t / "result.json").write_text("\n".join(text[:2] + [text[2][: len(text[2]) // 2]]))
    t = broken("trial_nan_weights", 103)
    sd = {k: v.clone() for k, v in base["states"][2].items()}
    sd["module_list.9.weight"][0, 0] = math.nan
    torch.save(sd, t / "checkpoint_000002" / "checkpoints")
    t = broken("trial_unpicklable", 104)
    torch.save({"module_list.0.weight": NotATensor()}, t / "checkpoint_000001" / "checkpoints")
    t = broken("trial_garbage_checkpoint", 105)
    (t / "checkpoint_000000" / "checkpoints").write_bytes(b"\x80\x04this is not a torch file")
    t = broken("trial_missing_checkpoint_file", 106)
    (t / "checkpoint_000001" / "checkpoints").unlink()
    t = broken("trial_wrong_shapes", 107)
    sd = dict(base["states"][1])
    sd["module_list.11.weight"] = torch.zeros(5, 20)
    sd["module_list.11.bias"] = torch.zeros(5)
    torch.save(sd, t / "checkpoint_000001" / "checkpoints")
    return info


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
