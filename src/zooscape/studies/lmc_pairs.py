"""Linear mode connectivity of every seed pair of a zoo's grid cells (``zooscape lmc pairs``), with re-basin.

For every grid cell (:mod:`zooscape.studies.cells`) and every pair of its models at one epoch, the linear path is
evaluated naive, after aligning the second model to the first (weight or activation matching) and after
renormalising every point of the path (reset BatchNorm, REPAIR, RESCALE, RESHIFT). By default the pairs of a
cell still to compute form one picklable :class:`LmcCellTask` run by :func:`run_cell_task` wherever the zoo's
engine puts it: it loads each model of the cell once and evaluates the paths of all its pairs together as
population members (:func:`zooscape.align.lmc.state_pairs_barriers`, :mod:`zooscape.connect.population`).
``per_pair=True`` keeps the slow reference: one :class:`LmcPairTask` per pair run by :func:`run_pair_task`
(:func:`zooscape.align.lmc.pair_barriers_aligned`, loading only its two models). The driver commits each task's
rows and writes its permutation files as the task finishes (:mod:`zooscape.studies.jobs`), so an interrupted run
keeps its finished pairs and re-running skips them. Rows and files: ``docs/connectivity.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zooscape._io import atomic_write_bytes, json_ready
from zooscape.studies.cells import zoo_cells
from zooscape.studies.jobs import CellTask, PairTask, cell_groups
from zooscape.studies.lmc_train import LMC_DIR, pair_values
from zooscape.zoo.grid import canonical_json

__all__ = [
    "ALIGNS",
    "PAIRS_EXPERIMENT",
    "RENORMS",
    "LmcCellTask",
    "LmcPairPlan",
    "LmcPairTask",
    "load_permutation",
    "pair_barriers",
    "pair_params",
    "pair_records",
    "permutation_bytes",
    "permutation_path",
    "plan_pairs",
    "run_cell_task",
    "run_pair_task",
]

PAIRS_EXPERIMENT = "lmc_pairs"

#: Alignment methods of ``lmc pairs`` (``--align``).
ALIGNS: tuple[str, ...] = ("none", "weight", "activation")
#: Renormalisations of ``lmc pairs`` (``--renorm``) and of LMC during training.
RENORMS: tuple[str, ...] = ("none", "reset_bn", "repair", "rescale", "reshift")
PERMS_DIR = "perms"


def pair_params(n_points: int = 25, splits: Sequence[str] = ("train", "test"), align: str = "none",
                renorm: str = "none", seed: int = 0) -> dict[str, Any]:
    """The ``params`` stored with every row of :func:`pair_barriers` (identifies a setting).

    Args:
        n_points: alphas per path.
        splits: evaluated splits.
        align: ``"none"``, ``"weight"`` or ``"activation"``.
        renorm: ``"none"``, ``"reset_bn"``, ``"repair"``, ``"rescale"`` or ``"reshift"``.
        seed: seed of weight matching's visiting order.

    Returns:
        JSON-ready dict with ``experiment = "lmc_pairs"``.

    Raises:
        ValueError: unknown align/renorm, ``n_points < 2`` or no split.
    """
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if renorm not in RENORMS:
        raise ValueError(f"renorm must be one of {RENORMS}, got {renorm!r}")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    splits = [splits] if isinstance(splits, str) else list(splits)
    if not splits:
        raise ValueError("splits must name at least one split")
    return {"experiment": PAIRS_EXPERIMENT, "n_points": int(n_points), "splits": splits, "align": align,
            "renorm": renorm, "seed": int(seed)}


class LmcPairTask(PairTask):
    """One seed pair of a grid cell at one epoch: align, renormalise, evaluate the linear paths (picklable).

    Fields as :class:`~zooscape.studies.jobs.PairTask`: ``model_id`` is the ``alpha = 0`` endpoint and the
    reference of the alignment, ``other_id`` the permuted one, ``params`` from :func:`pair_params`.
    """


def permutation_bytes(perm: Any, metadata: Mapping[str, Any]) -> bytes:
    """A permutation as a safetensors file (one int64 ``[n]`` tensor per group, JSON metadata).

    Args:
        perm: :class:`~zooscape.align.Permutation` (group -> ``[n]`` int64).
        metadata: JSON-ready description (pair, epoch, params).

    Returns:
        file bytes.
    """
    from safetensors.torch import save

    return save({g: perm[g].contiguous() for g in perm}, metadata={"format": "zooscape-permutation",
                                                                    "info": json.dumps(json_ready(dict(metadata)))})


def load_permutation(path: str | Path) -> dict[str, Any]:
    """Read a permutation file written by :func:`pair_barriers` (safetensors; never pickle).

    Args:
        path: ``ZOO/lmc/perms/<a>-<b>-e<epoch>-<tag>.safetensors``.

    Returns:
        group -> ``[n]`` int64 tensor (pass it with the spec to :class:`~zooscape.align.Permutation`).
    """
    from safetensors.torch import load_file

    return load_file(str(path))


def run_pair_task(task: LmcPairTask) -> dict[str, Any]:
    """Load the pair at the epoch (read-only), align, renormalise, evaluate; return its rows and files.

    Only the pair's two models are loaded (bounded memory per task). The result depends only on the task.

    Args:
        task: the task.

    Returns:
        dict with ``record`` (``model_id``, ``other_id``, ``epoch``, ``cell`` and every value of
        :func:`pair_values`), ``rows`` (for :meth:`Catalog.add_analyses`) and ``perm`` (permutation file bytes,
        None without alignment).

    References:
        Ainsworth et al. (2023), "Git Re-Basin"; Jordan et al. (2023), "REPAIR"; Qu & Horvath (2024).
    """
    from zooscape.align.lmc import pair_barriers_aligned
    from zooscape.train.trainer import resolve_device
    from zooscape.zoo.reader import open_zoo

    params = task.params
    device = str(resolve_device(task.device))
    with open_zoo(task.root) as zoo:
        a, b = zoo.load_model(task.model_id, task.epoch, device=device), zoo.load_model(task.other_id, task.epoch,
                                                                                       device=device)
        data = zoo.data(task.model_id)
    paths, alignment = pair_barriers_aligned(a, b, data, params["align"], params["renorm"], params["n_points"],
                                             splits=tuple(params["splits"]), seed=params["seed"], device=device)
    return _pair_result(task.model_id, task.other_id, task.epoch, task.cell, params, paths, alignment)


class LmcCellTask(CellTask):
    """The pairs of one grid cell still to compute at one epoch, evaluated together (picklable).

    Fields as :class:`~zooscape.studies.jobs.CellTask`; ``params`` from :func:`pair_params`.
    """


def _pair_result(model_id: str, other_id: str, epoch: int, cell: int, params: Mapping[str, Any],
                 paths: Mapping[str, Any], alignment: Any) -> dict[str, Any]:
    values = pair_values(paths, alignment)
    pair = {"model_id": model_id, "other_id": other_id, "epoch": epoch}
    perm = None
    if alignment.perm is not None:
        perm = permutation_bytes(alignment.perm, {**pair, "params": params, "objective": alignment.objective})
    return {
        "record": {**pair, "cell": cell, **values},
        "rows": [{**pair, "metric": k, "value": v, "params": params} for k, v in values.items()],
        "perm": perm,
    }


def run_cell_task(task: LmcCellTask) -> dict[str, Any]:
    """Load every model of the task's pairs once, align each pair, evaluate all paths together; return rows/files.

    The paths of all pairs are population members of :func:`zooscape.align.lmc.state_pairs_barriers` (the same
    values as :func:`run_pair_task` of each pair, within float tolerance). The result depends only on the task.

    Args:
        task: the task.

    Returns:
        dict with ``rows`` (every pair's rows, for :meth:`Catalog.add_analyses`) and ``pairs``: one dict per pair
        as :func:`run_pair_task` returns (``record``, ``rows``, ``perm``).

    References:
        Frankle et al. (2020); Ainsworth et al. (2023); Jordan et al. (2023); Qu & Horvath (2024).
    """
    from zooscape.align.lmc import state_pairs_barriers
    from zooscape.train.trainer import resolve_device
    from zooscape.zoo.reader import open_zoo

    params = task.params
    device = str(resolve_device(task.device))
    ids = sorted({m for pair in task.pairs for m in pair})
    index = {m: i for i, m in enumerate(ids)}
    with open_zoo(task.root) as zoo:
        models = [zoo.load_model(m, task.epoch, device=device) for m in ids]
        data = zoo.data(ids[0])
    states = [m.state_dict() for m in models]
    results = state_pairs_barriers(models[0], states, [(index[a], index[b]) for a, b in task.pairs], data,
                                   params["align"], params["renorm"], params["n_points"],
                                   splits=tuple(params["splits"]), seed=params["seed"], device=device,
                                   models=models)
    pairs = [_pair_result(a, b, task.epoch, task.cell, params, paths, alignment)
             for (a, b), (paths, alignment) in zip(task.pairs, results)]
    return {"rows": [row for p in pairs for row in p["rows"]], "pairs": pairs}


def permutation_path(root: str | Path, model_id: str, other_id: str, epoch: int, params: Mapping[str, Any]) -> Path:
    """Where :func:`pair_barriers` keeps the permutation of a pair (``ZOO/lmc/perms/``).

    Args:
        root: zoo directory.
        model_id: reference model of the alignment.
        other_id: permuted model.
        epoch: epoch.
        params: settings from :func:`pair_params`.

    Returns:
        path of the safetensors file (tag = hash of the settings).
    """
    tag = hashlib.sha256(canonical_json(dict(params)).encode()).hexdigest()[:10]
    return Path(root) / LMC_DIR / PERMS_DIR / f"{model_id}-{other_id}-e{int(epoch)}-{tag}.safetensors"


@dataclass
class LmcPairPlan:
    """Tasks of a :func:`pair_barriers` run.

    Attributes:
        tasks: pairs still to compute, by cell, then pair.
        done: pairs already stored with the same settings.
        skipped: messages about models left out (no checkpoint at the epoch).
        labels: cell index -> :attr:`Cell.label`.
    """

    tasks: list[LmcPairTask]
    done: list[LmcPairTask]
    skipped: list[str]
    labels: dict[int, str]


def plan_pairs(zoo: Any, params: Mapping[str, Any], epoch: int | None = None, force: bool = False,
               device: str = "auto") -> LmcPairPlan:
    """Every seed pair of each grid cell not yet stored with ``params``.

    Args:
        zoo: an open :class:`~zooscape.zoo.reader.Zoo`.
        params: settings from :func:`pair_params`.
        epoch: checkpointed epoch (default: each cell's ``training.epochs``).
        force: plan stored pairs again.
        device: torch device of the tasks.

    Returns:
        :class:`LmcPairPlan`.
    """
    from zooscape.studies.jobs import stored_keys

    marker = f"barrier_loss_{params['splits'][0]}_linear"
    done_keys = set() if force else stored_keys(zoo.catalog, marker, params)
    plan = LmcPairPlan([], [], [], {})
    for cell in zoo_cells(zoo):
        ids = list(cell.model_ids)
        plan.labels[cell.index] = cell.label
        e = int(zoo.config(ids[0])["training"]["epochs"]) if epoch is None else int(epoch)
        usable = [m for m in ids if e in zoo.epochs(m, "weights")]
        if len(ids) > len(usable):
            plan.skipped.append(f"{cell.label}: {len(ids) - len(usable)} model(s) have no checkpoint at epoch {e}, "
                                "skipped")
        for a, b in itertools.combinations(usable, 2):
            task = LmcPairTask(str(zoo.path), a, b, e, cell.index, dict(params), device)
            (plan.done if (a, b, e) in done_keys else plan.tasks).append(task)
    return plan


def _cell_line(label: str, records: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    split = params["splits"][-1]
    key = f"barrier_error_{split}_linear"
    if not records or key not in records[0]:
        key = f"barrier_loss_{split}_linear"
    mean = lambda k: sum(r[k] for r in records) / len(records)  # noqa: E731
    parts = [f"naive {mean('naive_' + key):.4f}"]
    if f"aligned_{key}" in records[0]:
        parts.append(f"{params['align']} {mean('aligned_' + key):.4f}")
    if params["renorm"] != "none":
        parts.append(f"+{params['renorm']} {mean(key):.4f}")
    return f"{label}: {len(records)} pair(s), {key[8:]}: " + " -> ".join(parts)


def pair_barriers(
    zoo_dir: str | Path,
    epoch: int | None = None,
    n_points: int = 25,
    *,
    align: str = "none",
    renorm: str = "none",
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    bar: bool = False,
    engine: Any = "local",
    workers: int = 1,
    engine_options: Mapping[str, Any] | None = None,
    bn_mode: str | None = None,
    per_pair: bool = False,
) -> list[dict[str, Any]]:
    """Barriers between all seed pairs of every grid cell of a zoo, before and after alignment and renormalisation.

    Grid cells are those of :mod:`zooscape.studies.cells`. The pairs of each cell still to compute are one
    :class:`LmcCellTask` run by :func:`run_cell_task` on the engine (in-process, ``workers`` local processes or
    Ray; each task loads its cell's models once and evaluates all their paths as population members); with
    ``per_pair=True`` every pair is one :class:`LmcPairTask` (:func:`run_pair_task`, the slow reference). The
    driver commits each task's rows (and writes its permutation files) as it finishes, so an interrupted run keeps
    the finished tasks and re-running skips the stored pairs. Rows: ``analyses`` with
    ``model_id`` < ``other_id``, the metrics of :func:`pair_values` and ``params`` from :func:`pair_params`.
    The permutation that aligns ``other_id`` to ``model_id`` is kept bit for bit in
    :func:`permutation_path` (``apply_permutation(other, Permutation(spec, load_permutation(path)))`` gives the
    aligned model).

    Args:
        zoo_dir: a trained zoo directory.
        epoch: checkpointed epoch to compare (default: each cell's ``training.epochs``).
        n_points: alphas per path.
        align: ``"none"``, ``"weight"`` (Git Re-Basin weight matching) or ``"activation"``.
        renorm: ``"none"``, ``"reset_bn"``, ``"repair"``, ``"rescale"`` or ``"reshift"`` at every alpha.
        splits: splits to evaluate.
        seed: seed of weight matching.
        device: torch device.
        force: recompute pairs already stored with these settings.
        progress: optional ``fn(message)``: one line per finished cell with its settings.
        bar: show a tqdm bar over pairs (stderr).
        engine: ``"local"``, ``"ray"`` or an :class:`~zooscape.zoo.engines.Engine`.
        workers: worker processes of the local engine (1 = in this process).
        engine_options: keyword arguments of the engine.
        bn_mode: deprecated: ``"reset"`` means ``renorm="reset_bn"``.
        per_pair: one task per pair (the per-pair reference path) instead of one task per cell.

    Returns:
        One dict per pair of the zoo stored with these settings (computed now or before), in cell and pair
        order: ``model_id``, ``other_id``, ``epoch``, ``cell``, ``cell_label`` and every value of
        :func:`pair_values`.

    Raises:
        FileNotFoundError: not a zoo directory.
        ValueError: bad settings.
        RuntimeError: another process is writing the zoo.

    References:
        Frankle et al. (2020); Entezari et al. (2022); Ainsworth et al. (2023); Jordan et al. (2023);
        Qu & Horvath (2024).
    """
    from tqdm.auto import tqdm

    from zooscape.studies.jobs import commit_task_results, zoo_store
    from zooscape.zoo.engines import get_engine
    from zooscape.zoo.reader import open_zoo

    if bn_mode is not None:
        import warnings

        warnings.warn("pair_barriers(bn_mode=...) is deprecated and will be removed in the next release; use "
                      "renorm='reset_bn' (bn_mode='reset') or renorm='none'", DeprecationWarning, stacklevel=2)
        renorm = {"reset": "reset_bn", "interpolate": renorm}.get(bn_mode, bn_mode)
    params = pair_params(n_points, splits, align, renorm, seed)
    store = zoo_store(zoo_dir)
    say = progress or (lambda message: None)
    eng = get_engine(engine, workers, **dict(engine_options or {}))
    with open_zoo(store.root) as zoo:
        plan = plan_pairs(zoo, params, epoch=epoch, force=force, device=device)
    for message in plan.skipped:
        say(message)
    if plan.done:
        say(f"{len(plan.done)} pair(s) already stored with these settings, skipped")
    left = {c: sum(t.cell == c for t in plan.tasks) for c in plan.labels}
    finished: dict[int, list[dict[str, Any]]] = {}
    with tqdm(total=len(plan.tasks), unit="pair", desc="lmc pairs", disable=not bar or not plan.tasks) as pbar:
        write = (lambda m: pbar.write(m, file=sys.stderr)) if bar and plan.tasks else say

        def store_perm(result: dict[str, Any]) -> None:
            for one in result.get("pairs", [result]):
                if one["perm"] is not None:
                    rec = one["record"]
                    path = permutation_path(store.root, rec["model_id"], rec["other_id"], rec["epoch"], params)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(path, one["perm"])

        def report(_: int, result: dict[str, Any]) -> None:
            for one in result.get("pairs", [result]):
                rec = one["record"]
                pbar.update(1)
                finished.setdefault(rec["cell"], []).append(rec)
                left[rec["cell"]] -= 1
                if left[rec["cell"]] == 0 and progress is not None:
                    write(_cell_line(plan.labels[rec["cell"]], finished[rec["cell"]], params))

        if per_pair:
            commit_task_results(store, eng, run_pair_task, plan.tasks, before_commit=store_perm, on_result=report)
        else:
            cells = [LmcCellTask(t.root, t.cell, t.epoch, pairs, dict(t.params), t.device)
                     for t, pairs in cell_groups(plan.tasks)]
            commit_task_results(store, eng, run_cell_task, cells, before_commit=store_perm, on_result=report)
    wanted = {(t.model_id, t.other_id, t.epoch) for t in plan.tasks + plan.done}
    records = [r for r in pair_records(store.root, params) if (r["model_id"], r["other_id"], r["epoch"]) in wanted]
    for r in records:
        r["cell_label"] = plan.labels.get(r["cell"], f"cell {r['cell']}")
    return records


def pair_records(zoo_dir: str | Path, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Read stored ``lmc pairs`` results back, one flat record per (pair, epoch, settings).

    Args:
        zoo_dir: a zoo directory.
        params: only rows stored with these settings (:func:`pair_params`); default all.

    Returns:
        Dicts with ``model_id``, ``other_id``, ``epoch``, ``cell`` (index), ``params`` and every stored value,
        sorted by cell, pair and epoch.

    Raises:
        FileNotFoundError: not a zoo directory.
    """
    from zooscape.studies.jobs import experiment_records, zoo_store
    from zooscape.zoo.reader import open_zoo

    store = zoo_store(zoo_dir)
    with open_zoo(store.root) as zoo:
        records = experiment_records(zoo.catalog, PAIRS_EXPERIMENT)
        cell_of = {m: c.index for c in zoo_cells(zoo) for m in c.model_ids}
    wanted = None if params is None else canonical_json(dict(params))
    records = [r for r in records if wanted is None or canonical_json(r["params"]) == wanted]
    for r in records:
        r["cell"] = cell_of.get(r["model_id"], -1)
    return sorted(records, key=lambda r: (r["cell"], r["model_id"], r["other_id"], r["epoch"]))
