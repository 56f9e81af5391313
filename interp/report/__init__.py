"""Reports: analyzer outputs gathered into a :class:`ReportData` and rendered as HTML or Markdown.

>>> from interp.report import collect_report, write_report      # doctest: +SKIP
>>> data = collect_report(model, "The cat sat on the")          # doctest: +SKIP
>>> write_report(data, "report.html")                            # doctest: +SKIP
"""

from interp.report.data import ReportData, ReportOptions, collect_report
from interp.report.render import render_html, render_markdown, write_report

__all__ = ["ReportData", "ReportOptions", "collect_report", "render_html", "render_markdown", "write_report"]
