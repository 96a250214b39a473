"""Roofline of population training: what fraction of this CPU's matmul/conv peak a population reaches.

For the MLP and CNN-s populations of ``bench/population.py`` (digits, batch 32, Adam) at N models the script
measures, with one torch thread:

1. the core's single-thread peak: a large ``torch.mm`` (sgemm, ``--gemm-size``) and a large ``conv2d``
   (64 -> 64 channels, 3x3, 56x56, NCHW and channels-last; the faster counts) in GFLOP/s, each the best of
   several calls (what the core does when no one else runs on it);
2. the useful FLOPs of one training step of one model (``torch.utils.flop_counter.FlopCounterMode`` over a plain
   model's forward + backward: matmuls and convolutions only; Adam's ~15 elementwise FLOPs per parameter are
   listed beside it) and of one evaluation pass;
3. time per training step of the population (the trainer's own step loop, ``train_epoch``) and of plain torch one
   model at a time (an ``nn.Module`` + ``torch.optim.Adam`` loop, as ``train_sequential``), and time of one
   evaluation pass over the train/val/test splits, as the trainer runs after every epoch (the population's
   ``evaluate_population`` against a plain ``model(x)`` loop), each the median of ``--repeats`` interleaved runs;
4. the achieved GFLOP/s and fraction of peak of both, and the upper bound that those fractions put on the ratio;
5. a ``torch.profiler`` profile of one epoch of steps of each: the share of self time in GEMM/convolution
   (aten matmuls and convolutions, and the native conv + pool kernels), elementwise/loss, the optimiser, data
   (indexing, permutations) and everything else (Python, autograd engine, dispatch: wall time not inside any op).

Usage:
    python bench/roofline.py                 # MLP and CNN-s at N=64
    python bench/roofline.py --quick         # smoke run
    python bench/roofline.py --models mlp --models-n 64 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.train import Member, TrainConfig, evaluate_population, native
from zooscape.train.memory import tune_allocator
from zooscape.train.trainer import _Run, epoch_order

CASES = {  # the configurations of bench/population.py
    "mlp": dict(data=dict(name="digits"), model=dict(name="mlp", input_size=64, depth=2, width=32),
                train=dict(optimizer="adam", lr=1e-3, batch_size=32)),
    "cnn_s": dict(data=dict(name="digits", resize=28), model=dict(name="cnn_s", in_channels=1),
                  train=dict(optimizer="adam", lr=1e-3, batch_size=32)),
}


def _best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls (after a warm-up): a peak is what the core does when it is not shared."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def peak_gemm(n: int, repeats: int) -> float:
    """GFLOP/s of ``torch.mm`` on two ``[n, n]`` float32 matrices (2 n^3 FLOPs), best of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / _best_time(lambda: torch.mm(a, b), repeats) / 1e9


def peak_conv(repeats: int) -> dict[str, float]:
    """GFLOP/s of a large 3x3 ``conv2d`` (batch 8, 64 -> 64 channels, 56x56, padding 1), NCHW and channels-last,
    best of ``repeats``."""
    w = torch.randn(64, 64, 3, 3)
    x = torch.randn(8, 64, 56, 56)
    flops = 2 * 8 * 64 * 56 * 56 * 64 * 9
    out = {}
    for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xx, ww = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
        out[name] = flops / _best_time(lambda xx=xx, ww=ww: F.conv2d(xx, ww, padding=1), repeats) / 1e9
    return out


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(training-step FLOPs, forward FLOPs) of one plain model on the batch ``x`` (matmuls and convolutions)."""
    m = copy.deepcopy(model)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(m(x), y).backward()
    train = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(x)
    return train, fc.get_total_flops()


# ------------------------------------------------------------------------------------------------ instrumentation
_NATIVE = ("conv_pool_forward", "conv_pool_backward", "conv_pool_backward_full", "adam_step")


def _instrument_native() -> None:
    """Wrap the native kernels (ctypes calls, invisible to the profiler) in ``record_function`` ranges."""
    for name in _NATIVE:
        fn = getattr(native, name)
        if getattr(fn, "_roofline", False):
            continue

        def wrapped(*a, _fn=fn, _name=name, **k):
            with record_function(f"native::{_name}"):
                return _fn(*a, **k)

        wrapped._roofline = True  # type: ignore[attr-defined]
        functools.update_wrapper(wrapped, fn)
        setattr(native, name, wrapped)


GEMM = ("mm", "bmm", "addmm", "baddbmm", "convolution", "mkldnn_convolution", "convolution_backward",
        "_convolution", "conv2d", "native::conv_pool_forward", "native::conv_pool_backward",
        "native::conv_pool_backward_full", "linear", "matmul")
DATA = ("index", "randperm", "index_select", "stack", "take", "gather")


def _category(evt) -> str:
    name = evt.name.removeprefix("aten::")
    chain, p = [], evt.cpu_parent
    while p is not None:
        chain.append(p.name)
        p = p.cpu_parent
    if name == "native::adam_step" or any(c.startswith("Optimizer.") or c == "optimizer" for c in chain):
        return "optimizer"
    if name in GEMM:
        return "gemm/conv"
    if name in DATA or any(c == "data" for c in chain):
        return "data"
    return "elementwise/other ops"


def profile_shares(fn, top: int = 6) -> tuple[dict[str, float], list[tuple[str, float]], float, int]:
    """Fractions of the wall time of ``fn()`` spent in each category of ops (self time), and ``overhead`` (wall
    time inside no op: Python, autograd engine, dispatch); the ``top`` ops by self time with their fractions; and
    the seconds spent in GEMM/convolution ops; and the number of top-level ops called (ops not called by another
    op: what Python and the autograd engine dispatch)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        fn()
        wall = (time.perf_counter() - t) * 1e6
    cats: dict[str, float] = {}
    ops: dict[str, float] = {}
    n_ops = 0
    for evt in prof.events():
        if evt.name.startswith(("ProfilerStep", "autograd::engine", "Optimizer.", "optimizer", "data", "##")):
            continue  # ranges: their self time is Python or engine time
        top_level = evt.cpu_parent is None or not evt.cpu_parent.name.startswith(("aten::", "native::"))
        n_ops += evt.name.startswith(("aten::", "native::")) and top_level
        c = _category(evt)
        cats[c] = cats.get(c, 0.0) + evt.self_cpu_time_total
        ops[evt.name] = ops.get(evt.name, 0.0) + evt.self_cpu_time_total
    shares = {k: v / wall for k, v in cats.items()}
    shares["overhead (python, autograd, dispatch)"] = max(0.0, 1.0 - sum(shares.values()))
    return shares, sorted(((k, v / wall) for k, v in ops.items()), key=lambda kv: -kv[1])[:top], \
        cats.get("gemm/conv", 0.0) / 1e6, n_ops


# ------------------------------------------------------------------------------------------------ the two loops
class PlainTrainer:
    """One model trained the plain PyTorch way (``nn.Module`` + ``torch.optim.Adam``), as ``train_sequential``."""

    def __init__(self, model: torch.nn.Module, data, cfg: TrainConfig, seed: int):
        self.model = copy.deepcopy(model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        self.x, self.y, self.bs, self.seed = data.train_x, data.train_y, cfg.batch_size, seed
        self.steps = math.ceil(self.x.shape[0] / self.bs)
        self.epoch = 0

    def train_epoch(self) -> None:
        self.epoch += 1
        perm = epoch_order(self.x.shape[0], self.seed, self.epoch)
        for s in range(self.steps):
            with record_function("data"):
                idx = perm[s * self.bs:(s + 1) * self.bs]
                xb, yb = self.x[idx], self.y[idx]
            loss = F.cross_entropy(self.model(xb), yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            with record_function("optimizer"):
                self.opt.step()

    @torch.no_grad()
    def evaluate(self, splits) -> None:
        self.model.eval()
        for x, y in splits:
            for i in range(0, x.shape[0], 1024):
                out = self.model(x[i:i + 1024])
                float(F.cross_entropy(out, y[i:i + 1024], reduction="sum"))
                float((out.argmax(1) == y[i:i + 1024]).sum())
        self.model.train()


def run_case(name: str, n: int, repeats: int, baseline_models: int, peak: float) -> dict:
    case = CASES[name]
    dcfg = dict(case["data"])
    data = load_dataset(dcfg.pop("name"), **dcfg)
    cfg = TrainConfig(epochs=1000, **case["train"])
    mk = dict(case["model"])
    mname = mk.pop("name")
    models = [create_model(mname, seed=s, **mk) for s in range(n)]
    run = _Run(models, data, cfg, [Member(seed=s) for s in range(n)], torch.device("cpu"), None)
    run.pop.train()
    plain = [PlainTrainer(models[i], data, cfg, i) for i in range(baseline_models)]
    bs = cfg.batch_size
    f_step, f_fwd = step_flops(models[0], data.train_x[:bs], data.train_y[:bs])
    n_train = data.train_x.shape[0]
    splits = [(data.train_x, data.train_y), (data.val_x, data.val_y), (data.test_x, data.test_y)]
    n_eval = sum(x.shape[0] for x, _ in splits)  # the trainer evaluates all three splits after every epoch
    steps = run.steps
    f_epoch = f_step * n_train / bs  # one model's training epoch (the last batch is smaller)
    f_eval = f_fwd * n_eval / bs
    n_params = sum(p.numel() for p in models[0].parameters())

    state = {"epoch": 0}

    def pop_epoch():
        state["epoch"] += 1
        run.train_epoch(state["epoch"])

    def pop_eval():
        run.pop.eval()
        for x, y in splits:
            evaluate_population(run.pop, x, y, run.task, cfg.eval_batch_size)
        run.pop.train()

    def plain_epoch():
        for p in plain:
            p.train_epoch()

    def plain_eval():
        for p in plain:
            p.evaluate(splits)

    pop_epoch(), plain_epoch(), pop_eval(), plain_eval()  # warm-up (flat buffers, native checks, allocator)
    t = {k: [] for k in ("pop", "plain", "pop_eval", "plain_eval")}
    for _ in range(repeats):  # interleaved
        for key, fn in (("pop", pop_epoch), ("plain", plain_epoch), ("pop_eval", pop_eval),
                        ("plain_eval", plain_eval)):
            s = time.perf_counter()
            fn()
            t[key].append(time.perf_counter() - s)
    med = {k: statistics.median(v) for k, v in t.items()}
    per_model = {"pop": med["pop"] / n, "plain": med["plain"] / baseline_models,
                 "pop_eval": med["pop_eval"] / n, "plain_eval": med["plain_eval"] / baseline_models}
    gf = {"pop": f_epoch / per_model["pop"] / 1e9, "plain": f_epoch / per_model["plain"] / 1e9,
          "pop_eval": f_eval / per_model["pop_eval"] / 1e9, "plain_eval": f_eval / per_model["plain_eval"] / 1e9}
    shares_pop = profile_shares(pop_epoch)
    shares_plain = profile_shares(lambda: plain[0].train_epoch())
    return dict(model=name, n=n, steps=steps, f_step=f_step, f_fwd=f_fwd, f_epoch=f_epoch, f_eval=f_eval,
                params=n_params, per_model=per_model,
                gflops=gf, frac={k: v / peak for k, v in gf.items()}, shares_pop=shares_pop,
                shares_plain=shares_plain)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--models-n", type=int, default=64, help="population size N")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed runs; medians reported")
    ap.add_argument("--baseline-models", type=int, default=2, help="models trained one at a time")
    ap.add_argument("--gemm-size", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = ap.parse_args()
    if args.quick:
        args.models_n, args.repeats, args.baseline_models, args.gemm_size = 4, 1, 1, 256
    torch.set_num_threads(1)
    tune_allocator()
    _instrument_native()
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, native kernels "
          f"{native.available()}, load average {_load()}")
    gemm = peak_gemm(args.gemm_size, 4 * args.repeats)
    conv = peak_conv(2 * args.repeats)
    peak = max(gemm, *conv.values())
    print(f"peak: sgemm {args.gemm_size}^3 {gemm:.1f} GFLOP/s; conv2d 64->64 3x3 56x56 NCHW {conv['nchw']:.1f}, "
          f"channels-last {conv['channels_last']:.1f} GFLOP/s; roofline peak = {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for name in args.models:
        r = run_case(name, args.models_n, args.repeats, args.baseline_models, peak)
        rows.append(r)
        pm, gf, fr = r["per_model"], r["gflops"], r["frac"]
        print(f"\n{name} N={r['n']}: {r['params']} parameters, {r['f_step'] / 1e6:.3f} MFLOP per training step "
              f"(batch 32; Adam adds ~{15 * r['params'] / 1e6:.3f} MFLOP elementwise), {r['steps']} steps/epoch")
        for key, label in (("pop", "population, training"), ("plain", "plain torch, training"),
                           ("pop_eval", "population, evaluation"), ("plain_eval", "plain torch, evaluation")):
            print(f"  {label:25s} {1000 * pm[key]:8.3f} ms per model-epoch  {gf[key]:7.3f} GFLOP/s  "
                  f"{100 * fr[key]:6.2f}% of peak")
        at_peak = (r["f_epoch"] + r["f_eval"]) / peak / 1e9
        pop_all, plain_all = pm["pop"] + pm["pop_eval"], pm["plain"] + pm["plain_eval"]
        print(f"  speed-up: training x{pm['plain'] / pm['pop']:.2f}, evaluation "
              f"x{pm['plain_eval'] / pm['pop_eval']:.2f}, both x{plain_all / pop_all:.2f}; training + evaluation "
              f"at peak would take {1000 * at_peak:.3f} ms per model-epoch (the population takes "
              f"{1000 * pop_all:.3f} ms, {100 * at_peak / pop_all:.1f}% of peak): bound on the speed-up over plain "
              f"torch x{plain_all / at_peak:.0f}")
        for who, models in (("pop", r["n"]), ("plain", 1)):
            sh, top, gemm_s, n_ops = r[f"shares_{who}"]
            print(f"  profile ({'population' if who == 'pop' else 'plain torch'}, one epoch of training): " + ", ".join(
                f"{k} {100 * v:.0f}%" for k, v in sorted(sh.items(), key=lambda kv: -kv[1])))
            g = r["f_epoch"] * models / gemm_s / 1e9 if gemm_s > 0 else math.nan
            print(f"    {n_ops / r['steps']:.0f} top-level ops per step; the GEMM/conv ops alone: {g:.1f} GFLOP/s "
                  f"({100 * g / peak:.0f}% of peak); top ops: "
                  + ", ".join(f"{k} {100 * v:.0f}%" for k, v in top))
    print(f"\n# load average at the end {_load()}")


if __name__ == "__main__":
    main()
