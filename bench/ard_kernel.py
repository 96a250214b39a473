"""The ``"weight"`` estimator's native sample kernel (``train/_native/ard.c``) vs its PyTorch formula, per layer.

For every ARD layer of an N-twin population (CNN-s and the MLP 64-32-32-10, weights as strided views into the
trainer's flat buffer) the script times the forward and backward formulas of
:class:`zooscape.sparsify.pop_ard._WeightSample` (the weight sample, ``log alpha`` and the KL gradient; without
autograd's bookkeeping, which both share), native and PyTorch, interleaved, minimum over rounds of this thread's
CPU time (robust to other processes on a shared machine), and prints the ratio per layer and for the whole step.

Usage:
    python bench/ard_kernel.py              # N = 64
    python bench/ard_kernel.py --n 8 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import torch

from zooscape.models import create_model
from zooscape.sparsify import _native_ard, pop_ard, to_ard
from zooscape.sparsify.ard import ard_layers
from zooscape.train import Population

MODELS = {"cnn_s": dict(name="cnn_s", in_channels=1), "mlp": dict(name="mlp", input_size=64, depth=2, width=32)}


class _Ctx:
    """A stand-in for autograd's context: the kernels are timed on their own, without graph bookkeeping."""

    needs_input_grad = (True, True, False, False)

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


def _step(layer, eps: torch.Tensor, grad: torch.Tensor, native: bool) -> None:
    """The weight sample's forward and backward (KL scale 0.01), native or the PyTorch formula."""
    old = pop_ard._native_ard.usable
    if not native:
        pop_ard._native_ard.usable = lambda *a: False
    try:
        ctx = _Ctx()
        with torch.no_grad():
            pop_ard._WeightSample.forward(ctx, layer.weight, layer.log_sigma2, eps, 0.01)
            pop_ard._WeightSample.backward(ctx, grad)
    finally:
        pop_ard._native_ard.usable = old


def _cpu_ms(fn, reps: int) -> float:
    t = time.thread_time()
    for _ in range(reps):
        fn()
    return (time.thread_time() - t) * 1e3 / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="population size (default 64)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (minimum taken)")
    ap.add_argument("--reps", type=int, default=20, help="calls per timing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not _native_ard.usable(torch.zeros(1, 1)):
        raise SystemExit("native kernels unavailable: nothing to compare")
    print(f"# torch {torch.__version__}, 1 thread, N = {args.n}, load average {os.getloadavg()}")
    print("| model | layer weight [N, ...] | native (ms) | PyTorch (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name, kw in MODELS.items():
        kw = dict(kw)
        arch = kw.pop("name")
        pop = Population([to_ard(create_model(arch, seed=i, **kw)) for i in range(args.n)])
        pop.flatten_parameters()  # the trainer's layout: weights are strided views into one [N, P] buffer
        total = [0.0, 0.0]
        for _, layer in ard_layers(pop):
            if not hasattr(layer, "n"):
                continue
            eps, grad = torch.randn(layer.weight.shape), torch.randn(layer.weight.shape)
            best = [float("inf"), float("inf")]
            for _ in range(args.rounds):
                for j, native in enumerate((True, False)):
                    fn = functools.partial(_step, layer, eps, grad, native)
                    best[j] = min(best[j], _cpu_ms(fn, args.reps))
            total = [total[0] + best[0], total[1] + best[1]]
            print(f"| {name} | {list(layer.weight.shape)} | {best[0]:.3f} | {best[1]:.3f} | {best[1] / best[0]:.2f}x |")
        print(f"| {name} | whole step | {total[0]:.3f} | {total[1]:.3f} | {total[1] / total[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
