"""Pieces every ``zooscape`` command group uses: the group's parser and the progress printer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def add_group(subparsers: Any, name: str, help: str, description: str) -> tuple[argparse.ArgumentParser, Any]:
    """Add the command group ``name`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    Returns:
        ``(parser, commands)``: the group's parser (printed when no command is given) and the object to add its
        commands to with ``commands.add_parser(...)``.
    """
    p = subparsers.add_parser(name, help=help, description=description)
    p.set_defaults(_group_parser=p)
    return p, p.add_subparsers(title="commands", metavar="COMMAND")


def say(quiet: bool) -> Callable[[str], None]:
    """A progress printer (to stderr), or one that prints nothing if ``quiet``."""
    return (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr))
