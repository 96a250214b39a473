"""The ``"weight"`` estimator's native sample kernel (``train/_native/ard.c``) vs its PyTorch formula, per layer,
and its noise: counter-based noise generated inline against torch's ``normal_`` drawn per model.

For every ARD layer of an N-twin population (CNN-s and the MLP 64-32-32-10, weights as strided views into the
trainer's flat buffer) the script times one step's noise, forward and backward of
:class:`zooscape.sparsify.pop_ard._WeightSample` (the weight sample, ``log alpha`` and the KL gradient; without
autograd's bookkeeping, which all share), interleaved, minimum over rounds of this thread's CPU time (robust to
other processes on a shared machine), for:

- ``torch noise + PyTorch``: the previous noise (each model's generator draws ``normal_`` blocks of up to 64 steps,
  amortised per step, as ``_NoiseStream`` did before the counter-based noise) and the PyTorch formula;
- ``torch noise + native``: the same noise, the native kernel (the previous default);
- ``inline, kept``: counter-based noise generated inside the native forward and written for the backward, the KL
  gradient evaluated in the backward (the default before branch ``ardfast``; ``pop_ard.KL_FORWARD = False``);
- ``inline, regen``: generated inside the forward and again inside the backward (``pop_ard.KEEP_EPS = False``);
- ``inline, kl``: as ``kept``, the forward also evaluates the KL term's gradient and keeps ``exp(la/2) eps``, the
  backward has no transcendental function (the ``"kl"`` format, default);

then the ``"local"`` estimator on CNN-s's convolution maps (noise, sample ``mu + sqrt(var + 1e-8) eps`` and its
backward): torch ``randn`` per model stacked into the map (previous), counter noise materialised, and the native
sample with the noise inline (``pop_ard._LocalSample``, the default);

and the ratio of the previous default to the new one (weight sample: ``kept / kl``), per layer and for the whole
step; then the generators alone
in ns per number (torch ``normal_`` with a generator, the native Philox, its PyTorch twin).

Usage:
    python bench/ard_kernel.py              # N = 64
    python bench/ard_kernel.py --n 8 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time

import torch

from zooscape.models import create_model
from zooscape.sparsify import _native_ard, pop_ard, to_ard
from zooscape.sparsify.ard import ard_layers, sample_preactivation
from zooscape.sparsify.counter_noise import TAG_LOCAL, CounterStream, counter_normal, local_noise
from zooscape.train import Population, _flags

MODELS = {"cnn_s": dict(name="cnn_s", in_channels=1), "mlp": dict(name="mlp", input_size=64, depth=2, width=32)}


class _OldNoise:
    """The per-model noise before the counter-based generator: every ``steps`` steps one ``normal_`` of
    ``[steps, *shape]`` per model generator (``steps = max(1, min(64, 2^16 // numel))``)."""

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.gens = [torch.Generator().manual_seed(i) for i in range(n)]
        self.shape = shape
        self.steps = max(1, min(64, (1 << 16) // max(1, math.prod(shape))))
        self.cursor, self.block = self.steps, None

    def next(self) -> torch.Tensor:
        if self.cursor == self.steps:
            self.block = torch.empty((len(self.gens), self.steps, *self.shape))
            for i, g in enumerate(self.gens):
                self.block[i].normal_(generator=g)
            self.cursor = 0
        self.cursor += 1
        return self.block[:, self.cursor - 1]


class _Ctx:
    """A stand-in for autograd's context: the kernels are timed on their own, without graph bookkeeping."""

    needs_input_grad = (True, True, False, False)

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


def _step(layer, noise, grad: torch.Tensor, native: bool, keep: bool = True, kl: bool = False) -> None:
    """One step's noise, the weight sample's forward and backward (KL scale 0.01): ``noise`` an :class:`_OldNoise`
    (drawn here) or a :class:`CounterStream`; native or the PyTorch formula; ``keep``: ``pop_ard.KEEP_EPS``;
    ``kl``: ``pop_ard.KL_FORWARD``."""
    old_usable, old_keep, old_kl = pop_ard._native_ard.usable, pop_ard.KEEP_EPS, pop_ard.KL_FORWARD
    if not native:
        pop_ard._native_ard.usable = lambda *a: False
    pop_ard.KEEP_EPS, pop_ard.KL_FORWARD = keep, kl
    try:
        ctx = _Ctx()
        with torch.no_grad():
            pop_ard._WeightSample.forward(ctx, layer.weight, layer.log_sigma2, noise.next(), 0.01)
            pop_ard._WeightSample.backward(ctx, grad)
    finally:
        pop_ard._native_ard.usable, pop_ard.KEEP_EPS, pop_ard.KL_FORWARD = old_usable, old_keep, old_kl


def _old_local_noise(gens: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """The local estimator's noise before the counter-based generator: one ``randn`` per model and step, drawn as
    ``[B, H, W, C]`` and stacked into the channels-last population map ``[B, N*C, H, W]``."""
    b, nc, h, w = shape
    parts = [torch.randn((b, h, w, nc // len(gens)), generator=g) for g in gens]
    return torch.stack(parts, 3).view(b, h, w, nc).permute(0, 3, 1, 2)


def _local_step(mu: torch.Tensor, var: torch.Tensor, grad: torch.Tensor, gens, stream, native: bool,
                pool: dict) -> None:
    """The local estimator's noise, sample and backward on one layer's maps: ``stream`` ``None`` for the previous
    noise (torch ``randn`` per model) + :func:`sample_preactivation`; else counter noise, inline when ``native``
    (``pool``: the layer's buffer for the backward's map, as a population layer keeps it)."""
    m, v = mu.detach().requires_grad_(), var.detach().requires_grad_()
    if stream is None:
        out = sample_preactivation(m, v, _old_local_noise(gens, tuple(mu.shape)))
    elif native:
        out = pop_ard._LocalSample.apply(m, v, stream.next(), _native_ard.local_layout(mu, len(gens), 1), pool)
    else:
        out = sample_preactivation(m, v, local_noise(stream.next(), tuple(mu.shape), 1, mu))
    out.backward(grad)


def _local_table(n: int, rounds: int, reps: int) -> None:
    """CNN-s's pre-activation maps (batch 32, channels-last): the local estimator's noise + sample + backward."""
    print("\n| local: map [B, N*C, H, W] | torch randn + sample (ms) | counter noise materialised + sample | "
          "inline native | previous / inline |")
    print("|---|---|---|---|---|")
    total = [0.0] * 3
    for c, hw in ((8, 24), (6, 8), (4, 3)):
        shape = (32, n * c, hw, hw)
        mu, var, grad = (torch.rand(shape).contiguous(memory_format=torch.channels_last) for _ in range(3))
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        variants = [(None, False), (CounterStream(gens, (), n, TAG_LOCAL), False),
                    (CounterStream(gens, (), n, TAG_LOCAL), True)]
        best = [float("inf")] * 3
        pools: list[dict] = [{}, {}, {}]
        for _ in range(rounds):
            for j, (stream, native) in enumerate(variants):
                fn = functools.partial(_local_step, mu, var, grad, gens, stream, native, pools[j])
                best[j] = min(best[j], _cpu_ms(fn, max(1, reps // 4)))
        total = [a + b for a, b in zip(total, best)]
        print(f"| {list(shape)} | " + " | ".join(f"{b:.3f}" for b in best) + f" | {best[0] / best[2]:.2f}x |")
    print("| conv maps together | " + " | ".join(f"{b:.3f}" for b in total) + f" | {total[0] / total[2]:.2f}x |")


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
    ap.add_argument("--no-local", action="store_true", help="skip the local estimator's table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not _native_ard.usable(torch.zeros(1, 1)):
        raise SystemExit("native kernels unavailable: nothing to compare")
    print(f"# torch {torch.__version__}, 1 thread, N = {args.n}, load average {os.getloadavg()}")
    names = ("torch noise + PyTorch", "torch noise + native", "inline, kept", "inline, regen", "inline, kl")
    print("| model | layer weight [N, ...] | " + " | ".join(f"{x} (ms)" for x in names) + " | native: torch noise / "
          "inline kept | inline kept / kl |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, kw in MODELS.items():
        kw = dict(kw)
        arch = kw.pop("name")
        pop = Population([to_ard(create_model(arch, seed=i, **kw)) for i in range(args.n)])
        pop.flatten_parameters()  # the trainer's layout: weights are strided views into one [N, P] buffer
        total = [0.0] * 5
        for _, layer in ard_layers(pop):
            if not hasattr(layer, "n"):
                continue
            shape = tuple(layer.weight.shape)
            grad = torch.randn(shape)
            gens = [torch.Generator().manual_seed(i) for i in range(args.n)]
            variants = [(_OldNoise(args.n, shape[1:]), False, True, False),
                        (_OldNoise(args.n, shape[1:]), True, True, False), (CounterStream(gens, ()), True, True, False),
                        (CounterStream(gens, ()), True, False, False), (CounterStream(gens, ()), True, True, True)]
            best = [float("inf")] * 5
            per = variants[0][0].steps  # a timing holds whole blocks of the old noise (its amortised cost)
            reps = per * max(1, -(-args.reps // per))
            for _ in range(args.rounds):
                for j, (noise, native, keep, kl) in enumerate(variants):
                    fn = functools.partial(_step, layer, noise, grad, native, keep, kl)
                    best[j] = min(best[j], _cpu_ms(fn, reps))
            total = [a + b for a, b in zip(total, best)]
            print(f"| {name} | {list(shape)} | " + " | ".join(f"{b:.3f}" for b in best)
                  + f" | {best[1] / best[2]:.2f}x | {best[2] / best[4]:.2f}x |")
        print(f"| {name} | whole step | " + " | ".join(f"{b:.3f}" for b in total)
              + f" | {total[1] / total[2]:.2f}x | {total[2] / total[4]:.2f}x |", flush=True)
    numel = 1 << 16
    keys = torch.randint(0, 1 << 32, (args.n, 2))
    gens = [torch.Generator().manual_seed(i) for i in range(args.n)]
    out = torch.empty(args.n, numel)

    def torch_normal() -> None:
        for i, g in enumerate(gens):
            out[i].normal_(generator=g)

    if not args.no_local:
        _local_table(args.n, args.rounds, args.reps)
    with _flags.override(native_kernels=False):
        fallback = _cpu_ms(lambda: counter_normal(keys, 0, numel), 1)
    rates = {"torch normal_ (per-model generator)": min(_cpu_ms(torch_normal, 3) for _ in range(args.rounds)),
             "native Philox-4x32-10 + Box-Muller": min(_cpu_ms(lambda: counter_normal(keys, 0, numel), 3)
                                                       for _ in range(args.rounds)),
             "PyTorch Philox-4x32-10 + Box-Muller (kernels off)": fallback}
    for k, v in rates.items():
        print(f"# {k}: {v * 1e6 / (args.n * numel):.2f} ns per number")

if __name__ == "__main__":
    main()
