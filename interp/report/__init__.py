"""Reports: analyzer outputs gathered into a :class:`ReportData` and rendered as HTML or Markdown.

>>> from interp.report import collect_report, write_report      # doctest: +SKIP
>>> data = collect_report(model, "The cat sat on the")          # doctest: +SKIP
>>> write_report(data, "report.html")                            # doctest: +SKIP

The names are imported on first use, so light submodules (``interp.report.probes``' registry, ``output``)
do not import torch through this package.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ReportData": "interp.report.data",
    "ReportOptions": "interp.report.data",
    "collect_report": "interp.report.data",
    "render_html": "interp.report.render",
    "render_markdown": "interp.report.render",
    "write_report": "interp.report.render",
}

__all__ = ["ReportData", "ReportOptions", "collect_report", "render_html", "render_markdown", "write_report"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'interp.report' has no attribute {name!r}")
