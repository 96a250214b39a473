"""zooscape.studies: zoo-wide experiments, run through the zoo's engines, results stored as catalog rows.

Every study groups models with the one definition of a grid cell (:mod:`zooscape.studies.cells`) and orchestrates
the pure analyses of :mod:`zooscape.connect`, :mod:`zooscape.align` and :mod:`zooscape.landscape`:

- :mod:`~zooscape.studies.metrics`: loss-landscape metrics over a zoo (``zooscape metrics run``);
- :mod:`~zooscape.studies.lmc`: linear mode connectivity: the instability (spawn) experiment (``zooscape lmc
  spawn``); :mod:`~zooscape.studies.lmc_pairs`: barriers of every seed pair of a cell before and after alignment
  and renormalisation (``zooscape lmc pairs``); :mod:`~zooscape.studies.lmc_train`: LMC measured during training
  (``[lmc] every``, ``zooscape lmc progress``);
- :mod:`~zooscape.studies.merges`: merging a cell's seeds into a derived model (``zooscape align merge``);
- :mod:`~zooscape.studies.curves`: curve mode connectivity of every seed pair (``zooscape curve pairs``), and
  :mod:`~zooscape.studies.curve_runs` for TOML-configured curve runs (``zooscape curve train|eval``);
- :mod:`~zooscape.studies.phase`: the phase-transition study (``zooscape phase run|table|plot``), with its spec
  (:mod:`~zooscape.studies.phase_spec`) and averaging tasks (:mod:`~zooscape.studies.phase_tasks`);
- :mod:`~zooscape.studies.jobs`: the driver side shared by the studies (planning against stored rows, committing
  each task's rows in one transaction).

Public API (imported lazily, so ``import zooscape.studies`` is cheap): :func:`grid_cells`, :func:`zoo_cells`,
:func:`cell_key`, :class:`Cell`, :func:`run_metrics`, :func:`pair_barriers`, :func:`run_spawn`,
:func:`curve_pairs`, :func:`merge_cells`, :func:`training_lmc_records`, :func:`run_study`, :func:`phase_table`.
"""

from __future__ import annotations

from typing import Any

from zooscape.studies.cells import DERIVED_KINDS, SEED_KEYS, Cell, cell_key, grid_cells, is_grid_member, zoo_cells

_LAZY = {
    "run_metrics": "zooscape.studies.metrics",
    "pair_barriers": "zooscape.studies.lmc_pairs",
    "merge_cells": "zooscape.studies.merges",
    "training_lmc_records": "zooscape.studies.lmc_train",
    "run_spawn": "zooscape.studies.lmc",
    "spawn_records": "zooscape.studies.lmc",
    "curve_pairs": "zooscape.studies.curves",
    "curve_records": "zooscape.studies.curves",
    "run_study": "zooscape.studies.phase",
    "phase_table": "zooscape.studies.phase",
}

__all__ = ["DERIVED_KINDS", "SEED_KEYS", "Cell", "cell_key", "grid_cells", "is_grid_member", "zoo_cells", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zooscape.studies' has no attribute {name!r}")
