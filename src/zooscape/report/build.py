"""Build the self-contained HTML report of a zoo (``zooscape report ZOO``).

The page is one file: styles, a few lines of JavaScript (sortable, filterable tables) and every figure (PNG data
URIs) are inlined, and a Content-Security-Policy forbids any request, so it opens offline and can be mailed.
Sections (:mod:`zooscape.report.sections`) appear when the catalog holds their data; the last section lists what
is missing and the command that adds it. Everything is aggregated per grid cell or per epoch (never one row or
one line per model), so the report of a 10,000-model zoo stays small and builds in seconds (``bench/report.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zooscape.report import sections as sec
from zooscape.report.sections import SECTION_IDS, Section, Table

__all__ = ["SECTION_IDS", "Section", "build_report", "collect_sections", "render_report"]

#: What each optional section needs, and how to get it.
HOW_TO = {
    "final": "no metrics recorded yet: zooscape zoo train SPEC --out ZOO",
    "epochs": "no metrics recorded yet: zooscape zoo train SPEC --out ZOO",
    "curves": "training curves need at least two recorded epochs",
    "phase": "no final-epoch metrics to map",
    "lmc": "no barriers stored: zooscape lmc pairs ZOO",
    "curve": "no curve results stored: zooscape curve pairs ZOO",
    "landscape": "no landscape metrics stored: zooscape metrics run ZOO --metric hessian|fisher|spectra|cka",
    "predict": "no property-prediction scores: zooscape predict ZOO --out ZOO/predict/scores.csv",
    "sparsity": "no sparsity results stored",
}


def collect_sections(zoo: Any, progress: Callable[[str], None] | None = None) -> list[Section]:
    """Every section the zoo has data for, then the ``missing`` section.

    Args:
        zoo: an open :class:`zooscape.zoo.Zoo`.
        progress: optional ``fn(message)``.

    Returns:
        sections in :data:`SECTION_IDS` order.
    """
    say = progress or (lambda message: None)
    d = sec.ZooData(zoo, say)
    say("drawing figures")
    built = sec.all_sections(d)
    missing = Section("missing", "What is missing")
    counts = zoo.status_counts()
    unfinished = {k: v for k, v in counts.items() if k in ("pending", "running")}
    if not counts:
        missing.text.append("The catalog has no models.")
    if unfinished:
        missing.text.append("Training is not finished: " + ", ".join(f"{v} {k}" for k, v in unfinished.items())
                            + " (re-run zooscape zoo train with the same spec to resume).")
    gone = [[k, HOW_TO[k]] for k, v in built.items() if v is None]
    if gone:
        missing.tables.append(("sections without data", Table(["section", "what is missing"], gone)))
    if not gone and not missing.text:
        missing.text.append("Nothing: every section has data.")
    return [s for s in built.values() if s is not None] + [missing]


def render_report(sections: Sequence[Section], title: str) -> str:
    """Render sections to the HTML page with the package's Jinja2 template.

    Args:
        sections: from :func:`collect_sections`.
        title: page title.

    Returns:
        HTML text (self-contained).
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("zooscape.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(title=title, sections=sections)


def build_report(zoo_dir: str | Path, out: str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Write the self-contained HTML report of a zoo.

    Args:
        zoo_dir: zoo directory (may be empty, half-trained or still training).
        out: output file (default ``<zoo_dir>/report.html``); written atomically.
        progress: optional ``fn(message)``.

    Returns:
        the written path.

    Raises:
        FileNotFoundError: ``zoo_dir`` is not a zoo directory.
    """
    from zooscape._io import atomic_write_bytes
    from zooscape.zoo import open as open_zoo

    out = Path(out) if out is not None else Path(zoo_dir) / "report.html"
    with open_zoo(zoo_dir) as zoo:
        sections = collect_sections(zoo, progress)
        title = sections[0].title
    html = render_report(sections, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, html.encode("utf-8"))
    return out
