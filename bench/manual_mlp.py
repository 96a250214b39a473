"""MLP populations trained with the manual step (no autograd) vs through autograd: ms per model-epoch and the ratio.

Both sides run :func:`zooscape.train.train_population` on the same models, data and settings; the only difference
is the ``manual_mlp`` fast-path switch (``zooscape.train.manual_mlp``). Runs are interleaved (manual, autograd,
manual, ...) and the best of ``--repeats`` is reported, with the machine's load. The final weights of both sides
are compared (float rounding).

Usage:
    python bench/manual_mlp.py                    # digits MLP 64-32-32-10, N in 16 and 64, 5 epochs
    python bench/manual_mlp.py --sizes 1 16 --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.train import TrainConfig, train_population
from zooscape.train._flags import override
from zooscape.train.threads import resolve_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="population sizes N")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per side (best is shown)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(resolve_threads(None))
    data = load_dataset("digits")
    cfg = TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adam", lr=1e-3)
    print(f"# digits MLP 64-{args.width}x{args.depth}-10, batch 32, Adam, {args.epochs} epochs incl. evaluation, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")
    print("| N | manual ms/model-epoch | autograd ms/model-epoch | speed-up | max weight difference |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        times: dict[bool, list[float]] = {True: [], False: []}
        final: dict[bool, list[torch.Tensor]] = {}
        for _ in range(args.repeats):
            for manual in (True, False):
                models = [create_model("mlp", input_size=64, depth=args.depth, width=args.width, seed=s)
                          for s in range(n)]
                with override(manual_mlp=manual):
                    t = time.perf_counter()
                    res = train_population(models, data, cfg, device="cpu")
                    times[manual].append((time.perf_counter() - t) / (n * args.epochs) * 1e3)
                final[manual] = [v for sd in res.state_dicts for v in sd.values()]
        diff = max(float((a - b).abs().max()) for a, b in zip(final[True], final[False]))
        fast, slow = min(times[True]), min(times[False])
        print(f"| {n} | {fast:.2f} | {slow:.2f} | {slow / fast:.2f}x | {diff:.1e} |", flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
