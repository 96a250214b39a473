"""``zooscape align ...``: re-basin over a zoo (see ``docs/alignment.md``).

Commands:

- ``zooscape align merge DIR [--cell N,N|all] [--method weight|activation|none] [--renorm none|repair|...]``: merge
  the seeds of grid cells (MergeMany) into one model each, stored in the zoo as a derived model linked to its
  sources, with its accuracy and the delta to the sources' mean.

Barriers before and after alignment are ``zooscape lmc pairs DIR --align weight --renorm repair``.
"""

from __future__ import annotations

import argparse
from typing import Any

from zooscape.cli._common import (
    add_device,
    add_group,
    add_quiet,
    add_splits,
    add_workers_engine,
    engine_options,
    say,
    split_list,
)

__all__ = ["add_parser"]


def _cells(text: str) -> str | list[int]:
    if text.strip() == "all":
        return "all"
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cell takes 'all' or comma-separated cell numbers, got {text!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``align`` command group to ``subparsers``; returns the group's parser."""
    p, sub = add_group(subparsers, "align", help="re-basin over a zoo: merge the seeds of grid cells",
                       description="Permutation alignment over a zoo (barriers: 'zooscape lmc pairs --align').")
    m = sub.add_parser("merge", help="merge the seeds of grid cells into one model each (MergeMany)",
                       description="For every chosen grid cell of the zoo in DIR, align its members at one epoch "
                                   "(MergeMany weight matching, or activation matching to the first member), "
                                   "average them, optionally renormalise (REPAIR & co.), and store the merged "
                                   "model in the zoo as a derived model (config derived.merge names its sources) "
                                   "with its loss/accuracy and the delta to the sources' mean. Cells numbered as "
                                   "in 'zooscape lmc pairs'. Re-running skips merged cells.")
    m.add_argument("dir", metavar="DIR", help="zoo directory")
    m.add_argument("--cell", type=_cells, default="all", metavar="N,N|all", help="grid cells to merge (default all)")
    m.add_argument("--method", default="weight", choices=("weight", "activation", "none"),
                   help="alignment: MergeMany weight matching, activation matching, or none (plain average) "
                        "(default weight)")
    m.add_argument("--renorm", default="none", choices=("none", "reset_bn", "repair", "rescale", "reshift"),
                   help="renormalise the merged model on the training inputs (default none)")
    m.add_argument("--epoch", type=int, default=None, help="checkpointed epoch (default: each cell's last)")
    m.add_argument("--seed", type=int, default=0, help="seed of MergeMany's visiting order (default 0)")
    m.add_argument("--force", action="store_true", help="merge again cells already merged with these settings")
    add_splits(m, "train,test", help="comma-separated splits to evaluate on (default train,test)")
    add_device(m)
    add_quiet(m)
    add_workers_engine(m, what="the tasks (one per grid cell)")
    m.set_defaults(func=cmd_merge)
    return p


def cmd_merge(args: argparse.Namespace) -> int:
    """Run ``zooscape align merge``; returns the exit code."""
    from zooscape.studies.merges import merge_cells

    splits = split_list(args.splits)
    rows = merge_cells(args.dir, args.cell, args.method, args.renorm, epoch=args.epoch, splits=splits,
                       seed=args.seed, device=args.device, force=args.force, progress=say(args.quiet),
                       engine=args.engine, workers=args.workers, engine_options=engine_options(args))
    if not rows:
        print("nothing merged (cells already merged with these settings, or fewer than two models per cell)")
        return 0
    split = splits[-1]
    metric = "acc" if f"merge_{split}_acc" in rows[0] else "loss"
    key = f"{split}_{metric}"
    print(f"{'merged':>10s} {'sources':>10s} {'delta':>8s}  merge id             cell ({key})")
    for r in rows:
        print(f"{r['merge_' + key]:10.4f} {r['merge_sources_' + key]:10.4f} {r['merge_delta_' + key]:+8.4f}  "
              f"{r['merge_id']}  {r['cell_label']}")
    print(f"{len(rows)} merged model(s) stored in {args.dir}")
    return 0
