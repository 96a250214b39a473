"""Re-basin over a zoo: lmc pairs with alignment and renormalisation, stored permutations, spawn stores."""

import pytest
import torch
from studies_specs import mlp_digits_spec

from zooscape.align import Permutation, apply_permutation, permutation_spec, weight_matching
from zooscape.cli import main
from zooscape.studies.lmc_pairs import load_permutation, pair_barriers, pair_params, permutation_path
from zooscape.zoo import open_zoo, train_zoo

SPEC = mlp_digits_spec("rebasin-test", 8)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rebasin")
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    train_zoo(spec, root / "zoo", device="cpu", progress=False).close()
    return root / "zoo"


def test_weight_matching_and_repair_shrink_the_barrier(zoo_dir):
    (naive,) = pair_barriers(zoo_dir, n_points=9, splits=("train",), device="cpu")
    (rebasin,) = pair_barriers(zoo_dir, n_points=9, splits=("train",), align="weight", renorm="repair",
                               device="cpu")
    key = "barrier_loss_train_linear"
    # the naive stage of the aligned run is the plain run (same code path, same models)
    assert rebasin["naive_" + key] == pytest.approx(naive[key], abs=1e-9)
    assert naive[key] > 0.1, naive  # width-64 digits MLPs trained from two seeds are not linearly connected
    assert rebasin["aligned_" + key] < 0.5 * naive[key], rebasin
    assert rebasin[key] < 0.5 * naive[key], rebasin
    assert rebasin["barrier_error_train_linear"] < rebasin["naive_barrier_error_train_linear"] - 0.02
    assert rebasin["align_objective"] > 0 and rebasin["align_iterations"] >= 1
    assert rebasin["cell_label"] == "cell 0"


def test_stored_permutation_reproduces_the_aligned_model_bit_for_bit(zoo_dir):
    pair_barriers(zoo_dir, n_points=3, splits=("test",), align="weight", device="cpu", seed=3)
    params = pair_params(3, ("test",), "weight", "none", 3)
    with open_zoo(zoo_dir) as zoo:
        a_id, b_id = sorted(zoo.model_ids)
        a, b = zoo.load_model(a_id, 8), zoo.load_model(b_id, 8)
        x = zoo.data().train_x[:2]
    stored = load_permutation(permutation_path(zoo_dir, a_id, b_id, 8, params))
    spec = permutation_spec(a, x)
    aligned = apply_permutation(b, Permutation(spec, stored))
    expected = weight_matching(a, b, spec, seed=3)
    assert not Permutation(spec, stored).is_identity()
    for k, v in expected.model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k
    # the stored distance is the distance to the aligned model
    with torch.no_grad():
        dist = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(a.parameters(), aligned.parameters())))
    (rec,) = [r for r in pair_barriers(zoo_dir, n_points=3, splits=("test",), align="weight", seed=3)]
    assert rec["distance"] == pytest.approx(float(dist), rel=1e-5)


def test_resumes_and_runs_on_worker_processes(zoo_dir, capsys):
    args = ["lmc", "pairs", str(zoo_dir), "--n-points", "3", "--splits", "test", "--renorm", "rescale",
            "--device", "cpu"]
    assert main([*args, "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "cell 0: 1 pair(s)" in captured.err and "+rescale" in captured.out
    assert main(args) == 0  # stored: skipped
    assert "1 pair(s) already stored" in capsys.readouterr().err
    with open_zoo(zoo_dir) as zoo:
        rows = zoo.analyses("barrier_loss_test_linear")
        assert sum(p.get("renorm") == "rescale" for p in rows["params"]) == 1
    # the old spelling still works: --bn-mode reset == --renorm reset_bn
    assert main(["lmc", "pairs", str(zoo_dir), "--n-points", "3", "--splits", "test", "--bn-mode", "reset",
                 "--quiet"]) == 0
    assert "--bn-mode is deprecated" in capsys.readouterr().err


def test_align_merge_stores_a_derived_model_linked_to_its_sources(zoo_dir, capsys):
    from zooscape.studies.cells import zoo_cells
    from zooscape.studies.merges import merge_cells

    (plain,) = merge_cells(zoo_dir, method="none", device="cpu")
    assert main(["align", "merge", str(zoo_dir), "--cell", "0", "--method", "weight", "--renorm", "repair",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert "cell 0: merged 2 models (weight, renorm repair)" in out.err and "1 merged model(s)" in out.out
    with open_zoo(zoo_dir) as zoo:
        sources = sorted(m for m in zoo.model_ids if not m.startswith("merge-"))
        merged = [m for m in zoo.model_ids if m.startswith("merge-") and m != plain["merge_id"]]
        (mid,) = merged
        cfg = zoo.config(mid)
        assert cfg["derived"]["merge"]["sources"] == sources
        assert cfg["derived"]["merge"]["method"] == "weight" and cfg["derived"]["merge"]["renorm"] == "repair"
        assert [c.model_ids for c in zoo_cells(zoo)] == [tuple(sources)]  # merged models are not grid members
        model, data = zoo.load_model(mid, 8), zoo.data()
        with torch.no_grad():
            acc = float((model.eval()(data.test_x).argmax(1) == data.test_y).float().mean())
        stored = zoo.analyses("merge_test_acc")
        rebasin = float(stored[stored.model_id == mid].value.iloc[0])
        delta = float(zoo.analyses("merge_delta_test_acc").set_index("model_id").loc[mid, "value"])
        metrics = zoo.metrics()
        row = metrics[(metrics.model_id == mid) & (metrics.name == "test_acc")]
        assert list(row.epoch) == [8] and float(row.value.iloc[0]) == pytest.approx(rebasin)
    assert acc == pytest.approx(rebasin, abs=1e-6)
    # Git Re-Basin + REPAIR merges far better than plain averaging of two width-64 MLPs
    assert rebasin > plain["merge_test_acc"] + 0.02, (rebasin, plain)
    assert delta == pytest.approx(rebasin - plain["merge_sources_test_acc"], abs=1e-9)
    assert merge_cells(zoo_dir, method="none", device="cpu") == []  # stored: skipped
    with pytest.raises(ValueError, match="no grid cell"):
        merge_cells(zoo_dir, cells=[5])


def test_align_merge_in_worker_processes_equals_in_process(zoo_dir, tmp_path):
    """--workers 2 runs each cell's merge in a worker process: same values and weights as in-process."""
    import shutil

    from zooscape.studies.merges import merge_cells

    copy_dir = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy_dir)
    (local,) = merge_cells(zoo_dir, method="weight", renorm="reset_bn", seed=1, device="cpu", force=True)
    (worker,) = merge_cells(copy_dir, method="weight", renorm="reset_bn", seed=1, device="cpu", workers=2)
    assert worker["merge_id"] == local["merge_id"]
    for key, value in local.items():
        if key.startswith("merge_") and key != "merge_id":
            assert worker[key] == pytest.approx(value, abs=1e-6), key
    with open_zoo(zoo_dir) as a, open_zoo(copy_dir) as b:
        sa = a.load_model(local["merge_id"], local["epoch"]).state_dict()
        sb = b.load_model(worker["merge_id"], worker["epoch"]).state_dict()
    assert sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    with pytest.raises(ValueError, match="--engine|engine"):
        merge_cells(copy_dir, force=True, engine="bogus")


def test_spawn_store_main_branches_are_grid_members(tmp_path, capsys):
    """lmc pairs / metrics run find the main branches of a spawn store; zoo validate accepts its spec."""
    from pathlib import Path

    from zooscape.studies.metrics import run_metrics

    shipped = Path(__file__).resolve().parents[2] / "configs" / "lmc_spawn_digits.toml"
    assert main(["zoo", "validate", str(shipped)]) == 0
    spec = tmp_path / "spawn.toml"
    spec.write_text(SPEC.replace("[checkpoints]\nepochs = [8]\n", "").replace("epochs = 8", "epochs = 2")
                    .replace("width = 64", "width = 16") + '\n[lmc]\nk1s = [0]\nk2s = "end"\nn_points = 3\n')
    assert main(["zoo", "validate", str(spec)]) == 0
    out = tmp_path / "spawn"
    assert main(["lmc", "spawn", str(spec), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    (row,) = pair_barriers(out, n_points=3, splits=("test",), align="weight", device="cpu")
    with open_zoo(out) as zoo:
        roles = {m: zoo.config(m)["derived"]["lmc"]["role"] for m in zoo.model_ids}
    assert sorted(roles.values()) == ["child", "child", "main", "main"]
    assert roles[row["model_id"]] == roles[row["other_id"]] == "main"
    cka = run_metrics(out, "cka", params={"n_samples": 64})
    assert {(r["model_id"], r["other_id"]) for r in cka} == {(row["model_id"], row["other_id"])}
