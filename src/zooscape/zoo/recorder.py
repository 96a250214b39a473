"""Per-group training record: metrics history, member statuses and written shards.

The recorder lives in the process that trains a group. After every epoch it turns an ``EpochReport`` into
catalog rows (sent to the driver as an event) and it is saved next to the group's resume file, so that after a
crash the rows of every finished epoch can be replayed into the catalog (idempotently) before training goes on.

Saving is append-only, so that the per-epoch cost does not grow with the number of epochs: every change (an
observed epoch, a written shard) becomes one line of a journal (JSON lines; the first line names the group, its
members and checkpoint epochs). :meth:`GroupRecorder.journal` returns the lines not yet saved; the task appends them
to the group's journal file and records the file's valid length in the resume file, which it rewrites atomically.
:meth:`GroupRecorder.from_journal` replays a journal (Python's float ``repr`` round-trips exactly, NaN and
infinities included, so a replayed history equals the recorded one bit for bit). Resume files written before the
journal (history as ``[epochs, members, metrics]`` tensors) are still read by :meth:`GroupRecorder.from_tensors`.
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


def _line(obj: Any) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


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
        self._shards_of: dict[int, list[dict[str, Any]]] = {}  # epoch -> its shards (rows of one epoch in O(1))
        self.last_epoch = -1
        head = {"group_id": group_id, "model_ids": self.model_ids, "checkpoint_epochs": self.checkpoint_epochs}
        self._lines: list[bytes] = [_line(head)]  # the journal (see the module docstring)
        self._saved = 0  # lines already handed out by journal()

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
        recorded, stopped, finished = [], [], []
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
                finished.append([i, status[i], reasons[i]])
                if status[i] == "stopped":
                    stopped.append(i)
        self.history[epoch] = row
        self.last_epoch = epoch
        self._lines.append(_line({"epoch": epoch, "rows": [[i, v] for i, v in row.items()], "finished": finished}))
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
        shard = {"epoch": int(epoch), "kind": kind, "file": file, "members": [int(i) for i in members]}
        self.shards.append(shard)
        self._shards_of.setdefault(shard["epoch"], []).append(shard)
        self._lines.append(_line({"shard": shard}))

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
            for e in epochs
            for s in self._shards_of.get(e, ())
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

    def journal(self, full: bool = False) -> bytes:
        """The journal lines recorded since the last call (``full``: the whole journal), as bytes to append to the
        group's journal file; later calls return only what came after. Cost: the new lines only.

        Returns:
            UTF-8 JSON lines, each ending in ``\\n`` (empty when nothing changed).
        """
        start = 0 if full else self._saved
        self._saved = len(self._lines)
        return b"".join(self._lines[start:])

    @classmethod
    def from_journal(cls, data: bytes) -> GroupRecorder:
        """Replay a journal written by :meth:`journal` (complete lines only; the result's journal counts as
        saved).

        Raises:
            ValueError: empty or corrupt journal (the message names the line).
        """
        lines = data.splitlines(keepends=True)
        if not lines:
            raise ValueError("empty recorder journal")
        try:
            head = json.loads(lines[0])
            rec = cls(head["group_id"], head["model_ids"], head["checkpoint_epochs"])
            for k, raw in enumerate(lines[1:], 2):
                entry = json.loads(raw)
                if "shard" in entry:
                    s = entry["shard"]
                    rec.add_shard(s["epoch"], s["kind"], s["file"], s["members"])
                    continue
                epoch = int(entry["epoch"])
                if epoch <= rec.last_epoch:
                    raise ValueError(f"line {k}: epoch {epoch} after epoch {rec.last_epoch}")
                row = {int(i): values for i, values in entry["rows"]}
                for values in row.values():
                    for name in values:
                        if name not in rec.names:
                            rec.names.append(name)
                for i, status, reason in entry["finished"]:
                    rec.status[i], rec.reasons[i], rec.finished_epoch[i] = status, reason, epoch
                rec.history[epoch] = row
                rec.last_epoch = epoch
                rec._lines.append(raw)
        except (KeyError, TypeError, IndexError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt recorder journal: {e!r}") from None
        rec._saved = len(rec._lines)
        return rec

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Serialise for a safetensors file (the format of resume files before the journal; cost grows with the
        history: use :meth:`journal` per epoch).

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
        """Inverse of :meth:`to_tensors` (reads resume files written before the journal).

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
        for shard in meta["shards"]:
            rec.add_shard(shard["epoch"], shard["kind"], shard["file"], shard["members"])
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
            finished = [[i, rec.status[i], rec.reasons[i]] for i, fe in enumerate(rec.finished_epoch) if fe == e]
            rec._lines.append(_line({"epoch": e, "rows": [[i, v] for i, v in row.items()], "finished": finished}))
        return rec
