"""Safetensors shards: one file holds the tensors of many models, keyed ``"{model_id}/{param}"``.

All writes are atomic: the file is written to a temporary name in the same directory, flushed to disk with
``fsync`` and renamed over the target with ``os.replace``; a reader sees either the old or the new file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "atomic_write_bytes",
    "pack_models",
    "read_metadata",
    "read_model",
    "read_tensors",
    "write_tensors",
]

SEP = "/"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``).

    Args:
        path: target file; its directory must exist.
        data: content.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    tmp = _tmp_path(path)
    try:
        save_file(_detach_unique(tensors), str(tmp), metadata=meta)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
