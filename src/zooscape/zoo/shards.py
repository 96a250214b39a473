"""Safetensors shards: one file holds the tensors of many models, keyed ``"{model_id}/{param}"``.

All writes are atomic (:func:`zooscape._io.atomic_write_bytes`): a reader sees either the old or the new file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from zooscape._io import atomic_write_bytes

__all__ = [
    "atomic_write_bytes",
    "pack_models",
    "read_metadata",
    "read_model",
    "read_tensors",
    "write_tensors",
]

SEP = "/"


def _detach_unique(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{key!r}] is {type(t).__name__}, expected torch.Tensor")
        t = t.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else (id(t), 0)
        if ident in seen:
            t = t.clone()
        else:
            seen.add(ident)
        out[key] = t
    return out


def write_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
    """Atomically write a safetensors file.

    Args:
        path: target ``.safetensors`` file (directory must exist).
        tensors: name -> tensor (any device; moved to CPU).
        metadata: JSON-compatible values; stored as strings (non-strings are JSON-encoded).
    """
    path = Path(path)
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    atomic_write_bytes(path, save(_detach_unique(tensors), metadata=meta))


def pack_models(state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Flatten per-model dicts into one shard dict with keys ``"{model_id}/{name}"``.

    Args:
        state_dicts: model id -> (parameter/buffer name -> tensor).

    Returns:
        flat dict.
    """
    out: dict[str, torch.Tensor] = {}
    for mid, sd in state_dicts.items():
        if SEP in mid:
            raise ValueError(f"model id {mid!r} must not contain {SEP!r}")
        for name, t in sd.items():
            out[f"{mid}{SEP}{name}"] = t
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    """Read the metadata header of a safetensors file.

    Args:
        path: the file.

    Returns:
        dict of str -> str (empty if none).
    """
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def read_tensors(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Read all (or the given) tensors of a safetensors file onto the CPU.

    Args:
        path: the file.
        keys: names to read; None reads all.

    Returns:
        dict name -> tensor.
    """
    with safe_open(str(path), framework="pt") as fh:
        names = list(fh.keys()) if keys is None else list(keys)
        return {k: fh.get_tensor(k) for k in names}


def read_model(path: str | Path, model_id: str) -> dict[str, torch.Tensor]:
    """Read the tensors of one model from a shard.

    Args:
        path: shard file.
        model_id: the model.

    Returns:
        state dict (name -> tensor) of that model.

    Raises:
        KeyError: the shard holds no tensor of ``model_id``.
    """
    prefix = model_id + SEP
    with safe_open(str(path), framework="pt") as fh:
        out = {k[len(prefix) :]: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}
    if not out:
        raise KeyError(f"shard {path} holds no tensors of model {model_id!r}")
    return out
