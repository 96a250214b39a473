"""The project's one atomic writer and JSON conversion (internal; used by every package except the leaves).

Every file zooscape writes goes through :func:`atomic_write_bytes`: the bytes are written to a temporary file in
the target's directory, flushed to disk (``fsync``), given the permissions an ordinary ``open`` would give
(``0o666`` minus the process umask, so a colleague can read a shared zoo) and renamed over the target with
``os.replace``; a reader sees either the old or the new file, never a half-written one, and a failure removes
the temporary file.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "fsync_dir", "json_ready", "save_figure"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry to disk (after a rename); a no-op where directories cannot be opened."""
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


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Create or replace ``path`` atomically with whatever ``write(fh)`` writes to a binary file handle.

    Args:
        path: target file; its directory is created if missing.
        write: called once with the open temporary file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(name, 0o666 & ~_umask())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Create or replace ``path`` with ``data`` atomically (see the module docstring).

    Args:
        path: target file; its directory is created if missing.
        data: content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write(path, lambda fh: fh.write(data))


def save_figure(fig: Any, path: str | Path, dpi: int = 120, format: str | None = None) -> Path:  # noqa: A002
    """Write a matplotlib figure atomically (PNG by default, else the format of ``path``'s suffix or ``format``).

    Args:
        fig: a matplotlib figure.
        path: target file.
        dpi: resolution.
        format: file format (default: from the suffix, PNG when there is none).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    fmt = format or (path.suffix.lstrip(".").lower() or "png")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def json_ready(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples that ``json.dumps`` accepts as strict JSON: non-finite floats -> None,
    keys -> str, tuples -> lists, numpy/torch scalars -> Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if getattr(obj, "ndim", None) == 0 and callable(getattr(obj, "item", None)):
        return json_ready(obj.item())
    return obj
