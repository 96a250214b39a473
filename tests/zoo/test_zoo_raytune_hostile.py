"""``zoo import`` of hostile folders (issue 17, defect 2): symlink loops, FIFOs, /dev/zero, huge sparse files,
deeply nested JSON, absurd epoch numbers and absurd model sizes. Each bad trial is skipped with its reason, the good
ones are imported, nothing hangs, nothing is half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import zooscape.zoo as zz
from zooscape.cli import main as cli_main
from zooscape.zoo.raytune import ImportLimits, find_trials, import_raytune

DATASET = {"name": "digits"}


def params(seed: int, **extra) -> dict:
    return {"model::type": "mlp", "model::width": 8, "model::depth": 1, "optim::optimizer": "sgd",
            "optim::lr": 0.01, "seed": seed, "training::batchsize": 16, "training::epochs_train": 1, **extra}


def write_trial(d: Path, seed: int, **extra) -> Path:
    from zooscape.models import create_model

    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(params(seed, **extra)))
    (d / "result.json").write_text("".join(json.dumps({"test_acc": 0.1 * e}) + "\n" for e in range(2)))
    model = create_model("mlp", seed=seed, num_classes=10, input_size=[64], width=8, depth=1)
    for e in range(2):
        (d / f"checkpoint_{e:06d}").mkdir()
        torch.save(model.state_dict(), d / f"checkpoint_{e:06d}" / "checkpoints")
    return d


def hostile_tree(src: Path) -> dict[str, str]:
    """Good trials plus one trial per attack; returns trial name -> expected reason (regex)."""
    write_trial(src / "good_0", 0)
    write_trial(src / "good_1", 1)
    expected = {}
    # directory symlink loops next to the trials (the walk must not follow them)
    loops = src / "loops"
    loops.mkdir()
    os.symlink(".", loops / "a")
    os.symlink(".", loops / "b")
    os.symlink(src, loops / "up")
    # result.json is a FIFO (reading it would block forever)
    write_trial(src / "fifo", 2)
    (src / "fifo" / "result.json").unlink()
    os.mkfifo(src / "fifo" / "result.json")
    expected["fifo"] = r"result\.json.*not a regular file"
    # params.json -> /dev/zero (a symlink, and not a regular file)
    write_trial(src / "zero", 3)
    (src / "zero" / "params.json").unlink()
    os.symlink("/dev/zero", src / "zero" / "params.json")
    expected["zero"] = r"params\.json.*symbolic link"
    # a 2 GB sparse params.json
    write_trial(src / "sparse", 4)
    with open(src / "sparse" / "params.json", "r+b") as fh:
        fh.truncate(2 << 30)
    expected["sparse"] = r"params\.json.*2147483648 bytes.*limit"
    # JSON nested 100,000 deep
    write_trial(src / "deep", 5)
    (src / "deep" / "params.json").write_text("[" * 100_000 + "]" * 100_000)
    expected["deep"] = r"params\.json.*nested deeper than"
    write_trial(src / "deep_results", 6)
    (src / "deep_results" / "result.json").write_text('{"a": ' * 50_000 + "1" + "}" * 50_000 + "\n")
    expected["deep_results"] = r"result\.json.*nested deeper than"
    # an epoch number that does not fit in 64 bits
    write_trial(src / "epoch", 7)
    big = src / "epoch" / "checkpoint_99999999999999999999"
    big.mkdir()
    (big / "checkpoints").write_bytes((src / "epoch" / "checkpoint_000001" / "checkpoints").read_bytes())
    expected["epoch"] = r"checkpoint_99999999999999999999.*epoch.*limit"
    # model::width = 20000 (a 1.6 GB model) with small checkpoints: refused from the checkpoint's shapes
    write_trial(src / "wide", 8)
    p = json.loads((src / "wide" / "params.json").read_text())
    p.update({"model::width": 20000, "model::depth": 2})
    (src / "wide" / "params.json").write_text(json.dumps(p))
    expected["wide"] = r"does not fit model mlp|shape \(8, 64\).*needs \(20000, 64\)"
    # a checkpoint linked to a file outside the import root
    write_trial(src / "link_out", 9)
    target = src.parent / "outside.pt"
    (src / "link_out" / "checkpoint_000001" / "checkpoints").rename(target)
    os.symlink(target, src / "link_out" / "checkpoint_000001" / "checkpoints")
    expected["link_out"] = r"checkpoint_000001/checkpoints.*symbolic link"
    # a checkpoint folder that is a symlink to another trial's
    write_trial(src / "link_dir", 10)
    import shutil

    shutil.rmtree(src / "link_dir" / "checkpoint_000001")
    os.symlink(src / "good_0" / "checkpoint_000001", src / "link_dir" / "checkpoint_000001")
    expected["link_dir"] = r"checkpoint_000001.*symbolic link"
    return expected


RUN = textwrap.dedent("""
    import json, resource, sys
    from zooscape.zoo.raytune import import_raytune
    report = import_raytune(sys.argv[1], sys.argv[2], dataset={"name": "digits"})
    print(json.dumps({"imported": report.imported, "skipped": report.skipped, "warnings": report.warnings,
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    expected = hostile_tree(root / "src")
    res = subprocess.run([sys.executable, "-c", RUN, str(root / "src"), str(root / "zoo")], capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    return root, expected, json.loads(res.stdout.strip().splitlines()[-1])


def test_hostile_trials_are_skipped_with_reasons(hostile):
    root, expected, report = hostile
    skipped = {Path(t).name: reason for t, reason in report["skipped"]}
    assert set(skipped) == set(expected), skipped
    import re

    for name, pattern in expected.items():
        assert re.search(pattern, skipped[name]), (name, skipped[name])
    assert sorted(Path(t).name for t, _ in report["imported"]) == ["good_0", "good_1"]
    assert any("symbolic link" in w and "loops" in w for w in report["warnings"]), report["warnings"]


def test_hostile_import_stays_small_and_writes_a_clean_zoo(hostile):
    root, _, report = hostile
    # the 1.6 GB model was never built: about 0.35 GB measured alone, up to 1.06 GB once on a loaded CI machine
    assert report["maxrss_kb"] < 1_400_000, report["maxrss_kb"]
    with zz.open(root / "zoo") as zoo:
        assert zoo.status_counts() == {"done": 2}
        assert sorted(zoo.catalog.query("SELECT DISTINCT epoch FROM checkpoints")) == [(0,), (1,)]
        for mid in zoo.model_ids:
            zoo.load_model(mid, 1)
    assert not list((root / "zoo").rglob("*.tmp"))
    assert cli_main(["zoo", "verify", str(root / "zoo")]) == 0


def test_walk_does_not_follow_symlinks(tmp_path):
    src = tmp_path / "src"
    write_trial(src / "good", 0)
    (src / "deeper").mkdir()
    for name in "abcdefgh":
        os.symlink("..", src / "deeper" / name)
    assert [p.name for p in find_trials(src)] == ["good"]
    # followed on request, but only inside the root and each directory once
    outside = tmp_path / "elsewhere"
    write_trial(outside / "ext", 1)
    os.symlink(outside, src / "ext_link")
    os.symlink(src / "good", src / "alias")
    found = find_trials(src, follow_symlinks=True)
    assert [p.name for p in found] == ["good"]


def test_limits_are_overridable(tmp_path, capsys):
    src = tmp_path / "src"
    write_trial(src / "good_0", 0)
    write_trial(src / "good_1", 1)
    size = (src / "good_0" / "checkpoint_000000" / "checkpoints").stat().st_size
    with pytest.raises(ValueError, match="no trial"):
        import_raytune(src, tmp_path / "zoo", dataset=DATASET, limits=ImportLimits(max_checkpoint_bytes=size - 1))
    assert not (tmp_path / "zoo").exists()
    report = import_raytune(src, tmp_path / "zoo", dataset=DATASET,
                            limits=ImportLimits(max_checkpoint_bytes=size, max_json_bytes=1 << 12))
    assert len(report.imported) == 2
    rc = cli_main(["zoo", "import", str(src), "--out", str(tmp_path / "zoo2"), "--dataset", "digits",
                   "--max-json-bytes", "10", "--no-progress"])
    assert rc == 1
    assert "params.json" in capsys.readouterr().err


def test_follow_symlinks_inside_the_root(tmp_path):
    src = tmp_path / "src"
    write_trial(src / "t0", 0)
    write_trial(src / "t1", 1)
    write_trial(src / "t2", 2)
    shared = src / "t0" / "checkpoint_000000" / "checkpoints"
    (src / "t1" / "params.json").rename(src / "t1.params.json")
    os.symlink(src / "t1.params.json", src / "t1" / "params.json")  # inside the root: followed
    outside = tmp_path / "outside.json"
    (src / "t2" / "params.json").rename(outside)
    os.symlink(outside, src / "t2" / "params.json")  # outside: refused
    report = import_raytune(src, tmp_path / "zoo", dataset=DATASET, follow_symlinks=True)
    assert sorted(Path(t).name for t, _ in report.imported) == ["t0", "t1"]
    ((trial, reason),) = report.skipped
    assert trial == "t2" and "outside" in reason
    assert shared.is_file()
