"""Zoo-wide analyses vs a plain per-model (per-pair) loop over the same checkpoints (issue 20).

Usage:
    .venv/bin/python bench/analyses.py            # CKA of every seed pair of a 16-model CNN-s zoo (4 cells x 4 seeds)
    .venv/bin/python bench/analyses.py --quick    # the same on MLPs and digits
    .venv/bin/python bench/analyses.py --analysis hessian [--quick]   # Hessian top eigenvalue + trace + loss
    .venv/bin/python bench/analyses.py --analysis fisher [--quick]    # Fisher trace (sampled labels)
    .venv/bin/python bench/analyses.py --analysis lmc [--quick]     # `lmc pairs` vs a per-pair linear_path loop
    .venv/bin/python bench/analyses.py --analysis curve [--quick]   # evaluating trained curves: per cell vs per pair
    .venv/bin/python bench/analyses.py --analysis curve-train [--quick]   # training curves: per cell vs per pair
    .venv/bin/python bench/analyses.py --analysis curve-pairs [--quick]   # the whole `curve pairs` vs --per-pair

The plain loop is what a user writes with the public per-model functions: for every seed pair of every cell, load
both checkpoints (``zoo.load_model``) and compute ``landscape.cka`` of their ``layer_features``. ``zooscape metrics
run --metric cka`` (``studies.metrics.run_metrics``) plans one task per cell that computes each model's
representation once and then every pair. Both use the same samples; the script checks the values agree and prints
the wall-clock ratio.

For ``--analysis hessian`` / ``fisher`` the plain loop loads each model and calls ``landscape.hessian_operator``,
``top_eigenvalues``, ``trace`` and ``loss`` (or ``landscape.fisher_trace_estimate``) with the study's settings;
``metrics run`` computes populations of ``--chunk-size`` models per pass (``landscape.population``). Each side runs
in its own process (interleaved, twice), so that the printed peak RSS (``ru_maxrss``) is that side's own; the work
is timed inside the process (imports and torch.func's first-use imports excluded), and the values are checked to
agree.

The ``lmc``, ``curve``, ``curve-train`` and ``curve-pairs`` entries live in ``bench/analyses_pairs.py`` (see its
docstring).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
[zoo]
name = "analyses"
[dataset]
name = "{dataset}"
seed = 42
[model]
name = "{model}"
{model_args}
[training]
epochs = 1
batch_size = 64
optimizer = "adam"
lr = 0.001
[grid]
"training.lr" = [0.0005, 0.001, 0.002, 0.004]
"training.seed" = [0, 1, 2, 3]
"""


def plain_loop(zoo_dir: Path, params: dict) -> dict[tuple[str, str], float]:
    from zooscape import landscape as ls
    from zooscape.studies.cells import zoo_cells
    from zooscape.studies.metrics import _subset
    from zooscape.zoo import open_zoo

    out = {}
    with open_zoo(zoo_dir) as zoo:
        x, _ = _subset(zoo.data(zoo.model_ids[0]), params)
        for cell in zoo_cells(zoo):
            for a, b in itertools.combinations(cell.model_ids, 2):
                ma, mb = zoo.load_model(a, 1), zoo.load_model(b, 1)
                fa = ls.layer_features(ma, x, [""])[""]
                fb = ls.layer_features(mb, x, [""])[""]
                out[(a, b)] = float(ls.cka(fa, fb))
    return out


#: Settings of the Hessian / Fisher entries (small, to keep the bench short; the study's defaults are larger).
POP_SETTINGS = {"hessian": {"n_samples": 128, "num_steps": 10, "num_probes": 12, "block_size": 4},
                "fisher": {"n_samples": 128, "num_samples": 32, "batch_size": 128}}


def plain_model_loop(zoo_dir: Path, analysis: str, params: dict) -> dict[tuple[str, str], float]:
    """The per-model loop with the public per-model functions: one model at a time."""
    from zooscape import landscape as ls
    from zooscape.studies.metrics import _loss_fn, _subset
    from zooscape.zoo import open_zoo

    out = {}
    with open_zoo(zoo_dir) as zoo:
        data = zoo.data(zoo.model_ids[0])
        x, y = _subset(data, params)
        for mid in zoo.model_ids:
            model = zoo.load_model(mid, 1)
            if analysis == "hessian":
                op = ls.hessian_operator(model, _loss_fn(data), x, y)
                eig = ls.top_eigenvalues(op, 1, num_steps=params["num_steps"], seed=params["seed"])
                tr = ls.trace(op, method=params["trace_method"], num_matvecs=params["num_probes"],
                              block_size=params["block_size"], seed=params["seed"] + 1)
                out[(mid, "hessian_top_eigenvalue")] = float(eig.eigenvalues[0])
                out[(mid, "hessian_trace")] = tr.estimate
                out[(mid, "hessian_loss")] = float(op.loss())
            else:
                est = ls.fisher_trace_estimate(model, x, y, kind=params["kind"], num_samples=params["num_samples"],
                                               batch_size=params["batch_size"], seed=params["seed"])
                out[(mid, "fisher_trace")] = est.estimate
    return out


def _side(args: argparse.Namespace) -> None:
    """One timed side in this process: print a JSON line with seconds, peak RSS (MB) and the values."""
    import torch

    torch.set_num_threads(1)
    from zooscape.studies.metrics import metric_params, run_metrics

    overrides = {**POP_SETTINGS[args.analysis], "seed": args.seed}
    # torch.func imports modules lazily on its first use (seconds on a loaded machine): both sides pay it once per
    # process, outside the timed work
    torch.func.vjp(torch.func.grad(lambda p: (p * p).sum()), torch.ones(2))
    # both sides import the same zooscape modules before the clock starts: module imports are not the analysis
    # (they cost 0.1-0.2 s here because this machine sets PYTHONDONTWRITEBYTECODE, so nothing is cached)
    import zooscape.landscape.population
    import zooscape.landscape.population_fisher
    import zooscape.studies.jobs
    import zooscape.zoo.build
    import zooscape.zoo.engines.local
    import zooscape.zoo.reader  # noqa: F401
    t0 = time.perf_counter()
    if args.side == "loop":
        values = plain_model_loop(Path(args.zoo), args.analysis, metric_params(args.analysis, overrides))
    else:
        rows = run_metrics(args.zoo, args.analysis, params=overrides, device="cpu", chunk_size=args.chunk_size)
        values = {(r["model_id"], r["metric"]): r["value"] for r in rows}
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "values": [[k[0], k[1], v] for k, v in values.items()]}))


def population_bench(args: argparse.Namespace, zoo_dir: Path) -> None:
    """Hessian or Fisher: plain per-model loop vs ``metrics run`` (populations), each in its own process."""
    times: dict[str, list[float]] = {"loop": [], "zoo": []}
    rss: dict[str, list[float]] = {"loop": [], "zoo": []}
    values: dict[str, dict] = {}
    for rep in range(2):
        for side in ("loop", "zoo"):
            cmd = [sys.executable, __file__, "--analysis", args.analysis, "--side", side, "--zoo", str(zoo_dir),
                   "--seed", str(rep), "--chunk-size", str(args.chunk_size)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            times[side].append(result["seconds"])
            rss[side].append(result["rss_mb"])
            if rep == 0:
                values[side] = {(m, k): v for m, k, v in result["values"]}
    common = values["loop"].keys() & values["zoo"].keys()
    rel = max(abs(values["zoo"][k] - values["loop"][k]) / max(abs(values["loop"][k]), 1e-12) for k in common)
    best = {k: min(v) for k, v in times.items()}
    peak = {k: max(v) for k, v in rss.items()}
    what = "MLP 64-64-10 / digits" if args.quick else "CNN-s / MNIST-5k"
    settings = ", ".join(f"{k}={v}" for k, v in POP_SETTINGS[args.analysis].items())
    print(f"{args.analysis}: {what}, 16 models, {settings}, populations of {args.chunk_size}, 1 thread, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"plain per-model loop {best['loop']:.2f} s (peak RSS {peak['loop']:.0f} MB), metrics run "
          f"{best['zoo']:.2f} s (peak RSS {peak['zoo']:.0f} MB): {best['loop'] / best['zoo']:.2f}x, memory "
          f"{peak['zoo'] / peak['loop']:.2f}x (values agree to {rel:.1e} relative, {len(common)} values)")


def _chunk(text: str) -> int | str:
    return text if text == "auto" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="MLPs on digits")
    parser.add_argument("--n-samples", type=int, default=1024)
    parser.add_argument("--analysis",
                        choices=("cka", "hessian", "fisher", "lmc", "curve", "curve-train", "curve-pairs"),
                        default="cka",
                        help="which zoo-wide analysis to compare with its plain loop (default cka)")
    parser.add_argument("--chunk-size", type=_chunk, default="auto",
                        help="hessian/fisher: models per population (default auto: metrics run's default)")
    parser.add_argument("--repeats", type=int, default=2, help="lmc/curve: interleaved repeats (best is kept)")
    parser.add_argument("--methods", default="auto,loop",
                        help="lmc/curve: methods of the per-pair loop (auto = the default of linear_path / "
                             "evaluate_curve; vmap, loop, population)")
    parser.add_argument("--n-points", type=int, default=21, help="curve: evaluated points per curve")
    parser.add_argument("--curve-epochs", type=int, default=None,
                        help="curve-train, curve-pairs: epochs of curve training (default 10, the command's, with "
                             "--quick; 2 on CNN-s)")
    parser.add_argument("--side", choices=("loop", "zoo"), help=argparse.SUPPRESS)
    parser.add_argument("--zoo", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        _side(args)
        return
    if args.analysis in ("lmc", "curve", "curve-train", "curve-pairs"):
        os.environ["BENCH_CURVE_POINTS"] = str(args.n_points)  # read by the child processes
        epochs = args.curve_epochs if args.curve_epochs is not None else (10 if args.quick else 2)
        os.environ["BENCH_CURVE_EPOCHS"] = str(epochs)
        sys.path.insert(0, str(Path(__file__).parent))
        from analyses_pairs import pair_main

        pair_main(args)
        return
    import torch

    torch.set_num_threads(1)
    from zooscape.studies.metrics import metric_params, run_metrics
    from zooscape.zoo import train_zoo

    if args.quick:
        spec = SPEC.format(dataset="digits", model="mlp", model_args="width = 64\ndepth = 2")
    else:
        spec = SPEC.format(dataset="mnist5k", model="cnn_s", model_args="")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "spec.toml").write_text(spec)
        train_zoo(tmp / "spec.toml", tmp / "zoo", device="cpu", progress=False).close()
        if args.analysis != "cka":
            population_bench(args, tmp / "zoo")
            return
        params = metric_params("cka", {"n_samples": args.n_samples})
        times = {"loop": [], "zoo": []}
        for rep in range(2):
            t0 = time.perf_counter()
            ref = plain_loop(tmp / "zoo", params)
            times["loop"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rows = run_metrics(tmp / "zoo", "cka", params={"n_samples": args.n_samples, "data_seed": rep},
                               device="cpu") if rep else run_metrics(tmp / "zoo", "cka",
                                                                     params={"n_samples": args.n_samples},
                                                                     device="cpu")
            times["zoo"].append(time.perf_counter() - t0)
            if rep == 0:
                got = {(r["model_id"], r["other_id"]): r["value"] for r in rows}
                diff = max(abs(got[k] - v) for k, v in ref.items())
    load = os.getloadavg()[0]
    best = {k: min(v) for k, v in times.items()}
    what = "MLP 64-64-10 / digits" if args.quick else "CNN-s / MNIST-5k"
    print(f"CKA of every seed pair: {what}, 16 models in 4 cells ({len(ref)} pairs), {args.n_samples} samples, "
          f"1 thread, load average {load:.1f}")
    print(f"plain per-pair loop {best['loop']:.2f} s, metrics run {best['zoo']:.2f} s: "
          f"{best['loop'] / best['zoo']:.2f}x (values agree to {diff:.1e})")


if __name__ == "__main__":
    main()
