"""End to end: a zoo trained the seeds' way (Ray Tune, one trial per model, pickled checkpoints every epoch) vs
``zooscape zoo train``, same grid, same data, same epochs; wall clock of whole runs and files written.

Usage:
    .venv/bin/python bench/e2e.py                   # 16 MLPs x 20 epochs on digits (the issue's setting)
    .venv/bin/python bench/e2e.py --quick           # 4 MLPs x 3 epochs (a smoke run)

The Ray Tune side is written here the way the Model Zoos / phase-transition seeds do it: a function trainable per
model with plain PyTorch (``torch.optim.Adam``, a DataLoader-style shuffled loop), train/val/test evaluation every
epoch, and ``torch.save`` of model + optimizer state into a checkpoint directory reported to Tune every epoch
(``pip install "ray[tune]"``; the ``bench`` extra). The zooscape side runs the ``zooscape`` command as a separate
process, so its import, data, planning, catalog and checkpoint writes are all in the time. Both train the same
architecture (``create_model("mlp", ...)``) on the same split; the script checks that the mean final test accuracy
agrees within seed noise and prints the wall-clock ratio and the number of files each leaves behind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
[zoo]
name = "e2e"

[dataset]
name = "digits"
seed = 42

[model]
name = "mlp"
width = 32
depth = 2

[training]
epochs = {epochs}
batch_size = 32
optimizer = "adam"
lr = 0.001

[checkpoints]
epochs = "all"
optimizer = true

[grid]
"training.lr" = [0.001, 0.003]
"training.seed" = {seeds}
"""


def tune_trial(config: dict) -> None:
    """One model, trained the seeds' way (runs inside a Ray Tune trial)."""
    import torch
    from ray import tune
    from ray.tune import Checkpoint

    from zooscape.data import load_dataset
    from zooscape.models import create_model

    torch.set_num_threads(1)
    data = load_dataset("digits", seed=42)
    torch.manual_seed(config["seed"])
    model = create_model("mlp", seed=config["seed"], num_classes=10, input_size=[64], width=32, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = data.train_x, data.train_y
    gen = torch.Generator().manual_seed(config["seed"])
    for _epoch in range(1, config["epochs"] + 1):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        metrics = {}
        with torch.no_grad():
            for split in ("train", "val", "test"):
                xs, ys = data.split(split)
                out = model(xs)
                metrics[f"{split}_loss"] = float(loss_fn(out, ys))
                metrics[f"{split}_acc"] = float((out.argmax(1) == ys).float().mean())
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, os.path.join(d, "checkpoints"))
            tune.report(metrics, checkpoint=Checkpoint.from_directory(d))


def run_tune(out: Path, epochs: int, seeds: list[int]) -> tuple[float, list[float]]:
    import ray
    from ray import tune

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune_trial, {"cpu": 1}),
            param_space={"lr": tune.grid_search([0.001, 0.003]), "seed": tune.grid_search(seeds), "epochs": epochs},
            run_config=tune.RunConfig(storage_path=str(out.resolve()), name="tune", verbose=0),
        )
        results = tuner.fit()
        accs = [r.metrics["test_acc"] for r in results]
    finally:
        ray.shutdown()
    return time.perf_counter() - t0, accs


def compile_zooscape() -> None:
    """Byte-compile the zooscape package first, as installing a wheel does: an editable install run with
    ``PYTHONDONTWRITEBYTECODE=1`` (as on our shared machine) would otherwise compile every module it imports from
    source on every start (~0.13 s of ``zoo train``). Ray's and torch's installed modules are compiled already."""
    import compileall

    import zooscape

    compileall.compile_dir(str(Path(zooscape.__file__).parent), quiet=1)


def run_zooscape(out: Path, epochs: int, seeds: list[int]) -> tuple[float, list[float]]:
    compile_zooscape()
    spec = out / "spec.toml"
    spec.write_text(SPEC.format(epochs=epochs, seeds=seeds))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "zooscape", "zoo", "train", str(spec), "--out", str(out / "zoo"), "--quiet"],
                   check=True)
    elapsed = time.perf_counter() - t0
    from zooscape.zoo import open_zoo

    with open_zoo(out / "zoo") as zoo:
        table = zoo.table()
        last = table[table.epoch == epochs]
        accs = [float(a) for a in last.test_acc]
    return elapsed, accs


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 models x 3 epochs")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per learning rate (2 learning rates)")
    args = parser.parse_args()
    epochs = args.epochs or (3 if args.quick else 20)
    seeds = list(range(args.seeds or (2 if args.quick else 8)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "zs").mkdir()
        (tmp / "tune").mkdir()
        t_zoo, acc_zoo = run_zooscape(tmp / "zs", epochs, seeds)
        t_tune, acc_tune = run_tune(tmp / "tune", epochs, seeds)
        files_zoo, files_tune = count_files(tmp / "zs" / "zoo"), count_files(tmp / "tune")
    load = os.getloadavg()[0]
    n = 2 * len(seeds)
    print(f"{n} MLPs x {epochs} epochs on digits, {os.cpu_count()} cores, load average {load:.1f}")
    print(f"{'':24s} {'wall s':>8s} {'files':>6s} {'mean test acc':>14s}")
    print(f"{'Ray Tune (seeds way)':24s} {t_tune:8.1f} {files_tune:6d} {statistics.mean(acc_tune):14.4f}")
    print(f"{'zooscape zoo train':24s} {t_zoo:8.1f} {files_zoo:6d} {statistics.mean(acc_zoo):14.4f}")
    print(f"speed-up {t_tune / t_zoo:.1f}x; files {files_tune} vs {files_zoo}")
    spread = max(statistics.pstdev(acc_tune), statistics.pstdev(acc_zoo), 0.01)
    gap = abs(statistics.mean(acc_tune) - statistics.mean(acc_zoo))
    print(f"accuracy gap {gap:.4f} (seed spread {spread:.4f}): {'agree' if gap <= 3 * spread else 'DISAGREE'}")


if __name__ == "__main__":
    main()
