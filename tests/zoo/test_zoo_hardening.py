"""Hardening of the zoo store (issue 17): odd paths, read-only and shared zoos, half-created stores, integrity
checks and repair, error messages, large grids. Each test reproduces one reported defect."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import zooscape.zoo as zz
from zooscape.cli import main as cli_main
from zooscape.zoo import SpecError, train_zoo
from zooscape.zoo.catalog import Catalog, CatalogError
from zooscape.zoo.shards import ShardError
from zooscape.zoo.store import ZooStore

SPEC = """
[zoo]
name = "hard"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 8
depth = 1

[training]
epochs = 2
batch_size = 64
optimizer = "sgd"
lr = 0.05
momentum = 0.9

[checkpoints]
epochs = "all"

[grid]
"training.seed" = [0, 1]
"""


def write_spec(tmp: Path, text: str = SPEC, name: str = "spec.toml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished zoo trained under umask 022 (copied by the tests that change it)."""
    tmp = tmp_path_factory.mktemp("hard")
    spec = write_spec(tmp)
    old = os.umask(0o022)
    try:
        train_zoo(spec, tmp / "zoo", device="cpu", progress=False).close()
    finally:
        os.umask(old)
    return spec, tmp / "zoo"


def copy_zoo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


# ----------------------------------------------------------------------------------------------- 3: %, #, ?


def test_percent_in_path_reads_its_own_catalog(tmp_path):
    ZooStore(tmp_path / "p q").create_or_check("a = 1\n", "fp-space").close()
    ZooStore(tmp_path / "p%20q").create_or_check("b = 2\n", "fp-percent").close()
    with Catalog(tmp_path / "p%20q" / "catalog.sqlite", readonly=True) as cat:
        assert cat.meta()["spec_fingerprint"] == "fp-percent"
    with Catalog(tmp_path / "p q" / "catalog.sqlite", readonly=True) as cat:
        assert cat.meta()["spec_fingerprint"] == "fp-space"


@pytest.mark.parametrize("name", ["zoo#1", "zoo?x=1", "50%"])
def test_hash_and_question_mark_in_zoo_path(tmp_path, name):
    spec = write_spec(tmp_path)
    out = tmp_path / name
    train_zoo(spec, out, device="cpu", progress=False).close()
    with zz.open(out) as zoo:  # open
        assert len(zoo.model_ids) == 2 and set(zoo.status_counts()) == {"done"}
        zoo.load_model(zoo.model_ids[0], 2)
    zoo = train_zoo(spec, out, device="cpu", progress=False)  # resume: nothing left to do
    assert zoo.status_counts() == {"done": 2}
    zoo.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "spec.toml"])  # no stray "zoo" file


# ----------------------------------------------------------------------------------------------- 4: sharing


def test_files_honour_the_umask(trained):
    _, root = trained
    files = [p for p in root.rglob("*") if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".safetensors" for p in files) and (root / "spec.toml") in files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_finished_catalog_needs_no_wal_files(trained):
    """A finished zoo's catalog is a plain rollback-journal database: nothing to write to read it."""
    _, root = trained
    assert not (root / "catalog.sqlite-wal").exists() and not (root / "catalog.sqlite-shm").exists()
    assert (root / "catalog.sqlite").read_bytes()[18:20] == b"\x01\x01"  # legacy (non-WAL) file format


def wal_copy(src: Path, dst: Path) -> Path:
    """A copy of a zoo whose catalog is still in WAL mode (as one copied while training, or left by a killed
    writer)."""
    root = copy_zoo(src, dst)
    con = sqlite3.connect(root / "catalog.sqlite")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return root


def test_reader_opens_a_wal_catalog_on_readonly_storage(trained, tmp_path):
    """Even a catalog still in WAL mode (a copy taken while training) reads without a -shm file: immutable open."""
    root = wal_copy(trained[1], tmp_path / "zoo")
    assert (root / "catalog.sqlite").read_bytes()[18:20] == b"\x02\x02"
    cat = Catalog(root / "catalog.sqlite", readonly=True, immutable=True)
    assert len(cat.query("SELECT * FROM models")) == 2
    cat.close()
    assert not (root / "catalog.sqlite-shm").exists()


READER = textwrap.dedent("""
    import os, sys
    import zooscape.zoo as zz
    from zooscape.cli import main
    root = sys.argv[1]
    with zz.open(root) as zoo:
        assert len(zoo.table()) == 6, zoo.table()
        m = zoo.load_model(zoo.model_ids[0], 2)
        ds = zoo.dataset(properties=["test_acc"], split=(1.0, 0.0, 0.0))
        assert len(ds.train) == 6
        zoo.data()
        zoo.spec
    assert main(["zoo", "info", root]) == 0
    assert main(["zoo", "plot", root, "--x", "training.seed", "--y", "training.seed",
                 "--out", os.path.join(sys.argv[3], "p.png")]) == 0
    assert main(["zoo", "verify", root]) == 0
    print("READ-OK")
""")


@contextlib.contextmanager
def readonly(root: Path):
    """chmod -R a-w; as root (whom chmod does not stop) ``chattr -R +i`` (immutable even for root); skips the test
    where neither makes the directory read-only. Restores write access afterwards."""
    chattr = shutil.which("chattr")
    immutable = False
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        if os.geteuid() == 0:
            if chattr and subprocess.run([chattr, "-R", "+i", str(root)], capture_output=True).returncode == 0:
                immutable = True
            try:
                (root / "probe").touch()
                pytest.skip("running as root and chattr +i is not available: chmod cannot make a directory read-only")
            except OSError:
                pass
        yield root
    finally:
        if immutable:
            subprocess.run([chattr, "-R", "-i", str(root)], capture_output=True)
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_readonly_zoo_reads_fully(trained, tmp_path):
    """A read-only zoo directory: info/open/load/dataset/plot/verify all work and nothing is written into it."""
    _, src = trained
    out = tmp_path / "out"
    out.mkdir()
    with readonly(copy_zoo(src, tmp_path / "zoo")) as root:
        env = {**os.environ, "MPLCONFIGDIR": str(out), "HOME": str(out)}
        res = subprocess.run([sys.executable, "-c", READER, str(root), "-1", str(out)], capture_output=True,
                             text=True, env=env, timeout=300)
        assert res.returncode == 0 and "READ-OK" in res.stdout, res.stdout + res.stderr
        assert not (root / "catalog.sqlite-shm").exists()


def test_readonly_wal_catalog_left_by_a_killed_writer(trained, tmp_path):
    """The automatic fallback: mode=ro is refused (no -shm can be created), the immutable open works."""
    root = wal_copy(trained[1], tmp_path / "zoo")
    with readonly(root), zz.open(root) as zoo:
        assert len(zoo.table()) == 6


# ----------------------------------------------------------------------------------------------- 5: half-created


def _fingerprint(spec: Path) -> str:
    return zz.load_spec(spec).fingerprint()


@pytest.mark.parametrize("state", ["empty-file", "no-meta-table", "no-fingerprint", "no-spec-copy"])
def test_half_created_store_is_reinitialised(tmp_path, state):
    spec = write_spec(tmp_path)
    out = tmp_path / "zoo"
    out.mkdir()
    (out / ".lock").touch()
    db = out / "catalog.sqlite"
    if state == "empty-file":
        db.touch()
    elif state == "no-meta-table":
        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode=WAL")
        con.close()
    elif state == "no-fingerprint":
        Catalog(db, create=True).close()
    else:  # catalog complete, killed before spec.toml was written
        cat = Catalog(db, create=True)
        cat.set_meta({"spec_fingerprint": _fingerprint(spec)})
        cat.close()
    zoo = train_zoo(spec, out, device="cpu", progress=False)
    assert zoo.status_counts() == {"done": 2}
    assert zoo.spec.name == "hard"
    zoo.close()


def test_catalog_creation_is_one_step(tmp_path, monkeypatch):
    """Killed between creating the catalog and recording the fingerprint: no catalog file is left behind."""
    from zooscape.zoo import store as store_mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "atomic_write_bytes", boom)  # dies writing spec.toml, after the catalog
    with pytest.raises(KeyboardInterrupt):
        ZooStore(tmp_path / "zoo").create_or_check("x = 1\n", "fp")
    with Catalog(tmp_path / "zoo" / "catalog.sqlite", readonly=True) as cat:
        assert cat.meta()["spec_fingerprint"] == "fp"
    monkeypatch.undo()
    ZooStore(tmp_path / "zoo").create_or_check("x = 1\n", "fp").close()
    assert (tmp_path / "zoo" / "spec.toml").read_text() == "x = 1\n"


# ----------------------------------------------------------------------------------------------- 6: integrity


def _weights_shard(root: Path, epoch: int) -> Path:
    (path,) = (root / "checkpoints").glob(f"*/e{epoch:06d}.weights.safetensors")
    return path


def test_checksums_recorded_for_every_shard(trained):
    _, root = trained
    with zz.open(root) as zoo:
        records = zoo.catalog.shard_records()
        files = {f for (f,) in zoo.catalog.query("SELECT DISTINCT file FROM checkpoints")}
    assert set(records) == files and len(files) == 6
    import hashlib
    import zlib

    for rel, rec in records.items():
        data = (root / rel).read_bytes()
        assert rec.size == len(data) and rec.sha256 == hashlib.sha256(data).hexdigest()
        assert rec.crc32 == zlib.crc32(data)
        assert rec.kind in ("weights", "optimizer") and rec.epoch in (0, 1, 2)


def test_flipped_bytes_are_detected_on_load(trained, tmp_path):
    _, src = trained
    root = copy_zoo(src, tmp_path / "zoo")
    path = _weights_shard(root, 2)
    data = bytearray(path.read_bytes())
    for i in range(16):
        data[-200 + i] ^= 0xFF
    path.write_bytes(bytes(data))
    with zz.open(root) as zoo:
        mid = zoo.model_ids[0]
        with pytest.raises(ShardError, match=r"e000002\.weights.*checksum"):
            zoo.state_dict(mid, 2)
        with pytest.raises(ShardError, match="checksum"):
            zoo.dataset(epochs=[2], split=(1.0, 0.0, 0.0))
        zoo.load_model(mid, 1)  # the other shards are fine


def test_shard_copied_over_another_epoch_is_detected(trained, tmp_path):
    _, src = trained
    root = copy_zoo(src, tmp_path / "zoo")
    shutil.copyfile(_weights_shard(root, 1), _weights_shard(root, 2))
    with zz.open(root) as zoo:
        with pytest.raises(ShardError, match="epoch 1.*expected.*epoch 2|checksum"):
            zoo.state_dict(zoo.model_ids[0], 2)
    # without recorded checksums (zoos of older versions) the header's epoch still gives it away
    con = sqlite3.connect(root / "catalog.sqlite")
    con.execute("DELETE FROM shards")
    con.commit()
    con.close()
    with zz.open(root) as zoo:
        with pytest.raises(ShardError, match="epoch 1.*epoch 2"):
            zoo.state_dict(zoo.model_ids[0], 2)


def test_info_reports_truncated_and_missing_shards(trained, tmp_path, capsys):
    _, src = trained
    root = copy_zoo(src, tmp_path / "zoo")
    path = _weights_shard(root, 1)
    path.write_bytes(path.read_bytes()[:100])
    (_weights_shard(root, 2).with_name("e000002.optim.safetensors")).unlink()
    assert cli_main(["zoo", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 of 6 shards" in out and "zooscape zoo verify" in out


def test_stored_spec_is_compared_with_the_fingerprint(trained, tmp_path):
    _, src = trained
    root = copy_zoo(src, tmp_path / "zoo")
    spec = root / "spec.toml"
    spec.write_text(spec.read_text().replace("lr = 0.05", "lr = 0.5"))
    with zz.open(root) as zoo:
        with pytest.raises(ValueError, match="spec.toml.*does not match"):
            _ = zoo.spec


def test_verify_finds_and_repair_retrains_exactly_the_bad_shards(trained, tmp_path, capsys):
    _, src = trained
    original = shard_bytes(src)
    root = copy_zoo(src, tmp_path / "zoo")
    flipped = _weights_shard(root, 1)
    data = bytearray(flipped.read_bytes())
    data[-10] ^= 0x01
    flipped.write_bytes(bytes(data))
    missing = _weights_shard(root, 2).with_name("e000002.optim.safetensors")
    missing.unlink()
    untouched = _weights_shard(root, 0)
    mtime = untouched.stat().st_mtime_ns
    assert cli_main(["zoo", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "e000001.weights.safetensors: checksum mismatch" in out and "e000002.optim.safetensors: missing" in out
    assert cli_main(["zoo", "verify", str(root), "--repair", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "repaired 2 shards" in out
    assert shard_bytes(root) == original  # bitwise the original zoo
    assert untouched.stat().st_mtime_ns == mtime  # good shards are not rewritten
    assert cli_main(["zoo", "verify", str(root)]) == 0


def test_train_warns_about_damaged_shards(trained, tmp_path, caplog):
    spec, src = trained
    root = copy_zoo(src, tmp_path / "zoo")
    _weights_shard(root, 1).unlink()
    with caplog.at_level("WARNING", logger="zooscape.zoo"):
        train_zoo(spec, root, device="cpu", progress=False).close()
    assert "1 of 6 shards" in caplog.text and "verify" in caplog.text


# ----------------------------------------------------------------------------------------------- 7: errors


def test_corrupt_catalog_names_the_file(tmp_path):
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "catalog.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match=r"catalog\.sqlite"):
        zz.open(root)
    assert cli_main(["zoo", "info", str(root)]) == 1


def test_unreadable_shard_names_the_file(trained, tmp_path):
    _, src = trained
    root = copy_zoo(src, tmp_path / "zoo")
    path = _weights_shard(root, 1)
    path.write_bytes(b"\x00" * 50)
    con = sqlite3.connect(root / "catalog.sqlite")
    con.execute("DELETE FROM shards")  # no checksum: the safetensors reader itself meets the garbage
    con.commit()
    con.close()
    with zz.open(root) as zoo:
        with pytest.raises(ShardError, match=r"e000001\.weights\.safetensors"):
            zoo.state_dict(zoo.model_ids[0], 1)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nonfinite_spec_float_names_file_and_key(tmp_path, value):
    spec = write_spec(tmp_path, SPEC.replace("lr = 0.05", f"lr = {value}"))
    with pytest.raises(SpecError, match=r"spec\.toml: \[training\] 'lr'"):
        zz.load_spec(spec)
    spec = write_spec(tmp_path, SPEC + f'"training.momentum" = [0.5, {value}]\n', "grid.toml")
    with pytest.raises(SpecError, match=r"grid\.toml: \[grid\] 'training.momentum'\[1\]"):
        zz.load_spec(spec)


def test_non_utf8_spec_names_the_file(tmp_path, capsys):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes(SPEC.replace('"hard"', '"h\xe4rd"').encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin1\.toml.*UTF-8"):
        zz.load_spec(spec)
    assert cli_main(["zoo", "validate", str(spec)]) == 2
    assert "latin1.toml" in capsys.readouterr().err


def test_negative_seed_is_rejected_by_validate(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace('"training.seed" = [0, 1]', '"training.seed" = [0, -1]'))
    with pytest.raises(SpecError, match=r"\[grid\] 'training.seed'\[1\].*>= 0"):
        zz.load_spec(spec)
    out = tmp_path / "zoo"
    with pytest.raises(SpecError):
        train_zoo(spec, out, device="cpu", progress=False)
    assert not out.exists()


def test_model_that_does_not_fit_the_data_names_both_shapes(tmp_path):
    from zooscape.data import load_dataset
    from zooscape.models import create_model
    from zooscape.train import Member, TrainConfig
    from zooscape.zoo.build import check_fits

    data = load_dataset("digits")
    model = create_model("mlp", num_classes=10)  # 784 inputs by default, digits has 64
    with pytest.raises(ValueError, match=r"\(2, 64\).*784|784.*\(2, 64\)"):
        check_fits(model, data)
    spec = write_spec(tmp_path, SPEC.replace("depth = 1", "depth = 1\ninput_size = [784]"))
    with pytest.raises(SpecError, match=r"\[model\].*64.*784|\[model\].*784.*64"):
        zz.plan_zoo(zz.load_spec(spec))
    del TrainConfig, Member


def test_sqlite_error_while_training_names_the_catalog(tmp_path):
    spec = write_spec(tmp_path)
    out = tmp_path / "zoo"
    out.mkdir()
    (out / "catalog.sqlite").write_bytes(b"garbage" * 1000)
    with pytest.raises(CatalogError, match=r"catalog\.sqlite"):
        train_zoo(spec, out, device="cpu", progress=False)


# ----------------------------------------------------------------------------------------------- 8: large grids


def test_validate_of_a_1e5_cell_grid_is_fast(tmp_path, capsys):
    seeds = ", ".join(str(i) for i in range(1000))
    lrs = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(100))
    text = SPEC.replace('"training.seed" = [0, 1]', f'"training.seed" = [{seeds}]\n"training.lr" = [{lrs}]')
    spec = write_spec(tmp_path, text)
    t = time.perf_counter()
    assert cli_main(["zoo", "validate", str(spec)]) == 0
    elapsed = time.perf_counter() - t
    out = capsys.readouterr().out
    assert "models: 100000" in out
    assert "files:" in out and "bytes:" in out
    assert elapsed < 5, elapsed  # 124 s before


def test_validate_estimate_matches_a_trained_zoo(trained, capsys):
    spec, root = trained
    assert cli_main(["zoo", "validate", str(spec)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "files:" in ln)
    n_files = int(line.split("files:")[1].split()[0].replace(",", ""))
    assert n_files == len(list(root.rglob("*.safetensors")))
    size = sum(p.stat().st_size for p in root.rglob("*.safetensors")) + (root / "catalog.sqlite").stat().st_size
    est = float(line.split("bytes:")[1].split()[0].replace(",", ""))
    assert math.isclose(est, size, rel_tol=0.25), (est, size)


def test_validate_of_a_1e6_cell_grid_counts_like_the_full_plan(tmp_path, capsys):
    """The seed axes are not expanded, yet the counts equal those of the full plan (checked at 2,000 cells);
    10^6 cells validate in seconds."""
    from zooscape.zoo.runner import estimate_zoo, summarize_spec

    text = SPEC.replace('"training.seed" = [0, 1]', '"training.seed" = [%s]\n"training.lr" = [0.01, 0.02]\n'
                        '"model.width" = [4, 8]\n"training.data_seed" = [%s]')
    spec = zz.load_spec(write_spec(tmp_path, text % (", ".join(map(str, range(50))), ", ".join(map(str, range(10))))))
    plan, est = summarize_spec(spec)
    full = zz.plan_zoo(spec)
    assert est == estimate_zoo(full) and est.models == len(full.configs) == 2000
    assert est.groups == len(full.groups)
    big = write_spec(tmp_path, text % (", ".join(map(str, range(1000))), ", ".join(map(str, range(250)))), "big.toml")
    t = time.perf_counter()
    assert cli_main(["zoo", "validate", str(big)]) == 0
    assert time.perf_counter() - t < 10
    assert "models: 1000000" in capsys.readouterr().out


def test_os_errors_are_reported_with_the_file(tmp_path, capsys):
    spec = write_spec(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli_main(["zoo", "train", str(spec), "--out", str(blocker / "zoo"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(blocker) in err and "Traceback" not in err
