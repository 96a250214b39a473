"""Weight-space vectors: a model's parameters as one flat vector, and back.

:func:`vectorize` flattens the parameters (not buffers) of a state dict in state-dict order and concatenates them;
:class:`IndexMap` records, per parameter, its name, shape, offset in the vector, owning layer and the layer's kind,
so that :func:`vector_to_state_dict` is the exact inverse of :func:`vectorize`. Used by the zoo's weight data sets
(:mod:`zooscape.zoo.weights`) and by property prediction (:mod:`zooscape.predict`); a leaf module (torch only).

References:
    Schürholt, Taskiran, Knyazev, Giró-i-Nieto & Borth (2022), "Model Zoos: A Dataset of Diverse Populations of
    Neural Network Models" (vectorised weights and the index map).
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["IndexMap", "ParamSlot", "index_map", "layer_kind", "vector_to_state_dict", "vectorize"]


def layer_kind(module: nn.Module) -> str:
    """Kind of a layer: ``"conv"``, ``"linear"``, ``"norm"``, ``"embedding"`` or ``"other"``.

    Args:
        module: a leaf module that owns parameters.

    Returns:
        str.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm
                  | nn.modules.instancenorm._InstanceNorm):
        return "norm"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return "other"


def _kind_from_shape(weight_shape: Sequence[int] | None) -> str:
    if weight_shape is None:
        return "other"
    return {2: "linear", 3: "conv", 4: "conv", 5: "conv"}.get(len(weight_shape), "other")


@dataclass(frozen=True)
class ParamSlot:
    """Where one parameter lives in the flat weight vector.

    Args:
        name: state-dict name (``"module_list.0.weight"``).
        shape: parameter shape.
        offset: first index in the vector.
        numel: number of entries (``prod(shape)``).
        layer: owning module path (``"module_list.0"``; ``""`` for parameters of the root module).
        kind: the layer's kind (see :func:`layer_kind`).
        role: last name component (``"weight"``, ``"bias"``, ...).
    """

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int
    layer: str
    kind: str
    role: str

    @property
    def stop(self) -> int:
        """End index (exclusive) in the vector."""
        return self.offset + self.numel


class IndexMap:
    """Layout of a flat weight vector: one :class:`ParamSlot` per parameter, contiguous and in order.

    Args:
        slots: the parameters, in vector order (offsets are recomputed from the order and shapes).
    """

    def __init__(self, slots: Sequence[ParamSlot]) -> None:
        out, offset = [], 0
        for s in slots:
            numel = math.prod(s.shape)
            out.append(ParamSlot(s.name, tuple(int(d) for d in s.shape), offset, numel, s.layer, s.kind, s.role))
            offset += numel
        names = [s.name for s in out]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in index map: {names}")
        self.slots: tuple[ParamSlot, ...] = tuple(out)
        self.size: int = offset
        self._by_name = {s.name: s for s in out}

    def __repr__(self) -> str:
        return f"IndexMap({len(self.slots)} parameters, {len(self.layers())} layers, size={self.size})"

    def __len__(self) -> int:
        return len(self.slots)

    def __iter__(self) -> Iterator[ParamSlot]:
        return iter(self.slots)

    def __getitem__(self, name: str) -> ParamSlot:
        if name not in self._by_name:
            raise KeyError(f"no parameter {name!r} in the index map; parameters: {self.names}")
        return self._by_name[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IndexMap) and self.slots == other.slots

    __hash__ = None  # type: ignore[assignment]

    @property
    def names(self) -> list[str]:
        """Parameter names in vector order."""
        return [s.name for s in self.slots]

    def layers(self) -> dict[str, list[ParamSlot]]:
        """Parameters grouped by owning layer, in vector order.

        Returns:
            dict layer path -> list of slots.
        """
        out: dict[str, list[ParamSlot]] = {}
        for s in self.slots:
            out.setdefault(s.layer, []).append(s)
        return out

    def select(self, layers: Sequence[int | str] | None) -> IndexMap:
        """A map of a subset of layers/parameters (vector order is kept, offsets recomputed).

        Args:
            layers: None (everything) or entries that are each an int (position among the layers that own
                parameters, negative counts from the end), a layer path, a parameter name, or an ``fnmatch``
                pattern over layer paths and parameter names (``"module_list.1*"``).

        Returns:
            IndexMap.

        Raises:
            KeyError: an entry matches nothing (the message lists the layers).
            ValueError: ``layers`` is empty.
        """
        if layers is None:
            return self
        if isinstance(layers, str | int):
            layers = [layers]
        if len(layers) == 0:
            raise ValueError("layers must be None or a non-empty list of layer indices/names")
        layer_names = list(self.layers())
        keep: set[str] = set()
        for entry in layers:
            if isinstance(entry, numbers.Integral) and not isinstance(entry, bool):
                i = int(entry)
                if not -len(layer_names) <= i < len(layer_names):
                    raise KeyError(f"layers: index {i} out of range for {len(layer_names)} layers {layer_names}")
                keep |= {s.name for s in self.layers()[layer_names[i]]}
                continue
            if not isinstance(entry, str):
                raise ValueError(f"layers: entries must be ints or strings, got {entry!r}")
            hits = {s.name for s in self.slots
                    if entry in (s.name, s.layer) or fnmatch.fnmatchcase(s.name, entry)
                    or fnmatch.fnmatchcase(s.layer, entry)}
            if not hits:
                raise KeyError(f"layers: {entry!r} matches no layer or parameter; layers: {layer_names}")
            keep |= hits
        return IndexMap([s for s in self.slots if s.name in keep])

    def to_dict(self) -> list[dict[str, Any]]:
        """JSON-ready description (one dict per parameter: name, shape, offset, numel, layer, kind, role).

        Returns:
            list of dicts.
        """
        return [{"name": s.name, "shape": list(s.shape), "offset": s.offset, "numel": s.numel, "layer": s.layer,
                 "kind": s.kind, "role": s.role} for s in self.slots]

    @classmethod
    def from_dict(cls, entries: Sequence[Mapping[str, Any]]) -> IndexMap:
        """Inverse of :meth:`to_dict`.

        Args:
            entries: list of dicts with name, shape, layer, kind, role.

        Returns:
            IndexMap.
        """
        return cls([ParamSlot(e["name"], tuple(e["shape"]), 0, 0, e["layer"], e["kind"], e["role"]) for e in entries])


def index_map(source: nn.Module | Mapping[str, Tensor], layers: Sequence[int | str] | None = None) -> IndexMap:
    """Index map of a model's parameters (or of every tensor of a state dict).

    Args:
        source: a model (parameters only, buffers excluded; layer kinds from the module types) or a state dict
            (every entry; kinds guessed from the shape of the layer's ``weight``: 2-d linear, 3-5-d conv).
        layers: optional selection (see :meth:`IndexMap.select`).

    Returns:
        IndexMap.
    """
    slots = []
    if isinstance(source, nn.Module):
        modules = dict(source.named_modules())
        for name, p in source.named_parameters():
            layer, _, role = name.rpartition(".")
            slots.append(ParamSlot(name, tuple(p.shape), 0, 0, layer, layer_kind(modules[layer]), role))
    elif isinstance(source, Mapping):
        shapes = {k: tuple(v.shape) for k, v in source.items()}
        for name, shape in shapes.items():
            layer, _, role = name.rpartition(".")
            weight = shapes.get(f"{layer}.weight" if layer else "weight")
            slots.append(ParamSlot(name, shape, 0, 0, layer, _kind_from_shape(weight), role))
    else:
        raise ValueError(f"source must be an nn.Module or a state dict, got {type(source).__name__}")
    return IndexMap(slots).select(layers)


def vectorize(state_dict: Mapping[str, Tensor], imap: IndexMap, dtype: torch.dtype = torch.float32) -> Tensor:
    """Flatten the parameters of ``imap`` from a state dict into one vector.

    Args:
        state_dict: name -> tensor (may hold more entries than the map).
        imap: the layout.
        dtype: vector dtype.

    Returns:
        ``[imap.size]`` tensor on the device of the first parameter.

    Raises:
        KeyError: a parameter of the map is missing. ValueError: a shape differs from the map.
    """
    parts = []
    for s in imap.slots:
        if s.name not in state_dict:
            raise KeyError(f"state dict lacks parameter {s.name!r} of the index map")
        t = state_dict[s.name]
        if tuple(t.shape) != s.shape:
            raise ValueError(f"parameter {s.name!r} has shape {tuple(t.shape)}, the index map expects {s.shape}")
        parts.append(t.detach().reshape(-1).to(dtype))
    if not parts:
        return torch.zeros(0, dtype=dtype)
    return torch.cat(parts)


def _like_names(imap: IndexMap, like: nn.Module | Mapping[str, Tensor]) -> list[str]:
    """Names of ``like``'s parameters aligned by position (and shape) with the map."""
    if isinstance(like, nn.Module):
        params = [(n, tuple(p.shape)) for n, p in like.named_parameters()]
    else:
        params = [(n, tuple(t.shape)) for n, t in like.items()]
    ref_all = [(s.name, s.shape) for s in imap.slots]
    if len(params) == len(ref_all) and all(a[1] == b[1] for a, b in zip(params, ref_all)):
        return [n for n, _ in params]
    raise ValueError(
        f"like: its parameters {[(n, list(s)) for n, s in params]} do not match the index map's "
        f"{[(n, list(s)) for n, s in ref_all]} in order and shape"
    )


def vector_to_state_dict(
    vector: Tensor, imap: IndexMap, like: nn.Module | Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Exact inverse of :func:`vectorize`: cut a vector back into named, shaped tensors.

    Args:
        vector: ``[imap.size]``.
        imap: the layout.
        like: optional model or state dict whose parameters (in order, with equal shapes) give the names, for
            models aligned by position with the map's reference (e.g. CNN-s with Dropout modules).

    Returns:
        dict name -> tensor (copies, dtype and device of ``vector``), in vector order.

    Raises:
        ValueError: ``vector`` is not 1-d of length ``imap.size``, or ``like`` does not match.
    """
    if not isinstance(vector, Tensor) or vector.dim() != 1 or vector.numel() != imap.size:
        shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
        raise ValueError(f"vector must have shape [{imap.size}], got {shape}")
    names = imap.names if like is None else _like_names(imap, like)
    return {n: vector[s.offset:s.stop].reshape(s.shape).clone() for n, s in zip(names, imap.slots)}
