"""Headless Chromium through the DevTools protocol: what the browser tests and the report-load benchmark share.

Debian's ``chromium`` is started with ``--remote-debugging-port`` and driven over the ``websockets``
client (a Streamlit dependency); nothing else is needed. The JavaScript snippets read what a person
would see: whether every plotly figure has drawn, and whether any two tick labels of one axis overlap
or any label shows U+FFFD.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["DASHBOARD_JS", "FIGURES_JS", "FLAGS", "LABELS_JS", "PLOTS_JS", "DevTools", "dashboard_server",
           "find_chromium", "free_port", "launch"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# plotly figures on the page (top document and same-origin iframes) and how many have drawn their axes
PLOTS_JS = """(() => {
  const docs = [document, ...[...document.querySelectorAll('iframe')].map(f => {
    try { return f.contentDocument; } catch (e) { return null; } }).filter(Boolean)];
  let plots = 0, drawn = 0;
  for (const d of docs) for (const p of d.querySelectorAll('.js-plotly-plot')) {
    plots++; if (p.querySelector('.main-svg')) drawn++; }
  return {plots, drawn, ready: document.readyState};
})()"""

# Tick labels per axis: pairs whose boxes overlap (more than 1 px each way) and labels showing U+FFFD.
LABELS_JS = """(() => {
  const docs = [document, ...[...document.querySelectorAll('iframe')].map(f => {
    try { return f.contentDocument; } catch (e) { return null; } }).filter(Boolean)];
  const overlaps = [], bad = [], duplicates = [];
  let axes = 0, labels = 0;
  for (const d of docs) for (const plot of d.querySelectorAll('.js-plotly-plot')) {
    const title = (plot.querySelector('.gtitle') || {}).textContent || plot.id || '';
    for (const ax of plot.querySelectorAll('g.xaxislayer-above, g.yaxislayer-above')) {
      axes++;
      const boxes = [...ax.querySelectorAll('g.xtick text, g.ytick text, text.xtick, text.ytick')]
        .filter(t => t.textContent.length && getComputedStyle(t).display !== 'none')
        .map(t => [t.textContent, t.getBoundingClientRect()]);
      labels += boxes.length;
      for (const [s] of boxes) if (s.includes('\\ufffd')) bad.push(title + ': ' + s);
      const seen = new Set();  // two ticks of one axis reading alike (今₁ at 11 vs 今₁₁ at 1) would be ambiguous
      for (const [s] of boxes) { if (seen.has(s)) duplicates.push(title + ': ' + s); seen.add(s); }
      for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i][1], b = boxes[j][1];
        const ox = Math.min(a.right, b.right) - Math.max(a.left, b.left);
        const oy = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (ox > 1 && oy > 1) overlaps.push(title + ': ' + boxes[i][0] + ' / ' + boxes[j][0]);
      }
    }
  }
  const text = docs.map(d => d.body ? d.body.innerText : '').join('\\n');
  return {axes, labels, overlaps: overlaps.slice(0, 10), n_overlaps: overlaps.length, bad: bad.slice(0, 10),
          duplicates: duplicates.slice(0, 10),
          replacement_chars: (text.match(/\\ufffd/g) || []).length};
})()"""

# Every plotly figure as drawn: its box, whether it fits the viewport or sits inside an element that scrolls
# (overflow auto/scroll, itself no wider than the viewport), the cells/points its traces draw (the payload that
# bounds its draw time), and the report's own draw time for it (performance measure "draw:ID"; null elsewhere).
# the cells (heatmap) or points one drawn trace (plotly's _fullData entry, arrays decoded) holds
_COUNT_JS = """const count = t => {
    if (t.z && t.z.length) return t.z.length * (Array.isArray(t.z[0]) || ArrayBuffer.isView(t.z[0]) ? t.z[0].length : 1);
    for (const k of ['x', 'y', 'values', 'r', 'lat']) if (t[k] && t[k].length) return t[k].length;
    return 0;
  };"""
FIGURES_JS = """(() => {
  const docs = [document, ...[...document.querySelectorAll('iframe')].map(f => {
    try { return f.contentDocument; } catch (e) { return null; } }).filter(Boolean)];
  """ + _COUNT_JS + """
  const out = [];
  for (const d of docs) {
    const view = d.defaultView.innerWidth, perf = d.defaultView.performance;
    for (const plot of d.querySelectorAll('.js-plotly-plot')) {
      const r = plot.getBoundingClientRect();
      let scroller = null;
      for (let el = plot.parentElement; el && el !== d.documentElement; el = el.parentElement) {
        const o = getComputedStyle(el).overflowX;
        if ((o === 'auto' || o === 'scroll') && el.getBoundingClientRect().width <= view + 1) { scroller = el; break; }
      }
      const m = plot.id ? perf.getEntriesByName('draw:' + plot.id) : [];
      out.push({id: plot.id || '', title: (plot.querySelector('.gtitle') || {}).textContent || '',
                width: Math.round(r.width), height: Math.round(r.height), view,
                fits: r.left >= -1 && r.right <= view + 1, scrolls: !!scroller,
                cells: (plot._fullData || []).reduce((a, t) => a + count(t), 0),  // data as drawn (decoded)
                draw_ms: m.length ? m[m.length - 1].duration : null});
    }
  }
  return out;
})()"""

# A Streamlit page's state: whether its script run has finished (Streamlit's own data-test-script-state) and its
# lazily loaded elements have replaced their skeletons, the page title, charts and drawn plots, the pages the sidebar offers, and any exception or error shown.
DASHBOARD_JS = """(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const h1 = [...document.querySelectorAll('h1')].map(e => e.innerText.trim());
  const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]').length;
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const frames = [...document.querySelectorAll('iframe')];
  const views = frames.filter(f => { try { return !!f.contentDocument.querySelector('.attn-view'); }
                                     catch (e) { return false; } }).length;
  return {h1, charts, plots: plots.length, drawn: plots.filter(p => p.querySelector('.main-svg')).length,
          script: app ? app.dataset.testScriptState : null, frames: frames.length, views,
          stale: document.documentElement.dataset.interpStale === '1',
          loading: document.querySelectorAll('[data-testid="stSkeleton"], [data-testid="stSpinner"]').length,
          pages: [...document.querySelectorAll('[data-testid="stSidebar"] [role="radiogroup"] label')]
                 .map(e => e.innerText.trim()),
          exceptions: [...document.querySelectorAll('[data-testid="stException"]')].map(e => e.innerText),
          errors: [...document.querySelectorAll('[data-testid="stAlertContentError"]')].map(e => e.innerText)};
})()"""

# Each plotly figure of the page as a spec ({data, layout}, plotly's private "_" keys left out), to redraw elsewhere.
SPECS_JS = """(() => [...document.querySelectorAll('.js-plotly-plot')].map(p => JSON.stringify(
  {title: (p.querySelector('.gtitle') || {}).textContent || '', data: p.data, layout: p.layout},
  (k, v) => k.startsWith('_') ? undefined : v)))()"""

# Draw one spec into a fresh div of a page that has plotly.js, and time it like the report's loader does.
DRAW_SPEC_JS = """(async (spec) => {
  """ + _COUNT_JS + """
  const el = document.createElement('div'); document.body.appendChild(el);
  const start = performance.now();
  await Plotly.newPlot(el, spec.data, spec.layout, {displaylogo: false});
  const ms = performance.now() - start, cells = el._fullData.reduce((a, t) => a + count(t), 0);
  Plotly.purge(el); el.remove(); return {ms, cells};
})(%s)"""


def find_chromium() -> str | None:
    for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevTools:
    """A minimal DevTools-protocol client: one page target, synchronous calls."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self._conn = connect(ws_url, max_size=256 * 1024 * 1024, open_timeout=30)
        self.ws = self._conn.__enter__()  # the client wants context-manager use; closed in close()
        self.n = 0

    def call(self, method: str, timeout: float = 120, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(1.0, deadline - time.time())))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for_plots(self, expected: int | None = None, timeout: float = 60, poll: float = 0.02) -> dict:
        """Poll until the document is complete and every plotly figure (at least ``expected``) has drawn."""
        deadline, state = time.time() + timeout, {}
        while time.time() < deadline:
            state = self.evaluate(PLOTS_JS) or {}
            if state.get("ready") == "complete" and state["drawn"] == state["plots"] and \
                    state["plots"] >= (expected or 0):
                return state
            time.sleep(poll)
        raise TimeoutError(f"plots not drawn within {timeout} s: {state}")

    def open_and_time(self, url: str, expected: int | None = None, timeout: float = 60) -> float:
        """Seconds from navigating to ``url`` until every figure has drawn (the page is usable)."""
        self.call("Page.navigate", url="about:blank")
        start = time.perf_counter()
        self.call("Page.navigate", url=url)
        self.wait_for_plots(expected, timeout)
        return time.perf_counter() - start

    def load_dashboard_page(self, url: str, page: str, min_charts: int = 0, timeout: float = 240) -> dict:
        """Navigate to a dashboard ``url`` and wait until ``page`` has run its script and drawn every chart (at least
        ``min_charts``), or shows an exception; returns :data:`DASHBOARD_JS`'s state."""
        # mark the page we leave: until the new one has replaced it, its state is not the new page's
        self.evaluate("document.documentElement && (document.documentElement.dataset.interpStale = '1')")
        self.call("Page.navigate", url=url)
        deadline, state, stable = time.time() + timeout, {}, 0
        while time.time() < deadline:
            state = self.evaluate(DASHBOARD_JS) or {}
            done = (not state.get("stale") and not state.get("loading") and state.get("script") == "notRunning"
                    and page in state.get("h1", [])
                    and state["drawn"] == state["plots"] == state["charts"] >= min_charts)
            stable = stable + 1 if done else 0
            if stable >= 2 or state.get("exceptions"):  # finished, and still so one poll later
                return state
            time.sleep(0.2)
        raise TimeoutError(f"{page}: not rendered within {timeout} s; last state {state}")

    def draw_spec(self, spec_json: str) -> dict:
        """Draw one figure spec (JSON text) on the current page (it must load plotly): ``{ms, cells}``."""
        res = self.call("Runtime.evaluate", expression=DRAW_SPEC_JS % spec_json, awaitPromise=True,
                        returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"drawing a figure failed: {res['exceptionDetails'].get('text')}")
        return res["result"]["value"]

    def close(self) -> None:
        self._conn.__exit__(None, None, None)


@contextlib.contextmanager
def launch(chromium: str, profile: str | Path, width: int = 1400, height: int = 2000):
    """Start headless Chromium and yield a :class:`DevTools` on its first page; stop it afterwards."""
    port = free_port()
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tools = None
    try:
        targets, deadline = [], time.time() + 60
        while time.time() < deadline and not targets:
            try:
                listing = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2).read())
                targets = [t for t in listing if t.get("type") == "page"]
            except OSError:
                time.sleep(0.3)
        if not targets:
            raise RuntimeError("chromium's DevTools endpoint did not come up within 60 s")
        tools = DevTools(targets[0]["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        yield tools
    finally:
        if tools is not None:
            tools.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def dashboard_server(root: str | Path, *app_args: str, timeout: float = 180):
    """Serve ``apps/dashboard.py`` of the checkout at ``root`` on a free local port (``app_args`` follow ``--``);
    yield its base URL once ``/_stcore/health`` answers; stop it afterwards."""
    import sys

    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(Path(root) / "apps" / "dashboard.py"),
           "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--", *app_args]
    import tempfile

    # the server's output goes to a file, not a pipe: a pipe nobody reads would stall a chatty server
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"streamlit exited with {proc.returncode}: {log.read()[-2000:]}")
                try:
                    if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read().strip() == b"ok":
                        break
                except OSError:
                    if time.time() > deadline:
                        raise TimeoutError(f"the dashboard did not answer /_stcore/health within {timeout} s") from None
                    time.sleep(0.5)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
