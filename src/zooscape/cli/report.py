"""``zooscape report ZOO``: one self-contained HTML page about a zoo (see ``docs/report.md``)."""

from __future__ import annotations

import argparse
from typing import Any

from zooscape.cli._common import add_out, add_quiet, say

__all__ = ["add_parser", "cmd_report"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` command.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Returns:
        the command's parser.
    """
    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a zoo",
        description="Write one HTML file about the zoo in ZOO: spec and grid, counts, accuracy/loss distributions "
                    "per grid cell and per epoch, training curves, temperature-load maps, LMC and curve results, "
                    "landscape metrics, prediction scores, sparsity; sections appear when the catalog has their "
                    "data and the last one lists what is missing. Figures, styles and scripts are inlined: the "
                    "file makes no network request and opens offline.")
    p.add_argument("zoo", metavar="ZOO", help="zoo directory (may be empty or still training)")
    add_out(p, metavar="HTML", help="output file (default ZOO/report.html)")
    add_quiet(p)
    p.set_defaults(func=cmd_report, _group_parser=p)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report of ``args.zoo`` (``zooscape report``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    from zooscape.report import build_report

    out = build_report(args.zoo, args.out, progress=say(args.quiet))
    size = out.stat().st_size
    print(f"{out} ({size / 1e3:.0f} kB)")
    return 0
