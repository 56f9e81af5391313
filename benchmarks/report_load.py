"""How fast reports and dashboard pages open and draw in headless Chromium, figure by figure, by prompt length.

    python benchmarks/report_load.py                          # 10, 250, 500 and 2,000 tokens, every dashboard page
    python benchmarks/report_load.py --lengths 250 --repeats 5 --pages Attention,Patching --out my.json

The shipped model reads 256 tokens: prompts up to its n_ctx use it; longer ones a model with n_ctx 2048
(``models/docs-bible-austen-2l-2k`` when it ships, else a random one of the shipped model's size and tokenizer,
so the text is real). Prompts are the shipped model's held-out text cut to the length.

* **Reports**: built once per length with ``interp.report`` and written twice, ``inline`` (one self-contained file,
  plotly.js inside) and ``shared`` (plotly-<version>.min.js beside it). Each is opened ``--repeats`` times, cache
  cleared between loads: ``open`` is navigation to every figure near the viewport drawn (the report draws the rest
  when scrolled to), ``eager`` navigation to every figure drawn (``interpDrawAll()`` at once). Per figure, the
  report's own measure ``draw:ID`` (spec parsed to plotly's promise resolving), each figure redrawn alone in turn
  (``interpRedrawEach()``: drawn together, each promise would also wait for the others).
* **Dashboard**: ``apps/dashboard.py`` served by Streamlit with the n_ctx-2048 model; every page of its sidebar (or
  ``--pages``) at every length: ``page`` is navigation to the script run finished and every chart drawn. Each
  chart's spec is read back from the page and redrawn ``--repeats`` times on a blank page with the project's
  plotly.js, timed as the report times its figures (Streamlit bundles its own plotly.js; the figure's cost is
  the same data and layout).

Medians of the repeats are reported; the target is every figure drawn in under 2 s (``max_draw_ms`` < 2000).
Writes JSON (device, model, rows, figures) to a new file: never over an existing one without ``--force``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHIPPED_2K = ROOT / "models" / "docs-bible-austen-2l-2k"
TARGET_MS = 2000


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def prompt_of(model, n: int) -> str:
    """About ``n`` tokens of the shipped model's held-out text (cut by token, decoded back)."""
    from interp.zoo import ZOO, default_model_name

    text = (ZOO / default_model_name() / "heldout.txt").read_text(encoding="utf-8").replace("<|endoftext|>", "\n")
    return model.to_string(model.to_tokens(text[: 40 * n])[0, :n])


def long_model_folder(folder: Path) -> Path:
    """The shipped n_ctx-2048 model, or a random one of the shipped model's shape and tokenizer saved in ``folder``."""
    if (SHIPPED_2K / "config.json").is_file():
        return SHIPPED_2K
    import dataclasses

    import torch

    from interp.model.transformer import HookedDecoder
    from interp.report.inputs import load_model

    shipped = load_model()
    torch.manual_seed(0)
    cfg = dataclasses.replace(shipped.cfg, n_ctx=2048, name="random-2l-2k")
    HookedDecoder(cfg, tokenizer=shipped.tokenizer).save(folder)
    return folder


def time_reports(browser, lengths, models, repeats, tmp: Path) -> tuple[list, list]:
    from interp.report import ReportOptions, collect_report, write_report
    from interp.report.chromium import FIGURES_JS

    rows, figures = [], []
    for n in lengths:
        model = models[n]
        t0 = time.perf_counter()
        data = collect_report(model, prompt_of(model, n), ReportOptions())
        build_s = time.perf_counter() - t0
        for mode in ("inline", "shared"):
            folder = tmp / f"{n}-{mode}"
            folder.mkdir()
            path = write_report(data, folder / "report.html", plotly=mode)
            opened, eager, draws = [], [], {}
            for _ in range(repeats):
                browser.call("Network.clearBrowserCache")
                opened.append(browser.open_and_time(path.as_uri(), timeout=300))
                browser.call("Page.navigate", url="about:blank")
                start = time.perf_counter()
                browser.call("Page.navigate", url=path.as_uri())
                browser.wait_for_plots(timeout=300)
                browser.evaluate("interpDrawAll()")
                state = browser.wait_for_plots(timeout=300)
                eager.append(time.perf_counter() - start)
                # drawn together, each figure's promise waits for the others: redraw each alone for its own time
                browser.call("Runtime.evaluate", expression="interpRedrawEach()", awaitPromise=True, timeout=300)
                for f in browser.evaluate(FIGURES_JS):
                    draws.setdefault(f["id"], (f, []))[1].append(f["draw_ms"] or float("nan"))
            if mode == "shared":  # the draw itself does not depend on how plotly.js arrived
                for fid, (f, ms) in draws.items():
                    figures.append({"where": "report", "tokens": len(data.token_ids), "figure": fid,
                                    "title": f["title"][:60], "cells": f["cells"], "width": f["width"],
                                    "draw_ms": round(statistics.median(ms), 1)})
            total = sum(f.stat().st_size for f in folder.iterdir())
            row = {"tokens": len(data.token_ids), "model": model.cfg.name, "d_model": int(model.cfg.d_model),
                   "n_ctx": int(model.cfg.n_ctx), "mode": mode, "report_mb": round(path.stat().st_size / 1e6, 3),
                   "folder_mb": round(total / 1e6, 3), "figures": state["plots"], "build_s": round(build_s, 2),
                   "open_s": round(statistics.median(opened), 3), "eager_s": round(statistics.median(eager), 3),
                   "max_draw_ms": round(max(statistics.median(ms) for _, ms in draws.values()), 1)}
            row["eager_over_open"] = round(row["eager_s"] / row["open_s"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows, figures


def time_dashboard(browser, lengths, model_dir: Path, prompts: dict, pages, repeats, tmp: Path,
                   page_timeout: float = 240) -> tuple[list, list]:
    from interp.report.chromium import SPECS_JS, dashboard_server
    from interp.report.render import html_page

    bench = tmp / "draw.html"  # a blank page with plotly.js: where each chart's spec is redrawn and timed
    bench.write_text(html_page("draw", "", with_plotly=True), encoding="utf-8")
    rows, figures, specs = [], [], []
    with dashboard_server(ROOT, "--model", str(model_dir)) as base:
        if not pages:  # every page the sidebar offers
            pages = browser.load_dashboard_page(f"{base}/?prompt=x", "Overview")["pages"]
        for n in lengths:
            for page in pages:
                times, problems = [], []
                for _ in range(repeats):
                    start = time.perf_counter()
                    try:
                        state = browser.load_dashboard_page(
                            f"{base}/?page={quote(page)}&prompt={quote(prompts[n])}", page, timeout=page_timeout)
                    except TimeoutError:  # recorded, and the other pages still measured
                        problems.append(f"not drawn within {page_timeout:.0f} s")
                        state = {"exceptions": [], "errors": []}
                    times.append(time.perf_counter() - start)
                problems += state["exceptions"] + state["errors"]
                charts = browser.evaluate(SPECS_JS)
                specs += [(n, page, i, s) for i, s in enumerate(charts)]
                rows.append({"where": page, "tokens": n, "page_s": round(statistics.median(times), 2),
                             "charts": len(charts), "problems": " | ".join(problems)[:200]})
                print(json.dumps(rows[-1]), flush=True)
    browser.call("Page.navigate", url=bench.as_uri())
    browser.wait_for_plots()
    for n, page, i, spec in specs:
        drawn = [browser.draw_spec(spec) for _ in range(repeats)]
        parsed = json.loads(spec)
        figures.append({"where": page, "tokens": n, "figure": f"chart {i}", "title": parsed["title"][:60],
                        "cells": drawn[0]["cells"], "width": (parsed["layout"] or {}).get("width"),
                        "draw_ms": round(statistics.median(d["ms"] for d in drawn), 1)})
    for row in rows:
        mine = [f["draw_ms"] for f in figures if f["where"] == row["where"] and f["tokens"] == row["tokens"]]
        row["max_draw_ms"] = max(mine) if mine else None
    return rows, figures


def markdown_table(result: dict) -> str:
    """The slowest figure of each report and dashboard page at each length (ms to draw, median of the repeats),
    then the reports' open times."""
    figs = result.get("figures", [])
    lengths = sorted({f["tokens"] for f in figs} | {r["tokens"] for r in result.get("rows", [])})
    wheres = list(dict.fromkeys(["report"] + [r["where"] for r in result.get("dashboard", [])]))
    head = (f"Slowest figure per surface, ms to draw (median of the repeats); target < {TARGET_MS} ms each. "
            f"{result.get('device', '')}, {result.get('browser', '')}, {result.get('date', '')[:10]}.")
    lines = [head, "", "| surface | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---|" + "---:|" * len(lengths)] if figs else []  # (a record from before per-figure times: none)
    for where in wheres if figs else []:
        cells = []
        for n in lengths:
            mine = [f for f in figs if f["where"] == where and f["tokens"] == n]
            if not mine:
                problems = [r.get("problems") for r in result.get("dashboard", []) if r["where"] == where
                            and r["tokens"] == n and r.get("problems")]
                cells.append("error" if problems else "—")
                continue
            worst = max(mine, key=lambda f: f["draw_ms"])
            cells.append(f"{worst['draw_ms']:.0f} ({worst['cells']:,} cells)")
        lines.append(f"| {where} | " + " | ".join(cells) + " |")
    rows = result.get("rows", [])
    if rows:
        cols = [c for c in ("tokens", "model", "mode", "report_mb", "figures", "build_s", "open_s", "eager_s",
                            "max_draw_ms") if any(c in r for r in rows)]  # (records before draw times lack some)
        lines += [*([""] if lines else []), "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "—")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="10,250,500,2000", help="prompt lengths in tokens, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pages", default="", help="dashboard pages, comma-separated (default: every page); 'none': skip")
    p.add_argument("--no-reports", action="store_true", help="time the dashboard only")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"report-load-{stamp}.json")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"report_load: {args.out} exists; pass --force to overwrite it or choose another --out", file=sys.stderr)
        return 2
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    if not lengths or min(lengths) < 1 or max(lengths) > 2048:
        print(f"report_load: --lengths must be tokens in 1..2048; given {args.lengths!r}", file=sys.stderr)
        return 2

    from interp.io import atomic_write_text
    from interp.report.chromium import find_chromium, launch
    from interp.report.inputs import load_model

    chromium = find_chromium()
    if chromium is None:
        print("report_load: needs Debian's chromium (/usr/bin/chromium)", file=sys.stderr)
        return 2
    pages = [] if args.pages in ("", "all") else [x.strip() for x in args.pages.split(",") if x.strip()]
    rows, dash, figures = [], [], []
    with tempfile.TemporaryDirectory() as tmp, launch(chromium, Path(tmp) / "profile") as browser:
        tmp = Path(tmp)
        shipped = load_model()
        long_dir = long_model_folder(tmp / "long-model")
        long = load_model(str(long_dir))
        models = {n: shipped if n <= int(shipped.cfg.n_ctx) else long for n in lengths}
        if not args.no_reports:
            rows, figures = time_reports(browser, lengths, models, args.repeats, tmp)
        if args.pages != "none":
            prompts = {n: prompt_of(long, n) for n in lengths}
            dash, dash_figures = time_dashboard(browser, lengths, long_dir, prompts, pages, args.repeats, tmp)
            figures += dash_figures
    result = {"benchmark": "report_load", "device": f"cpu ({cpu_name()})", "browser": "chromium headless",
              "dtype": "float32", "repeats": args.repeats, "date": datetime.now(timezone.utc).isoformat(),
              "models": {"shipped": shipped.cfg.name, "long": long.cfg.name}, "target_ms": TARGET_MS,
              "rows": rows, "dashboard": dash, "figures": figures}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print("\n" + markdown_table(result))
    slow = [f for f in figures if f["draw_ms"] >= TARGET_MS]
    print(f"\n{len(figures)} figures, {len(slow)} at or over {TARGET_MS} ms" +
          "".join(f"\n  {f['where']} @ {f['tokens']}: {f['title'] or f['figure']} {f['draw_ms']} ms" for f in slow))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
