"""Quickstart: train a small model zoo on offline data, summarise it, plot it, and analyse two of its models.

Run with ``make demo`` (or ``python examples/quickstart.py --out demo_zoo``). Everything runs on the CPU in about a
minute: 8 MLPs on scikit-learn's real 8x8 digits (2 learning rates x 4 seeds) trained as one population.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from zooscape import zoo as zs
from zooscape.connect import linear_path
from zooscape.zoo.runner import train_zoo

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(HERE.parent / "configs" / "quickstart.toml"))
    ap.add_argument("--out", default="demo_zoo")
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)

    # 1. Train (resumes if interrupted; a finished zoo is left as it is).
    train_zoo(args.spec, out, progress=True)

    # 2. Read it back: one row per model and epoch, with config columns and metrics.
    z = zs.open(out)
    table = z.table()
    last = table[table["epoch"] == table["epoch"].max()]
    print(f"\n{len(z.model_ids)} models, {len(table)} model-epochs in {out}/")
    cols = ["model_id", "training.lr", "training.seed", "train_acc", "test_acc"]
    print(last[cols].sort_values(["training.lr", "training.seed"]).to_string(index=False))
    print("\nmean test accuracy per learning rate:")
    print(last.groupby("training.lr")["test_acc"].agg(["mean", "std", "count"]).to_string())

    # 3. A heatmap over two grid axes (the same as `zooscape zoo plot`).
    from zooscape.zoo.plot import save_heatmap
    from zooscape.zoo.summary import at_epoch, heatmap_matrix

    xs, ys, means, _ = heatmap_matrix(at_epoch(table, None), "training.lr", "training.seed", "test_acc")
    png = out / "plots" / "test_acc_seed_vs_lr.png"
    save_heatmap(png, xs, ys, means, "training.lr", "training.seed", title="quickstart: test accuracy")
    print(f"\nheatmap written to {png}")

    # 4. Linear mode connectivity between two seeds of the same learning rate.
    lr = last["training.lr"].max()
    ids = last[last["training.lr"] == lr]["model_id"].tolist()[:2]
    epoch = int(table["epoch"].max())
    a, b = z.load_model(ids[0], epoch), z.load_model(ids[1], epoch)
    data = z.data()  # the zoo's training data (DataSplits)
    path = linear_path(a, b, data, n_points=11, splits=("test",))
    print(f"\nlinear path between {ids[0]} and {ids[1]} (epoch {epoch}):")
    for alpha, loss, err in zip(path.alphas.tolist(), path.loss["test"].tolist(), path.error["test"].tolist()):
        print(f"  alpha {alpha:4.2f}  test loss {loss:.4f}  test error {err:.4f}")
    print(f"  L2 distance {path.distance:.3f}; test-loss barrier {path.barrier('test', 'loss'):.4f}, "
          f"test-error barrier {path.barrier('test', 'error'):.4f}")


if __name__ == "__main__":
    main()
