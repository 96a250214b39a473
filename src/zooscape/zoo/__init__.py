"""zooscape.zoo: zoo specs, the on-disk store and the engines that fill it.

Spec (TOML) -> expanded model configs with stable ids -> grouped into populations -> engine -> store
(SQLite catalog + safetensors shards). See ``docs/zoo-format.md``.

Public API:
    :func:`load_spec`, :class:`ZooSpec`, :class:`SpecError` (spec files);
    :func:`expand_spec`, :func:`group_configs`, :func:`model_id` (grid expansion);
    :func:`train_zoo`, :func:`plan_zoo` (the driver); :class:`Engine`, :class:`LocalEngine`, :func:`emit`;
    :func:`open` -> :class:`Zoo` (reading); :class:`Catalog`, :class:`ZooStore` (storage);
    ``Zoo.dataset(...)`` -> :class:`ZooDatasets` of vectorised weights (:class:`IndexMap`, :func:`vectorize`,
    :func:`vector_to_state_dict`, :class:`Filters`); :func:`import_raytune` / :func:`export_raytune` (the Ray Tune
    layout of the published zoos).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562), so that ``import zooscape.zoo.spec`` or reading a zoo's metadata
# (``zooscape zoo info``) does not import torch or pandas; ``from zooscape.zoo import Zoo`` works as before.
_LAZY: dict[str, str] = {
    "Catalog": "catalog",
    "Engine": "engines", "EngineError": "engines", "LocalEngine": "engines", "emit": "engines",
    "get_engine": "engines",
    "Group": "grid", "checkpoint_epochs": "grid", "expand_spec": "grid", "group_configs": "grid", "model_id": "grid",
    "ImportReport": "raytune", "export_raytune": "raytune", "import_raytune": "raytune",
    "Zoo": "reader", "open_zoo": "reader", "open": "reader",
    "ZooPlan": "runner", "plan_zoo": "runner", "train_zoo": "runner",
    "SpecError": "spec", "ZooSpec": "spec", "dump_spec": "spec", "load_spec": "spec", "parse_spec": "spec",
    "ZooExistsError": "store", "ZooStore": "store",
    "DatasetReport": "weights", "Filters": "weights", "IndexMap": "weights", "WeightsDataset": "weights",
    "ZooDatasets": "weights", "index_map": "weights", "vector_to_state_dict": "weights", "vectorize": "weights",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from zooscape.zoo.catalog import Catalog
    from zooscape.zoo.engines import Engine, EngineError, LocalEngine, emit, get_engine
    from zooscape.zoo.grid import Group, checkpoint_epochs, expand_spec, group_configs, model_id
    from zooscape.zoo.raytune import ImportReport, export_raytune, import_raytune
    from zooscape.zoo.reader import Zoo, open_zoo
    from zooscape.zoo.reader import open_zoo as open  # noqa: A001
    from zooscape.zoo.runner import ZooPlan, plan_zoo, train_zoo
    from zooscape.zoo.spec import SpecError, ZooSpec, dump_spec, load_spec, parse_spec
    from zooscape.zoo.store import ZooExistsError, ZooStore
    from zooscape.zoo.weights import (
        DatasetReport,
        Filters,
        IndexMap,
        WeightsDataset,
        ZooDatasets,
        index_map,
        vector_to_state_dict,
        vectorize,
    )


def __getattr__(name: str) -> Any:
    """Import the public name ``name`` from its module on first use (``zooscape.zoo.open`` is ``open_zoo``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zooscape.zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"zooscape.zoo.{module}"), "open_zoo" if name == "open" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Catalog",
    "Engine",
    "EngineError",
    "Group",
    "LocalEngine",
    "SpecError",
    "Zoo",
    "ZooExistsError",
    "ZooPlan",
    "ZooSpec",
    "ZooStore",
    "checkpoint_epochs",
    "dump_spec",
    "emit",
    "expand_spec",
    "get_engine",
    "group_configs",
    "load_spec",
    "model_id",
    "open",
    "open_zoo",
    "parse_spec",
    "plan_zoo",
    "train_zoo",
    # zoo datasets and the Ray Tune layout
    "DatasetReport",
    "Filters",
    "ImportReport",
    "IndexMap",
    "WeightsDataset",
    "ZooDatasets",
    "export_raytune",
    "import_raytune",
    "index_map",
    "vector_to_state_dict",
    "vectorize",
]
