"""The population Fisher's two ways of forming per-sample Gram matrices, and the plain per-model loop, in process.

Usage:
    .venv/bin/python bench/fisher_factors.py [--models 4] [--repeats 3]

For N randomly initialised models (MLP 64-64-10 on 64 features; CNN-s on 28x28 images), 128 samples and 32 sampled
labels per input (the settings of ``bench/analyses.py --analysis fisher``), one thread, times
``population_fisher_trace_estimate`` with ``method="factors"`` (per-layer factorisation, the default where it
applies) and ``method="jacobian"`` (each sample's ``[N, K, P]`` Jacobian), and the loop over the N models of the
per-model reference ``fisher_trace_estimate``; prints the best of ``--repeats`` interleaved runs, the ratios, and
the largest relative difference of the traces. ``bench/analyses.py --analysis fisher`` is the end-to-end
comparison (``metrics run`` against a user's loop over a trained zoo).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from torch import nn


def _models(family: str, n: int) -> list[nn.Module]:
    from zooscape.models.cnn_s import cnn_s

    out = []
    for s in range(n):
        torch.manual_seed(s)
        if family == "mlp":
            out.append(nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                     nn.Linear(64, 10)))
        else:
            out.append(cnn_s(num_classes=10, in_channels=1, input_size=28, activation="relu", dropout=0.0))
    return out


def _side(name: str, models: list[nn.Module], x: torch.Tensor, y: torch.Tensor,
          settings: dict) -> Callable[[], list[float]]:
    """One side's run: the population with ``method=name``, or the per-model loop (``"loop"``)."""
    from zooscape import landscape as ls
    from zooscape.landscape.population_fisher import population_fisher_trace_estimate

    if name == "loop":
        return lambda: [ls.fisher_trace_estimate(m, x, y, **settings).estimate for m in models]
    return lambda: [e.estimate for e in population_fisher_trace_estimate(models, x, y, **settings, method=name)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=4, help="models per population (default 4, metrics run's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = {"num_samples": 32, "batch_size": 128, "seed": 0}
    for family, shape in (("mlp", (64,)), ("cnn_s", (1, 28, 28))):
        models = _models(family, args.models)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(128, *shape, generator=g), torch.randint(0, 10, (128,), generator=g)
        sides = {name: _side(name, models, x, y, settings) for name in ("factors", "jacobian", "loop")}
        for run in sides.values():  # first-use costs (lazy imports, oneDNN primitives) outside the clock
            run()
        best = {k: float("inf") for k in sides}
        values = {}
        for _ in range(args.repeats):
            for name, run in sides.items():
                t0 = time.perf_counter()
                values[name] = run()
                best[name] = min(best[name], time.perf_counter() - t0)
        rel = {k: max(abs(a - b) / abs(b) for a, b in zip(values[k], values["loop"])) for k in ("factors", "jacobian")}
        print(f"{family}, {args.models} models, 128 samples x 32 draws, 1 thread, load average "
              f"{os.getloadavg()[0]:.1f}: loop {best['loop']:.3f} s, jacobian {best['jacobian']:.3f} s "
              f"({best['loop'] / best['jacobian']:.2f}x), factors {best['factors']:.3f} s "
              f"({best['loop'] / best['factors']:.2f}x; {best['jacobian'] / best['factors']:.2f}x the jacobian "
              f"path); traces agree with the loop's to {rel['factors']:.1e} (factors), "
              f"{rel['jacobian']:.1e} (jacobian)")


if __name__ == "__main__":
    main()
