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

import logging
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from zooscape.models.vectors import IndexMap, ParamSlot, index_map, layer_kind, vector_to_state_dict, vectorize
from zooscape.zoo.weight_loading import load_weights

__all__ = [
    "DatasetReport",
    "Filters",
    "IndexMap",
    "ParamSlot",
    "WeightsDataset",
    "ZooDatasets",
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
