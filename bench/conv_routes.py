"""Which of ``PopConv2d``'s convolution routes pay for themselves (one thread, CPU, float32).

``PopConv2d`` (``zooscape.train.layers``) computes N models' convolutions as one grouped convolution (the plain
route); other routes are kept only where they measure faster. This script times each candidate against the plain
route on the layer shapes of the model families that would take it, interleaved, median of ``--repeats``. Routes
that lost were removed from ``PopConv2d`` (marked "removed"); this script keeps them measurable:

- training (forward + backward with an input gradient): the input gradient as a forward convolution of the
  flipped, transposed kernel (``_SmallGroupedConv``: removed from ``PopConv2d``'s forward, still used by the
  sparsified twins' layers) vs PyTorch's backward;
- shared-batch evaluation of a first convolution followed by a 2x2 max-pool (native kernels off, as on CPUs
  without AVX2): one im2col GEMM that pools its four window positions (``pooled GEMM``, kept) vs the GEMM then
  ``max_pool2d`` (kept, for layers without a pool after them or with autograd on) vs one dense ``conv2d`` with
  ``N*C_out`` outputs (removed) vs the plain route (the batch copied N times, grouped convolution);
- with the native kernels on, the conv + pool layers take the native route (``bench/native_convpool.py``);
- the row-Toeplitz "rowconv" route (documented slower than channels-last grouped convolutions) was deleted.

Usage:
    python bench/conv_routes.py [--models 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zooscape.train._flags import override
from zooscape.train.layers import FusedPool, PopConv2d, SharedInput, _SmallGroupedConv


def _layer(n: int, c: int, o: int, k: int, pad: int, seed: int = 0) -> PopConv2d:
    torch.manual_seed(seed)
    return PopConv2d([nn.Conv2d(c, o, k, padding=pad) for _ in range(n)])


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up (oneDNN primitive creation)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def training_routes(n: int, repeats: int) -> list[tuple[str, str, float, float]]:
    """(case, routes, ms of the route, ms of the plain route) for the small-conv input gradient."""
    cases = {  # name: (C, O, k, padding, H, batch)
        "CNN-s conv2 (8->6, 5x5, 12x12)": (8, 6, 5, 0, 12, 32),
        "LeNet-5 conv2 (6->16, 5x5, 14x14)": (6, 16, 5, 0, 14, 32),
        "ResNet-20 w4 (4->4, 3x3 pad 1, 16x16)": (4, 4, 3, 1, 16, 32),
        "ResNet-20 w4 stage 3 (16->16, 3x3 pad 1, 4x4)": (16, 16, 3, 1, 4, 32),
    }
    rows = []
    for name, (c, o, k, pad, h, b) in cases.items():
        fast, plain = _train_case(n, c, o, k, pad, h, b, repeats)
        rows.append((f"train: {name}", "input grad as a forward conv (removed)", fast, plain))
    return rows


def _train_case(n: int, c: int, o: int, k: int, pad: int, h: int, b: int, repeats: int) -> tuple[float, float]:
    layer = _layer(n, c, o, k, pad).train()
    x = torch.randn(b, n * c, h, h).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = layer.weight.reshape(-1, *layer.weight.shape[2:])
    bias = layer.bias.reshape(-1)

    def step(as_forward: bool) -> list[torch.Tensor]:
        y = _SmallGroupedConv.apply(x, w, bias, (pad, pad), n) if as_forward else layer(x)
        return list(torch.autograd.grad(y, (x, layer.weight, layer.bias), torch.ones_like(y)))

    with override(native_kernels=False):
        for a, r in zip(step(True), step(False)):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeats):
            for mode in times:
                times[mode] += _time(lambda mode=mode: step(mode), 1)
    return statistics.median(times[True]) * 1000, statistics.median(times[False]) * 1000


def shared_eval_routes(n: int, repeats: int) -> list[tuple[str, str, float, float]]:
    """(case, route, ms, ms of the plain route) for a first conv + 2x2 max-pool evaluated on a shared batch."""
    cases = {"CNN-s conv1 (1->8, 5x5, 28x28)": (1, 8, 5, 28), "CNN-l conv1 (3->16, 3x3, 28x28)": (3, 16, 3, 28)}
    b = max(1, (1 << 13) // n)  # evaluate_population's batch bound
    rows = []
    for name, (c, o, k, h) in cases.items():
        times = _shared_case(n, c, o, k, h, b, repeats)
        base = statistics.median(times["plain"]) * 1000
        for v in ("pooled GEMM", "GEMM + max_pool2d", "dense conv2d + max_pool2d (removed)"):
            rows.append((f"shared eval: {name}, batch {b}", v, statistics.median(times[v]) * 1000, base))
    return rows


def _shared_case(n: int, c: int, o: int, k: int, h: int, b: int, repeats: int) -> dict[str, list[float]]:
    layer = _layer(n, c, o, k, 0).eval()
    x = torch.randn(b, c, h, h)
    shared = SharedInput(n)
    layer.shared = shared
    pool = FusedPool(nn.MaxPool2d(2))

    def shared_call(fused: bool) -> torch.Tensor:
        layer.fused_pool = pool if fused else None
        shared.channels_last, shared.pending = True, True
        out = layer(x)
        if pool.pending:
            pool.pending = False
            return out
        return F.max_pool2d(out, 2)

    def dense() -> torch.Tensor:  # (removed) one conv2d with N*C_out outputs, then channels-last for downstream
        w = layer.weight.reshape(-1, *layer.weight.shape[2:])
        out = F.conv2d(x, w, layer.bias.reshape(-1)).contiguous(memory_format=torch.channels_last)
        return F.max_pool2d(out, 2)

    def plain() -> torch.Tensor:
        layer.fused_pool = None
        wide = x.unsqueeze(1).expand(b, n, c, h, h).reshape(b, n * c, h, h)
        return F.max_pool2d(layer(wide.contiguous(memory_format=torch.channels_last)), 2)

    variants = {"pooled GEMM": lambda: shared_call(True), "GEMM + max_pool2d": lambda: shared_call(False),
                "dense conv2d + max_pool2d (removed)": dense, "plain": plain}
    with torch.no_grad(), override(native_kernels=False):
        ref = plain()
        for fn in variants.values():
            torch.testing.assert_close(fn(), ref, rtol=1e-4, atol=1e-4)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(repeats):
            for v, fn in variants.items():
                times[v] += _time(fn, 1)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=64, help="population size N")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# torch {torch.__version__}, 1 thread, N={args.models}, median of {args.repeats}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| case | route | ms | plain route ms | speed-up |")
    print("|---|---|---|---|---|")
    for case, route, ms, base in training_routes(args.models, args.repeats) + shared_eval_routes(args.models,
                                                                                                  args.repeats):
        print(f"| {case} | {route} | {ms:.2f} | {base:.2f} | {base / ms:.2f}x |", flush=True)
    print(f"# load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
