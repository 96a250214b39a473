"""The one definition of a grid cell, used by every zoo-wide study.

A **grid cell** is the set of models of a zoo whose configs are equal except for the *seeds of training*:

- ``training.seed`` (initialisation, dropout, augmentation randomness) and
- ``training.data_seed`` (the order of the mini-batches).

Everything else is part of the cell, **including** ``dataset.seed``: the data-split seed decides which samples
are in the train, validation and test splits, so two models trained on different splits are different
experiments, and the pairwise studies (CKA, barriers, curves) evaluate both models of a pair on one and the same
split. Models that differ only in ``dataset.seed`` are therefore two cells (this is what ``lmc pairs`` and
``curve pairs`` always did; ``metrics run`` used to merge them).

Only *grid members* form cells: models trained from the spec's grid. Left out are failed models and models
derived from other models: spawned children of an instability experiment (``derived.lmc.role == "child"``; the
main branches, ``role == "main"``, are grid members), and any model whose ``derived`` section has one of
:data:`DERIVED_KINDS` (sparsified twins, merged models), which name their source models there.

Cells are numbered in a stable order: numeric settings sort numerically (width 8 < 64 < 128), others as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DERIVED_KINDS", "SEED_KEYS", "Cell", "cell_key", "cell_settings", "grid_cells", "is_grid_member",
           "zoo_cells"]

#: ``(section, key)`` of every config entry that varies *within* a cell.
SEED_KEYS: tuple[tuple[str, str], ...] = (("training", "seed"), ("training", "data_seed"))
#: Keys of a config's ``derived`` section that mark a model derived from other models (not a grid member).
DERIVED_KINDS: tuple[str, ...] = ("twin", "merge")
_SECTIONS = ("dataset", "model", "training")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def cell_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model's settings without the seeds of training, flattened to ``"section.key"`` names.

    Args:
        config: nested model config (``dataset``, ``model``, ``training``; other sections are ignored).

    Returns:
        dict ``{"dataset.name": ..., "model.width": ..., "training.lr": ...}`` without :data:`SEED_KEYS`.
    """
    seeds = set(SEED_KEYS)
    return {f"{section}.{key}": value for section in _SECTIONS for key, value in config.get(section, {}).items()
            if (section, key) not in seeds}


def cell_key(config: Mapping[str, Any]) -> str:
    """Canonical key of a model's grid cell: its settings without the seeds of training, as JSON.

    Args:
        config: nested model config.

    Returns:
        JSON string; two models are in the same cell exactly when their keys are equal.
    """
    return _canonical(cell_settings(config))


def is_grid_member(config: Mapping[str, Any]) -> bool:
    """Whether a model was trained from the spec's grid (not derived from other models; see module docstring)."""
    derived = config.get("derived") or {}
    if (derived.get("lmc") or {}).get("role", "main") != "main":
        return False
    return not any(kind in derived for kind in DERIVED_KINDS)


def _sort_value(value: Any) -> tuple[int, float, str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return (1, 0.0, _canonical(value))
    return (0, float(value) if not math.isnan(value) else math.inf, "")


@dataclass(frozen=True)
class Cell:
    """One grid cell.

    Attributes:
        index: position in the zoo's cell order (stable: numeric settings sort numerically).
        key: :func:`cell_key` of its models.
        model_ids: its models, sorted.
        settings: the settings of the cell that vary between the zoo's cells (``"section.key"`` -> value).
    """

    index: int
    key: str
    model_ids: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``"cell 3 (model.width=64, training.batch_size=32)"``: the index and the varying settings."""
        inner = ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        return f"cell {self.index}" + (f" ({inner})" if inner else "")


def grid_cells(configs: Mapping[str, Mapping[str, Any]], statuses: Mapping[str, str] | None = None) -> list[Cell]:
    """Group models into grid cells.

    Args:
        configs: ``{model_id: nested config}``.
        statuses: ``{model_id: status}``; models with status ``"failed"`` are left out.

    Returns:
        the cells in a stable order (by their varying settings, numbers numerically), indexed from 0.
    """
    statuses = statuses or {}
    groups: dict[str, list[str]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for mid, cfg in configs.items():
        if statuses.get(mid) == "failed" or not is_grid_member(cfg):
            continue
        key = cell_key(cfg)
        groups.setdefault(key, []).append(mid)
        settings.setdefault(key, cell_settings(cfg))
    names = sorted({n for s in settings.values() for n in s})
    varying = [n for n in names if len({_canonical(s.get(n)) for s in settings.values()}) > 1]
    order = sorted(groups, key=lambda k: ([_sort_value(settings[k].get(n)) for n in varying], k))
    return [Cell(i, k, tuple(sorted(groups[k])), {n: settings[k].get(n) for n in varying})
            for i, k in enumerate(order)]


def zoo_cells(zoo: Any, model_ids: Iterable[str] | None = None) -> list[Cell]:
    """The grid cells of an open zoo (:class:`~zooscape.zoo.reader.Zoo`), failed and derived models left out.

    Args:
        zoo: an open zoo.
        model_ids: restrict to these models (default: all).

    Returns:
        as :func:`grid_cells`.
    """
    ids = zoo.model_ids if model_ids is None else list(model_ids)
    return grid_cells({m: zoo.config(m) for m in ids}, zoo.catalog.statuses())
