"""Sparsified twins trained as one population vs one at a time: ms per twin-epoch and the speed-up.

For CNN-s on digits (resized to 28x28) the script trains, per model family:

- ``twins, population``: the N twins together (:func:`zooscape.sparsify.train_twins`, one population);
- ``twins, one at a time``: populations of one, one after another (the same code path, N = 1), for
  ``--baseline-models`` of them (mean per model);
- ``zoo models, population``: the N source architectures trained as plain zoo models in one population, for the
  per-model cost of a twin against a zoo model;
- ``zoo model, plain torch one at a time``: ``--baseline-models`` of the source architectures trained one after
  another by a plain PyTorch loop (``torch.optim.Adam``, the same batches per epoch and the same evaluation of
  train/val/test), what a user without zooscape would run; its ratio is the twin's cost per model against it.

Each twin row names its gradient estimator (``--estimators``): ``local`` (the local reparameterisation trick, two
convolutions per layer and a full-resolution noise map) or ``weight`` (one weight sample per twin and step, then
the population's ordinary layers, native conv + pool kernels included).

Every variant does the same work per model-epoch (training steps plus evaluation of train/val/test).

Usage:
    python bench/sparsify.py                # N = 64, 2 epochs, 8 baseline models
    python bench/sparsify.py --quick        # smoke run
    python bench/sparsify.py --threads 2
    python bench/sparsify.py --clock cpu     # CPU time of the process (a shared machine)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch
from population import _time as _wall_time  # bench/ is on sys.path when this script runs

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.sparsify import train_twins
from zooscape.train import Member, TrainConfig, train_population

CASES = {
    "cnn_s": dict(model=dict(name="cnn_s", in_channels=1), data=dict(name="digits", resize=28)),
    "mlp": dict(model=dict(name="mlp", input_size=64, depth=2, width=32), data=dict(name="digits")),
}


def plain_torch_epochs(model: torch.nn.Module, data, epochs: int, batch_size: int = 32, lr: float = 1e-3,
                       seed: int = 0) -> None:
    """What a user without zooscape writes for one zoo model: ``torch.optim.Adam`` (its defaults), shuffled
    mini-batches, cross entropy, then every epoch the loss and accuracy of train/val/test in eval mode at batch 1024
    (the population trainer's ``train_metrics="eval"`` work)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    x, y = data.train_x, data.train_y
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(x.shape[0], generator=g).split(batch_size):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for sx, sy in ((x, y), (data.val_x, data.val_y), (data.test_x, data.test_y)):
                for i in range(0, sx.shape[0], 1024):
                    out = model(sx[i:i + 1024])
                    float(torch.nn.functional.cross_entropy(out, sy[i:i + 1024], reduction="sum"))
                    int((out.argmax(1) == sy[i:i + 1024]).sum())


def _cpu_time(fn) -> float:
    """The process's CPU time (all its threads) for ``fn()``: robust to other processes on a shared machine."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def run(case: str, n: int, epochs: int, baseline_models: int, device: str, estimators: list[str],
        repeats: int = 2, clock: str = "wall") -> list[dict]:
    """Per estimator: ms per twin-epoch as a population and one at a time, and ms per zoo-model-epoch. The zoo
    population is timed before and after every twin population (A/B interleaved, ``repeats`` rounds; minimum of
    each), so that load changes on a shared machine hit both sides."""
    _time = _wall_time if clock == "wall" else _cpu_time
    spec = CASES[case]
    dkw = dict(spec["data"])
    data = load_dataset(dkw.pop("name"), seed=0, **dkw)
    mkw = dict(spec["model"])
    name = mkw.pop("name")
    sources = [create_model(name, seed=s, **mkw) for s in range(n)]
    members = [Member(seed=s) for s in range(n)]
    cfg = TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=1e-3)
    per = 1000.0 / epochs
    for est in estimators:  # warm-up (kernel caches, allocator)
        train_twins(sources[:2], data, TrainConfig(epochs=1, batch_size=32, optimizer="adam"), members[:2],
                    device=device, estimator=est)
    zoo = [_time(lambda: train_population(sources, data, cfg, members, device=device))]
    pop: dict[str, list[float]] = {e: [] for e in estimators}
    for _ in range(repeats):
        for est in estimators:
            pop[est].append(_time(lambda est=est: train_twins(sources, data, cfg, members, device=device,
                                                              estimator=est)))
            zoo.append(_time(lambda: train_population(sources, data, cfg, members, device=device)))
    plain_torch_epochs(copy.deepcopy(sources[0]), data, 1)  # warm-up (oneDNN primitives: seconds on first use)
    plain = sum(_time(lambda i=i: plain_torch_epochs(copy.deepcopy(sources[i]), data, epochs, seed=i))
                for i in range(baseline_models)) * per / baseline_models
    rows = []
    for est in estimators:
        one = sum(_time(lambda i=i, est=est: train_twins([sources[i]], data, cfg, [members[i]], device=device,
                                                estimator=est)) for i in range(baseline_models))
        rows.append({"case": case, "n": n, "epochs": epochs, "estimator": est,
                     "twins_population_ms": min(pop[est]) * per / n,
                     "twins_one_at_a_time_ms": one * per / baseline_models, "zoo_population_ms": min(zoo) * per / n,
                     "zoo_plain_torch_ms": plain})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="population size (default 64)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--baseline-models", type=int, default=8, help="twins trained one at a time (mean per model)")
    ap.add_argument("--cases", nargs="+", default=["cnn_s", "mlp"], choices=sorted(CASES))
    ap.add_argument("--estimators", nargs="+", default=["weight", "local"], choices=["weight", "local"],
                    help="twins' gradient estimators to time (default both)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timing rounds (minimum taken)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall-clock time (default) or the process's CPU time (robust to a shared machine's load)")
    ap.add_argument("--quick", action="store_true", help="N=8, 1 epoch, 2 baseline models")
    args = ap.parse_args()
    if args.quick:
        args.n, args.epochs, args.baseline_models, args.repeats = 8, 1, 2, 1
    torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
          f"device {args.device}, clock {args.clock}, load average {load}")
    print("| case | N | estimator | twins, population (ms/twin-epoch) | twins, one at a time | speed-up | "
          "zoo models, population (ms/model-epoch) | twin / zoo model | zoo model, plain torch one at a time "
          "(ms/model-epoch) | twin / plain-torch zoo model |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        for r in run(case, args.n, args.epochs, args.baseline_models, args.device, args.estimators, args.repeats,
                     args.clock):
            est, zoo_ms = r["estimator"], r["zoo_population_ms"]
            print(f"| {case} | {r['n']} | {est} | {r['twins_population_ms']:.1f} | "
                  f"{r['twins_one_at_a_time_ms']:.1f} | {r['twins_one_at_a_time_ms'] / r['twins_population_ms']:.1f}x"
                  f" | {zoo_ms:.1f} | {r['twins_population_ms'] / zoo_ms:.2f}x | {r['zoo_plain_torch_ms']:.1f} | "
                  f"{r['twins_population_ms'] / r['zoo_plain_torch_ms']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
