"""Averaging tasks of the phase-transition study: epoch averaging per model, seed averaging and soups per cell.

Each task is a picklable description run on the zoo's engines; it only reads the zoo (models, checkpoints, data),
calls the pure functions of :mod:`zooscape.phase.averaging` and returns ``analyses`` rows for the driver to commit
(:mod:`zooscape.studies.jobs`). :func:`averaging_tasks` plans them against the rows already stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zooscape.studies.cells import zoo_cells

__all__ = ["EPOCH_AVERAGE", "SEED_AVERAGE", "CellAverageTask", "EpochAverageTask", "averaging_tasks",
           "run_cell_average_task", "run_epoch_average_task"]

EPOCH_AVERAGE = "phase_epoch_average"
SEED_AVERAGE = "phase_seed_average"


def _bn_inputs(data: Any, n: int, seed: int) -> Any:
    import torch

    x = data.train_x
    if n and n < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n]
        x = x[torch.sort(idx).values]
    return x


def _evaluate(model: Any, data: Any, split: str) -> tuple[float, float]:
    from zooscape.connect.metrics import evaluate_model

    x, y = data.split(split)
    loss, error = evaluate_model(model, x, y, data.task)
    return float(loss), float("nan") if error is None else 1.0 - float(error)


@dataclass
class EpochAverageTask:
    """Epoch averaging of one model: the uniform average of its checkpoints ``epochs`` (picklable).

    Args:
        root: zoo directory.
        model_id: the model.
        epoch: the study epoch (the last of ``epochs``).
        params: stored settings (``analysis``, ``average_last``, ``epochs``, ``bn_samples``, ``seed``).
        device: torch device.
    """

    root: str
    model_id: str
    epoch: int
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def run_epoch_average_task(task: EpochAverageTask) -> dict[str, Any]:
    """Average the model's checkpoints, re-estimate BatchNorm, evaluate; return catalog rows.

    Rows (``model_id``, epoch = the study epoch): ``epoch_avg_acc_test``, ``epoch_avg_loss_test`` and
    ``epoch_avg_acc_test_delta`` (the average's test accuracy minus the model's at the study epoch).

    Args:
        task: the task.

    Returns:
        dict with ``model_ids`` and ``rows``.

    References:
        Izmailov et al. (2018), SWA; Schürholt et al. (2024), "wiseft" epoch averaging of the phase zoo.
    """
    from zooscape.phase.averaging import epoch_average
    from zooscape.zoo.reader import open_zoo

    p = task.params
    with open_zoo(task.root) as zoo:
        model = zoo.load_model(task.model_id, task.epoch, device=task.device)
        states = [zoo.state_dict(task.model_id, e) for e in p["epochs"]]
        data = zoo.data(task.model_id)
    avg = epoch_average(model, states, bn_data=_bn_inputs(data, p["bn_samples"], p["seed"]))
    loss, acc = _evaluate(avg, data, "test")
    _, acc0 = _evaluate(model, data, "test")
    values = {"epoch_avg_acc_test": acc, "epoch_avg_loss_test": loss, "epoch_avg_acc_test_delta": acc - acc0}
    rows = [{"model_id": task.model_id, "other_id": None, "epoch": task.epoch, "metric": k, "value": v,
             "params": p} for k, v in values.items()]
    return {"model_ids": [task.model_id], "rows": rows}


@dataclass
class CellAverageTask:
    """Seed averaging and soups of one grid cell at one epoch (picklable).

    Args:
        root: zoo directory.
        cell: cell index.
        epoch: the study epoch.
        params: stored settings (``analysis``, ``members``, ``bn_samples``, ``seed``, ``selection_split``).
        device: torch device.
    """

    root: str
    cell: int
    epoch: int
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def run_cell_average_task(task: CellAverageTask) -> dict[str, Any]:
    """Average a cell's seeds (naive; weight-matched) and make its soups; return catalog rows.

    Rows (``model_id`` = the cell's first member, ``other_id`` NULL, ``params.members`` = all members):
    ``seed_avg_naive_*``, ``seed_avg_aligned_*``, ``soup_uniform_*`` and ``soup_greedy_*`` with suffixes
    ``acc_test``, ``loss_test`` and ``acc_test_delta`` (test accuracy minus the mean of the members'), plus
    ``soup_greedy_size`` (ingredients) and ``soup_greedy_acc_<selection split>``. The uniform soup of a cell's
    seeds is by definition their naive average (one model, computed once, stored under both names).

    Args:
        task: the task.

    Returns:
        dict with ``model_ids`` and ``rows``.

    References:
        Ainsworth et al. (2023), "Git Re-Basin"; Wortsman et al. (2022), "Model soups".
    """
    from zooscape.phase.averaging import average_models, greedy_soup
    from zooscape.zoo.reader import open_zoo

    p = task.params
    members = list(p["members"])
    with open_zoo(task.root) as zoo:
        models = [zoo.load_model(m, task.epoch, device=task.device) for m in members]
        data = zoo.data(members[0])
    bn_x = _bn_inputs(data, p["bn_samples"], p["seed"])
    base = sum(_evaluate(m, data, "test")[1] for m in models) / len(models)
    results = {
        "seed_avg_naive": average_models(models, "none", bn_data=bn_x),
        "seed_avg_aligned": average_models(models, "weight", bn_data=bn_x, seed=p["seed"]),
    }
    results["soup_uniform"] = results["seed_avg_naive"]
    x_sel, y_sel = data.split(p["selection_split"])
    soup = greedy_soup(models, x_sel, y_sel, bn_data=bn_x)
    results["soup_greedy"] = soup.model
    values: dict[str, float] = {}
    for name, model in results.items():
        loss, acc = _evaluate(model, data, "test")
        values.update({f"{name}_acc_test": acc, f"{name}_loss_test": loss, f"{name}_acc_test_delta": acc - base})
    values["soup_greedy_size"] = float(len(soup.ingredients))
    values[f"soup_greedy_acc_{p['selection_split']}"] = soup.accuracy
    rows = [{"model_id": members[0], "other_id": None, "epoch": task.epoch, "metric": k, "value": v, "params": p}
            for k, v in values.items()]
    return {"model_ids": members, "cell": task.cell, "rows": rows}


def _stored_params(catalog: Any, metric: str, epoch: int) -> set[tuple[str, str]]:
    rows = catalog.query("SELECT model_id, params FROM analyses WHERE metric = ? AND epoch = ?", (metric, epoch))
    return {(m, p) for m, p in rows}


def averaging_tasks(zoo: Any, settings: Mapping[str, Any], epoch: int, device: str
                     ) -> tuple[list[EpochAverageTask], list[CellAverageTask], int, list[str]]:
    k = settings["average_last"]
    window = list(range(epoch - k + 1, epoch + 1))
    if window[0] < 0:
        raise ValueError(f"[phase] average_last = {k} reaches before epoch 0 from the study epoch {epoch}")
    common = {"bn_samples": settings["bn_samples"], "seed": settings["seed"]}
    stored_e = _stored_params(zoo.catalog, "epoch_avg_acc_test", epoch)
    stored_c = _stored_params(zoo.catalog, "seed_avg_naive_acc_test", epoch)
    epoch_tasks, cell_tasks, done, messages = [], [], 0, []
    for cell in zoo_cells(zoo):
        usable = [m for m in cell.model_ids if epoch in zoo.epochs(m, "weights")]
        for mid in usable:
            missing = [e for e in window if e not in zoo.epochs(mid, "weights")]
            if missing:
                raise ValueError(f"epoch averaging of the last {k} epochs needs weights checkpoints at epochs "
                                 f"{window}; model {mid} has none at {missing} (add them to [checkpoints] epochs, "
                                 "or lower [phase] average_last)")
            params = {"analysis": EPOCH_AVERAGE, "average_last": k, "epochs": window, **common}
            if (mid, json.dumps(params, sort_keys=True)) in stored_e:
                done += 1
            else:
                epoch_tasks.append(EpochAverageTask(str(zoo.path), mid, epoch, params, device))
        if len(usable) < 2:
            messages.append(f"{cell.label}: fewer than 2 models at epoch {epoch}, no seed averaging")
            continue
        params = {"analysis": SEED_AVERAGE, "members": usable, "selection_split": "val", **common}
        if (usable[0], json.dumps(params, sort_keys=True)) in stored_c:
            done += 1
        else:
            cell_tasks.append(CellAverageTask(str(zoo.path), cell.index, epoch, params, device))
    return epoch_tasks, cell_tasks, done, messages
