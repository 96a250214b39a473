"""GroupRecorder: catalog rows per epoch, failure/stop handling, resume serialisation."""

import math

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
