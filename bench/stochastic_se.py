"""Noise of the sampled Fisher trace on CNN-s, and how well its standard error is calibrated.

Trains CNN-s on the bundled mnist5k digits (a few epochs of Adam, seconds), then, on the zoo run's default
subset (512 training inputs), estimates the Fisher trace with ``kind="sampled"`` for several ``num_samples``
(label draws per input) over several seeds, and prints per setting: the empirical relative std across seeds,
the mean reported relative standard error, their ratio, and the time per estimate; ``kind="exact"`` (no
sampling noise, C gradients per input) is timed alongside. Then the same for the Hessian trace (Hutchinson,
``num_probes`` Rademacher probes, the zoo default 50 and more).

    OMP_NUM_THREADS=1 .venv/bin/python bench/stochastic_se.py            # full tables
    OMP_NUM_THREADS=1 .venv/bin/python bench/stochastic_se.py --quick    # smoke run
    OMP_NUM_THREADS=1 .venv/bin/python bench/stochastic_se.py --what trace
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from zooscape.data import load_dataset
from zooscape.landscape import fisher_trace_estimate, hessian_operator, trace
from zooscape.models import create_model


def train_cnn_s(epochs: int) -> tuple[torch.nn.Module, torch.Tensor]:
    data = load_dataset("mnist5k", seed=0)
    x, y = data.split("train")
    model = create_model("cnn_s", num_classes=10, in_channels=1, input_size=28, activation="tanh", seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xt, yt = data.split("test")
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    idx = torch.sort(torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:512]).values
    print(f"CNN-s after {epochs} epochs: test accuracy {acc:.3f}")
    return model, x[idx], y[idx]


def _row(label: int, values: list[float], rel_ses: list[float], times: list[float]) -> None:
    rel_std = statistics.stdev(values) / statistics.mean(values)
    mean_se = statistics.mean(rel_ses)
    print(f"{label:>11} {rel_std:>19.4f} {mean_se:>12.4f} {mean_se / rel_std:>7.2f} {statistics.median(times):>11.2f}")


def hessian_trace_table(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, quick: bool) -> None:
    op = hessian_operator(model, F.cross_entropy, x, y)
    print(f"Hessian trace\n{'method':>10} {'num_matvecs':>11} {'rel std over seeds':>19} {'mean rel SE':>12} "
          f"{'SE/std':>7} {'s/estimate':>11}")
    for method, probes in ([("hutchinson", 20)] if quick else
                           [("hutchinson", 50), ("hutch++", 51), ("hutch++", 99)]):
        values, ses, times = [], [], []
        for seed in range(3 if quick else 6):
            t0 = time.perf_counter()
            est = trace(op, method=method, num_matvecs=probes, generator=seed)
            times.append(time.perf_counter() - t0)
            values.append(est.estimate)
            ses.append(est.std_error / abs(est.estimate))
        print(f"{method:>10}", end=" ")
        _row(probes, values, ses, times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch, few seeds")
    parser.add_argument("--what", choices=("fisher", "trace", "both"), default="both", help="which tables")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, x, y = train_cnn_s(1 if args.quick else 5)
    if args.what in ("trace", "both"):
        hessian_trace_table(model, x, y, args.quick)
    if args.what == "trace":
        return
    seeds = range(3 if args.quick else 10)
    settings = [1, 8] if args.quick else [1, 4, 16, 32, 64]
    print("Fisher trace, sampled")
    print(f"{'num_samples':>11} {'rel std over seeds':>19} {'mean rel SE':>12} {'SE/std':>7} {'s/estimate':>11}")
    for s in settings:
        values, ses, times = [], [], []
        for seed in seeds:
            t0 = time.perf_counter()
            est = fisher_trace_estimate(model, x, kind="sampled", num_samples=s, generator=seed)
            times.append(time.perf_counter() - t0)
            values.append(est.estimate)
            ses.append(est.relative_error)
        _row(s, values, ses, times)
    t0 = time.perf_counter()
    exact = fisher_trace_estimate(model, x, kind="exact")
    print(f"exact: trace {exact.estimate:.5g} (SE 0), {time.perf_counter() - t0:.2f} s; "
          f"sampled mean at the last setting {statistics.mean(values):.5g}")


if __name__ == "__main__":
    main()
