"""Where one epoch of a twin population goes, against a zoo population: CPU time per phase, per model-epoch.

Wraps the population trainer's phases (set-up, training steps, the optimiser step inside them, evaluation, the
final result) with this thread's CPU time (robust to other processes on a shared machine), trains a zoo population
and twin populations (``--what``) of N models for one epoch, interleaved, ``--rounds`` times, and prints the
minimum per phase in ms per model-epoch. ``--profile`` adds a ``torch.profiler`` table per variant.

Usage:
    python bench/twin_profile.py --case cnn_s
    python bench/twin_profile.py --case mlp --what zoo weight --profile
"""

from __future__ import annotations

import argparse
import collections
import os
import time

import torch

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.sparsify import train_twins
from zooscape.train import Member, TrainConfig, train_population
from zooscape.train import trainer as _trainer

CASES = {"cnn_s": (dict(name="cnn_s", in_channels=1), dict(name="digits", resize=28)),
         "mlp": (dict(name="mlp", input_size=64, depth=2, width=32), dict(name="digits"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="cnn_s", choices=sorted(CASES))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--what", nargs="+", default=["zoo", "weight", "local"], choices=["zoo", "weight", "local"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="training batch size (Model Zoos: 10)")
    ap.add_argument("--profile", action="store_true", help="also a torch.profiler table per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mk, dk = (dict(x) for x in CASES[args.case])
    data = load_dataset(dk.pop("name"), seed=0, **dk)
    arch = mk.pop("name")
    sources = [create_model(arch, seed=s, **mk) for s in range(args.n)]
    members = [Member(seed=s) for s in range(args.n)]
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, optimizer="adam", lr=1e-3)
    spent: dict[str, float] = collections.defaultdict(float)

    def wrap(owner, name: str, key: str) -> None:
        fn = getattr(owner, name)

        def timed(*a, **kw):
            t = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.thread_time() - t

        setattr(owner, name, timed)

    wrap(_trainer._Run, "__init__", "setup")
    wrap(_trainer._Run, "train_epoch", "steps")
    wrap(_trainer.PopulationOptimizer, "step", "(optimiser)")
    wrap(_trainer._Run, "evaluate", "eval")

    def go(what: str) -> None:
        if what == "zoo":
            train_population(sources, data, cfg, members, device="cpu")
        else:
            train_twins(sources, data, cfg, members, device="cpu", estimator=what)

    for what in args.what:  # warm-up (kernel caches, oneDNN primitives, allocator)
        if what == "zoo":
            train_population(sources[:2], data, cfg, members[:2], device="cpu")
        else:
            train_twins(sources[:2], data, cfg, members[:2], device="cpu", estimator=what)
    best: dict[str, dict[str, float]] = {w: {} for w in args.what}
    for _ in range(args.rounds):
        for what in args.what:
            spent.clear()
            t = time.thread_time()
            go(what)
            spent["total"] = time.thread_time() - t
            for k, v in spent.items():
                best[what][k] = min(best[what].get(k, float("inf")), v)
    print(f"# {args.case}, N = {args.n}, batch {args.batch_size}, torch {torch.__version__}, 1 thread, "
          f"load average {os.getloadavg()}")
    print("ms per model-epoch (CPU), min of", args.rounds, "rounds")
    for what in args.what:
        print(f"{what:>6}: " + "  ".join(f"{k}={v * 1e3 / args.n:.2f}" for k, v in best[what].items()))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for what in args.what:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                go(what)
            print(f"==== {what}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))


if __name__ == "__main__":
    main()
