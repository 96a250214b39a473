"""Loading many checkpoints from a zoo's shards into one ``[N, D]`` weight tensor, fast.

:func:`load_weights` memory-maps each safetensors shard once (:class:`_Shard`), checks it against the catalog's
record when one is given, and copies the requested parameters of every (model, epoch) straight into a
preallocated ``[N, D]`` tensor in the order of an :class:`~zooscape.models.vectors.IndexMap`. Used by
:mod:`zooscape.zoo.weights` (``Zoo.dataset``) and ``bench/zoo_load.py``.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from zooscape.models.vectors import IndexMap
from zooscape.zoo.shards import MAX_HEADER_BYTES, ShardError

log = logging.getLogger("zooscape.zoo")
#: separator of model id and parameter name in shard keys (``"{model_id}/{param}"``)
SHARD_SEP = "/"


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
