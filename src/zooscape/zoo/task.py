"""The training task of one group: runs where the engine puts it (driver or worker process).

It builds the population, resumes from the group's resume file if there is one, trains with
``zooscape.train.train_population`` and, for every epoch, in this order:

1. writes the checkpoint shards of the epoch (weights, optimizer states) — atomic files;
2. appends the epoch's :class:`GroupRecorder` journal lines to the group's journal file (``resume-history.jsonl``,
   fsynced) and overwrites the resume file (PopulationState + the journal's valid length) atomically;
3. emits the epoch's catalog rows to the driver (:func:`zooscape.zoo.engines.emit`), which commits them.

Steps 1 and 2 run in a background thread while the next epoch trains (:class:`_EpochWriter`: the epoch's tensors
are copies, so training does not wait for the encoding and the fsyncs); step 3 runs in the task's thread once they
are done, at the end of the next epoch or of training. So the catalog never names a shard that is not on disk, and
a resume file never points past shards that are not. Neither write grows with the number of epochs (the history is
appended, never rewritten). If the process dies before 2 finishes the epoch is simply trained again (same result,
rows upserted); journal lines past the length the resume file records are ignored, and the journal is rewritten to
its valid part when the group restarts. If the driver had not yet committed the rows of an epoch whose resume file
exists (died between 2 and 3, or worker processes), they are replayed from the journal when the group restarts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from zooscape._io import atomic_write_bytes
from zooscape.zoo.build import build_member, build_model, build_train_config, load_data
from zooscape.zoo.engines import emit
from zooscape.zoo.recorder import GroupRecorder
from zooscape.zoo.shards import read_tensors, write_tensors
from zooscape.zoo.store import RESUME_JOURNAL_FILE, ZooStore

__all__ = ["GroupTask", "run_group", "read_resume"]


@dataclass
class GroupTask:
    """Everything a worker needs to train one group (picklable).

    Args:
        root: zoo directory.
        group_id: group.
        model_ids: members in population order.
        configs: one nested config (``dataset``/``model``/``training``/``derived``) per member.
        checkpoint_epochs: epochs to checkpoint.
        save_optimizer: also write optimizer-state shards.
        device: torch device for training ("auto" lets the trainer choose).
        extra: optional per-task settings; ``extra["lmc"]``: LMC measured during training
            (:func:`zooscape.zoo.lmc_section.training_lmc`).
    """

    root: str
    group_id: str
    model_ids: list[str]
    configs: list[dict[str, Any]]
    checkpoint_epochs: list[int]
    save_optimizer: bool = True
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def read_resume(store: ZooStore, group_id: str) -> tuple[Any, GroupRecorder] | None:
    """Read a group's resume file (and the valid part of its journal).

    Args:
        store: the zoo store.
        group_id: group.

    Returns:
        (PopulationState, GroupRecorder), or None when the group has no resume file.

    Raises:
        ValueError: the journal is shorter than the resume file says, or corrupt (the message names the file).
    """
    from safetensors import safe_open

    from zooscape.train import PopulationState

    path = store.resume_path(group_id)
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
    tensors = read_tensors(path)
    if "history_bytes" in metadata:  # version 2: the history is in the journal
        journal, size = _journal_path(store, group_id), int(metadata["history_bytes"])
        try:
            with open(journal, "rb") as jf:
                data = jf.read(size)
        except FileNotFoundError:
            data = b""
        if len(data) != size:
            raise ValueError(f"{journal}: {len(data)} bytes, the resume file {path} needs its first {size}")
        try:
            recorder = GroupRecorder.from_journal(data)
        except ValueError as e:
            raise ValueError(f"{journal}: {e}") from None
    else:  # version 1: the history as tensors inside the resume file
        recorder = GroupRecorder.from_tensors(tensors, metadata)
    state_tensors = {k[len("state/") :]: v for k, v in tensors.items() if k.startswith("state/")}
    state = PopulationState.from_tensors(state_tensors, json.loads(metadata["state_meta"]))
    return state, recorder


def _journal_path(store: ZooStore, group_id: str) -> Any:
    return store.resume_path(group_id).with_name(RESUME_JOURNAL_FILE)


def _start_journal(store: ZooStore, task: GroupTask, recorder: GroupRecorder) -> None:
    """Make the journal file hold exactly the recorder's journal (a fresh group's first line, or a resumed group's
    valid lines: anything a crash left after them goes), atomically; later epochs append to it."""
    atomic_write_bytes(_journal_path(store, task.group_id), recorder.journal(full=True))


def _write_resume(store: ZooStore, task: GroupTask, state: Any, recorder: GroupRecorder) -> None:
    """Append the recorder's new journal lines (fsynced), then rewrite the resume file atomically with the state
    and the journal's valid length. Cost per epoch: the state and the epoch's lines, whatever the epoch."""
    journal = _journal_path(store, task.group_id)
    if not journal.exists():  # (first write of a group that did not go through run_group)
        _start_journal(store, task, recorder)
    lines = recorder.journal()
    with open(journal, "ab") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())
        size = fh.tell()
    state_tensors, state_meta = state.to_tensors()
    tensors = {f"state/{k}": v for k, v in state_tensors.items()}
    meta = {
        "format": "zooscape-resume",
        "version": "2",
        "group_id": task.group_id,
        "epoch": str(recorder.last_epoch),
        "state_meta": json.dumps(state_meta),
        "history_file": RESUME_JOURNAL_FILE,
        "history_bytes": str(size),
    }
    path = store.resume_path(task.group_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tensors(path, tensors, meta)


@dataclass(frozen=True)
class _EpochLines:
    """An epoch's journal lines, taken from the recorder when the epoch ended (what :func:`_write_resume` appends
    while the recorder already records the next epoch)."""

    lines: bytes
    last_epoch: int

    def journal(self, full: bool = False) -> bytes:
        if full:
            raise ValueError("_EpochLines holds one epoch's lines, not the whole journal")
        return self.lines


class _EpochWriter:
    """Writes one epoch's files (shards, journal lines, resume file) in a background thread, one epoch at a time,
    and emits the epoch's catalog rows from the task's thread once they are on disk (:meth:`flush`)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._rows: dict[str, Any] | None = None

    def submit(self, write: Callable[[], None], rows: dict[str, Any]) -> None:
        """Write ``write()`` in the background, then (at the next :meth:`flush`) emit ``rows``."""
        self.flush()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zooscape-epoch-writer")
        self._pending, self._rows = self._pool.submit(write), rows

    def flush(self) -> None:
        """Wait for the pending epoch's files (raising its error, its rows then unsent) and emit its rows."""
        pending, rows = self._pending, self._rows
        self._pending = self._rows = None
        if pending is not None:
            pending.result()
            emit(rows)

    def close(self) -> None:
        """Stop the thread (after :meth:`flush`, or without sending the rows of an epoch still pending)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _write_epoch(store: ZooStore, task: GroupTask, epoch: int, shards: Sequence[tuple[str, dict[str, Any]]],
                 state: Any, lines: _EpochLines) -> None:
    """The files of one epoch, in order: its shards (atomic), then the journal lines and the resume file."""
    for kind, tensors_by_model in shards:
        store.write_shard(task.group_id, epoch, kind, tensors_by_model)
    _write_resume(store, task, state, lines)


def _select(items: Sequence[Any], members: Sequence[int], ids: Sequence[str]) -> dict[str, Any]:
    return {ids[i]: items[i] for i in members}


def _training_lmc(task: GroupTask, data: Any, emit_stored: bool) -> Any:
    """The group's :class:`zooscape.studies.lmc_train.TrainingLmc` when the spec asks for LMC during training
    (``task.extra["lmc"]``), after replaying its stored rows to the driver on a restart; else None."""
    settings = task.extra.get("lmc")
    if not settings:
        return None
    from zooscape.studies.lmc_train import TrainingLmc

    first = task.configs[0]
    template = build_model(first["model"], seed=0, model_args=first.get("derived", {}).get("model_args"))
    lmc = TrainingLmc(task.root, task.group_id, task.model_ids, task.configs, settings, data, template)
    if emit_stored and lmc.stored_rows():
        emit({"type": "analyses", "group_id": task.group_id, "rows": lmc.stored_rows()})
    return lmc


def run_group(task: GroupTask) -> dict[str, Any]:
    """Train (or resume) one group; see the module docstring for the write order.

    Args:
        task: the group.

    Returns:
        dict ``{"type": "done", "group_id", "statuses": {model_id: (status, reason)}}``.
    """
    from zooscape.train import train_population

    store = ZooStore(task.root)
    first = task.configs[0]
    data = load_data(first["dataset"])
    train_cfg = build_train_config(first["training"])
    members = [build_member(c["training"]) for c in task.configs]
    models = [
        build_model(c["model"], seed=m.seed, model_args=c.get("derived", {}).get("model_args"))
        for c, m in zip(task.configs, members)
    ]

    resumed = read_resume(store, task.group_id)
    if resumed is None:
        state, recorder = None, GroupRecorder(task.group_id, task.model_ids, task.checkpoint_epochs)
        emit({"type": "start", "group_id": task.group_id, "model_ids": list(task.model_ids)})
    else:
        state, recorder = resumed
        if recorder.model_ids != list(task.model_ids):
            raise ValueError(
                f"resume file of group {task.group_id} lists models {recorder.model_ids}, expected {task.model_ids}"
            )
        emit(recorder.rows())  # replay: idempotent upserts of everything already trained
    _start_journal(store, task, recorder)

    ids = task.model_ids
    lmc = _training_lmc(task, data, emit_stored=resumed is not None)

    writer = _EpochWriter()

    def callback(report: Any) -> None:
        writer.flush()  # the previous epoch's files are on disk: its rows go to the driver
        if lmc is not None:  # LMC during training ([lmc] every): reads the members' views before anything moves
            rows = lmc.measure(report)
            if rows:
                emit({"type": "analyses", "group_id": task.group_id, "rows": rows})
        epoch = report.epoch
        recorded, stopped = recorder.observe(epoch, report.metrics, report.status, report.reasons)
        ckpt = recorder.checkpoint_members(epoch, stopped)
        shards: list[tuple[str, dict[str, Any]]] = []
        sds = opt = None
        if ckpt:  # (copies: training goes on while they are written)
            sds = report.state_dicts()
            shards.append(("weights", _select(sds, ckpt, ids)))
            recorder.add_shard(epoch, "weights", store.shard_relpath(task.group_id, epoch, "weights"), ckpt)
            if task.save_optimizer:
                opt = report.optimizer_states()
                shards.append(("optimizer", _select(opt, ckpt, ids)))
                recorder.add_shard(epoch, "optimizer", store.shard_relpath(task.group_id, epoch, "optimizer"), ckpt)
        rows = recorder.rows([epoch])
        lines = _EpochLines(recorder.journal(), recorder.last_epoch)
        state = report.state(sds, opt)
        writer.submit(lambda: _write_epoch(store, task, epoch, shards, state, lines), rows)

    epochs = int(train_cfg.epochs)
    all_finished = all(s != "running" for s in recorder.status)
    try:
        if resumed is None or (recorder.last_epoch < epochs and not all_finished):
            train_population(models, data, train_cfg, members, device=task.device, resume=state,
                             callback=callback, progress=False)
        writer.flush()
    except BaseException:
        try:  # what the last epoch wrote still reaches the catalog; the error to report is the first one
            writer.flush()
        except BaseException:  # noqa: S110 - (its files are incomplete: its rows stay unsent)
            pass
        raise
    finally:
        writer.close()
    return {"type": "done", "group_id": task.group_id, "statuses": recorder.final_status()}
