"""Benchmark: population / vectorized linear-path evaluation vs a loop over deep-copied models, and the default.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python bench/lmc.py --quick

All methods evaluate the same path (same alphas, splits, BatchNorm mode) through
``zooscape.connect.linear_path(method="loop" | "vmap" | "population")``; the script checks that the curves agree
and prints wall time per path, the ratios loop/vmap and loop/population, and which one ``method="auto"`` (the
default) picks, for small digits networks and for registry models at MNIST size (MLP 784-512x3, LeNet-5, CNN-s;
random data) and VGG11-BN at CIFAR size (width 1/4 with ``--quick``). The default must never be the slower one.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from zooscape.connect import linear_path
from zooscape.connect.population import pick_method


def load_digits_splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """sklearn digits as {train, test}: x [n, 1, 8, 8] float32 in [0, 1], y [n] int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * x.shape[0])
    return {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:])}


def mlp(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, width), nn.BatchNorm1d(width), nn.ReLU(),
        nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
        nn.Linear(width, 10),
    )  # fmt: skip


def cnn(seed: int, channels: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(channels * 4, 10),
    )  # fmt: skip


def time_path(a, b, data, method: str, repeats: int, **kw) -> tuple[float, object]:
    result = linear_path(a, b, data, method=method, **kw)  # warm-up (first vmap trace, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = linear_path(a, b, data, method=method, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models, fewer points and repeats")
    parser.add_argument("--n-points", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--models", default="", help="comma-separated subset of the model names (default all)")
    args = parser.parse_args()
    n_points = args.n_points or (11 if args.quick else 25)
    repeats = args.repeats or (1 if args.quick else 3)
    data = load_digits_splits()
    if args.quick:
        data = {k: (x[:400], y[:400]) for k, (x, y) in data.items()}
    models = {"mlp": (mlp, 32 if args.quick else 128), "cnn": (cnn, 4 if args.quick else 16)}
    from zooscape.models import create_model

    registry = {
        "mlp784-512x3": (dict(name="mlp", width=512, depth=3, input_size=[784]), (784,)),
        "lenet5": (dict(name="lenet5", in_channels=1, input_size=[1, 28, 28]), (1, 28, 28)),
        "cnn_s": (dict(name="cnn_s", in_channels=1, input_size=[1, 28, 28]), (1, 28, 28)),
        "vgg11_bn": (dict(name="vgg11_bn", in_channels=3, input_size=[3, 32, 32],
                          width=0.25 if args.quick else 1.0), (3, 32, 32)),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, n_points {n_points}, "
          f"train {data['train'][0].shape[0]}, test {data['test'][0].shape[0]}")  # fmt: skip
    print(f"{'model':13s} {'bn_mode':12s} {'loop s':>8s} {'vmap s':>8s} {'pop s':>8s} {'loop/vmap':>9s} "
          f"{'loop/pop':>9s} {'auto':>10s} {'max |dloss|':>12s}")
    cases = [(name, factory(0, width), factory(1, width), data) for name, (factory, width) in models.items()]
    g = torch.Generator().manual_seed(0)
    n = 256 if args.quick else 1024
    for name, (kw, shape) in registry.items():
        kw = dict(kw)
        factory = kw.pop("name")
        fake = {s: (torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
                for s in ("train", "test")}
        cases.append((name, create_model(factory, seed=0, num_classes=10, **kw),
                      create_model(factory, seed=1, num_classes=10, **kw), fake))
    keep = set(filter(None, args.models.split(",")))
    for name, a, b, case_data in cases:
        if keep and name not in keep:
            continue
        for bn_mode in ("interpolate", "reset"):
            kw = dict(n_points=n_points, bn_mode=bn_mode, splits=("train", "test"))
            t_loop, slow = time_path(a, b, case_data, "loop", repeats, **kw)
            t_vmap, fast = time_path(a, b, case_data, "vmap", repeats, **kw)
            t_pop, pop = time_path(a, b, case_data, "population", repeats, **kw)
            diff = max(float((r.loss[s] - slow.loss[s]).abs().max()) for s in ("train", "test") for r in (fast, pop))
            print(f"{name:13s} {bn_mode:12s} {t_loop:8.3f} {t_vmap:8.3f} {t_pop:8.3f} {t_loop / t_vmap:8.2f}x "
                  f"{t_loop / t_pop:8.2f}x {pick_method(a, case_data['test'][0]):>10s} {diff:12.2e}", flush=True)


if __name__ == "__main__":
    main()
