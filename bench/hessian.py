"""Benchmark: Hessian top eigenvalue and trace, zooscape.landscape vs the PyHessian approach, at equal accuracy.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python bench/hessian.py --quick     # seconds; a smoke run
    OMP_NUM_THREADS=1 .venv/bin/python bench/hessian.py             # the full table (run on a quiet machine)

Reference ("PyHessian approach", re-implemented here, not imported): the model in eval mode, one cached
``create_graph=True`` gradient, then one double-backward Hessian-vector product per vector; power iteration
(max 100 iterations, tol 1e-3 on the relative change) for the top eigenvalue and Hutchinson with one Rademacher
probe at a time for the trace.

Ours: :func:`zooscape.landscape.hessian_operator` (torch.func reverse-over-reverse HVPs, vmapped over blocks of
probes) with Lanczos for the eigenvalue and block Hutchinson for the trace.

Equal accuracy: the true top eigenvalue comes from a long float64 Lanczos run; Lanczos gets the fewest steps
(from a fixed ladder) whose error is at most the power iteration's error, both measured against that value.
For the trace both use the same number of probes, so their estimates have the same variance; the table shows
both estimates with their standard errors. Models are briefly trained on sklearn digits first.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zooscape.data import load_dataset
from zooscape.landscape import hessian_operator, hutchinson_trace, lanczos_eigenvalues, power_iteration
from zooscape.models import create_model

LANCZOS_LADDER = (4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96)


class DoubleBackwardHessian:
    """The PyHessian approach: cached gradient graph, one double-backward HVP per vector."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        model.eval()
        self.params = [p for p in model.parameters() if p.requires_grad]
        loss = F.cross_entropy(model(x), y)
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.num_matvecs = 0

    def hvp(self, v: list[Tensor]) -> list[Tensor]:
        self.num_matvecs += 1
        return list(torch.autograd.grad(self.grads, self.params, grad_outputs=v, retain_graph=True))


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def _normalize(v: list[Tensor]) -> list[Tensor]:
    n = math.sqrt(_dot(v, v))
    return [t / (n + 1e-6) for t in v]


def reference_top_eigenvalue(h: DoubleBackwardHessian, gen: torch.Generator, max_iter: int = 100,
                             tol: float = 1e-3) -> float:
    """PyHessian-style power iteration for the top (largest-magnitude) eigenvalue."""
    v = _normalize([torch.randn(p.shape, generator=gen) for p in h.params])
    eig = None
    for _ in range(max_iter):
        hv = h.hvp(v)
        new = _dot(hv, v)
        v = _normalize(hv)
        if eig is not None and abs(eig - new) / (abs(eig) + 1e-6) < tol:
            return new
        eig = new
    return eig


def reference_trace(h: DoubleBackwardHessian, gen: torch.Generator, num_probes: int) -> tuple[float, float]:
    """Hutchinson with one Rademacher probe (one double-backward HVP) at a time."""
    samples = []
    for _ in range(num_probes):
        v = [torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1 for p in h.params]
        samples.append(_dot(h.hvp(v), v))
    s = torch.tensor(samples, dtype=torch.float64)
    return float(s.mean()), float(s.std() / math.sqrt(len(s)))


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()


def bench_model(name: str, model: nn.Module, x: Tensor, y: Tensor, num_probes: int, block: int,
                repeats: int) -> list[tuple]:
    rows = []
    params = sum(p.numel() for p in model.parameters())
    truth = float(lanczos_eigenvalues(hessian_operator(model, F.cross_entropy, x, y, dtype=torch.float64),
                                      which="LM", num_steps=min(150, params)).eigenvalues[0])

    # top eigenvalue: reference power iteration
    def ref_eig():
        h = DoubleBackwardHessian(model, x, y)
        return reference_top_eigenvalue(h, torch.Generator().manual_seed(0)), h.num_matvecs

    t_ref, (eig_ref, mv_ref) = timed(ref_eig, repeats)
    err_ref = abs(eig_ref - truth) / abs(truth)
    rows.append((name, params, "top eig", "double-backward power", mv_ref, t_ref, eig_ref, err_ref, 1.0))

    # ours: the fewest Lanczos steps reaching the same accuracy (search untimed), then timed
    op = hessian_operator(model, F.cross_entropy, x, y)
    steps = LANCZOS_LADDER[-1]
    for s in LANCZOS_LADDER:
        val = float(lanczos_eigenvalues(op, which="LM", num_steps=s).eigenvalues[0])
        if abs(val - truth) / abs(truth) <= max(err_ref, 1e-6):
            steps = s
            break

    def ours_eig():
        o = hessian_operator(model, F.cross_entropy, x, y)
        return lanczos_eigenvalues(o, which="LM", num_steps=steps)

    t_ours, res = timed(ours_eig, repeats)
    eig_ours = float(res.eigenvalues[0])
    rows.append((name, params, "top eig", f"ours lanczos ({steps} steps)", res.num_matvecs, t_ours, eig_ours,
                 abs(eig_ours - truth) / abs(truth), t_ref / t_ours))

    def ours_power():
        o = hessian_operator(model, F.cross_entropy, x, y)
        return power_iteration(o, max_iter=100, tol=1e-3)

    t_pw, pw = timed(ours_power, repeats)
    rows.append((name, params, "top eig", "ours power", pw.num_matvecs, t_pw, float(pw.eigenvalues[0]),
                 abs(float(pw.eigenvalues[0]) - truth) / abs(truth), t_ref / t_pw))

    # trace: equal number of probes
    def ref_tr():
        h = DoubleBackwardHessian(model, x, y)
        return reference_trace(h, torch.Generator().manual_seed(1), num_probes)

    t_rt, (tr_ref, se_ref) = timed(ref_tr, repeats)
    rows.append((name, params, "trace", "double-backward hutchinson", num_probes, t_rt, tr_ref, se_ref, 1.0))

    def ours_tr():
        o = hessian_operator(model, F.cross_entropy, x, y)
        return hutchinson_trace(o, num_probes=num_probes, block_size=block, generator=1)

    t_ot, tr = timed(ours_tr, repeats)
    rows.append((name, params, "trace", f"ours hutchinson (blocks of {block})", tr.num_matvecs, t_ot, tr.estimate,
                 tr.std_error, t_rt / t_ot))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, few probes, one repeat (smoke run)")
    args = parser.parse_args()
    quick = args.quick
    batch = 256 if quick else 1024
    num_probes = 20 if quick else 100
    block = 10 if quick else 25
    repeats = 2 if quick else 5
    steps = 100 if quick else 600

    flat = load_dataset("digits", seed=0)
    image = load_dataset("digits", seed=0, resize=28)
    models = [
        ("mlp-64x2-bn", create_model("mlp", input_size=64, width=64, depth=2, norm="bn", seed=0),
         flat.train_x, flat.train_y),
        ("cnn_s-28x28", create_model("cnn_s", input_size=28, seed=0), image.train_x, image.train_y),
    ]
    if not quick:
        models.append(("mlp-256x2", create_model("mlp", input_size=64, width=256, depth=2, seed=0),
                       flat.train_x, flat.train_y))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}, probes {num_probes}, "
          f"repeats {repeats} (best time)")
    header = ("model", "params", "metric", "method", "HVPs", "time s", "value", "rel.err | s.e.", "speed-up")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for name, model, x, y in models:
        train(model, x, y, steps, seed=0)
        xb, yb = x[:batch], y[:batch]
        for r in bench_model(name, model, xb, yb, num_probes, block, repeats):
            print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]:.5g} | {r[7]:.2e} | "
                  f"{r[8]:.2f}x")


if __name__ == "__main__":
    main()
