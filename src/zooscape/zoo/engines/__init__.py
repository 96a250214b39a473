"""Execution engines of zoo-wide work: the :class:`Engine` protocol, the local engine and the Ray engine.

``base`` defines the protocol and :func:`emit`; ``local`` and ``ray_engine`` implement it; this package's
:func:`get_engine` resolves an engine by name (the Ray engine is imported only when asked for).
"""

from __future__ import annotations

from typing import Any

from zooscape.zoo.engines.base import Engine, EngineError, emit
from zooscape.zoo.engines.local import LocalEngine

__all__ = ["Engine", "EngineError", "LocalEngine", "emit", "get_engine"]


def get_engine(engine: str | Engine = "local", workers: int = 1, **options: Any) -> Engine:
    """Resolve an engine name or instance.

    Args:
        engine: ``"local"``, ``"ray"`` (:class:`zooscape.zoo.engines.ray_engine.RayEngine`, needs the ``ray`` extra) or
            an object with a ``map`` method.
        workers: worker processes for ``"local"`` (must be 1 for ``"ray"``: the cluster's resources decide).
        options: keyword arguments of the engine's constructor (e.g. ``address``, ``num_cpus``, ``num_gpus``
            for ``"ray"``; ``threads_per_worker`` for ``"local"``).

    Returns:
        Engine.

    Raises:
        ValueError: unknown engine name, or options that the engine does not take.
        RuntimeError: ``"ray"`` without ``ray`` installed (the message says how to install it).
    """
    if isinstance(engine, str):
        if engine == "local":
            unknown = sorted(set(options) - {"threads_per_worker"})
            if unknown:
                raise ValueError(f"options {unknown} do not apply to the local engine (only threads_per_worker)")
            return LocalEngine(workers=workers, **options)
        if engine == "ray":
            if workers != 1:
                raise ValueError(
                    f"workers={workers} applies to the local engine only; on Ray the cluster's resources and the "
                    "per-task num_cpus/num_gpus decide how many tasks run at once"
                )
            from zooscape.zoo.engines.ray_engine import RayEngine

            return RayEngine(**options)
        raise ValueError(f"engine must be 'local', 'ray' or an Engine instance, got {engine!r}")
    if options:
        raise ValueError(f"engine options {sorted(options)} given together with an engine instance {engine!r}")
    if not callable(getattr(engine, "map", None)):
        raise ValueError(f"engine {engine!r} has no map method")
    return engine
