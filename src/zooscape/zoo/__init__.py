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

from zooscape.zoo.catalog import Catalog
from zooscape.zoo.engines import Engine, EngineError, LocalEngine, emit, get_engine
from zooscape.zoo.grid import Group, checkpoint_epochs, expand_spec, group_configs, model_id
from zooscape.zoo.raytune import ImportReport, export_raytune, import_raytune
from zooscape.zoo.reader import Zoo, open_zoo
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

open = open_zoo  # noqa: A001 - ``zooscape.zoo.open(path)`` reads like ``open``

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
