"""Population training vs one model at a time: ms per model-epoch and the speed-up.

For each model family and population size N the script trains, in one run:

- ``population``: N models together with :func:`zooscape.train.train_population`;
- ``one-at-a-time (ours)``: populations of one, one after another (the same code path, N = 1);
- ``one-at-a-time (plain torch)``: :func:`zooscape.train.train_sequential`, an ordinary nn.Module + torch.optim
  loop (how the reference code bases train: one model per trial).

Every variant does the same work per model-epoch (training steps plus evaluation of train/val/test). The
one-at-a-time baselines train ``--baseline-models`` models and report the mean per model.

Threads: the library's policy (``zooscape.train.threads``) by default: one torch thread, whatever
``OMP_NUM_THREADS`` says; ``--threads N`` for all variants, ``--baseline-threads N`` for the plain-torch baseline
only (e.g. torch's own default of all cores). ``--background-load K`` starts K busy processes (pure-Python spin
loops) before measuring and stops them afterwards: how the variants fare on a machine that other work shares.

Usage:
    python bench/population.py                 # full run (MLP and CNN-s, N in 16, 64)
    python bench/population.py --quick         # a smoke run
    python bench/population.py --threads 2 --device cpu
    python bench/population.py --background-load 1 --sizes 64
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import torch

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.train import Member, TrainConfig, resolve_device, train_population, train_sequential
from zooscape.train.memory import tune_allocator
from zooscape.train.threads import resolve_threads, usable_cores

CASES = {
    "mlp": dict(data=dict(name="digits"), model=dict(name="mlp", input_size=64, depth=2, width=32),
                train=dict(optimizer="adam", lr=1e-3, batch_size=32)),
    "cnn_s": dict(data=dict(name="digits", resize=28), model=dict(name="cnn_s", in_channels=1),
                  train=dict(optimizer="adam", lr=1e-3, batch_size=32)),
}


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


@contextlib.contextmanager
def background_load(k: int) -> Iterator[list[subprocess.Popen]]:
    """K busy processes (spin loops) for the duration of the block; stopped (terminated, then killed) after."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_case(name: str, sizes: list[int], epochs: int, baseline_models: int, device: str,
             repeats: int = 3, threads: int = 1, baseline_threads: int = 1) -> list[dict]:
    case = CASES[name]
    dcfg = dict(case["data"])
    data = load_dataset(dcfg.pop("name"), **dcfg)
    cfg = TrainConfig(epochs=epochs, **case["train"])
    mk = dict(case["model"])
    mname = mk.pop("name")
    rows = []
    for n in sizes:
        models = [create_model(mname, seed=s, **mk) for s in range(n)]
        members = [Member(seed=s) for s in range(n)]
        warm = TrainConfig(epochs=1, **case["train"])  # first calls pay one-off costs (imports, allocator)
        train_population(models[:2], data, warm, members[:2], device=device)
        train_sequential(models[0], data, warm, members[0], device=device)
        k = min(n, baseline_models)

        def population(models=models, members=members):
            train_population(models, data, cfg, members, device=device)

        def ours_one(models=models, members=members, k=k):
            for i in range(k):
                train_population([models[i]], data, cfg, [members[i]], device=device)

        def torch_one(models=models, members=members, k=k):
            with _threads(baseline_threads):
                for i in range(k):
                    train_sequential(models[i], data, cfg, members[i], device=device)

        runs = [(_time(population), _time(ours_one), _time(torch_one)) for _ in range(repeats)]  # interleaved
        t_pop, t_one, t_seq = (statistics.median(r[j] for r in runs) for j in range(3))
        per = lambda t, m: 1000.0 * t / (m * epochs)  # noqa: E731
        row = dict(model=name, N=n, population=per(t_pop, n), ours_one=per(t_one, k), torch_one=per(t_seq, k))
        row["speedup_vs_torch"] = row["torch_one"] / row["population"]
        row["speedup_vs_ours"] = row["ours_one"] / row["population"]
        rows.append(row)
        print(f"{name:6s} N={n:3d}  population {row['population']:8.2f} ms/model-epoch | one at a time: ours "
              f"{row['ours_one']:8.2f}, plain torch {row['torch_one']:8.2f} | speed-up x{row['speedup_vs_torch']:.2f} "
              f"(vs plain torch), x{row['speedup_vs_ours']:.2f} (vs population of one)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--epochs", type=int, default=5, help="epochs per run (5, as in the reference measurement)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the median is reported")
    ap.add_argument("--baseline-models", type=int, default=4, help="models trained one at a time per baseline")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the library's policy, one per process)")
    ap.add_argument("--baseline-threads", type=int, default=None,
                    help="torch threads of the plain-torch baseline (default: --threads)")
    ap.add_argument("--background-load", type=int, default=0, metavar="K",
                    help="start K busy processes while measuring (stopped at the end)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.epochs, args.baseline_models, args.repeats = [4], 1, 1, 1
    threads = resolve_threads(args.threads)
    baseline_threads = resolve_threads(args.baseline_threads) if args.baseline_threads else threads
    torch.set_num_threads(threads)
    dev = resolve_device(args.device)
    desc = torch.cuda.get_device_name() if dev.type == "cuda" else f"{platform.processor() or platform.machine()}"
    # train_population tunes glibc malloc process-wide (zooscape.train.memory); do it first so that every
    # variant, the plain-torch baseline included, runs under the same allocator settings
    tuned = tune_allocator()
    print(f"# torch {torch.__version__}, device {dev} ({desc}), threads {torch.get_num_threads()} (plain torch "
          f"baseline {baseline_threads}), usable cores {usable_cores()}, OMP_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS')}, epochs {args.epochs}, median of {args.repeats} runs, malloc tuned "
          f"for all variants: {tuned}, background load {args.background_load} busy processes")
    print(f"# load average before: {_load()}")
    rows = []
    with background_load(args.background_load):
        for name in args.models:
            rows += run_case(name, args.sizes, args.epochs, args.baseline_models, str(dev), args.repeats,
                             threads, baseline_threads)
        print(f"# load average at the end (busy processes still running): {_load()}")
    print("\n| model | N | population ms/model-epoch | one at a time (plain torch) | one at a time (ours, N=1) | "
          "speed-up vs plain torch | vs ours N=1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['N']} | {r['population']:.2f} | {r['torch_one']:.2f} | {r['ours_one']:.2f} | "
              f"{r['speedup_vs_torch']:.2f}x | {r['speedup_vs_ours']:.2f}x |")


if __name__ == "__main__":
    main()
