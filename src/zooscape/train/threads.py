"""The thread policy: one torch thread per process, parallelism through worker processes.

A population already keeps a core busy with large, well-shaped operations; giving it more intra-op threads on a
machine that other work shares makes it wait for the slowest thread at every one of its many small operations
(measured in ``bench/RESULTS.md``: at ``--threads 2`` on a loaded 2-core machine an MLP population took 0.36x the
time of plain torch one model at a time). So the CLI and :func:`zooscape.zoo.train_zoo` choose threads
deliberately, whatever ``OMP_NUM_THREADS`` says:

- one torch thread per process by default;
- more parallelism through worker processes (``--workers N``, ``--workers auto`` = the cores this process may
  run on, ``os.sched_getaffinity``), each with its own thread;
- ``--threads N`` (``threads=N``) when you want N intra-op threads per process anyway.

:func:`train_population <zooscape.train.train_population>` itself leaves torch's setting alone (a library call
inside your program uses your setting). ``zooscape doctor`` reports the policy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["DEFAULT_THREADS", "describe_policy", "resolve_threads", "resolve_workers", "torch_threads",
           "usable_cores"]

#: torch intra-op threads per process unless asked otherwise.
DEFAULT_THREADS = 1


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, as set by ``taskset``, cgroups' cpusets or a batch
    scheduler), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | str) -> int:
    """``"auto"`` -> :func:`usable_cores`; an int >= 1 (or its decimal string) as given.

    Raises:
        ValueError: anything else (the message names the value).
    """
    if isinstance(workers, str):
        if workers.strip().lower() == "auto":
            return usable_cores()
        try:
            workers = int(workers)
        except ValueError:
            raise ValueError(f"workers must be an int >= 1 or 'auto', got {workers!r}") from None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 or 'auto', got {workers!r}")
    return workers


def resolve_threads(threads: int | None) -> int:
    """``None`` -> :data:`DEFAULT_THREADS` (the policy: one per process); an int >= 1 as given.

    Raises:
        ValueError: an int < 1 or a non-int.
    """
    if threads is None:
        return DEFAULT_THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1 (or None for the default of {DEFAULT_THREADS}), "
                         f"got {threads!r}")
    return threads


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run a block with ``torch.set_num_threads(resolve_threads(threads))`` and restore the previous setting.

    Yields:
        the thread count in effect inside the block.
    """
    import torch

    n = resolve_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def describe_policy(threads: int | None = None) -> dict[str, Any]:
    """What the policy chooses here (for ``zooscape doctor``): ``torch_threads_per_process``, ``workers_auto``
    (what ``--workers auto`` gives), ``usable_cores``, ``cpu_count`` and the environment's ``OMP_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` (which the policy overrides)."""
    return {
        "policy": "one torch thread per process; parallelism through worker processes",
        "torch_threads_per_process": resolve_threads(threads),
        "workers_auto": usable_cores(),
        "usable_cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }
