"""zooscape.report: one self-contained HTML page per zoo (``zooscape report ZOO``).

>>> from zooscape.report import build_report
>>> build_report("runs/quickstart", "report.html")   # doctest: +SKIP

The page inlines its styles, scripts and figures (PNG data URIs) and forbids every request with a
Content-Security-Policy; tables are sortable (click a header) and filterable. See ``docs/report.md``.
"""

from zooscape.report.build import SECTION_IDS, Section, build_report, collect_sections, render_report

__all__ = ["SECTION_IDS", "Section", "build_report", "collect_sections", "render_report"]
