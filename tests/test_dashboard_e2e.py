"""End to end: the dashboard server on 127.0.0.1, every page loaded in headless Chromium, screenshots saved.

Chromium is Debian's ``chromium`` package. When it is missing and we are root, the test installs it with
``apt-get`` (under a timeout); it skips, saying why, only when that is impossible. Chromium is driven
through the DevTools protocol (``--remote-debugging-port``, over the ``websockets`` client Streamlit already
depends on): a page counts as loaded when its title is rendered and every plotly chart has been drawn.
Screenshots go to ``$INTERP_SCREENSHOTS`` when set, else to a temporary folder (printed with ``-s``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the cat sat on the mat"
# Charts each page must draw (plotly); 0 for pages with tables and buttons only.
PAGES = {"Overview": 1, "Attention": 2, "Neurons": 0, "Superposition": 2, "Logit lens": 2, "Report": 0}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY_JS = """(() => {
  const h1 = [...document.querySelectorAll('h1')].map(e => e.innerText.trim());
  const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]').length;
  const plots = document.querySelectorAll('.js-plotly-plot').length;
  return {h1, charts, plots,
          exceptions: [...document.querySelectorAll('[data-testid="stException"]')].map(e => e.innerText),
          errors: [...document.querySelectorAll('[data-testid="stAlertContentError"]')].map(e => e.innerText),
          text: document.body ? document.body.innerText.length : 0};
})()"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find_chromium() -> str | None:
    for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def _ensure_chromium() -> str:
    found = _find_chromium()
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("chromium is not installed (/usr/bin/chromium) and we are not root to apt-get install it")
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and this system has no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = ""
    for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
            log = (p.stdout + p.stderr)[-400:]
        except (subprocess.TimeoutExpired, OSError) as e:
            log = str(e)
        if _find_chromium():
            return _find_chromium()
    pytest.skip(f"chromium could not be installed with apt-get: {log.strip()}")


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

    def close(self) -> None:
        self._conn.__exit__(None, None, None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("e2e") / "tiny"
    from interp.report.inputs import byte_tokenizer

    HookedDecoder(DecoderConfig(d_vocab=256, n_ctx=64, d_model=32, n_layers=2, n_heads=2, name="e2e-tiny"),
                  tokenizer=byte_tokenizer()).save(folder)
    return folder


@pytest.fixture(scope="module")
def server(model_dir):
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "apps" / "dashboard.py"),
           "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--", "--model", str(model_dir), "--prompt", PROMPT]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard did not answer /_stcore/health within 180 s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = _ensure_chromium()
    pytest.importorskip("websockets.sync.client", reason="the websockets client (a streamlit dependency) is missing")
    port = _free_port()
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,2000",
                             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets, deadline = [], time.time() + 60
        while time.time() < deadline and not targets:
            try:
                listing = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2).read())
                targets = [t for t in listing if t.get("type") == "page"]
            except OSError:
                time.sleep(0.3)
        if not targets:
            pytest.fail("chromium's DevTools endpoint did not come up within 60 s")
        tools = DevTools(targets[0]["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ["INTERP_SCREENSHOTS"]) if os.environ.get("INTERP_SCREENSHOTS") else \
        tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


def _load(browser: DevTools, url: str, page: str, min_charts: int, timeout: float = 150) -> dict:
    browser.call("Page.navigate", url=url)
    deadline, state, stable = time.time() + timeout, None, 0
    while time.time() < deadline:
        state = browser.evaluate(READY_JS) or {}
        done = page in state.get("h1", []) and state["plots"] == state["charts"] >= min_charts
        stable = stable + 1 if done else 0
        if stable >= 3 or state.get("exceptions"):  # unchanged for ~1.5 s: the script run has finished
            return state
        time.sleep(0.5)
    pytest.fail(f"{page}: not rendered within {timeout} s; last state {state}")


@pytest.mark.slow
def test_every_page_renders_in_chromium(server, browser, shots):
    from PIL import Image

    for page, min_charts in PAGES.items():
        state = _load(browser, f"{server}/?page={quote(page)}", page, min_charts)
        assert not state["exceptions"], (page, state["exceptions"])
        assert not state["errors"], (page, state["errors"])
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        path = shots / f"{page.lower().replace(' ', '_')}.png"
        path.write_bytes(png)
        with Image.open(path) as img:
            colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        # a rendered page has text, tables and charts: far more than a blank or spinner-only screen
        assert colours is None or len(colours) > 200, (page, len(colours or []))


@pytest.mark.slow
def test_bad_prompt_shows_an_error_in_the_browser(server, browser):
    # type a prompt longer than the model's n_ctx (64) into the sidebar: the page must show st.error
    url = f"{server}/?page=Overview"
    _load(browser, url, "Overview", 1)
    js = """(() => {
      const ta = document.querySelector('textarea');
      const setter = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;
      setter.call(ta, 'x'.repeat(100));
      ta.dispatchEvent(new Event('input', {bubbles: true}));
      ta.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', ctrlKey: true, bubbles: true}));
      ta.blur();
      return true;
    })()"""
    browser.evaluate(js)
    deadline, state = time.time() + 60, {}
    while time.time() < deadline:
        state = browser.evaluate(READY_JS) or {}
        if state.get("errors") or state.get("exceptions"):
            break
        time.sleep(0.5)
    assert not state.get("exceptions"), state
    assert any("n_ctx=64" in e for e in state.get("errors", [])), state
