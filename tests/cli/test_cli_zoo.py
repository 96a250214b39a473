"""The ``zooscape`` command: help/version, spec errors (exit 2, nothing written), train/info/plot, extension."""

import subprocess
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import zooscape
import zooscape.cli as cli
from zooscape.cli import build_parser, main

SPEC = """
[zoo]
name = "clitest"
description = "cli test zoo"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 8
depth = 1

[training]
epochs = 1
batch_size = 64
optimizer = "adam"
lr = 0.001

[checkpoints]
epochs = "all"

[grid]
"training.seed" = [0, 1]
"training.lr" = [0.001, 0.01]
"model.width" = [8, 12]
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"zooscape {zooscape.__version__}"


@pytest.mark.parametrize("argv", [[], ["zoo"], ["zoo", "train"], ["zoo", "validate"], ["zoo", "info"],
                                  ["zoo", "plot"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: zooscape")


def test_group_without_command_prints_help(capsys):
    assert main(["zoo"]) == 2
    assert "train" in capsys.readouterr().err


def test_entry_point_is_declared_and_module_runs():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "zooscape"]
    assert ep.value == "zooscape.cli:run"
    assert ep.load() is cli.run
    res = subprocess.run([sys.executable, "-m", "zooscape.cli", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"zooscape {zooscape.__version__}"


@pytest.mark.parametrize(
    "old,new,key",
    [
        ('"training.lr" = [0.001, 0.01]', '"training.lr" = []', "[grid] 'training.lr': empty list"),
        ("lr = 0.001", "lr = 0.001\nlearning_rate = 1.0", "[training] 'learning_rate': unknown key"),
        ("batch_size = 64", 'batch_size = "big"', "[training] 'batch_size': expected int"),
    ],
)
def test_bad_spec_exit_2_and_nothing_written(tmp_path, capsys, old, new, key):
    spec = write(tmp_path, SPEC.replace(old, new))
    out = tmp_path / "zoo"
    assert main(["zoo", "train", str(spec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {spec}: {key}")
    assert not out.exists()


def test_missing_spec_file(tmp_path, capsys):
    missing = tmp_path / "missing.toml"
    assert main(["zoo", "train", str(missing), "--out", str(tmp_path / "z")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {missing}: <file>: no such file")
    assert not (tmp_path / "z").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    spec = write(tmp, SPEC)
    out = tmp / "zoo"
    assert main(["zoo", "train", str(spec), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return spec, out


def test_train_then_info(trained, capsys):
    _, out = trained
    assert main(["zoo", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "zoo 'clitest'" in text and "models: 8  (done: 8)" in text
    assert "training.lr: 0.001, 0.01" in text and "model.width: 8, 12" in text
    # one summary line per grid cell (lr x width; seeds averaged), with n = 2 seeds each
    lines = [ln.split() for ln in text.splitlines() if ln.strip().startswith(("0.001", "0.01"))]
    assert len(lines) == 4 and all(ln[2] == "2" for ln in lines)


def test_validate(trained, capsys):
    spec, _ = trained
    assert main(["zoo", "validate", str(spec)]) == 0
    text = capsys.readouterr().out
    assert "models: 8  groups: 2  model-epochs: 8" in text


def test_plot(trained, tmp_path, capsys):
    _, out = trained
    png = tmp_path / "heat.png"
    assert main(["zoo", "plot", str(out), "--x", "training.lr", "--y", "model.width", "--metric", "test_acc",
                 "--out", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["zoo", "plot", str(out), "--x", "training.lr", "--y", "model.width", "--epoch", "0"]) == 0
    default = out / "plots" / "test_acc_model_width_vs_training_lr.png"
    assert default.is_file()
    capsys.readouterr()
    assert main(["zoo", "plot", str(out), "--x", "training.lrr", "--y", "model.width"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: x column 'training.lrr' not in the zoo table; available:")


def test_info_on_non_zoo(tmp_path, capsys):
    assert main(["zoo", "info", str(tmp_path)]) == 1
    assert "is not a zoo directory" in capsys.readouterr().err


def test_command_groups_are_pluggable(monkeypatch, capsys):
    mod = types.ModuleType("zooscape_fake_group")

    def add_parser(subparsers):
        p = subparsers.add_parser("fake", help="fake group")
        sub = p.add_subparsers()
        hello = sub.add_parser("hello")
        hello.add_argument("--name", default="zoo")
        hello.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    mod.add_parser = add_parser
    monkeypatch.setitem(sys.modules, "zooscape_fake_group", mod)
    monkeypatch.setattr(cli, "COMMAND_GROUPS", [*cli.COMMAND_GROUPS, "zooscape_fake_group"])
    assert "fake" in build_parser().format_help()
    assert main(["fake", "hello", "--name", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"


def test_python_dash_m_zooscape_runs_the_cli():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "zooscape", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("zooscape ")
