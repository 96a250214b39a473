"""zooscape curve train / eval / pairs: TF-style configs, files, catalog rows (jobs in zooscape.studies.curves)."""

import dataclasses
import itertools
import json
import shutil
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from zooscape.cli import main
from zooscape.connect import evaluate_curve, l2_distance, load_curve
from zooscape.studies.curve_runs import load_curve_config
from zooscape.studies.curves import (
    CurvePairTask,
    curve_pairs,
    curve_records,
    default_pair_config,
    pair_params,
    pair_train_config,
)
from zooscape.zoo import EngineError, LocalEngine, open_zoo, train_zoo
from zooscape.zoo.spec import SpecError

MODEL = """dataset = "digits"
model = "mlp"
model-args = { width = 16, depth = 1 }
"""

CONFIG = f"""
[base-1]
dir = "out/base1"
{MODEL}epochs = 2
optimizer = "adam"
batch-size = 64
lr = 0.01
seed = 1

[base-2]
dir = "out/base2"
{MODEL}epochs = 2
optimizer = "adam"
batch-size = 64
lr = 0.01
seed = 2

[curve-pretrained]
dir = "out/curve"
{MODEL}curve = "PolyChain"
num-bends = 1
epochs = 2
batch-size = 64
lr = 0.05
wd = 0.0005
init-start = "out/base1"
fix-start = true
init-end = "out/base2/model.safetensors"
fix-end = true
init-linear = true

[curve-evaluate]
dir = "out/eval"
{MODEL}curve = "PolyChain"
num-bends = 1
wd = 0.0005
ckpt = "out/curve"
num-points = 9
point-on-curve = 0.25
plane = true
grid-points = 3
"""


def _template():
    from zooscape.models import create_model

    return create_model("mlp", num_classes=10, input_size=[64], width=16, depth=1, seed=0)


def test_config_train_and_eval_via_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(CONFIG)
    assert main(["curve", "train", "c.toml", "--quiet"]) == 0
    assert (tmp_path / "out/base1/model.safetensors").is_file() and (tmp_path / "out/curve/curve.safetensors").is_file()
    history = json.loads((tmp_path / "out/curve/curve_history.json").read_text())["history"]
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.0005])  # Garipov schedule over 2 epochs
    assert main(["curve", "eval", "c.toml", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "polychain curve, 1 bend(s), 9 points" in printed and "test error (%)" in printed

    from zooscape.data import load_dataset

    ds = load_dataset("digits")
    curve, extra = load_curve(tmp_path / "out/curve/curve.safetensors", _template())
    assert curve.kind == "polychain" and extra["train_config"]["weight_decay"] == 0.0005
    base1 = load_file(str(tmp_path / "out/base1/model.safetensors"))
    assert torch.equal(curve.node_state(0)["module_list.0.weight"], base1["module_list.0.weight"])
    stored = json.loads((tmp_path / "out/eval/curve_eval.json").read_text())
    fresh = evaluate_curve(curve, ds, 9, weight_decay=0.0005)
    assert stored["summary"]["mc_error_test"] == pytest.approx(fresh.mc["test"]["error"], abs=1e-9)
    assert stored["curve"]["loss"]["train"] == pytest.approx(fresh.loss["train"].tolist(), abs=1e-6)
    distance = l2_distance(curve.model_at(0.0), curve.model_at(1.0))
    assert stored["line_summary"]["length"] == pytest.approx(distance, rel=1e-6)
    point = load_file(str(tmp_path / "out/eval/point.safetensors"))
    expected = curve.model_at(0.25).state_dict()
    assert all(torch.allclose(point[k], expected[k]) for k in expected if k.endswith("weight"))
    plane = json.loads((tmp_path / "out/eval/plane.json").read_text())
    assert len(plane["loss"]["test"]) == 3 and plane["dx"] > 0
    for name in ("curve_error.png", "curve_loss.png", "plane_test_error.png", "plane_train_loss.png"):
        assert (tmp_path / "out/eval" / name).read_bytes()[:4] == b"\x89PNG"
    # overriding the number of points from the command line
    assert main(["curve", "eval", "c.toml", "curve-evaluate", "--n-points", "5", "--quiet"]) == 0
    assert len(json.loads((tmp_path / "out/eval/curve_eval.json").read_text())["curve"]["ts"]) == 5
    # an evaluation table that names another curve than its checkpoint holds is refused
    other = CONFIG.replace("num-bends = 1\nwd = 0.0005\nckpt", "num-bends = 2\nwd = 0.0005\nckpt")
    assert other != CONFIG
    (tmp_path / "c2.toml").write_text(other)
    assert main(["curve", "eval", "c2.toml", "--quiet"]) == 1
    assert "num-bends" in capsys.readouterr().err


def test_config_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace("num-bends = 1\nepochs", "num_bends = 1\nepochs"))
    with pytest.raises(SpecError, match="num_bends"):
        load_curve_config(bad)
    assert main(["curve", "train", str(bad)]) == 2
    assert "num_bends" in capsys.readouterr().err
    bad.write_text(CONFIG.replace("num-points = 9", "num-points = 9\nresume-epoch = 3"))
    assert main(["curve", "eval", str(bad)]) == 2 and "resume-epoch" in capsys.readouterr().err
    bad.write_text(CONFIG.replace('init-start = "out/base1"\n', ""))
    assert main(["curve", "train", str(bad), "curve-pretrained"]) == 2
    assert "fix-start" in capsys.readouterr().err
    bad.write_text(CONFIG.replace('curve = "PolyChain"\nnum-bends = 1\nepochs', 'curve = "spline"\nepochs'))
    assert main(["curve", "train", str(bad)]) == 2 and "curve" in capsys.readouterr().err
    good = tmp_path / "c.toml"
    good.write_text(CONFIG)
    assert main(["curve", "train", str(good), "curve-pretrained"]) == 1  # endpoints not trained yet
    assert "init-start" in capsys.readouterr().err
    assert main(["curve", "train", str(good), "no-such-table"]) == 1
    assert main(["curve", "eval", str(good), "base-1"]) == 1 and "ckpt" in capsys.readouterr().err
    assert main(["curve", "eval", str(tmp_path / "missing.toml")]) == 1


ZOO = """
[zoo]
name = "curve-pairs"

[dataset]
name = "digits"
seed = 0

[model]
name = "mlp"
width = 16
depth = 1

[training]
epochs = 2
batch_size = 64
optimizer = "adam"
lr = 0.01

[checkpoints]
epochs = "all"

[grid]
"training.seed" = [0, 1, 2]
"""


def test_curve_pairs_over_zoo(tmp_path):
    from zooscape.connect import CurveTrainConfig

    spec = tmp_path / "zoo.toml"
    spec.write_text(ZOO)
    out = tmp_path / "zoo"
    train_zoo(spec, out, device="cpu", progress=False).close()
    cfg = CurveTrainConfig(epochs=1, batch_size=128, lr=0.05)
    rows = curve_pairs(out, train_config=cfg, splits=("test",))
    assert len(rows) == 3 and {r["epoch"] for r in rows} == {2} and {r["cell"] for r in rows} == {0}
    assert all(r["model_id"] < r["other_id"] for r in rows)
    params = pair_params("bezier", 1, cfg, 5, 5, "reset", ("test",))
    with open_zoo(out) as zoo:
        stored = zoo.analyses("curve_mc_error_test")
        assert len(stored) == 3 and stored.params.iloc[0] == params
        assert set(zoo.analyses()["metric"]) >= {"curve_mc_loss_test", "curve_max_error_test", "curve_length"}
        r = rows[0]
        files = list((out / "curves").glob(f"{r['model_id']}-{r['other_id']}-e2-*.safetensors"))
        assert len(files) == 1
        curve, _ = load_curve(files[0], zoo.load_model(r["model_id"], 2))
        fresh = evaluate_curve(curve, zoo.data(), 5, splits=("test",), weight_decay=cfg.weight_decay)
        assert r["curve_mc_error_test"] == pytest.approx(fresh.mc["test"]["error"], abs=1e-9)
        assert r["curve_mc_loss_test"] == pytest.approx(fresh.mc["test"]["loss"], abs=1e-9)
        a, b = zoo.load_model(r["model_id"], 2), zoo.load_model(r["other_id"], 2)
        assert torch.equal(curve.node_state(0)["module_list.0.weight"], a.state_dict()["module_list.0.weight"])
        assert torch.equal(curve.node_state(-1)["module_list.0.weight"], b.state_dict()["module_list.0.weight"])
    # re-running skips stored pairs; --force recomputes and replaces (no duplicates)
    assert curve_pairs(out, train_config=cfg, splits=("test",)) == []
    assert len(curve_pairs(out, train_config=cfg, splits=("test",), force=True)) == 3
    records = curve_records(out, params)
    assert len(records) == 3 and all("curve_mc_error_test" in rec for rec in records)
    with open_zoo(out) as zoo:
        assert len(zoo.analyses("curve_mc_error_test")) == 3
    assert main(["curve", "pairs", str(out), "--epochs", "1", "--epoch", "1", "--splits", "test", "--quiet"]) == 0
    assert len(curve_records(out)) == 6  # epoch 1 added beside epoch 2
    with pytest.raises(FileNotFoundError):
        curve_pairs(tmp_path / "nothing")


# ------------------------------------------------------------------------------- pairs on the zoo's engines

#: The command line's settings with one curve epoch and 3 points (the 5 mc positions are added: 5 evaluated).
FAST_CONFIG = dataclasses.replace(default_pair_config(), epochs=1)
FAST = {"train_config": FAST_CONFIG, "splits": ("test",), "n_points": 3}
FAST_ARGS = ["--epochs", "1", "--n-points", "3", "--splits", "test"]
FAST_PARAMS = pair_params("bezier", 1, FAST_CONFIG, 3, 5, "reset", ("test",))


@pytest.fixture(scope="module")
def seed_zoo(tmp_path_factory):
    """The 3-seed zoo of ZOO (one cell, 3 pairs), trained once; tests work on copies."""
    root = tmp_path_factory.mktemp("seeds")
    (root / "zoo.toml").write_text(ZOO)
    train_zoo(root / "zoo.toml", root / "zoo", device="cpu", progress=False).close()
    return root / "zoo"


def _copies_and_reference(seed_zoo, tmp_path):
    """Two copies of the zoo; the in-process records of the first (the reference)."""
    ref_dir, other = tmp_path / "reference", tmp_path / "zoo"
    shutil.copytree(seed_zoo, ref_dir)
    shutil.copytree(seed_zoo, other)
    return ref_dir, other, curve_pairs(ref_dir, **FAST)


def _curve_files(zoo_dir):
    """``{file name: (tensors, metadata)}`` of the stored curves (bytes differ: safetensors orders its header
    metadata by hash)."""
    from safetensors import safe_open

    out = {}
    for f in sorted((zoo_dir / "curves").glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            out[f.name] = ({k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata())
    return out


def _assert_same_curves(got, ref, atol=0.0):
    """Same files, metadata and tensors (bitwise, or within ``atol`` where one side trained the curve alone and
    the other as a member of its cell's population)."""
    assert got.keys() == ref.keys() and len(ref) > 0
    for name, (tensors, meta) in ref.items():
        assert got[name][1] == meta
        assert got[name][0].keys() == tensors.keys()
        same = torch.equal if atol == 0 else (lambda a, b: torch.allclose(a, b, rtol=0, atol=atol))
        assert all(same(got[name][0][k], v) for k, v in tensors.items()), name


def _assert_close_records(got, ref):
    """Same pairs, keys and settings; float values within 1e-5 relative (pairs trained alone or in populations)."""
    assert len(got) == len(ref) > 0
    for g, r in zip(got, ref):
        assert g.keys() == r.keys()
        for k, v in r.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
            else:
                assert g[k] == v, k


def test_cell_tasks_train_curves_as_a_population_equal_to_the_per_pair_reference(seed_zoo, tmp_path):
    ref_dir, cell_dir = tmp_path / "per-pair", tmp_path / "cells"
    shutil.copytree(seed_zoo, ref_dir)
    shutil.copytree(seed_zoo, cell_dir)
    ref = curve_pairs(ref_dir, **FAST, per_pair=True)
    with mock.patch("zooscape.connect.curve_train.train_curve", side_effect=AssertionError("trained one by one")):
        got = curve_pairs(cell_dir, **FAST)  # one cell task: its 3 curves trained as one population
    assert len(got) == len(ref) == 3
    _assert_close_records(got, ref)
    _assert_same_curves(_curve_files(cell_dir), _curve_files(ref_dir), atol=1e-6)


def test_pair_task_settings_round_trip():
    task = CurvePairTask("zoo", "a", "b", 2, 0, FAST_PARAMS)
    assert pair_train_config(task.params) == FAST_CONFIG
    assert pair_params("bezier", 1, pair_train_config(FAST_PARAMS), 3, 5, "reset", ("test",)) == FAST_PARAMS


@pytest.mark.slow
def test_curve_pairs_in_worker_processes_equal_in_process(seed_zoo, tmp_path):
    ref_dir, par_dir, ref = _copies_and_reference(seed_zoo, tmp_path)
    messages = []
    got = curve_pairs(par_dir, **FAST, workers=2, progress=messages.append)
    with open_zoo(seed_zoo) as zoo:
        ids = sorted(zoo.model_ids)
    # same values to the bit (seeded, one torch thread each), returned in cell and pair order
    assert [(r["model_id"], r["other_id"]) for r in ref] == list(itertools.combinations(ids, 2))
    assert got == ref
    assert curve_records(par_dir, FAST_PARAMS) == curve_records(ref_dir, FAST_PARAMS)
    _assert_same_curves(_curve_files(par_dir), _curve_files(ref_dir))
    assert sum(m.startswith("[") and "mc test error" in m for m in messages) == 3
    assert not list(par_dir.rglob(".*.tmp"))


class StopAfter:
    """An engine that runs tasks in-process and fails (like a lost worker) after ``n`` results."""

    def __init__(self, n):
        self.n = n
        self.tasks = []

    def map(self, fn, tasks, on_event=None, ordered=True):
        self.tasks = list(tasks)
        for i, result in enumerate(LocalEngine(workers=1).map(fn, tasks, on_event=on_event, ordered=ordered)):
            if i == self.n:
                raise EngineError("worker died")
            yield result


@pytest.mark.slow
def test_interrupted_curve_pairs_resume_in_workers_from_the_cli(seed_zoo, tmp_path, capsys):
    ref_dir, out, ref = _copies_and_reference(seed_zoo, tmp_path)
    stop = StopAfter(1)
    with pytest.raises(EngineError, match="worker died"):
        curve_pairs(out, **FAST, engine=stop, per_pair=True)  # the per-pair reference: one task per pair
    assert len(stop.tasks) == 3 and all(isinstance(t, CurvePairTask) for t in stop.tasks)
    first = curve_records(out, FAST_PARAMS)
    assert len(first) == 1 and len(list((out / "curves").glob("*.safetensors"))) == 1  # committed as it came
    # the command line resumes: only the two missing pairs run, in two worker processes
    assert main(["curve", "pairs", str(out), *FAST_ARGS, "--workers", "2"]) == 0
    printed = capsys.readouterr()
    assert "1 pair(s) already stored with these settings, skipped" in printed.err
    assert "2 pair(s) computed now, 3 stored with these settings" in printed.out
    # the first pair was trained alone (per pair), the others in a population of two; the reference's three in one
    # population of three: equal to float tolerance
    _assert_close_records(curve_records(out, FAST_PARAMS), curve_records(ref_dir, FAST_PARAMS))
    _assert_close_records([{k: v for k, v in r.items() if k != "params"} for r in curve_records(out, FAST_PARAMS)],
                          ref)
    _assert_same_curves(_curve_files(out), _curve_files(ref_dir), atol=1e-6)
    with open_zoo(out) as zoo:
        assert len(zoo.analyses("curve_mc_error_test")) == 3  # nothing stored twice
    # nothing left: no task runs; Ray options need --engine ray
    assert main(["curve", "pairs", str(out), *FAST_ARGS, "--workers", "2", "--quiet"]) == 0
    assert "0 pair(s) computed now, 3 stored" in capsys.readouterr().out
    assert main(["curve", "pairs", str(out), *FAST_ARGS, "--cpus-per-task", "2"]) == 1
    assert "--cpus-per-task only apply with --engine ray" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers"):
        curve_pairs(out, **FAST, engine="ray", workers=2)
