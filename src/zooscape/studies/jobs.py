"""The driver side of zoo analysis jobs: what is stored already, and committing task results as they arrive.

Shared by ``zooscape metrics run`` (:func:`zooscape.studies.metrics.run_metrics`) and ``zooscape curve pairs``
(:func:`zooscape.studies.curves.curve_pairs`). Their tasks are plain picklable descriptions; a task function
runs wherever the :class:`~zooscape.zoo.engines.Engine` puts it (in-process, a worker process, a Ray task), only
reads the zoo, and returns a dict whose ``"rows"`` are :meth:`~zooscape.zoo.catalog.Catalog.add_analyses` rows.
The driver holds the zoo's write lock for the whole run and commits each task's rows in one transaction as soon
as the task finishes, so an interrupted run keeps every finished task; a task counts as done when its *marker*
row is stored with exactly the same ``params``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscape.zoo.catalog import Catalog
from zooscape.zoo.engines import Engine
from zooscape.zoo.store import ZooStore, is_zoo

__all__ = ["CellTask", "PairTask", "cell_groups", "commit_task_results", "experiment_records", "stored_keys",
           "zoo_store"]


@dataclass
class PairTask:
    """One seed pair of a grid cell at one epoch, for a pairwise study's task function (picklable).

    Args:
        root: zoo directory.
        model_id: first model of the pair (the smaller id).
        other_id: second model.
        epoch: checkpointed epoch of both models.
        cell: index of the grid cell.
        params: every setting of the study (stored with its rows).
        device: torch device.
    """

    root: str
    model_id: str
    other_id: str
    epoch: int
    cell: int
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"


@dataclass
class CellTask:
    """The seed pairs of one grid cell still to compute at one epoch, for a study's per-cell task (picklable).

    Args:
        root: zoo directory.
        cell: index of the grid cell.
        epoch: checkpointed epoch of every model.
        pairs: ``[(model_id, other_id), ...]`` in plan order.
        params: every setting of the study (stored with its rows).
        device: torch device.
    """

    root: str
    cell: int
    epoch: int
    pairs: list[tuple[str, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"


def cell_groups(tasks: Sequence[PairTask]) -> list[tuple[PairTask, list[tuple[str, str]]]]:
    """Group pair tasks by (cell, epoch), in the order of each group's first pair (for one task per cell).

    Args:
        tasks: pair tasks.

    Returns:
        ``[(first task of the group, [(model_id, other_id), ...]), ...]``.
    """
    grouped: dict[tuple[int, int], tuple[PairTask, list[tuple[str, str]]]] = {}
    for t in tasks:
        grouped.setdefault((t.cell, t.epoch), (t, []))[1].append((t.model_id, t.other_id))
    return list(grouped.values())


def experiment_records(catalog: Catalog, experiment: str) -> list[dict[str, Any]]:
    """The ``analyses`` rows of one study as flat records, one per (model, other, epoch, settings).

    Args:
        catalog: the zoo's catalog.
        experiment: the ``params["experiment"]`` of the study's rows.

    Returns:
        dicts with ``model_id``, ``other_id``, ``epoch``, ``params`` and one entry per stored metric (NULL as NaN),
        in the order the rows were stored.
    """
    rows = catalog.query("SELECT model_id, other_id, epoch, metric, value, params FROM analyses WHERE params LIKE ? "
                         "ORDER BY id", (f'%"{experiment}"%',))
    records: dict[tuple[str, str | None, int, str], dict[str, Any]] = {}
    for a, b, e, metric, value, p in rows:
        params = json.loads(p)
        if params.get("experiment") != experiment:
            continue
        rec = records.setdefault((a, b, int(e), p), {"model_id": a, "other_id": b, "epoch": int(e), "params": params})
        rec[metric] = math.nan if value is None else float(value)
    return list(records.values())


def zoo_store(zoo_dir: str | Path) -> ZooStore:
    """The store of an existing zoo directory.

    Args:
        zoo_dir: a zoo directory.

    Returns:
        :class:`~zooscape.zoo.store.ZooStore`.

    Raises:
        FileNotFoundError: ``zoo_dir`` is not a zoo directory.
    """
    store = ZooStore(zoo_dir)
    if not is_zoo(store.root):
        raise FileNotFoundError(f"{zoo_dir} is not a zoo directory (no catalog.sqlite)")
    return store


def stored_keys(catalog: Catalog, metric: str, params: Mapping[str, Any]) -> set[tuple[str, str | None, int]]:
    """The ``(model_id, other_id, epoch)`` of every analyses row of one metric stored with exactly ``params``.

    Args:
        catalog: the zoo's catalog.
        metric: the marker metric of a task (a task's rows are committed together).
        params: the settings stored with the rows (compared as the catalog stores them: sorted-key JSON).

    Returns:
        set of keys (``other_id`` is None for single-model rows).
    """
    text = json.dumps(dict(params), sort_keys=True)
    rows = catalog.query("SELECT model_id, other_id, epoch FROM analyses WHERE metric = ? AND params = ?",
                         (metric, text))
    return {(m, o, int(e)) for m, o, e in rows}


def commit_task_results(
    store: ZooStore,
    engine: Engine,
    fn: Callable[[Any], dict[str, Any]],
    tasks: Sequence[Any],
    before_commit: Callable[[dict[str, Any]], None] | None = None,
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``fn`` on every task through ``engine`` and commit each result's rows as it arrives (single writer).

    Args:
        store: the zoo's store (its write lock is held for the whole run).
        engine: where the tasks run.
        fn: picklable module-level function of one task returning a dict with ``"rows"``.
        tasks: picklable tasks.
        before_commit: ``fn(result)`` called in the driver before the result's rows are committed (e.g. to write
            the files that the rows describe).
        on_result: ``fn(count, result)`` called after each commit (``count`` = results committed so far).

    Returns:
        The results in completion order.

    Raises:
        RuntimeError: another process is writing the zoo.
        EngineError: a task failed in a worker (rows of tasks finished before it stay committed).
    """
    results: list[dict[str, Any]] = []
    with store.lock(), Catalog(store.catalog_path) as catalog:
        for result in engine.map(fn, list(tasks), ordered=False):
            if before_commit is not None:
                before_commit(result)
            catalog.add_analyses(result["rows"])
            results.append(result)
            if on_result is not None:
                on_result(len(results), result)
    return results
