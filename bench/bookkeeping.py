"""Per-epoch bookkeeping of zoo training: is it flat in the number of epochs?

After every epoch a training task records the epoch (``GroupRecorder.observe``), sends its catalog rows
(``GroupRecorder.rows``) and rewrites the group's resume file (``zooscape.zoo.task._write_resume``: the population
state plus the group's history). This script runs exactly that sequence for a synthetic population (N members,
M metrics, an MLP-sized state) for E epochs, with no training in between, and prints the bookkeeping time per
epoch in windows of epochs (first 10, around 50, last 10), per model-epoch, and the ratio last/first: 1.0 means
flat in E (the history used to be rebuilt element by element every epoch: quadratic in E).

Run it against another checkout for a before/after comparison (the same script works with both):
``PYTHONPATH=/path/to/old/src python bench/bookkeeping.py``.

Usage:
    python bench/bookkeeping.py                    # N=64, E=150
    python bench/bookkeeping.py --members 64 --epochs 150 --metrics 8
    python bench/bookkeeping.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from zooscape.train import PopulationState
from zooscape.zoo import task as task_mod
from zooscape.zoo.recorder import GroupRecorder
from zooscape.zoo.store import ZooStore


def run(members: int, epochs: int, metrics: int, params: int, checkpoint_every: int, root: str) -> list[float]:
    """Seconds of bookkeeping for each epoch 0..epochs."""
    store = ZooStore(root)
    ids = [f"m{i:03d}" for i in range(members)]
    ckpt_epochs = list(range(0, epochs + 1, checkpoint_every))
    task = task_mod.GroupTask(root=root, group_id="g0", model_ids=ids, configs=[{}] * members,
                              checkpoint_epochs=ckpt_epochs, save_optimizer=False)
    rec = GroupRecorder("g0", ids, ckpt_epochs)
    g = torch.Generator().manual_seed(0)
    model_states = [{"w": torch.randn(params, generator=g)} for _ in range(members)]
    optim_states = [{"exp_avg": torch.zeros(params), "exp_avg_sq": torch.zeros(params)} for _ in range(members)]
    extra = [{"status": "running", "reason": None, "best_val": 1.0, "bad_epochs": 0} for _ in range(members)]
    names = [f"metric_{j}" for j in range(metrics)]
    times = []
    for e in range(epochs + 1):
        values = torch.rand(members, metrics, generator=g).tolist()
        report = [dict(zip(names, row)) for row in values]
        status, reasons = ["running"] * members, [None] * members
        t0 = time.perf_counter()
        _, stopped = rec.observe(e, report, status, reasons)
        ckpt = rec.checkpoint_members(e, stopped)
        if ckpt:  # the shard write itself is not bookkeeping: remember a name as the task does
            rec.add_shard(e, "weights", f"checkpoints/g0/e{e:06d}.weights.safetensors", ckpt)
        rec.rows([e])
        task_mod._write_resume(store, task, PopulationState(e, model_states, optim_states, extra), rec)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--metrics", type=int, default=8, help="metrics per member and epoch (training reports 8)")
    ap.add_argument("--params", type=int, default=2500, help="parameters per member (an MLP 64-32-32-10: ~3.5k)")
    ap.add_argument("--checkpoint-every", type=int, default=1, help="checkpoint epochs: every k-th (default all)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (N=8, E=30)")
    args = ap.parse_args()
    if args.quick:
        args.members, args.epochs = 8, 30
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="zs-bookkeeping-") as root:
        times = run(args.members, args.epochs, args.metrics, args.params, args.checkpoint_every, root)
    e_max = args.epochs
    windows = [(1, 10), (max(11, e_max // 3 - 4), max(20, e_max // 3 + 5)), (e_max - 9, e_max)]
    print(f"# N={args.members} members, {args.metrics} metrics, {args.params} parameters each, E={e_max}, "
          f"checkpoint every {args.checkpoint_every} epoch(s); load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| epochs | bookkeeping ms per epoch (median) | ms per model-epoch |")
    print("|---|---|---|")
    med = []
    for lo, hi in windows:
        m = statistics.median(times[lo:hi + 1]) * 1000
        med.append(m)
        print(f"| {lo}-{hi} | {m:.2f} | {m / args.members:.4f} |")
    print(f"ratio last/first window: {med[-1] / med[0]:.2f}x (1.0 = flat in E); total {sum(times):.2f} s")


if __name__ == "__main__":
    main()
