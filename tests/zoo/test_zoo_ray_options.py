"""Engine options without a Ray instance: the install hint when ``ray`` is missing, argument checks, and the
population chunk size (models per task) as a setting of ``train_zoo`` / ``zoo train --chunk-size``."""

import sys

import pytest

from zooscape.cli import main
from zooscape.zoo import train_zoo
from zooscape.zoo.engines import LocalEngine, get_engine
from zooscape.zoo.engines.ray_engine import INSTALL_HINT, RayEngine
from zooscape.zoo.store import ZooExistsError

SPEC = """
[zoo]
name = "chunks"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 8
depth = 1

[training]
epochs = 1
batch_size = 64
optimizer = "sgd"
lr = 0.05

[grid]
"training.seed" = [0, 1, 2, 3, 4]
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "chunks.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError


def test_missing_ray_says_how_to_install_it(no_ray, spec, tmp_path, capsys):
    with pytest.raises(RuntimeError, match=r"pip install .*zooscape\[ray\]"):
        get_engine("ray")
    with pytest.raises(RuntimeError, match="optional dependency 'ray'"):
        RayEngine()
    out = tmp_path / "zoo"
    code = main(["zoo", "train", str(spec), "--out", str(out), "--engine", "ray", "--quiet"])
    assert code == 1
    assert INSTALL_HINT in capsys.readouterr().err
    assert not out.exists(), "nothing may be written when the engine is unavailable"


@pytest.mark.parametrize("kwargs, bad", [
    ({"num_cpus": -1}, "num_cpus"), ({"num_gpus": float("nan")}, "num_gpus"), ({"max_retries": -2}, "max_retries"),
    ({"memory": 0}, "memory"), ({"threads_per_task": -1}, "threads_per_task"), ({"poll_interval": 0}, "poll_interval"),
    ({"resources": {"node_a": -1}}, "node_a"), ({"num_cpus": True}, "num_cpus"),
])
def test_ray_engine_rejects_bad_resources_before_importing_ray(no_ray, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        RayEngine(**kwargs)


def test_no_tasks_no_ray_instance():
    ray = pytest.importorskip("ray", reason="needs the optional extra 'ray' (CI installs it)")
    was = ray.is_initialized()
    assert list(RayEngine().map(len, [])) == []
    assert ray.is_initialized() == was


def test_get_engine_options():
    with pytest.raises(ValueError, match="workers=2"):
        get_engine("ray", workers=2)
    with pytest.raises(ValueError, match="address"):
        get_engine("local", address="auto")
    with pytest.raises(ValueError, match="num_cpus"):
        get_engine(LocalEngine(), num_cpus=2)
    assert get_engine("local", 2, threads_per_worker=2).threads_per_worker == 2


def test_ray_only_flags_need_engine_ray(spec, tmp_path, capsys):
    out = tmp_path / "zoo"
    assert main(["zoo", "train", str(spec), "--out", str(out), "--address", "auto", "--gpus-per-task", "1"]) == 1
    err = capsys.readouterr().err
    assert "--address, --gpus-per-task only apply with --engine ray" in err
    assert not out.exists()


def test_chunk_size_sets_models_per_task_and_belongs_to_the_zoo(spec, tmp_path, capsys):
    with pytest.raises(ValueError, match="chunk_size"):
        train_zoo(spec, tmp_path / "bad", chunk_size=0, progress=False)
    out = tmp_path / "zoo"
    zoo = train_zoo(spec, out, chunk_size=2, device="cpu", progress=False)
    sizes = sorted(n for (n,) in zoo.catalog.query("SELECT COUNT(*) FROM models GROUP BY group_id"))
    assert sizes == [1, 2, 2]  # 5 models of one architecture cut into chunks of at most 2
    ref = train_zoo(spec, tmp_path / "ref", device="cpu", progress=False)  # spec: max_size 64 -> one chunk
    assert len(ref.catalog.query("SELECT DISTINCT group_id FROM models")) == 1
    a = zoo.metrics().query("name != 'epoch_time_s'").sort_values(["model_id", "epoch", "name"])
    b = ref.metrics().query("name != 'epoch_time_s'").sort_values(["model_id", "epoch", "name"])
    assert a[["model_id", "epoch", "name"]].values.tolist() == b[["model_id", "epoch", "name"]].values.tolist()
    assert a["value"].values == pytest.approx(b["value"].values, rel=1e-5, abs=1e-6)
    # the chunking decides the checkpoint files: a re-run must use the same chunk size
    with pytest.raises(ZooExistsError, match="--chunk-size 2"):
        train_zoo(spec, out, device="cpu", progress=False)
    assert main(["zoo", "train", str(spec), "--out", str(out), "--chunk-size", "3", "--quiet"]) == 1
    assert "--chunk-size 2" in capsys.readouterr().err
    assert main(["zoo", "train", str(spec), "--out", str(out), "--chunk-size", "2", "--quiet"]) == 0
