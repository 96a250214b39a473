"""LMC during training ([lmc] every = ... in a zoo spec): the series, its agreement with lmc pairs, resuming."""

import pytest
from studies_specs import mlp_digits_spec

from zooscape.cli import main
from zooscape.studies.lmc_pairs import pair_barriers
from zooscape.studies.lmc_train import seed_pairs, training_lmc_records
from zooscape.zoo import train_zoo
from zooscape.zoo.lmc_section import LmcKeyError, check_lmc_section, measure_epochs, training_lmc
from zooscape.zoo.spec import SpecError, load_spec

SPEC = mlp_digits_spec("lmc-train", 5, extra="""
[lmc]
every = 0.2
align = "weight"
renorm = "repair"
n_points = 5
splits = ["test"]
""")
KEY = "barrier_loss_test_linear"


def _series(records):
    out = {}
    for r in records:
        out.setdefault((r["model_id"], r["other_id"]), []).append((r["epoch"], r[KEY], r["naive_" + KEY]))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmctrain")
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    train_zoo(spec, root / "zoo", device="cpu", progress=False).close()
    return root, spec, root / "zoo"


def test_series_at_every_fraction_and_last_step_equals_lmc_pairs(trained):
    _, _, out = trained
    records = training_lmc_records(out)
    (series,) = _series(records).values()
    assert [e for e, _, _ in series] == [0, 1, 2, 3, 4, 5]
    assert records[-1]["progress"] == 1.0 and records[0]["cell_label"] == "cell 0"
    # barriers grow from the common-init-free start and alignment + REPAIR keeps them below the naive ones
    assert all(final <= naive + 1e-6 for e, final, naive in series if e > 0)
    (pair,) = pair_barriers(out, n_points=5, splits=("test",), align="weight", renorm="repair", device="cpu")
    last = records[-1]
    for key in (KEY, "naive_" + KEY, "aligned_" + KEY, "barrier_error_test_linear", "distance", "align_objective"):
        assert last[key] == pytest.approx(pair[key], rel=1e-9, abs=1e-12), key


def test_a_killed_run_continues_the_series_without_gaps_or_duplicates(trained, tmp_path, monkeypatch):
    import zooscape.zoo.task as task_module

    _, spec, reference = trained
    real = task_module._write_resume
    calls = {"n": 0}

    def dies_after_epoch_3(store, task, state, recorder):
        calls["n"] += 1
        if recorder.last_epoch == 3 and calls["n"] < 10:
            calls["n"] = 10
            raise KeyboardInterrupt("killed")  # after epoch 3's LMC rows, before its resume file
        return real(store, task, state, recorder)

    monkeypatch.setattr(task_module, "_write_resume", dies_after_epoch_3)
    out = tmp_path / "zoo"
    with pytest.raises(KeyboardInterrupt):
        train_zoo(spec, out, device="cpu", progress=False)
    partial = _series(training_lmc_records(out))
    assert [e for e, _, _ in next(iter(partial.values()))] == [0, 1, 2, 3]
    monkeypatch.setattr(task_module, "_write_resume", real)
    train_zoo(spec, out, device="cpu", progress=False).close()  # resumes from epoch 2, re-measures 3
    resumed, expected = _series(training_lmc_records(out)), _series(training_lmc_records(reference))
    assert list(resumed) == list(expected)
    for pair, series in resumed.items():
        assert [e for e, _, _ in series] == [0, 1, 2, 3, 4, 5]
        assert [v for row in series for v in row] == pytest.approx([v for row in expected[pair] for v in row],
                                                                   rel=1e-9, abs=1e-12)


def test_plot_and_validate(trained, tmp_path, capsys):
    root, spec, out = trained
    png = tmp_path / "lmc.png"
    assert main(["lmc", "progress", str(out), "--out", str(png), "--metric", "loss"]) == 0
    assert png.stat().st_size > 1000
    assert main(["zoo", "validate", str(spec)]) == 0


def test_lmc_section_is_validated():
    assert measure_epochs(0.1, 10) == list(range(11))
    assert measure_epochs(0.25, 10) == [0, 3, 5, 8, 10]
    assert measure_epochs(1.0, 7) == [0, 7]
    assert training_lmc({}) is None and training_lmc({"k1s": [0]}) is None
    assert training_lmc({"every": 0.5})["renorm"] == "none"
    for bad, match in (({"every": 0}, "every"), ({"every": 1.5}, "every"), ({"align": "x"}, "align"),
                       ({"renorm": "repair2"}, "renorm"), ({"evry": 0.1}, "unknown key"), ([], "table")):
        with pytest.raises(LmcKeyError, match=match):
            check_lmc_section(bad)


def test_spec_errors_name_the_lmc_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(SPEC.replace('renorm = "repair"', 'renorm = "fix"'))
    with pytest.raises(SpecError, match=r"\[lmc\] 'renorm'"):
        load_spec(path)


def test_seed_pairs_stay_within_a_cell():
    cfg = lambda lr, seed: {"dataset": {"name": "d"}, "model": {"name": "mlp"},  # noqa: E731
                            "training": {"lr": lr, "seed": seed}}
    configs = [cfg(0.1, 0), cfg(0.2, 0), cfg(0.1, 1), cfg(0.2, 1), cfg(0.1, 2)]
    ids = ["e", "d", "c", "b", "a"]
    assert seed_pairs(configs, ids) == [(4, 2), (4, 0), (3, 1), (2, 0)]
