"""Curve mode connectivity over a zoo: **zoo pairs** (:func:`curve_pairs`, ``zooscape curve pairs``).

For every grid cell (:mod:`zooscape.studies.cells`), a curve is trained between every pair of models at one
epoch and evaluated; the summaries are ``analyses`` rows (``model_id`` < ``other_id``,
``metric = "curve_<stat>_<metric>_<split>"`` e.g. ``curve_mc_error_test``, plus ``curve_length``;
``params.experiment = "curve_pairs"`` with every setting). Curves and full evaluations are kept under
``DIR/curves/``. Pairs already stored with the same settings are skipped, so an interrupted run resumes.
By default the pairs of a cell still to compute are one picklable :class:`CurveCellTask` that
:func:`run_curve_cell_task` computes wherever the zoo's engine puts it (in-process, local worker processes or Ray):
it loads each model once, trains all the cell's curves together as members of one stacked population
(:func:`zooscape.connect.curve_population.train_curves`) and evaluates them together as population members
(:func:`zooscape.connect.curve_eval.evaluate_curves`). ``per_pair=True`` keeps the reference: one
:class:`CurvePairTask` per pair (:func:`run_curve_pair_task`). Tasks only read the zoo and return the rows and the
files, which the driver writes while holding the zoo's write lock (:mod:`zooscape.studies.jobs`, as
``zooscape metrics run`` does).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zooscape._io import atomic_write_bytes
from zooscape.studies.cells import zoo_cells
from zooscape.studies.curve_runs import _write_json
from zooscape.studies.jobs import CellTask, PairTask, cell_groups, commit_task_results, stored_keys, zoo_store
from zooscape.zoo.engines import Engine, get_engine
from zooscape.zoo.grid import canonical_json

__all__ = [
    "PAIRS_EXPERIMENT",
    "CurveCellTask",
    "CurvePairPlan",
    "CurvePairTask",
    "curve_pairs",
    "curve_records",
    "default_pair_config",
    "pair_params",
    "pair_train_config",
    "plan_curve_pairs",
    "run_curve_cell_task",
    "run_curve_pair_task",
]

PAIRS_EXPERIMENT = "curve_pairs"
CURVES_DIR = "curves"


# ---------------------------------------------------------------------------------------------------- zoo pairs


def _cells(zoo: Any) -> tuple[list[list[str]], dict[str, dict[str, Any]]]:
    """Grid cells of a zoo (:mod:`zooscape.studies.cells`) as lists of model ids, and the members' configs."""
    cells = zoo_cells(zoo)
    configs = {m: zoo.config(m) for c in cells for m in c.model_ids}
    return [list(c.model_ids) for c in cells], configs


def pair_params(
    kind: str, num_bends: int, train_config: Any, n_points: int, mc_points: int, bn_mode: str,
    splits: Sequence[str],
) -> dict[str, Any]:
    """The ``params`` stored with every row of :func:`curve_pairs` (identifies a setting).

    Args:
        kind: curve kind.
        num_bends: inner bends.
        train_config: the ``CurveTrainConfig``.
        n_points: evaluated positions.
        mc_points: mc positions.
        bn_mode: BatchNorm mode of the evaluation.
        splits: evaluated splits.

    Returns:
        JSON-ready dict with ``experiment = "curve_pairs"``.
    """
    return {"experiment": PAIRS_EXPERIMENT, "kind": kind, "num_bends": int(num_bends), "n_points": int(n_points),
            "mc_points": int(mc_points), "bn_mode": bn_mode, "splits": list(splits), **train_config.to_dict()}


def default_pair_config() -> Any:
    """Curve training settings of :func:`curve_pairs` (the phase-transition zoo's: 10 epochs, batch 128, SGD lr 0.1,
    momentum 0.9), with wd 1e-4 and the Garipov schedule.

    Returns:
        ``CurveTrainConfig``.
    """
    from zooscape.connect.curve_train import CurveTrainConfig

    return CurveTrainConfig(epochs=10, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)


def pair_train_config(params: Mapping[str, Any]) -> Any:
    """The curve training settings stored in a pair's ``params`` (inverse of :func:`pair_params`'s last part).

    Args:
        params: output of :func:`pair_params`.

    Returns:
        ``CurveTrainConfig``.
    """
    from dataclasses import fields

    from zooscape.connect.curve_train import CurveTrainConfig

    values = {f.name: params[f.name] for f in fields(CurveTrainConfig) if f.name in params}
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return CurveTrainConfig(**values)


class CurvePairTask(PairTask):
    """One seed pair of a grid cell: train and evaluate a curve between two models at one epoch (picklable).

    Fields as :class:`~zooscape.studies.jobs.PairTask`: ``model_id`` is the start of the curve, ``other_id`` its
    end, ``params`` every setting from :func:`pair_params`.
    """


def run_curve_pair_task(task: CurvePairTask) -> dict[str, Any]:
    """Load the pair at the epoch (read-only), train the curve, evaluate it; return its rows and files.

    The result depends only on the task (the curve training is seeded by ``params["seed"]``), not on the engine,
    the process or the other tasks.

    Args:
        task: the task.

    Returns:
        dict with ``record`` (``model_id``, ``other_id``, ``epoch``, ``cell`` and every ``curve_*`` value),
        ``rows`` (dicts for :meth:`Catalog.add_analyses`), ``curve`` (the curve's safetensors file as bytes) and
        ``evaluation`` (the JSON-ready full evaluation) for the driver to store.

    References:
        Garipov et al. (2018), "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs".
    """
    from zooscape.connect.curve import Curve, curve_bytes
    from zooscape.connect.curve_eval import evaluate_curve
    from zooscape.connect.curve_train import train_curve
    from zooscape.train.trainer import resolve_device
    from zooscape.zoo.reader import open_zoo

    params = task.params
    cfg = pair_train_config(params)
    with open_zoo(task.root) as zoo:
        start, end = zoo.load_model(task.model_id, task.epoch), zoo.load_model(task.other_id, task.epoch)
        data = zoo.data(task.model_id)
    curve = Curve(params["kind"], start, end, params["num_bends"]).to(resolve_device(task.device))
    train_curve(curve, data, cfg)
    ev = evaluate_curve(curve, data, params["n_points"], splits=tuple(params["splits"]), bn_mode=params["bn_mode"],
                        mc_points=params["mc_points"], weight_decay=cfg.weight_decay)
    return _curve_result(task.model_id, task.other_id, task.epoch, task.cell, params, curve, ev, curve_bytes)


def _curve_result(model_id: str, other_id: str, epoch: int, cell: int, params: Mapping[str, Any], curve: Any,
                  ev: Any, curve_bytes: Callable[..., bytes]) -> dict[str, Any]:
    flat = {f"curve_{k}": v for k, v in ev.flat().items()}
    pair = {"model_id": model_id, "other_id": other_id, "epoch": epoch}
    return {
        "record": {**pair, "cell": cell, **flat},
        "rows": [{**pair, "metric": k, "value": v, "params": params} for k, v in flat.items()],
        "curve": curve_bytes(curve.to("cpu"), metadata={**pair, "params": params}),
        "evaluation": {**pair, "params": params, "evaluation": ev.to_dict()},
    }


class CurveCellTask(CellTask):
    """The pairs of one grid cell still to compute at one epoch: train their curves, evaluate them together.

    Fields as :class:`~zooscape.studies.jobs.CellTask`; ``params`` from :func:`pair_params`.
    """


def run_curve_cell_task(task: CurveCellTask) -> dict[str, Any]:
    """Load each model of the task's pairs once, train all the cell's curves together, evaluate them together.

    The curves are trained as members of one population per step
    (:func:`zooscape.connect.curve_population.train_curves`, chunked to a memory budget), each as in
    :func:`run_curve_pair_task` (same seed, same numbers to float tolerance); the evaluation of all the cell's
    curves runs their points as population members
    (:func:`zooscape.connect.curve_eval.evaluate_curves`), equal to :func:`evaluate_curve` of each within float
    tolerance. The result depends only on the task.

    Args:
        task: the task.

    Returns:
        dict with ``rows`` (every pair's rows) and ``pairs``: one dict per pair as :func:`run_curve_pair_task`
        returns (``record``, ``rows``, ``curve``, ``evaluation``).

    References:
        Garipov et al. (2018), "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs".
    """
    from zooscape.connect.curve import Curve, curve_bytes
    from zooscape.connect.curve_eval import evaluate_curves
    from zooscape.connect.curve_population import train_curves
    from zooscape.train.trainer import resolve_device
    from zooscape.zoo.reader import open_zoo

    params = task.params
    cfg = pair_train_config(params)
    ids = sorted({m for pair in task.pairs for m in pair})
    with open_zoo(task.root) as zoo:
        models = {m: zoo.load_model(m, task.epoch) for m in ids}
        data = zoo.data(ids[0])
    device = resolve_device(task.device)
    curves = [Curve(params["kind"], models[a], models[b], params["num_bends"]).to(device) for a, b in task.pairs]
    train_curves(curves, data, cfg)
    evs = evaluate_curves(curves, data, params["n_points"], splits=tuple(params["splits"]),
                          bn_mode=params["bn_mode"], mc_points=params["mc_points"], weight_decay=cfg.weight_decay)
    pairs = [_curve_result(a, b, task.epoch, task.cell, params, curve, ev, curve_bytes)
             for (a, b), curve, ev in zip(task.pairs, curves, evs)]
    return {"rows": [row for p in pairs for row in p["rows"]], "pairs": pairs}


@dataclass
class CurvePairPlan:
    """Tasks of a :func:`curve_pairs` run.

    Attributes:
        tasks: pairs still to compute, by cell, then pair.
        done: pairs skipped because their rows are already stored with the same settings.
        skipped: messages about models left out (no checkpoint at the epoch).
    """

    tasks: list[CurvePairTask]
    done: list[CurvePairTask]
    skipped: list[str]


def plan_curve_pairs(zoo: Any, params: Mapping[str, Any], epoch: int | None = None, force: bool = False,
                     device: str = "auto") -> CurvePairPlan:
    """Decide which seed pairs to compute: every pair of each grid cell not yet stored with ``params``.

    Args:
        zoo: an open :class:`~zooscape.zoo.reader.Zoo`.
        params: settings from :func:`pair_params`.
        epoch: checkpointed epoch of the endpoints (default: each cell's ``training.epochs``).
        force: plan stored pairs again.
        device: torch device of the tasks.

    Returns:
        :class:`CurvePairPlan`.
    """
    marker = f"curve_mc_loss_{params['splits'][0]}"
    done_keys = set() if force else stored_keys(zoo.catalog, marker, params)
    cells, configs = _cells(zoo)
    plan = CurvePairPlan([], [], [])
    for index, ids in enumerate(cells):
        e = int(configs[ids[0]]["training"]["epochs"]) if epoch is None else int(epoch)
        usable = [m for m in ids if e in zoo.epochs(m, "weights")]
        if len(ids) > len(usable):
            plan.skipped.append(f"cell {index}: {len(ids) - len(usable)} model(s) have no checkpoint at epoch {e}, "
                                "skipped")
        for a, b in itertools.combinations(usable, 2):
            task = CurvePairTask(str(zoo.path), a, b, e, index, dict(params), device)
            (plan.done if (a, b, e) in done_keys else plan.tasks).append(task)
    return plan


def _store_pair_files(root: Path, result: Mapping[str, Any]) -> None:
    """Write a pair's curve and full evaluation under ``root/curves`` (driver side, before its rows)."""
    rec = result["record"]
    tag = hashlib.sha256(canonical_json(result["evaluation"]["params"]).encode()).hexdigest()[:10]
    stem = root / CURVES_DIR / f"{rec['model_id']}-{rec['other_id']}-e{rec['epoch']}-{tag}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(stem.with_suffix(".safetensors"), result["curve"])
    _write_json(stem.with_suffix(".json"), result["evaluation"])


def curve_pairs(
    zoo_dir: str | Path,
    epoch: int | None = None,
    *,
    kind: str = "bezier",
    num_bends: int = 1,
    train_config: Any = None,
    n_points: int = 5,
    mc_points: int = 5,
    splits: Sequence[str] = ("train", "test"),
    bn_mode: str = "reset",
    device: str = "auto",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    engine: str | Engine = "local",
    workers: int = 1,
    engine_options: Mapping[str, Any] | None = None,
    per_pair: bool = False,
) -> list[dict[str, Any]]:
    """Train and evaluate a curve between every seed pair of each grid cell of a zoo; store mc in the catalog.

    The pairs of each cell still to compute are one :class:`CurveCellTask` run by :func:`run_curve_cell_task` on
    the engine (in-process by default, ``workers`` local processes, or Ray): the cell's curves are trained together
    as one population (:func:`zooscape.connect.curve_population.train_curves`) and evaluated together as
    population members. With ``per_pair=True`` every pair is one
    :class:`CurvePairTask` (:func:`run_curve_pair_task`, the reference). The driver writes each task's files and
    commits its rows as the task finishes. A pair's values do not depend on the engine or the number of workers.

    Args:
        zoo_dir: a trained zoo directory.
        epoch: checkpointed epoch of the endpoints (default: each cell's ``training.epochs``).
        kind: ``"bezier"`` or ``"polychain"``.
        num_bends: inner bends (1 = the phase-transition zoo's "3 bends").
        train_config: :class:`~zooscape.connect.curve_train.CurveTrainConfig` (default: 10 epochs, batch 128,
            SGD lr 0.1 momentum 0.9, wd 1e-4, Garipov schedule).
        n_points: evaluated positions (5 in the phase-transition zoo; the mc positions are always included).
        mc_points: positions of the mc metric.
        splits: splits to evaluate.
        bn_mode: BatchNorm statistics along the curve (``"reset"``: re-estimated at every point).
        device: torch device.
        force: recompute pairs already stored with the same settings.
        progress: optional ``fn(message)``.
        engine: ``"local"``, ``"ray"`` or an :class:`~zooscape.zoo.engines.Engine`.
        workers: worker processes of the local engine (1 = in this process).
        engine_options: keyword arguments of the engine (Ray: ``address``, ``num_cpus``, ``num_gpus``,
            ``max_retries``).
        per_pair: one task per pair (the per-pair reference path) instead of one task per cell.

    Returns:
        One dict per pair computed now, in cell and pair order: ``model_id``, ``other_id``, ``epoch``, ``cell``
        and every ``curve_<stat>_<metric>_<split>`` and ``curve_length``.

    Raises:
        FileNotFoundError: not a zoo directory.
        ValueError: unknown curve kind, no split, or bad engine settings.
        RuntimeError: another process is writing the zoo.

    References:
        Garipov et al. (2018); Schürholt et al. (2025), "A Model Zoo on Phase Transitions in Neural Networks".
    """
    from zooscape.connect.curve import check_kind
    from zooscape.zoo.reader import open_zoo

    store = zoo_store(zoo_dir)
    kind = check_kind(kind)
    cfg = train_config or default_pair_config()
    say = progress or (lambda message: None)
    splits = tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one split")
    eng = get_engine(engine, workers, **dict(engine_options or {}))
    params = pair_params(kind, num_bends, cfg, n_points, mc_points, bn_mode, splits)
    with open_zoo(store.root) as zoo:
        plan = plan_curve_pairs(zoo, params, epoch=epoch, force=force, device=device)
    for message in plan.skipped:
        say(message)
    if plan.done:
        say(f"{len(plan.done)} pair(s) already stored with these settings, skipped")
    if plan.tasks:
        say(f"{len(plan.tasks)} pair(s) to compute in {len({t.cell for t in plan.tasks})} cell(s)")

    done = 0

    def report(_: int, result: dict[str, Any]) -> None:
        nonlocal done
        for one in result.get("pairs", [result]):
            done += 1
            rec = one["record"]
            say(f"[{done}/{len(plan.tasks)}] cell {rec['cell']}: {rec['model_id']} - {rec['other_id']}: mc test "
                f"error {rec.get('curve_mc_error_test', math.nan):+.4f}")

    def store_files(result: dict[str, Any]) -> None:
        for one in result.get("pairs", [result]):
            _store_pair_files(store.root, one)

    if per_pair:
        results = commit_task_results(store, eng, run_curve_pair_task, plan.tasks, before_commit=store_files,
                                      on_result=report)
    else:
        cells = [CurveCellTask(t.root, t.cell, t.epoch, pairs, dict(t.params), t.device)
                 for t, pairs in cell_groups(plan.tasks)]
        results = commit_task_results(store, eng, run_curve_cell_task, cells, before_commit=store_files,
                                      on_result=report)
    order = {(t.model_id, t.other_id, t.epoch): i for i, t in enumerate(plan.tasks)}
    records = [one["record"] for r in results for one in r.get("pairs", [r])]
    return sorted(records, key=lambda r: order[(r["model_id"], r["other_id"], r["epoch"])])


def curve_records(zoo_dir: str | Path, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Read the stored curve summaries of a zoo back, one flat record per (pair, epoch, settings).

    Args:
        zoo_dir: a zoo directory.
        params: only rows stored with these settings (see :func:`pair_params`); default all.

    Returns:
        Dicts with ``model_id``, ``other_id``, ``epoch``, ``cell`` (index as in :func:`curve_pairs`), ``params``
        and every stored ``curve_*`` metric.

    Raises:
        FileNotFoundError: not a zoo directory.
    """
    from zooscape.zoo.reader import open_zoo

    store = zoo_store(zoo_dir)
    with open_zoo(store.root) as zoo:
        rows = zoo.catalog.query("SELECT model_id, other_id, epoch, metric, value, params FROM analyses ORDER BY id")
        cells, _ = _cells(zoo)
    cell_of = {m: i for i, ids in enumerate(cells) for m in ids}
    records: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for a, b, e, metric, value, p in rows:
        stored = json.loads(p)
        if stored.get("experiment") != PAIRS_EXPERIMENT or (params is not None and stored != dict(params)):
            continue
        rec = records.setdefault((a, b, e, p), {"model_id": a, "other_id": b, "epoch": e,
                                                "cell": cell_of.get(a, -1), "params": stored})
        rec[metric] = math.nan if value is None else float(value)
    return sorted(records.values(), key=lambda r: (r["cell"], r["model_id"], r["other_id"], r["epoch"]))
