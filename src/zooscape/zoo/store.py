"""The on-disk layout of a zoo directory (see ``docs/zoo-format.md``)::

    <zoo>/
      spec.toml                     copy of the spec the zoo was created from
      catalog.sqlite (-wal, -shm)   the catalog (zooscape.zoo.catalog)
      .lock                         advisory lock held by the training driver
      checkpoints/<group_id>/
        e000005.weights.safetensors   all models of the group at epoch 5, keys "{model_id}/{param}"
        e000005.optim.safetensors     their optimizer states, keys "{model_id}/{state key}"
        resume.safetensors            PopulationState after the last finished epoch (while training)
        resume-history.jsonl          the group's history, appended per epoch (while training; zoo.recorder)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscape._io import atomic_write_bytes
from zooscape.zoo.catalog import Catalog, CatalogError
from zooscape.zoo.shards import encode_tensors, pack_models

if TYPE_CHECKING:  # only annotations: opening a zoo's store does not import torch
    import torch

__all__ = ["KINDS", "ZooExistsError", "ZooStore", "is_zoo"]

SPEC_FILE = "spec.toml"
CATALOG_FILE = "catalog.sqlite"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
RESUME_FILE = "resume.safetensors"
RESUME_JOURNAL_FILE = "resume-history.jsonl"  # the recorder's journal, valid up to the length resume.safetensors says
#: Checkpoint kinds and their file suffixes.
KINDS = {"weights": "weights", "optimizer": "optim"}

log = logging.getLogger("zooscape.zoo")


def _is_temp(path: Path) -> bool:
    """Leftover of an interrupted atomic write (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


class ZooExistsError(FileExistsError):
    """The directory holds something other than the zoo we were asked to (re)create."""


def is_zoo(root: str | Path) -> bool:
    """Whether ``root`` is a zoo directory (holds a catalog).

    Args:
        root: directory.

    Returns:
        bool.
    """
    return (Path(root) / CATALOG_FILE).is_file()


class ZooStore:
    """Paths and file writers of one zoo directory.

    Args:
        root: the zoo directory.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------------------------------- paths

    @property
    def spec_path(self) -> Path:
        """``<root>/spec.toml``."""
        return self.root / SPEC_FILE

    @property
    def catalog_path(self) -> Path:
        """``<root>/catalog.sqlite``."""
        return self.root / CATALOG_FILE

    def group_dir(self, group_id: str) -> Path:
        """Directory of one group's files."""
        return self.root / CHECKPOINT_DIR / group_id

    def shard_relpath(self, group_id: str, epoch: int, kind: str) -> str:
        """Path (relative to the root, POSIX) of a checkpoint shard.

        Args:
            group_id: group.
            epoch: epoch (>= 0).
            kind: ``"weights"`` or ``"optimizer"``.

        Returns:
            e.g. ``"checkpoints/0a1b2c3d4e5f/e000005.weights.safetensors"``.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return f"{CHECKPOINT_DIR}/{group_id}/e{epoch:06d}.{KINDS[kind]}.safetensors"

    def resume_path(self, group_id: str) -> Path:
        """``checkpoints/<group_id>/resume.safetensors``."""
        return self.group_dir(group_id) / RESUME_FILE

    # ------------------------------------------------------------------------------------------- creation

    def create_or_check(self, spec_text: str, fingerprint: str) -> Catalog:
        """Create the zoo (complete catalog in one step, then the spec copy) or check that an existing zoo has the
        same spec.

        A store whose creation was interrupted (an empty or unfinished catalog without models, left by a kill
        during creation) is re-initialised; a missing ``spec.toml`` next to a finished catalog is written.

        Args:
            spec_text: text of the spec file (copied to ``spec.toml``).
            fingerprint: :meth:`ZooSpec.fingerprint` of the spec.

        Returns:
            writable Catalog.

        Raises:
            ZooExistsError: the directory holds a zoo with another spec, or is a non-empty non-zoo directory.
            CatalogError: the catalog is unreadable (corrupt file).
        """
        if self.root.exists() and not self.root.is_dir():
            raise ZooExistsError(f"{self.root} exists and is not a directory")
        if is_zoo(self.root) and self.unfinished():
            log.warning("%s: re-initialising a store whose creation was interrupted", self.root)
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.catalog_path}{suffix}").unlink(missing_ok=True)
        if is_zoo(self.root):
            catalog = Catalog(self.catalog_path)
            stored = catalog.meta().get("spec_fingerprint")
            if stored != fingerprint:
                catalog.close()
                raise ZooExistsError(
                    f"{self.root} holds a zoo created from a different spec (see {self.spec_path}); "
                    "use another --out directory or the original spec"
                )
        else:
            if self.root.exists() and any(p.name != LOCK_FILE and not _is_temp(p) for p in self.root.iterdir()):
                raise ZooExistsError(f"{self.root} is not empty and is not a zoo directory")
            self.root.mkdir(parents=True, exist_ok=True)
            catalog = Catalog.create(self.catalog_path, {"spec_fingerprint": fingerprint})
        if not self.spec_path.exists():
            atomic_write_bytes(self.spec_path, spec_text.encode("utf-8"))
        (self.root / CHECKPOINT_DIR).mkdir(exist_ok=True)
        return catalog

    def unfinished(self) -> bool:
        """Whether the catalog is an interrupted creation: empty file, no meta table or no fingerprint, and no
        models (nothing to lose by re-creating it).

        Returns:
            bool.
        """
        path = self.catalog_path
        if not path.is_file():
            return False
        if path.stat().st_size == 0:
            return True
        try:
            with Catalog(path, readonly=True) as catalog:
                if catalog.is_finished():
                    return False
                try:
                    return not catalog.query("SELECT 1 FROM models LIMIT 1")
                except CatalogError:
                    return True
        except CatalogError:
            return False

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the zoo's advisory write lock (released when the process dies, even by SIGKILL).

        Raises:
            RuntimeError: another process holds it.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fh = (self.root / LOCK_FILE).open("a")
        try:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - non-POSIX: no locking
                yield
                return
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RuntimeError(f"another process is writing the zoo {self.root} (lock {LOCK_FILE})") from None
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        finally:
            fh.close()

    def remove_temp_files(self) -> int:
        """Delete leftovers of interrupted atomic writes (``.*.tmp`` files).

        Returns:
            number of files removed.
        """
        n = 0
        for p in self.root.rglob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    # ------------------------------------------------------------------------------------------- writers

    def write_shard(
        self,
        group_id: str,
        epoch: int,
        kind: str,
        tensors_by_model: Mapping[str, Mapping[str, torch.Tensor]],
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Atomically write the shard of one group at one epoch.

        Args:
            group_id: group.
            epoch: epoch.
            kind: ``"weights"`` or ``"optimizer"``.
            tensors_by_model: model id -> (name -> tensor).
            metadata: extra JSON-compatible metadata.

        Returns:
            path of the shard relative to the zoo root.
        """
        rel, data = self.encode_shard(group_id, epoch, kind, tensors_by_model, metadata)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return rel

    def encode_shard(
        self,
        group_id: str,
        epoch: int,
        kind: str,
        tensors_by_model: Mapping[str, Mapping[str, torch.Tensor]],
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[str, bytes]:
        """The path (relative to the root) and the bytes :meth:`write_shard` writes, without writing them.

        Args:
            group_id, epoch, kind, tensors_by_model, metadata: as in :meth:`write_shard`.

        Returns:
            (relative path, file content).
        """
        rel = self.shard_relpath(group_id, epoch, kind)
        meta = {
            "format": "zooscape-shard",
            "version": "1",
            "kind": kind,
            "group_id": group_id,
            "epoch": str(epoch),
            "model_ids": sorted(tensors_by_model),
            **(metadata or {}),
        }
        return rel, encode_tensors(pack_models(tensors_by_model), meta)

    def delete_resume(self, group_id: str) -> None:
        """Remove a group's resume file and its history journal (after its models are recorded as finished)."""
        path = self.resume_path(group_id)
        if path.exists():  # the resume file first: a journal without it is ignored (and rewritten on a restart)
            path.unlink()
            try:
                fd = os.open(path.parent, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            except OSError:  # pragma: no cover
                pass
        path.with_name(RESUME_JOURNAL_FILE).unlink(missing_ok=True)
