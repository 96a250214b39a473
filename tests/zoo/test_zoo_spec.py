"""Spec parsing and validation: every error names the file and the key."""

from pathlib import Path

import pytest

from zooscape.zoo import SpecError, dump_spec, expand_spec, load_spec, parse_spec

BASE = """
[zoo]
name = "t"

[dataset]
name = "digits"
seed = 42

[model]
name = "mlp"
width = 8

[training]
epochs = 2
batch_size = 32
optimizer = "adam"
lr = 0.001

[checkpoints]
epochs = "all"

[grid]
"training.seed" = [0, 1]
"training.lr" = [0.001, 0.01]
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_spec_parses(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    assert spec.name == "t"
    assert spec.dataset == {"name": "digits", "seed": 42}
    assert spec.grid == {"training.seed": (0, 1), "training.lr": (0.001, 0.01)}
    assert spec.checkpoint_epochs == "all"
    assert spec.save_optimizer is True
    assert spec.max_population == 64


def test_dump_roundtrip(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    again = load_spec(write(tmp_path, dump_spec(spec), "again.toml"))
    assert again.fingerprint() == spec.fingerprint()
    assert again.to_dict() == spec.to_dict()


def test_int_for_float_is_normalised(tmp_path):
    a = load_spec(write(tmp_path, BASE.replace("lr = 0.001", "lr = 1"), "a.toml"))
    b = load_spec(write(tmp_path, BASE.replace("lr = 0.001", "lr = 1.0"), "b.toml"))
    assert isinstance(a.training["lr"], float)
    assert [c["model_id"] for c in expand_spec(a)] == [c["model_id"] for c in expand_spec(b)]


@pytest.mark.parametrize(
    "old,new,key,problem",
    [
        ("[zoo]", "[zooo]\nx = 1\n[zoo]", "[zooo]", "unknown section"),
        ('name = "t"', 'name = "t"\ncolour = "red"', "[zoo] 'colour'", "unknown key"),
        ("lr = 0.001\n", "lr = 0.001\nlrr = 0.1\n", "[training] 'lrr'", "unknown key"),
        ("lr = 0.001\n", 'lr = "fast"\n', "[training] 'lr'", "expected float"),
        ("batch_size = 32", "batch_size = 3.5", "[training] 'batch_size'", "expected int"),
        ("batch_size = 32", "batch_size = true", "[training] 'batch_size'", "expected int"),
        ('optimizer = "adam"', "optimizer = 3", "[training] 'optimizer'", "expected str"),
        ('"training.lr" = [0.001, 0.01]', '"training.lr" = []', "[grid] 'training.lr'", "empty list"),
        ('"training.lr" = [0.001, 0.01]', '"training.lr" = 0.1', "[grid] 'training.lr'", "expected a list"),
        ('"training.seed" = [0, 1]', '"training.seed" = [0, "a"]', "[grid] 'training.seed'[1]", "expected int"),
        ('"training.seed" = [0, 1]', '"training.seed" = [0, 0]', "[grid] 'training.seed'", "duplicate"),
        ('"training.seed" = [0, 1]', '"lr" = [0, 1]', "[grid] 'lr'", "<section>.<key>"),
        ('"training.seed" = [0, 1]', '"training.momentun" = [0.9]', "[grid] 'training.momentun'", "unknown key"),
        ('name = "mlp"', 'name = "mlpp"', "[model] 'name'", "unknown model"),
        ("width = 8", "width = 8\nwidht = 3", "[model] 'widht'", "unknown option"),
        ("seed = 42", "seed = 42\nfoo = 1", "[dataset] 'foo'", "unknown option"),
        ('name = "digits"', 'name = "digitz"', "[dataset] 'name'", "unknown dataset"),
        ("seed = 42", "seed = 42\ntrain_fraction = 1.5", "[dataset] 'train_fraction'", "(0, 1]"),
        ('epochs = "all"', "epochs = [0, 1, 9]", "[checkpoints] 'epochs'", "outside [0, 2]"),
        ('epochs = "all"', 'epochs = "some"', "[checkpoints] 'epochs'", "expected"),
        ("epochs = 2\n", "", "[training] 'epochs'", "missing required key"),
        ("[grid]", "[population]\nmax_size = 0\n[grid]", "[population] 'max_size'", ">= 1"),
        ("[grid]", "[grid\n", "<toml>", "invalid TOML"),
    ],
)
def test_errors_name_file_and_key(tmp_path, old, new, key, problem):
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key
    assert problem in err.problem
    assert str(err) == f"{path}: {key}: {err.problem}"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and "no such file" in str(info.value)


def test_grid_name_values_are_checked(tmp_path):
    text = BASE.replace('"training.seed" = [0, 1]', '"model.name" = ["mlp", "nosuchnet"]')
    with pytest.raises(SpecError, match=r"\[grid\] 'model.name'\[1\]: unknown model"):
        load_spec(write(tmp_path, text))


def test_parse_spec_from_dict():
    import tomllib

    doc = tomllib.loads(BASE)
    spec = parse_spec(doc, "mem.toml")
    assert spec.path == "mem.toml"
    doc["training"]["lr"] = [1, 2]
    with pytest.raises(SpecError, match=r"mem.toml: \[training\] 'lr'"):
        parse_spec(doc, "mem.toml")
