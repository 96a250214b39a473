"""The report of a real small zoo (with LMC, curve and landscape results) in headless chromium: every section
renders, no request leaves the page, no console error, tables sort, the screenshot is not blank."""

import io

import numpy as np

from zooscape.cli import main

EXPECTED = ["overview", "spec", "counts", "final", "epochs", "curves", "phase", "lmc", "curve", "landscape",
            "missing"]


def test_report_in_browser(analysed_zoo, tmp_path, capsys, browser_visit):
    html = tmp_path / "report.html"
    assert main(["report", str(analysed_zoo), "--out", str(html), "--quiet"]) == 0
    assert str(html) in capsys.readouterr().out
    shot = tmp_path / "report.png"
    found = {}

    def check(page):
        found["ids"] = page.eval_on_selector_all("section.report-section", "els => els.map(e => e.id)")
        for sid in EXPECTED:
            box = page.locator(f"section#{sid}").bounding_box()
            found[sid] = box
        # every figure decoded (a broken data URI has naturalWidth 0)
        found["imgs"] = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        # sort the per-cell summary by its last column, descending (two clicks), and read the column back
        table = page.locator("section#final table").first
        header = table.locator("th").last
        header.click()
        header.click()
        found["sorted"] = table.locator("tbody tr td:last-child").all_text_contents()
        found["header_class"] = header.get_attribute("class")

    seen = browser_visit(html, check, screenshot=shot)
    assert found["ids"] == EXPECTED
    for sid in EXPECTED:
        assert found[sid] is not None and found[sid]["height"] > 30 and found[sid]["width"] > 300, sid
    assert len(found["imgs"]) >= 10 and all(ok and w > 100 for ok, w in found["imgs"])
    values = [float(v) for v in found["sorted"]]
    assert values == sorted(values, reverse=True) and found["header_class"] == "desc"
    # the only request is the page itself; no console message of type error, no uncaught exception
    assert seen.requests == [html.resolve().as_uri()], seen.requests
    assert [m for m in seen.console if m[0] in ("error", "warning")] == []
    assert seen.page_errors == []
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"), dtype=float)
    assert img.shape[0] > 2000 and img.shape[1] >= 1280
    assert img.std() > 20  # not one flat colour
    assert len(np.unique(img.reshape(-1, 3)[::97], axis=0)) > 50  # text, figures, colours


def test_filter_box_hides_rows(analysed_zoo, tmp_path, browser_visit):
    from zooscape.report import build_report

    html = build_report(analysed_zoo, tmp_path / "r.html")
    counts = {}

    def check(page):
        section = page.locator("section#landscape")
        box = section.locator("input.filter").last
        table = section.locator("table").last
        counts["before"] = sum(table.locator("tbody tr").evaluate_all("rs => rs.map(r => r.style.display !== 'none')"))
        first_id = table.locator("tbody tr td").first.text_content()
        box.fill(first_id)
        counts["after"] = sum(table.locator("tbody tr").evaluate_all("rs => rs.map(r => r.style.display !== 'none')"))

    seen = browser_visit(html, check)
    assert counts["before"] >= 6 and 0 < counts["after"] < counts["before"]
    assert seen.page_errors == []
