"""Engines: the same zoo on the local and the Ray engine, Ray's overheads, and the scaling model of docs/scaling.md.

One run measures, on this machine:

1. ``zoo``: one small MLP zoo trained by ``train_zoo`` with the local engine (1 and 2 worker processes) and with
   the Ray engine on a local Ray instance (2 CPUs; cold = including ``ray.init`` and worker start-up, warm = a
   second zoo on the running instance); results are checked equal and the overhead ratios printed.
2. ``ray``: the cost of an empty Ray task and the driver's ingest rate through the whole event path (tasks emit
   the catalog rows of 64-model chunks, the driver commits them with ``Catalog.record``), next to the bare
   ``Catalog.record`` rate (optionally on a catalog pre-filled with ``--prefill`` metric rows).
3. ``cost``: per-model cost of CNN-s in the Model Zoos setting (28x28, batch 10, Adam, population of 64) and the
   FLOPs of the phase-grid ResNet-18 (torchvision stem, 32x32) per width.

and then feeds the measured rates into a discrete-event simulation of a cluster (``simulate``): W workers take
population chunks in submission order, every chunk sends one catalog event per epoch to the single driver,
which commits events one after another. It prints makespan, the work bound, driver utilisation and the
largest catalog lag for the 50,000-model CNN zoo and the 192-model ResNet-18 phase grid.

The CPU is shared with other work: timings are indicative (they are printed with the load average).

Usage:
    python bench/engines.py --quick           # smoke run (~1-2 minutes)
    python bench/engines.py                   # all measurements and the scaling tables
    python bench/engines.py --skip zoo cost   # only some parts
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ZOO_SPEC = """
[zoo]
name = "bench_engines"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 32
depth = 2

[training]
epochs = {epochs}
batch_size = 32
optimizer = "adam"
lr = 0.001

[checkpoints]
epochs = "all"

[grid]
"training.lr" = [0.001, 0.003]
"model.width" = [32, 48]
"training.seed" = {seeds}
"""

N_METRICS = 8  # train/val/test loss+acc, lr, epoch_time_s


def load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "load average n/a"


# ----------------------------------------------------------------------------------------------- 1. zoo


def bench_zoo(quick: bool, tmp: Path) -> dict:
    """Train the same zoo with the local engine and the Ray engine; check equal results; time each."""
    import ray

    from zooscape.zoo import LocalEngine, train_zoo
    from zooscape.zoo.engines.ray_engine import RayEngine

    epochs, seeds, chunk = (3, [0, 1], 2) if quick else (5, list(range(8)), 8)
    spec = tmp / "zoo.toml"
    spec.write_text(ZOO_SPEC.format(epochs=epochs, seeds=seeds))
    times, zoos = {}, {}

    def run(name, **kw):
        t = time.perf_counter()
        zoos[name] = train_zoo(spec, tmp / name, device="cpu", progress=False, chunk_size=chunk, **kw)
        times[name] = time.perf_counter() - t

    run("local_1")
    with LocalEngine(workers=2) as local:
        run("local_2_cold", engine=local)
        run("local_2", engine=local)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    t_init = time.perf_counter() - t0
    try:
        with RayEngine() as engine:
            run("ray_cold", engine=engine)
            times["ray_cold"] += t_init
            run("ray_warm", engine=engine)
    finally:
        ray.shutdown()
    ref = zoos["local_1"].metrics().query("name != 'epoch_time_s'").sort_values(["model_id", "epoch", "name"])
    worst = 0.0
    for name in ("local_2_cold", "local_2", "ray_cold", "ray_warm"):
        got = zoos[name].metrics().query("name != 'epoch_time_s'").sort_values(["model_id", "epoch", "name"])
        assert got[["model_id", "epoch", "name"]].values.tolist() == ref[["model_id", "epoch", "name"]].values.tolist()
        diff = (got["value"].to_numpy() - ref["value"].to_numpy())
        worst = max(worst, float(abs(diff[~(ref["value"].isna().to_numpy())]).max()))
    n_models = len(zoos["local_1"].model_ids)
    me = n_models * epochs
    print(f"\n## 1. same zoo, local vs Ray ({n_models} MLPs x {epochs} epochs = {me} model-epochs, chunks of "
          f"{chunk}; {load()})")
    print("| engine | wall s | model-epochs/s | vs local (1 process) | vs local (2 processes, warm) |")
    print("|---|---|---|---|---|")
    labels = {"local_1": "local, in-process", "local_2_cold": "local, 2 worker processes, cold (process start)",
              "local_2": "local, 2 worker processes, warm",
              "ray_cold": f"Ray, 2 CPUs, cold (ray.init {t_init:.1f} s + worker start)",
              "ray_warm": "Ray, 2 CPUs, warm"}
    for name, label in labels.items():
        t = times[name]
        print(f"| {label} | {t:.2f} | {me / t:.1f} | {t / times['local_1']:.2f}x | {t / times['local_2']:.2f}x |")
    print(f"overhead ratio Ray / local with 2 worker processes: warm {times['ray_warm'] / times['local_2']:.2f}, "
          f"cold {times['ray_cold'] / times['local_2_cold']:.2f}")
    print(f"largest |difference| of any metric vs local (1 process): {worst:.2e}")
    return {"times": times, "model_epochs": me, "max_diff": worst}


# ----------------------------------------------------------------------------------------------- 2. ray


def _noop(task: int) -> int:
    return task


def _emit_rows(task: tuple[int, int, int]) -> int:
    """Emit ``epochs`` synthetic catalog events of a ``models``-model chunk (as a training task would)."""
    from zooscape.zoo.engines import emit

    chunk, models, epochs = task
    ids = [_mid(f"c{chunk}/", i) for i in range(models)]
    names = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "epoch_time_s")
    for e in range(epochs):
        metrics = [(m, e, n, 0.5) for m in ids for n in names]
        ckpts = [(m, e, k, f"checkpoints/c{chunk:05d}/e{e:06d}.{k}.safetensors") for m in ids for k in ("w", "o")]
        emit({"metrics": metrics, "checkpoints": ckpts, "model_epochs": models})
    return chunk


def _mid(prefix: str, i: int) -> str:
    return hashlib.sha256(f"{prefix}{i}".encode()).hexdigest()[:12]


def _catalog(path: Path, prefill: int):
    from zooscape.zoo.catalog import Catalog

    cat = Catalog(path, create=True)
    # model ids are hashes: spread the pre-filled models over the key space like a real zoo's
    rows = [(_mid("p", i // 400), (i // 8) % 50, f"m{i % 8}", 0.1) for i in range(prefill)]
    for k in range(0, len(rows), 200_000):
        cat.record(metrics=rows[k : k + 200_000])
    return cat


def bench_ray(quick: bool, tmp: Path, prefill: int) -> dict:
    """Empty-task cost and the driver's event ingest rate (Ray queue + Catalog.record), plus bare Catalog.record."""
    import ray

    from zooscape.zoo.engines.ray_engine import RayEngine

    out = {}
    # bare catalog writes: one transaction per chunk-epoch event (64 models x (8 metrics + 2 checkpoint rows))
    for size in (0, prefill) if prefill else (0,):
        cat = _catalog(tmp / f"bare_{size}.sqlite", size)
        n_events = 20 if quick else 100
        events = []
        for c in range(n_events):
            ids = [_mid(f"x{c}/", i) for i in range(64)]
            events.append(([(m, 1, f"m{j}", 0.5) for m in ids for j in range(N_METRICS)],
                           [(m, 1, k, "f") for m in ids for k in ("w", "o")]))
        t = time.perf_counter()
        for metrics, ckpts in events:
            cat.record(metrics=metrics, checkpoints=ckpts)
        dt = time.perf_counter() - t
        cat.close()
        rows = n_events * 64 * (N_METRICS + 2)
        out[f"record_{size}"] = {"s_per_event": dt / n_events, "rows_per_s": rows / dt,
                                 "model_epochs_per_s": n_events * 64 / dt}
    # through Ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    try:
        with RayEngine(threads_per_task=0, poll_interval=0.02) as engine:
            list(engine.map(_noop, range(4)))  # start workers
            n = 50 if quick else 400
            t = time.perf_counter()
            list(engine.map(_noop, range(n), ordered=False))
            out["task_s"] = (time.perf_counter() - t) / n
            cat = _catalog(tmp / "ray.sqlite", 0)
            n_chunks, epochs = (8, 5) if quick else (40, 10)

            def on_event(ev):
                cat.record(metrics=ev["metrics"], checkpoints=ev["checkpoints"])

            t = time.perf_counter()
            list(engine.map(_emit_rows, [(c, 64, epochs) for c in range(n_chunks)], on_event=on_event,
                            ordered=False))
            dt = time.perf_counter() - t
            cat.close()
            out["pipeline"] = {"model_epochs_per_s": n_chunks * epochs * 64 / dt,
                               "events_per_s": n_chunks * epochs / dt}
    finally:
        ray.shutdown()
    print(f"\n## 2. Ray overheads and the driver's catalog rate ({load()})")
    print(f"- empty Ray task (2 CPUs, warm workers, completion-order results): {1e3 * out['task_s']:.2f} ms per task")
    for key, r in out.items():
        if key.startswith("record_"):
            print(f"- Catalog.record of one 64-model chunk-epoch (512 metric + 128 checkpoint rows, catalog pre-filled "
                  f"with {int(key[7:]):,} rows): {1e3 * r['s_per_event']:.1f} ms = {r['rows_per_s']:,.0f} rows/s = "
                  f"{r['model_epochs_per_s']:,.0f} model-epochs/s")
    p = out["pipeline"]
    print(f"- whole event path (Ray tasks emit 64-model chunk-epochs, driver commits them): "
          f"{p['model_epochs_per_s']:,.0f} model-epochs/s ({p['events_per_s']:.1f} events/s)")
    return out


# ----------------------------------------------------------------------------------------------- 3. cost


def bench_cost(quick: bool) -> dict:
    """CNN-s per-sample training cost (Model Zoos setting) and ResNet-18 FLOPs per width."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zooscape.data import load_dataset
    from zooscape.models import create_model
    from zooscape.train import Member, TrainConfig, train_population

    torch.set_num_threads(1)
    n_pop = 16 if quick else 64
    cfg = TrainConfig(epochs=1, batch_size=10, optimizer="adam", lr=1e-3)
    mk = dict(in_channels=1, num_classes=10, input_size=(28, 28))
    warm = load_dataset("digits", resize=28, train_fraction=0.05)
    train_population([create_model("cnn_s", seed=99, **mk)], warm, cfg, [Member(seed=99)], device="cpu")
    fit = []
    for frac in (0.1, 0.3) if quick else (0.2, 0.6):
        data = load_dataset("digits", resize=28, train_fraction=frac)
        models = [create_model("cnn_s", seed=s, **mk) for s in range(n_pop)]
        members = [Member(seed=s) for s in range(n_pop)]
        t = time.perf_counter()
        train_population(models, data, cfg, members, device="cpu")
        fit.append((len(data.train_y), (time.perf_counter() - t) / n_pop))
    n_eval = len(data.val_y) + len(data.test_y)
    (n1, t1), (n2, t2) = fit
    per_train = (t2 - t1) / (n2 - n1)  # seconds per training sample and model (one epoch)
    per_eval = max(t1 - per_train * n1, 0.0) / n_eval  # the evaluation of train/val/test splits, per sample
    out = {"cnn_s": {"population": n_pop, "fit": fit, "n_eval": n_eval, "s_per_train_sample": per_train,
                     "s_per_eval_sample": per_eval}}
    mlp_data = load_dataset("digits")
    mlps = [create_model("mlp", seed=s, input_size=64, num_classes=10, depth=2, width=32) for s in range(64)]
    t = time.perf_counter()
    train_population(mlps, mlp_data, TrainConfig(epochs=1, batch_size=32, optimizer="adam"),
                     [Member(seed=s) for s in range(64)], device="cpu")
    out["mlp"] = {"s_per_model_epoch": (time.perf_counter() - t) / 64}
    flops = {}
    for w in (2, 4, 8, 16, 32, 64, 128, 256):
        with torch.device("meta"):
            m = create_model("resnet18", num_classes=10, in_channels=3, input_size=(32, 32), width=w, stem="imagenet")
        x = torch.randn(2, 3, 32, 32, device="meta")
        with FlopCounterMode(display=False) as fc:
            m(x).sum().backward()
        n_params = sum(p.numel() for p in m.parameters())
        flops[w] = {"train_flops_per_sample": fc.get_total_flops() / 2, "params": n_params}
    out["resnet18"] = flops
    print(f"\n## 3. per-model cost ({load()})")
    print(f"- CNN-s 28x28, batch 10, Adam, population of {n_pop}, 1 thread, one epoch: "
          + ", ".join(f"{t:.3f} s per model-epoch with {n} training samples" for n, t in fit)
          + f" (+ evaluation of {n_eval} val/test samples and the training split) -> {1e3 * per_train:.3f} ms per "
          f"training sample, {1e3 * per_eval:.3f} ms per evaluated sample")
    print(f"- MLP 64-32-32-10 on digits, batch 32, Adam, population of 64, 1 thread: "
          f"{1e3 * out['mlp']['s_per_model_epoch']:.2f} ms per model-epoch")
    print("- ResNet-18 (torchvision stem, 32x32 input), training FLOPs per sample (forward + backward):")
    print("| width | parameters | GFLOP per sample |")
    print("|---|---|---|")
    for w, r in flops.items():
        print(f"| {w} | {r['params']:,} | {r['train_flops_per_sample'] / 1e9:.4f} |")
    return out


# ----------------------------------------------------------------------------------------------- simulation


@dataclass
class Chunk:
    """One population chunk: ``models`` models, ``epochs`` epochs of ``epoch_s`` seconds each."""

    models: int
    epochs: int
    epoch_s: float


def simulate(chunks: list[Chunk], workers: int, task_overhead_s: float, driver_s: float) -> dict:
    """Discrete-event simulation of a zoo run on ``workers`` task slots and one driver.

    Slots take chunks in list order (Ray runs queued tasks first-in first-out); a chunk costs
    ``task_overhead_s`` (scheduling, data load, model build) and then ``epochs * epoch_s``. After its epoch-0
    evaluation and after every epoch it sends one event; the driver commits events one at a time, first come
    first served, ``driver_s`` seconds per model-epoch in the event.

    Args:
        chunks: population chunks in submission order.
        workers: task slots (CPU cores, or GPUs).
        task_overhead_s: fixed cost per task.
        driver_s: driver seconds per model-epoch (Ray transport + catalog transaction).

    Returns:
        dict with makespan_s, work_bound_s (total work / workers), driver_busy (fraction of the makespan),
        max_lag_s (longest wait of an event for the driver).
    """
    free = [0.0] * workers
    heapq.heapify(free)
    arrivals: list[tuple[float, float]] = []
    end = work = 0.0
    for c in chunks:
        start = heapq.heappop(free) + task_overhead_s
        for e in range(c.epochs + 1):
            arrivals.append((start + e * c.epoch_s, c.models * driver_s))
        finish = start + c.epochs * c.epoch_s
        work += c.epochs * c.epoch_s + task_overhead_s
        end = max(end, finish)
        heapq.heappush(free, finish)
    arrivals.sort()
    t_driver = busy = lag = 0.0
    for t, service in arrivals:
        t_driver = max(t_driver, t) + service
        busy += service
        lag = max(lag, t_driver - t)
    makespan = max(end, t_driver)
    return {"makespan_s": makespan, "work_bound_s": work / workers, "driver_busy": busy / makespan, "max_lag_s": lag}


def uniform_zoo(n_models: int, epochs: int, chunk: int, model_epoch_s: float) -> list[Chunk]:
    """A zoo of equally expensive models cut into chunks; on one core a chunk's epoch costs the sum of its models'
    (the population gains little for CNN-s at 28x28 on a CPU; see performance-baseline.md)."""
    sizes = [chunk] * (n_models // chunk) + ([n_models % chunk] if n_models % chunk else [])
    return [Chunk(m, epochs, m * model_epoch_s) for m in sizes]


def phase_grid(flops: dict, chunk: int, gpu_flops: float, step_floor_s: float, n_train: int = 50_000,
               epochs: int = 150) -> list[Chunk]:
    """The PTMZ ResNet-18 grid: widths x batch sizes x 3 seeds; ``chunk`` = seeds per task (1 or 3). A step of a
    chunk takes ``max(step_floor_s, chunk * batch * flops_per_sample / gpu_flops)``."""
    out = []
    for r in flops.values():
        for bs in (8, 16, 32, 64, 128, 256, 512, 1024):
            steps = math.ceil(n_train / bs)
            step = max(step_floor_s, chunk * bs * r["train_flops_per_sample"] / gpu_flops)
            out += [Chunk(chunk, epochs, steps * step)] * (3 // chunk)
    return out


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report_scaling(ray_out: dict | None, cost: dict | None, args: argparse.Namespace) -> None:
    """Print the simulated cluster runs of docs/scaling.md from the measured (or given) rates."""
    rng = random.Random(0)
    if ray_out is not None:
        # the whole event path (measured on an empty catalog) + the slow-down of Catalog.record on a big catalog
        big = ray_out.get(f"record_{args.prefill}", ray_out["record_0"])
        slower = max(0.0, big["s_per_event"] - ray_out["record_0"]["s_per_event"]) / 64
        driver_s = 1.0 / ray_out["pipeline"]["model_epochs_per_s"] + slower
        task_s = ray_out["task_s"]
    else:
        driver_s, task_s = 1.0 / args.driver_rate, 0.005
    per_train = cost["cnn_s"]["s_per_train_sample"] if cost else args.cnn_sample_s
    per_eval = cost["cnn_s"]["s_per_eval_sample"] if cost else args.cnn_sample_s / 3
    mlp_s = cost["mlp"]["s_per_model_epoch"] if cost else args.mlp_model_epoch_s
    overhead = task_s + args.task_setup_s
    print(f"\n## 4. simulated cluster runs (driver {1 / driver_s:,.0f} model-epochs/s = event path + big-catalog "
          f"slow-down, per-task overhead {overhead:.2f} s = empty Ray task + --task-setup-s)")
    cnn_me = per_train * 50_000 + per_eval * 20_000
    scenarios = [
        (f"50,000 CNN-s x 50 epochs, MNIST-sized data (50,000 train, 20,000 val+test): {cnn_me:.1f} core-s per "
         f"model-epoch (measured per sample, scaled)", cnn_me, (64, 512, 4096, 32768)),
        (f"50,000 MLPs x 50 epochs on digits: {1e3 * mlp_s:.2f} core-ms per model-epoch (measured, population of 64)",
         mlp_s, (1, 16, 64, 256)),
    ]
    for title, me_s, cores_list in scenarios:
        print(f"\n### {title}; {50_000 * 50 * me_s / 3600:,.1f} core-hours")
        print(_row(["cores", "chunk", "tasks", "makespan h", "work bound h", "driver busy", "max catalog lag s"]))
        print(_row(["---"] * 7))
        for cores in cores_list:
            # 64 (the spec default), one wave of tasks, and ~4 waves (the rule of docs/scaling.md)
            options = {64, min(64, max(1, 50_000 // cores)), min(64, max(1, 50_000 // (4 * cores)))}
            for chunk in sorted(options, reverse=True):
                chunks = uniform_zoo(50_000, 50, chunk, me_s)
                rng.shuffle(chunks)
                r = simulate(chunks, cores, overhead, driver_s)
                print(_row([cores, chunk, len(chunks), f"{r['makespan_s'] / 3600:.2f}",
                            f"{r['work_bound_s'] / 3600:.2f}", f"{100 * r['driver_busy']:.1f}%",
                            f"{r['max_lag_s']:.1f}"]))
    if cost is None:
        return
    flops = cost["resnet18"]
    total = sum(3 * 8 * 150 * 50_000 * r["train_flops_per_sample"] for r in flops.values())
    print(f"\n### ResNet-18 phase grid (8 widths x 8 batch sizes x 3 seeds, 150 epochs on 50,000 samples): "
          f"{total / 1e18:.2f} EFLOP of training; GPU model: {args.gpu_tflops:g} TFLOP/s sustained, "
          f"{1e3 * args.step_floor_s:g} ms minimum per step (assumptions, not measured here)")
    print(_row(["GPUs", "seeds per task", "order", "makespan h", "work bound h", "longest task h", "driver busy"]))
    print(_row(["---"] * 7))
    for gpus in (1, 8, 16, 32, 64):
        for chunk in (3, 1):
            for order in ("random", "longest first"):
                if gpus == 1 and (chunk == 1 or order != "random"):
                    continue
                chunks = phase_grid(flops, chunk, args.gpu_tflops * 1e12, args.step_floor_s)
                if order == "random":
                    rng.shuffle(chunks)
                else:
                    chunks.sort(key=lambda c: -c.epochs * c.epoch_s)
                r = simulate(chunks, gpus, overhead, driver_s)
                longest = max(c.epochs * c.epoch_s for c in chunks)
                print(_row([gpus, chunk, order, f"{r['makespan_s'] / 3600:.2f}", f"{r['work_bound_s'] / 3600:.2f}",
                            f"{longest / 3600:.2f}", f"{100 * r['driver_busy']:.3f}%"]))
    # storage: every epoch checkpointed (weights + optimizer state of the same size per moment)
    cnn_bytes = 50_000 * 51 * 2_464 * 4 * 3  # weights + Adam's two moments
    grid_w = sum(24 * 151 * r["params"] * 4 for r in flops.values())  # weights only
    print(f"\n### storage with every epoch checkpointed: CNN-s zoo {cnn_bytes / 1e9:.0f} GB (weights + Adam) in "
          f"{math.ceil(50_000 / 64) * 51 * 2:,} shard files; ResNet-18 grid {grid_w / 1e12:.2f} TB of weights "
          f"(+ the same again for SGD momentum) in {64 * 151:,} weight shards")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--skip", nargs="*", default=[], choices=["zoo", "ray", "cost", "simulate"])
    ap.add_argument("--prefill", type=int, default=None,
                    help="metric rows already in the catalog for the Catalog.record rate (default 2,000,000; "
                         "0 with --quick)")
    ap.add_argument("--task-setup-s", type=float, default=2.0,
                    help="per-task set-up assumed in the simulation: data load, model build (default 2 s)")
    ap.add_argument("--gpu-tflops", type=float, default=40.0, help="sustained GPU TFLOP/s assumed for ResNet-18")
    ap.add_argument("--step-floor-s", type=float, default=0.004,
                    help="minimum seconds per ResNet-18 training step on a GPU (kernel launches)")
    ap.add_argument("--driver-rate", type=float, default=4_000, help="driver model-epochs/s if 'ray' is skipped")
    ap.add_argument("--cnn-sample-s", type=float, default=4e-4, help="CNN-s s per training sample if 'cost' is skipped")
    ap.add_argument("--mlp-model-epoch-s", type=float, default=0.0025,
                    help="MLP s per model-epoch if 'cost' is skipped")
    args = ap.parse_args()
    if args.prefill is None:
        args.prefill = 0 if args.quick else 2_000_000
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"# bench/engines.py{' --quick' if args.quick else ''}: {os.cpu_count()} CPUs, {load()}")
    tmp = Path(tempfile.mkdtemp(prefix="zooscape_bench_engines_"))
    try:
        if "zoo" not in args.skip:
            bench_zoo(args.quick, tmp)
        ray_out = None if "ray" in args.skip else bench_ray(args.quick, tmp, args.prefill)
        cost = None if "cost" in args.skip else bench_cost(args.quick)
        if "simulate" not in args.skip:
            report_scaling(ray_out, cost, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
