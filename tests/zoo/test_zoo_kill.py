"""THE KILL TEST: SIGKILL ``zooscape zoo train`` mid-run, run it again, and get exactly the uninterrupted result."""

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from killtools import count, kill_when
from zooscape.zoo import train_zoo

SPEC = """
[zoo]
name = "kill"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 16
depth = 1

[training]
epochs = 6
batch_size = 8
optimizer = "sgd"
lr = 0.05
momentum = 0.9

[checkpoints]
epochs = [0, 2, 4]

[grid]
"training.seed" = [0, 1]
"model.width" = [16, 24]
"""

N_MODELS, EPOCHS = 4, 6




def cli(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "zooscape.cli", "zoo", "train", str(spec), "--out", str(out), "--device", "cpu",
            "--quiet"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}


def kill_mid_run(spec: Path, out: Path) -> None:
    """Start the CLI, SIGKILL it once the first group has written checkpoint rows beyond epoch 0."""
    kill_when(cli(spec, out), env(), out / "catalog.sqlite", "SELECT COUNT(*) FROM checkpoints WHERE epoch >= 2")


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_zoo(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "killed"

    kill_mid_run(spec, out)
    db = out / "catalog.sqlite"
    done_before = count(db, "SELECT COUNT(*) FROM models WHERE status = 'done'")
    assert done_before < N_MODELS, "the run finished before it could be killed: make the spec slower"
    assert list(out.rglob("resume.safetensors")), "killed mid-group: a resume file must exist"

    res = subprocess.run(cli(spec, out), env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]

    # every model done exactly once, metrics complete without duplicates
    assert count(db, "SELECT COUNT(*) FROM models") == N_MODELS
    assert count(db, "SELECT COUNT(*) FROM models WHERE status = 'done'") == N_MODELS
    n_names = count(db, "SELECT COUNT(DISTINCT name) FROM metrics")
    assert n_names >= 7
    assert count(db, "SELECT COUNT(*) FROM metrics") == N_MODELS * (EPOCHS + 1) * n_names
    assert count(db, "SELECT COUNT(*) FROM (SELECT DISTINCT model_id, epoch, name FROM metrics)") == \
        N_MODELS * (EPOCHS + 1) * n_names
    assert count(db, "SELECT COUNT(*) FROM checkpoints") == N_MODELS * 4 * 2  # epochs 0,2,4,6 x weights+optim

    # every shard opens, no resume or temp file is left, every checkpoint row points at a file holding the model
    files = sorted(out.rglob("*.safetensors"))
    assert files and not [f for f in files if f.name == "resume.safetensors"]
    assert not list(out.rglob("*.tmp"))
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                assert torch.isfinite(fh.get_tensor(k).double()).all()
    con = sqlite3.connect(str(db))
    rows = con.execute("SELECT model_id, file FROM checkpoints").fetchall()
    con.close()
    for mid, rel in rows:
        with safe_open(str(out / rel), framework="pt") as fh:
            assert any(k.startswith(mid + "/") for k in fh.keys())

    # identical (to float tolerance) to an uninterrupted run
    ref = train_zoo(spec, tmp_path / "reference", device="cpu", progress=False)
    from zooscape.zoo import open as open_zoo

    got = open_zoo(out)
    a = ref.metrics().query("name != 'epoch_time_s'").reset_index(drop=True)
    b = got.metrics().query("name != 'epoch_time_s'").reset_index(drop=True)
    assert a[["model_id", "epoch", "name"]].equals(b[["model_id", "epoch", "name"]])
    for x, y in zip(a["value"], b["value"]):
        assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (x, y)
    for mid in ref.model_ids:
        assert ref.epochs(mid) == got.epochs(mid) == [0, 2, 4, 6]
        sa, sb = ref.state_dict(mid, EPOCHS), got.state_dict(mid, EPOCHS)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)
