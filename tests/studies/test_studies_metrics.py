"""Landscape metrics as zoo analyses: values match the library, settings are stored, runs resume, CLI works."""

import math
import sqlite3
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zooscape.zoo as zz
from zooscape import landscape as ls
from zooscape.cli import main
from zooscape.studies.cells import cell_key
from zooscape.studies.metrics import DEFAULTS, metric_params, run_metrics
from zooscape.zoo import train_zoo

SPEC = """
[zoo]
name = "metrics"

[dataset]
name = "digits"
seed = 42

[model]
name = "mlp"
width = 12
depth = 1

[training]
epochs = 1
batch_size = 64
optimizer = "adam"
lr = 0.001

[checkpoints]
epochs = "all"

[grid]
"training.seed" = [0, 1, 2]
"training.lr" = [0.001, 0.01]
"""

FAST_HESSIAN = {"n_samples": 64, "num_steps": 6, "num_probes": 6, "block_size": 3}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    spec = tmp / "spec.toml"
    spec.write_text(SPEC)
    train_zoo(spec, tmp / "zoo", device="cpu", progress=False)
    return tmp / "zoo"


def _count(zoo_dir: Path, metric: str) -> int:
    with sqlite3.connect(zoo_dir / "catalog.sqlite") as con:
        return con.execute("SELECT COUNT(*) FROM analyses WHERE metric = ?", (metric,)).fetchone()[0]


def test_hessian_rows_match_the_library_and_store_settings(zoo_dir):
    rows = run_metrics(zoo_dir, "hessian", params=FAST_HESSIAN)
    settings = metric_params("hessian", FAST_HESSIAN)
    tops = [r for r in rows if r["metric"] == "hessian_top_eigenvalue"]
    assert len(tops) == 6 and all(r["epoch"] == 1 and r["other_id"] is None for r in tops)
    with zz.open(zoo_dir) as zoo:
        stored = zoo.analyses("hessian_top_eigenvalue")
        assert len(stored) == 6
        assert all(p == {"analysis": "hessian", **settings} for p in stored["params"])
        # independent recomputation through the public library API on the same seeded subset
        mid = tops[0]["model_id"]
        model = zoo.load_model(mid, 1)
        x, y = zoo.data(mid).split("train")
        idx = torch.sort(torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:64]).values
        op = ls.hessian_operator(model, F.cross_entropy, x[idx], y[idx])
        expected = ls.top_eigenvalues(op, num_steps=6, seed=0).eigenvalues[0]
        assert tops[0]["value"] == pytest.approx(float(expected), rel=1e-5)
        exact = torch.linalg.eigvalsh(ls.dense_matrix(op))[-1]
        assert tops[0]["value"] == pytest.approx(float(exact), rel=0.05)


def test_rerun_resumes_and_other_settings_add_rows(zoo_dir):
    run_metrics(zoo_dir, "hessian", params=FAST_HESSIAN)  # idempotent with the first test's rows
    before = _count(zoo_dir, "hessian_top_eigenvalue")
    assert run_metrics(zoo_dir, "hessian", params=FAST_HESSIAN) == []
    assert _count(zoo_dir, "hessian_top_eigenvalue") == before
    # simulate an interrupted run: one model's rows are missing -> only that model is computed again
    with sqlite3.connect(zoo_dir / "catalog.sqlite") as con:
        mid = con.execute("SELECT model_id FROM analyses WHERE metric = 'hessian_top_eigenvalue'").fetchone()[0]
        con.execute("DELETE FROM analyses WHERE model_id = ? AND metric LIKE 'hessian%'", (mid,))
    again = run_metrics(zoo_dir, "hessian", params=FAST_HESSIAN)
    assert {r["model_id"] for r in again} == {mid}
    assert _count(zoo_dir, "hessian_top_eigenvalue") == before
    other = run_metrics(zoo_dir, "hessian", params={**FAST_HESSIAN, "seed": 1}, model_ids=[mid])
    assert len([r for r in other if r["metric"] == "hessian_top_eigenvalue"]) == 1
    assert _count(zoo_dir, "hessian_top_eigenvalue") == before + 1


def test_cka_covers_every_seed_pair_within_cells(zoo_dir):
    rows = run_metrics(zoo_dir, "cka", params={"n_samples": 128})
    assert len(rows) == 6  # 2 cells x 3 pairs
    with zz.open(zoo_dir) as zoo:
        for r in rows:
            assert r["other_id"] is not None and r["model_id"] != r["other_id"]
            assert cell_key(zoo.config(r["model_id"])) == cell_key(zoo.config(r["other_id"]))
            assert 0.0 < r["value"] <= 1.0
        r = rows[0]
        x, _ = zoo.data(r["model_id"]).split("test")
        idx = torch.sort(torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:128]).values
        with torch.no_grad():
            a = zoo.load_model(r["model_id"], 1)(x[idx])
            b = zoo.load_model(r["other_id"], 1)(x[idx])
        assert r["value"] == pytest.approx(float(ls.cka(a, b)), rel=1e-9)
    mb = run_metrics(zoo_dir, "cka", params={"n_samples": 128, "batch_size": 32, "layer": "module_list.0"})
    assert len(mb) == 6 and all(math.isfinite(r["value"]) for r in mb)


def test_cka_plans_one_task_per_cell_and_only_missing_pairs(zoo_dir):
    """Each model's representation is computed once per cell; a resumed run asks only for the missing pairs."""
    from zooscape.studies.metrics import plan_metric_tasks

    settings = metric_params("cka", {"n_samples": 64, "data_seed": 7})
    with zz.open(zoo_dir) as zoo:
        plan = plan_metric_tasks(zoo, "cka", settings)
    assert len(plan.tasks) == 2 and not plan.done  # 2 cells, 3 pairs each
    assert all(len(t.pairs) == 3 and len(t.model_ids) == 3 for t in plan.tasks)
    first = plan.tasks[0]
    from zooscape.zoo.catalog import Catalog

    a, b = first.pairs[0]  # store one pair of the first cell as a finished run would
    with Catalog(zoo_dir / "catalog.sqlite") as catalog:
        catalog.add_analyses([{"model_id": a, "other_id": b, "epoch": first.epoch, "metric": "cka", "value": 0.5,
                               "params": {"analysis": "cka", **settings}}])
    with zz.open(zoo_dir) as zoo:
        again = plan_metric_tasks(zoo, "cka", settings)
    assert len(again.done) == 1 and sorted(len(t.pairs) for t in again.tasks) == [2, 3]


def test_fisher_and_spectra(zoo_dir):
    fisher = run_metrics(zoo_dir, "fisher", params={"n_samples": 32, "kind": "exact"})
    traces = [r for r in fisher if r["metric"] == "fisher_trace"]
    assert len(traces) == 6 and all(r["value"] > 0 for r in traces)
    assert [r["value"] for r in fisher if r["metric"] == "fisher_trace_se"] == [0.0] * 6  # exact: no sampling
    sampled = run_metrics(zoo_dir, "fisher", params={"n_samples": 32, "num_samples": 2},
                          model_ids=[traces[0]["model_id"]])
    se = next(r["value"] for r in sampled if r["metric"] == "fisher_trace_se")
    assert 0 < se < next(r["value"] for r in sampled if r["metric"] == "fisher_trace")
    spectra = run_metrics(zoo_dir, "spectra", params={"min_evals": 1})
    names = {r["metric"] for r in spectra}
    assert {"spectra_alpha", "spectra_log_norm", "spectra_stable_rank"} <= names
    assert any(n.startswith("spectra_alpha/") for n in names)


def test_errors(zoo_dir, tmp_path):
    with pytest.raises(ValueError, match="metric must be one of"):
        metric_params("sharpness")
    with pytest.raises(ValueError, match="'n_probes'"):
        metric_params("hessian", {"n_probes": 3})
    with pytest.raises(ValueError, match="'split'"):
        metric_params("cka", {"split": "holdout"})
    with pytest.raises(ValueError, match="'num_steps'"):
        metric_params("hessian", {"num_steps": 0})
    with pytest.raises(FileNotFoundError):
        run_metrics(tmp_path, "spectra")
    with pytest.raises(ValueError, match="epoch 7"):
        run_metrics(zoo_dir, "spectra", epoch=7)
    with pytest.raises(KeyError, match="nope"):
        run_metrics(zoo_dir, "spectra", model_ids=["nope"])
    assert set(DEFAULTS) == {"hessian", "fisher", "spectra", "cka"}


def test_cli_run_and_settings(zoo_dir, capsys):
    code = main(["metrics", "run", str(zoo_dir), "--metric", "hessian", "--epoch", "0", "--quiet",
                 "--set", "n_samples=64", "--set", "num_steps=5", "--set", "num_probes=6", "--set", "block_size=2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "6 new results" in out and "hessian_top_eigenvalue per grid cell" in out and "training.lr" in out
    assert main(["metrics", "settings", "cka"]) == 0
    assert "kernel = \"linear\"" in capsys.readouterr().out
    assert main(["metrics", "run", str(zoo_dir), "--metric", "fisher", "--set", "kind=true_fisher"]) == 1
    assert "kind" in capsys.readouterr().err
    assert main(["metrics", "run", str(zoo_dir), "--metric", "fisher", "--set", "novalue"]) == 1
    capsys.readouterr()
    assert main(["metrics", "run", str(zoo_dir), "--metric", "spectra", "--address", "auto"]) == 1
    assert "--address only apply with --engine ray" in capsys.readouterr().err


class RecordingEngine:
    """An Engine (the training interface) that records what it is asked to run, then runs it in-process."""

    def __init__(self):
        self.calls = []

    def map(self, fn, tasks, on_event=None, ordered=True):
        self.calls.append((fn.__name__, list(tasks)))
        return zz.LocalEngine(workers=1).map(fn, tasks, on_event=on_event, ordered=ordered)


@pytest.mark.slow
def test_runs_on_the_engine_interface_and_worker_processes_agree(zoo_dir):
    engine = RecordingEngine()
    rows = run_metrics(zoo_dir, "spectra", params={"min_evals": 2}, engine=engine)
    assert [name for name, _ in engine.calls] == ["run_metric_task"]
    assert len(engine.calls[0][1]) == 6 and {t.metric for t in engine.calls[0][1]} == {"spectra"}
    with sqlite3.connect(zoo_dir / "catalog.sqlite") as con:  # drop them again and recompute in 2 processes
        con.execute("DELETE FROM analyses WHERE params LIKE '%\"min_evals\": 2%'")
    parallel = run_metrics(zoo_dir, "spectra", params={"min_evals": 2}, workers=2)
    key = lambda r: (r["model_id"], r["metric"])  # noqa: E731
    a = {key(r): r["value"] for r in rows}
    b = {key(r): r["value"] for r in parallel}
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert (math.isnan(v) and math.isnan(b[k])) or v == pytest.approx(b[k], rel=1e-9)
