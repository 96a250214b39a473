"""A zoo as a data set: vectorised weights in, model properties out.

>>> import zooscape.zoo
>>> zoo = zooscape.zoo.open("runs/mzd")                                       # doctest: +SKIP
>>> ds = zoo.dataset(epochs=[5, 10], properties=["test_acc", "ggap", "model.activation"],
...                  filters={"max_abs": 1e3}, split=(0.7, 0.15, 0.15), seed=42)   # doctest: +SKIP
>>> train, val, test = ds                                                     # doctest: +SKIP
>>> w, props = train[0]             # w: [D] float32; props: {"test_acc": tensor(0.91), ...}   # doctest: +SKIP
>>> sd = vector_to_state_dict(w, ds.index_map)                               # doctest: +SKIP

One *sample* is one checkpoint: a (model, epoch) pair. Its weights are the model's parameters (not buffers)
flattened in state-dict order and concatenated; :class:`IndexMap` records, per parameter, its name, shape,
offset in the vector, owning layer and the layer's kind, so that :func:`vector_to_state_dict` is the exact
inverse of :func:`vectorize`. Splits are made *by model*: every epoch of a model lands in the same split, and a
model's split depends only on the zoo's model ids, ``split`` and ``seed`` (not on epochs, layers or filters).

Models whose parameter names differ but whose parameter shapes agree in order (e.g. CNN-s with Dropout modules,
which shift the ``module_list`` indices) are aligned by position; the index map carries the names of the
reference model (the first model, by id, that has a sample).

References:
    Schürholt, Taskiran, Knyazev, Giró-i-Nieto & Borth (2022), "Model Zoos: A Dataset of Diverse Populations of
    Neural Network Models" (vectorised weights, index map, splits by model, filters, ggap).
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import numbers
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from zooscape.models.vectors import IndexMap, ParamSlot, index_map, layer_kind, vector_to_state_dict, vectorize
from zooscape.zoo.grid import model_kind
from zooscape.zoo.shards import MAX_HEADER_BYTES, ShardError

__all__ = [
    "DatasetReport",
    "Filters",
    "IndexMap",
    "ParamSlot",
    "WeightsDataset",
    "ZooDatasets",
    "build_datasets",
    "index_map",
    "layer_kind",
    "load_weights",
    "split_models",
    "vector_to_state_dict",
    "vectorize",
]

log = logging.getLogger("zooscape.zoo")

#: Properties computed from other columns.
DERIVED_PROPERTIES = ("epoch", "ggap")
SPLIT_NAMES = ("train", "val", "test")
SHARD_SEP = "/"


# ----------------------------------------------------------------------------------------------- loading


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class _Shard:
    """A safetensors file mapped into memory: the JSON header plus zero-copy views of its tensors' bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with path.open("rb") as fh:
                head = fh.read(8)
                if len(head) != 8:
                    raise ShardError(f"shard {path}: not a safetensors file (too short)")
                n = struct.unpack("<Q", head)[0]
                if n > MAX_HEADER_BYTES:
                    raise ShardError(f"shard {path}: header of {n} bytes, not a safetensors file")
                self.header = json.loads(fh.read(n))
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError:
            raise ShardError(f"shard {path}: missing") from None
        except (OSError, ValueError) as exc:
            if isinstance(exc, ShardError):
                raise
            raise ShardError(f"shard {path}: unreadable ({exc})") from None
        self._start = 8 + n
        empty = torch.zeros(0, dtype=torch.uint8)
        self._bytes = torch.frombuffer(self._mm, dtype=torch.uint8) if len(self._mm) else empty

    def tensor(self, key: str) -> Tensor:
        """A view of tensor ``key`` (valid until :meth:`close`).

        Raises:
            KeyError: no such tensor.
        """
        info = self.header.get(key)
        if info is None or key == "__metadata__":
            raise KeyError(f"shard {self.path} lacks tensor {key!r}")
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        raw = self._bytes[self._start + a:self._start + b]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if (self._start + a) % itemsize:
            raw = raw.clone()  # unaligned: copy before reinterpreting
        return raw.view(dtype).reshape(info["shape"])

    def gather_f32(self, keys: Sequence[str], numels: Sequence[int]) -> Tensor | None:
        """The float32 tensors ``keys`` flattened and concatenated with one gather, or None when one of them is
        missing, not float32, misaligned or of another size than ``numels`` says (use :meth:`tensor` then).

        Args:
            keys: tensor names.
            numels: expected number of entries of each.

        Returns:
            ``[sum(numels)]`` float32 tensor (a copy) or None.
        """
        if self._start % 4:
            return None
        starts = []
        for key, numel in zip(keys, numels):
            info = self.header.get(key)
            if info is None or info["dtype"] != "F32" or key == "__metadata__":
                return None
            a, b = info["data_offsets"]
            if a % 4 or (b - a) // 4 != numel:
                return None
            starts.append(a // 4)
        region = self._bytes[self._start:]
        data = region[: (region.numel() // 4) * 4].view(torch.float32)
        lengths = torch.tensor(list(numels), dtype=torch.int64)
        begin = torch.cumsum(lengths, 0) - lengths
        total = int(lengths.sum())
        idx = torch.repeat_interleave(torch.tensor(starts, dtype=torch.int64) - begin, lengths) + torch.arange(total)
        return data[idx]

    def close(self) -> None:
        """Release the mapping."""
        del self._bytes
        try:
            self._mm.close()
        except BufferError:  # a view is still referenced; the mapping is released when it is collected
            pass


def load_weights(
    root: str | Path,
    samples: Sequence[tuple[str, str]],
    names: Sequence[Sequence[str]],
    imap: IndexMap,
    dtype: torch.dtype = torch.float32,
    check: Callable[..., None] | None = None,
) -> Tensor:
    """Read many checkpoints from shards into one ``[N, D]`` tensor (each shard file is mapped once and only
    the needed tensors are copied).

    Args:
        root: zoo directory.
        samples: one ``(model_id, shard path relative to root)`` per row.
        names: per row, the model's own parameter names in the order of ``imap`` (aligned by position).
        imap: the layout (gives offsets and shapes).
        dtype: result dtype.
        check: ``check(rel, data=<the mapped file>, header=<its parsed header>)`` is called once per shard before
            its tensors are read (e.g. :meth:`zooscape.zoo.Zoo.check_shard`: size, CRC-32 and header against the
            catalog); None: no check.

    Returns:
        ``[N, imap.size]`` CPU tensor.

    Raises:
        KeyError: a shard lacks a tensor. ValueError: a tensor's size differs from the map.
        ShardError: a shard is missing, unreadable or fails ``check``.
    """
    root = Path(root)
    out = torch.empty((len(samples), imap.size), dtype=dtype)
    by_file: dict[str, list[int]] = {}
    for row, (_, rel) in enumerate(samples):
        by_file.setdefault(rel, []).append(row)
    slots = imap.slots
    for rel, rows in by_file.items():
        shard = _Shard(root / rel)
        try:
            if check is not None:
                check(rel, data=shard._mm, header=shard.header)
            if dtype == torch.float32 and slots:
                keys = [f"{samples[row][0]}{SHARD_SEP}{name}" for row in rows for name in names[row]]
                flat = shard.gather_f32(keys, [s.numel for s in slots] * len(rows))
                if flat is not None:
                    out[torch.tensor(rows, dtype=torch.int64)] = flat.view(len(rows), imap.size)
                    continue
            for row in rows:
                mid = samples[row][0]
                dst = out[row]
                for s, name in zip(slots, names[row]):
                    t = shard.tensor(f"{mid}{SHARD_SEP}{name}")
                    if t.numel() != s.numel:
                        raise ValueError(f"shard {root / rel}: {mid}/{name} has shape {tuple(t.shape)}, "
                                         f"expected {s.shape}")
                    dst[s.offset:s.stop].copy_(t.reshape(-1))
                    del t
        finally:
            shard.close()
    return out


# ----------------------------------------------------------------------------------------------- splits


def split_models(
    model_ids: Sequence[str], split: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 42
) -> dict[str, str]:
    """Assign models to train/val/test (a seeded shuffle of the sorted ids, cut by the fractions).

    ``n_train = round(f_train * n)``, ``n_val = round(f_val * n)``, the rest is test.

    Args:
        model_ids: all model ids of the zoo.
        split: three fractions ``(train, val, test)`` >= 0 summing to 1.
        seed: shuffle seed (a private ``torch.Generator``).

    Returns:
        dict model_id -> ``"train"`` | ``"val"`` | ``"test"``.

    Raises:
        ValueError: bad ``split``.
    """
    split = tuple(float(f) for f in split)
    if len(split) != 3 or any(not math.isfinite(f) or f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split must be three fractions >= 0 summing to 1, got {split}")
    ids = sorted(set(model_ids))
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(ids), generator=gen).tolist()
    n_train = int(round(split[0] * len(ids)))
    n_val = min(int(round(split[1] * len(ids))), len(ids) - n_train)
    out = {}
    for rank, i in enumerate(order):
        out[ids[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


# ----------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Filters:
    """Which samples to drop (every dropped sample is counted in :class:`DatasetReport`).

    Args:
        nonfinite: drop samples with a NaN/inf weight (among the selected parameters).
        max_abs: drop samples with a weight whose absolute value exceeds this (None: off).
        failed: drop every sample of models whose run failed (status ``failed``: non-finite training loss).
        predicate: ``predicate(row, weights) -> bool``, False drops the sample; ``row`` is the sample's row of
            :meth:`zooscape.zoo.Zoo.table` as a dict (model_id, epoch, config columns, metrics) and ``weights``
            its ``[D]`` vector.
        kind: keep only models of this kind (``"model"``: trained from the grid; ``"twin"``: sparsified twins;
            the ``kind`` column of :meth:`zooscape.zoo.Zoo.table`); None keeps all.
    """

    nonfinite: bool = True
    max_abs: float | None = None
    failed: bool = True
    predicate: Callable[[Mapping[str, Any], Tensor], bool] | None = None
    kind: str | None = None

    @classmethod
    def coerce(cls, filters: Filters | Mapping[str, Any] | None) -> Filters:
        """Filters from None (defaults), a Filters or a dict of its fields.

        Args:
            filters: the value given by the user.

        Returns:
            Filters.

        Raises:
            KeyError: unknown key. ValueError: bad value.
        """
        if filters is None:
            return cls()
        if isinstance(filters, Filters):
            out = filters
        elif isinstance(filters, Mapping):
            allowed = ("nonfinite", "max_abs", "failed", "predicate", "kind")
            unknown = sorted(set(filters) - set(allowed))
            if unknown:
                raise KeyError(f"filters: unknown key(s) {unknown}; allowed: {list(allowed)}")
            out = cls(**dict(filters))
        else:
            raise ValueError(f"filters must be None, a Filters or a dict, got {type(filters).__name__}")
        if out.max_abs is not None and (not isinstance(out.max_abs, numbers.Real) or not out.max_abs > 0):
            raise ValueError(f"filters: max_abs must be a number > 0 or None, got {out.max_abs!r}")
        if out.predicate is not None and not callable(out.predicate):
            raise ValueError(f"filters: predicate must be callable, got {out.predicate!r}")
        return out


@dataclass
class DatasetReport:
    """What :func:`build_datasets` kept and dropped.

    Args:
        total: candidate samples (model, epoch) considered.
        kept: samples in the three splits together.
        dropped: reason -> number of dropped samples (each sample counted once, under its first reason).
        samples: ``(model_id, epoch, reason)`` of every dropped sample.
        split_sizes: split -> (models, samples).
    """

    total: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[str, int, str]] = field(default_factory=list)
    split_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def drop(self, model_id: str, epoch: int, reason: str) -> None:
        """Record one dropped sample.

        Args:
            model_id: the model.
            epoch: the checkpoint's epoch.
            reason: why it was dropped (the key of :attr:`dropped`).
        """
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.samples.append((model_id, int(epoch), reason))

    def summary(self) -> str:
        """Human-readable summary.

        Returns:
            multi-line str.
        """
        lines = [f"{self.kept} of {self.total} samples kept, {self.total - self.kept} dropped"]
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped {n}: {reason}")
        for name, (m, n) in self.split_sizes.items():
            lines.append(f"  {name}: {m} models, {n} samples")
        return "\n".join(lines)


class WeightsDataset(Dataset):
    """One split: weight vectors and property values of its samples.

    ``ds[i]`` is ``(weights[i], {property: value})``: the default collate function batches it into a
    ``[B, D]`` tensor and a dict of ``[B]`` tensors.

    Args:
        weights: ``[N, D]``.
        properties: name -> ``[N]`` tensor (float32 for numeric properties, int64 class indices for
            categorical ones).
        model_ids: N model ids.
        epochs: ``[N]`` int64.
        imap: the layout of the vectors.
        classes: categorical property -> class values (class index i is ``classes[name][i]``).
    """

    def __init__(
        self,
        weights: Tensor,
        properties: Mapping[str, Tensor],
        model_ids: Sequence[str],
        epochs: Tensor,
        imap: IndexMap,
        classes: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        n = weights.shape[0]
        if weights.dim() != 2 or weights.shape[1] != imap.size:
            raise ValueError(f"weights must have shape [N, {imap.size}], got {tuple(weights.shape)}")
        for k, v in properties.items():
            if tuple(v.shape) != (n,):
                raise ValueError(f"property {k!r} has shape {tuple(v.shape)}, expected [{n}]")
        if len(model_ids) != n or tuple(epochs.shape) != (n,):
            raise ValueError(f"model_ids ({len(model_ids)}) and epochs {tuple(epochs.shape)} must have length {n}")
        self.weights = weights
        self.properties = dict(properties)
        self.model_ids = list(model_ids)
        self.epochs = epochs
        self.index_map = imap
        self.classes = {k: list(v) for k, v in (classes or {}).items()}

    def __len__(self) -> int:
        return self.weights.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.weights[i], {k: v[i] for k, v in self.properties.items()}

    def __repr__(self) -> str:
        return (f"WeightsDataset({len(self)} samples of {len(set(self.model_ids))} models, D={self.index_map.size}, "
                f"properties={list(self.properties)})")

    def state_dict(self, i: int, like: nn.Module | Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The weights of sample ``i`` as a state dict (see :func:`vector_to_state_dict`).

        Args:
            i: sample index.
            like: optional model giving the parameter names (models aligned by position).

        Returns:
            dict name -> tensor.
        """
        return vector_to_state_dict(self.weights[i], self.index_map, like)


@dataclass
class ZooDatasets:
    """Train/val/test :class:`WeightsDataset` of a zoo (``train, val, test = zoo.dataset(...)`` unpacks them).

    Args:
        train: training split.
        val: validation split.
        test: test split.
        index_map: layout of the weight vectors.
        properties: property names, in the order requested.
        classes: categorical property -> class values.
        report: kept/dropped counts.
        split_of: model_id -> split name, for every model of the zoo.
    """

    train: WeightsDataset
    val: WeightsDataset
    test: WeightsDataset
    index_map: IndexMap
    properties: tuple[str, ...]
    classes: dict[str, list[Any]]
    report: DatasetReport
    split_of: dict[str, str]

    def __iter__(self) -> Iterator[WeightsDataset]:
        return iter((self.train, self.val, self.test))

    def __getitem__(self, name: str) -> WeightsDataset:
        if name not in SPLIT_NAMES:
            raise KeyError(f"split must be one of {SPLIT_NAMES}, got {name!r}")
        return getattr(self, name)

    def is_categorical(self, name: str) -> bool:
        """Whether a property holds class indices.

        Args:
            name: property name.

        Returns:
            bool.
        """
        if name not in self.properties:
            raise KeyError(f"unknown property {name!r}; properties: {list(self.properties)}")
        return name in self.classes


# ----------------------------------------------------------------------------------------------- building


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
    for mid, _ in candidates:
        key = _arch_key(configs[mid])
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
