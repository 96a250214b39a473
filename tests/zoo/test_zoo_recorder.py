"""GroupRecorder: catalog rows per epoch, failure/stop handling, resume serialisation."""

import math
import struct

import pytest

from zooscape.zoo.recorder import GroupRecorder

IDS = ["a", "b", "c"]


def metrics(epoch, bad=None):
    return [{"loss": (i + 1) / (epoch + 1) if i != bad else math.nan, "acc": 0.1 * epoch, "note": "x"}
            for i in range(3)]


def run(rec):
    rec.observe(0, metrics(0), ["running"] * 3, [None] * 3)
    rec.observe(1, metrics(1, bad=1), ["running", "failed", "running"], [None, "nan loss", None])
    rec.observe(2, metrics(2), ["running", "failed", "stopped"], [None, "nan loss", "early stop"])
    rec.observe(3, metrics(3), ["running", "failed", "stopped"], [None, "nan loss", "early stop"])


def test_rows_follow_member_status():
    rec = GroupRecorder("g", IDS, [0, 3])
    run(rec)
    rows = rec.rows()
    per_model = {m: sorted({e for mid, e, _, _ in rows["metrics"] if mid == m}) for m in IDS}
    assert per_model == {"a": [0, 1, 2, 3], "b": [0, 1], "c": [0, 1, 2]}
    assert {n for _, _, n, _ in rows["metrics"]} == {"loss", "acc"}  # non-numeric values dropped
    assert rows["model_epochs"] == 3 + 1 + 2
    assert rows["statuses"] == {"a": ("running", None), "b": ("failed", "nan loss"), "c": ("stopped", "early stop")}
    assert rec.final_status() == {"a": ("done", None), "b": ("failed", "nan loss"), "c": ("stopped", "early stop")}
    one = rec.rows([1])
    assert {(m, e) for m, e, _, _ in one["metrics"]} == {("a", 1), ("b", 1), ("c", 1)}
    assert one["statuses"] == {"a": ("running", None), "b": ("failed", "nan loss"), "c": ("running", None)}


def test_checkpoint_members():
    rec = GroupRecorder("g", IDS, [0, 3])
    _, stopped = rec.observe(0, metrics(0), ["running"] * 3, [None] * 3)
    assert rec.checkpoint_members(0, stopped) == [0, 1, 2]
    _, stopped = rec.observe(1, metrics(1), ["running", "failed", "running"], [None, "x", None])
    assert stopped == [] and rec.checkpoint_members(1, stopped) == []
    _, stopped = rec.observe(2, metrics(2), ["running", "failed", "stopped"], [None, "x", "s"])
    assert stopped == [2] and rec.checkpoint_members(2, stopped) == [2]  # final weights of the stopped model
    _, stopped = rec.observe(3, metrics(3), ["running", "failed", "stopped"], [None, "x", "s"])
    assert rec.checkpoint_members(3, stopped) == [0]  # failed/stopped models are not checkpointed again


def test_tensor_roundtrip():
    rec = GroupRecorder("g", IDS, [0, 3])
    run(rec)
    rec.add_shard(0, "weights", "checkpoints/g/e000000.weights.safetensors", [0, 1, 2])
    tensors, meta = rec.to_tensors()
    assert tensors["history/values"].shape == (4, 3, 2)
    back = GroupRecorder.from_tensors(tensors, meta)
    a, b = rec.rows(), back.rows()
    assert a["statuses"] == b["statuses"] and a["checkpoints"] == b["checkpoints"]
    assert a["model_epochs"] == b["model_epochs"]
    assert len(a["metrics"]) == len(b["metrics"])
    for (m1, e1, n1, v1), (m2, e2, n2, v2) in zip(sorted(a["metrics"]), sorted(b["metrics"])):
        assert (m1, e1, n1) == (m2, e2, n2)
        assert (math.isnan(v1) and math.isnan(v2)) or v1 == v2
    assert back.last_epoch == 3


def test_bad_reports():
    rec = GroupRecorder("g", IDS, [0])
    with pytest.raises(ValueError, match="3 members"):
        rec.observe(0, metrics(0)[:2], ["running"] * 3, [None] * 3)
    rec.observe(0, metrics(0), ["running"] * 3, [None] * 3)
    with pytest.raises(ValueError, match="already recorded"):
        rec.observe(0, metrics(0), ["running"] * 3, [None] * 3)


def _same(a, b):
    ra, rb = a.rows(), b.rows()
    assert ra["statuses"] == rb["statuses"] and ra["checkpoints"] == rb["checkpoints"]
    assert ra["model_epochs"] == rb["model_epochs"] and ra["epochs"] == rb["epochs"]
    assert [m[:3] for m in ra["metrics"]] == [m[:3] for m in rb["metrics"]]
    for (_, _, _, v1), (_, _, _, v2) in zip(ra["metrics"], rb["metrics"]):
        assert math.isnan(v1) and math.isnan(v2) or struct.pack("<d", v1) == struct.pack("<d", v2)  # bitwise
    assert (a.names, a.status, a.reasons, a.finished_epoch, a.last_epoch, a.shards) == (
        b.names, b.status, b.reasons, b.finished_epoch, b.last_epoch, b.shards)


def test_journal_roundtrip_is_bitwise_and_incremental():
    rec = GroupRecorder("g", IDS, [0, 3])
    parts = [rec.journal()]  # the header
    rec.observe(0, [{"loss": 1 / 3, "acc": 0.1, "x": math.inf} for _ in range(3)], ["running"] * 3, [None] * 3)
    rec.add_shard(0, "weights", "checkpoints/g/e000000.weights.safetensors", [0, 1, 2])
    parts.append(rec.journal())
    prefix = b"".join(parts)
    rec.observe(1, metrics(1, bad=1), ["running", "failed", "running"], [None, "nan loss", None])
    parts.append(rec.journal())
    rec.observe(2, metrics(2), ["running", "failed", "stopped"], [None, "nan loss", "early stop"])
    rec.observe(3, [{"loss": 1e-300 * (i + 1) / 7, "acc": -0.0} for i in range(3)], ["running", "failed", "stopped"],
                [None, "nan loss", "early stop"])
    parts.append(rec.journal())
    assert rec.journal() == b""  # nothing new
    assert b"".join(parts) == rec.journal(full=True)
    _same(GroupRecorder.from_journal(b"".join(parts)), rec)
    early = GroupRecorder.from_journal(prefix)  # the journal up to an earlier epoch: the recorder at that epoch
    assert early.last_epoch == 0 and len(early.shards) == 1 and early.status == ["running"] * 3
    with pytest.raises(ValueError, match="corrupt"):
        GroupRecorder.from_journal(prefix + b'{"epoch": 1, "rows": [[0, {"loss": 1.0}]]\n')
    with pytest.raises(ValueError, match="empty"):
        GroupRecorder.from_journal(b"")


def test_legacy_tensors_become_a_journal():
    rec = GroupRecorder("g", IDS, [0, 3])
    run(rec)
    rec.add_shard(3, "weights", "checkpoints/g/e000003.weights.safetensors", [0])
    legacy = GroupRecorder.from_tensors(*rec.to_tensors())
    _same(GroupRecorder.from_journal(legacy.journal(full=True)), rec)


def test_resume_writes_do_not_grow_with_epochs(tmp_path):
    """Per epoch the resume file is rewritten with the state only and the journal grows by one epoch's lines:
    both independent of how many epochs came before (the history used to be rewritten whole every epoch)."""
    import torch

    from zooscape.train import PopulationState
    from zooscape.zoo.store import ZooStore
    from zooscape.zoo.task import GroupTask, _journal_path, _write_resume, read_resume

    store = ZooStore(tmp_path)
    ids = [f"m{i}" for i in range(4)]
    task = GroupTask(root=str(tmp_path), group_id="g", model_ids=ids, configs=[{}] * 4, checkpoint_epochs=[0])
    rec = GroupRecorder("g", ids, [0])
    states = [{"w": torch.zeros(5)} for _ in ids]
    extra = [{"status": "running"} for _ in ids]
    resume_sizes, journal_growth, last = [], [], 0
    for e in range(60):
        rec.observe(e, [{"loss": 1.0 / (e + 1) + i, "acc": 0.5} for i in range(4)], ["running"] * 4, [None] * 4)
        _write_resume(store, task, PopulationState(e, states, [{} for _ in ids], extra), rec)
        resume_sizes.append(store.resume_path("g").stat().st_size)
        size = _journal_path(store, "g").stat().st_size
        journal_growth.append(size - last)
        last = size
    assert max(resume_sizes[10:]) - min(resume_sizes[10:]) <= 8  # (the epoch number's digits)
    assert max(journal_growth[10:]) <= 1.5 * min(journal_growth[10:])  # (float reprs differ in length)
    with open(_journal_path(store, "g"), "ab") as fh:  # a crash after appending, before the resume write
        fh.write(b'{"epoch": 60, "rows": [], "finished": []}\n{"epo')
    state, back = read_resume(store, "g")
    assert state.epoch == 59 and back.last_epoch == 59  # lines past the recorded length are ignored
    _same(back, rec)
    store.delete_resume("g")
    assert not _journal_path(store, "g").exists() and not store.resume_path("g").exists()


def test_resume_files_written_before_the_journal_are_read_and_continued(tmp_path):
    import json

    import torch

    from zooscape.train import PopulationState
    from zooscape.zoo.shards import write_tensors
    from zooscape.zoo.store import ZooStore
    from zooscape.zoo.task import GroupTask, _start_journal, _write_resume, read_resume

    store = ZooStore(tmp_path)
    rec = GroupRecorder("g", IDS, [0, 3])
    run(rec)
    state = PopulationState(3, [{"w": torch.ones(2)} for _ in IDS], [{} for _ in IDS], [{"status": "x"} for _ in IDS])
    state_tensors, state_meta = state.to_tensors()
    hist_tensors, hist_meta = rec.to_tensors()  # the version-1 layout: history tensors inside the resume file
    tensors = {**{f"state/{k}": v for k, v in state_tensors.items()}, **hist_tensors}
    write_tensors(store.resume_path("g"), tensors, {"format": "zooscape-resume", "version": "1", "group_id": "g",
                                                    "epoch": "3", "state_meta": json.dumps(state_meta), **hist_meta})
    got_state, got = read_resume(store, "g")
    assert got_state.epoch == 3
    _same(got, rec)
    task = GroupTask(root=str(tmp_path), group_id="g", model_ids=IDS, configs=[{}] * 3, checkpoint_epochs=[0, 3])
    _start_journal(store, task, got)  # as run_group does on a restart
    got.observe(4, metrics(4), ["running", "failed", "stopped"], [None, "nan loss", "early stop"])
    rec.observe(4, metrics(4), ["running", "failed", "stopped"], [None, "nan loss", "early stop"])
    _write_resume(store, task, PopulationState(4, state.model_states, state.optimizer_states, state.member_extra), got)
    _, again = read_resume(store, "g")  # now version 2
    _same(again, rec)
