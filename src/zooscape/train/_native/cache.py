"""Build cache of the native kernels: a private directory, one key per binary, a verified load.

A compiled library is code that runs as whoever loads it, so the cache follows three rules (threat model:
``docs/security.md``, "Native kernels on a shared machine"):

1. **Private directory.** A library is only loaded from, and only built into, a directory that is a real directory
   (``lstat``: not a symbolic link), owned by the current uid and of mode 0700. The check is made on the path and
   again on the opened descriptor (same inode), and every later file operation is relative to that descriptor, so
   renaming the directory or one of its parents after the check cannot swap in someone else's files. Candidates are
   tried in order (``$ZOOSCAPE_CACHE_DIR/kernels`` or ``~/.cache/zooscape/kernels``, then ``<tmp>/zooscape-<uid>``);
   one that exists with the wrong owner or mode is rejected with a warning; if none is usable, a private
   :func:`tempfile.mkdtemp` directory of this process is used (and removed at exit).
2. **Verified load.** Each build records the library's size and SHA-256 in a sidecar ``<key>.json`` (written to a
   temporary file and renamed). Before ``dlopen``, the library is opened (no symlink following), its size and hash
   are checked from that descriptor, and it is loaded by its name inside the checked directory's descriptor
   (``/proc/self/fd/<dir>/<name>``): a truncated or altered library is rebuilt, never loaded (a truncated
   library, once mapped, dies with SIGBUS).
3. **One key per binary; builds never delete.** The key hashes everything that changes the binary: the sources,
   the compiler (resolved path and ``--version``), the flags, the variant (OpenMP or pthreads), the package version,
   the platform and machine, and the kernels' ABI number. A build compiles to a unique temporary name, renames it to
   ``<key>-<sha12>.so`` (content-addressed: concurrent builds of one key rename identical bytes) and then writes
   the sidecar; builds of other keys are never touched, so processes that use different compilers or variants share
   one directory without recompiling each other's libraries. Only ``.tmp-*`` leftovers of killed builds older than a
   day are removed.

Layout of a cache directory: ``<key>.json`` (``{"file", "size", "sha256", "parts"}``), ``<key>-<sha12>.so``.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SOURCES", "CacheInfo", "BuildError", "builds", "open_private_dir", "compiler_id", "cache_key", "load",
           "describe"]

SOURCES = tuple(Path(__file__).with_name(name) for name in ("convpool.c", "adam.c", "ard.c"))
_SIDECAR_MAX = 1 << 16
_LIB_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{12}\.so")
_STALE_S = 86400.0
_COMPILE_TIMEOUT_S = 300
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_O_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

builds = 0
"""Compilations run by this process (a warm cache compiles nothing; the tests count on it)."""


class BuildError(RuntimeError):
    """The compiler failed (its message is included)."""


@dataclass
class CacheInfo:
    """Where the kernel library came from.

    Attributes:
        directory: the cache directory used (``None`` before a load).
        check: the verdict of its ownership / mode check.
        rejected: verdicts of the candidate directories that were not used, in order.
        key: the cache key of the loaded library; ``parts``: what the key hashes.
        variant: ``"openmp"`` or ``"pthreads"``; ``library``: the library's path; ``built``: compiled by this
        process (else loaded from the cache).
    """

    directory: str | None = None
    check: str = ""
    rejected: list[str] = field(default_factory=list)
    key: str | None = None
    variant: str | None = None
    library: str | None = None
    built: bool = False
    parts: dict[str, str] = field(default_factory=dict)


def open_private_dir(path: Path, *, create: bool = True) -> tuple[int | None, str, bool]:
    """Open ``path`` as a private directory: a real directory (no symbolic link), owned by the current uid, mode
    0700; created (with its parents) if missing and ``create``.

    Returns ``(fd, verdict, hostile)``: ``fd`` an open descriptor of the directory (the caller closes it) or
    ``None`` if the directory is not private; ``verdict`` says what was found; ``hostile`` is ``True`` when the
    path exists but is not private (wrong owner or mode, a symlink), as opposed to merely not creatable.
    """
    path = Path(path)
    uid = os.getuid()
    created = False
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, 0o700)
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            return None, f"{path}: cannot be created ({e.strerror or e})", False
    try:
        st = os.lstat(path)
    except OSError as e:
        return None, f"{path}: {e.strerror or e}", False
    if stat.S_ISLNK(st.st_mode):
        return None, f"{path} is a symbolic link (refused)", True
    if not stat.S_ISDIR(st.st_mode):
        return None, f"{path} is not a directory (refused)", True
    try:
        fd = os.open(path, _O_DIR)
    except OSError as e:
        return None, f"{path}: cannot be opened ({e.strerror or e})", True
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise _Refused(f"{path} changed while it was being checked (refused)")
        if created and fst.st_uid == uid and stat.S_IMODE(fst.st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # a umask that removed owner bits from the directory we just made
            fst = os.fstat(fd)
        if fst.st_uid != uid:
            raise _Refused(f"{path} is owned by uid {fst.st_uid}, not by this user (uid {uid}) (refused)")
        if stat.S_IMODE(fst.st_mode) != 0o700:
            raise _Refused(f"{path} has mode {stat.S_IMODE(fst.st_mode):04o}, not 0700 (refused; "
                           f"`chmod 700 {path}` if it is yours)")
    except _Refused as e:
        os.close(fd)
        return None, str(e), True
    except BaseException:
        os.close(fd)
        raise
    return fd, f"{path}: owned by uid {uid}, mode 0700, not a symlink", False


class _Refused(Exception):
    pass


def compiler_id(cc: str) -> dict[str, str]:
    """The compiler ``cc`` (a name on ``PATH`` or a path) as the key sees it: its resolved path and the output of
    ``cc --version``. Raises :class:`BuildError` if it cannot be found or run."""
    path = shutil.which(cc)
    if path is None:
        raise BuildError(f"C compiler {cc!r} not found (set CC)")
    path = os.path.abspath(path)
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{path} --version failed: {e}") from e
    if proc.returncode != 0:
        raise BuildError(f"{path} --version failed: {(proc.stderr or proc.stdout).strip()[:300]}")
    return {"compiler": path, "compiler_realpath": os.path.realpath(path), "compiler_version": proc.stdout.strip()}


def cache_key(compiler: dict[str, str], flags: Sequence[str], variant: str, *, version: str,
              abi: int) -> tuple[str, dict[str, str]]:
    """The cache key (16 hex digits) of the library that ``compiler`` builds from :data:`SOURCES` with ``flags``,
    and the parts it hashes."""
    src = hashlib.sha256()
    for f in SOURCES:
        data = f.read_bytes()
        src.update(f"{f.name}\0{len(data)}\0".encode() + data)
    parts = {**compiler, "flags": " ".join(flags), "variant": variant, "sources": src.hexdigest(),
             "zooscape": version, "platform": sys.platform, "machine": platform.machine(), "abi": str(abi)}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return key, parts


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def _read_sidecar(dfd: int, key: str) -> dict | None:
    try:
        fd = os.open(f"{key}.json", _O_READ, dir_fd=dfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _SIDECAR_MAX:
            return None
        data = os.read(fd, _SIDECAR_MAX)
    finally:
        os.close(fd)
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def _load_verified(dfd: int, directory: Path, key: str) -> tuple[ctypes.CDLL | None, str]:
    """Load ``<key>``'s library if its sidecar exists and the file matches it; ``(None, why not)`` otherwise."""
    meta = _read_sidecar(dfd, key)
    if meta is None:
        return None, "not built yet"
    name = meta.get("file")
    if not isinstance(name, str) or not _LIB_NAME.fullmatch(name) or not name.startswith(key):
        return None, f"{key}.json: malformed record"
    try:
        lfd = os.open(name, _O_READ, dir_fd=dfd)
    except OSError as e:
        return None, f"{name}: {e.strerror or e}"
    try:
        st = os.fstat(lfd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None, f"{name}: not a regular file of this user"
        if st.st_size != meta.get("size"):
            return None, f"{name}: {st.st_size} bytes, {meta.get('size')} recorded (truncated or replaced)"
        if _sha256_fd(lfd) != meta.get("sha256"):
            return None, f"{name}: SHA-256 differs from the recorded one"
        # the name is resolved in the checked directory's descriptor, not along its path (whose parents could be
        # renamed); not the library's own descriptor, because the loader treats a name it has seen before as the
        # same library and fd numbers are reused, while <key>-<sha12>.so names one content
        proc = f"/proc/self/fd/{dfd}"
        return ctypes.CDLL(f"{proc}/{name}" if os.path.isdir(proc) else str(directory / name)), name
    finally:
        os.close(lfd)


def _write_sidecar(dfd: int, key: str, meta: dict) -> None:
    tmp = f".tmp-{os.getpid()}-{secrets.token_hex(8)}.json"
    fd = os.open(tmp, _O_NEW, 0o600, dir_fd=dfd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, f"{key}.json", src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass


def _compile(cc: str, flags: Sequence[str], dfd: int, directory: Path, key: str, parts: dict[str, str]) -> None:
    """Compile :data:`SOURCES` into ``<key>-<sha12>.so`` and record it in ``<key>.json``."""
    global builds
    tmp = f".tmp-{os.getpid()}-{secrets.token_hex(8)}.so"
    os.close(os.open(tmp, _O_NEW, 0o600, dir_fd=dfd))  # reserve the unique name
    try:
        builds += 1
        try:
            proc = subprocess.run([cc, *flags, "-o", str(directory / tmp), *map(str, SOURCES)], capture_output=True,
                                  text=True, timeout=_COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError(f"{cc}: {e}") from e
        if proc.returncode != 0:
            raise BuildError(f"{cc} failed: {proc.stderr.strip()[:500]}")
        lfd = os.open(tmp, _O_READ, dir_fd=dfd)
        try:
            size, digest = os.fstat(lfd).st_size, _sha256_fd(lfd)
        finally:
            os.close(lfd)
        name = f"{key}-{digest[:12]}.so"
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
    _write_sidecar(dfd, key, {"file": name, "size": size, "sha256": digest, "parts": parts})


def _sweep(dfd: int) -> None:
    """Remove ``.tmp-*`` leftovers of builds killed more than a day ago (never a library or a live build)."""
    now = time.time()
    try:
        with os.scandir(dfd) as entries:
            for e in entries:
                if e.name.startswith(".tmp-") and now - e.stat(follow_symlinks=False).st_mtime > _STALE_S:
                    os.unlink(e.name, dir_fd=dfd)
    except OSError:
        pass


def _private_tempdir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="zooscape-kernels-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def load(candidates: Sequence[Path], cc: str, variants: Sequence[tuple[str, Sequence[str]]], *, version: str,
         abi: int) -> tuple[ctypes.CDLL, CacheInfo]:
    """Load the kernel library from the first private directory of ``candidates`` (else a private temporary one),
    building it there if it is missing or fails verification.

    Args:
        candidates: cache directories in order of preference (see :func:`open_private_dir`).
        cc: the C compiler (name or path).
        variants: ``(name, flags)`` in order of preference; the first that builds is used.
        version: the package version; ``abi``: the kernels' ABI number (both part of the key).

    Returns:
        ``(library, info)``. Raises :class:`BuildError` when no variant builds, ``OSError`` when no directory
        works.
    """
    compiler = compiler_id(cc)
    keys = [(name, flags, *cache_key(compiler, flags, name, version=version, abi=abi)) for name, flags in variants]
    info = CacheInfo()
    for directory in [*map(Path, candidates), None]:
        if directory is None:
            directory = _private_tempdir()
        fd, verdict, hostile = open_private_dir(directory)
        if fd is None:
            info.rejected.append(verdict)
            if hostile:
                warnings.warn(f"zooscape: not using the kernel cache {verdict}", stacklevel=3)
            continue
        info.directory, info.check = str(directory), verdict
        errors: list[str] = []
        try:
            _sweep(fd)
            for name, flags, key, parts in keys:
                lib, detail = _load_verified(fd, directory, key)  # detail: the file's name, or why not
                built = False
                if lib is None:  # missing, truncated or altered: (re)build, never load it
                    try:
                        _compile(compiler["compiler"], flags, fd, directory, key, parts)
                    except BuildError as e:
                        errors.append(str(e))
                        continue
                    lib, detail = _load_verified(fd, directory, key)
                    built = True
                if lib is None:
                    errors.append(f"the library just built does not verify: {detail}")
                    continue
                info.key, info.variant, info.built, info.parts = key, name, built, parts
                info.library = str(directory / detail)
                return lib, info
        except OSError as e:  # this directory does not work (read-only, full, noexec): try the next one
            info.rejected.append(f"{directory}: {e}")
            continue
        finally:
            os.close(fd)
        raise BuildError("; ".join(errors)[:1000])
    raise OSError("no usable directory for the native kernels: " + "; ".join(info.rejected)[:1000])


def describe(candidates: Sequence[Path], cc: str | None = None,
             variant: tuple[str, Sequence[str]] | None = None, *, version: str = "", abi: int = 0) -> CacheInfo:
    """What :func:`load` would find, without creating, building or loading anything (for ``zooscape doctor`` when
    the kernels were not loaded): the verdicts on ``candidates`` up to the first usable one, and the key of
    ``variant`` built by ``cc`` if both are given and the compiler runs."""
    info = CacheInfo()
    for directory in map(Path, candidates):
        if not os.path.lexists(directory):
            info.directory, info.check = str(directory), f"{directory}: not created yet (will be: mode 0700)"
            break
        fd, verdict, _ = open_private_dir(directory, create=False)
        if fd is None:
            info.rejected.append(verdict)
            continue
        os.close(fd)
        info.directory, info.check = str(directory), verdict
        break
    if cc is not None and variant is not None:
        try:
            info.key, info.parts = cache_key(compiler_id(cc), variant[1], variant[0], version=version, abi=abi)
            info.variant = variant[0]
        except BuildError:
            pass
    return info
