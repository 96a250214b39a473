"""``metrics run`` computes Hessian and Fisher as populations: same rows as the per-model path, resumable."""

import sqlite3

import pytest

import zooscape.zoo as zz
from zooscape.cli import main
from zooscape.studies.metrics import metric_params, plan_metric_tasks, run_metric_task, run_metrics
from zooscape.zoo import train_zoo

MLP_SPEC = """
[zoo]
name = "popmetrics"
[dataset]
name = "digits"
seed = 42
[model]
name = "mlp"
width = 10
depth = 1
[training]
epochs = 1
batch_size = 64
optimizer = "adam"
lr = 0.01
[grid]
"model.norm" = ["none", "bn"]
"training.seed" = [0, 1, 2]
"""

CNN_SPEC = """
[zoo]
name = "popcnn"
[dataset]
name = "mnist5k"
seed = 1
[model]
name = "cnn_s"
[training]
epochs = 1
batch_size = 256
optimizer = "adam"
lr = 0.003
[grid]
"training.seed" = [0, 1, 2]
"""

FAST = {"hessian": {"n_samples": 48, "num_steps": 6, "num_probes": 9, "block_size": 4, "top_k": 2},
        "fisher": {"n_samples": 40, "num_samples": 12, "batch_size": 16}}


def _zoo(tmp_path_factory, name, spec):
    tmp = tmp_path_factory.mktemp(name)
    (tmp / "spec.toml").write_text(spec)
    train_zoo(tmp / "spec.toml", tmp / "zoo", device="cpu", progress=False).close()
    return tmp / "zoo"


@pytest.fixture(scope="module")
def mlp_zoo(tmp_path_factory):
    return _zoo(tmp_path_factory, "popmlp", MLP_SPEC)


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory):
    return _zoo(tmp_path_factory, "popcnn", CNN_SPEC)


def _values(zoo_dir, metric, chunk_size):
    settings = metric_params(metric, FAST[metric])
    with zz.open(zoo_dir) as zoo:
        plan = plan_metric_tasks(zoo, metric, settings, device="cpu", chunk_size=chunk_size)
    out = {}
    for task in plan.tasks:
        for row in run_metric_task(task)["rows"]:
            out[(row["model_id"], row["metric"])] = row["value"]
    return plan, out


def test_tasks_hold_one_architecture_and_chunk_size_models(mlp_zoo):
    settings = metric_params("hessian", FAST["hessian"])
    with zz.open(mlp_zoo) as zoo:
        plan = plan_metric_tasks(zoo, "hessian", settings, chunk_size=2)
        norms = {m: zoo.config(m)["model"]["norm"] for m in zoo.model_ids}
        per_model = plan_metric_tasks(zoo, "hessian", settings, chunk_size=0)
    assert sorted(len(t.model_ids) for t in plan.tasks) == [1, 1, 2, 2]
    assert all(t.population and len({norms[m] for m in t.model_ids}) == 1 for t in plan.tasks)
    assert sorted(m for t in plan.tasks for m in t.model_ids) == sorted(norms)
    assert len(per_model.tasks) == 6 and not any(t.population for t in per_model.tasks)
    with pytest.raises(ValueError, match="chunk_size"):
        with zz.open(mlp_zoo) as zoo:
            plan_metric_tasks(zoo, "hessian", settings, chunk_size=-1)


@pytest.mark.parametrize("metric", ["hessian", "fisher"])
def test_population_rows_equal_the_per_model_path(mlp_zoo, cnn_zoo, metric):
    """BatchNorm MLPs (two architectures in one zoo) and CNN-s: every row equals the per-model reference."""
    for zoo_dir in (mlp_zoo, cnn_zoo):
        plan, pop = _values(zoo_dir, metric, 4)
        assert any(len(t.model_ids) > 1 for t in plan.tasks)
        _, ref = _values(zoo_dir, metric, 0)
        assert pop.keys() == ref.keys() and len(ref) >= 6
        for key, value in ref.items():
            assert pop[key] == pytest.approx(value, rel=2e-4, abs=1e-7), key


def test_resume_skips_stored_models_whichever_path_stored_them(mlp_zoo):
    params = FAST["fisher"]
    first = run_metrics(mlp_zoo, "fisher", params=params, device="cpu", chunk_size=0)  # the per-model path
    assert len({r["model_id"] for r in first}) == 6
    assert run_metrics(mlp_zoo, "fisher", params=params, device="cpu") == []  # the population path: all stored
    with sqlite3.connect(mlp_zoo / "catalog.sqlite") as con:
        gone = [r[0] for r in con.execute("SELECT DISTINCT model_id FROM analyses WHERE metric = 'fisher_trace' "
                                          "ORDER BY model_id LIMIT 2")]
        con.execute(f"DELETE FROM analyses WHERE metric LIKE 'fisher%' AND model_id IN ({','.join('?' * 2)})",
                    gone)
    again = run_metrics(mlp_zoo, "fisher", params=params, device="cpu", chunk_size=4)
    assert {r["model_id"] for r in again} == set(gone)
    old = {(r["model_id"], r["metric"]): r["value"] for r in first}
    for r in again:
        assert r["value"] == pytest.approx(old[(r["model_id"], r["metric"])], rel=2e-4)


def test_cli_chunk_size(mlp_zoo, capsys):
    args = ["metrics", "run", str(mlp_zoo), "--metric", "hessian", "--quiet", "--device", "cpu",
            "--set", "n_samples=32", "--set", "num_steps=4", "--set", "num_probes=6", "--set", "block_size=3"]
    assert main([*args, "--chunk-size", "3"]) == 0
    assert "30 rows stored" in capsys.readouterr().out  # 6 models x 5 rows
    assert main([*args, "--chunk-size", "0"]) == 0  # resumed: nothing left
    assert "0 rows stored" in capsys.readouterr().out
    assert main([*args, "--chunk-size", "-1"]) == 1
    assert "--chunk-size must be >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_population_tasks_in_worker_processes(mlp_zoo):
    params = {**FAST["hessian"], "seed": 7}
    rows = run_metrics(mlp_zoo, "hessian", params=params, device="cpu", workers=2, chunk_size=2)
    assert len({r["model_id"] for r in rows}) == 6
    with sqlite3.connect(mlp_zoo / "catalog.sqlite") as con:
        con.execute("DELETE FROM analyses WHERE params LIKE '%\"seed\": 7%'")
    local = run_metrics(mlp_zoo, "hessian", params=params, device="cpu", chunk_size=2)
    a = {(r["model_id"], r["metric"]): r["value"] for r in rows}
    b = {(r["model_id"], r["metric"]): r["value"] for r in local}
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert v == pytest.approx(b[k], rel=1e-9)


def test_auto_chunks_by_memory_and_workers(mlp_zoo):
    """``chunk_size="auto"`` (the default): one Hessian task per architecture (or per worker), split into
    populations that fit the memory budget inside the task -- the rows do not change."""
    from zooscape.studies.metrics import DEFAULT_CHUNK_SIZE, compute_population_metric

    assert DEFAULT_CHUNK_SIZE == "auto"
    settings = metric_params("hessian", FAST["hessian"])
    with zz.open(mlp_zoo) as zoo:
        plan = plan_metric_tasks(zoo, "hessian", settings, device="cpu")
        two = plan_metric_tasks(zoo, "hessian", settings, device="cpu", workers=2)
        fisher = plan_metric_tasks(zoo, "fisher", metric_params("fisher", FAST["fisher"]), device="cpu")
        task = plan.tasks[0]
        models = [zoo.load_model(m, task.epoch, device="cpu") for m in task.model_ids]
        data = zoo.data(task.model_ids[0])
    assert sorted(len(t.model_ids) for t in plan.tasks) == [3, 3]  # two architectures (norm none / bn)
    assert all(t.memory_budget for t in plan.tasks)
    assert sorted(len(t.model_ids) for t in two.tasks) == [1, 1, 2, 2]
    assert all(t.memory_budget is None and len(t.model_ids) <= 4 for t in fisher.tasks)
    whole = compute_population_metric("hessian", models, data, settings, device="cpu")
    split = compute_population_metric("hessian", models, data, settings, device="cpu", memory_budget=1)
    assert len(whole) == len(split) == 3
    for a, b in zip(whole, split):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k


def test_auto_runs_convolutional_networks_through_the_plain_population(cnn_zoo, monkeypatch):
    """CNN-s has a plain population form (landscape.population_plain): ``auto`` computes it as populations, equal to
    the per-model path; a convolutional network without one takes the per-model path (bit-identical)."""
    import zooscape.landscape.population_plain as plain

    settings = metric_params("hessian", FAST["hessian"])
    with zz.open(cnn_zoo) as zoo:
        plan = plan_metric_tasks(zoo, "hessian", settings, device="cpu")
    assert len(plan.tasks) == 1 and plan.tasks[0].memory_budget
    _, ref = _values(cnn_zoo, "hessian", 0)
    built = []
    monkeypatch.setattr(plain, "plain_population_net", lambda *a, _f=plain.plain_population_net: built.append(1)
                        or _f(*a))
    got = {(r["model_id"], r["metric"]): r["value"] for r in run_metric_task(plan.tasks[0])["rows"]}
    assert built and got.keys() == ref.keys()
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-3, abs=1e-5), k
    monkeypatch.setattr(plain, "has_plain_form", lambda model: False)
    got = {(r["model_id"], r["metric"]): r["value"] for r in run_metric_task(plan.tasks[0])["rows"]}
    assert got == ref  # bit-identical: the same per-model computation


def test_hessian_density_rows_population_equal_per_model(mlp_zoo):
    """--set density_steps=K adds SLQ summaries; the population path gives the per-model path's values."""
    settings = metric_params("hessian", {**FAST["hessian"], "density_steps": 8, "density_probes": 2})
    rows = {}
    for chunk in (4, 0):
        with zz.open(mlp_zoo) as zoo:
            plan = plan_metric_tasks(zoo, "hessian", settings, device="cpu", chunk_size=chunk)
        rows[chunk] = {(r["model_id"], r["metric"]): r["value"] for t in plan.tasks for r in run_metric_task(t)["rows"]}
    keys = {k for k in rows[0] if k[1].startswith("hessian_density") or k[1] == "hessian_negative_mass"}
    assert len(keys) == 6 * 4 and keys <= rows[4].keys()
    for key in keys:
        assert rows[4][key] == pytest.approx(rows[0][key], rel=2e-4, abs=1e-6), key
    for (mid, name), value in rows[0].items():
        if name == "hessian_negative_mass":
            assert 0.0 <= value <= 1.0
        if name == "hessian_density_max":  # Ritz values lie inside the spectrum: positive curvature on top
            assert rows[0][(mid, "hessian_density_min")] < value and value > 0
    with pytest.raises(ValueError, match="density_steps"):
        metric_params("hessian", {"density_steps": -1})
    with pytest.raises(ValueError, match="density_probes"):
        metric_params("hessian", {"density_probes": 0})
