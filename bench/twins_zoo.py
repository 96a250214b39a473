"""A zoo's twins against the zoo itself, through the command line: CPU seconds per model-epoch of
``zooscape sparsify twins`` against ``zooscape zoo train`` on the same grid, and their ratio.

This is the issue's "a twin must not be slower per model than a zoo model" as a user meets it: both commands
run as separate processes (start-up, data, catalog rows, per-epoch checkpoints and resume files included); the
zoo's N seeds are one grid cell, so the N models train as one population and their N twins as one population.
Each command's cost is the CPU time of its process (``resource.getrusage(RUSAGE_CHILDREN)``, robust to other
processes on a shared machine) and its wall time; each pair is run ``--repeats`` times, interleaved, into fresh
directories (the twins start from the freshly trained zoo).

Usage:
    python bench/twins_zoo.py                          # CNN-s on digits 28x28, 16 seeds, 3 epochs each
    python bench/twins_zoo.py --model mlp --n 32 --epochs 5 --estimators weight local
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "cnn_s": ('name = "cnn_s"\nactivation = "relu"', 'name = "digits"\nseed = 42\nresize = 28'),
    "mlp": ('name = "mlp"\ninput_size = 64\ndepth = 2\nwidth = 32', 'name = "digits"\nseed = 42'),
}


def spec_text(model: str, n: int, epochs: int, batch_size: int) -> str:
    """A one-cell zoo spec: ``n`` seeds of one architecture, Adam 1e-3, every epoch checkpointed."""
    m, d = MODELS[model]
    seeds = ", ".join(str(s) for s in range(n))
    return (f'[zoo]\nname = "twins_bench_{model}"\n\n[dataset]\n{d}\n\n[model]\n{m}\n\n'
            f'[training]\nepochs = {epochs}\nbatch_size = {batch_size}\noptimizer = "adam"\nlr = 0.001\n'
            f'seed = 0\n\n[checkpoints]\nepochs = "all"\noptimizer = true\n\n'
            f'[grid]\n"training.seed" = [{seeds}]\n\n[population]\nmax_size = {n}\n')


def timed(cmd: list[str]) -> tuple[float, float]:
    """``(cpu_seconds, wall_seconds)`` of one child process (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn_s", choices=sorted(MODELS))
    ap.add_argument("--n", type=int, default=16, help="models (seeds) in the zoo, one population")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the zoo and of the twins")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--estimators", nargs="+", default=["weight"], choices=["weight", "local"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    zs = [sys.executable, "-m", "zooscape"]
    rows: dict[str, list[tuple[float, float]]] = {"zoo model": []} | {f"twin, {e}": [] for e in args.estimators}
    work = Path(tempfile.mkdtemp(prefix="twins_zoo_"))
    try:
        spec = work / "spec.toml"
        spec.write_text(spec_text(args.model, args.n, args.epochs, args.batch_size))
        for r in range(args.repeats):
            zoo = work / f"zoo{r}"
            rows["zoo model"].append(timed([*zs, "zoo", "train", str(spec), "--out", str(zoo), "--quiet",
                                            "--device", "cpu"]))
            for e in args.estimators:
                copy = work / f"zoo{r}_{e}"
                shutil.copytree(zoo, copy)
                rows[f"twin, {e}"].append(timed([*zs, "sparsify", "twins", str(copy), "--epochs", str(args.epochs),
                                                 "--estimator", e, "--quiet", "--device", "cpu"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per = args.n * args.epochs
    print(f"# {args.model}, {args.n} models x {args.epochs} epochs, batch {args.batch_size}, one population each; "
          f"load average {os.getloadavg()}")
    print("| what | CPU s per run (min) | ms CPU per model-epoch | wall s per run (min) | CPU ratio to a zoo model |")
    print("|---|---|---|---|---|")
    zoo_cpu = min(c for c, _ in rows["zoo model"])
    for k, v in rows.items():
        cpu, wall = min(c for c, _ in v), min(w for _, w in v)
        print(f"| {k} | {cpu:.2f} | {cpu / per * 1e3:.1f} | {wall:.2f} | {cpu / zoo_cpu:.2f}x |")


if __name__ == "__main__":
    main()
