"""Per-group training record: metrics history, member statuses and written shards.

The recorder lives in the process that trains a group. After every epoch it turns an ``EpochReport`` into
catalog rows (sent to the driver as an event) and it is saved inside the group's resume file, so that after a
crash the rows of every finished epoch can be replayed into the catalog (idempotently) before training goes on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["GroupRecorder"]

ACTIVE = "running"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    return None


class GroupRecorder:
    """History of one training population.

    Args:
        group_id: the group.
        model_ids: member ids in population order.
        checkpoint_epochs: epochs at which all running members are checkpointed.
    """

    def __init__(self, group_id: str, model_ids: Sequence[str], checkpoint_epochs: Sequence[int]) -> None:
        self.group_id = group_id
        self.model_ids = list(model_ids)
        self.checkpoint_epochs = sorted({int(e) for e in checkpoint_epochs})
        n = len(self.model_ids)
        self.status = [ACTIVE] * n
        self.reasons: list[str | None] = [None] * n
        self.finished_epoch: list[int | None] = [None] * n
        self.names: list[str] = []
        self.history: dict[int, dict[int, dict[str, float | None]]] = {}  # epoch -> member -> name -> value
        self.shards: list[dict[str, Any]] = []  # {"epoch", "kind", "file", "members": [index]}
        self.last_epoch = -1

    # ------------------------------------------------------------------------------------------- updates

    def observe(
        self,
        epoch: int,
        metrics: Sequence[Mapping[str, Any]],
        status: Sequence[str],
        reasons: Sequence[str | None],
    ) -> tuple[list[int], list[int]]:
        """Record one epoch's report.

        Args:
            epoch: epoch number (0 = before training).
            metrics: one dict per member (non-numeric values are ignored).
            status: one of running/failed/stopped per member.
            reasons: failure/stop reasons per member.

        Returns:
            (members whose metrics were recorded this epoch, members that stopped early this epoch).
        """
        n = len(self.model_ids)
        if not (len(metrics) == len(status) == len(reasons) == n):
            raise ValueError(
                f"report lengths metrics={len(metrics)} status={len(status)} reasons={len(reasons)} != {n} members"
            )
        if epoch <= self.last_epoch:
            raise ValueError(f"epoch {epoch} already recorded (last {self.last_epoch})")
        recorded, stopped = [], []
        row: dict[int, dict[str, float | None]] = {}
        for i in range(n):
            if self.status[i] != ACTIVE:
                continue
            values = {}
            for name, value in metrics[i].items():
                num = _number(value)
                if num is None:
                    continue
                if name not in self.names:
                    self.names.append(name)
                values[name] = num
            row[i] = values
            recorded.append(i)
            if status[i] != ACTIVE:
                self.status[i] = status[i]
                self.reasons[i] = reasons[i]
                self.finished_epoch[i] = epoch
                if status[i] == "stopped":
                    stopped.append(i)
        self.history[epoch] = row
        self.last_epoch = epoch
        return recorded, stopped

    def checkpoint_members(self, epoch: int, stopped: Sequence[int]) -> list[int]:
        """Members whose weights are saved at ``epoch``: all still-running ones at checkpoint epochs, plus those
        that just stopped early (their final weights). Failed members are never checkpointed after failing.

        Args:
            epoch: the epoch just observed.
            stopped: members that stopped at this epoch.

        Returns:
            sorted member indices.
        """
        out = set(stopped)
        if epoch in self.checkpoint_epochs:
            out |= {i for i, s in enumerate(self.status) if s == ACTIVE}
        return sorted(out)

    def add_shard(self, epoch: int, kind: str, file: str, members: Sequence[int]) -> None:
        """Remember a written shard (for checkpoint rows)."""
        self.shards.append({"epoch": int(epoch), "kind": kind, "file": file, "members": [int(i) for i in members]})

    # ------------------------------------------------------------------------------------------- rows

    def final_status(self) -> dict[str, tuple[str, str | None]]:
        """Statuses after training: running members are ``done``.

        Returns:
            model_id -> (status, reason).
        """
        pairs = zip(self.model_ids, self.status)
        return {mid: ("done" if s == ACTIVE else s, self.reasons[i]) for i, (mid, s) in enumerate(pairs)}

    def rows(self, epochs: Sequence[int] | None = None) -> dict[str, Any]:
        """Catalog rows of the given epochs (default all recorded) as an event for the driver.

        Args:
            epochs: epochs to include.

        Returns:
            dict with ``type="rows"``, ``group_id``, ``epochs``, ``metrics`` (model_id, epoch, name, value),
            ``checkpoints`` (model_id, epoch, kind, file), ``statuses`` (model_id -> (status, reason)) and
            ``model_epochs`` (number of (member, epoch >= 1) pairs, for progress bars).
        """
        epochs = sorted(self.history) if epochs is None else sorted(epochs)
        wanted = set(epochs)
        metrics, model_epochs = [], 0
        for e in epochs:
            for i, values in self.history.get(e, {}).items():
                if e >= 1:
                    model_epochs += 1
                for name, value in values.items():
                    metrics.append((self.model_ids[i], e, name, value))
        checkpoints = [
            (self.model_ids[i], s["epoch"], s["kind"], s["file"])
            for s in self.shards
            if s["epoch"] in wanted
            for i in s["members"]
        ]
        statuses = {}
        for i, mid in enumerate(self.model_ids):
            fe = self.finished_epoch[i]
            if fe is not None and fe in wanted:
                statuses[mid] = (self.status[i], self.reasons[i])
            elif fe is None or fe > max(epochs, default=-1):
                statuses[mid] = ("running", None)
        return {
            "type": "rows",
            "group_id": self.group_id,
            "epochs": epochs,
            "metrics": metrics,
            "checkpoints": checkpoints,
            "statuses": statuses,
            "model_epochs": model_epochs,
        }

    # ------------------------------------------------------------------------------------------- (de)serialise

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Serialise for a safetensors file.

        Returns:
            (tensors ``history/values`` float64 [epochs, members, metrics] and ``history/mask`` uint8 of the same
            shape, metadata {"history": JSON}).
        """
        t, n, m = self.last_epoch + 1, len(self.model_ids), max(len(self.names), 1)
        values = torch.full((max(t, 1), n, m), math.nan, dtype=torch.float64)
        mask = torch.zeros((max(t, 1), n, m), dtype=torch.uint8)
        for e, row in self.history.items():
            for i, vals in row.items():
                for name, v in vals.items():
                    j = self.names.index(name)
                    mask[e, i, j] = 1
                    values[e, i, j] = math.nan if v is None else v
        meta = {
            "group_id": self.group_id,
            "model_ids": self.model_ids,
            "checkpoint_epochs": self.checkpoint_epochs,
            "status": self.status,
            "reasons": self.reasons,
            "finished_epoch": self.finished_epoch,
            "names": self.names,
            "epochs": sorted(self.history),
            "shards": self.shards,
            "last_epoch": self.last_epoch,
        }
        return {"history/values": values, "history/mask": mask}, {"history": json.dumps(meta)}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> GroupRecorder:
        """Inverse of :meth:`to_tensors`.

        Args:
            tensors: must hold ``history/values`` and ``history/mask``.
            metadata: must hold ``history``.

        Returns:
            GroupRecorder.
        """
        meta = json.loads(metadata["history"])
        rec = cls(meta["group_id"], meta["model_ids"], meta["checkpoint_epochs"])
        rec.status = list(meta["status"])
        rec.reasons = list(meta["reasons"])
        rec.finished_epoch = list(meta["finished_epoch"])
        rec.names = list(meta["names"])
        rec.shards = list(meta["shards"])
        rec.last_epoch = int(meta["last_epoch"])
        values, mask = tensors["history/values"], tensors["history/mask"]
        for e in meta["epochs"]:
            row: dict[int, dict[str, float | None]] = {}
            for i in range(len(rec.model_ids)):
                if not bool(mask[e, i].any()):
                    continue
                row[i] = {}
                for j, name in enumerate(rec.names):
                    if mask[e, i, j]:
                        v = float(values[e, i, j])
                        row[i][name] = v
            rec.history[e] = row
        return rec
