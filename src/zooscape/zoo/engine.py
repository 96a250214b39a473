"""Engines run independent tasks (training groups, analysis jobs) and stream their results to the driver.

An engine has one method, ``map(fn, tasks, on_event=None, ordered=True) -> Iterator[result]``. ``fn`` must be a
picklable (module-level) function and each task picklable. Inside ``fn``, code may call :func:`emit` to send
progress events (small picklable objects) to the driver, where the engine calls ``on_event(event)`` — this is how
workers report per-epoch metrics while the driver stays the single writer of the catalog.

:class:`LocalEngine` runs tasks in the calling process (``workers=1``) or in ``workers`` spawned processes with
one torch thread each. A Ray engine can implement the same protocol (events through a Ray queue/actor).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Engine", "EngineError", "LocalEngine", "emit", "get_engine"]

T = TypeVar("T")
R = TypeVar("R")

_SINK: ContextVar[Callable[[Any], None] | None] = ContextVar("zooscape_engine_sink", default=None)


def emit(event: Any) -> None:
    """Send a progress event from inside a task to the driver (no-op when not running under an engine).

    Args:
        event: a small picklable object (e.g. a dict of metrics).
    """
    sink = _SINK.get()
    if sink is not None:
        sink(event)


class EngineError(RuntimeError):
    """A task raised or a worker process died."""


@runtime_checkable
class Engine(Protocol):
    """Runs ``fn(task)`` for every task; see the module docstring."""

    def map(
        self,
        fn: Callable[[T], R],
        tasks: Sequence[T],
        on_event: Callable[[Any], None] | None = None,
        ordered: bool = True,
    ) -> Iterator[R]:
        """Yield ``fn(task)`` for each task.

        Args:
            fn: picklable function of one task.
            tasks: picklable tasks.
            on_event: called in the driver for every :func:`emit` of a task, in emission order per task.
            ordered: yield results in task order (True) or as they complete (False).

        Returns:
            iterator of results.
        """
        ...


class LocalEngine:
    """Run tasks on this machine: in-process (``workers=1``) or in spawned worker processes.

    Args:
        workers: number of processes (1 = run in the calling process, no pickling).
        threads_per_worker: ``torch.set_num_threads`` in each worker process (workers > 1 only).
    """

    def __init__(self, workers: int = 1, threads_per_worker: int = 1) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker!r}")
        self.workers = workers
        self.threads_per_worker = threads_per_worker

    def __repr__(self) -> str:
        return f"LocalEngine(workers={self.workers})"

    def map(
        self,
        fn: Callable[[T], R],
        tasks: Sequence[T],
        on_event: Callable[[Any], None] | None = None,
        ordered: bool = True,
    ) -> Iterator[R]:
        """Yield ``fn(task)`` for each task (see :class:`Engine`).

        Args:
            fn: picklable function of one task.
            tasks: picklable tasks.
            on_event: driver-side handler of :func:`emit` events.
            ordered: yield in task order (True) or completion order (False).

        Returns:
            iterator of results.

        Raises:
            EngineError: a task raised (the worker's traceback is in the message) or a worker died.
        """
        tasks = list(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            return self._map_inline(fn, tasks, on_event)
        return self._map_processes(fn, tasks, on_event, ordered)

    @staticmethod
    def _map_inline(
        fn: Callable[[T], R], tasks: list[T], on_event: Callable[[Any], None] | None
    ) -> Iterator[R]:
        for task in tasks:
            token = _SINK.set(on_event)
            try:
                result = fn(task)
            finally:
                _SINK.reset(token)
            yield result

    def _map_processes(
        self,
        fn: Callable[[T], R],
        tasks: list[T],
        on_event: Callable[[Any], None] | None,
        ordered: bool,
    ) -> Iterator[R]:
        ctx = mp.get_context("spawn")
        task_q = ctx.Queue()
        result_q = ctx.Queue()
        for i, task in enumerate(tasks):
            task_q.put((i, fn, task))
        n_workers = min(self.workers, len(tasks))
        for _ in range(n_workers):
            task_q.put(None)
        procs = [
            ctx.Process(
                target=_worker_main,
                args=(task_q, result_q, os.getpid(), self.threads_per_worker),
                daemon=True,
                name=f"zooscape-worker-{k}",
            )
            for k in range(n_workers)
        ]
        for p in procs:
            p.start()
        pending: dict[int, R] = {}
        next_index = 0
        done = 0
        try:
            while done < len(tasks):
                try:
                    msg = result_q.get(timeout=1.0)
                except queue.Empty:
                    dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                    if dead:
                        raise EngineError(
                            f"worker {dead[0].name} died with exit code {dead[0].exitcode}"
                        ) from None
                    continue
                kind, index, payload = msg
                if kind == "event":
                    if on_event is not None:
                        on_event(payload)
                elif kind == "error":
                    raise EngineError(f"task {index} failed in a worker:\n{payload}")
                else:
                    done += 1
                    if not ordered:
                        yield payload
                        continue
                    pending[index] = payload
                    while next_index in pending:
                        yield pending.pop(next_index)
                        next_index += 1
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=5)
            task_q.close()
            result_q.close()


def _worker_main(task_q: Any, result_q: Any, parent_pid: int, threads: int) -> None:
    """Worker loop: run tasks, forward events/results; exit if the driver disappears."""
    import torch

    torch.set_num_threads(threads)

    def check_parent() -> None:
        if os.getppid() != parent_pid:  # the driver was killed: stop writing files
            os._exit(3)

    while True:
        check_parent()
        item = task_q.get()
        if item is None:
            return
        index, fn, task = item

        def sink(event: Any, _index: int = index) -> None:
            check_parent()
            result_q.put(("event", _index, event))

        token = _SINK.set(sink)
        try:
            result = fn(task)
        except BaseException:  # noqa: BLE001 - forwarded to the driver
            result_q.put(("error", index, traceback.format_exc()))
            continue
        finally:
            _SINK.reset(token)
        result_q.put(("result", index, result))


def get_engine(engine: str | Engine = "local", workers: int = 1) -> Engine:
    """Resolve an engine name or instance.

    Args:
        engine: ``"local"`` or an object with a ``map`` method.
        workers: worker processes for ``"local"``.

    Returns:
        Engine.

    Raises:
        ValueError: unknown engine name.
    """
    if isinstance(engine, str):
        if engine == "local":
            return LocalEngine(workers=workers)
        raise ValueError(f"engine must be 'local' or an Engine instance, got {engine!r} (ray: not yet available)")
    if not callable(getattr(engine, "map", None)):
        raise ValueError(f"engine {engine!r} has no map method")
    return engine
