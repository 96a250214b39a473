"""Helpers of the report tests: the test zoo's spec and a headless chromium driven by Playwright
(``executable_path``: Playwright's own browsers are not downloaded)."""

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SPEC = """
[zoo]
name = "reporttest"
description = "report test zoo: 2 learning rates x 3 seeds"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 8
depth = 1

[training]
epochs = 2
batch_size = 64
optimizer = "adam"
lr = 0.003

[checkpoints]
epochs = "all"

[grid]
"training.lr" = [0.003, 0.01]
"training.seed" = [0, 1, 2]
"""


def write_spec(folder: Path, text: str = SPEC, name: str = "spec.toml") -> Path:
    """Write a spec file into ``folder``."""
    path = folder / name
    path.write_text(text)
    return path


#: Flags that let chromium run headless as root in a container without any network traffic of its own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL = ("sudo apt-get install -y chromium && .venv/bin/pip install -c constraints.txt -e '.[dev]' "
           "(or: make browser)")


def chromium_path() -> str:
    """The chromium executable, or fail the test with the command that installs it (skip only if
    ``ZOOSCAPE_SKIP_BROWSER=1``)."""
    path = os.environ.get("ZOOSCAPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    problem = None
    if not Path(path).is_file():
        problem = f"no chromium at {path}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed"
    if problem:
        if os.environ.get("ZOOSCAPE_SKIP_BROWSER") == "1":
            pytest.skip(f"{problem} (ZOOSCAPE_SKIP_BROWSER=1)")
        pytest.fail(f"{problem}: the browser test needs Debian's chromium and Playwright; run: {INSTALL}")
    return path


@dataclass
class PageVisit:
    """What happened while a page was open."""

    requests: list[str] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


def visit(html: Path, check: Any, screenshot: Path | None = None, width: int = 1280) -> PageVisit:
    """Open ``html`` in headless chromium, call ``check(page)``, take a full-page screenshot.

    Every request is intercepted: the page's own file is served, anything else is recorded and aborted.
    """
    from playwright.sync_api import sync_playwright

    own = html.resolve().as_uri()
    seen = PageVisit()

    def route(r: Any) -> None:
        seen.requests.append(r.request.url)
        if r.request.url == own:
            r.continue_()
        else:
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: seen.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: seen.page_errors.append(str(e)))
            page.route("**/*", route)
            page.goto(own, wait_until="load")
            page.wait_for_selector("body[data-report-ready='1']", timeout=10_000)
            check(page)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen
