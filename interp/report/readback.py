"""Read a rendered HTML report (or probe page) back: structure checks and the exact numbers in its tables.

Uses only the standard library's ``html.parser``, so a test (or a script comparing two reports) does not
depend on the code that wrote the page.
"""

from __future__ import annotations

from html.parser import HTMLParser

__all__ = ["check_well_formed", "external_references", "read_tables", "section_ids"]

# Elements that never have an end tag in HTML.
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.sections: list[str] = []
        self.external: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower().startswith("doctype html")

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("id"):
            self.sections.append(a["id"])
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v.startswith(("http:", "https:", "//")):
                self.external.append(f"<{tag} {key}={v}>")
        if tag == "link":
            self.external.append(f"<link href={a.get('href')}>")
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_endtag(self, tag) -> None:
        if tag in _VOID:
            return
        if not self.stack:
            self.problems.append(f"</{tag}> closes nothing (line {self.getpos()[0]})")
        elif self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1]}> (line {self.getpos()[0]})")
            if tag in self.stack:  # resynchronise so one slip is reported once
                while self.stack and self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()


def _parse(html: str) -> _Structure:
    p = _Structure()
    p.feed(html)
    p.close()
    return p


def check_well_formed(html: str) -> list[str]:
    """Problems with the page's structure: a missing doctype, mismatched or unclosed tags (empty = fine)."""
    p = _parse(html)
    problems = list(p.problems)
    if not p.doctype:
        problems.insert(0, "no <!DOCTYPE html>")
    if p.stack:
        problems.append(f"unclosed tags at the end: {p.stack}")
    return problems


def section_ids(html: str) -> list[str]:
    """The ``id`` of every ``<section>``, in page order."""
    return _parse(html).sections


def external_references(html: str) -> list[str]:
    """``src``/``href`` attributes that would fetch from the network, and any ``<link>``."""
    return _parse(html).external


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.current: dict | None = None
        self.in_th = False
        self.row: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("data-name"):
            self.current = {"columns": [], "rows": []}
            self.tables[a["data-name"]] = self.current
        elif self.current is not None:
            if tag == "th":  # the column's name is in data-col (the header text reads as words)
                self.in_th = "data-col" not in a
                self.current["columns"].append(a.get("data-col", ""))
            elif tag == "tr":
                self.row = []
            elif tag == "td" and self.row is not None:
                self.row.append(a.get("data-value", ""))

    def handle_data(self, data) -> None:
        if self.in_th and self.current is not None:
            self.current["columns"][-1] += data

    def handle_endtag(self, tag) -> None:
        if tag == "th":
            self.in_th = False
        elif tag == "tr" and self.row is not None and self.current is not None:
            if self.row:
                self.current["rows"].append(self.row)
            self.row = None
        elif tag == "table":
            self.current = None


def read_tables(html: str) -> dict:
    """Every ``<table data-name=...>`` as a DataFrame of the exact cell values (strings from ``data-value``)."""
    import pandas as pd

    p = _Tables()
    p.feed(html)
    p.close()
    return {name: pd.DataFrame(t["rows"], columns=t["columns"]) for name, t in p.tables.items()}
