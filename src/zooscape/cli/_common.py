"""Pieces every ``zooscape`` command group uses: the group's parser and the progress printer."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Import a command's heavy modules (torch and what needs it) without the garbage collector's passes over them.

    Importing torch creates ~1.7e5 long-lived objects and next to no garbage, yet it sets off full collections
    during the import and again soon after it, each traversing every object: 30-130 ms apiece, ~0.2 s of a small
    ``zoo train`` (bench/RESULTS.md). Inside the block the collector is off; on leaving it, everything alive is
    moved to the permanent generation (``gc.freeze``), which later collections skip (those objects are still freed
    by reference counting as usual), and the collector is switched back on. For commands (one per process) only.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


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


# ------------------------------------------------------------------------------------------ shared options
# The one vocabulary of the command line (docs/glossary.md): every group adds its common options through these
# helpers, so the same thing has the same name everywhere. Old spellings stay for one release as hidden aliases
# that print a deprecation warning.


class _DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's ``dest`` and warns once."""

    def __init__(self, option_strings: Any, dest: str, new: str = "", store_const: Any = None, **kwargs: Any):
        self.new = new
        self.store_const = store_const
        if store_const is not None:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated and will be removed in the next release; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, self.store_const if self.store_const is not None else values)


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, *, flag: bool = False,
                     type: Callable[[str], Any] | None = None) -> None:  # noqa: A002
    """Accept ``old`` as a hidden, warning alias of ``new`` (``flag``: a store-true option)."""
    kwargs: dict[str, Any] = {"dest": dest, "new": new, "default": argparse.SUPPRESS}
    if flag:
        kwargs["store_const"] = True
    elif type is not None:
        kwargs["type"] = type
    p.add_argument(old, action=_DeprecatedAlias, **kwargs)


def add_quiet(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar and no progress messages (old spelling ``--no-progress``)."""
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")
    deprecated_alias(p, "--no-progress", "--quiet", "quiet", flag=True)


def add_out(p: argparse.ArgumentParser, *, required: bool = False, metavar: str = "DIR", help: str) -> None:  # noqa: A002
    """``--out PATH``: where a command writes (old spelling ``--output``)."""
    p.add_argument("--out", required=required, default=None, metavar=metavar, help=help)
    deprecated_alias(p, "--output", "--out", "out")


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device``: torch device, ``auto`` by default (CUDA, else MPS, else CPU)."""
    p.add_argument("--device", default="auto",
                   help="torch device: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, ... (default auto)")


def add_n_points(p: argparse.ArgumentParser, default: int | None, help: str) -> None:  # noqa: A002
    """``--n-points N``: points along a path or curve (old spelling ``--num-points``)."""
    p.add_argument("--n-points", type=int, default=default, metavar="N", help=help)
    deprecated_alias(p, "--num-points", "--n-points", "n_points", type=int)


def add_splits(p: argparse.ArgumentParser, default: str, help: str | None = None) -> None:  # noqa: A002
    """``--splits A,B``: comma-separated data splits (old spelling ``--split``)."""
    p.add_argument("--splits", default=default, metavar="SPLIT,...",
                   help=help or f"comma-separated data splits (default {default})")
    deprecated_alias(p, "--split", "--splits", "splits")


def split_list(text: str) -> tuple[str, ...]:
    """``"train, test"`` -> ``("train", "test")``."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _workers(text: str) -> int:
    """``--workers``: an int >= 1, or ``auto`` = the cores this process may use
    (:func:`zooscape.train.threads.usable_cores`)."""
    if text.strip().lower() == "auto":
        from zooscape.train.threads import usable_cores  # (imported only when asked: keeps --help fast)

        return usable_cores()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'auto', got {value}")
    return value


def add_workers_engine(p: argparse.ArgumentParser, *, chunk_size: bool = False, what: str = "the tasks") -> None:
    """``--workers N`` (or ``auto``) and the engine options (``--engine local|ray``, ``--address``, Ray resources)."""
    p.add_argument("--workers", type=_workers, default=1, metavar="N",
                   help="worker processes of the local engine (default 1: in-process; auto: one per usable core)")
    g = p.add_argument_group("engine", f"where {what} run (see docs/scaling.md)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this machine (default); ray: Ray tasks (needs pip install \"zooscape[ray]\")")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster address (auto, HOST:PORT, ray://HOST:10001); default: RAY_ADDRESS or a new "
                        "local Ray instance")
    if chunk_size:
        g.add_argument("--chunk-size", type=int, default=None, metavar="N",
                       help="models per task = largest training population (default: the spec's [population] "
                            "max_size); part of the zoo: re-runs must pass the same value")
    g.add_argument("--cpus-per-task", type=float, default=1.0, metavar="C", help="Ray: CPUs per task (default 1)")
    g.add_argument("--gpus-per-task", type=float, default=0.0, metavar="G",
                   help="Ray: GPUs per task, fractions share a GPU (default 0)")
    g.add_argument("--max-retries", type=int, default=3, metavar="K",
                   help="Ray: re-runs of a task whose worker died (default 3)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """Engine keyword arguments from the command line; Ray-only options with ``--engine local`` are an error."""
    ray_only = {"--address": args.address is not None, "--cpus-per-task": args.cpus_per_task != 1.0,
                "--gpus-per-task": args.gpus_per_task != 0.0, "--max-retries": args.max_retries != 3}
    if args.engine != "ray":
        given = [k for k, v in ray_only.items() if v]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --engine ray")
        return {}
    return {"address": args.address, "num_cpus": args.cpus_per_task, "num_gpus": args.gpus_per_task,
            "max_retries": args.max_retries}


# ------------------------------------------------------------------------------------------ experiment tracking


def add_log(p: argparse.ArgumentParser) -> None:
    """``--log none|tensorboard|wandb|mlflow``, ``--log-dir DIR``, ``--wandb-mode online|offline|disabled``
    (zooscape.zoo.tracking: one grouped run per command; a logger failure never fails the command)."""
    g = p.add_argument_group("experiment tracking", "mirror per-model metrics to a tracking tool (the catalog "
                                                    "stays the source of truth; see docs/report.md)")
    g.add_argument("--log", choices=("none", "tensorboard", "wandb", "mlflow"), default="none",
                   help="tracking backend (default none); needs pip install \"zooscape[tensorboard|wandb|mlflow]\"")
    g.add_argument("--log-dir", default=None, metavar="DIR",
                   help="where the backend writes (default ZOO/logs/<backend>)")
    g.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default="offline",
                   help="Weights & Biases mode (default offline: no network; 'wandb sync' uploads later)")


def tracker(args: argparse.Namespace, zoo_dir: Any, command: str, config: dict[str, Any] | None = None) -> Any:
    """The tracker chosen by ``--log`` for a command on the zoo ``zoo_dir`` (started on its first point).

    Returns:
        :class:`zooscape.zoo.tracking.Tracker` (use as a context manager).
    """
    from pathlib import Path

    from zooscape.zoo.tracking import make_tracker

    log_dir = Path(args.log_dir) if args.log_dir else Path(zoo_dir) / "logs" / args.log
    run = f"{Path(zoo_dir).name}-{command}"
    return make_tracker(args.log, log_dir, run, config=config, wandb_mode=args.wandb_mode,
                        project=Path(zoo_dir).name, lazy=True)


class logged_analyses:  # noqa: N801 - used as ``with logged_analyses(args, dir, "metrics-run"):``
    """Context manager: log the analysis rows a zoo-wide command stores (rows added to the catalog meanwhile)."""

    def __init__(self, args: argparse.Namespace, zoo_dir: Any, command: str) -> None:
        self.args, self.zoo_dir, self.command = args, zoo_dir, command
        self.start = None

    def _max_id(self) -> int:
        from zooscape.zoo.catalog import Catalog
        from zooscape.zoo.store import is_zoo

        if not is_zoo(self.zoo_dir):
            return 0
        from pathlib import Path

        with Catalog(Path(self.zoo_dir) / "catalog.sqlite", readonly=True) as catalog:
            return int(catalog.query("SELECT COALESCE(MAX(id), 0) FROM analyses")[0][0])

    def __enter__(self) -> logged_analyses:
        if self.args.log != "none":
            self.start = self._max_id()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if self.start is None or exc_type is not None:
            return
        from pathlib import Path

        from zooscape.zoo.catalog import Catalog

        with Catalog(Path(self.zoo_dir) / "catalog.sqlite", readonly=True) as catalog:
            rows = catalog.query("SELECT model_id, other_id, epoch, metric, value FROM analyses WHERE id > ?"
                                 " ORDER BY id", (self.start,))
        names = ("model_id", "other_id", "epoch", "metric", "value")
        with tracker(self.args, self.zoo_dir, self.command) as t:
            t.log_results([dict(zip(names, r)) for r in rows])
