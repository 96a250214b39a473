"""LMC and curve entries of bench/analyses.py: study vs a plain per-pair loop (issue 20).

Run through ``bench/analyses.py --analysis lmc|curve|curve-train|curve-pairs [--quick]``; this module also runs
each side as its own process (``--child``).

``--analysis lmc``: ``zooscape lmc pairs`` (``studies.lmc_pairs.pair_barriers``: one task per cell, every path
point of the cell's pairs a member of one population) against the loop a user writes: for every seed pair, load
both checkpoints and call ``connect.linear_path`` (its default method, and ``method="loop"``, the per-alpha deep
copy that was the default for these networks before). ``--analysis curve``: trained curves of every seed pair
evaluated per cell (``connect.evaluate_curves``, what ``zooscape curve pairs`` runs) against a loop of
``connect.evaluate_curve`` per curve (default method, and ``method="loop"``); the curves are trained once
beforehand, one pair at a time. ``--analysis curve-train``: what ``zooscape curve pairs`` trains per cell (every
model loaded once, all the cell's curves trained together as one population,
``connect.curve_population.train_curves``) against the loop a user writes: for every seed pair, load both
checkpoints, build the Bezier curve and call ``connect.train_curve`` (``--curve-epochs``: 10 epochs, the
command's default, with ``--quick``; 2 on CNN-s to keep the loop short; the command's other settings). Each side
runs in its own process (interleaved, best of the repeats) so that its peak RSS is its own; values are checked
equal. ``--analysis curve-pairs``: the whole command (training, evaluation, files, catalog) by default against its
``--per-pair`` reference, same epochs.
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

from analyses import SPEC

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


CURVE_TRAIN_EPOCHS = int(os.environ.get("BENCH_CURVE_EPOCHS", "10"))


def _curve_train_config():
    """``zooscape curve pairs``' training settings (SGD lr 0.1, momentum 0.9, wd 1e-4, batch 128, Garipov
    schedule) with ``CURVE_TRAIN_EPOCHS`` epochs."""
    import dataclasses

    from zooscape.studies.curves import default_pair_config

    return dataclasses.replace(default_pair_config(), epochs=CURVE_TRAIN_EPOCHS)


def curve_train_loop(zoo_dir: Path) -> dict[str, float]:
    """The plain per-pair loop: load both checkpoints, build the Bezier curve, ``train_curve`` (public API)."""
    from zooscape.connect import Curve, train_curve
    from zooscape.studies.cells import zoo_cells
    from zooscape.zoo import open_zoo

    cfg, out = _curve_train_config(), {}
    with open_zoo(zoo_dir) as zoo:
        data = zoo.data(zoo.model_ids[0])
        for cell in zoo_cells(zoo):
            for a, b in itertools.combinations(cell.model_ids, 2):
                curve = Curve("bezier", zoo.load_model(a, 1), zoo.load_model(b, 1), 1)
                out[f"{a}-{b}"] = train_curve(curve, data, cfg).history[-1]["train_loss"]
    return out


def curve_train_study(zoo_dir: Path) -> dict[str, float]:
    """What ``zooscape curve pairs`` trains per cell (``run_curve_cell_task``): each model loaded once, all the
    cell's curves trained together as one population (``connect.curve_population.train_curves``)."""
    from zooscape.connect import Curve
    from zooscape.connect.curve_population import train_curves
    from zooscape.studies.cells import zoo_cells
    from zooscape.zoo import open_zoo

    cfg, out = _curve_train_config(), {}
    with open_zoo(zoo_dir) as zoo:
        data = zoo.data(zoo.model_ids[0])
        for cell in zoo_cells(zoo):
            pairs = list(itertools.combinations(cell.model_ids, 2))
            models = {m: zoo.load_model(m, 1) for m in cell.model_ids}
            curves = [Curve("bezier", models[a], models[b], 1) for a, b in pairs]
            for (a, b), res in zip(pairs, train_curves(curves, data, cfg)):
                out[f"{a}-{b}"] = res.history[-1]["train_loss"]
    return out


def curve_pairs_run(zoo_dir: Path, per_pair: bool) -> dict[str, float]:
    """The whole ``zooscape curve pairs`` (training, evaluation at 5 points with BatchNorm reset, files and catalog
    rows), by default or with ``--per-pair`` (one task per pair: ``train_curve`` and ``evaluate_curve``)."""
    from zooscape.studies.curves import curve_pairs

    rows = curve_pairs(zoo_dir, 1, train_config=_curve_train_config(), device="cpu", force=True, per_pair=per_pair)
    return {f"{r['model_id']}-{r['other_id']}": r["curve_mc_loss_test"] for r in rows}


def _child(which: str, zoo_dir: Path, extra: Path) -> None:
    """Run one side in this (fresh) process; print its time, peak RSS and values as JSON."""
    import torch

    torch.set_num_threads(1)
    import zooscape.align.lmc  # noqa: F401  (imports are not timed: they are the same for any zoo size)
    import zooscape.connect  # noqa: F401
    import zooscape.connect.curve_population  # noqa: F401
    import zooscape.studies.curves  # noqa: F401
    import zooscape.studies.lmc_pairs  # noqa: F401
    import zooscape.train.optim  # noqa: F401
    import zooscape.train.population  # noqa: F401
    import zooscape.zoo.engines  # noqa: F401

    t0 = time.perf_counter()
    if which.startswith("curve-pairs"):
        values = curve_pairs_run(zoo_dir, per_pair=which != "curve-pairs-study")
    elif which == "curve-train-study":
        values = curve_train_study(zoo_dir)
    elif which.startswith("curve-train-loop"):
        values = curve_train_loop(zoo_dir)
    elif which == "lmc-study":
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
             "curve-train": f"training a Bezier curve (1 bend) between every seed pair ({CURVE_TRAIN_EPOCHS} epochs, "
                            "batch 128, SGD; final train loss compared)",
             "curve-pairs": f"`zooscape curve pairs` ({CURVE_TRAIN_EPOCHS} curve epochs, 5 points, BN reset, train + "
                            "test; mc test loss compared) against its --per-pair reference",
             "curve": f"evaluating a trained Bezier curve of every seed pair ({CURVE_POINTS} points, BN reset, "
                      "train + test)"}
    print(f"{label[analysis]}: {what}, 16 models in 4 cells ({len(ref)} pairs), 1 thread, "
          f"load average {os.getloadavg()[0]:.1f}, best of {repeats}")
    study = sides[0]
    for side in sides[1:]:
        print(f"  {side:22s} {best[side]:7.2f} s  peak RSS {rss[side]:6.0f} MiB   study / loop: "
              f"{best[side] / best[study]:.2f}x faster, RSS {rss[study] / rss[side]:.2f}x")
    print(f"  {study:22s} {best[study]:7.2f} s  peak RSS {rss[study]:6.0f} MiB   (values agree to {diff:.1e})")


def pair_main(args: argparse.Namespace) -> None:
    """``--analysis lmc`` / ``curve`` / ``curve-train`` / ``curve-pairs``: build the 16-model zoo, then
    :func:`pair_analysis`."""
    from zooscape.zoo import train_zoo

    if args.quick:
        spec, what = SPEC.format(dataset="digits", model="mlp", model_args="width = 64\ndepth = 2"), "MLP / digits"
    else:
        spec, what = SPEC.format(dataset="mnist5k", model="cnn_s", model_args=""), "CNN-s / MNIST-5k"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "spec.toml").write_text(spec)
        train_zoo(tmp / "spec.toml", tmp / "zoo", device="cpu", progress=False).close()
        methods = {"curve-train": ("train_curve",), "curve-pairs": ("per-pair",)}.get(
            args.analysis, tuple(args.methods.split(",")))
        pair_analysis(args.analysis, tmp / "zoo", tmp, args.repeats, what, methods)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
