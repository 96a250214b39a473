"""Merging the seeds of a grid cell into one model (``zooscape align merge``), stored in the zoo as a derived model.

For every chosen grid cell (:mod:`zooscape.studies.cells`) the members' checkpoints at one epoch are merged with
:func:`zooscape.align.merge` (MergeMany weight matching, activation matching to the first member, or plain
averaging), optionally renormalised (REPAIR & co. with the aligned members as endpoints) and written into the zoo:

- a ``models`` row whose config is the first member's with ``derived["merge"] = {"sources": [...], "method",
  "renorm", "epoch", "seed"}`` (so it is *not* a grid member: :data:`zooscape.studies.cells.DERIVED_KINDS`), id
  ``merge-<hash of the sources and settings>``, status ``done``;
- its weights as a checkpoint shard at the epoch (``Zoo.load_model(merge_id, epoch)`` loads it);
- ``metrics`` rows ``<split>_loss`` / ``<split>_acc`` at the epoch (as trained models have);
- ``analyses`` rows (``model_id`` = the merged model, ``params.experiment = "align_merge"`` with the settings and
  the sources): ``merge_<split>_<loss|acc>``, ``merge_sources_<split>_<loss|acc>`` (mean of the sources) and
  ``merge_delta_<split>_<loss|acc>`` (merged minus that mean).

Re-running with the same settings finds the merged model and skips the cell (``force`` recomputes it).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscape.studies.cells import zoo_cells
from zooscape.zoo.engines import Engine
from zooscape.zoo.grid import canonical_json

__all__ = ["MERGE_EXPERIMENT", "MERGE_METHODS", "MergeTask", "merge_cells", "merge_id", "run_merge_task"]

MERGE_EXPERIMENT = "align_merge"
#: Alignment of the merge (``"none"``: plain weight averaging).
MERGE_METHODS: tuple[str, ...] = ("weight", "activation", "none")
RENORMS: tuple[str, ...] = ("none", "reset_bn", "repair", "rescale", "reshift")


def merge_id(sources: Sequence[str], settings: dict[str, Any]) -> str:
    """The catalog id of a merged model: ``merge-`` + hash of its sources and settings.

    Args:
        sources: source model ids.
        settings: ``method``, ``renorm``, ``epoch``, ``seed``.

    Returns:
        str.
    """
    text = canonical_json({"sources": sorted(sources), **settings})
    return "merge-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _evaluate(model: Any, data: Any, splits: Sequence[str], device: str) -> dict[str, float]:
    from zooscape.connect import evaluate_model

    out = {}
    for split in splits:
        x, y = data.split(split)
        loss, err = evaluate_model(model.to(device), x, y, data.task)
        out[f"{split}_loss"] = loss
        if err is not None:
            out[f"{split}_acc"] = 1.0 - err
    return out


@dataclass
class MergeTask:
    """One grid cell to merge, for :func:`run_merge_task` (picklable: it runs wherever the engine puts it).

    Args:
        root: zoo directory.
        cell: index of the grid cell.
        cell_label: the cell's label (for messages).
        merge_id: id of the merged model.
        sources: ids of the members merged (at least two, in cell order).
        settings: ``method``, ``renorm``, ``epoch``, ``seed``.
        splits: splits to evaluate on.
        device: torch device.
    """

    root: str
    cell: int
    cell_label: str
    merge_id: str
    sources: list[str]
    settings: dict[str, Any]
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    device: str = "auto"


def run_merge_task(task: MergeTask) -> dict[str, Any]:
    """Merge one cell's members and evaluate the merged model and its sources (reads the zoo, writes nothing).

    Args:
        task: the cell.

    Returns:
        dict with ``task``, ``state`` (the merged model's CPU state dict), ``merged`` (``{<split>_<loss|acc>:
        value}``), ``values`` (the ``merge_*``, ``merge_sources_*``, ``merge_delta_*`` values) and ``iterations``.
    """
    from zooscape.align import merge
    from zooscape.zoo.reader import open_zoo

    method, renorm, e, seed = (task.settings[k] for k in ("method", "renorm", "epoch", "seed"))
    with open_zoo(task.root) as zoo:
        models = [zoo.load_model(m, e, device=task.device) for m in task.sources]
        data = zoo.data(task.sources[0])
    res = merge(models, align=None if method == "none" else method, data=data.train_x,
                renorm=None if renorm == "none" else renorm, seed=seed, device=task.device)
    merged = _evaluate(res.model, data, task.splits, task.device)
    sources = [_evaluate(m, data, task.splits, task.device) for m in models]
    values = {}
    for key, v in merged.items():
        mean = sum(s[key] for s in sources) / len(sources)
        values.update({f"merge_{key}": v, f"merge_sources_{key}": mean, f"merge_delta_{key}": v - mean})
    state = {k: v.detach().cpu().contiguous() for k, v in res.model.state_dict().items()}
    return {"task": task, "state": state, "merged": merged, "values": values, "iterations": res.iterations}


def merge_cells(
    zoo_dir: str | Path,
    cells: str | Sequence[int] = "all",
    method: str = "weight",
    renorm: str = "none",
    *,
    epoch: int | None = None,
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    engine: str | Engine = "local",
    workers: int = 1,
    engine_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Merge the members of grid cells (MergeMany) and store each merged model in the zoo, linked to its sources.

    One task per cell (:func:`run_merge_task`) runs through ``engine``; the driver stores each merged model (its
    ``models`` row, checkpoint shard, metrics and analyses rows, in one transaction) as its task finishes, so an
    interrupted run keeps the cells already merged (the merged model is marked ``done`` last).

    Args:
        zoo_dir: a trained zoo directory.
        cells: ``"all"`` or cell indices (as in ``zooscape lmc pairs``).
        method: ``"weight"`` (MergeMany weight matching), ``"activation"`` (activation matching to the first
            member) or ``"none"`` (plain averaging).
        renorm: ``"none"``, ``"reset_bn"``, ``"repair"``, ``"rescale"`` or ``"reshift"`` (on the training inputs,
            the aligned members as endpoints).
        epoch: checkpointed epoch of the members (default: the cell's ``training.epochs``).
        splits: splits to evaluate the merged model and its sources on.
        seed: seed of MergeMany's visiting order.
        device: torch device.
        force: merge again cells whose merged model is already stored.
        progress: optional ``fn(message)``: one line per merged cell with its settings.
        engine, workers, engine_options: where the per-cell tasks run (``"local"`` with ``workers`` processes,
            ``1`` = in-process; ``"ray"``), as for every zoo-wide command.

    Returns:
        One dict per merged cell, in cell order: ``merge_id``, ``cell``, ``cell_label``, ``epoch``, ``sources``,
        ``iterations`` and the ``merge_*``, ``merge_sources_*`` and ``merge_delta_*`` values.

    Raises:
        FileNotFoundError: not a zoo directory.
        ValueError: bad settings, unknown cell, or a chosen cell with fewer than two members at the epoch.
        RuntimeError: another process is writing the zoo.

    References:
        Ainsworth, Hayase & Srinivasa (2023), "Git Re-Basin" (MergeMany); Jordan et al. (2023), "REPAIR".
    """
    from zooscape.studies.jobs import zoo_store
    from zooscape.train.trainer import resolve_device
    from zooscape.zoo.catalog import Catalog
    from zooscape.zoo.engines import get_engine
    from zooscape.zoo.reader import open_zoo

    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    if renorm not in RENORMS:
        raise ValueError(f"renorm must be one of {RENORMS}, got {renorm!r}")
    store = zoo_store(zoo_dir)
    say = progress or (lambda message: None)
    device = str(resolve_device(device))
    tasks: list[MergeTask] = []
    configs: dict[str, dict[str, Any]] = {}
    with open_zoo(store.root) as zoo:
        all_cells = zoo_cells(zoo)
        chosen = all_cells if cells == "all" else [c for c in all_cells if c.index in set(cells)]
        if cells != "all":
            unknown = sorted(set(cells) - {c.index for c in all_cells})
            if unknown:
                raise ValueError(f"{zoo_dir} has no grid cell {unknown} (cells 0..{len(all_cells) - 1})")
        statuses = zoo.catalog.statuses()
        for cell in chosen:
            ids = list(cell.model_ids)
            e = int(zoo.config(ids[0])["training"]["epochs"]) if epoch is None else int(epoch)
            usable = [m for m in ids if e in zoo.epochs(m, "weights")]
            if len(usable) < 2:
                if cells != "all":
                    raise ValueError(f"{cell.label} has {len(usable)} model(s) with a checkpoint at epoch {e}; "
                                     "merging needs two")
                say(f"{cell.label}: fewer than two models at epoch {e}, skipped")
                continue
            settings = {"method": method, "renorm": renorm, "epoch": e, "seed": int(seed)}
            mid = merge_id(usable, settings)
            if statuses.get(mid) == "done" and not force:
                say(f"{cell.label}: already merged as {mid}, skipped")
                continue
            tasks.append(MergeTask(str(store.root), cell.index, cell.label, mid, usable, settings, list(splits),
                                   device))
            configs[mid] = copy.deepcopy(zoo.config(usable[0]))
    if not tasks:
        return []
    eng = get_engine(engine, workers, **dict(engine_options or {}))
    results: list[dict[str, Any]] = []
    with store.lock(), Catalog(store.catalog_path) as catalog:
        for out in eng.map(run_merge_task, tasks, ordered=False):
            task, values, merged = out["task"], out["values"], out["merged"]
            mid, usable, e = task.merge_id, task.sources, task.settings["epoch"]
            cfg = configs[mid]
            cfg["derived"] = {**cfg.get("derived", {}), "merge": {"sources": usable, **task.settings}}
            cfg.update({"model_id": mid, "group_id": mid})
            rel = store.write_shard(mid, e, "weights", {mid: out["state"]})
            params = {"experiment": MERGE_EXPERIMENT, "sources": usable, **task.settings}
            catalog.add_models([cfg])  # pending until record() below marks it done with its metrics
            catalog.add_analyses([{"model_id": mid, "other_id": None, "epoch": e, "metric": k, "value": v,
                                   "params": params} for k, v in values.items()], replace=True)
            catalog.record(metrics=[(mid, e, k, v) for k, v in merged.items()],
                           checkpoints=[(mid, e, "weights", rel)], statuses={mid: ("done", None)})
            rec = {"merge_id": mid, "cell": task.cell, "cell_label": task.cell_label, "epoch": e, "sources": usable,
                   "iterations": out["iterations"], **values}
            results.append(rec)
            key = "test_acc" if "merge_test_acc" in values else next(k[6:] for k in values if k.startswith("merge_"))
            say(f"{task.cell_label}: merged {len(usable)} models ({method}, renorm {renorm}) into {mid}: {key} "
                f"{values['merge_' + key]:.4f} vs sources' mean {values['merge_sources_' + key]:.4f} "
                f"(delta {values['merge_delta_' + key]:+.4f})")
    return sorted(results, key=lambda r: r["cell"])
