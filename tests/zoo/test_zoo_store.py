"""Store: shard round trips, atomic writes, zoo creation checks, the write lock."""

import pytest
import torch
from safetensors import safe_open
from torch import nn

from zooscape.zoo.shards import read_metadata, read_model, read_tensors, write_tensors
from zooscape.zoo.store import ZooExistsError, ZooStore


def tiny(seed):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def test_shard_roundtrip(tmp_path):
    store = ZooStore(tmp_path)
    models = {"aaa": tiny(0), "bbb": tiny(1)}
    rel = store.write_shard("g1", 3, "weights", {k: m.state_dict() for k, m in models.items()})
    assert rel == "checkpoints/g1/e000003.weights.safetensors"
    path = tmp_path / rel
    meta = read_metadata(path)
    assert meta["group_id"] == "g1" and meta["epoch"] == "3" and meta["kind"] == "weights"
    assert meta["model_ids"] == '["aaa", "bbb"]'
    for mid, m in models.items():
        sd = read_model(path, mid)
        assert sd.keys() == m.state_dict().keys()
        for k, v in m.state_dict().items():
            assert torch.equal(sd[k], v)
        fresh = tiny(99)
        fresh.load_state_dict(sd)
        x = torch.randn(5, 3)
        assert torch.equal(fresh.eval()(x), m.eval()(x))
    with pytest.raises(KeyError, match="ccc"):
        read_model(path, "ccc")


def test_shared_storage_is_written(tmp_path):
    w = torch.randn(4, 4)
    path = tmp_path / "x.safetensors"
    write_tensors(path, {"a": w, "b": w, "c": w[1]}, {"n": 3})
    got = read_tensors(path)
    assert torch.equal(got["a"], w) and torch.equal(got["b"], w) and torch.equal(got["c"], w[1])
    assert read_metadata(path) == {"n": "3"}


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    import zooscape._io as io_mod

    path = tmp_path / "s.safetensors"
    write_tensors(path, {"w": torch.ones(3)}, {})

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(io_mod.os, "replace", crash)
    with pytest.raises(OSError, match="before the rename"):
        write_tensors(path, {"w": torch.zeros(3)}, {})
    monkeypatch.undo()
    assert torch.equal(read_tensors(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_create_or_check(tmp_path):
    root = tmp_path / "zoo"
    cat = ZooStore(root).create_or_check("spec text", "fp1")
    cat.close()
    assert (root / "spec.toml").read_text() == "spec text"
    assert (root / "checkpoints").is_dir()
    ZooStore(root).create_or_check("spec text", "fp1").close()  # same spec: fine
    with pytest.raises(ZooExistsError, match="different spec"):
        ZooStore(root).create_or_check("other", "fp2")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    with pytest.raises(ZooExistsError, match="not empty"):
        ZooStore(other).create_or_check("spec", "fp")
    assert sorted(p.name for p in other.iterdir()) == ["x.txt"]


def test_lock_is_exclusive(tmp_path):
    store = ZooStore(tmp_path)
    with store.lock():
        with pytest.raises(RuntimeError, match="another process"):
            with ZooStore(tmp_path).lock():
                pass
    with store.lock():  # released
        pass


def test_remove_temp_files_and_resume(tmp_path):
    store = ZooStore(tmp_path)
    store.write_shard("g", 0, "optimizer", {"m": {"exp_avg": torch.ones(2)}})
    (tmp_path / "checkpoints" / "g" / ".e000001.weights.safetensors.abc.tmp").write_bytes(b"x")
    assert store.remove_temp_files() == 1
    store.resume_path("g").write_bytes(b"r")
    store.delete_resume("g")
    store.delete_resume("g")  # idempotent
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "g").iterdir()) == ["e000000.optim.safetensors"]
    with safe_open(str(tmp_path / "checkpoints/g/e000000.optim.safetensors"), "pt") as fh:
        assert list(fh.keys()) == ["m/exp_avg"]
    with pytest.raises(ValueError, match="kind"):
        store.shard_relpath("g", 0, "grads")


def test_direct_shard_encoding_is_the_librarys_bytes():
    """encode_tensors builds the file itself; it must be byte for byte what safetensors writes (checksums of old
    zoos, ``verify --repair``), for every dtype, scalar and empty tensors, unicode names and shared storage."""
    import json

    import torch
    from safetensors.torch import save

    from zooscape.zoo.shards import _DTYPE_NAMES, _canonical_header, _detach_unique, _encode_direct, encode_tensors

    gen = torch.Generator().manual_seed(0)
    dtypes = [getattr(torch, name) for name in _DTYPE_NAMES]
    for trial in range(20):
        tensors = {}
        for i in range(int(torch.randint(1, 12, (1,), generator=gen))):
            dt = dtypes[int(torch.randint(len(dtypes), (1,), generator=gen))]
            shape = [int(s) for s in torch.randint(0, 4, (int(torch.randint(0, 4, (1,), generator=gen)),),
                                                   generator=gen)]
            t = (torch.randn(shape, generator=gen) * 100).to(dt)
            tensors[["w", "b", "ä/β", "model.0.weight", "Z", "a.b"][i % 6] + str(i)] = t
        base = torch.randn(4, 3, generator=gen)
        tensors["view0"], tensors["view1"] = base[0], base[1]  # shared storage
        meta = {"format": "zooscape-shard", "epoch": str(trial), "model_ids": json.dumps(["x", "y"])}
        plain = _detach_unique(tensors)
        reference = _canonical_header(save(plain, metadata=meta))
        assert _encode_direct(plain, meta) == reference
        assert encode_tensors(tensors, meta) == reference
    # (the library writes a malformed header for no tensors with metadata; the direct encoding is a valid file)
    assert json.loads(encode_tensors({}, {"a": "b"})[8:]) == {"__metadata__": {"a": "b"}}
    odd = {"u": torch.zeros(3, dtype=torch.uint16)}  # not written directly: the library's path
    assert _encode_direct(odd, {}) is None
    assert encode_tensors(odd, {}) == _canonical_header(save(odd, metadata={}))
