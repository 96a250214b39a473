"""The Ray engine on a real local Ray instance (2 CPUs): same zoo as the local engine, worker and driver kills,
diverging models, analysis jobs. Ray is started once for the module and shut down at the end."""

import functools
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from killtools import count, kill_when

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip(
    "ray", reason="the Ray engine tests need the optional extra 'ray' (pip install -e '.[ray]'; CI installs it)"
)

from zooscape.studies.metrics import run_metrics  # noqa: E402
from zooscape.zoo import train_zoo  # noqa: E402
from zooscape.zoo.engines import EngineError, emit  # noqa: E402
from zooscape.zoo.engines import base as engine_module  # noqa: E402
from zooscape.zoo.engines.ray_engine import RayEngine  # noqa: E402
from zooscape.zoo.store import ZooExistsError  # noqa: E402

# 8 MLPs in 2 populations (the widths) of 4; lr = 1e30 diverges (NaN loss) in epoch 1.
SPEC = """
[zoo]
name = "raytest"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 16
depth = 1

[training]
epochs = 6
batch_size = 16
optimizer = "sgd"
lr = 0.05
momentum = 0.9

[checkpoints]
epochs = [0, 2, 4]

[grid]
"training.lr" = [0.05, 1e30]
"training.seed" = [0, 1]
"model.width" = [16, 24]
"""
N_MODELS, EPOCHS, KILL_EPOCH = 8, 6, 2


@pytest.fixture(scope="module")
def ray_address():
    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    # the fault-injecting wrapper below is defined in this (non-importable) test module: ship it by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()


@pytest.fixture(scope="module")
def engine(ray_address):
    with RayEngine(poll_interval=0.05) as eng:
        yield eng


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "raytest.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def local_zoo(spec_path, tmp_path_factory):
    return train_zoo(spec_path, tmp_path_factory.mktemp("local") / "zoo", device="cpu", progress=False)


def rows(zoo, sql):
    return sorted(zoo.catalog.query(sql))


def assert_same_zoo(got, ref, same_groups=True):
    """Same models, statuses, reasons and checkpoint epochs; metrics and weights equal to float tolerance."""
    assert got.model_ids == ref.model_ids
    cols = "model_id, status, reason" + (", group_id" if same_groups else "")
    assert rows(got, f"SELECT {cols} FROM models") == rows(ref, f"SELECT {cols} FROM models")
    if same_groups:
        assert rows(got, "SELECT * FROM checkpoints") == rows(ref, "SELECT * FROM checkpoints")
    else:
        sql = "SELECT model_id, epoch, kind FROM checkpoints"
        assert rows(got, sql) == rows(ref, sql)
    a = got.metrics().query("name != 'epoch_time_s'").sort_values(["model_id", "epoch", "name"])
    b = ref.metrics().query("name != 'epoch_time_s'").sort_values(["model_id", "epoch", "name"])
    assert len(a) == len(b) > 0
    assert a[["model_id", "epoch", "name"]].values.tolist() == b[["model_id", "epoch", "name"]].values.tolist()
    for x, y in zip(a["value"], b["value"]):
        assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (x, y)
    for mid in ref.model_ids:
        for e in ref.epochs(mid):
            sa, sb = got.state_dict(mid, e), ref.state_dict(mid, e)
            assert sa.keys() == sb.keys()
            for k in sa:
                torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)
    assert not list(got.path.rglob("resume.safetensors")) and not list(got.path.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def ray_zoo(engine, spec_path, tmp_path_factory):
    """The test zoo trained on Ray, and every event the driver received."""
    events = []

    class Recording:
        def map(self, fn, tasks, on_event=None, ordered=True):
            def record(event):
                events.append(event)
                on_event(event)

            return engine.map(fn, tasks, on_event=record, ordered=ordered)

    zoo = train_zoo(spec_path, tmp_path_factory.mktemp("ray") / "zoo", engine=Recording(), device="cpu",
                    progress=False)
    return zoo, events


def test_ray_zoo_equals_local_zoo_and_diverging_models_fail_alone(ray_zoo, local_zoo):
    got, events = ray_zoo
    assert_same_zoo(got, local_zoo)
    statuses = dict(rows(got, "SELECT model_id, status FROM models"))
    assert sorted(statuses.values()) == ["done"] * 4 + ["failed"] * 4
    for mid, reason in rows(got, "SELECT model_id, reason FROM models"):
        assert (reason is not None and "non-finite" in reason) == (statuses[mid] == "failed")
    for mid, status in statuses.items():  # the diverged models sit in the same chunks as the healthy ones
        assert (status == "failed") == (got.config(mid)["training"]["lr"] > 1.0)
    # the driver received every epoch of every group through the event queue, in order
    groups = {e["group_id"] for e in events}
    assert len(groups) == 2
    for g in groups:
        epochs = [x for e in events if e["type"] == "rows" and e["group_id"] == g for x in e["epochs"]]
        assert epochs == list(range(EPOCHS + 1))


def boom(task):
    for k in range(3):
        emit({"task": task, "k": k})
    if task == 1:
        raise ArithmeticError(f"task {task} exploded")
    return task


def test_engine_protocol_event_order_and_errors(engine):
    events = []
    assert list(engine.map(boom, [0, 2, 3], on_event=events.append)) == [0, 2, 3]
    for t in (0, 2, 3):
        assert [e["k"] for e in events if e["task"] == t] == [0, 1, 2]
    assert sorted(engine.map(boom, [3, 0], ordered=False)) == [0, 3]
    with pytest.raises(EngineError, match="task 1 exploded"):
        list(engine.map(boom, [0, 1, 2]))


def test_analysis_jobs_run_on_ray_like_on_the_local_engine(engine, ray_zoo, local_zoo):
    fast = {"n_samples": 64, "num_steps": 6, "num_probes": 6, "block_size": 3}
    got = run_metrics(ray_zoo[0].path, "hessian", params=fast, engine=engine)
    ref = run_metrics(local_zoo.path, "hessian", params=fast)
    key = lambda r: (r["model_id"], r["metric"])  # noqa: E731
    assert len(got) == len(ref) > 0 and sorted(map(key, got)) == sorted(map(key, ref))
    assert {r["model_id"] for r in got} == {m for m, s in rows(local_zoo, "SELECT model_id, status FROM models")
                                            if s == "done"}
    ref_values = {key(r): r["value"] for r in ref}
    for r in got:
        assert math.isclose(r["value"], ref_values[key(r)], rel_tol=1e-4, abs_tol=1e-6), r
    stored = ray_zoo[0].catalog.query("SELECT COUNT(*) FROM analyses WHERE metric = 'hessian_top_eigenvalue'")
    assert stored[0][0] == 4  # written by the driver


def test_cli_metrics_run_on_ray(ray_address, ray_zoo, capsys):
    from zooscape.cli import main

    args = ["metrics", "run", str(ray_zoo[0].path), "--metric", "spectra", "--quiet", "--engine", "ray",
            "--address", ray_address, "--max-retries", "1"]
    assert main(args) == 0
    assert "new results" in capsys.readouterr().out
    n = ray_zoo[0].catalog.query("SELECT COUNT(DISTINCT model_id) FROM analyses WHERE params LIKE '%spectra%'")
    assert n[0][0] == 4


def test_cli_curve_pairs_on_ray_equal_in_process(ray_address, ray_zoo, capsys):
    import dataclasses

    from zooscape.cli import main
    from zooscape.studies.curves import curve_pairs, curve_records, default_pair_config, pair_params

    path = ray_zoo[0].path
    args = ["curve", "pairs", str(path), "--epoch", "2", "--epochs", "1", "--n-points", "3", "--splits", "test",
            "--quiet", "--engine", "ray", "--address", ray_address, "--max-retries", "1"]
    assert main(args) == 0
    assert "2 pair(s) computed now, 2 stored" in capsys.readouterr().out  # 2 healthy cells x 1 seed pair
    cfg = dataclasses.replace(default_pair_config(), epochs=1)
    params = pair_params("bezier", 1, cfg, 3, 5, "reset", ("test",))
    on_ray = [{k: v for k, v in r.items() if k != "params"} for r in curve_records(path, params)]
    ref = curve_pairs(path, 2, train_config=cfg, splits=("test",), n_points=3, force=True)  # in-process, replaces
    assert on_ray == ref and {r["cell"] for r in ref} == {0, 1}
    assert len(curve_records(path, params)) == 2 and len(list((path / "curves").glob("*.safetensors"))) == 2


def test_chunk_size_is_a_setting_results_do_not_change(engine, spec_path, local_zoo, tmp_path):
    out = tmp_path / "chunks"
    got = train_zoo(spec_path, out, engine=engine, device="cpu", progress=False, chunk_size=1)
    assert len({g for (g,) in rows(got, "SELECT group_id FROM models")}) == N_MODELS  # one model per task
    assert_same_zoo(got, local_zoo, same_groups=False)
    with pytest.raises(ZooExistsError, match="--chunk-size 1"):
        train_zoo(spec_path, out, engine=engine, device="cpu", progress=False)
    again = train_zoo(spec_path, out, engine=engine, device="cpu", progress=False, chunk_size=1)
    assert again.status_counts() == got.status_counts()


def kill_once_after(fn, marker_dir, task):
    """Run ``fn(task)``; the first time a group reports epoch KILL_EPOCH (its checkpoint shards and its resume file
    are written, the driver has not committed its rows), SIGKILL this worker process."""
    outer = engine_module._SINK.get()

    def sink(event):
        outer(event)
        if event.get("type") == "rows" and event["epochs"] == [KILL_EPOCH]:
            try:
                fd = os.open(os.path.join(marker_dir, event["group_id"]), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return  # already killed once: this is the retry
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

    token = engine_module._SINK.set(sink)
    try:
        return fn(task)
    finally:
        engine_module._SINK.reset(token)


def test_worker_killed_mid_chunk_retries_from_its_last_checkpoint(engine, spec_path, local_zoo, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    events = []

    class Killing:
        def map(self, fn, tasks, on_event=None, ordered=True):
            def record(event):
                events.append(event)
                on_event(event)

            wrapped = functools.partial(kill_once_after, fn, str(markers))
            return engine.map(wrapped, tasks, on_event=record, ordered=ordered)

    got = train_zoo(spec_path, tmp_path / "zoo", engine=Killing(), device="cpu", progress=False)
    groups = sorted({e["group_id"] for e in events})
    assert sorted(p.name for p in markers.iterdir()) == groups, "every chunk's worker must have been killed once"
    for g in groups:
        mine = [e for e in events if e["group_id"] == g]
        assert [e["type"] for e in mine].count("start") == 1, "the retry must not start the chunk from scratch"
        replays = [e for e in mine if e["type"] == "rows" and len(e["epochs"]) > 1]
        # the rows of an epoch are sent once its shards and resume file are written: the retry resumes after it
        assert [r["epochs"] for r in replays] == [list(range(KILL_EPOCH + 1))], "retry resumes after the last epoch"
    assert_same_zoo(got, local_zoo)  # nothing lost, nothing duplicated (metrics compared row by row)
    n_names = got.catalog.query("SELECT COUNT(DISTINCT name) FROM metrics")[0][0]
    n_rows = got.catalog.query("SELECT COUNT(*) FROM metrics")[0][0]
    n_expected = sum(len(got.catalog.query("SELECT DISTINCT epoch FROM metrics WHERE model_id = ?", (m,))) * n_names
                     for m in got.model_ids)
    assert n_rows == n_expected




def test_driver_killed_mid_run_then_rerun_resumes(ray_address, engine, spec_path, local_zoo, tmp_path):
    out = tmp_path / "zoo"
    cmd = [sys.executable, "-m", "zooscape.cli", "zoo", "train", str(spec_path), "--out", str(out), "--device",
           "cpu", "--quiet", "--engine", "ray", "--address", ray_address]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    db = out / "catalog.sqlite"
    kill_when(cmd, env, db, "SELECT COUNT(*) FROM checkpoints WHERE epoch >= 2")
    assert count(db, "SELECT COUNT(*) FROM models WHERE status IN ('done', 'failed')") < N_MODELS
    assert list(out.rglob("resume.safetensors")), "killed mid-chunk: a resume file must exist"

    # re-run (in this process, on the same cluster: its workers are warm)
    got = train_zoo(spec_path, out, engine=engine, device="cpu", progress=False)
    assert got.status_counts() == {"done": 4, "failed": 4}
    assert_same_zoo(got, local_zoo)

