"""``export_raytune``: a zoo of ours -> the Ray Tune folder layout, for users of the old tools.

Part of :mod:`zooscape.zoo.raytune` (see its docstring for the layout and the guarantees).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zooscape.zoo.raytune.layout import (
    _SCHEDULER_NAMES,
    _TYPE_OF_MODEL,
    CONFIG_KEY,
    OPTIMIZER_FILE,
    PARAM_MAP,
    PARAMS_FILE,
    RESULT_FILE,
    WEIGHTS_FILE,
    optimizer_to_torch,
)

log = logging.getLogger("zooscape.zoo")


# ----------------------------------------------------------------------------------------------- export


@dataclass
class ExportReport:
    """Outcome of :func:`export_raytune`.

    Args:
        out_dir: the folder written.
        trials: trial folder name per exported model id.
        n_checkpoints: weight checkpoints written.
    """

    out_dir: Path
    trials: dict[str, str] = field(default_factory=dict)
    n_checkpoints: int = 0


def _params_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat Model-Zoos-style params for a config of ours (plus ``zooscape::config`` for exact re-import)."""
    model, training, data = config["model"], config["training"], config["dataset"]
    args = {**(config.get("derived", {}).get("model_args") or {}), **model}
    out: dict[str, Any] = {"model::type": _TYPE_OF_MODEL.get(model["name"], model["name"])}
    reverse = {v: k for k, v in PARAM_MAP.items() if k != "model::type"}
    for key, value in args.items():
        if key in ("name", "input_size"):
            continue
        out[reverse.get(("model", key), f"model::{key}")] = value
    for key, value in training.items():
        if key == "schedule":
            if value in _SCHEDULER_NAMES:
                out["optim::scheduler"] = _SCHEDULER_NAMES[value]
            continue
        out[reverse.get(("training", key), f"training::{key}")] = value
    for key, value in data.items():
        out[f"dataset::{key}"] = value
    out[CONFIG_KEY] = {s: config[s] for s in ("dataset", "model", "training")}
    return out


def _atomic_torch_save(obj: Any, path: Path) -> None:
    from zooscape._io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_line(obj: Mapping[str, Any]) -> str:
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in obj.items()},
                      sort_keys=False, default=str)


def export_raytune(
    zoo: Any,
    out_dir: str | Path,
    epochs: Sequence[int] | None = None,
    optimizer: bool = True,
    model_ids: Sequence[str] | None = None,
    on_model: Callable[[str], None] | None = None,
) -> ExportReport:
    """Write a zoo of ours in the Ray Tune layout of the published zoos (for users of the old tools).

    One folder ``NN_tune_trainable_<model_id>_<index>`` per model with ``params.json`` (Model Zoos keys plus
    ``zooscape::config``), ``result.json`` (line e = metrics at epoch e) and ``checkpoint_{epoch:06d}/checkpoints``
    (``torch.save`` of the state dict) and ``optimizer`` (a torch-style optimizer state dict). Files are written
    atomically.

    Args:
        zoo: an open :class:`zooscape.zoo.Zoo` or its directory.
        out_dir: folder to write into (created; must not already hold trial folders of other models).
        epochs: checkpoint epochs to write (default: all).
        optimizer: also write optimizer files where the zoo has optimizer shards.
        model_ids: models to export (default: all).
        on_model: called with each model id after it is written (progress).

    Returns:
        :class:`ExportReport`.
    """
    from zooscape._io import atomic_write_bytes
    from zooscape.zoo.reader import Zoo, open_zoo

    own = not isinstance(zoo, Zoo)
    z = open_zoo(zoo) if own else zoo
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir=out_dir)
    try:
        ids = list(model_ids) if model_ids is not None else z.model_ids
        metrics = z.metrics()
        by_model = {m: g for m, g in metrics.groupby("model_id")} if not metrics.empty else {}
        wanted = None if epochs is None else {int(e) for e in epochs}
        for index, mid in enumerate(ids):
            config = z.config(mid)
            params = _params_of(config)
            trial = out_dir / f"NN_tune_trainable_{mid}_{index:05d}"
            trial.mkdir(exist_ok=True)
            atomic_write_bytes(trial / PARAMS_FILE, json.dumps(params, indent=2, default=str).encode("utf-8"))
            lines = []
            rows = by_model.get(mid)
            if rows is not None:
                last = int(rows["epoch"].max())
                for e in range(last + 1):
                    sel = rows[rows["epoch"] == e]
                    line: dict[str, Any] = {str(k): (None if v != v else float(v)) for k, v in
                                            zip(sel["name"], sel["value"]) if k != "epoch_time_s"}
                    if "epoch_time_s" in set(sel["name"]):
                        line["time_this_iter_s"] = float(sel[sel["name"] == "epoch_time_s"]["value"].iloc[0])
                    line.update({"training_iteration": e + 1, "done": e == last, "trial_id": mid})
                    lines.append(_json_line(line))
            atomic_write_bytes(trial / RESULT_FILE, ("\n".join(lines) + "\n").encode("utf-8"))
            model = None
            for e in z.epochs(mid):
                if wanted is not None and e not in wanted:
                    continue
                d = trial / f"checkpoint_{e:06d}"
                d.mkdir(exist_ok=True)
                _atomic_torch_save(z.state_dict(mid, e), d / WEIGHTS_FILE)
                report.n_checkpoints += 1
                if optimizer and e in z.epochs(mid, "optimizer"):
                    if model is None:
                        model = z.load_model(mid, e)
                    names = [n for n, _ in model.named_parameters()]
                    tr = config["training"]
                    group = {k: tr[k] for k in ("lr", "weight_decay", "momentum") if k in tr}
                    _atomic_torch_save(optimizer_to_torch(z.optimizer_state(mid, e), names, group),
                                       d / OPTIMIZER_FILE)
            report.trials[mid] = trial.name
            if on_model is not None:
                on_model(mid)
    finally:
        if own:
            z.close()
    return report
