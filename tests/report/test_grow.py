"""Growing a zoo trains only the new models and equals (bitwise) the zoo trained at once; changes that would alter
existing models are refused with the keys named; zoo merge of compatible zoos."""

import numpy as np
import pytest
import torch
from report_helpers import SPEC, write_spec

from zooscape.cli import main
from zooscape.zoo import ZooExistsError, train_zoo
from zooscape.zoo import open as open_zoo

SEEDS = '"training.seed" = [0, 1, 2]'


def spec_with(tmp, seeds, name, extra=("", "")):
    text = SPEC.replace(SEEDS, f'"training.seed" = {seeds}').replace(*extra)
    return write_spec(tmp, text, name)


def same_zoo(a, b):
    """Every model of a is in b with bitwise equal weights at every checkpoint and equal metrics."""
    with open_zoo(a) as za, open_zoo(b) as zb:
        assert za.model_ids == zb.model_ids
        for mid in za.model_ids:
            assert za.epochs(mid) == zb.epochs(mid) == [0, 1, 2]
            for e in za.epochs(mid):
                sa, sb = za.state_dict(mid, e), zb.state_dict(mid, e)
                assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), (mid, e)
        ma, mb = za.metrics(), zb.metrics()
        keep = lambda m: m[m["name"] != "epoch_time_s"].sort_values(["model_id", "epoch", "name"]).reset_index(
            drop=True)  # noqa: E731
        ka, kb = keep(ma), keep(mb)
        assert ka[["model_id", "epoch", "name"]].equals(kb[["model_id", "epoch", "name"]])
        # evaluation runs all members of a population through one GEMM (shared-input path) whose blocking depends
        # on the population's size: the evaluated losses agree to float32 rounding, the weights above bitwise
        np.testing.assert_allclose(ka["value"], kb["value"], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def at_once(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grow")
    return train_zoo(spec_with(tmp, [0, 1, 2, 3], "all.toml"), tmp / "all", progress=False).path


def test_grow_by_two_seeds_equals_training_at_once(at_once, tmp_path, capsys):
    zoo = tmp_path / "zoo"
    assert main(["zoo", "train", str(spec_with(tmp_path, [0, 1], "small.toml")), "--out", str(zoo), "--quiet"]) == 0
    shards = {p: p.stat().st_mtime_ns for p in (zoo / "checkpoints").rglob("*.safetensors")}
    big = spec_with(tmp_path, [0, 1, 2, 3], "big.toml")
    assert main(["zoo", "train", str(big), "--out", str(zoo), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("8 done")
    # the first four models were not retrained: their shards are the same files, untouched
    assert all(p.stat().st_mtime_ns == t for p, t in shards.items())
    with open_zoo(zoo) as z:
        assert len(z.model_ids) == 8 and z.spec.grid["training.seed"] == (0, 1, 2, 3)
    assert (zoo / "spec.toml").read_text() == big.read_text()
    same_zoo(zoo, at_once)
    # re-running the grown spec is a no-op resume; the old, smaller spec is now a different spec
    assert main(["zoo", "train", str(big), "--out", str(zoo), "--quiet"]) == 0
    assert main(["zoo", "train", str(tmp_path / "small.toml"), "--out", str(zoo), "--quiet"]) == 1
    assert "'training.seed': values removed: [2, 3]" in capsys.readouterr().err


@pytest.mark.parametrize("change, named", [
    (("epochs = 2", "epochs = 3"), "training.epochs: 2 -> 3"),
    (("width = 8", "width = 9"), "model.width: 8 -> 9"),
    (('"training.lr" = [0.003, 0.01]', '"training.lr" = [0.003, 0.02]'), "'training.lr': values removed: [0.01]"),
])
def test_changes_to_existing_models_are_refused(at_once, tmp_path, change, named):
    before = (at_once / "spec.toml").read_text()
    with pytest.raises(ZooExistsError, match="holds a zoo created from a different spec") as info:
        train_zoo(spec_with(tmp_path, [0, 1, 2, 3, 4], "bad.toml", change), at_once, progress=False)
    assert named in str(info.value)
    assert (at_once / "spec.toml").read_text() == before
    with open_zoo(at_once) as z:
        assert len(z.model_ids) == 8


def test_merge(at_once, tmp_path, capsys):
    a = train_zoo(spec_with(tmp_path, [0, 1], "a.toml"), tmp_path / "a", progress=False).path
    b = train_zoo(spec_with(tmp_path, [2, 3], "b.toml"), tmp_path / "b", progress=False).path
    assert main(["zoo", "merge", str(a), str(b), "--out", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.strip().endswith("8 done")
    same_zoo(tmp_path / "c", at_once)
    with open_zoo(tmp_path / "c") as c, open_zoo(at_once) as full:
        assert c.spec.fingerprint() == full.spec.fingerprint()
    # the merged zoo is complete: training it again trains nothing
    assert main(["zoo", "train", str(tmp_path / "c" / "spec.toml"), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    bad = train_zoo(spec_with(tmp_path, [5], "d.toml", ("epochs = 2", "epochs = 1")), tmp_path / "d", progress=False)
    assert main(["zoo", "merge", str(a), str(bad.path), "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err
    assert "their specs differ in training.epochs: 2 -> 1" in err and not (tmp_path / "e").exists()
