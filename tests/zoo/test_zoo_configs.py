"""Every shipped config in configs/ is a valid spec (full validation: data sets load, models build)."""

from pathlib import Path

import pytest
import tomllib

from zooscape.zoo import load_spec, plan_zoo

ALL = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
# curve-connectivity configs (TF-reference style tables, `zooscape curve train`) are validated by their own loader
CURVES = [p for p in ALL if "zoo" not in tomllib.loads(p.read_text())]
# phase-study specs (a zoo spec plus [phase], `zooscape phase run`) are validated by the study's loader
STUDIES = [p for p in ALL if "phase" in tomllib.loads(p.read_text())]
CONFIGS = [p for p in ALL if p not in CURVES and p not in STUDIES]


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.toml", "mzd_cnn_s_digits.toml", "phase_resnet_width_batch.toml"} <= names
    assert {"phase_mlp_digits.toml"} <= {p.name for p in STUDIES}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    plan = plan_zoo(load_spec(path))
    assert plan.configs and plan.groups
    assert sum(len(g.model_ids) for g in plan.groups) == len(plan.configs)
    for cfg in plan.configs:
        d = cfg["derived"]
        assert d["n_params"] > 0 and d["load"] == pytest.approx(d["n_train"] / d["n_params"])


@pytest.mark.parametrize("path", STUDIES + [p for p in CONFIGS if p.name.startswith("phase_")], ids=lambda p: p.name)
def test_study_config_validates(path):
    from zooscape.studies.phase import load_study_spec

    study = load_study_spec(path)
    assert plan_zoo(study.zoo).configs
    assert study.settings["temperature"] == "training.batch_size" and study.settings["load"] == "model.width"


@pytest.mark.parametrize("path", CURVES, ids=lambda p: p.name)
def test_curve_config_validates(path):
    from zooscape.studies.curve_runs import load_curve_config

    assert load_curve_config(path)


def test_quickstart_is_small():
    plan = plan_zoo(load_spec(next(p for p in CONFIGS if p.name == "quickstart.toml")))
    assert len(plan.configs) == 8 and plan.n_model_epochs <= 64


def test_mzd_cnn_s_matches_model_zoos_architecture():
    plan = plan_zoo(load_spec(next(p for p in CONFIGS if p.name == "mzd_cnn_s_digits.toml")))
    assert {c["derived"]["n_params"] for c in plan.configs} == {2464}  # CNN-s, 1 channel, 28x28
