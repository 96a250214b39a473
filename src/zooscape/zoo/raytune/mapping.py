"""Mapping a Ray Tune trial's flat ``params.json`` onto zooscape's ``dataset``/``model``/``training`` sections.

Part of :mod:`zooscape.zoo.raytune` (see its docstring for the layout and the guarantees).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Mapping
from typing import Any

from zooscape.zoo.raytune.layout import (
    _DATA_TOKENS,
    _INT64_MAX,
    _SCHEDULERS,
    CONFIG_KEY,
    MODEL_TYPES,
    PARAM_MAP,
    PARAMS_FILE,
    TrialError,
)

log = logging.getLogger("zooscape.zoo")


# ----------------------------------------------------------------------------------------------- config mapping


def _num(value: Any, kind: type, key: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TrialError(f"{PARAMS_FILE}: {key!r} must be a number, got {value!r}")
    if kind is int:
        if not math.isfinite(float(value)) or float(value) != int(value):
            raise TrialError(f"{PARAMS_FILE}: {key!r} must be an integer, got {value!r}")
        if abs(int(value)) > _INT64_MAX:
            raise TrialError(f"{PARAMS_FILE}: {key!r} = {value!r} does not fit in 64 bits")
        return int(value)
    if not math.isfinite(float(value)):
        raise TrialError(f"{PARAMS_FILE}: {key!r} must be finite, got {value!r}")
    return float(value)


def _train_fields() -> dict[str, Any]:
    from zooscape.train import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _guess_dataset(params: Mapping[str, Any]) -> str | None:
    for key in ("dataset::dump", "training::data_path", "dataset::name"):
        text = str(params.get(key, "")).lower()
        for token, name in _DATA_TOKENS:
            if token in text:
                return name
    return None


def map_params(
    params: Mapping[str, Any],
    dataset: Mapping[str, Any] | None = None,
    model_types: Mapping[str, str | tuple[str, Mapping[str, Any]]] | None = None,
    n_epochs: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Map a flat ``params.json`` onto our ``dataset``, ``model`` and ``training`` sections.

    ``zooscape::config`` (written by :func:`export_raytune`) is used as is. Otherwise :data:`PARAM_MAP` and the
    generic ``model::<keyword>``, ``training::<TrainConfig field>`` and ``dataset::<option>`` keys are mapped;
    values that have no equivalent (an unknown optimizer or scheduler) are left out. The data set is ``dataset``
    if given, else ``dataset::name``/``dataset::<option>``, else guessed from the ``dataset::dump`` path.

    Args:
        params: the trial's params.json.
        dataset: our ``[dataset]`` section (overrides what params.json says).
        model_types: extra ``model::type`` values -> model name or (name, fixed keywords).
        n_epochs: epochs recorded in result.json (used when params.json has no ``training::epochs_train``).

    Returns:
        ``{"dataset": {...}, "model": {...}, "training": {...}}``.

    Raises:
        TrialError: unsupported model type, invalid value, unknown data set.
    """
    from zooscape.data import dataset_options, list_datasets
    from zooscape.models import ACTIVATIONS, INIT_SCHEMES, get_model_entry, list_models
    from zooscape.models.registry import COMMON_ARGS
    from zooscape.train import OPTIMIZERS

    if CONFIG_KEY in params:
        cfg = params[CONFIG_KEY]
        if not isinstance(cfg, Mapping) or not all(isinstance(cfg.get(s), Mapping) for s in
                                                   ("dataset", "model", "training")):
            raise TrialError(f"{PARAMS_FILE}: {CONFIG_KEY!r} must hold dataset/model/training objects")
        out = {s: dict(cfg[s]) for s in ("dataset", "model", "training")}
        if dataset is not None:
            out["dataset"] = dict(dataset)
        return out

    types = {k: (v, {}) if isinstance(v, str) else (v[0], dict(v[1])) for k, v in (model_types or {}).items()}
    types = {**MODEL_TYPES, **types}
    model: dict[str, Any] = {}
    training: dict[str, Any] = {}
    raw_type = params.get("model::type")
    if raw_type is None:
        raise TrialError(f"{PARAMS_FILE}: no 'model::type'")
    if raw_type in types:
        name, fixed = types[raw_type]
    elif raw_type in list_models():
        name, fixed = raw_type, {}
    else:
        raise TrialError(f"unsupported model::type {raw_type!r} (supported: {sorted(types)}; "
                         "map it with model_types / --model-type TYPE=NAME)")
    model["name"] = name
    model.update(fixed)
    family = set(get_model_entry(name).family_kwargs) | set(COMMON_ARGS) | {"init"}
    fields = _train_fields()
    for key, value in params.items():
        if key in ("model::type", CONFIG_KEY) or value is None:
            continue
        section, sub = PARAM_MAP.get(key, (None, None))
        if section is None:
            prefix, _, rest = key.partition("::")
            if prefix == "model" and rest in family:
                section, sub = "model", rest
            elif prefix == "training" and rest in fields:
                section, sub = "training", rest
            else:
                continue
        if (section, sub) == ("model", "activation"):
            act = str(value).lower().replace("_", "")
            if act not in ACTIVATIONS:
                raise TrialError(f"{PARAMS_FILE}: {key!r} = {value!r} is not one of {list(ACTIVATIONS)}")
            model["activation"] = act
        elif (section, sub) == ("model", "init"):
            if value not in INIT_SCHEMES:
                raise TrialError(f"{PARAMS_FILE}: {key!r} = {value!r} is not one of {list(INIT_SCHEMES)}")
            model["init"] = None if value == "default" else value
        elif (section, sub) == ("model", "dropout"):
            model["dropout"] = _num(value, float, key)
        elif (section, sub) in (("model", "in_channels"), ("model", "num_classes"), ("model", "width")):
            model[sub] = _num(value, int, key)
        elif section == "model":
            model[sub] = value
        elif (section, sub) == ("training", "optimizer"):
            if str(value).lower() in OPTIMIZERS:
                training["optimizer"] = str(value).lower()
        elif (section, sub) == ("training", "schedule"):
            sched = _SCHEDULERS.get(str(value).lower().replace("_", ""))
            if sched is not None:
                training["schedule"] = sched
        elif sub in ("lr", "weight_decay", "momentum"):
            training[sub] = _num(value, float, key)
        elif sub in ("batch_size", "epochs", "seed", "data_seed"):
            training[sub] = _num(value, int, key)
        else:
            f = fields[sub]
            training[sub] = _num(value, type(f.default), key) if isinstance(f.default, int | float) and \
                not isinstance(f.default, bool) else value
    if model.get("init") is None:
        model.pop("init", None)
    if "epochs" not in training and n_epochs is not None:
        training["epochs"] = int(n_epochs)

    if dataset is not None:
        data = dict(dataset)
    elif "dataset::name" in params:
        data = {"name": params["dataset::name"]}
        for key, value in params.items():
            prefix, _, rest = key.partition("::")
            if prefix == "dataset" and rest not in ("name", "dump"):
                data[rest] = value
    else:
        guess = _guess_dataset(params)
        if guess is None:
            raise TrialError("cannot tell which data set the trial used (no dataset::name, and no known data set "
                             "in dataset::dump); pass dataset= / --dataset NAME")
        data = {"name": guess}
    if data.get("name") not in list_datasets():
        raise TrialError(f"unknown data set {data.get('name')!r}; known: {list_datasets()}")
    bad = sorted(set(data) - {"name", "seed", "train_fraction", "label_noise", "data_root"}
                 - set(dataset_options(data["name"])))
    if bad:
        raise TrialError(f"data set {data['name']!r} has no option(s) {bad}")
    return {"dataset": data, "model": model, "training": training}
