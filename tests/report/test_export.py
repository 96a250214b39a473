"""zoo export: Parquet tables round-trip to zoo.table(); Hugging Face-style folders rebuild the same models."""

import json

import pandas as pd
import pytest
import torch

from zooscape.cli import main
from zooscape.zoo import open as open_zoo
from zooscape.zoo.export import load_hf_model, read_parquet


def test_parquet_round_trip(analysed_zoo, tmp_path, capsys):
    pytest.importorskip("pyarrow", reason="pyarrow is not installable here")
    out = tmp_path / "pq"
    assert main(["zoo", "export", str(analysed_zoo), "--format", "parquet", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["analyses.parquet", "metrics.parquet", "models.parquet",
                                                     "pairs.parquet", "table.parquet"]
    with open_zoo(analysed_zoo) as zoo:
        table, pairs, configs = zoo.table(), zoo.pairs(), zoo.configs()
    back = read_parquet(out / "table.parquet")
    assert "hessian_top_eigenvalue" in back.columns
    pd.testing.assert_frame_equal(back, table)
    pd.testing.assert_frame_equal(read_parquet(out / "pairs.parquet"), pairs)
    pd.testing.assert_frame_equal(read_parquet(out / "models.parquet"), configs)
    # also plain pandas reads it
    assert len(pd.read_parquet(out / "metrics.parquet")) > 0
    # a second export into the same non-empty folder is refused, nothing is changed
    assert main(["zoo", "export", str(analysed_zoo), "--format", "parquet", "--out", str(out)]) == 1
    assert "is not an empty directory" in capsys.readouterr().err


def test_hf_folders(analysed_zoo, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["zoo", "export", str(analysed_zoo), "--format", "hf", "--out", str(out), "--epochs", "1"]) == 0
    with open_zoo(analysed_zoo) as zoo:
        ids = zoo.model_ids
        x = zoo.data().test_x[:16]
        for mid in ids:
            folder = out / mid
            assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
            config = json.loads((folder / "config.json").read_text())
            assert config["model_id"] == mid and config["epoch"] == 1 and "test_acc" in config["metrics"]
            card = (folder / "README.md").read_text()
            assert card.startswith("---\nlibrary_name: zooscape\n") and mid in card
            with torch.no_grad():
                assert torch.equal(load_hf_model(folder)(x), zoo.load_model(mid, 1)(x))
    assert "# Model zoo reporttest" in (out / "README.md").read_text()
    assert len(json.loads((out / "zoo.json").read_text())["models"]) == len(ids)
    assert main(["zoo", "export", str(analysed_zoo), "--format", "hf", "--out", str(tmp_path / "x"),
                 "--epochs", "7"]) == 1
    assert "no weights checkpoint at epoch 7" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
