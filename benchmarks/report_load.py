"""How fast an HTML report opens in headless Chromium, and how big it is, by prompt length and plotly mode.

    python benchmarks/report_load.py                      # 10, 160 (shipped model) and 500 tokens (n_ctx 512)
    python benchmarks/report_load.py --lengths 160 --repeats 5 --out my.json

Reports are built once per length with ``interp.report`` and written twice: ``inline`` (one
self-contained file, plotly.js inside) and ``shared`` (plotly-<version>.min.js beside it). Each file is
opened ``--repeats`` times in one headless Chromium (``interp.report.chromium``), cache cleared between
loads, and two times are taken from navigation:

* ``open``  — the page is usable: document complete and every figure in or near the viewport drawn (the
  report draws the others when they are scrolled to);
* ``eager`` — the peer, what a report that draws every figure at load costs: ``interpDrawAll()`` called at
  once and waited for (the old report drew every figure before it could be used).

The median of the repeats is reported, with ``eager / open``. The 160-token target is ``open`` < 3 s.
Writes JSON (device, dtype, shapes, sizes, times, ratios) to a new file: never over an existing one
without ``--force``.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. It is a truth universally acknowledged, that a single "
        "man in possession of a good fortune, must be in want of a wife. ") * 40


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
    """A prompt of exactly ``n`` tokens (cut from TEXT by token, decoded back)."""
    ids = model.to_tokens(TEXT)[0, :n]
    return model.to_string(ids)


def models(lengths: list[int]):
    """The shipped model where its n_ctx allows; a random 2-layer byte model with n_ctx 512 beyond."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.inputs import attach_byte_tokenizer, load_model

    shipped = load_model()
    out = {}
    for n in lengths:
        if n <= int(shipped.cfg.n_ctx):
            out[n] = shipped
        else:
            import torch

            torch.manual_seed(0)
            big = HookedDecoder(DecoderConfig(d_vocab=256, n_ctx=max(512, n), d_model=128, n_layers=2, n_heads=4,
                                              name="random-tiny-bytes-2l")).eval()
            out[n] = attach_byte_tokenizer(big)
    return out


def markdown_table(result: dict) -> str:
    """RESULTS.md's table (benchmarks/run_all.py): every per-report column, the model named once above it."""
    rows = result["rows"]
    model = {k: rows[0][k] for k in ("model", "d_model", "n_layers", "n_heads")} if rows else {}
    cols = [c for c in (rows[0] if rows else {}) if c not in model and all(
        isinstance(r.get(c), (int, float, str)) for r in rows)]
    lines = [(f"{model.get('model')} (d_model {model.get('d_model')}, {model.get('n_layers')} layers), "
             f"{result['browser']} on {result['device']}; medians of {result['repeats']}; seconds."), "",
             "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="10,160,500", help="prompt lengths in tokens, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"report-load-{stamp}.json")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"report_load: {args.out} exists; pass --force to overwrite it or choose another --out", file=sys.stderr)
        return 2

    from interp.io import atomic_write_text
    from interp.report import ReportOptions, collect_report, write_report
    from interp.report.chromium import find_chromium, launch

    chromium = find_chromium()
    if chromium is None:
        print("report_load: needs Debian's chromium (/usr/bin/chromium)", file=sys.stderr)
        return 2
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, launch(chromium, Path(tmp) / "profile") as browser:
        for n, model in models(lengths).items():
            prompt = prompt_of(model, n)
            t0 = time.perf_counter()
            data = collect_report(model, prompt, ReportOptions())
            build_s = time.perf_counter() - t0
            for mode in ("inline", "shared"):
                folder = Path(tmp) / f"{n}-{mode}"
                folder.mkdir()
                path = write_report(data, folder / "report.html", plotly=mode)
                opened, eager = [], []
                for _ in range(args.repeats):
                    browser.call("Network.clearBrowserCache")
                    opened.append(browser.open_and_time(path.as_uri()))
                    browser.call("Page.navigate", url="about:blank")
                    start = time.perf_counter()
                    browser.call("Page.navigate", url=path.as_uri())
                    browser.wait_for_plots(timeout=300)
                    browser.evaluate("interpDrawAll()")
                    state = browser.wait_for_plots(timeout=300)
                    eager.append(time.perf_counter() - start)
                total = sum(f.stat().st_size for f in folder.iterdir())
                row = {"tokens": len(data.token_ids), "model": model.cfg.name, "d_model": int(model.cfg.d_model),
                       "n_layers": int(model.cfg.n_layers), "n_heads": int(model.cfg.n_heads), "mode": mode,
                       "report_mb": round(path.stat().st_size / 1e6, 3), "folder_mb": round(total / 1e6, 3),
                       "figures": state["plots"], "build_s": round(build_s, 2),
                       "open_s": round(statistics.median(opened), 3), "eager_s": round(statistics.median(eager), 3)}
                row["eager_over_open"] = round(row["eager_s"] / row["open_s"], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"benchmark": "report_load", "device": f"cpu ({cpu_name()})", "browser": "chromium headless",
              "dtype": "float32", "repeats": args.repeats, "date": datetime.now(timezone.utc).isoformat(),
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    cols = ["tokens", "mode", "report_mb", "folder_mb", "figures", "open_s", "eager_s", "eager_over_open"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---:|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
