"""Native conv + 2x2 max-pool kernels vs PyTorch's path, on a population's first layer (CNN-s: Conv2d(1, 8, 5)
then MaxPool2d(2) on 28x28 inputs, N models).

Columns, per call, in one run (plus CNN-s's second layer, whose input needs a gradient):

- ``train``: forward and backward (weight and bias gradients), one batch per model, as in a training step. PyTorch:
  grouped ``conv2d`` on channels-last input + ``max_pool2d`` + autograd. Native: ``ConvPool2x2``.
- ``eval``: forward only on one batch shared by all models, as in evaluation. PyTorch: the population's shared
  path (one im2col GEMM over the pool window and three maxima). Native: ``conv_pool_forward(shared=True)``.
- ``custom op`` (training rows): the same kernels called through the ``torch.library`` custom op
  ``torch.ops.zooscape.conv_pool2x2`` (what ``torch.compile`` and fx see) instead of the eager path's plain
  autograd.Function; the last column is the ratio, i.e. the eager cost of the custom-op dispatch.

Usage:
    python bench/native_convpool.py                  # N=64, batch 32 (train) and 128 (eval), 2 threads
    python bench/native_convpool.py --threads 1 --models 16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from zooscape.train import native
from zooscape.train.layers import _rows_times
from zooscape.train.memory import tune_allocator


def timeit(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def training_step(g: int, c: int, o: int, k: int, h: int, batch: int, input_grad: bool, gen: torch.Generator):
    """One training step of a population layer Conv2d(c, o, k) + MaxPool2d(2) of g models on h x h inputs, both
    ways: PyTorch (grouped conv2d on channels-last input, max_pool2d, autograd) and the native kernels (eager path,
    and through the custom op). Returns ``(torch_step, native_step, op_step, weight, bias)``."""
    w = torch.randn(g, o, c, k, k, generator=gen, requires_grad=True)
    b = torch.randn(g, o, generator=gen, requires_grad=True)
    w_flat, b_flat = w.detach().reshape(g * o, c, k, k).requires_grad_(), b.detach().reshape(-1).requires_grad_()
    x = torch.randn(batch, g * c, h, h, generator=gen)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    if input_grad:  # a later layer: channels-last input (as the population feeds it) that needs a gradient
        x = x_cl.requires_grad_(True)
    hp = (h - k + 1) // 2
    grad = torch.randn(batch, g * o, hp, hp, generator=gen).contiguous(memory_format=torch.channels_last)

    def torch_step():
        F.max_pool2d(F.conv2d(x_cl, w_flat, b_flat, groups=g), 2).backward(grad)

    def native_step():
        native.ConvPool2x2.apply(x, w, b, False).backward(grad)

    def op_step():
        torch.ops.zooscape.conv_pool2x2.default(x, w, b, False, False)[0].backward(grad)

    return torch_step, native_step, op_step, w, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    if not native.available():
        raise SystemExit(f"native kernels unavailable: {native.why_not()}")
    g, o, c, k, h = args.models, 8, 1, 5, 28
    gen = torch.Generator().manual_seed(0)
    # CNN-s's first layer (input: data) and second layer (Conv2d(8, 6, 5) on 12x12, input needs a gradient)
    torch_train, native_train, op_train, w, b = training_step(g, c, o, k, h, args.batch, False, gen)
    c2, o2, h2in = 8, 6, 12
    torch_train2, native_train2, op_train2, _, _ = training_step(g, c2, o2, k, h2in, args.batch, True, gen)

    xs = torch.randn(args.eval_batch, c, h, h, generator=gen)
    wt = w.detach().reshape(g * o, -1).t()
    h2 = (h - k + 1) // 2

    @torch.no_grad()
    def torch_eval():  # the population's PyTorch shared path (PopConv2d._forward_shared_pooled)
        cols = F.unfold(xs, (k, k))
        out = _rows_times(cols.view(xs.shape[0], c * k * k, h2, 2, h2, 2).permute(3, 5, 0, 2, 4, 1), wt,
                          b.detach().reshape(-1)).view(4, -1, g * o)
        pooled = torch.maximum(out[0], out[1])
        torch.maximum(pooled, out[2], out=pooled)
        torch.maximum(pooled, out[3], out=pooled)

    @torch.no_grad()
    def native_eval():
        native.conv_pool_forward(xs, w, b, shared=True, indices=False)

    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, N={g} models; first layer Conv2d({c}, "
          f"{o}, {k}) + MaxPool2d(2) on {h}x{h}, second layer Conv2d({c2}, {o2}, {k}) + MaxPool2d(2) on "
          f"{h2in}x{h2in} (CNN-s); median of {args.repeats} calls")
    print("| case | PyTorch ms | native ms | speed-up | custom op ms | op / native |")
    print("|---|---|---|---|---|---|")
    for name, slow, fast, op in (
            (f"first layer, train (fwd+bwd), batch {args.batch}", torch_train, native_train, op_train),
            (f"first layer, eval (shared fwd), batch {args.eval_batch}", torch_eval, native_eval, None),
            (f"second layer, train (fwd+bwd incl. input grad), batch {args.batch}", torch_train2, native_train2,
             op_train2)):
        ts, tf, to = [], [], []
        for _ in range(3):  # interleaved
            ts.append(timeit(slow, args.repeats // 3 + 1))
            tf.append(timeit(fast, args.repeats // 3 + 1))
            if op is not None:
                to.append(timeit(op, args.repeats // 3 + 1))
        s, f = statistics.median(ts), statistics.median(tf)
        op_ms = f"{statistics.median(to):.2f} | {statistics.median(to) / f:.3f}" if to else "- | -"
        print(f"| {name} | {s:.2f} | {f:.2f} | {s / f:.2f}x | {op_ms} |", flush=True)


if __name__ == "__main__":
    main()
