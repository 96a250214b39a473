"""Grid expansion: a spec -> model configs with stable ids, derived fields and training groups.

A *model config* is a nested dict ``{"model_id", "group_id", "dataset": {...}, "model": {...},
"training": {...}, "derived": {...}}``. ``model_id`` is the first 12 hex digits of the SHA-256 of the canonical
JSON (sorted keys) of the ``dataset``/``model``/``training`` sections, so it depends only on the content of the
config, never on the order of the grid or on the zoo it belongs to.

Derived fields (``derived``):

- ``temperature = lr / batch_size`` (the SGD noise scale of the phase-transition zoos),
- ``load = n_train / n_params`` (training samples per parameter; filled by :func:`resolve_sizes`, together with
  ``n_train``, ``n_params`` and ``model_args``, the data-dependent ``create_model`` arguments),
- ``width`` (``model.width`` or None), ``train_fraction`` (``dataset.train_fraction``, default 1.0).

Models that differ only in :data:`MEMBER_KEYS` share architecture, data and schedule and train together as one
population; each such set is cut into chunks of at most ``max_population`` models (sorted by ``model_id``).
``group_id`` hashes the sorted member ids, so it is stable too.

References:
    Schürholt et al. (2022), "Model Zoos: A Dataset of Diverse Populations of Neural Network Models";
    Yang et al. (2023), "Taxonomizing local versus global structure in neural network loss landscapes"
    (temperature/load phase diagrams).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zooscape.zoo.spec import SpecError, ZooSpec

__all__ = [
    "MEMBER_KEYS",
    "Group",
    "canonical_json",
    "checkpoint_epochs",
    "expand_spec",
    "group_configs",
    "group_key",
    "model_id",
    "model_kind",
    "resolve_sizes",
]

#: Config keys that may differ between members of one training population.
#: The ``[training]`` ones come from :meth:`zooscape.train.Member.keys` (the one source of per-model settings);
#: ``model.init`` only changes how each member's weights are drawn (every member is built on its own).
#: (Computed on first use, so that reading a zoo's metadata does not import the trainer and torch.)
MEMBER_KEYS: tuple[tuple[str, str], ...]


@functools.cache
def _member_keys() -> tuple[tuple[str, str], ...]:
    from zooscape.train.config import Member

    return (*(("training", k) for k in Member.keys()), ("model", "init"))


def __getattr__(name: str) -> Any:
    if name == "MEMBER_KEYS":
        return _member_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
ID_LENGTH = 12
CONFIG_SECTIONS = ("dataset", "model", "training")


def canonical_json(obj: Any) -> str:
    """Serialise to canonical JSON (sorted keys, no spaces).

    Args:
        obj: JSON-compatible object.

    Returns:
        str.
    """
    return _ENCODER.encode(obj)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _fresh(value: Any) -> Any:
    """A private copy of a mutable TOML value (lists, tables); scalars as they are."""
    return copy.deepcopy(value) if isinstance(value, list | dict) else value


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def model_id(config: Mapping[str, Any]) -> str:
    """Stable id of a model config: hash of the canonical JSON of its dataset/model/training sections.

    Args:
        config: nested dict with (at least) the sections ``dataset``, ``model``, ``training``.

    Returns:
        12 lowercase hex digits.
    """
    return _digest(canonical_json({s: config[s] for s in CONFIG_SECTIONS}))


def group_key(config: Mapping[str, Any]) -> str:
    """Canonical JSON of a config without its member keys (equal keys -> may train together).

    Args:
        config: nested model config.

    Returns:
        str.
    """
    stripped = {s: dict(config[s]) for s in CONFIG_SECTIONS}
    for section, key in _member_keys():
        stripped[section].pop(key, None)
    return canonical_json(stripped)


def _derived(config: Mapping[str, Any], training_defaults: Mapping[str, Any]) -> dict[str, Any]:
    tr = config["training"]
    lr = tr.get("lr", training_defaults.get("lr"))
    bs = tr.get("batch_size", training_defaults.get("batch_size"))
    temperature = float(lr) / float(bs) if lr is not None and bs else None
    return {
        "temperature": temperature,
        "load": None,
        "n_params": None,
        "n_train": None,
        "model_args": {},
        "width": config["model"].get("width"),
        "train_fraction": float(config["dataset"].get("train_fraction", 1.0)),
    }


def expand_spec(spec: ZooSpec, training_defaults: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Expand the grid of a spec (full Cartesian product) into model configs with ids and groups.

    Args:
        spec: validated spec.
        training_defaults: TrainConfig defaults used for derived fields when ``lr``/``batch_size`` are not in the
            spec; default: read from :class:`zooscape.train.TrainConfig` when available.

    Returns:
        list of nested dicts, one per model, sorted by ``model_id``; each has ``model_id``, ``group_id``,
        ``dataset``, ``model``, ``training`` and ``derived`` (see module docstring).

    Raises:
        SpecError: two grid points give the same config.
    """
    if training_defaults is None:
        training_defaults = _train_defaults()
    keys = sorted(spec.grid)
    split = [tuple(k.split(".")) for k in keys]
    base = {"dataset": spec.dataset, "model": spec.model, "training": spec.training}
    configs: dict[str, dict[str, Any]] = {}
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        cfg = {s: {k: _fresh(v) for k, v in sec.items()} for s, sec in base.items()}
        for (section, sub), value in zip(split, values):
            cfg[section][sub] = _fresh(value)
        mid = model_id(cfg)
        if mid in configs:
            raise SpecError(spec.path, "[grid]", f"two grid points give the same model config {canonical_json(cfg)}")
        configs[mid] = {"model_id": mid, "group_id": None, **cfg, "derived": _derived(cfg, training_defaults)}
    out = [configs[k] for k in sorted(configs)]
    for group in group_configs(out, spec.max_population):
        for mid in group.model_ids:
            configs[mid]["group_id"] = group.group_id
    return out


def _train_defaults() -> dict[str, Any]:
    try:
        import dataclasses

        from zooscape.train import TrainConfig
    except ImportError:
        return {}
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


@dataclass(frozen=True)
class Group:
    """A set of models trained together as one population.

    Args:
        group_id: 12 hex digits, hash of the sorted member ids.
        model_ids: member ids, sorted.
        key: canonical JSON shared by the members (see :func:`group_key`).
    """

    group_id: str
    model_ids: tuple[str, ...]
    key: str


def group_configs(configs: Sequence[Mapping[str, Any]], max_population: int) -> list[Group]:
    """Partition model configs into training populations.

    Args:
        configs: model configs (with ``model_id``).
        max_population: largest population size (>= 1).

    Returns:
        list of Group, sorted by group id; every model is in exactly one group.
    """
    if max_population < 1:
        raise ValueError(f"max_population must be >= 1, got {max_population}")
    by_key: dict[str, list[str]] = {}
    for cfg in configs:
        by_key.setdefault(group_key(cfg), []).append(cfg["model_id"])
    groups = []
    for key, ids in by_key.items():
        ids = sorted(ids)
        for start in range(0, len(ids), max_population):
            chunk = tuple(ids[start : start + max_population])
            groups.append(Group(group_id=_digest("group:" + ",".join(chunk)), model_ids=chunk, key=key))
    return sorted(groups, key=lambda g: g.group_id)


def checkpoint_epochs(spec_epochs: str | Sequence[int], epochs: int) -> tuple[int, ...]:
    """Epochs at which a model trained for ``epochs`` epochs is checkpointed (always 0 and ``epochs``).

    Args:
        spec_epochs: ``"all"`` or a list of epochs from ``[checkpoints] epochs``.
        epochs: number of training epochs of the model.

    Returns:
        sorted tuple of ints in ``[0, epochs]``.
    """
    if isinstance(spec_epochs, str):
        if spec_epochs != "all":
            raise ValueError(f"spec_epochs must be 'all' or a list of ints, got {spec_epochs!r}")
        return tuple(range(epochs + 1))
    return tuple(sorted({0, epochs} | {int(e) for e in spec_epochs if 0 <= int(e) <= epochs}))


def resolve_sizes(
    configs: Sequence[dict[str, Any]],
    describe_data: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    count_params: Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], int],
    spec_path: str = "<memory>",
) -> None:
    """Fill ``derived.n_train``, ``derived.model_args``, ``derived.n_params`` and ``derived.load`` in place.

    ``load = n_train / n_params``. ``model_args`` are the data-dependent model arguments (``num_classes``,
    ``in_channels``, ``input_size``) that the ``[model]`` section does not set itself. Each distinct data set and
    each distinct model (ignoring ``init``) is measured once.

    Args:
        configs: model configs from :func:`expand_spec`.
        describe_data: dataset section -> ``{"n_train": int, "model_args": dict, ...}`` (e.g. loads the data set).
        count_params: (model section, model_args, describe_data's dict) -> number of parameters (e.g. builds the
            model and checks that it accepts the data).
        spec_path: file name for error messages.

    Raises:
        SpecError: loading a data set or building a model failed (message names the section).
    """
    data_cache: dict[str, Mapping[str, Any]] = {}
    params_cache: dict[str, int] = {}
    for cfg in configs:
        dkey = canonical_json(cfg["dataset"])
        if dkey not in data_cache:
            try:
                data_cache[dkey] = describe_data(cfg["dataset"])
            except SpecError:
                raise
            except Exception as exc:
                raise SpecError(spec_path, "[dataset]", f"cannot load data set {dkey}: {exc}") from exc
        info = data_cache[dkey]
        model_args = {k: v for k, v in info.get("model_args", {}).items() if k not in cfg["model"]}
        mkey = canonical_json([{k: v for k, v in cfg["model"].items() if k != "init"}, model_args])
        if mkey not in params_cache:
            try:
                params_cache[mkey] = int(count_params(cfg["model"], model_args, info))
            except SpecError:
                raise
            except Exception as exc:
                raise SpecError(spec_path, "[model]", f"cannot build model {canonical_json(cfg['model'])} "
                                f"with data arguments {canonical_json(model_args)}: {exc}") from exc
        n_params, n_train = params_cache[mkey], int(info["n_train"])
        cfg["derived"]["n_train"] = n_train
        cfg["derived"]["model_args"] = model_args
        cfg["derived"]["n_params"] = n_params
        cfg["derived"]["load"] = n_train / n_params if n_params else None


def model_kind(derived: dict[str, Any]) -> tuple[str, str | None]:
    """``(kind, source_id)`` of a model from its config's ``derived`` section: ``("twin", <source id>)`` for a
    sparsified twin (``derived.twin.source``, see :mod:`zooscape.studies.twins`), ``("model", None)`` otherwise."""
    twin = derived.get("twin")
    if isinstance(twin, dict):
        return "twin", twin.get("source")
    return "model", None
