"""One Hessian-vector product for N models: the population operator's two forwards vs N per-model products.

Usage:
    .venv/bin/python bench/hessian_products.py                # CNN-s (28x28) and MLP 64-64-10, N = 4, 8, 16
    .venv/bin/python bench/hessian_products.py --model cnn_s --n 8 --samples 512

For each N, the three sides run interleaved in one process (one torch thread, random weights, random data, the
same vector): ``PopulationHessianOperator(layers="plain")`` (``landscape.population_plain``, the default where the
architecture has a plain form), ``layers="population"`` (the trainer's population layers) and N products of
``landscape.hessian_operator`` one model at a time. Each operator's linearised gradient is cached first, as in the
study; the best of ``--repeats`` is printed per side, with the ratios and the largest relative difference.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F


def _models(name: str, n: int) -> list[torch.nn.Module]:
    from zooscape.models.cnn_s import CNNSmall
    from zooscape.models.mlp import MLP

    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(MLP(64, 10, 2, 64, "relu", 0.0, True, "none") if name == "mlp"
                   else CNNSmall(1, 10, (28, 28), "tanh", 0.0))
    return out


def _timed(fn, times: list[float]) -> None:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)


def bench(name: str, n: int, samples: int, repeats: int) -> None:
    from zooscape import landscape as ls
    from zooscape.landscape.population import population_hessian_operator

    models = _models(name, n)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 64, generator=g) if name == "mlp" else torch.randn(samples, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    plain = population_hessian_operator(models, F.cross_entropy, x, y, layers="plain")
    layers = population_hessian_operator(models, F.cross_entropy, x, y, layers="population")
    singles = [ls.hessian_operator(m, F.cross_entropy, x, y) for m in models]
    v = torch.randn(n, plain.dim, generator=g)
    ref = torch.stack([s.matvec(v[i]) for i, s in enumerate(singles)])
    diff = max(float(((op.matvec(v) - ref).norm(dim=1) / ref.norm(dim=1)).max()) for op in (plain, layers))
    times: dict[str, list[float]] = {"plain": [], "population": [], "singles": []}
    for _ in range(repeats):
        _timed(lambda: plain.matvec(v), times["plain"])
        _timed(lambda: layers.matvec(v), times["population"])
        _timed(lambda: [s.matvec(v[i]) for i, s in enumerate(singles)], times["singles"])
    best = {k: min(t) * 1e3 for k, t in times.items()}
    print(f"{name} N={n} B={samples}: plain {best['plain']:.1f} ms, population layers {best['population']:.1f} ms, "
          f"{n} single products {best['singles']:.1f} ms | plain vs singles {best['singles'] / best['plain']:.2f}x, "
          f"vs population layers {best['population'] / best['plain']:.2f}x (max rel. diff {diff:.1e}, load "
          f"{os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("cnn_s", "mlp", "both"), default="both")
    parser.add_argument("--n", type=int, nargs="+", default=[4, 8, 16], help="population sizes")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in (("cnn_s", "mlp") if args.model == "both" else (args.model,)):
        for n in args.n:
            bench(name, n, args.samples, args.repeats)


if __name__ == "__main__":
    main()
