"""Keep freed tensor memory inside the process (glibc malloc tuning for training loops on CPU).

A population step allocates the same large activations every step (a CNN-s population of 64 at batch 32 holds
38 MB feature maps). glibc serves allocations above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages
and returns them on ``free``, so every step pays a page fault per 4 KiB page again: on the virtual machines we
measured, zero-filling a fresh 38 MB tensor took 25-30 ms against 5 ms for a reused one, and the faults were a
third of a CNN-s population's training time. :func:`tune_allocator` tells glibc to serve every allocation from
the heap and not to trim it, so freed blocks are reused without faults. It changes nothing but where memory comes
from; peak memory stays that of the largest step.

Set ``ZOOSCAPE_MALLOC_TUNE=0`` (the ``malloc_tune`` switch of :mod:`zooscape.train._flags`) to leave the
allocator alone. Non-glibc platforms are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from . import _flags

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_state = {"done": False, "applied": False}


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse (process-wide, idempotent).

    Returns:
        ``True`` when the settings are in effect (Linux with glibc and the ``malloc_tune`` switch on).
    """
    if _state["done"]:
        return _state["applied"]
    _state["done"] = True
    if not _flags.current().malloc_tune or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1  # no mmap-backed blocks: big tensors come from (and return to) the heap
    ok = mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok  # do not hand the heap top back to the OS
    ok = mallopt(_M_TOP_PAD, 64 << 20) == 1 and ok  # grow the heap in 64 MiB steps
    _state["applied"] = ok
    return ok
