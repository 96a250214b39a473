"""Sparsified twins and pruning as zoo studies: catalog rows, links to sources, resume, dataset, CLI."""

import json
import sqlite3

import pytest
import torch

import zooscape.zoo as zz
from zooscape.cli import main
from zooscape.sparsify import sparsity_ratio
from zooscape.studies.cells import zoo_cells
from zooscape.studies.twins import plan_twins, prune_zoo, sparsify_twins, twin_id
from zooscape.zoo import train_zoo

SPEC = """
[zoo]
name = "twins"

[dataset]
name = "digits"
seed = 42

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
"training.lr" = [0.01, 0.003]
"""


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twins")
    spec = tmp / "spec.toml"
    spec.write_text(SPEC)
    train_zoo(spec, tmp / "zoo", device="cpu", progress=False)
    return tmp / "zoo"


def _rows(zoo_dir, sql, args=()):
    with sqlite3.connect(zoo_dir / "catalog.sqlite") as con:
        return con.execute(sql, args).fetchall()


def test_twins_in_the_catalog_linked_to_sources(zoo_dir):
    ids = sparsify_twins(zoo_dir, epochs=3, kl_scale=20.0)
    with zz.open(zoo_dir) as zoo:
        sources = [m for m in zoo.model_ids if not m.endswith("-twin")]
        assert sorted(ids) == sorted(twin_id(s) for s in sources)
        cfg = zoo.configs().set_index("model_id")
        assert set(cfg.loc[ids, "kind"]) == {"twin"} and set(cfg.loc[sources, "kind"]) == {"model"}
        assert all(cfg.loc[twin_id(s), "source_id"] == s for s in sources)
        assert {c.index for c in zoo_cells(zoo)} == {0, 1}  # twins are not grid members
        table = zoo.table()
        tw = table[table["kind"] == "twin"]
        assert sorted(set(tw["epoch"])) == [0, 1, 2, 3]
        assert {"sparsity", "kl", "test_acc", "train_loss"} <= set(tw.columns)
        assert tw["sparsity"].notna().all()
        # twins that sparsified: sparsity grows; the stored checkpoint is the sparse model, same keys as the source
        last = tw[tw["epoch"] == 3].set_index("model_id")
        assert float(last["sparsity"].mean()) > float(tw[tw["epoch"] == 0]["sparsity"].mean())
        tid = ids[0]
        model = zoo.load_model(tid, 3)
        assert sparsity_ratio(model) == pytest.approx(float(last.loc[tid, "sparsity"]), abs=1e-9)
        data = zoo.data(tid)
        with torch.no_grad():
            acc = float((model(data.test_x).argmax(1) == data.test_y).float().mean())
        assert acc == pytest.approx(float(last.loc[tid, "test_acc"]), abs=1e-6)
        # Zoo.dataset reads twins; the kind filter selects them (or the sources)
        train, val, test = zoo.dataset(epochs="last", properties=("test_acc",), filters={"kind": "twin"})
        assert len(train) + len(val) + len(test) == len(ids)
        both = zoo.dataset(epochs="last", properties=("test_acc",))
        assert sum(len(d) for d in both) == 2 * len(ids)
        assert _rows(zoo_dir, "SELECT COUNT(*) FROM models WHERE status = 'done'")[0][0] == 2 * len(ids)
    # finished twins are skipped; other settings for stored twins are an error
    assert sparsify_twins(zoo_dir, epochs=3, kl_scale=20.0) == []
    with zz.open(zoo_dir) as zoo, pytest.raises(ValueError, match="other settings"):
        plan_twins(zoo, epochs=4, kl_scale=20.0)


def _sources_only(zoo_dir, copy):
    import shutil

    shutil.copytree(zoo_dir, copy)
    with sqlite3.connect(copy / "catalog.sqlite") as con:  # only the sources
        con.execute("DELETE FROM models WHERE model_id LIKE '%-twin'")
        con.execute("DELETE FROM metrics WHERE model_id LIKE '%-twin'")
        con.execute("DELETE FROM checkpoints WHERE model_id LIKE '%-twin'")


@pytest.mark.parametrize("estimator", ["local", "weight"])  # "weight": MLP twins step without autograd
def test_interrupted_twins_resume_to_the_same_result(zoo_dir, tmp_path, estimator):
    copy = tmp_path / "zoo"
    _sources_only(zoo_dir, copy)
    ref = zoo_dir
    if estimator != "weight":  # the module's zoo holds default (weight) twins: an uninterrupted run as reference
        ref = tmp_path / "ref"
        _sources_only(zoo_dir, ref)
        sparsify_twins(ref, epochs=3, kl_scale=20.0, estimator=estimator)
    import zooscape.sparsify as sp  # the task imports train_twins from here when it runs

    calls = {"n": 0}

    orig = sp.train_twins

    def stop_after_two(*a, callback=None, **k):
        def cb(report):
            callback(report)
            calls["n"] += 1
            if report.epoch == 2:
                raise KeyboardInterrupt
        return orig(*a, callback=cb, **k)

    sp.train_twins = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            sparsify_twins(copy, epochs=3, kl_scale=20.0, estimator=estimator)
    finally:
        sp.train_twins = orig
    statuses = dict(_rows(copy, "SELECT model_id, status FROM models WHERE model_id LIKE '%-twin'"))
    assert statuses and "done" not in set(statuses.values()) and calls["n"] == 3  # epochs 0, 1, 2 reported
    # as in zoo train: epoch 2's files (shard, journal, resume file) were written in the background, its rows were
    # not yet sent when the interrupt came; the resume replays them from the journal and goes on at epoch 3
    assert _rows(copy, "SELECT MAX(epoch) FROM metrics WHERE model_id LIKE '%-twin'")[0][0] == 1
    sparsify_twins(copy, epochs=3, kl_scale=20.0, estimator=estimator)
    q = "SELECT model_id, epoch, name, value FROM metrics WHERE model_id LIKE '%-twin' AND name IN " \
        "('test_acc', 'sparsity', 'kl') ORDER BY model_id, epoch, name"
    got, want = _rows(copy, q), _rows(ref, q)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[:3] == w[:3] and g[3] == pytest.approx(w[3], rel=1e-5, abs=1e-6)


def test_prune_zoo_rows_and_resume(zoo_dir):
    rows = prune_zoo(zoo_dir, methods=["globalmagni", "woodfisherblock"], sparsities=[0.9],
                     renorms=["none", "repair"], n_samples=64, block_size=32)
    with zz.open(zoo_dir) as zoo:
        n_src = sum(1 for m in zoo.model_ids if not m.endswith("-twin"))
        stored = zoo.analyses("sparsity")
    assert len(rows) == n_src * 2 * 2 * 3  # models x methods x renorms x metrics
    sp = stored[[p.get("experiment") == "prune" for p in stored["params"]]]
    assert len(sp) == n_src * 4
    for value, params in zip(sp["value"], sp["params"]):
        assert value == pytest.approx(params["sparsity"], abs=0.01)
    assert prune_zoo(zoo_dir, methods=["globalmagni"], sparsities=[0.9], renorms=["none", "repair"],
                     n_samples=64, block_size=32) == []
    lmc = prune_zoo(zoo_dir, methods=["globalmagni"], sparsities=[0.5], renorms=["none", "reset_bn"],
                    lmc=True, n_points=3, n_samples=64)
    pairs = {(r["model_id"], r["other_id"]) for r in lmc}
    assert len(pairs) == 2 * 3  # two cells of three seeds
    assert {r["params"]["experiment"] for r in lmc} == {"prune_lmc"}


def test_cli(zoo_dir, capsys):
    assert main(["sparsify", "prune", str(zoo_dir), "--method", "magni", "--sparsity", "0.7", "--n-samples",
                 "32", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test_acc" in out and "magni" in out
    assert main(["sparsify", "twins", str(zoo_dir), "--epochs", "3", "--kl-scale", "20", "--quiet"]) == 0
    assert "0 twins trained" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sparsify", "twins", "--help"])
    assert "--from-epoch" in capsys.readouterr().out


def test_prune_zoo_stores_the_fisher_settings(zoo_dir, capsys):
    one = [m for m in zz.open(zoo_dir).model_ids if not m.endswith("-twin")][:1]
    kw = {"sparsities": [0.8], "renorms": ["none"], "n_samples": 32, "model_ids": one}
    exact = prune_zoo(zoo_dir, methods=["diagfisher", "globalmagni"], fisher="exact", split="val", **kw)
    by_method = {r["params"]["method"]: r["params"] for r in exact}
    assert (by_method["diagfisher"]["fisher"], by_method["diagfisher"]["split"]) == ("exact", "val")
    assert "fisher" not in by_method["globalmagni"] and "split" not in by_method["globalmagni"]
    # other Fisher settings are new results (not mixed with the stored ones); magnitude pruning does not use them
    emp = prune_zoo(zoo_dir, methods=["diagfisher", "globalmagni"], **kw)
    assert {r["params"]["method"] for r in emp} == {"diagfisher"}
    assert {(r["params"]["fisher"], r["params"]["split"]) for r in emp} == {("empirical", "train")}
    acc = {(r["params"]["fisher"], r["params"]["split"]): r["value"] for r in exact + emp
           if r["metric"] == "test_acc" and r["params"]["method"] == "diagfisher"}
    assert len(acc) == 2
    # rows stored before the keys existed count as the defaults (empirical Fisher on the training split)
    with sqlite3.connect(zoo_dir / "catalog.sqlite") as con:
        for rowid, text in con.execute("SELECT rowid, params FROM analyses").fetchall():
            p = json.loads(text)
            if p.get("method") == "diagfisher" and p.get("fisher") == "empirical":
                del p["fisher"], p["split"]
                con.execute("UPDATE analyses SET params = ? WHERE rowid = ?", (json.dumps(p, sort_keys=True),
                                                                               rowid))
    assert prune_zoo(zoo_dir, methods=["diagfisher"], **kw) == []
    with pytest.raises(ValueError, match="woodfisherblock uses the empirical Fisher"):
        prune_zoo(zoo_dir, methods=["woodfisherblock"], fisher="exact", **kw)
    with pytest.raises(ValueError, match="split"):
        prune_zoo(zoo_dir, methods=["diagfisher"], split="test", **kw)
    # the CLI passes the options through
    assert main(["sparsify", "prune", str(zoo_dir), "--models", one[0], "--method", "woodfisherblock",
                 "--sparsity", "0.8", "--n-samples", "32", "--block-size", "16", "--damping", "1e-3",
                 "--fisher-split", "val", "--quiet"]) == 0
    assert "woodfisherblock" in capsys.readouterr().out
    with zz.open(zoo_dir) as zoo:
        stored = [p for p in zoo.analyses("test_acc")["params"] if p.get("method") == "woodfisherblock"]
    assert {"fisher": "empirical", "split": "val", "block_size": 16, "damping": 1e-3}.items() <= stored[-1].items()
    # the Rethink scripts' diagfisher (per layer, undamped Fisher; README) goes through the CLI as well
    assert main(["sparsify", "prune", str(zoo_dir), "--models", one[0], "--method", "diagfisher", "--scope",
                 "layer", "--damping", "0", "--sparsity", "0.5", "--n-samples", "32", "--quiet"]) == 0
    with zz.open(zoo_dir) as zoo:
        stored = [p for p in zoo.analyses("test_acc")["params"]
                  if p.get("method") == "diagfisher" and p.get("scope") == "layer"]
    assert len(stored) == 1
    assert {"damping": 0.0, "fisher": "empirical", "sparsity": 0.5}.items() <= stored[0].items()
