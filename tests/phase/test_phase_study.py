"""The phase study end to end through the CLI: SIGKILL mid-run, resume, complete table, nothing computed twice."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from killtools import count, kill_when
from zooscape.cli import main
from zooscape.studies.phase import load_study_spec, phase_table, plot_study, run_study
from zooscape.zoo.catalog import catalog_uri
from zooscape.zoo.spec import SpecError

# 2 widths x 2 batch sizes x 2 seeds, BatchNorm MLPs on digits, 3 epochs; every part of the study made small
SPEC = """
[zoo]
name = "phase_tiny"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 8
depth = 1
norm = "bn"
activation = "relu"

[training]
epochs = 3
batch_size = 32
optimizer = "sgd"
lr = 0.05
momentum = 0.9

[checkpoints]
epochs = "all"
optimizer = false

[grid]
"model.width" = [4, 32]
"training.batch_size" = [16, 128]
"training.seed" = [0, 1]

[phase]
average_last = 2
bn_samples = 128

[phase.hessian]
n_samples = 64
num_steps = 6
num_probes = 6
block_size = 3

[phase.cka]
n_samples = 128

[phase.curves]
epochs = 1
batch_size = 128
n_points = 3
mc_points = 3

[phase.lmc]
n_points = 3
"""

N_CELLS, N_MODELS = 4, 8
#: metrics every cell must have after a complete study, and how many values (models or pairs) each aggregates
COMPLETE = {"train_loss": 2, "test_error": 2, "hessian_log_top_eigenvalue": 2, "hessian_log_trace": 2, "cka": 1,
            "curve_mc_loss_train": 1, "curve_mc_error_test": 1, "barrier_loss_train_linear": 1, "distance": 1,
            "epoch_avg_acc_test_delta": 2, "seed_avg_naive_acc_test_delta": 1,
            "seed_avg_aligned_acc_test_delta": 1, "soup_uniform_acc_test": 1, "soup_greedy_acc_test_delta": 1}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}


def _cli(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "zooscape.cli", "phase", "run", str(spec), "--out", str(out), "--device", "cpu",
            "--quiet"]


def _rows(db: Path) -> dict[int, tuple]:
    con = sqlite3.connect(catalog_uri(db, mode="ro"), uri=True, timeout=10)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT id, model_id, other_id, epoch, metric, value, params FROM analyses")}
    finally:
        con.close()


def _kill_mid_run(spec: Path, out: Path) -> None:
    """SIGKILL the CLI once the first curve pair is stored (training, Hessian and CKA done, curves half-way)."""
    kill_when(_cli(spec, out), _env(), out / "catalog.sqlite",
              "SELECT COUNT(*) FROM analyses WHERE metric = 'curve_mc_loss_train'")


@pytest.mark.slow
def test_study_sigkill_resume_complete_and_identical(tmp_path):
    spec = tmp_path / "study.toml"
    spec.write_text(SPEC)
    out = tmp_path / "killed"
    _kill_mid_run(spec, out)
    db = out / "catalog.sqlite"
    before = _rows(db)
    assert 0 < count(db, "SELECT COUNT(*) FROM analyses WHERE metric = 'curve_mc_loss_train'") < N_CELLS, \
        "the study finished before it could be killed"
    assert count(db, "SELECT COUNT(*) FROM analyses WHERE metric = 'epoch_avg_acc_test'") == 0

    res = subprocess.run(_cli(spec, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _rows(db)
    # nothing stored before the kill was computed again: same row ids, same values
    assert all(after.get(i) == row for i, row in before.items())
    table = phase_table(out)
    assert len(table) == N_CELLS and list(table["n_models"]) == [2] * N_CELLS
    for metric, n in COMPLETE.items():
        assert list(table[f"{metric}_n"]) == [n] * N_CELLS, metric
        assert table[f"{metric}_mean"].notna().all(), metric
    assert set(table["phase"]) <= {"I", "II", "III", "IV-A", "IV-B", "uncertain", "unclassified"}
    # the seed pair's keys are unique: no duplicate rows
    keys = [(m, o, e, metric, p) for m, o, e, metric, _, p in after.values()]
    assert len(keys) == len(set(keys))

    # a third run (in-process) computes nothing
    assert main(_cli(spec, out)[3:]) == 0
    assert _rows(db) == after

    # the same values as an uninterrupted run (Python API)
    ref = run_study(spec, tmp_path / "reference", device="cpu")
    got = table.set_index("cell")
    ref = ref.set_index("cell")
    assert list(ref.index) == list(got.index) and list(ref["phase"]) == list(got["phase"])
    for column in [c for c in ref.columns if c.endswith("_mean")]:
        for x, y in zip(ref[column], got[column]):
            assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6), column

    # table and figures through the CLI
    assert main(["phase", "table", str(out), "--out", str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.csv").read_text().startswith("cell,")
    assert main(["phase", "plot", str(out), "--metrics", "test_error,cka"]) == 0
    pngs = sorted(p.name for p in (out / "plots" / "phase").glob("*.png"))
    assert pngs == ["cka.png", "overview.png", "phase.png", "test_error.png"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_study_spec_defaults_and_errors(tmp_path):
    study = load_study_spec(_write(tmp_path, SPEC))
    s = study.settings
    assert (s["temperature"], s["load"]) == ("training.batch_size", "model.width")
    assert s["parts"] == ["hessian", "cka", "curves", "lmc", "averaging"]
    assert s["hessian"]["n_samples"] == 64 and s["hessian"]["method"] == "lanczos"
    assert s["thresholds"]["loss_threshold"] == 0.1
    cases = {
        "[phase] 'bogus'": SPEC.replace("[phase]\n", "[phase]\nbogus = 1\n"),
        "[phase] 'temperature'": SPEC.replace("[phase]\n", "[phase]\ntemperature = \"training.lr\"\n"),
        "[grid] 'training.lr'": SPEC.replace('"training.seed" = [0, 1]', '"training.seed" = [0, 1]\n'
                                                                         '"training.lr" = [0.1, 0.2]'),
        "[phase.curves] 'lrr'": SPEC.replace("[phase.curves]\n", "[phase.curves]\nlrr = 1\n"),
        "unknown setting 'nsamples'": SPEC.replace("[phase.cka]\n", "[phase.cka]\nnsamples = 1\n"),
        "'epoch'": SPEC.replace("[phase]\n", "[phase]\nepoch = 9\n"),
        "'parts'": SPEC.replace("[phase]\n", "[phase]\nparts = [\"hessian\", \"x\"]\n"),
    }
    for message, text in cases.items():
        with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_study_spec(_write(tmp_path, text))
    no_axis = SPEC.replace('"training.batch_size" = [16, 128]', '"training.momentum" = [0.5, 0.9]')
    with pytest.raises(SpecError, match="varies none of"):
        load_study_spec(_write(tmp_path, no_axis))
    # the CLI reports spec errors with exit code 2 and writes nothing
    assert main(["phase", "run", str(_write(tmp_path, cases["[phase] 'bogus'"])), "--out",
                 str(tmp_path / "z")]) == 2
    assert not (tmp_path / "z").exists()


def test_epoch_averaging_needs_its_checkpoints(tmp_path):
    text = SPEC.replace('epochs = "all"', "epochs = [0, 3]").replace("parts", "x")
    text = text.replace("[phase]\n", '[phase]\nparts = ["averaging"]\n')
    with pytest.raises(SpecError, match=r"checkpoints at epochs \[2, 3\]; missing \[2\]"):
        run_study(_write(tmp_path, text), tmp_path / "z", device="cpu")
    assert not (tmp_path / "z").exists()


def test_partial_study_on_an_existing_zoo(tmp_path, capsys):
    text = SPEC.replace("[phase]\n", '[phase]\nparts = ["cka"]\n').replace("epochs = 3", "epochs = 1")
    text = text.replace("average_last = 2", "average_last = 1")
    out = tmp_path / "z"
    with pytest.warns(UserWarning, match="phases not classified"):
        table = run_study(_write(tmp_path, text), out, device="cpu")
    assert "phase" not in table.columns and list(table["cka_n"]) == [1] * N_CELLS
    assert list(table["test_error_n"]) == [2] * N_CELLS
    rows = _rows(out / "catalog.sqlite")
    # the zoo directory itself as SPEC: its stored settings, nothing trained or computed again
    with pytest.warns(UserWarning, match="phases not classified"):
        assert main(["phase", "run", str(out), "--device", "cpu", "--quiet"]) == 0
    assert _rows(out / "catalog.sqlite") == rows
    assert "cka" in capsys.readouterr().out
    with pytest.warns(UserWarning):
        written = plot_study(out, metrics=["cka"])
    assert sorted(written) == ["cka", "overview"]
