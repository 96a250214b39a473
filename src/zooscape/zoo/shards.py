"""Safetensors shards: one file holds the tensors of many models, keyed ``"{model_id}/{param}"``.

All writes are atomic (:func:`zooscape._io.atomic_write_bytes`): a reader sees either the old or the new file.
Every shard of a zoo is described in the catalog by a :class:`ShardRecord` (size and SHA-256 of the file, and the
group/epoch/kind of its header), recorded when the shard's rows are committed and checked by :func:`check_shard`
before its tensors are used. Read errors are raised as :class:`ShardError`, naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from zooscape._io import atomic_write_bytes

if TYPE_CHECKING:  # torch is imported where tensors are handled: reading headers and checksums stays torch-free
    import torch

__all__ = [
    "ShardError",
    "ShardRecord",
    "atomic_write_bytes",
    "check_shard",
    "describe_shard",
    "encode_tensors",
    "pack_models",
    "read_header",
    "read_metadata",
    "read_model",
    "read_tensors",
    "write_tensors",
]

SEP = "/"
#: Largest safetensors header we parse (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000
_CHUNK = 1 << 22


class ShardError(ValueError):
    """A shard file is missing, unreadable, corrupt or not the shard the catalog expects (names the file)."""


@dataclass(frozen=True)
class ShardRecord:
    """What the catalog knows about one shard file.

    Args:
        file: path relative to the zoo directory (POSIX).
        group_id: group in the shard's header.
        epoch: epoch in the shard's header.
        kind: ``"weights"`` or ``"optimizer"``.
        size: file size in bytes.
        sha256: hex SHA-256 of the whole file (checked by ``zoo verify``; publishable).
        crc32: CRC-32 of the whole file (checked on every load: about twice as fast, catches accidental damage).
    """

    file: str
    group_id: str
    epoch: int
    kind: str
    size: int
    sha256: str
    crc32: int


def _digests(fh: Any) -> tuple[str, int]:
    """(SHA-256 hex, CRC-32) of a file's content, in one pass."""
    h, crc = hashlib.sha256(), 0
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
        crc = zlib.crc32(chunk, crc)
    return h.hexdigest(), crc


def read_header(path: str | Path) -> dict[str, Any]:
    """Parse the JSON header of a safetensors file without reading its tensors.

    Args:
        path: the file.

    Returns:
        the header (tensor name -> {dtype, shape, data_offsets}, plus ``"__metadata__"``).

    Raises:
        ShardError: missing file, not a regular file, not a safetensors header.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ShardError(f"shard {path}: not a safetensors file (only {len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise ShardError(f"shard {path}: header of {n} bytes, not a safetensors file")
            raw = fh.read(n)
    except FileNotFoundError:
        raise ShardError(f"shard {path}: missing") from None
    except OSError as exc:
        raise ShardError(f"shard {path}: unreadable ({exc.strerror or exc})") from None
    if len(raw) != n:
        raise ShardError(f"shard {path}: truncated header ({len(raw)} of {n} bytes)")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ShardError(f"shard {path}: corrupt header ({exc})") from None
    if not isinstance(header, dict):
        raise ShardError(f"shard {path}: corrupt header (not a JSON object)")
    return header


def describe_shard(root: str | Path, rel: str) -> ShardRecord:
    """Measure a shard file: size, SHA-256 and the group/epoch/kind of its header.

    Args:
        root: zoo directory.
        rel: the shard's path relative to ``root``.

    Returns:
        ShardRecord.

    Raises:
        ShardError: unreadable, or its header lacks the zoo metadata.
    """
    path = Path(root) / rel
    meta = read_header(path).get("__metadata__") or {}
    try:
        epoch = int(meta["epoch"])
        group_id, kind = str(meta["group_id"]), str(meta["kind"])
    except (KeyError, ValueError, TypeError):
        raise ShardError(f"shard {path}: header lacks the zoo metadata (group_id, epoch, kind)") from None
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            sha, crc = _digests(fh)
    except OSError as exc:
        raise ShardError(f"shard {path}: unreadable ({exc.strerror or exc})") from None
    return ShardRecord(rel, group_id, epoch, kind, size, sha, crc)


def check_shard(
    path: str | Path,
    record: ShardRecord | None = None,
    expect: tuple[str | None, int, str] | None = None,
    data: Any = None,
    header: Mapping[str, Any] | None = None,
    strong: bool = False,
) -> None:
    """Check a shard against its catalog record (size, checksum) and/or the group/epoch/kind the catalog expects.

    Args:
        path: the file.
        record: the catalog's record (None: zoos written before records existed; only the header is checked).
        expect: ``(group_id or None, epoch, kind)`` the catalog's checkpoint rows say the shard holds.
        data: the file's bytes (a buffer, e.g. a memory map) if already in memory; else the file is read.
        header: the file's parsed header if already read; else it is read.
        strong: compare the SHA-256 (``zoo verify``) instead of the CRC-32 (every load).

    Raises:
        ShardError: missing, truncated, checksum mismatch, or a header naming another group/epoch/kind.
    """
    path = Path(path)
    if record is not None:
        try:
            size = len(data) if data is not None else path.stat().st_size
        except FileNotFoundError:
            raise ShardError(f"shard {path}: missing") from None
        if size != record.size:
            raise ShardError(f"shard {path}: {size} bytes, the catalog recorded {record.size} (truncated or "
                             "replaced; run `zooscape zoo verify --repair`)")
        if data is not None:
            sha, crc = (hashlib.sha256(data).hexdigest(), None) if strong else (None, zlib.crc32(data))
        else:
            with path.open("rb") as fh:
                sha, crc = _digests(fh)
        if (sha != record.sha256) if strong else (crc != record.crc32):
            what = f"SHA-256 {sha[:16]}..., the catalog recorded {record.sha256[:16]}..." if strong else \
                f"CRC-32 {crc:08x}, the catalog recorded {record.crc32:08x}"
            raise ShardError(f"shard {path}: checksum mismatch ({what}; corrupt or replaced; run "
                             "`zooscape zoo verify --repair`)")
    if expect is not None:
        group_id, epoch, kind = expect
        meta = (header if header is not None else read_header(path)).get("__metadata__") or {}
        got = (meta.get("group_id"), meta.get("epoch"), meta.get("kind"))
        want = (group_id if group_id is not None else got[0], str(epoch), kind)
        if got != want:
            raise ShardError(f"shard {path}: its header says group {got[0]}, epoch {got[1]}, kind {got[2]}; "
                             f"expected group {want[0]}, epoch {want[1]}, kind {want[2]} (a shard copied over "
                             "another?)")


def _detach_unique(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory (safetensors refuses shared storage)."""
    import torch

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
    atomic_write_bytes(Path(path), encode_tensors(tensors, metadata))


def encode_tensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> bytes:
    """The bytes of a safetensors file (what :func:`write_tensors` writes; deterministic for equal inputs).

    Args:
        tensors: name -> tensor (any device; moved to CPU).
        metadata: JSON-compatible values; stored as strings (non-strings are JSON-encoded).

    Returns:
        bytes (the header's keys sorted: equal inputs give equal bytes in every process).
    """
    from safetensors.torch import save

    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    plain = _detach_unique(tensors)
    fast = _encode_direct(plain, meta)
    return fast if fast is not None else _canonical_header(save(plain, metadata=meta))


#: safetensors dtype names of the tensors :func:`_encode_direct` writes itself (others go through the library).
_DTYPE_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


@functools.cache
def _dtype_order() -> dict[Any, int]:
    """Position of each dtype in the data section of a safetensors file, as the installed library orders it (it
    sorts tensors by dtype, then name): read from the library's own output once."""
    import torch
    from safetensors.torch import save

    dtypes = [getattr(torch, name) for name in _DTYPE_NAMES]
    blob = save({f"t{i}": torch.zeros(1, dtype=dt) for i, dt in enumerate(dtypes)})
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    starts = {dt: header[f"t{i}"]["data_offsets"][0] for i, dt in enumerate(dtypes)}
    return {dt: rank for rank, dt in enumerate(sorted(dtypes, key=starts.__getitem__))}


def _encode_direct(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> bytes | None:
    """The bytes ``_canonical_header(safetensors.torch.save(tensors, metadata=meta))`` gives, built directly: one
    header and one copy of the data instead of the library's per-tensor conversions (a zoo's shards hold hundreds of
    small tensors). None when a dtype is not in :data:`_DTYPE_NAMES` (the caller uses the library then).
    ``tests/zoo/test_zoo_store.py`` checks equality with the library byte for byte."""
    import torch

    order = _dtype_order()
    if any(t.dtype not in order for t in tensors.values()):
        return None
    items = sorted(tensors.items(), key=lambda kv: (order[kv[1].dtype], kv[0]))
    header: dict[str, Any] = {"__metadata__": dict(meta)}
    chunks = []
    offset = 0
    for name, t in items:
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPE_NAMES[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        if size:
            chunks.append(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *chunks])


def _canonical_header(blob: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys (the library writes its metadata map in a random order per
    process), so that equal tensors and metadata always give the same bytes and the same SHA-256."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


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
    with _opened(path) as fh:
        return dict(fh.metadata() or {})


def read_tensors(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Read all (or the given) tensors of a safetensors file onto the CPU.

    Args:
        path: the file.
        keys: names to read; None reads all.

    Returns:
        dict name -> tensor.
    """
    with _opened(path) as fh:
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
    with _opened(path) as fh:
        out = {k[len(prefix) :]: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}
    if not out:
        raise KeyError(f"shard {path} holds no tensors of model {model_id!r}")
    return out


class _opened:
    """``safe_open`` whose errors (missing file, corrupt header or data) are :class:`ShardError` naming the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> Any:
        try:
            self._cm = safe_open(str(self.path), framework="pt")
            return _Guarded(self._cm.__enter__(), self.path)
        except FileNotFoundError:
            raise ShardError(f"shard {self.path}: missing") from None
        except (SafetensorError, OSError) as exc:
            raise ShardError(f"shard {self.path}: unreadable ({exc})") from None

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


class _Guarded:
    def __init__(self, fh: Any, path: Path) -> None:
        self._fh, self._path = fh, path

    def metadata(self) -> Any:
        return self._fh.metadata()

    def keys(self) -> Any:
        return self._fh.keys()

    def get_tensor(self, key: str) -> torch.Tensor:
        try:
            return self._fh.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ShardError(f"shard {self._path}: cannot read tensor {key!r} ({exc})") from None
