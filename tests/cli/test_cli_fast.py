"""Metadata commands stay cheap: ``--help``, ``zoo info`` and ``zoo verify`` import neither torch nor pandas, and the
pandas-free summary of ``zoo info`` gives the numbers of the DataFrame path (issue 20: ``zoo info`` well under 1 s)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_zoo import SPEC as CLI_SPEC

from zooscape.zoo import open_zoo, train_zoo
from zooscape.zoo.spec import load_spec, load_stored_spec
from zooscape.zoo.summary import at_epoch, cell_axes, cell_records, cell_summary, records_at_epoch

# the CLI tests' zoo with two epochs and one checkpoint between them
SPEC = CLI_SPEC.replace("epochs = 1", "epochs = 2").replace('epochs = "all"', "epochs = [1]")
assert SPEC.count("epochs = 2") == 1 and "epochs = [1]" in SPEC

PROBE = """
import json, sys
from zooscape.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print(json.dumps({"rc": rc, "heavy": [m for m in ("torch", "pandas") if m in sys.modules]}))
"""


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fast")
    spec = tmp / "spec.toml"
    spec.write_text(SPEC)
    train_zoo(spec, tmp / "zoo", device="cpu", progress=False).close()
    return tmp / "zoo"


def _probe(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["zoo", "--help"], ["zoo", "info", "ZOO"], ["zoo", "verify", "ZOO"],
                                  ["zoo", "info", "ZOO", "--epoch", "1", "--metrics", "test_acc,val_loss"]])
def test_metadata_commands_import_neither_torch_nor_pandas(zoo_dir, argv):
    result = _probe([str(zoo_dir) if a == "ZOO" else a for a in argv])
    assert result["rc"] == 0
    assert result["heavy"] == [], f"zooscape {' '.join(argv)} imported {result['heavy']}"


def _cells(header, rows):
    return {tuple(r[: header.index("n")]): dict(zip(header, r)) for r in rows}


@pytest.mark.parametrize("epoch", [None, 0, 1, 2])
def test_summary_without_pandas_equals_the_dataframe_path(zoo_dir, epoch):
    with open_zoo(zoo_dir) as zoo:
        axes = cell_axes(list(zoo.spec.grid))
        metrics = ["test_acc", "test_loss", "train_loss", "val_acc", "not_a_metric"]
        records, names = records_at_epoch(zoo, epoch)
        header, rows = cell_records(records, axes, metrics, set(names).union(*records))
        expected = cell_summary(at_epoch(zoo.table(), epoch), axes, metrics)
    assert "not_a_metric_mean" not in header and len(rows) == len(expected) == 4
    assert header == list(expected.columns)
    got = _cells(header, rows)
    for row in expected.to_dict("records"):
        mine = got[tuple(row[a] for a in axes)]
        assert mine["n"] == row["n"] == 2
        for col in header[len(axes) + 1:]:
            assert math.isclose(mine[col], row[col], rel_tol=1e-12, abs_tol=1e-15), (col, mine[col], row[col])


def test_cell_records_skips_missing_values_like_pandas():
    import pandas as pd

    records = [{"a": 1, "m": 0.5}, {"a": 1, "m": float("nan")}, {"a": 1, "m": 1.5}, {"a": 2, "m": 2.0}, {"a": 2}]
    header, rows = cell_records(records, ["a"], ["m"], ["a", "m"])
    expected = cell_summary(pd.DataFrame.from_records(records), ["a"], ["m"])
    assert header == list(expected.columns)
    assert rows[0][:3] == [1, 3, 1.0] and math.isclose(rows[0][3], expected["m_std"][0])
    assert rows[1][:3] == [2, 2, 2.0] and math.isnan(rows[1][3]) and math.isnan(expected["m_std"][1])
    with pytest.raises(KeyError, match="axis 'b'"):
        cell_records(records, ["b"], ["m"], ["a", "m"])


def test_stored_spec_needs_no_registries_only_when_it_is_the_zoos(zoo_dir, tmp_path):
    with open_zoo(zoo_dir) as zoo:
        fingerprint = zoo.catalog.meta()["spec_fingerprint"]
    path = zoo_dir / "spec.toml"
    assert load_stored_spec(path, fingerprint) == load_spec(path)
    assert load_stored_spec(path, None) is None
    # a value the full validation coerces (int -> float for TrainConfig.lr): the quick reading declines
    edited = tmp_path / "spec.toml"
    edited.write_text(SPEC.replace("lr = 0.001", "lr = 1"))
    assert load_stored_spec(edited, load_spec(edited).fingerprint()) is None
    # a spec of another zoo, and an unparsable one
    edited.write_text(SPEC.replace("width = 8", "width = 9"))
    assert load_stored_spec(edited, fingerprint) is None
    edited.write_text("[zoo\n")
    assert load_stored_spec(edited, fingerprint) is None


def test_zoo_spec_with_a_coerced_value_still_reads(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("lr = 0.001", "lr = 1").replace('"training.lr" = [0.001, 0.01]\n', "")
                    .replace("epochs = 2", "epochs = 1"))
    train_zoo(spec, tmp_path / "zoo", device="cpu", progress=False).close()
    with open_zoo(tmp_path / "zoo") as zoo:
        assert zoo.spec == load_spec(Path(tmp_path / "zoo" / "spec.toml"))
        assert zoo.spec.training["lr"] == 1.0 and isinstance(zoo.spec.training["lr"], float)
