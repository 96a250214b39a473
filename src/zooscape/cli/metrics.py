"""``zooscape metrics ...``: loss-landscape metrics of every model of a zoo (see ``docs/landscape.md``).

Commands:

- ``zooscape metrics run DIR --metric hessian|fisher|spectra|cka [--epoch E] [--set KEY=VALUE ...]``: compute
  the metric for every model (or every seed pair of each grid cell, for ``cka``) and store values and settings
  in the catalog's ``analyses`` table; re-running resumes (stored results are skipped).
- ``zooscape metrics settings [METRIC]``: the settings of each metric and their defaults.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from zooscape.cli._common import (
    add_device,
    add_group,
    add_log,
    add_quiet,
    add_workers_engine,
    engine_options,
    logged_analyses,
    say,
)

__all__ = ["add_parser", "parse_settings"]

METRIC_NAMES = ("hessian", "fisher", "spectra", "cka")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``metrics`` command group to ``subparsers``; returns the group's parser."""
    p, sub = add_group(subparsers, "metrics", help="loss-landscape metrics of a zoo: Hessian, Fisher, spectra, CKA",
                       description="Loss-landscape metrics of every model of a zoo.")

    r = sub.add_parser("run", help="compute a metric for every model (or seed pair) and store it",
                       description="Compute METRIC at one checkpointed epoch for every model of the zoo in DIR "
                                   "(for cka: every seed pair of each grid cell) and store the values and the "
                                   "settings used in the catalog's analyses table. Re-running the same command "
                                   "skips stored results (resume); other settings add new rows. "
                                   "See 'zooscape metrics settings' for the settings.")
    r.add_argument("dir", metavar="DIR", help="zoo directory")
    r.add_argument("--metric", required=True, choices=METRIC_NAMES, help="the metric")
    r.add_argument("--epoch", type=int, default=None, help="checkpointed epoch (default: training.epochs)")
    r.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="change a setting, e.g. --set n_samples=256 --set dtype=float64 (values are JSON: "
                        "numbers, true/false, null; anything else is a string); repeatable")
    r.add_argument("--models", default=None, metavar="IDS", help="comma-separated model ids (default: all)")
    add_device(r)
    add_quiet(r)
    add_workers_engine(r, what="the per-model (or per-pair) tasks")
    r.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="hessian, fisher: models per task, computed as one stacked population (peak memory about N "
                        "times one model's); 0: one model per task (the per-model reference path); default: "
                        "hessian as many models as fit 512 MiB per population, fisher 4")
    add_log(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("settings", help="list the settings of each metric and their defaults",
                       description="Print the settings of each metric (or of METRIC) and their defaults.")
    s.add_argument("metric", nargs="?", choices=METRIC_NAMES, help="only this metric")
    s.set_defaults(func=cmd_settings)
    return p


def parse_settings(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; values are JSON where they parse (``512``, ``true``, ``null``), else strings.

    Args:
        items: strings like ``"n_samples=256"``.

    Returns:
        dict key -> value.

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


def cmd_run(args: argparse.Namespace) -> int:
    """Run ``zooscape metrics run``: compute, store, then print a per-cell summary of the stored values.

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    import pandas as pd

    from zooscape.studies.metrics import MARKERS, metric_params, run_metrics
    from zooscape.zoo import open as open_zoo
    from zooscape.zoo.summary import cell_axes

    overrides = parse_settings(args.settings)
    settings = metric_params(args.metric, overrides)
    if args.chunk_size is not None and args.chunk_size < 0:
        raise ValueError(f"--chunk-size must be >= 0, got {args.chunk_size}")
    chunk = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    models = None if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    with logged_analyses(args, args.dir, f"metrics-{args.metric}"):
        rows = run_metrics(args.dir, args.metric, epoch=args.epoch, params=overrides, model_ids=models,
                           engine=args.engine, workers=args.workers, device=args.device, progress=say(args.quiet),
                           engine_options=engine_options(args), **chunk)
    marker = MARKERS[args.metric]
    print(f"{len(rows)} rows stored in {args.dir} ({sum(r['metric'] == marker for r in rows)} new results)")
    with open_zoo(args.dir) as zoo:
        stored = zoo.analyses(marker)
        wanted = {"analysis": args.metric, **settings}
        stored = stored[[p == wanted for p in stored["params"]]]
        if args.epoch is not None:
            stored = stored[stored["epoch"] == args.epoch]
        if stored.empty:
            return 0
        configs = zoo.configs()
        axes = [a for a in cell_axes(list(zoo.spec.grid)) if a in configs.columns]
        merged = stored.merge(configs[["model_id", *axes]], on="model_id", how="left")
        if axes:
            merged[axes] = merged[axes].astype(str)
            summary = merged.groupby(axes, dropna=False)["value"].agg(["count", "mean", "std"]).reset_index()
        else:
            summary = merged["value"].agg(["count", "mean", "std"]).to_frame().T
        print(f"{marker} per grid cell (over {'seed pairs' if args.metric == 'cka' else 'seeds'}):")
        with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_rows", 500):
            print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Run ``zooscape metrics settings``: print each metric's settings and defaults.

    Args:
        args: parsed command line.

    Returns:
        exit code 0.
    """
    from zooscape.studies.metrics import DEFAULTS, PAIRWISE

    for metric in [args.metric] if args.metric else METRIC_NAMES:
        kind = "pairwise: every seed pair of a grid cell" if metric in PAIRWISE else "per model"
        print(f"{metric} ({kind})")
        for key, value in DEFAULTS[metric].items():
            print(f"  {key} = {json.dumps(value)}")
    return 0
