"""``zooscape lmc ...``: linear mode connectivity experiments (see ``docs/connectivity.md``).

Commands:

- ``zooscape lmc spawn SPEC --out DIR``: instability analysis (main branch, children spawned at every k1,
  barriers and distances at every k2); results in DIR's catalog, a plot per main branch in ``DIR/lmc/``.
- ``zooscape lmc pairs DIR [--epoch E] [--align none|weight|activation] [--renorm none|reset_bn|repair|...]``:
  barriers between all seed pairs of every grid cell of a zoo before and after alignment and renormalisation,
  stored in its catalog (one task per pair on the zoo's engines).
- ``zooscape lmc progress DIR``: barrier vs training progress per cell, from a zoo trained with ``[lmc] every``.
- ``zooscape lmc plot DIR``: redraw the instability plot from the catalog of a spawn run.
"""

from __future__ import annotations

import argparse
from typing import Any

from zooscape.cli._common import (
    add_device,
    add_group,
    add_log,
    add_n_points,
    add_out,
    add_quiet,
    add_splits,
    add_workers_engine,
    deprecated_alias,
    engine_options,
    logged_analyses,
    say,
    split_list,
)

ALIGNS = ("none", "weight", "activation")
RENORMS = ("none", "reset_bn", "repair", "rescale", "reshift")


def _bn_mode(text: str) -> str:
    """Old ``--bn-mode interpolate|reset`` -> ``--renorm none|reset_bn``."""
    table = {"interpolate": "none", "reset": "reset_bn"}
    if text not in table:
        raise argparse.ArgumentTypeError(f"--bn-mode must be interpolate or reset, got {text!r}")
    return table[text]

__all__ = ["add_parser"]


def _plot_args(p: argparse.ArgumentParser, default_metric: str = "error") -> None:
    p.add_argument("--metric", default=default_metric, choices=("loss", "error"),
                   help=f"barrier of loss or error (default {default_metric})")
    add_splits(p, "test", help="comma-separated data splits of the barrier, one table or plot each (default test)")
    p.add_argument("--definition", default="linear", choices=("linear", "mean", "midpoint"),
                   help="barrier definition (default linear: height above the chord; see docs/connectivity.md)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``lmc`` command group to ``subparsers``; returns the group's parser."""
    p, sub = add_group(subparsers, "lmc", help="linear mode connectivity: spawn experiments, pair barriers",
                       description="Linear mode connectivity experiments.")

    s = sub.add_parser("spawn", help="instability analysis: spawn children from a main branch at each k1",
                       description="Train a main branch of every grid cell of SPEC (a zoo spec with an [lmc] "
                                   "section), spawn children at each k1 that train with other data orders, and "
                                   "record barriers and distances to the main branch at each k2 in DIR's catalog. "
                                   "Re-running the same command skips finished main branches.")
    s.add_argument("spec", metavar="SPEC", help="TOML spec file (zoo spec + [lmc])")
    add_out(s, required=True, help="output directory (a zoo store; created)")
    add_device(s)
    add_quiet(s)
    _plot_args(s)
    s.set_defaults(func=cmd_spawn)

    q = sub.add_parser("pairs", help="barriers between all seed pairs of each grid cell, before/after re-basin",
                       description="For every grid cell of the zoo in DIR (models differing only in training.seed "
                                   "/ data_seed), evaluate the linear path between every pair at one epoch: naive, "
                                   "after aligning the second model to the first (--align) and after "
                                   "renormalising every point of the path (--renorm). Distances, barriers (three "
                                   "definitions, loss and error), the alignment objective and the permutation "
                                   "(DIR/lmc/perms/) are stored as each pair finishes; re-running skips stored "
                                   "pairs. Prints one line per finished cell.")
    q.add_argument("dir", metavar="DIR", help="zoo directory")
    q.add_argument("--epoch", type=int, default=None, help="checkpointed epoch (default: each cell's last)")
    add_n_points(q, 25, help="alphas per path (default 25)")
    q.add_argument("--align", default="none", choices=ALIGNS,
                   help="align the second model of each pair to the first: weight matching (Git Re-Basin) or "
                        "activation matching (default none)")
    q.add_argument("--renorm", default="none", choices=RENORMS,
                   help="renormalise every point of the path: reset_bn (re-estimate BatchNorm statistics), "
                        "repair, rescale or reshift (REPAIR family, docs/alignment.md) (default none)")
    deprecated_alias(q, "--bn-mode", "--renorm", "renorm", type=_bn_mode)
    q.add_argument("--seed", type=int, default=0, help="seed of weight matching's visiting order (default 0)")
    q.add_argument("--force", action="store_true", help="recompute pairs already stored with these settings")
    add_splits(q, "train,test")
    add_device(q)
    add_quiet(q)
    add_workers_engine(q, what="the tasks (one per grid cell; one per pair with --per-pair)")
    q.add_argument("--per-pair", action="store_true",
                   help="one task per pair, each path on its own (the slow reference; default: the pairs of a cell "
                        "evaluated together as one population)")
    add_log(q)
    q.set_defaults(func=cmd_pairs)

    pg = sub.add_parser("progress", help="barrier vs training progress per cell (LMC during training)",
                        description="Plot the barriers measured during 'zooscape zoo train' of a spec with "
                                    "[lmc] every = ... (one panel per grid cell: every seed pair and their mean; "
                                    "naive, aligned and renormalised stages) and print the last measurement.")
    pg.add_argument("dir", metavar="DIR", help="zoo directory")
    add_out(pg, metavar="PNG", help="file to write (default DIR/lmc/train_<metric>_<split>_<definition>.png)")
    _plot_args(pg)
    pg.set_defaults(func=cmd_progress)

    pl = sub.add_parser("plot", help="instability plot (barrier vs k1, one line per k2) from a spawn run",
                        description="Read the spawn results from DIR's catalog and write one PNG per main branch.")
    pl.add_argument("dir", metavar="DIR", help="output directory of 'zooscape lmc spawn'")
    add_out(pl, metavar="PNG", help="file to write (default DIR/lmc/<main_id>_<metric>_<split>_<definition>.png)")
    _plot_args(pl)
    pl.set_defaults(func=cmd_plot)
    return p


def _print_table(records: list[dict[str, Any]], key: str) -> None:
    from zooscape.connect.spawn import barrier_table

    by_main: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_main.setdefault(r["main_id"], []).append(r)
    for main_id, rows in by_main.items():
        metric, split, definition = key.split("_", 3)[1:]
        table = barrier_table(rows, metric, split, definition)
        k1s = sorted({k1 for row in table.values() for k1 in row})
        print(f"{main_id}: {definition} barrier of {split} {metric} (rows k2, columns k1)")
        print("k2\\k1 " + " ".join(f"{k1:>8d}" for k1 in k1s))
        for k2, row in table.items():
            print(f"{k2:5d} " + " ".join(f"{row[k1]:8.4f}" if k1 in row else f"{'':>8s}" for k1 in k1s))


def cmd_spawn(args: argparse.Namespace) -> int:
    """Run ``zooscape lmc spawn``; returns the exit code."""
    from zooscape.studies.lmc import run_spawn

    splits = split_list(args.splits)
    plot = (args.metric, splits[0], args.definition)
    records = run_spawn(args.spec, args.out, device=args.device, plot=plot, progress=say(args.quiet))
    for split in splits:
        key = f"barrier_{args.metric}_{split}_{args.definition}"
        shown = [r for r in records if key in r]
        if shown:
            _print_table(shown, key)
    print(f"{len(records)} records written to {args.out} (plots in {args.out}/lmc/)")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    """Run ``zooscape lmc pairs``; returns the exit code."""
    from zooscape.studies.lmc_pairs import pair_barriers

    splits = split_list(args.splits)
    with logged_analyses(args, args.dir, "lmc-pairs"):
        rows = pair_barriers(args.dir, epoch=args.epoch, n_points=args.n_points, align=args.align,
                             renorm=args.renorm, splits=splits, seed=args.seed, device=args.device, force=args.force,
                             progress=say(args.quiet), bar=not args.quiet, engine=args.engine, workers=args.workers,
                             engine_options=engine_options(args), per_pair=args.per_pair)
    if not rows:
        print("no grid cell has two models with a checkpoint at that epoch; nothing stored")
        return 1
    split = splits[-1]
    metric = "error" if f"barrier_error_{split}_linear" in rows[0] else "loss"
    key = f"barrier_{metric}_{split}_linear"
    stages = [("naive", "naive_" + key)]
    if args.align != "none":
        stages.append((args.align, "aligned_" + key))
    if args.renorm != "none":
        stages.append((f"+{args.renorm}", key))
    cells: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(r["cell"], []).append(r)
    print(f"linear {split} {metric} barrier, mean over the seed pairs of each cell")
    print(f"{'pairs':>5s} {'epoch':>5s} " + " ".join(f"{name:>12s}" for name, _ in stages) + "  cell")
    for _, rs in sorted(cells.items()):
        means = [sum(r[k] for r in rs) / len(rs) for _, k in stages]
        print(f"{len(rs):5d} {rs[0]['epoch']:5d} " + " ".join(f"{m:12.4f}" for m in means)
              + f"  {rs[0]['cell_label']}")
    print(f"{len(rows)} pairs stored in {args.dir}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Run ``zooscape lmc plot``; returns the exit code."""
    from pathlib import Path

    from zooscape._io import save_figure
    from zooscape.connect.plot import plot_instability
    from zooscape.studies.lmc import spawn_records

    records = spawn_records(args.dir)
    if not records:
        raise ValueError(f"{args.dir} holds no spawn results (run 'zooscape lmc spawn' first)")
    mains = sorted({r["main_id"] for r in records})
    splits = split_list(args.splits)
    if args.out is not None and len(mains) * len(splits) > 1:
        raise ValueError(f"--out names one file but {args.dir} holds {len(mains)} main branch(es) and "
                         f"{len(splits)} split(s) were asked for; omit --out")
    for main_id in mains:
        rows = [r for r in records if r["main_id"] == main_id]
        for split in splits:
            fig = plot_instability(rows, args.metric, split, args.definition,
                                   title=f"{main_id}: {args.definition} {split} {args.metric} barrier")
            out = Path(args.out) if args.out else (
                Path(args.dir) / "lmc" / f"{main_id}_{args.metric}_{split}_{args.definition}.png")
            print(save_figure(fig, out))
    return 0


def cmd_progress(args: argparse.Namespace) -> int:
    """Run ``zooscape lmc progress``; returns the exit code."""
    from pathlib import Path

    from zooscape._io import save_figure
    from zooscape.studies.lmc_train import plot_training_lmc, training_lmc_records

    records = training_lmc_records(args.dir)
    if not records:
        raise ValueError(f"{args.dir} holds no LMC measured during training (add [lmc] every = ... to the spec)")
    splits = split_list(args.splits)
    if args.out is not None and len(splits) > 1:
        raise ValueError("--out names one file but several splits were asked for; omit --out")
    for split in splits:
        key = f"barrier_{args.metric}_{split}_{args.definition}"
        if key not in records[0]:
            raise ValueError(f"{args.dir}: no {key} stored (measured splits: {records[0]['params']['splits']})")
        fig = plot_training_lmc(records, args.metric, split, args.definition,
                                title=f"{args.definition} {split} {args.metric} barrier during training")
        out = Path(args.out) if args.out else (
            Path(args.dir) / "lmc" / f"train_{args.metric}_{split}_{args.definition}.png")
        print(save_figure(fig, out))
        last = max(r["epoch"] for r in records)
        for r in records:
            if r["epoch"] == last:
                print(f"  {r['cell_label']}: {r['model_id']} - {r['other_id']} at epoch {last}: naive "
                      f"{r['naive_' + key]:.4f}, final {r[key]:.4f}")
    return 0
