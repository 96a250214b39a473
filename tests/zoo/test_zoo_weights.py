"""Zoo.dataset(): vectorised weights, index map, splits by model, filters and properties on a trained zoo."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.data import DataLoader

import zooscape.zoo as zz
from zooscape.zoo import train_zoo
from zooscape.zoo.shards import read_metadata, read_tensors, write_tensors
from zooscape.zoo.weights import IndexMap, index_map, split_models, vector_to_state_dict, vectorize

# 18 CNN-s: dropout on/off (shifts module_list indices), lr 1000 makes some runs fail and others blow up
SPEC = """
[zoo]
name = "weights"
[dataset]
name = "digits"
seed = 42
resize = 28
train_fraction = 0.2
[model]
name = "cnn_s"
activation = "relu"
init = "kaiming_uniform"
[training]
epochs = 2
batch_size = 32
optimizer = "sgd"
momentum = 0.9
lr = 0.01
[grid]
"training.seed" = [0, 1, 2]
"training.lr" = [0.01, 0.05, 1000.0]
"model.dropout" = [0.0, 0.5]
"""
N_PARAMS = 2464


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    (tmp / "spec.toml").write_text(SPEC)
    z = train_zoo(tmp / "spec.toml", tmp / "zoo", device="cpu", progress=False)
    assert "failed" in z.status_counts() and z.status_counts()["done"] >= 10
    return z


def param_state(zoo, mid, epoch):
    model = zoo.load_model(mid, epoch)
    sd = zoo.state_dict(mid, epoch)
    return {n: sd[n] for n, _ in model.named_parameters()}, model


def all_samples(ds):
    for split in ds:
        for i in range(len(split)):
            yield split, i


def test_vectors_round_trip_exactly_through_the_index_map(zoo):
    ds = zoo.dataset(properties=["test_acc"])
    imap = ds.index_map
    assert imap.size == N_PARAMS and [s.offset for s in imap] == [0] + [s.stop for s in imap][:-1]
    assert [s.kind for s in imap] == ["conv"] * 6 + ["linear"] * 4
    assert [s.role for s in imap] == ["weight", "bias"] * 5
    n = 0
    for split, i in all_samples(ds):
        mid, e = split.model_ids[i], int(split.epochs[i])
        sd, model = param_state(zoo, mid, e)
        back = split.state_dict(i, like=model)  # aligned by position (dropout shifts the names)
        assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
        assert torch.equal(vectorize(sd, index_map(model)), split.weights[i])
        n += 1
    assert n == ds.report.kept > 0
    ds64 = zoo.dataset(properties=["test_acc"], dtype=torch.float64)  # the per-tensor (non-gather) read path
    assert all(torch.equal(a.weights.double(), b.weights) for a, b in zip(ds, ds64))
    v = torch.randn(imap.size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vectorize(vector_to_state_dict(v, imap), imap), v)
    with pytest.raises(ValueError, match=r"shape \[2464\]"):
        vector_to_state_dict(v[:-1], imap)


def test_layer_selection(zoo):
    first_last = zoo.dataset(layers=[0, -1]).index_map
    assert first_last.size == (8 * 25 + 8) + (10 * 20 + 10)
    assert [s.kind for s in first_last] == ["conv", "conv", "linear", "linear"]
    convs = zoo.dataset(layers=["module_list.0", "*.3.*"]).index_map
    assert convs.names == ["module_list.0.weight", "module_list.0.bias", "module_list.3.weight", "module_list.3.bias"]
    assert IndexMap.from_dict(convs.to_dict()) == convs
    with pytest.raises(KeyError, match="matches no layer"):
        zoo.dataset(layers=["classifier"])


def test_splits_are_by_model_and_stable(zoo):
    ds = zoo.dataset(properties=["test_acc"], split=(0.7, 0.15, 0.15), seed=42)
    ids = [set(s.model_ids) for s in ds]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    expected = split_models(zoo.model_ids, (0.7, 0.15, 0.15), 42)
    assert ds.split_of == expected
    counts = [sum(v == s for v in expected.values()) for s in ("train", "val", "test")]
    assert counts == [13, 3, 2]  # round(0.7 * 18), round(0.15 * 18), rest
    for name, split in zip(("train", "val", "test"), ds):
        assert all(expected[m] == name for m in split.model_ids)
    other = zoo.dataset(epochs="last", layers=[0], filters={"failed": False}, seed=42)
    assert other.split_of == expected
    assert zoo.dataset(seed=7).split_of != expected
    with pytest.raises(ValueError, match="split"):
        zoo.dataset(split=(0.5, 0.5, 0.5))


def test_failed_runs_missing_epochs_and_thresholds_are_counted(zoo):
    statuses = zoo.status_counts()
    table = zoo.configs().set_index("model_id")
    failed = [m for m in zoo.model_ids if table.loc[m, "status"] == "failed"]
    n_ckpt = {m: len(zoo.epochs(m)) for m in zoo.model_ids}
    ds = zoo.dataset()
    assert ds.report.dropped == {"failed run": sum(n_ckpt[m] for m in failed)}
    assert ds.report.total == sum(n_ckpt.values()) and ds.report.kept == sum(len(s) for s in ds)
    assert statuses["failed"] == len(failed) and all(m not in s.model_ids for s in ds for m in failed)

    kept_all = zoo.dataset(filters={"failed": False})
    assert kept_all.report.kept == sum(n_ckpt.values())

    last = zoo.dataset(epochs=[2], filters={"failed": False})
    assert last.report.dropped == {"no checkpoint at that epoch": len(failed)}

    # |w| threshold: agree with a slow path over every checkpoint's own state dict
    threshold = 10.0
    slow = 0
    for m in zoo.model_ids:
        if m in failed:
            continue
        for e in zoo.epochs(m):
            sd, _ = param_state(zoo, m, e)
            slow += int(max(t.abs().max().item() for t in sd.values()) > threshold)
    big = zoo.dataset(filters={"max_abs": threshold})
    assert slow > 0
    assert big.report.dropped == {"failed run": sum(n_ckpt[m] for m in failed), "|w| > 10": slow}
    assert all(bool((s.weights.abs() <= threshold).all()) for s in big)

    pred = zoo.dataset(filters={"predicate": lambda row, w: row["epoch"] > 0 and row["training.lr"] < 1})
    expected = sum(1 for m in zoo.model_ids if m not in failed for e in zoo.epochs(m)
                   if not (e > 0 and table.loc[m, "training.lr"] < 1))
    assert pred.report.dropped["predicate"] == expected
    assert sum(pred.report.dropped.values()) == len(pred.report.samples) == pred.report.total - pred.report.kept
    assert "dropped" in pred.report.summary()


def test_non_finite_weights_are_dropped(zoo, tmp_path):
    copy = tmp_path / "zoo"
    shutil.copytree(zoo.path, copy)
    z = zz.open(copy)
    mid = next(m for m in z.model_ids if z.configs().set_index("model_id").loc[m, "status"] == "done")
    rel = z.catalog.query("SELECT file FROM checkpoints WHERE model_id=? AND epoch=1 AND kind='weights'", (mid,))
    shard = copy / rel[0][0]
    tensors, meta = read_tensors(shard), read_metadata(shard)
    tensors[f"{mid}/module_list.3.weight"][0, 0, 0, 0] = float("inf")
    write_tensors(shard, tensors, meta)
    import sqlite3

    con = sqlite3.connect(copy / "catalog.sqlite")  # as if training had written the inf: forget the old checksum
    con.execute("DELETE FROM shards WHERE file = ?", (rel[0][0],))
    con.commit()
    con.close()
    ds = z.dataset()
    assert ds.report.dropped["non-finite weights"] == 1
    assert (mid, 1, "non-finite weights") in ds.report.samples
    loose = z.dataset(filters={"nonfinite": False})
    assert loose.report.kept == ds.report.kept + 1
    assert sum(int(torch.isinf(s.weights).any(dim=1).sum()) for s in loose) == 1
    z.close()


def test_properties(zoo):
    props = ["test_acc", "ggap", "epoch", "training.lr", "model.dropout", "status", "lr"]
    ds = zoo.dataset(properties=props, categorical=["model.dropout"], filters={"failed": False})
    table = zoo.table().set_index(["model_id", "epoch"])
    assert ds.classes["model.dropout"] == [0.0, 0.5]
    assert ds.classes["status"] == ["done", "failed"]
    assert ds.is_categorical("status") and not ds.is_categorical("test_acc")
    for split, i in all_samples(ds):
        row = table.loc[(split.model_ids[i], int(split.epochs[i]))]
        p = {k: v[i].item() for k, v in split.properties.items()}
        assert p["test_acc"] == pytest.approx(row["test_acc"], rel=1e-6)
        assert p["ggap"] == pytest.approx(row["train_acc"] - row["test_acc"], abs=1e-6)
        assert p["epoch"] == int(split.epochs[i])
        assert p["training.lr"] == pytest.approx(row["training.lr"])
        assert p["lr"] == pytest.approx(row["lr"])  # the per-epoch metric wins over the config suffix
        assert ds.classes["model.dropout"][p["model.dropout"]] == row["model.dropout"]
        assert ds.classes["status"][p["status"]] == row["status"]
        assert split.properties["status"].dtype == torch.int64
    w, batch = next(iter(DataLoader(ds.train, batch_size=4)))
    assert w.shape == (4, N_PARAMS) and batch["test_acc"].shape == (4,)
    with pytest.raises(KeyError, match="unknown property 'accuracy'"):
        zoo.dataset(properties=["accuracy"])


def test_epoch_selection_and_argument_errors(zoo):
    last = zoo.dataset(epochs="last", filters={"failed": False})
    got = {(m, int(e)) for s in last for m, e in zip(s.model_ids, s.epochs)}
    assert got == {(m, max(zoo.epochs(m))) for m in zoo.model_ids}
    one = zoo.dataset(epochs=1)
    assert all(int(e) == 1 for s in one for e in s.epochs)
    with pytest.raises(TypeError, match=r"Zoo\.data\(model_id\)"):
        zoo.dataset(zoo.model_ids[0])
    with pytest.raises(KeyError, match="unknown key"):
        zoo.dataset(filters={"maxabs": 3})
    with pytest.raises(ValueError, match="epochs"):
        zoo.dataset(epochs=[-1])
