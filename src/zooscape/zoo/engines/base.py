"""The engine protocol: run independent tasks (training groups, analysis jobs) and stream results to the driver.

An engine has one method, ``map(fn, tasks, on_event=None, ordered=True) -> Iterator[result]``. ``fn`` must be a
picklable (module-level) function and each task picklable. Inside ``fn``, code may call :func:`emit` to send
progress events (small picklable objects) to the driver, where the engine calls ``on_event(event)`` — this is how
workers report per-epoch metrics while the driver stays the single writer of the catalog.

Implementations: :class:`zooscape.zoo.engines.local.LocalEngine` (in-process or spawned worker processes with one
torch thread each) and :class:`zooscape.zoo.engines.ray_engine.RayEngine` (a Ray cluster; events through a Ray
queue actor). :func:`zooscape.zoo.engines.get_engine` resolves a name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Engine", "EngineError", "TaskOrder", "emit"]

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


class TaskOrder:
    """Releases task results in task order (``ordered=True``) or as they arrive; shared by every engine.

    Args:
        ordered: hold a result back until every earlier task's result has been released.
    """

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self._held: dict[int, Any] = {}
        self._next = 0

    def push(self, index: int, result: Any) -> list[Any]:
        """Record the result of task ``index``; return the results that may be released now, in order."""
        if not self.ordered:
            return [result]
        self._held[index] = result
        out = []
        while self._next in self._held:
            out.append(self._held.pop(self._next))
            self._next += 1
        return out
