"""``zooscape phase ...``: phase-transition studies (see ``docs/phase.md``).

Commands:

- ``zooscape phase run SPEC --out DIR``: train the temperature x load grid of a study spec (or reuse the zoo in
  DIR), compute every metric per model / seed pair / cell and store it in the catalog (resumable).
- ``zooscape phase table DIR``: the per-cell table (mean/std over seeds) with the phases; ``--csv`` writes it.
- ``zooscape phase plot DIR``: one heatmap per metric on the temperature-load plane, the phase map, the overview.
"""

from __future__ import annotations

import argparse
from typing import Any

from zooscape.cli._common import add_device, add_group, add_out, add_quiet, add_workers_engine, engine_options, say

__all__ = ["add_parser"]

_SUMMARY = ("test_error", "train_loss", "hessian_log_top_eigenvalue", "cka", "curve_mc_loss_train",
            "barrier_loss_train_linear", "seed_avg_naive_acc_test_delta", "seed_avg_aligned_acc_test_delta")


def _thresholds(pairs: list[str]) -> dict[str, Any]:
    from zooscape.cli.zoo import _key_values

    return _key_values(pairs, "--threshold")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``phase`` command group to ``subparsers``; returns the group's parser."""
    p, sub = add_group(subparsers, "phase", help="phase-transition studies: temperature x load diagrams",
                       description="Phase-transition studies (Yang et al. 2021; the phase-transition model zoos): "
                                   "train a temperature x load grid, compute performance, Hessian, CKA, mode "
                                   "connectivity, barriers, averaging and soups per cell, classify the phases.")

    r = sub.add_parser("run", help="train the grid (or reuse the zoo) and compute every metric of the study",
                       description="Train the grid of SPEC (a zoo spec plus a [phase] section; see docs/phase.md) "
                                   "into DIR, or finish / reuse the zoo already there, then compute at one epoch: "
                                   "Hessian top eigenvalue and trace, CKA of every seed pair, Bezier mode "
                                   "connectivity and linear barriers of every seed pair, epoch and seed averaging "
                                   "(naive and weight-matched) and soups. Rows are committed to DIR's catalog as "
                                   "each task finishes; a re-run recomputes nothing that is stored. SPEC may also "
                                   "be an existing zoo directory (its spec, default study settings).")
    r.add_argument("spec", metavar="SPEC", help="study spec (TOML) or an existing zoo directory")
    add_out(r, help="zoo directory (default: SPEC if it is a zoo)")
    r.add_argument("--epoch", type=int, default=None, help="study epoch (default: [phase] epoch or the last)")
    add_device(r)
    add_quiet(r)
    add_workers_engine(r, what="training and the per-model / per-pair / per-cell tasks")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("table", help="the per-cell table with the phases",
                       description="Print one line per grid cell (axes, phase, key metrics as mean over seeds); "
                                   "--out writes every column (mean, std, n of every metric) as CSV.")
    t.add_argument("dir", metavar="DIR", help="the study's zoo directory")
    t.add_argument("--epoch", type=int, default=None, help="study epoch (default: the stored one)")
    t.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE",
                   help="override a classification threshold (repeatable), e.g. loss_threshold=0.05")
    add_out(t, metavar="FILE", help="write the full table as CSV")
    t.set_defaults(func=cmd_table)

    q = sub.add_parser("plot", help="heatmaps on the temperature-load plane, the phase map and the overview",
                       description="Write one PNG per metric (mean over seeds, annotated with +- std; real axis "
                                   "values, log scale for geometric grids), phase.png and overview.png.")
    q.add_argument("dir", metavar="DIR", help="the study's zoo directory")
    add_out(q, metavar="PLOTDIR", help="output directory (default DIR/plots/phase)")
    q.add_argument("--epoch", type=int, default=None, help="study epoch (default: the stored one)")
    q.add_argument("--metrics", default=None, help="comma-separated metrics (default: the study's metrics)")
    q.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE",
                   help="override a classification threshold (repeatable)")
    q.set_defaults(func=cmd_plot)
    return p


def _print_table(table: Any) -> None:
    import math

    tkey, lkey = table.attrs["temperature_key"], table.attrs["load_key"]
    keys = [k for k in _SUMMARY if f"{k}_mean" in table.columns]
    print(f"{'cell':>4s} {tkey:>20s} {lkey:>14s} {'phase':>12s} " + " ".join(f"{k[:16]:>16s}" for k in keys))
    for _, row in table.iterrows():
        phase = row.get("phase", "-")
        if phase == "uncertain":
            phase = row["phase_candidates"].replace("|", "/") + "?"
        values = [row[f"{k}_mean"] for k in keys]
        print(f"{int(row['cell']):4d} {row[tkey]!s:>20s} {row[lkey]!s:>14s} {phase:>12s} "
              + " ".join(f"{v:16.4f}" if isinstance(v, float) and math.isfinite(v) else f"{'-':>16s}"
                         for v in values))


def cmd_run(args: argparse.Namespace) -> int:
    """Run ``zooscape phase run``; returns the exit code."""
    from zooscape.studies.phase import run_study

    table = run_study(args.spec, args.out, epoch=args.epoch, engine=args.engine, workers=args.workers,
                      device=args.device, progress=say(args.quiet), train_progress=not args.quiet,
                      engine_options=engine_options(args))
    _print_table(table)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """Run ``zooscape phase table``; returns the exit code."""
    from zooscape._io import atomic_write_bytes
    from zooscape.studies.phase import phase_table

    table = phase_table(args.dir, epoch=args.epoch, thresholds=_thresholds(args.threshold))
    _print_table(table)
    if args.out:
        atomic_write_bytes(args.out, table.to_csv(index=False).encode())
        print(f"wrote {args.out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Run ``zooscape phase plot``; returns the exit code."""
    from zooscape.studies.phase import plot_study

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    written = plot_study(args.dir, args.out, epoch=args.epoch, metrics=metrics,
                         thresholds=_thresholds(args.threshold))
    for path in written.values():
        print(path)
    return 0
