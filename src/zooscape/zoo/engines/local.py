"""The local engine: tasks in the calling process (``workers=1``) or in spawned worker processes.

Each worker process runs with one torch thread by default (``threads_per_worker``), so parallelism comes from
processes, never from oversubscribed threads. See :mod:`zooscape.zoo.engines.base` for the protocol.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from zooscape.zoo.engines.base import _SINK, EngineError, TaskOrder

__all__ = ["LocalEngine"]

T = TypeVar("T")
R = TypeVar("R")


class _Pool:
    """Spawned worker processes sharing one task queue and one result queue."""

    def __init__(self, workers: int, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.task_q = ctx.Queue()
        self.result_q = ctx.Queue()
        self.procs = [
            ctx.Process(
                target=_worker_main,
                args=(self.task_q, self.result_q, os.getpid(), threads),
                daemon=True,
                name=f"zooscape-worker-{k}",
            )
            for k in range(workers)
        ]
        for p in self.procs:
            p.start()

    def dead_worker(self) -> mp.process.BaseProcess | None:
        return next((p for p in self.procs if not p.is_alive()), None)

    def close(self) -> None:
        for _ in self.procs:
            try:
                self.task_q.put(None)
            except (OSError, ValueError):  # pragma: no cover - queue already broken
                break
        for p in self.procs:
            p.join(timeout=2)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        self.task_q.close()
        self.result_q.close()

    def terminate(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
        self.task_q.close()
        self.result_q.close()


class LocalEngine:
    """Run tasks on this machine: in-process (``workers=1``) or in spawned worker processes.

    Used as a context manager (``with LocalEngine(workers=4) as engine: ...``) the worker processes are started
    once and reused by every ``map`` call (each process pays ``import torch`` only once); otherwise each
    ``map`` call starts and stops its own workers.

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
        self._pool: _Pool | None = None
        self._keep = False
        self._call = 0

    def __repr__(self) -> str:
        return f"LocalEngine(workers={self.workers})"

    def __enter__(self) -> LocalEngine:
        self._keep = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._keep = False
        self.close()

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

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
            EngineError: a task raised in a worker (the worker's traceback is in the message) or a worker died.
                In-process (``workers=1``) the task's own exception propagates unchanged.
        """
        tasks = list(tasks)
        if self.workers == 1 or (len(tasks) <= 1 and self._pool is None):
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
        if self._pool is None:
            n = self.workers if self._keep else min(self.workers, len(tasks))
            self._pool = _Pool(n, self.threads_per_worker)
        pool = self._pool
        self._call += 1
        call = self._call
        for i, task in enumerate(tasks):
            pool.task_q.put((call, i, fn, task))
        order = TaskOrder(ordered)
        done = 0
        finished = False
        try:
            while done < len(tasks):
                try:
                    msg = pool.result_q.get(timeout=1.0)
                except queue.Empty:
                    dead = pool.dead_worker()
                    if dead is not None:
                        raise EngineError(f"worker {dead.name} died with exit code {dead.exitcode}") from None
                    continue
                kind, msg_call, index, payload = msg
                if msg_call != call:  # pragma: no cover - left over from an abandoned call
                    continue
                if kind == "event":
                    if on_event is not None:
                        on_event(payload)
                elif kind == "error":
                    raise EngineError(f"task {index} failed in a worker:\n{payload}")
                else:
                    done += 1
                    yield from order.push(index, payload)
            finished = True
        finally:
            if not finished:  # error or abandoned iterator: workers may still run our tasks
                self._pool = None
                pool.terminate()
            elif not self._keep:
                self.close()


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
        call, index, fn, task = item

        def sink(event: Any, _call: int = call, _index: int = index) -> None:
            check_parent()
            result_q.put(("event", _call, _index, event))

        token = _SINK.set(sink)
        try:
            result = fn(task)
        except BaseException:  # noqa: BLE001 - forwarded to the driver
            result_q.put(("error", call, index, traceback.format_exc()))
            continue
        finally:
            _SINK.reset(token)
        result_q.put(("result", call, index, result))
