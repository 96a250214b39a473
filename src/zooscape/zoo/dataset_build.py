"""Building the data sets of a zoo (``Zoo.dataset``): select checkpoints, resolve properties, split by model.

The data-set classes (:class:`~zooscape.zoo.weights.WeightsDataset`, :class:`~zooscape.zoo.weights.ZooDatasets`,
:class:`~zooscape.zoo.weights.Filters`) live in :mod:`zooscape.zoo.weights`; this module fills them.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from zooscape.models.vectors import IndexMap, index_map
from zooscape.zoo.grid import model_kind
from zooscape.zoo.weight_loading import load_weights
from zooscape.zoo.weights import (
    DERIVED_PROPERTIES,
    SPLIT_NAMES,
    DatasetReport,
    Filters,
    WeightsDataset,
    ZooDatasets,
    split_models,
)

log = logging.getLogger("zooscape.zoo")


def _epoch_selection(epochs: int | str | Sequence[int] | None) -> tuple[str, set[int]]:
    if epochs is None:
        return "all", set()
    if isinstance(epochs, str):
        if epochs in ("all", "last"):
            return epochs, set()
        raise ValueError(f"epochs must be None, 'all', 'last', an int or a list of ints, got {epochs!r}")
    if isinstance(epochs, numbers.Integral) and not isinstance(epochs, bool):
        epochs = [int(epochs)]
    try:
        values = {int(e) for e in epochs}  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"epochs must be None, 'all', 'last', an int or a list of ints, got {epochs!r}") from None
    if not values or any(e < 0 for e in values):
        raise ValueError(f"epochs must be non-empty and >= 0, got {sorted(values)}")
    return "list", values


def _arch_key(config: Mapping[str, Any]) -> str:
    from zooscape.zoo.grid import canonical_json

    model = {k: v for k, v in config["model"].items() if k != "init"}
    return canonical_json([model, config.get("derived", {}).get("model_args") or {}])


def _arch_params(config: Mapping[str, Any]) -> IndexMap:
    from zooscape.zoo.build import build_model

    model = build_model(config["model"], seed=0, model_args=config.get("derived", {}).get("model_args"))
    return index_map(model)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class _PropertyResolver:
    """Turns a property name into per-row values (metrics, ggap, epoch, config columns, original keys)."""

    def __init__(self, rows: pd.DataFrame, source_params: Mapping[str, Mapping[str, Any]]) -> None:
        self.rows = rows
        self.source = source_params

    def available(self) -> list[str]:
        cols = [c for c in self.rows.columns if c not in ("model_id",)]
        orig = sorted({k for p in self.source.values() for k in p})
        return sorted(set(cols) | set(DERIVED_PROPERTIES)) + orig

    def values(self, name: str) -> list[Any]:
        rows = self.rows
        if name == "epoch":
            return rows["epoch"].astype(int).tolist()
        if name == "ggap":
            for c in ("train_acc", "test_acc"):
                if c not in rows.columns:
                    raise KeyError(f"property 'ggap' needs the metric {c!r}, which the zoo does not record")
            return (rows["train_acc"].astype(float) - rows["test_acc"].astype(float)).tolist()
        if name in rows.columns:
            return rows[name].tolist()
        if any(name in p for p in self.source.values()):
            return [self.source.get(m, {}).get(name) for m in rows["model_id"]]
        suffix = [c for c in rows.columns if c.endswith("." + name)]
        if len(suffix) == 1:
            return rows[suffix[0]].tolist()
        if len(suffix) > 1:
            raise KeyError(f"property {name!r} is ambiguous: {suffix}")
        raise KeyError(f"unknown property {name!r}; available: {self.available()}")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _class_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else v


def build_datasets(
    zoo: Any,
    epochs: int | str | Sequence[int] | None = None,
    layers: Sequence[int | str] | None = None,
    properties: Sequence[str] = ("test_acc",),
    filters: Filters | Mapping[str, Any] | None = None,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    categorical: Sequence[str] = (),
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> ZooDatasets:
    """Train/val/test data sets of vectorised weights and properties of a zoo (see :meth:`Zoo.dataset`).

    Args:
        zoo: an open :class:`zooscape.zoo.Zoo`.
        epochs: None/``"all"`` (every checkpointed epoch), ``"last"`` (each model's last checkpoint), an int or a
            list of ints (models without a checkpoint at a requested epoch count as dropped samples).
        layers: parameters to keep (see :meth:`IndexMap.select`); None keeps all parameters (buffers such as
            BatchNorm running statistics are never included).
        properties: per-epoch metrics (``test_acc``, ``train_loss``, ...), ``ggap`` (train_acc - test_acc),
            ``epoch``, config columns (``training.lr``, ``model.activation``; a unique suffix such as ``lr``
            also works when no metric has that name) and, for imported zoos, original config keys
            (``optim::lr``). Non-numeric values (and the names in ``categorical``) become class indices.
        filters: :class:`Filters` or a dict of its fields (default: drop non-finite weights and failed runs).
        split: ``(train, val, test)`` fractions of the *models*.
        seed: split seed.
        categorical: properties to treat as categorical even if numeric (e.g. ``training.seed``).
        dtype: weight dtype.
        device: where to put the tensors (default CPU).

    Returns:
        :class:`ZooDatasets`; ``report`` counts every dropped sample by reason.

    Raises:
        KeyError: unknown property or layer. ValueError: bad ``epochs``/``split``/``filters``, or models whose
        parameters cannot be aligned with the reference model.

    References:
        Schürholt et al. (2022), Model Zoos (ModelDatasetBase: splits by model, NaN and weight-threshold filters).
    """
    if isinstance(properties, str):
        properties = [properties]
    properties = list(properties)
    if len(set(properties)) != len(properties):
        raise ValueError(f"properties must be distinct, got {properties}")
    flt = Filters.coerce(filters)
    mode, wanted = _epoch_selection(epochs)
    split_of = split_models(zoo.model_ids, split, seed)
    catalog = zoo.catalog

    configs: dict[str, dict[str, Any]] = {}
    status: dict[str, str] = {}
    for mid, st, cfg in catalog.query("SELECT model_id, status, config FROM models ORDER BY model_id"):
        configs[mid] = json.loads(cfg)
        status[mid] = st
    shards: dict[str, dict[int, str]] = {}
    for mid, ep, f in catalog.query("SELECT model_id, epoch, file FROM checkpoints WHERE kind = 'weights'"):
        shards.setdefault(mid, {})[int(ep)] = f

    report = DatasetReport()
    candidates: list[tuple[str, int]] = []
    for mid in sorted(configs):
        have = shards.get(mid, {})
        if mode == "all":
            eps = sorted(have)
        elif mode == "last":
            eps = [max(have)] if have else []
        else:
            eps = sorted(wanted)
        for e in eps:
            report.total += 1
            if flt.failed and status[mid] == "failed":
                report.drop(mid, e, "failed run")
            elif flt.kind is not None and model_kind(configs[mid].get("derived", {}))[0] != flt.kind:
                report.drop(mid, e, f"not a {flt.kind}")
            elif e not in have:
                report.drop(mid, e, "no checkpoint at that epoch")
            else:
                candidates.append((mid, e))

    table = zoo.table()
    table = table.set_index(["model_id", "epoch"], drop=False)
    idx = pd.MultiIndex.from_tuples(candidates, names=["model_id", "epoch"]) if candidates else None
    rows = table.reindex(idx) if idx is not None else table.iloc[:0]
    rows = rows.assign(model_id=[c[0] for c in candidates], epoch=[c[1] for c in candidates]).reset_index(drop=True)
    source = {m: (c.get("derived", {}).get("source") or {}).get("params") or {} for m, c in configs.items()}
    resolver = _PropertyResolver(rows, source)
    raw = {name: resolver.values(name) for name in properties}

    # architectures: reference = first candidate's; others aligned by position
    ref_map: IndexMap | None = None
    names_of_arch: dict[str, list[str]] = {}
    row_names: list[list[str]] = []
    ref_full: IndexMap | None = None
    arch_of: dict[str, str] = {}  # one canonical-JSON key per model, not per (model, epoch) sample
    for mid, _ in candidates:
        key = arch_of.get(mid)
        if key is None:
            key = arch_of[mid] = _arch_key(configs[mid])
        if key not in names_of_arch:
            full = _arch_params(configs[mid])
            if ref_full is None:
                ref_full = full
                ref_map = full.select(layers)
            ref_sig = [s.shape for s in ref_full.slots]
            if [s.shape for s in full.slots] != ref_sig:
                raise ValueError(
                    f"model {mid!r} has parameters {[(s.name, list(s.shape)) for s in full.slots]} that cannot be "
                    f"aligned with the reference model's {[(s.name, list(s.shape)) for s in ref_full.slots]}; "
                    "select models of one architecture (e.g. with filters={'predicate': ...})"
                )
            rename = dict(zip(ref_full.names, full.names))
            names_of_arch[key] = [rename[n] for n in ref_map.names]  # type: ignore[union-attr]
        row_names.append(names_of_arch[key])
    if ref_map is None:
        # no candidate: build the map of any model so that empty data sets still have a layout
        ref_map = _arch_params(configs[min(configs)]).select(layers) if configs else IndexMap([])

    weights = load_weights(zoo.path, [(m, shards[m][e]) for m, e in candidates], row_names, ref_map, dtype,
                           check=getattr(zoo, "check_shard", None))

    keep = torch.ones(len(candidates), dtype=torch.bool)
    has_weights = len(candidates) > 0 and ref_map.size > 0
    finite = torch.isfinite(weights).all(dim=1) if has_weights else keep.clone()
    too_big = torch.zeros_like(keep)
    if has_weights and flt.max_abs is not None:
        too_big = weights.abs().nan_to_num(0.0).amax(dim=1) > flt.max_abs
    categorical = set(categorical)
    is_cat = {}
    for name in properties:
        vals = [v for v in raw[name] if not _missing(v)]
        is_cat[name] = name in categorical or any(not _is_number(v) for v in vals)
    records = rows.to_dict("records") if flt.predicate is not None else None
    for i, (mid, e) in enumerate(candidates):
        reason = None
        if flt.nonfinite and not bool(finite[i]):
            reason = "non-finite weights"
        elif flt.max_abs and bool(too_big[i]):
            reason = f"|w| > {flt.max_abs:g}"
        else:
            for name in properties:
                if _missing(raw[name][i]):
                    reason = f"missing property {name!r}"
                    break
        if reason is None and flt.predicate is not None:
            if not flt.predicate(records[i], weights[i]):  # type: ignore[index]
                reason = "predicate"
        if reason is not None:
            keep[i] = False
            report.drop(mid, e, reason)

    classes: dict[str, list[Any]] = {}
    values: dict[str, Tensor] = {}
    for name in properties:
        if is_cat[name]:
            distinct = {}
            for v in raw[name]:
                if not _missing(v):
                    distinct.setdefault(_class_key(v), v)
            ordered = [distinct[k] for k in sorted(distinct)]
            classes[name] = ordered
            pos = {_class_key(v): j for j, v in enumerate(ordered)}
            values[name] = torch.tensor([-1 if _missing(v) else pos[_class_key(v)] for v in raw[name]],
                                        dtype=torch.int64)
        else:
            values[name] = torch.tensor([math.nan if _missing(v) else float(v) for v in raw[name]],
                                        dtype=torch.float32)

    splits = {}
    epochs_t = torch.tensor([e for _, e in candidates], dtype=torch.int64)
    for split_name in SPLIT_NAMES:
        sel = [i for i, (m, _) in enumerate(candidates) if keep[i] and split_of[m] == split_name]
        ix = torch.tensor(sel, dtype=torch.int64)
        dev = device if device is not None else "cpu"
        splits[split_name] = WeightsDataset(
            weights[ix].to(dev) if len(candidates) else torch.zeros((0, ref_map.size), dtype=dtype, device=dev),
            {k: v[ix].to(dev) if len(candidates) else v.to(dev) for k, v in values.items()},
            [candidates[i][0] for i in sel],
            epochs_t[ix].to(dev) if len(candidates) else epochs_t.to(dev),
            ref_map,
            classes,
        )
        report.split_sizes[split_name] = (len({candidates[i][0] for i in sel}), len(sel))
    report.kept = int(keep.sum())
    if report.total > report.kept:
        log.info("zoo %s: %s", zoo.path, report.summary().replace("\n", "; "))
    return ZooDatasets(
        train=splits["train"], val=splits["val"], test=splits["test"], index_map=ref_map,
        properties=tuple(properties), classes=classes, report=report, split_of=split_of,
    )
