"""Zoo-wide analyses vs a plain per-model (per-pair) loop over the same checkpoints (issue 20).

Usage:
    .venv/bin/python bench/analyses.py            # CKA of every seed pair of a 16-model CNN-s zoo (4 cells x 4 seeds)
    .venv/bin/python bench/analyses.py --quick    # the same on MLPs and digits
    .venv/bin/python bench/analyses.py --analysis lmc     # `lmc pairs` vs a per-pair linear_path loop
    .venv/bin/python bench/analyses.py --analysis curve   # evaluating trained curves: per cell vs per pair

The plain loop is what a user writes with the public per-model functions: for every seed pair of every cell, load
both checkpoints (``zoo.load_model``) and compute ``landscape.cka`` of their ``layer_features``. ``zooscape metrics
run --metric cka`` (``studies.metrics.run_metrics``) plans one task per cell that computes each model's
representation once and then every pair. Both use the same samples; the script checks the values agree and prints
the wall-clock ratio.

``--analysis lmc``: ``zooscape lmc pairs`` (``studies.lmc_pairs.pair_barriers``: one task per cell, every path
point of the cell's pairs a member of one population) against the loop a user writes: for every seed pair, load
both checkpoints and call ``connect.linear_path`` (its default method, and ``method="loop"``, the per-alpha deep
copy that was the default for these networks before). ``--analysis curve``: trained curves of every seed pair
evaluated per cell (``connect.evaluate_curves``, what ``zooscape curve pairs`` runs) against a loop of
``connect.evaluate_curve`` per curve (default method, and ``method="loop"``); the curves are trained once
beforehand (curve training stays one pair at a time). Each side runs in its own process (interleaved, best of the
repeats) so that its peak RSS is its own; values are checked equal.
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


# ------------------------------------------------------------------------------------------- lmc and curves
LMC_POINTS = 11


def lmc_loop(zoo_dir: Path, method: str) -> dict[str, float]:
    """The plain per-pair loop: load both checkpoints, ``linear_path`` with its defaults (or ``method``)."""
    from zooscape.connect import linear_path
    from zooscape.studies.cells import zoo_cells
    from zooscape.zoo import open_zoo

    out = {}
    with open_zoo(zoo_dir) as zoo:
        data = zoo.data(zoo.model_ids[0])
        for cell in zoo_cells(zoo):
            for a, b in itertools.combinations(cell.model_ids, 2):
                ma, mb = zoo.load_model(a, 1), zoo.load_model(b, 1)
                path = linear_path(ma, mb, data, LMC_POINTS, method=method)
                out[f"{a}-{b}"] = path.barrier("test", "loss")
    return out


def lmc_study(zoo_dir: Path) -> dict[str, float]:
    """``zooscape lmc pairs`` (recomputing every pair)."""
    from zooscape.studies.lmc_pairs import pair_barriers

    rows = pair_barriers(zoo_dir, n_points=LMC_POINTS, device="cpu", force=True)
    return {f"{r['model_id']}-{r['other_id']}": r["barrier_loss_test_linear"] for r in rows}


def _curve_files(zoo_dir: Path, curves_dir: Path) -> None:
    """Train a short curve between every seed pair once (setup, not timed) and save them."""
    from zooscape.connect import Curve, CurveTrainConfig, train_curve
    from zooscape.connect.curve import save_curve
    from zooscape.studies.cells import zoo_cells
    from zooscape.zoo import open_zoo

    cfg = CurveTrainConfig(epochs=1, batch_size=128, lr=0.05, seed=0)
    curves_dir.mkdir(parents=True, exist_ok=True)
    with open_zoo(zoo_dir) as zoo:
        data = zoo.data(zoo.model_ids[0])
        for cell in zoo_cells(zoo):
            for a, b in itertools.combinations(cell.model_ids, 2):
                curve = Curve("bezier", zoo.load_model(a, 1), zoo.load_model(b, 1), 1)
                train_curve(curve, data, cfg)
                save_curve(curve, curves_dir / f"{cell.index}-{a}-{b}.safetensors")


def _load_curves(zoo_dir: Path, curves_dir: Path) -> tuple[dict[int, list[tuple[str, object]]], object]:
    from zooscape.connect.curve import load_curve
    from zooscape.zoo import open_zoo

    with open_zoo(zoo_dir) as zoo:
        data = zoo.data(zoo.model_ids[0])
        template = zoo.load_model(zoo.model_ids[0], 1)
    cells: dict[int, list[tuple[str, object]]] = {}
    for f in sorted(curves_dir.glob("*.safetensors")):
        cell, key = f.stem.split("-", 1)
        cells.setdefault(int(cell), []).append((key, load_curve(f, template)[0]))
    return cells, data


CURVE_POINTS = int(os.environ.get("BENCH_CURVE_POINTS", "21"))


def curve_loop(zoo_dir: Path, curves_dir: Path, method: str) -> dict[str, float]:
    """The plain per-curve loop: ``evaluate_curve`` of every trained curve."""
    from zooscape.connect import evaluate_curve

    cells, data = _load_curves(zoo_dir, curves_dir)
    return {key: evaluate_curve(curve, data, CURVE_POINTS, method=method).mc["test"]["loss"]
            for items in cells.values() for key, curve in items}


def curve_study(zoo_dir: Path, curves_dir: Path) -> dict[str, float]:
    """All curves of a cell evaluated together (``evaluate_curves``, as ``zooscape curve pairs`` does)."""
    from zooscape.connect.curve_eval import evaluate_curves

    cells, data = _load_curves(zoo_dir, curves_dir)
    out = {}
    for items in cells.values():
        for (key, _), ev in zip(items, evaluate_curves([c for _, c in items], data, CURVE_POINTS)):
            out[key] = ev.mc["test"]["loss"]
    return out


def _child(which: str, zoo_dir: Path, extra: Path) -> None:
    """Run one side in this (fresh) process; print its time, peak RSS and values as JSON."""
    import torch

    torch.set_num_threads(1)
    import zooscape.align.lmc  # noqa: F401  (imports are not timed: they are the same for any zoo size)
    import zooscape.connect  # noqa: F401
    import zooscape.studies.curves  # noqa: F401
    import zooscape.studies.lmc_pairs  # noqa: F401
    import zooscape.zoo.engines  # noqa: F401

    t0 = time.perf_counter()
    if which == "lmc-study":
        values = lmc_study(zoo_dir)
    elif which.startswith("lmc-loop"):
        values = lmc_loop(zoo_dir, which.split(":")[1])
    elif which == "curve-study":
        values = curve_study(zoo_dir, extra)
    else:
        values = curve_loop(zoo_dir, extra, which.split(":")[1])
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    print(json.dumps({"seconds": seconds, "rss_mib": rss, "values": values}))


def _run_child(which: str, zoo_dir: Path, extra: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--child", which, str(zoo_dir), str(extra)], env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pair_analysis(analysis: str, zoo_dir: Path, tmp: Path, repeats: int, what: str,
                  methods: tuple[str, ...] = ("auto", "loop")) -> None:
    """Interleave study and loops in fresh processes; print wall-clock ratios and peak RSS."""
    curves_dir = tmp / "bench_curves"
    if analysis == "curve":
        _curve_files(zoo_dir, curves_dir)
    sides = [f"{analysis}-study", *(f"{analysis}-loop:{m}" for m in methods)]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(repeats):
        for side in sides:
            runs[side].append(_run_child(side, zoo_dir, curves_dir))
    best = {s: min(r["seconds"] for r in v) for s, v in runs.items()}
    rss = {s: max(r["rss_mib"] for r in v) for s, v in runs.items()}
    ref = runs[sides[0]][0]["values"]
    diff = max(abs(runs[s][0]["values"][k] - v) for s in sides[1:] for k, v in ref.items())
    label = {"lmc": f"LMC of every seed pair ({LMC_POINTS} alphas, train + test)",
             "curve": f"evaluating a trained Bezier curve of every seed pair ({CURVE_POINTS} points, BN reset, "
                      "train + test)"}
    print(f"{label[analysis]}: {what}, 16 models in 4 cells ({len(ref)} pairs), 1 thread, "
          f"load average {os.getloadavg()[0]:.1f}, best of {repeats}")
    study = sides[0]
    for side in sides[1:]:
        print(f"  {side:16s} {best[side]:7.2f} s  peak RSS {rss[side]:6.0f} MiB   study / loop: "
              f"{best[side] / best[study]:.2f}x faster, RSS {rss[study] / rss[side]:.2f}x")
    print(f"  {study:16s} {best[study]:7.2f} s  peak RSS {rss[study]:6.0f} MiB   (values agree to {diff:.1e})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="MLPs on digits")
    parser.add_argument("--n-samples", type=int, default=1024)
    parser.add_argument("--analysis", choices=("cka", "lmc", "curve"), default="cka")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", default="auto,loop",
                        help="lmc/curve: methods of the per-pair loop (auto = the default of linear_path / "
                             "evaluate_curve; vmap, loop, population)")
    parser.add_argument("--n-points", type=int, default=21, help="curve: evaluated points per curve")
    args = parser.parse_args()
    if args.analysis in ("lmc", "curve"):
        os.environ["BENCH_CURVE_POINTS"] = str(args.n_points)  # read by the child processes
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


def pair_main(args: argparse.Namespace) -> None:
    """``--analysis lmc`` / ``--analysis curve``: build the 16-model zoo, then :func:`pair_analysis`."""
    from zooscape.zoo import train_zoo

    if args.quick:
        spec, what = SPEC.format(dataset="digits", model="mlp", model_args="width = 64\ndepth = 2"), "MLP / digits"
    else:
        spec, what = SPEC.format(dataset="mnist5k", model="cnn_s", model_args=""), "CNN-s / MNIST-5k"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "spec.toml").write_text(spec)
        train_zoo(tmp / "spec.toml", tmp / "zoo", device="cpu", progress=False).close()
        pair_analysis(args.analysis, tmp / "zoo", tmp, args.repeats, what, tuple(args.methods.split(",")))


if __name__ == "__main__":
    main()
