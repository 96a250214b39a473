"""--log tensorboard|wandb|mlflow: the runs hold every model's metrics of every epoch (read back with each tool's
own reader); wandb runs offline (no network); a failing logger never fails training."""

import glob
import json
import os
import struct
import time

import numpy as np
import pytest
from report_helpers import SPEC, write_spec

from zooscape.cli import main
from zooscape.zoo import open as open_zoo

TINY = SPEC.replace('"training.seed" = [0, 1, 2]', '"training.seed" = [0, 1]')


def train(tmp_path, backend, extra=()):
    out = tmp_path / "zoo"
    spec = write_spec(tmp_path, TINY)
    assert main(["zoo", "train", str(spec), "--out", str(out), "--quiet", "--device", "cpu", "--log", backend,
                 *extra]) == 0
    with open_zoo(out) as zoo:
        metrics = zoo.metrics().dropna()
    assert len(metrics) == 4 * 3 * 8  # 4 models x epochs 0..2 x 8 metrics
    return out, {(m, int(e), n): v for m, e, n, v in metrics.itertuples(index=False)}


def check(expected, logged):
    assert set(logged) == set(expected)
    keys = sorted(expected)
    np.testing.assert_allclose([logged[k] for k in keys], [expected[k] for k in keys], rtol=1e-6)


def test_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installable here")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, expected = train(tmp_path, "tensorboard")
    acc = EventAccumulator(str(out / "logs" / "tensorboard" / "zoo-train"), size_guidance={"scalars": 0})
    acc.Reload()
    logged = {}
    for tag in acc.Tags()["scalars"]:
        mid, name = tag.split("/")
        for ev in acc.Scalars(tag):
            logged[(mid, ev.step, name)] = ev.value
    check(expected, logged)


def read_wandb_records(path):
    """Records of a .wandb transaction log (LevelDB log framing; records parsed with wandb's own protobuf)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero fill up to the next block
            pos += block - pos % block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        parts += chunk
        if kind in (1, 4):  # FULL or LAST
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(parts)
            parts = b""
            yield rec


def wandb_history(path):
    """``{(model_id, epoch, metric): value}`` of the history records of a run file, and the record types seen."""
    logged, kinds = {}, []
    for rec in read_wandb_records(path):
        kinds.append(rec.WhichOneof("record_type"))
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in rec.history.item}
        for key, value in items.items():
            if "/" in key:
                mid, name = key.split("/")
                logged[(mid, int(items["epoch"]), name)] = value
    return logged, kinds


def test_wandb_offline(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb", reason="the wandb package is not installable here")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, expected = train(tmp_path, "wandb", ["--wandb-mode", "offline"])
    err = capsys.readouterr().err
    assert "--log wandb" not in err, err  # the tracker neither failed to start nor switched itself off
    runs = glob.glob(str(out / "logs" / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    # wandb's service may still be flushing its transaction log right after run.finish() on a busy machine
    deadline = time.monotonic() + 60
    while True:
        try:
            logged, kinds = wandb_history(runs[0])
        except Exception as exc:  # noqa: BLE001 - a record still being written
            logged, kinds = {}, [repr(exc)]
        if len(logged) >= len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert logged, (kinds, os.path.getsize(runs[0]))
    check(expected, logged)


def test_mlflow_file_store(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow-skinny package is not installable here")
    from mlflow.tracking import MlflowClient

    out, expected = train(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=(out / "logs" / "mlflow").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("zoo").experiment_id])
    assert run.info.run_name == "zoo-train" and run.info.status == "FINISHED"
    logged = {}
    for key in run.data.metrics:
        mid, name = key.split("/")
        for m in client.get_metric_history(run.info.run_id, key):
            logged[(mid, m.step, name)] = m.value
    check(expected, logged)


def test_analyses_are_logged(analysed_zoo, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installable here")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    assert main(["metrics", "run", str(analysed_zoo), "--metric", "spectra", "--set", "min_evals=4", "--quiet",
                 "--log", "tensorboard", "--log-dir", str(logs)]) == 0
    acc = EventAccumulator(str(logs / "zoo-metrics-spectra"))
    acc.Reload()
    with open_zoo(analysed_zoo) as zoo:
        rows = zoo.analyses()
    rows = rows[[p.get("min_evals") == 4 for p in rows["params"]]]
    rows = rows[rows["value"].notna()]  # NaN results are not logged
    assert len(rows) > 0
    tags = set(acc.Tags()["scalars"])
    assert {f"{m}/{n}" for m, n in zip(rows["model_id"], rows["metric"])} <= tags


def test_a_failing_logger_never_fails_training(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installable here")
    from zooscape.zoo import tracking

    def broken(self, step, values):
        raise OSError("disk full")

    monkeypatch.setattr(tracking.TensorBoardTracker, "_write", broken)
    train(tmp_path, "tensorboard")
    err = capsys.readouterr().err
    assert err.count("--log tensorboard failed and is switched off (OSError: disk full)") == 1
    # a backend that cannot start: warned, training goes on
    monkeypatch.setattr(tracking, "TensorBoardTracker", lambda *a: (_ for _ in ()).throw(ImportError("no tb")))
    t = tracking.make_tracker("tensorboard", tmp_path / "x", "run")
    assert isinstance(t, tracking.NullTracker)
    assert 'pip install "zooscape[tensorboard]"' in capsys.readouterr().err
