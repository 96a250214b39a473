"""The report's content without a browser: sections follow the data, empty and half-trained zoos say what is
missing, nothing external is referenced, and a 10,000-model catalog gives a small page in seconds."""

import importlib.util
import json
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from report_helpers import chromium_path

from zooscape.report import SECTION_IDS, build_report
from zooscape.zoo import Catalog

BENCH = Path(__file__).resolve().parents[2] / "bench" / "report.py"


def section_ids(html: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)" class="report-section">', html)


def test_sections_of_an_analysed_zoo(analysed_zoo, tmp_path):
    html = build_report(analysed_zoo, tmp_path / "r.html").read_text()
    assert section_ids(html) == [s for s in SECTION_IDS if s not in ("predict", "sparsity")]
    # self-contained: no URL other than data: URIs, no external script/style/link
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert "http://" not in html and "https://" not in html
    assert "default-src 'none'" in html
    assert html.count("data:image/png;base64,") >= 10
    # the landscape table has the Hessian metric per cell; the missing section names what is absent
    assert "hessian_top_eigenvalue" in html and "zooscape predict" in html


def test_predict_scores_file_is_shown(analysed_zoo, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(analysed_zoo, zoo)
    (zoo / "predict").mkdir()
    (zoo / "predict" / "scores.csv").write_text("property,features,score\ntest_acc,wstats,0.75\n")
    html = build_report(zoo).read_text()
    assert "predict" in section_ids(html) and "0.75" in html
    assert (zoo / "report.html").is_file()


def test_empty_zoo_says_what_is_missing(empty_zoo, tmp_path):
    html = build_report(empty_zoo, tmp_path / "r.html").read_text()
    assert section_ids(html) == ["overview", "spec", "counts", "missing"]
    assert "Training is not finished: 6 pending" in html
    for how in ("zooscape zoo train SPEC --out ZOO", "zooscape lmc pairs ZOO", "zooscape curve pairs ZOO"):
        assert how in html


def test_half_trained_zoo_renders_what_exists(analysed_zoo, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(analysed_zoo, zoo)
    con = sqlite3.connect(zoo / "catalog.sqlite")
    ids = [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id")][:3]
    with con:
        con.executemany("DELETE FROM metrics WHERE model_id = ? AND epoch > 0", [(m,) for m in ids])
        con.executemany("UPDATE models SET status = 'running' WHERE model_id = ?", [(m,) for m in ids])
        con.execute("DELETE FROM analyses")
    con.close()
    html = build_report(zoo, tmp_path / "r.html").read_text()
    assert section_ids(html) == ["overview", "spec", "counts", "final", "epochs", "curves", "phase", "missing"]
    assert "Training is not finished: 3 running" in html
    assert "no barriers stored" in html


def test_not_a_zoo(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a zoo directory"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_missing_browser_fails_with_the_command(monkeypatch):
    monkeypatch.setenv("ZOOSCAPE_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("ZOOSCAPE_SKIP_BROWSER", raising=False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium_path()
    monkeypatch.setenv("ZOOSCAPE_SKIP_BROWSER", "1")
    with pytest.raises(pytest.skip.Exception):
        chromium_path()


def synthetic_zoo(root):
    """The 10,000-model catalog of bench/report.py."""
    spec = importlib.util.spec_from_file_location("bench_report", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.synthetic_zoo(root)


def test_ten_thousand_models_in_seconds(tmp_path):
    zoo = synthetic_zoo(tmp_path / "big")
    start = time.process_time()  # CPU seconds: the shared test machines' load does not count
    out = build_report(zoo, tmp_path / "big.html")
    seconds = time.process_time() - start
    size = out.stat().st_size
    html = out.read_text()
    assert "<td>10000</td>" in html and "lmc" in section_ids(html)
    assert size < 3e6, size
    assert seconds < 30, seconds  # about 4 s (bench/report.py)
    with Catalog(zoo / "catalog.sqlite", readonly=True) as catalog:
        assert catalog.query("SELECT COUNT(*) FROM models")[0][0] == 10_000


def test_twins_are_counted(analysed_zoo, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(analysed_zoo, zoo)
    con = sqlite3.connect(zoo / "catalog.sqlite")
    mid, gid, config = con.execute("SELECT model_id, group_id, config FROM models LIMIT 1").fetchone()
    twin = json.loads(config)
    twin["derived"]["twin"] = {"source": mid, "sparsity": 0.5}
    with con:
        con.execute("INSERT INTO models (model_id, group_id, config, status, updated) VALUES (?, ?, ?, 'done', 'x')",
                    (mid + "-twin", gid, json.dumps(twin)))
    con.close()
    html = build_report(zoo, tmp_path / "r.html").read_text()
    assert re.search(r"<td>twins</td><td>1</td>", html)


def test_pruning_results_make_the_sparsity_section(analysed_zoo, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(analysed_zoo, zoo)
    con = sqlite3.connect(zoo / "catalog.sqlite")
    ids = [r[0] for r in con.execute("SELECT model_id FROM models")]
    rows = []
    for mid in ids:
        for method in ("magnitude", "random"):
            for sp in (0.5, 0.9):
                params = json.dumps({"experiment": "prune", "method": method, "sparsity": sp, "renorm": "none"},
                                    sort_keys=True)
                rows += [(mid, 2, "test_acc", 1 - sp / 2, params), (mid, 2, "sparsity", sp, params)]
    with con:
        con.executemany("INSERT INTO analyses (model_id, other_id, epoch, metric, value, params, created) "
                        "VALUES (?, NULL, ?, ?, ?, ?, 'now')", rows)
    con.close()
    html = build_report(zoo, tmp_path / "r.html").read_text()
    assert "sparsity" in section_ids(html)
    assert "one-shot pruning: test accuracy vs sparsity" in html
