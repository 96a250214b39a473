"""zooscape lmc spawn / pairs / plot: specs, catalog rows, checkpoints, plots (jobs in zooscape.studies.lmc)."""

import json

import pytest
import torch

from zooscape.cli import main
from zooscape.connect import linear_path
from zooscape.studies.lmc import load_spawn_spec, pair_barriers, spawn_records
from zooscape.zoo import open_zoo, train_zoo
from zooscape.zoo.spec import SpecError

BASE = """
[zoo]
name = "lmc-test"

[dataset]
name = "digits"
seed = 0

[model]
name = "mlp"
width = 32
depth = 2
activation = "relu"

[training]
epochs = 3
batch_size = 32
optimizer = "adam"
lr = 0.02
seed = 0
"""

SPAWN = BASE + """
[lmc]
k1s = [0, 1]
k2s = "end"
replicates = 1
n_points = 5
splits = ["train", "test"]
"""


def _write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_spawn_cli_writes_catalog_checkpoints_and_plot(tmp_path, capsys):
    spec = _write(tmp_path, SPAWN)
    out = tmp_path / "run"
    assert main(["lmc", "spawn", str(spec), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "2 records written" in printed and "k2\\k1" in printed

    records = spawn_records(out)
    assert sorted((r["k1"], r["k2"]) for r in records) == [(0, 3), (1, 3)]
    main_id = records[0]["main_id"]
    with open_zoo(out) as zoo:
        ids = zoo.model_ids
        assert sorted(ids) == sorted([main_id, f"{main_id}-k0-r0", f"{main_id}-k1-r0"])
        assert zoo.catalog.statuses() == {m: "done" for m in ids}
        # main branch checkpoints: weights at k1s and k2s, optimizer state at k1s; children at the end
        assert zoo.epochs(main_id, "weights") == [0, 1, 3]
        assert zoo.epochs(main_id, "optimizer") == [0, 1]
        optim = zoo.optimizer_state(main_id, 1)
        assert any(k.endswith(".exp_avg") for k in optim) and float(optim["step"][0]) > 0
        assert float(zoo.optimizer_state(main_id, 0)["step"][0]) == 0
        child = f"{main_id}-k1-r0"
        assert zoo.epochs(child) == [3]
        assert zoo.config(child)["derived"]["lmc"] == {"role": "child", "parent": main_id, "k1": 1, "replicate": 0}
        # stored barriers agree with a fresh evaluation of the stored checkpoints
        a, b = zoo.load_model(main_id, 3), zoo.load_model(child, 3)
        path = linear_path(a, b, zoo.data(main_id), n_points=5)
        rec = next(r for r in records if r["k1"] == 1)
        assert rec["barrier_loss_test_linear"] == pytest.approx(path.barrier("test", "loss"), abs=1e-5)
        assert rec["distance"] == pytest.approx(path.distance, rel=1e-5)
        metrics = zoo.metrics()
        assert set(metrics[metrics.model_id == child].epoch) == {2, 3}
        assert set(metrics[metrics.model_id == main_id].epoch) == {0, 1, 2, 3}
    payload = json.loads((out / "lmc" / f"{main_id}.json").read_text())
    assert len(payload["paths"]) == 2 and len(payload["paths"][0]["alphas"]) == 5
    assert (out / "lmc" / f"{main_id}_instability.png").stat().st_size > 0

    # re-running skips the finished main branch; plot redraws from the catalog
    assert main(["lmc", "spawn", str(spec), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert len(spawn_records(out)) == 2
    png = tmp_path / "inst.png"
    assert main(["lmc", "plot", str(out), "--metric", "loss", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_spawn_spec_errors(tmp_path, capsys):
    bad = _write(tmp_path, SPAWN.replace("replicates = 1", "replicas = 1"))
    with pytest.raises(SpecError, match="replicas"):
        load_spawn_spec(bad)
    assert main(["lmc", "spawn", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "replicas" in capsys.readouterr().err
    late = _write(tmp_path, SPAWN.replace("k1s = [0, 1]", "k1s = [0, 3]"), "late.toml")
    assert main(["lmc", "spawn", str(late), "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y" / "catalog.sqlite").exists()
    assert main(["lmc", "spawn", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "z")]) == 1
    spec = load_spawn_spec(_write(tmp_path, BASE, "defaults.toml"))
    assert spec.lmc["k2s"] == "all" and spec.lmc["n_points"] == 25


def test_pair_barriers_over_zoo(tmp_path):
    text = BASE.replace("epochs = 3", "epochs = 2") + """
[checkpoints]
epochs = "all"

[grid]
"training.lr" = [0.01, 0.02]
"training.seed" = [0, 1, 2]
"""
    spec = _write(tmp_path, text)
    out = tmp_path / "zoo"
    train_zoo(spec, out, device="cpu", progress=False).close()
    rows = pair_barriers(out, epoch=1, n_points=3, splits=("test",))
    assert len(rows) == 2 * 3  # two cells (learning rates), three seed pairs each
    assert {r["epoch"] for r in rows} == {1}
    with open_zoo(out) as zoo:
        lrs = {r["cell"]: {zoo.config(m)["training"]["lr"] for m in (r["model_id"], r["other_id"])} for r in rows}
        assert all(len(v) == 1 for v in lrs.values()) and len(lrs) == 2
        stored = zoo.analyses("barrier_error_test_linear")
        assert len(stored) == 6 and set(stored.epoch) == {1}
        r = rows[0]
        path = linear_path(zoo.load_model(r["model_id"], 1), zoo.load_model(r["other_id"], 1), zoo.data(),
                           n_points=3, splits=("test",))
        assert r["barrier_loss_test_mean"] == pytest.approx(path.barrier("test", "loss", "mean"), abs=1e-6)
    # re-running replaces rather than duplicates
    pair_barriers(out, epoch=1, n_points=3, splits=("test",))
    with open_zoo(out) as zoo:
        assert len(zoo.analyses("distance")) == 6
    assert main(["lmc", "pairs", str(out), "--epoch", "2", "--n-points", "3", "--splits", "test", "--quiet"]) == 0
    with pytest.raises(FileNotFoundError):
        pair_barriers(tmp_path / "nothing")
    assert torch.isfinite(torch.tensor([r["distance"] for r in rows])).all()


def test_cell_tasks_equal_the_per_pair_reference_with_batchnorm_and_resume(tmp_path):
    """`lmc pairs` evaluates a cell's pairs together (population members); same rows as one task per pair."""
    from zooscape.studies.lmc_pairs import LmcCellTask, pair_params, pair_records
    from zooscape.zoo.engines import LocalEngine

    text = BASE.replace("epochs = 3", "epochs = 1").replace('activation = "relu"', 'activation = "relu"\nnorm = "bn"')
    text += '\n[grid]\n"training.seed" = [0, 1, 2]\n'
    out = tmp_path / "zoo"
    train_zoo(_write(tmp_path, text), out, device="cpu", progress=False).close()
    kw = dict(n_points=5, align="weight", renorm="reset_bn", splits=("train", "test"))
    ref = pair_barriers(out, per_pair=True, **kw)
    seen = []

    class Recording(LocalEngine):
        def map(self, fn, tasks, **k):
            seen.extend(tasks)
            return super().map(fn, tasks, **k)

    got = pair_barriers(out, force=True, engine=Recording(workers=1), **kw)
    assert len(seen) == 1 and isinstance(seen[0], LmcCellTask) and len(seen[0].pairs) == 3
    assert [(r["model_id"], r["other_id"]) for r in got] == [(r["model_id"], r["other_id"]) for r in ref]
    for g, r in zip(got, ref):
        assert g.keys() == r.keys()
        for k, v in r.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # BatchNorm re-estimation changed the barriers (the comparison above is not trivially equal)
    assert any(abs(r["barrier_loss_train_linear"] - r["aligned_barrier_loss_train_linear"]) > 1e-4 for r in got)
    # resume: delete nothing, run again in two worker processes -> nothing to do; rows not duplicated
    seen.clear()
    pair_barriers(out, engine=Recording(workers=2), **kw)
    assert seen == []
    params = pair_params(5, ("train", "test"), "weight", "reset_bn")
    assert len(pair_records(out, params)) == 3
    # the permutation files were written for every pair
    assert len(list((out / "lmc" / "perms").glob("*.safetensors"))) == 3
    # an interrupted per-pair run resumes as one cell task holding only the missing pairs
    from zooscape.zoo.engines import EngineError

    class StopAfterOne(LocalEngine):
        def map(self, fn, tasks, **k):
            for i, result in enumerate(super().map(fn, tasks, **k)):
                if i == 1:
                    raise EngineError("worker died")
                yield result

    kw3 = dict(kw, n_points=3)
    with pytest.raises(EngineError):
        pair_barriers(out, per_pair=True, engine=StopAfterOne(workers=1), **kw3)
    assert len(pair_records(out, pair_params(3, ("train", "test"), "weight", "reset_bn"))) == 1
    rows = pair_barriers(out, engine=Recording(workers=1), **kw3)
    assert len(seen) == 1 and len(seen[0].pairs) == 2 and len(rows) == 3
    # the command line keeps the per-pair reference
    seen.clear()
    assert main(["lmc", "pairs", str(out), "--n-points", "3", "--align", "weight", "--renorm", "reset_bn",
                 "--per-pair", "--force", "--quiet"]) == 0
    again = pair_records(out, pair_params(3, ("train", "test"), "weight", "reset_bn"))
    assert len(again) == 3
    for g, r in zip(again, rows):
        assert g["barrier_loss_test_linear"] == pytest.approx(r["barrier_loss_test_linear"], rel=1e-5, abs=1e-6)
