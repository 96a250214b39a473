"""The ``zooscape`` command line.

Commands are grouped (``zooscape zoo train ...``). A group is a module ``zooscape.cli.<group>`` exposing
``add_parser(subparsers)``, which adds its parser to ``subparsers`` and sets ``func`` (a callable taking the
parsed ``argparse.Namespace`` and returning an exit code) on every leaf command with ``set_defaults(func=...)``.
To add a group, write the module and append its name to :data:`COMMAND_GROUPS`. Group modules should import
heavy libraries (torch, pandas) inside their command functions, so that ``--help`` stays fast.

Exit codes: 0 success, 1 runtime/user error (message on stderr), 2 invalid spec or usage.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from zooscape import __version__

__all__ = ["COMMAND_GROUPS", "build_parser", "main", "run"]

#: Modules that contribute command groups (each exposes ``add_parser(subparsers)``).
COMMAND_GROUPS: list[str] = [
    "zooscape.cli.zoo",
    "zooscape.cli.lmc",
    "zooscape.cli.metrics",
    "zooscape.cli.curve",
    "zooscape.cli.predict",
    "zooscape.cli.doctor",
    "zooscape.cli.align",
    "zooscape.cli.sparsify",
    "zooscape.cli.phase",
    "zooscape.cli.report",
]

#: Exceptions reported as ``error: <message>`` with exit code 1 (anything else is a bug: full traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    KeyError,
    ValueError,
    RuntimeError,
    PermissionError,
    OSError,  # disk full, not a directory, read-only file system, ...: the message names the file
)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``zooscape`` parser with every group of :data:`COMMAND_GROUPS`.

    Returns:
        argparse.ArgumentParser.
    """
    parser = argparse.ArgumentParser(
        prog="zooscape",
        description="Generate, store and analyse model zoos (populations of neural networks).",
    )
    parser.add_argument("--version", action="version", version=f"zooscape {__version__}")
    subparsers = parser.add_subparsers(title="command groups", metavar="GROUP")
    for name in COMMAND_GROUPS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zooscape`` command.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        exit code (0 ok, 1 error, 2 invalid spec/usage).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a group without a command: show that group's help (or the top-level help)
        getattr(args, "_group_parser", parser).print_help(sys.stderr)
        return 2
    from zooscape.zoo.spec import SpecError

    try:
        return int(func(args) or 0)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 1


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``zooscape`` command and end the process with its exit code (the console script's entry point).

    Once the command has returned, the process ends as the interpreter would end it -- other threads finished,
    ``atexit`` handlers run, Python's and C's standard streams flushed -- but without then tearing down every
    imported module one by one: for a process that imported torch that teardown alone takes ~0.4 s (measured in
    bench/RESULTS.md), a sixth of ``zooscape zoo train`` on a small zoo. Every file the commands write is closed
    (and renamed into place) before they return, so nothing is left unwritten. Falls back to an ordinary
    ``sys.exit`` while a non-daemon thread still runs. Exceptions other than the user errors :func:`main`
    reports (bugs: full traceback) and ``SystemExit`` (``--help``, usage errors) end the process the ordinary way.

    Args:
        argv: arguments (default ``sys.argv[1:]``).
    """
    _exit_now(main(argv))


def _exit_now(code: int) -> NoReturn:
    """``sys.exit(code)`` without the interpreter's module teardown (see :func:`run`)."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)  # CPython's own hook (what finalisation calls)
    if others or run_exitfuncs is None:
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (``zooscape ... | head``) or stream: nothing left to save
            pass
    _flush_c_stdio()
    os._exit(code)


def _flush_c_stdio() -> None:
    """``fflush(NULL)``: output that native code (torch, oneDNN) buffered in C's stdio, lost by ``os._exit``."""
    ctypes = sys.modules.get("ctypes")  # imported by torch; a process that never loaded it has nothing there
    if ctypes is None:
        return
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library handle on this platform
        pass
