"""``zooscape curve ...``: curve mode connectivity (see ``docs/curves.md``).

Commands:

- ``zooscape curve train CONFIG [TABLE ...]``: train the base models and curves of a TF-style config.
- ``zooscape curve eval CONFIG [TABLE ...]``: evaluate trained curves (loss/nll/error at N points, summaries, mc,
  plots; optionally the plane).
- ``zooscape curve pairs DIR``: curves between every seed pair of each grid cell of a zoo; mc in its catalog.
"""

from __future__ import annotations

import argparse
from typing import Any

from zooscape.cli._common import (
    add_device,
    add_group,
    add_log,
    add_n_points,
    add_quiet,
    add_splits,
    add_workers_engine,
    deprecated_alias,
    engine_options,
    logged_analyses,
    say,
)

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``curve`` command group to ``subparsers``; returns the group's parser."""
    p, sub = add_group(subparsers, "curve", help="curve mode connectivity: Bezier/PolyChain curves, mc, planes",
                       description="Curve mode connectivity (Garipov et al. 2018) between any two models.")

    t = sub.add_parser("train", help="train the base models and curves of a config",
                       description="Run the training tables of CONFIG (TF-port keys: dir, dataset, model, curve, "
                                   "num-bends, epochs, lr, wd, seed, init-start/end, fix-start/end, init-linear). "
                                   "A table without 'curve' trains a base model (DIR/model.safetensors); a table "
                                   "with 'curve' trains a curve (DIR/curve.safetensors). Without TABLE names, all "
                                   "training tables run in file order.")
    t.add_argument("config", metavar="CONFIG", help="TOML config")
    t.add_argument("tables", nargs="*", metavar="TABLE", help="tables to run (default: all training tables)")
    add_device(t)
    add_quiet(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate trained curves (summaries, mc, plots, plane)",
                       description="Run the evaluation tables of CONFIG (tables with 'ckpt'): loss, nll and error "
                                   "at num-points positions with BatchNorm re-estimated at each, segment lengths, "
                                   "min/max/mean/int, mc; the straight line for comparison; DIR/curve_eval.json, "
                                   "DIR/curve_<metric>.png and, with --plane or plane = true, the plane contours.")
    e.add_argument("config", metavar="CONFIG", help="TOML config")
    e.add_argument("tables", nargs="*", metavar="TABLE", help="tables to run (default: all evaluation tables)")
    add_n_points(e, None, help="positions along the curve (default: the table's num-points)")
    e.add_argument("--plane", action="store_true", default=None, help="also evaluate and plot the plane")
    add_device(e)
    add_quiet(e)
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("pairs", help="curves and mc between all seed pairs of each grid cell of a zoo",
                       description="For every grid cell of the zoo in DIR, train a curve between every pair of "
                                   "models at one epoch, evaluate it, and store mc (loss/nll/error, train/test) "
                                   "and the curve summaries in the catalog's analyses table (metric "
                                   "curve_<stat>_<metric>_<split>). Each pair is one task on the zoo's engine "
                                   "(in-process, --workers N local processes, or --engine ray); pairs already "
                                   "stored with the same settings are skipped (resume).")
    q.add_argument("dir", metavar="DIR", help="zoo directory")
    q.add_argument("--epoch", type=int, default=None, help="checkpointed epoch (default: each cell's last)")
    q.add_argument("--curve", default="bezier", choices=("bezier", "polychain"), help="curve kind (default bezier)")
    q.add_argument("--num-bends", type=int, default=1, help="inner bends (default 1)")
    q.add_argument("--epochs", type=int, default=10, help="curve training epochs (default 10)")
    q.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    q.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="optimizer (default sgd)")
    q.add_argument("--lr", type=float, default=0.1, help="base learning rate (default 0.1)")
    q.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    q.add_argument("--weight-decay", type=float, default=1e-4, metavar="WD",
                   help="regulariser 0.5 WD ||w(t)||^2 (default 1e-4)")
    deprecated_alias(q, "--wd", "--weight-decay", "weight_decay", type=float)
    q.add_argument("--seed", type=int, default=0, help="seed of data order and sampled t (default 0)")
    add_n_points(q, 5, help="evaluated positions (default 5)")
    add_splits(q, "train,test")
    q.add_argument("--force", action="store_true", help="recompute pairs that are already stored")
    add_device(q)
    add_quiet(q)
    add_workers_engine(q, what="the tasks (one per grid cell; one per pair with --per-pair)")
    q.add_argument("--per-pair", action="store_true",
                   help="one task per pair, each curve trained and evaluated on its own (the slow reference; default: "
                        "a cell's curves trained and evaluated together as populations)")
    add_log(q)
    q.set_defaults(func=cmd_pairs)
    return p


def _print_evaluation(name: str, summary: dict[str, Any]) -> None:
    ev, line = summary["evaluation"], summary["line"]
    print(f"[{name}] {ev.kind} curve, {ev.num_bends} bend(s), {len(ev.ts)} points, length {ev.length:.4g} "
          f"(straight line {line.length:.4g})")
    print(f"{'':22s} {'start':>9s} {'end':>9s} {'min':>9s} {'max':>9s} {'mean':>9s} {'int':>9s} {'mc':>9s}"
          f" {'line max':>9s} {'line mc':>9s}")
    for split in ev.splits:
        for metric in ("loss", "nll", "error"):
            if metric not in ev.stats[split]:
                continue
            v, st = ev.values(metric, split), ev.stats[split][metric]
            scale = 100.0 if metric == "error" else 1.0
            label = f"{split} {metric}" + (" (%)" if metric == "error" else "")
            cells = [float(v[0]), float(v[-1]), st["min"], st["max"], st["mean"], st["int"], ev.mc[split][metric],
                     line.stats[split][metric]["max"], line.mc[split][metric]]
            print(f"{label:22s} " + " ".join(f"{c * scale:9.4f}" for c in cells))
    for f in summary["files"]:
        print(f"  wrote {f}")


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``zooscape curve train``; returns the exit code."""
    from zooscape.studies.curve_runs import run_config

    results = run_config(args.config, args.tables or None, roles=("base", "curve"), device=args.device,
                         progress=say(args.quiet))
    for r in results:
        print(f"{r['role']:5s} -> {r['dir']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``zooscape curve eval``; returns the exit code."""
    from zooscape.studies.curve_runs import load_curve_config, run_config, section_role

    if args.tables:
        config = load_curve_config(args.config)
        wrong = [t for t in args.tables if t in config and section_role(config[t]) != "eval"]
        if wrong:
            raise ValueError(f"table(s) {wrong} have no 'ckpt': use 'zooscape curve train' for them")
    overrides = {"num-points": args.n_points, "plane": args.plane}
    results = run_config(args.config, args.tables or None, roles=("eval",), device=args.device,
                         overrides=overrides, progress=say(args.quiet))
    names = args.tables or [None] * len(results)
    for name, r in zip(names, results):
        _print_evaluation(name or r["dir"], r)
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    """Run ``zooscape curve pairs``; returns the exit code."""
    from zooscape.connect.curve_train import CurveTrainConfig
    from zooscape.studies.curves import curve_pairs, curve_records, pair_params

    cfg = CurveTrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                           momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed)
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    with logged_analyses(args, args.dir, "curve-pairs"):
        rows = curve_pairs(args.dir, args.epoch, kind=args.curve, num_bends=args.num_bends, train_config=cfg,
                           n_points=args.n_points, splits=splits, device=args.device, force=args.force,
                           progress=say(args.quiet), engine=args.engine, workers=args.workers,
                           engine_options=engine_options(args), per_pair=args.per_pair)
    params = pair_params(args.curve, args.num_bends, cfg, args.n_points, 5, "reset", splits)
    stored = curve_records(args.dir, params)
    if not stored:
        print("no grid cell has two models with a checkpoint at that epoch; nothing stored")
        return 1
    keys = [k for k in ("curve_mc_error_test", "curve_mc_loss_test", "curve_max_error_test", "curve_length")
            if k in stored[0]]
    cells: dict[int, list[dict[str, Any]]] = {}
    for r in stored:
        cells.setdefault(r["cell"], []).append(r)
    print(f"{'cell':>4s} {'pairs':>5s} {'epoch':>5s} " + " ".join(f"{k[6:]:>15s}" for k in keys))
    for cell, rs in sorted(cells.items()):
        means = [sum(r.get(k, float("nan")) for r in rs) / len(rs) for k in keys]
        print(f"{cell:4d} {len(rs):5d} {rs[0]['epoch']:5d} " + " ".join(f"{m:15.4f}" for m in means))
    print(f"{len(rows)} pair(s) computed now, {len(stored)} stored with these settings in {args.dir}")
    return 0
