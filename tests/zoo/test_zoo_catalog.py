"""Catalog: schema, idempotent upserts, all-or-nothing transactions, read-only readers."""

import math

import pytest

from zooscape.zoo.catalog import SCHEMA_VERSION, Catalog, CatalogError


def configs(n):
    return [
        {"model_id": f"m{i}", "group_id": "g0", "dataset": {"name": "d"}, "model": {"name": "mlp"},
         "training": {"lr": 0.1 * (i + 1), "seed": i},
         "derived": {"n_params": 10, "temperature": 0.1 * (i + 1) / 32, "load": 2.5}}
        for i in range(n)
    ]


@pytest.fixture()
def cat(tmp_path):
    c = Catalog(tmp_path / "catalog.sqlite", create=True)
    c.add_models(configs(3))
    yield c
    c.close()


def test_schema(cat):
    cols = lambda t: [r[1] for r in cat.query(f"PRAGMA table_info({t})")]
    assert cols("models") == ["model_id", "group_id", "config", "status", "reason", "n_params", "temperature",
                              "load", "updated"]
    assert cols("metrics") == ["model_id", "epoch", "name", "value"]
    assert cols("checkpoints") == ["model_id", "epoch", "kind", "file"]
    assert cols("analyses") == ["id", "model_id", "other_id", "epoch", "metric", "value", "params", "created"]
    assert cat.meta()["schema_version"] == str(SCHEMA_VERSION)
    assert cat.query("PRAGMA journal_mode")[0][0] == "wal"


def test_add_models_is_insert_or_ignore(cat):
    assert cat.add_models(configs(5)) == 2
    assert cat.statuses() == {f"m{i}": "pending" for i in range(5)}
    row = cat.query("SELECT temperature, load, n_params FROM models WHERE model_id = 'm1'")[0]
    assert row == (pytest.approx(0.2 / 32), 2.5, 10)


def test_record_upserts(cat):
    rows = [("m0", e, "loss", 1.0 / (e + 1)) for e in range(3)]
    cat.record(rows, [("m0", 0, "weights", "checkpoints/g0/e000000.weights.safetensors")],
               {"m0": ("running", None)})
    cat.record(rows[:1] + [("m0", 1, "loss", 9.0)])  # replayed epoch 0, rewritten epoch 1
    got = dict(((e, v) for _, e, _, v in cat.query("SELECT * FROM metrics WHERE model_id='m0'")))
    assert got == {0: 1.0, 1: 9.0, 2: pytest.approx(1 / 3)}
    assert cat.query("SELECT COUNT(*) FROM metrics")[0][0] == 3
    assert cat.statuses(["m0", "m1"]) == {"m0": "running", "m1": "pending"}


def test_nan_is_stored_as_null(cat):
    cat.record([("m0", 1, "loss", math.nan), ("m0", 1, "acc", math.inf)])
    assert cat.query("SELECT value FROM metrics WHERE model_id='m0'") == [(None,), (None,)]


def test_record_is_all_or_nothing(cat):
    def rows():
        yield ("m1", 0, "loss", 1.0)
        yield ("m1", 1, "loss", 0.5)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        cat.record(rows(), statuses={"m1": ("done", None)})
    assert cat.query("SELECT COUNT(*) FROM metrics")[0][0] == 0
    assert cat.statuses()["m1"] == "pending"
    with pytest.raises(ValueError, match="status of 'm1'"):
        cat.record([("m1", 0, "loss", 1.0)], statuses={"m1": ("finished", None)})
    assert cat.query("SELECT COUNT(*) FROM metrics")[0][0] == 0
    with pytest.raises(CatalogError, match="CHECK constraint"):  # inside the database; names the file
        with cat.transaction() as con:
            con.execute("UPDATE models SET status = 'exploded' WHERE model_id = 'm2'")
    assert cat.statuses()["m2"] == "pending"


def test_readonly_reader_sees_commits_and_cannot_write(cat, tmp_path):
    reader = Catalog(tmp_path / "catalog.sqlite", readonly=True)
    try:
        cat.record([("m2", 0, "acc", 0.5)])
        assert reader.query("SELECT value FROM metrics") == [(0.5,)]
        with pytest.raises(PermissionError):
            reader.record([("m2", 1, "acc", 0.6)])
        with pytest.raises(CatalogError, match="readonly"):
            reader.query("INSERT INTO meta VALUES ('x', 'y')")
    finally:
        reader.close()


def test_missing_catalog(tmp_path):
    with pytest.raises(FileNotFoundError, match="catalog"):
        Catalog(tmp_path / "none.sqlite")


def test_analyses_replace(cat):
    rows = [{"model_id": "m0", "other_id": None, "epoch": 2, "metric": "trace", "value": 3.0, "params": {"k": 1}},
            {"model_id": "m0", "other_id": "m1", "epoch": 2, "metric": "barrier", "value": 0.1}]
    assert cat.add_analyses(rows) == 2
    cat.add_analyses([{**rows[0], "value": 4.0}])
    got = cat.query("SELECT model_id, other_id, metric, value, params FROM analyses ORDER BY id")
    assert got == [("m0", "m1", "barrier", 0.1, "{}"), ("m0", None, "trace", 4.0, '{"k": 1}')]
    cat.add_analyses([{**rows[0], "value": 5.0, "params": {"k": 2}}])  # other params: kept separately
    assert cat.query("SELECT COUNT(*) FROM analyses WHERE metric='trace'")[0][0] == 2
    with pytest.raises(KeyError, match="metric"):
        cat.add_analyses([{"model_id": "m0", "value": 1.0}])
