"""The Ray engine: zoo tasks (training population chunks, analysis jobs) as Ray tasks on a cluster.

:class:`RayEngine` implements the :class:`~zooscape.zoo.engines.Engine` protocol, so ``train_zoo`` and the
analysis drivers (``zooscape.studies.metrics.run_metrics``) run on Ray unchanged::

    from zooscape.zoo import train_zoo
    from zooscape.zoo.engines.ray_engine import RayEngine

    with RayEngine(address="auto", num_cpus=1, num_gpus=0.25) as engine:
        train_zoo("configs/mzd_cnn_s_digits.toml", "/shared/zoos/mzd", engine=engine, chunk_size=64)

How it works:

- One Ray task per engine task (for training: one population chunk of at most ``chunk_size`` models, i.e. one
  zoo group), submitted with ``num_cpus``/``num_gpus``/``resources``/``memory`` per task and ``max_retries``.
  The Ray scheduler packs them onto the cluster; a GPU task sees only its GPU (``CUDA_VISIBLE_DEVICES``), so
  ``device="auto"`` picks it.
- :func:`~zooscape.zoo.engines.emit` inside a task sends ``(call, index, attempt, seq, event)`` to one Ray
  queue actor (``ray.util.queue.Queue``, 0 CPUs) without waiting: a task that blocked in ``ray.get`` would
  lend its CPU back to Ray, which then starts extra worker processes (each paying ``import torch``). The
  driver polls the queue every ``poll_interval`` seconds, puts each task attempt's events back in ``seq``
  order and calls ``on_event`` there, so the driver stays the single catalog writer. A task returns its
  attempt id and event count with its result, and the driver hands the result out only after all of that
  attempt's events: every event of a task precedes its result. Events that arrive for a task whose result
  was already handled (from an earlier, killed attempt) are dropped.
- Fault tolerance comes from the tasks, not from Ray state: a training task writes its checkpoint shards and its
  resume file after every epoch, so when its worker process dies (OOM killer, node loss, SIGKILL) Ray runs the
  task again (up to ``max_retries`` times) and the new attempt resumes from the last epoch's resume file,
  replaying the catalog rows of every finished epoch (upserts: nothing duplicated). When the driver dies, Ray
  kills the workers of its job ("owner died"); re-running the driver resumes every group from its resume file.
  Exceptions raised by a task itself are not retried (they are deterministic): they become
  :class:`~zooscape.zoo.engines.EngineError` in the driver.

Checkpoints are written by the tasks straight into the zoo directory, which must therefore be on a file system
that every Ray node mounts at the same path (or a single-node cluster). ``ray`` is an optional dependency:
``pip install "zooscape[ray]"``.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from zooscape.zoo.engines.base import _SINK, EngineError, TaskOrder

__all__ = ["INSTALL_HINT", "RayEngine", "import_ray"]

T = TypeVar("T")
R = TypeVar("R")

#: Message of the error raised when the Ray engine is requested but ``ray`` cannot be imported.
INSTALL_HINT = (
    "the Ray engine needs the optional dependency 'ray': pip install \"zooscape[ray]\" "
    "(in a checkout: pip install -e \".[ray]\")"
)


def import_ray() -> Any:
    """Import ``ray`` or explain how to install it.

    Returns:
        the ``ray`` module.

    Raises:
        RuntimeError: ``ray`` is not installed (the message says how to install the extra).
    """
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


def _run_task(
    fn: Callable[[Any], Any], task: Any, events: Any, call: int, index: int, threads: int
) -> tuple[str, int, Any]:
    """Body of every Ray task: route :func:`emit` to the driver's event queue, then run ``fn(task)``.

    Args:
        fn: the engine task function.
        task: its argument.
        events: the driver's ``ray.util.queue.Queue``.
        call: number of the ``map`` call (stale events of earlier calls are ignored by the driver).
        index: position of the task in the call.
        threads: torch intra-op threads for this worker process (0 = leave as is).

    Returns:
        ``(attempt id, number of events emitted, fn(task))``.
    """
    if threads > 0:
        import torch

        if torch.get_num_threads() != threads:  # a Ray worker process is ours while it runs our tasks
            torch.set_num_threads(threads)

    attempt = uuid.uuid4().hex
    sent = 0

    def sink(event: Any) -> None:
        nonlocal sent
        # fire and forget (see the module docstring); the driver restores the order with `sent`
        events.actor.put_nowait.remote((call, index, attempt, sent, event))
        sent += 1

    token = _SINK.set(sink)
    try:
        result = fn(task)
    finally:
        _SINK.reset(token)
    return attempt, sent, result


class RayEngine:
    """Run engine tasks as Ray tasks (see the module docstring).

    Ray is started (or connected to) lazily on the first :meth:`map`: if Ray is already initialised in this
    process it is used as is; otherwise ``ray.init(address=address, include_dashboard=False, **init_options)``
    — ``address=None`` starts a local Ray instance (or joins ``RAY_ADDRESS``), ``"auto"`` joins the cluster of
    ``ray start`` on this machine, ``"ray://host:10001"`` or ``"host:6379"`` a remote one. Anonymous usage
    statistics are switched off (``RAY_USAGE_STATS_ENABLED=0``) unless the environment says otherwise.

    Args:
        address: Ray cluster address (see above).
        num_cpus: CPUs reserved per task (fractions allowed).
        num_gpus: GPUs per task; fractions (e.g. 0.25) share one GPU between several population chunks.
        resources: custom Ray resources per task, e.g. ``{"big_mem_node": 1}``.
        memory: bytes of memory reserved per task (None = no reservation).
        max_retries: times Ray re-runs a task whose worker process died (-1 = forever). Exceptions raised by
            a task are never retried.
        threads_per_task: torch threads in the worker while it runs a task (default ``max(1, floor(num_cpus))``;
            0 = leave Ray's setting).
        poll_interval: seconds between polls of the event queue in the driver.
        event_timeout: seconds the driver waits, once a task's result is in, for that task's last events
            before it gives up with :class:`~zooscape.zoo.engines.EngineError`.
        init_options: extra ``ray.init`` keywords when this engine starts Ray (e.g. ``num_cpus`` of a local
            instance, ``object_store_memory``, ``runtime_env``).

    Raises:
        RuntimeError: ``ray`` is not installed.
        ValueError: a resource setting is negative or not a number.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        resources: Mapping[str, float] | None = None,
        memory: int | None = None,
        max_retries: int = 3,
        threads_per_task: int | None = None,
        poll_interval: float = 0.1,
        event_timeout: float = 120.0,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        numbers = (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("poll_interval", poll_interval),
                   ("event_timeout", event_timeout))
        for name, value in numbers:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if poll_interval == 0:
            raise ValueError("poll_interval must be > 0, got 0")
        if not isinstance(max_retries, int) or max_retries < -1:
            raise ValueError(f"max_retries must be an int >= -1 (-1 = retry forever), got {max_retries!r}")
        if memory is not None and (not isinstance(memory, int) or memory <= 0):
            raise ValueError(f"memory must be a positive number of bytes, got {memory!r}")
        if threads_per_task is None:
            threads_per_task = max(1, int(num_cpus))
        if not isinstance(threads_per_task, int) or threads_per_task < 0:
            raise ValueError(f"threads_per_task must be an int >= 0, got {threads_per_task!r}")
        for key, value in (resources or {}).items():
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"resources[{key!r}] must be a number >= 0, got {value!r}")
        self._ray = import_ray()
        self.address = address
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.resources = dict(resources or {})
        self.memory = memory
        self.max_retries = max_retries
        self.threads_per_task = threads_per_task
        self.poll_interval = float(poll_interval)
        self.event_timeout = float(event_timeout)
        self.init_options = dict(init_options or {})
        self._started_ray = False
        self._events: Any = None
        self._remote: Any = None
        self._call = 0

    def __repr__(self) -> str:
        gpus = f", num_gpus={self.num_gpus:g}" if self.num_gpus else ""
        return f"RayEngine(address={self.address!r}, num_cpus={self.num_cpus:g}{gpus})"

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect to (or start) Ray and create the event queue; called by :meth:`map` when needed."""
        ray = self._ray
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            options = {"include_dashboard": False, **self.init_options}
            ray.init(address=self.address, **options)
            self._started_ray = True
        if self._events is None:
            from ray.util.queue import Queue

            self._events = Queue(actor_options={"num_cpus": 0})
        if self._remote is None:
            self._remote = ray.remote(_run_task)

    def close(self) -> None:
        """Remove the event queue and shut Ray down if this engine started it."""
        ray = self._ray
        if self._events is not None:
            events, self._events = self._events, None
            if ray.is_initialized():
                try:
                    events.shutdown(force=True)
                except Exception:  # noqa: BLE001 - the cluster may already be gone
                    pass
        self._remote = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def task_options(self) -> dict[str, Any]:
        """Ray options of every task (``num_cpus``, ``num_gpus``, ``max_retries``, ``resources``, ``memory``).

        Returns:
            dict for ``ray.remote(...).options(**options)``.
        """
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                   "max_retries": self.max_retries, "retry_exceptions": False}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.memory is not None:
            options["memory"] = self.memory
        return options

    # ------------------------------------------------------------------------------------------- map

    def map(
        self,
        fn: Callable[[T], R],
        tasks: Sequence[T],
        on_event: Callable[[Any], None] | None = None,
        ordered: bool = True,
    ) -> Iterator[R]:
        """Run ``fn(task)`` for every task as a Ray task and yield the results (see :class:`Engine`).

        All tasks are submitted at once (Ray queues what does not fit the cluster); without tasks Ray is not
        started.

        Args:
            fn: picklable function of one task (module-level functions are shipped by reference: their
                package must be importable on every node).
            tasks: picklable tasks.
            on_event: driver-side handler of :func:`~zooscape.zoo.engines.emit` events; all events of a task
                are handled before its result is yielded.
            ordered: yield in task order (True) or completion order (False).

        Returns:
            iterator of results. If it is closed early or a task fails, the remaining tasks are cancelled.

        Raises:
            EngineError: a task raised (the remote traceback is in the message) or its worker died more than
                ``max_retries`` times.
        """
        tasks = list(tasks)
        if not tasks:  # e.g. re-running a finished zoo: no reason to start Ray
            return iter(())
        self.start()
        return self._map(fn, tasks, on_event, ordered)

    def _drain(self) -> list[tuple[Any, ...]]:
        events = self._events
        n = events.qsize()
        return events.get_nowait_batch(n) if n else []

    def _map(
        self,
        fn: Callable[[T], R],
        tasks: list[T],
        on_event: Callable[[Any], None] | None,
        ordered: bool,
    ) -> Iterator[R]:
        ray = self._ray
        from ray.exceptions import RayError, RayTaskError

        self._call += 1
        call = self._call
        remote = self._remote.options(**self.task_options())
        fn_ref = ray.put(fn)
        refs = [remote.remote(fn_ref, task, self._events, call, i, self.threads_per_task)
                for i, task in enumerate(tasks)]
        index_of = {ref: i for i, ref in enumerate(refs)}
        handled: set[int] = set()  # tasks whose results are out: later events are stale
        next_seq: dict[tuple[int, str], int] = {}
        held: dict[tuple[int, str], dict[int, Any]] = {}

        def ingest() -> None:
            for event_call, index, attempt, seq, event in self._drain():
                if event_call != call or index in handled:
                    continue
                key = (index, attempt)
                buf = held.setdefault(key, {})
                buf[seq] = event
                n = next_seq.get(key, 0)
                while n in buf:
                    event = buf.pop(n)
                    n += 1
                    next_seq[key] = n
                    if on_event is not None:
                        on_event(event)

        def collect(ref: Any) -> R:
            index = index_of.pop(ref)
            try:
                attempt, n_events, value = ray.get(ref)
            except RayTaskError as exc:
                raise EngineError(f"task {index} failed on Ray:\n{exc}") from None
            except RayError as exc:
                raise EngineError(
                    f"task {index} could not complete on Ray (its worker process died and "
                    f"max_retries={self.max_retries} retries are used up, or its node was lost): "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            deadline = time.monotonic() + self.event_timeout
            while next_seq.get((index, attempt), 0) < n_events:
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"task {index} finished but only {next_seq.get((index, attempt), 0)} of its {n_events} "
                        f"events reached the driver within {self.event_timeout:g} s"
                    )
                time.sleep(min(self.poll_interval, 0.01))
                ingest()
            handled.add(index)
            for key in [k for k in held if k[0] == index]:
                del held[key]
            return value

        pending = list(refs)
        order = TaskOrder(ordered)
        finished = False
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=self.poll_interval)
                if ready and pending:
                    more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                    ready += more
                ingest()
                for ref in sorted(ready, key=index_of.__getitem__):
                    index = index_of[ref]
                    yield from order.push(index, collect(ref))
            finished = True
        finally:
            if not finished:  # error or abandoned iterator: stop tasks that would still write files
                for ref in pending:
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # noqa: BLE001 - already finished or gone
                        pass
