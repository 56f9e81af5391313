#!/usr/bin/env python
"""Build the training corpus for the shipped default model, offline, from Debian packages.

Recipe (everything comes from the distribution's package archive, the only network we use):

    apt-get download <package>      # the .deb only, no dependencies installed
    dpkg-deb -x <deb> <folder>      # unpack without installing

Sources (licence read from each package's debian/copyright and stored in the manifest):

    python3.11-doc       Python 3.11 documentation (HTML)         PSF License
    postgresql-doc-15    PostgreSQL 15 documentation (HTML)       PostgreSQL License
    python-django-doc    Django 3.2 documentation (HTML)          BSD-3-Clause
    sphinx-doc           Sphinx 5.3 documentation (HTML)          BSD-2-Clause
    python-sklearn-doc   scikit-learn 1.2 documentation (HTML)    BSD-3-Clause
    sword-text-web       World English Bible (SWORD module)       public domain   (read with pysword)
    r-cran-janeaustenr   Jane Austen's six novels (R data)        MIT package; the novels are public domain
                                                                  (read with rdata)

HTML pages are reduced to their main content (navigation, sidebars, scripts, maths markup and
permalink pilcrows dropped), keeping paragraphs and code blocks as plain text. The Bible is one
document per chapter, the novels one document per chapter, the docs one document per page, so the
trainer can insert `<|endoftext|>` between documents and split train/validation by document.

Output (under --out, default data/corpus, which is gitignored):

    corpus.jsonl     one JSON object per line: {"source", "title", "text"}
    manifest.json    per-source package version, licence, copyright line, #documents, #characters

Usage:
    python scripts/build_corpus.py [--out data/corpus] [--work data/corpus_build] [--skip-download]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    package: str
    kind: str  # "html" | "sword" | "austen"
    description: str
    licence: str  # short SPDX-ish name, checked against debian/copyright when building
    html_root: str = ""  # folder (inside the unpacked package) holding the HTML pages


SOURCES = [
    Source("python3.11-doc", "html", "Python 3.11 documentation", "PSF-2.0",
           "usr/share/doc/python3.11/html"),
    Source("postgresql-doc-15", "html", "PostgreSQL 15 documentation", "PostgreSQL",
           "usr/share/doc/postgresql-doc-15/html"),
    Source("python-django-doc", "html", "Django 3.2 documentation", "BSD-3-Clause",
           "usr/share/doc/python-django-doc/html"),
    Source("sphinx-doc", "html", "Sphinx 5.3 documentation", "BSD-2-Clause",
           "usr/share/doc/sphinx-doc/html"),
    Source("python-sklearn-doc", "html", "scikit-learn 1.2 documentation", "BSD-3-Clause",
           "usr/share/doc/python-sklearn-doc/html"),
    Source("sword-text-web", "sword", "World English Bible (2020 stable text)", "public-domain"),
    Source("r-cran-janeaustenr", "austen", "Jane Austen's six completed novels (janeaustenr)",
           "MIT (package); novels public domain"),
]

# Pages that are indexes, search boxes or rendered source code rather than prose.
SKIP_DIRS = {"_modules", "_sources", "_static", "_images", "_downloads", "_sphinx_design_static"}
SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html", "searchindex.html", "bookindex.html"}
MIN_DOC_CHARS = 200

# --------------------------------------------------------------------------------------------
# Fetch and unpack


def run(cmd: list[str], cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


def download_and_unpack(src: Source, debs: Path, unpacked: Path, skip_download: bool) -> tuple[Path, str]:
    """Return (unpacked folder, package version). Downloads the .deb unless one is already there."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{src.package}_*.deb"))
    if not found:
        if skip_download:
            raise SystemExit(f"--skip-download given but no {src.package}_*.deb in {debs}")
        run(["apt-get", "download", src.package], cwd=debs)
        found = sorted(debs.glob(f"{src.package}_*.deb"))
    deb = found[-1]
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    dest = unpacked / src.package
    if not dest.exists():
        tmp = unpacked / (src.package + ".tmp")
        if tmp.exists():
            subprocess.run(["rm", "-rf", str(tmp)], check=True)
        tmp.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(tmp)])
        os.replace(tmp, dest)
    return dest, version


def copyright_info(pkg_dir: Path, package: str) -> dict:
    """The first `Copyright:`/`License:` pair of the package's debian/copyright (the `Files: *` stanza)."""
    path = pkg_dir / "usr/share/doc" / package / "copyright"
    text = path.read_text(encoding="utf-8", errors="replace")
    lic = re.search(r"^License:[ \t]*(\S.*)$", text, re.MULTILINE)
    cop = re.search(r"^Copyright:[ \t]*(\S.*)$", text, re.MULTILINE)
    info = {
        "copyright_file": str(path.relative_to(pkg_dir)),
        "copyright_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "license_field": lic.group(1).strip() if lic else None,
        "copyright_field": cop.group(1).strip() if cop else None,
    }
    if package.startswith("python3.") and "Python License" in text:
        # Old-style copyright file without machine-readable fields.
        info["license_field"] = "Python Software Foundation License (see 'Python License' section)"
    return info


# --------------------------------------------------------------------------------------------
# HTML -> text

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
BLOCK = {"p", "div", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr",
         "table", "blockquote", "section", "article", "br", "hr", "figure", "figcaption", "caption", "title"}
DROP_TAGS = {"script", "style", "nav", "head", "noscript", "svg", "button", "form", "footer", "header"}
DROP_CLASSES = {"related", "sphinxsidebar", "sphinxsidebarwrapper", "navheader", "navfooter", "footer",
                "headerlink", "math", "mobile-nav", "sk-sidebar-toc-wrapper", "nav", "inline-search",
                "toctree-wrapper", "sk-navbar-collapse", "dropdown-menu", "sphx-glr-download-link-note",
                "sphx-glr-footer", "sphx-glr-timing", "rellinks", "language_switcher_placeholder",
                "version_switcher_placeholder", "menu-wrapper", "searchformwrapper", "btn-group"}
DROP_IDS = {"global-nav", "sk-sidebar-wrapper", "searchbox", "ft", "hd", "sidebar"}


def _is_root(tag: str, attrs: dict) -> bool:
    """Main-content container in Sphinx (role=main), Django (yui-main) and DocBook (body) pages."""
    return attrs.get("role") == "main" or attrs.get("id") == "yui-main"


def _is_dropped(tag: str, attrs: dict) -> bool:
    if tag in DROP_TAGS:
        return True
    classes = set((attrs.get("class") or "").split())
    return bool(classes & DROP_CLASSES) or attrs.get("id") in DROP_IDS or attrs.get("role") in {
        "navigation", "search"}


class _TextExtractor(HTMLParser):
    """Collects text of the main-content subtree, dropping navigation subtrees.

    Subtrees are tracked by counting nested start/end tags *of the same name*, which is robust to
    the unclosed <p>/<li> that HTML allows.
    """

    def __init__(self, want_root: bool):
        super().__init__(convert_charrefs=True)
        self.want_root = want_root
        self.root: tuple[str, int] | None = None  # (tag, nesting) while inside the main content
        self.drop: tuple[str, int] | None = None
        self.pre = 0
        self.parts: list[str] = []
        self.found_root = False

    @property
    def capturing(self) -> bool:
        return (self.root is not None or not self.want_root) and self.drop is None

    def handle_starttag(self, tag, attrs_list):
        attrs = {k: (v or "") for k, v in attrs_list}
        if self.drop is not None:
            if tag == self.drop[0] and tag not in VOID:
                self.drop = (tag, self.drop[1] + 1)
            return
        if self.root is None and self.want_root:
            if _is_root(tag, attrs):
                self.root, self.found_root = (tag, 1), True
            return
        if self.root is not None and tag == self.root[0] and tag not in VOID:
            self.root = (tag, self.root[1] + 1)
        if _is_dropped(tag, attrs) and tag not in VOID:
            self.drop = (tag, 1)
            return
        if tag == "pre":
            self.pre += 1
        if tag in BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag, attrs_list):
        if self.capturing and tag in BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if self.drop is not None:
            if tag == self.drop[0]:
                n = self.drop[1] - 1
                self.drop = None if n == 0 else (tag, n)
            return
        if self.root is not None and tag == self.root[0]:
            n = self.root[1] - 1
            self.root = None if n == 0 else (tag, n)
            if self.root is None:
                return
        if not self.capturing:
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.capturing:
            return
        if self.pre:
            self.parts.append(data.replace("\n", "\x00"))  # protect newlines of code blocks
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(page: str) -> tuple[str, str]:
    """(title, fluent text) of an HTML documentation page."""
    title_m = re.search(r"<title>(.*?)</title>", page, re.DOTALL | re.IGNORECASE)
    title = html.unescape(re.sub(r"\s+", " ", title_m.group(1)).strip()) if title_m else ""
    for want_root in (True, False):
        p = _TextExtractor(want_root)
        p.feed(page)
        p.close()
        if p.found_root or not want_root:
            break
    text = "".join(p.parts)
    text = text.replace("¶", "").replace("\u00a0", " ")
    lines = [ln.strip() if "\x00" not in ln else ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines).replace("\x00", "\n")
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return title, text


def html_documents(src: Source, pkg_dir: Path):
    root = pkg_dir / src.html_root
    for path in sorted(root.rglob("*.html")) + sorted(root.rglob("*.html.gz")):
        rel = path.relative_to(root)
        if set(rel.parts[:-1]) & SKIP_DIRS or rel.name in SKIP_PAGES or path.is_symlink():
            continue
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        title, text = html_to_text(raw.decode("utf-8", errors="replace"))
        if len(text) >= MIN_DOC_CHARS:
            yield {"source": src.package, "title": title or str(rel), "text": text}


# --------------------------------------------------------------------------------------------
# World English Bible (SWORD zText module), one document per chapter


def _clean_osis(verse: str) -> str:
    # Footnotes and cross-references are editorial apparatus, not running text.
    # The module has no space around a footnote ("God<note>..</note><w>created"), so a note
    # becomes a space, and a space before closing punctuation is removed again.
    verse = re.sub(r"<note\b.*?</note>", " ", verse, flags=re.DOTALL)
    verse = re.sub(r"<[^>]+>", "", verse)
    verse = re.sub(r"\s+", " ", verse).strip()
    return re.sub(r" ([,.;:!?’”)\]])", r"\1", verse)


def sword_documents(src: Source, pkg_dir: Path):
    from pysword.modules import SwordModules

    mods = SwordModules(str(pkg_dir / "usr/share/sword"))
    found = mods.parse_modules()
    (name,) = list(found)
    bible = mods.get_bible_from_module(name)
    structure = bible.get_structure().get_books()
    for testament in ("ot", "nt"):
        for book in structure[testament]:
            for chapter in range(1, book.num_chapters + 1):
                raw = bible.get(books=[book.osis_name], chapters=[chapter], clean=False, join="\n")
                verses = [_clean_osis(v) for v in raw.split("\n")]
                text = f"{book.name} {chapter}\n\n" + "\n".join(v for v in verses if v)
                yield {"source": src.package, "title": f"{book.name} {chapter}", "text": text}


# --------------------------------------------------------------------------------------------
# Jane Austen (R lazy-load database), one document per chapter


def _read_rdb(data_dir: Path) -> dict[str, list[str]]:
    """Read every character vector of an R lazy-load database (Rdata.rdx index + Rdata.rdb blobs).

    The .rdx is an ordinary serialized R list {variables: name -> (offset, length), compressed};
    each blob in the .rdb is a 4-byte big-endian uncompressed length followed by zlib data
    (compression type 1, the default) holding one serialized R object.
    """
    import warnings

    import rdata

    warnings.filterwarnings("ignore", module="rdata")  # it warns that .rdx / raw blobs are not .rds files
    index = rdata.conversion.convert(rdata.parser.parse_file(data_dir / "Rdata.rdx"))
    compressed = index["compressed"]
    if int(compressed[0]) != 1:  # TRUE or 1 means zlib; 2 (bzip2) and 3 (xz) are not used here
        raise SystemExit(f"unsupported R lazy-load compression {compressed!r}")
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, (off, length) in index["variables"].items():
        chunk = blob[int(off): int(off) + int(length)]
        (n,) = struct.unpack(">I", chunk[:4])
        payload = zlib.decompress(chunk[4:])
        assert len(payload) == n, (name, n, len(payload))
        value = rdata.conversion.convert(rdata.parser.parse_data(payload))
        if hasattr(value, "dtype") and value.dtype.kind in "US":
            out[str(name)] = [str(x) for x in value]
    return out


AUSTEN_TITLES = {"emma": "Emma", "mansfieldpark": "Mansfield Park", "northangerabbey": "Northanger Abbey",
                 "persuasion": "Persuasion", "prideprejudice": "Pride and Prejudice",
                 "sensesensibility": "Sense and Sensibility"}


def austen_documents(src: Source, pkg_dir: Path):
    books = _read_rdb(pkg_dir / "usr/lib/R/site-library/janeaustenr/data")
    for key, title in AUSTEN_TITLES.items():
        lines = books[key]
        # The vectors hold the Gutenberg line-wrapped text; blank strings separate paragraphs.
        chapters: list[list[str]] = [[]]
        for line in lines:
            if re.match(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*$", line):
                chapters.append([])
            chapters[-1].append(line)
        for i, chapter in enumerate(chapters):
            paras = "\n".join(chapter).split("\n\n")
            text = "\n\n".join(re.sub(r"\s+", " ", p).strip() for p in paras if p.strip())
            if len(text) >= MIN_DOC_CHARS:
                yield {"source": src.package, "title": f"{title}, part {i}", "text": text}


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/corpus", help="output folder (corpus.jsonl, manifest.json)")
    ap.add_argument("--work", default="data/corpus_build", help="folder for .debs and unpacked packages")
    ap.add_argument("--skip-download", action="store_true", help="use the .debs already in --work/debs")
    args = ap.parse_args(argv)

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"sources": [], "format": "jsonl: {source, title, text}; one document per line"}
    tmp_corpus = out / "corpus.jsonl.tmp"
    n_docs_total = n_chars_total = 0
    with open(tmp_corpus, "w", encoding="utf-8") as f:
        for src in SOURCES:
            pkg_dir, version = download_and_unpack(src, work / "debs", work / "unpacked", args.skip_download)
            gen = {"html": html_documents, "sword": sword_documents, "austen": austen_documents}[src.kind]
            n_docs = n_chars = 0
            for doc in gen(src, pkg_dir):
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                n_docs += 1
                n_chars += len(doc["text"])
            entry = {"package": src.package, "version": version, "description": src.description,
                     "license": src.licence, **copyright_info(pkg_dir, src.package),
                     "documents": n_docs, "characters": n_chars}
            manifest["sources"].append(entry)
            n_docs_total += n_docs
            n_chars_total += n_chars
            print(f"{src.package:20s} {version:24s} {n_docs:6d} docs {n_chars / 1e6:7.2f} M chars", file=sys.stderr)
    os.replace(tmp_corpus, out / "corpus.jsonl")
    manifest["documents"] = n_docs_total
    manifest["characters"] = n_chars_total
    manifest["bytes_utf8"] = (out / "corpus.jsonl").stat().st_size
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    print(f"total {n_docs_total} docs, {n_chars_total / 1e6:.2f} M chars -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
