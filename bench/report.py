"""The report of a 10,000-model zoo: build time and page size, and why it aggregates.

A synthetic catalog (10 learning rates x 1,000 seeds, epochs 0..5, three metrics per epoch, 5,000 pair barriers)
is written straight to SQLite; ``zooscape.report.build_report`` then reads, aggregates and draws it. The baseline
column draws the training-curve figure the naive way (one line per model) against the report's way (median and
10-90% band per cell), printing the ratio.

    python bench/report.py [--seeds 1000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

SPEC = """
[zoo]
name = "bench10k"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 8
depth = 1

[training]
epochs = {epochs}
batch_size = 64
optimizer = "adam"
lr = 0.003

[grid]
"training.lr" = {lrs}
"training.seed" = {seeds}
"""


def synthetic_zoo(root: Path, n_lr: int = 10, n_seeds: int = 1000, epochs: int = 5) -> Path:
    """A catalog of n_lr * n_seeds models with per-epoch metrics and pair barriers, written straight to SQLite."""
    text = SPEC.format(epochs=epochs, lrs=[0.001 * (i + 1) for i in range(n_lr)], seeds=list(range(n_seeds)))
    root.parent.mkdir(parents=True, exist_ok=True)
    spec_path = root.parent / "big.toml"
    spec_path.write_text(text)
    from zooscape.zoo import expand_spec, load_spec
    from zooscape.zoo.store import ZooStore

    spec = load_spec(spec_path)
    configs = expand_spec(spec)
    for c in configs:
        c["derived"].update(n_params=100, load=10.0, n_train=1000)
    store = ZooStore(root)
    catalog = store.create_or_check(spec_path.read_text(), spec.fingerprint())
    catalog.add_models(configs)
    catalog.close()
    rng = np.random.default_rng(0)
    rows = []
    for c in configs:
        lr = c["training"]["lr"]
        for e in range(epochs + 1):
            acc = 1 - 0.9 * np.exp(-e * lr * 100) + rng.normal(0, 0.02)
            rows += [(c["model_id"], e, "test_acc", acc), (c["model_id"], e, "train_loss", 2.3 * (1.05 - acc)),
                     (c["model_id"], e, "test_loss", 2.3 * (1.1 - acc))]
    con = sqlite3.connect(root / "catalog.sqlite")
    ids = [c["model_id"] for c in configs]
    with con:
        con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", rows)
        con.execute("UPDATE models SET status = 'done'")
        params = json.dumps({"experiment": "lmc_pairs"})
        con.executemany(
            "INSERT INTO analyses (model_id, other_id, epoch, metric, value, params, created) "
            "VALUES (?, ?, ?, 'barrier_loss_test_linear', ?, ?, 'now')",
            [(a, b, epochs, float(rng.random()), params) for a, b in zip(ids[0::2], ids[1::2])])
    con.close()
    return root



def main() -> None:
    from zooscape.report import build_report, figures
    from zooscape.zoo import open as open_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1000, help="seeds per learning rate (10 learning rates)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        zoo = synthetic_zoo(Path(tmp) / "zoo", n_seeds=args.seeds)
        print(f"catalog of {10 * args.seeds} models written in {time.perf_counter() - t0:.1f} s")
        t0, c0 = time.perf_counter(), time.process_time()
        out = build_report(zoo, Path(tmp) / "report.html")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"report: {wall:.1f} s wall, {cpu:.1f} s CPU, {out.stat().st_size / 1e6:.2f} MB")
        with open_zoo(zoo) as z:
            m = z.metrics()
        acc = m[m["name"] == "test_acc"].pivot(index="epoch", columns="model_id", values="value")
        x = acc.index.to_numpy()
        t0 = time.process_time()
        q = np.nanquantile(acc.to_numpy(), [0.1, 0.5, 0.9], axis=1)
        figures.line_bands(x, {"all": (q[1], q[0], q[2])}, "epoch", "test_acc")
        ours = time.process_time() - t0
        t0 = time.process_time()
        figures.paths([(str(mid), x, acc[mid].to_numpy()) for mid in acc.columns], "epoch", "test_acc")
        naive = time.process_time() - t0
        print(f"curve figure, CPU s: one line per model {naive:.2f}, bands {ours:.2f}, ratio {naive / ours:.1f}x")


if __name__ == "__main__":
    main()
