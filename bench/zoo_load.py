"""Loading many checkpoints into one weight tensor: our shard store vs one pickled state dict per file.

The script writes a zoo of ``--models`` x ``--epochs`` CNN-s checkpoints (random weights) in the Ray Tune layout
of the published zoos (one ``checkpoint_{epoch:06d}/checkpoints`` file per model and epoch, ``torch.save`` of the
state dict), imports it with ``zooscape zoo import`` into our store (one safetensors shard per group of 64 models
and epoch), then times, best of ``--repeats``:

- ``torch.load``: ``torch.load(file, weights_only=True)`` of every file + :func:`vectorize`, stacked to ``[N, D]``
  (how the reference code bases build their weight data sets);
- ``store``: :func:`zooscape.zoo.weights.load_weights` of the same checkpoints from the shards into ``[N, D]``;
- ``store, checked``: the same with every shard checked against its catalog record first (SHA-256 of the whole
  file's CRC-32 and the header's group/epoch/kind), as ``Zoo.dataset`` and ``Zoo.state_dict`` do; the reader's cache of
  checked files is cleared before each repeat, so every repeat hashes every shard (a first load);
- ``zoo.dataset``: the whole ``zoo.dataset(properties=["epoch"])`` (catalog queries, table, filters, splits).

Both paths read from the page cache (the files were just written). The two weight tensors are checked to be
equal. The ratio ``torch.load / store`` is printed.

Usage:
    python bench/zoo_load.py             # 100 models x 10 epochs = 1,000 checkpoints
    python bench/zoo_load.py --quick     # 40 x 5 = 200 checkpoints
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from zooscape.models import create_model
from zooscape.zoo import open as open_zoo
from zooscape.zoo.raytune import import_raytune
from zooscape.zoo.weights import index_map, load_weights, vectorize


def write_raytune(root: Path, n_models: int, n_epochs: int) -> list[Path]:
    """Ray Tune trial folders with random CNN-s weights; returns the checkpoint files, model-major."""
    import json

    files = []
    for i in range(n_models):
        model = create_model("cnn_s", seed=i, num_classes=10, in_channels=1, input_size=28, activation="tanh")
        trial = root / f"NN_tune_trainable_{i:05d}"
        trial.mkdir(parents=True)
        params = {"model::type": "CNN", "model::channels_in": 1, "model::o_dim": 10, "model::nlin": "tanh",
                  "model::dropout": 0.0, "optim::optimizer": "adam", "optim::lr": 1e-3, "seed": i,
                  "training::batchsize": 10, "training::epochs_train": n_epochs - 1}
        (trial / "params.json").write_text(json.dumps(params))
        (trial / "result.json").write_text("".join(json.dumps({"test_acc": 0.1 * e}) + "\n" for e in range(n_epochs)))
        g = torch.Generator().manual_seed(i)
        for e in range(n_epochs):
            sd = {k: v + 0.01 * e * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
            d = trial / f"checkpoint_{e:06d}"
            d.mkdir()
            torch.save(sd, d / "checkpoints")
            files.append(d / "checkpoints")
    return files


def best_of(repeats: int, fn):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the timings and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10, help="checkpoints per model (epochs 0..E-1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="work directory (default: a temporary one, deleted afterwards)")
    p.add_argument("--quick", action="store_true", help="40 models x 5 epochs, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.epochs, args.repeats = 40, 5, 2
    torch.set_num_threads(1)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="zoo_load_"))
    try:
        n = args.models * args.epochs
        print(f"zoo_load: {args.models} models x {args.epochs} epochs = {n} CNN-s checkpoints; "
              f"torch {torch.__version__}, python {platform.python_version()}, 1 thread")
        t = time.perf_counter()
        files = write_raytune(work / "ray", args.models, args.epochs)
        print(f"  wrote {len(files)} torch.save files in {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        report = import_raytune(work / "ray", work / "zoo", dataset={"name": "digits", "resize": 28})
        print(f"  imported into the store in {time.perf_counter() - t:.2f} s ({report.n_checkpoints} checkpoints, "
              f"{len(report.skipped)} skipped)")
        imap = index_map(create_model("cnn_s", num_classes=10, in_channels=1, input_size=28, activation="tanh"))

        def pickles():
            return torch.stack([vectorize(torch.load(f, map_location="cpu", weights_only=True), imap) for f in files])

        zoo = open_zoo(work / "zoo")
        mid_of = {Path(trial).name: mid for trial, mid in report.imported}
        rows = zoo.catalog.query("SELECT model_id, epoch, file FROM checkpoints WHERE kind='weights'")
        shard = {(m, e): f for m, e, f in rows}
        samples = [(mid_of[f.parent.parent.name], shard[(mid_of[f.parent.parent.name], int(f.parent.name[11:]))])
                   for f in files]
        names = [imap.names] * len(samples)

        def store():
            return load_weights(zoo.path, samples, names, imap)

        def store_checked():
            zoo._checked.clear()  # hash every shard again, as a first load does
            return load_weights(zoo.path, samples, names, imap, check=zoo.check_shard)

        t_pickle, a = best_of(args.repeats, pickles)
        t_store, t_checked = [], []
        for _ in range(3 * args.repeats):  # alternated, so that load changes on a shared machine hit both alike
            dt, b = best_of(1, store)
            t_store.append(dt)
            dt, c = best_of(1, store_checked)
            t_checked.append(dt)
        assert torch.equal(b, c)
        t_store, t_checked = min(t_store), min(t_checked)
        t_ds, ds = best_of(args.repeats, lambda: zoo.dataset(properties=["epoch"], split=(1.0, 0.0, 0.0)))
        assert torch.equal(a, b), "the two loaders disagree"
        assert len(ds.train) == n
        zoo.close()
        print(f"  torch.load, one file per checkpoint : {t_pickle:8.3f} s  ({1e6 * t_pickle / n:7.1f} us/checkpoint)")
        print(f"  store (safetensors shards)          : {t_store:8.3f} s  ({1e6 * t_store / n:7.1f} us/checkpoint)")
        print(f"  store, shards checked (CRC-32)      : {t_checked:8.3f} s  ({1e6 * t_checked / n:7.1f} us/checkpoint)"
              f"  overhead {100 * (t_checked / t_store - 1):+.1f} %")
        print(f"  zoo.dataset(...) end to end         : {t_ds:8.3f} s  ({1e6 * t_ds / n:7.1f} us/checkpoint)")
        print(f"  ratio torch.load / store: {t_pickle / t_store:.1f}x   (torch.load / zoo.dataset: "
              f"{t_pickle / t_ds:.1f}x)")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
