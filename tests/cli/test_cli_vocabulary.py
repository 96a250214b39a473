"""One vocabulary: every command-line option is spelled as docs/glossary.md says (zooscape.cli._common)."""

import argparse
import re
from pathlib import Path

import pytest

from zooscape.cli import build_parser, main

GLOSSARY = Path(__file__).resolve().parents[2] / "docs" / "glossary.md"
#: zoo-wide commands: each runs its tasks on the zoo's engines.
ZOO_WIDE = ("zoo train", "metrics run", "curve pairs", "lmc pairs", "sparsify twins", "sparsify prune", "phase run")


def _commands(parser=None, path=()):
    parser = parser or build_parser()
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _glossary_options():
    text = GLOSSARY.read_text()
    current, deprecated = set(), set()
    section = text.split("## Deprecated spellings")
    for opt in re.findall(r"`(--[a-z][a-z0-9-]*)", section[0]):
        current.add(opt)
    for old, _new in re.findall(r"^\| `(--[a-z0-9-]+)` \| `(--[a-z0-9-]+)`", section[1], re.M):
        deprecated.add(old)
    return current, deprecated


def test_every_option_of_every_command_is_in_the_glossary():
    current, deprecated = _glossary_options()
    assert {"--out", "--quiet", "--n-points", "--workers", "--engine", "--device", "--splits"} <= current
    unknown, hidden_unknown = [], []
    for name, parser in _commands():
        for action in parser._actions:
            for opt in action.option_strings:
                if not opt.startswith("--"):
                    continue
                if action.help == argparse.SUPPRESS:
                    if opt not in deprecated:
                        hidden_unknown.append(f"{name}: {opt}")
                elif opt not in current:
                    unknown.append(f"{name}: {opt}")
    assert not unknown, f"options not in docs/glossary.md: {unknown}"
    assert not hidden_unknown, f"hidden options that are not documented deprecated spellings: {hidden_unknown}"


def test_no_old_spelling_is_a_visible_option():
    _, deprecated = _glossary_options()
    assert {"--no-progress", "--output", "--num-points", "--split"} <= deprecated
    for name, parser in _commands():
        for action in parser._actions:
            visible = action.help != argparse.SUPPRESS
            assert not (visible and set(action.option_strings) & deprecated), (name, action.option_strings)


def test_zoo_wide_commands_take_workers_and_engine_and_device_defaults_to_auto():
    commands = dict(_commands())
    for name in ZOO_WIDE:
        opts = {o for a in commands[name]._actions for o in a.option_strings}
        assert {"--workers", "--engine", "--quiet", "--device"} <= opts, name
    for name, parser in commands.items():
        for action in parser._actions:
            if "--device" in action.option_strings:
                assert action.default == "auto", name


def test_deprecated_spelling_still_works_and_warns(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('[zoo]\nname = "v"\n[dataset]\nname = "digits"\n[model]\nname = "mlp"\nwidth = 4\ndepth = 1\n'
                    '[training]\nepochs = 1\nbatch_size = 256\n')
    assert main(["zoo", "train", str(spec), "--out", str(tmp_path / "z"), "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--no-progress is deprecated" in err and "use --quiet" in err
    args = build_parser().parse_args(["lmc", "pairs", "d", "--num-points", "7", "--split", "test"])
    assert args.n_points == 7 and args.splits == "test"


@pytest.mark.parametrize("argv", [["lmc", "pairs", "d", "--n-points", "x"]])
def test_bad_values_are_usage_errors(argv):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
