"""End to end in a real browser: every dashboard page and the HTML report, at 10, 160 and 500 tokens and in Chinese.

Chromium is Debian's ``chromium`` package. When it is missing and we are root, the test installs it with
``apt-get`` (under a timeout); it skips, saying why, only when that is impossible. One Chromium is driven
through the DevTools protocol (``interp.report.chromium``) for the whole module. A page counts as loaded
when its title is rendered and every plotly chart has been drawn; then the DOM is read as a person
would see it: no two tick labels of an axis overlap (bounding boxes), no label shows U+FFFD, and
hovering a token (a real mouse event at its position) changes the interactive attention view.
Screenshots go to ``$INTERP_SCREENSHOTS`` when set, else to a temporary folder (printed with ``-s``).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The quick brown fox jumps over the lazy dog while the cat sat on the mat and watched the rain. ") * 8
# The byte-level test model reads one token per UTF-8 byte: these are 10, 160 and 500 tokens; the Chinese
# prompt is 21 byte tokens, three per character, labelled 今₀ 今₁ 今₂ …
PROMPTS = {"10": TEXT[:10], "160": TEXT[:160], "500": TEXT[:500], "zh": "今天天气真好啊"}
# Charts each page must draw (plotly); 0 for pages with tables and buttons only.
PAGES = {"Overview": 1, "Attention": 2, "Neurons": 0, "Compare": 2, "Superposition": 2, "Logit lens": 2, "Report": 0}
READY_JS = """(() => {
  const h1 = [...document.querySelectorAll('h1')].map(e => e.innerText.trim());
  const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]').length;
  const plots = document.querySelectorAll('.js-plotly-plot').length;
  const frames = [...document.querySelectorAll('iframe')];
  const views = frames.filter(f => { try { return !!f.contentDocument.querySelector('.attn-view'); }
                                     catch (e) { return false; } }).length;
  return {h1, charts, plots, frames: frames.length, views,
          exceptions: [...document.querySelectorAll('[data-testid="stException"]')].map(e => e.innerText),
          errors: [...document.querySelectorAll('[data-testid="stAlertContentError"]')].map(e => e.innerText),
          text: document.body ? document.body.innerText.length : 0};
})()"""


def _ensure_chromium() -> str:
    from interp.report.chromium import find_chromium

    found = find_chromium()
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
        if find_chromium():
            return find_chromium()
    pytest.skip(f"chromium could not be installed with apt-get: {log.strip()}")


def _ensure_cjk_font() -> None:
    """Screenshots of the Chinese prompt need a CJK font (the DOM checks do not): install one when we can."""
    try:
        if subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, timeout=30, check=False).stdout.strip():
            return
    except (OSError, subprocess.TimeoutExpired):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "fonts-wqy-zenhei"], capture_output=True, timeout=600, env=env,
                       check=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("e2e") / "tiny"
    from interp.report.inputs import byte_tokenizer

    HookedDecoder(DecoderConfig(d_vocab=256, n_ctx=512, d_model=32, n_layers=2, n_heads=2, name="e2e-tiny"),
                  tokenizer=byte_tokenizer()).save(folder)
    return folder


@pytest.fixture(scope="module")
def server(model_dir):
    from interp.report.chromium import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "apps" / "dashboard.py"),
           "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--", "--model", str(model_dir), "--prompt", PROMPTS["10"]]
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
    _ensure_cjk_font()
    pytest.importorskip("websockets.sync.client", reason="the websockets client (a streamlit dependency) is missing")
    from interp.report.chromium import launch

    with launch(chromium, tmp_path_factory.mktemp("chromium-profile")) as tools:
        yield tools


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ["INTERP_SCREENSHOTS"]) if os.environ.get("INTERP_SCREENSHOTS") else \
        tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


def _shot(browser, path: Path) -> None:
    from PIL import Image

    path.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
    with Image.open(path) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    # a rendered page has text, tables and charts: far more than a blank or spinner-only screen
    assert colours is None or len(colours) > 200, (path.name, len(colours or []))


def _load(browser, url: str, page: str, min_charts: int, timeout: float = 240) -> dict:
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


def _labels_ok(browser, where: str) -> dict:
    from interp.report.chromium import LABELS_JS

    lab = browser.evaluate(LABELS_JS)
    assert lab["n_overlaps"] == 0, (where, lab["overlaps"])
    assert not lab["bad"] and lab["replacement_chars"] == 0, (where, lab["bad"])
    return lab


# The attention view under the mouse: the centre of token `pos` (inside an iframe on the dashboard).
TOKEN_BOX_JS = """((pos) => {
  const frames = [...document.querySelectorAll('iframe')].filter(f => {
    try { return !!f.contentDocument.querySelector('.attn-view'); } catch (e) { return false; } });
  const doc = frames.length ? frames[0].contentDocument : document;
  if (frames.length) frames[0].scrollIntoView({block: 'center'});
  const tok = doc.querySelectorAll('.attn-tok')[pos];
  tok.scrollIntoView({block: 'center'});
  const off = frames.length ? frames[0].getBoundingClientRect() : {left: 0, top: 0};
  const r = tok.getBoundingClientRect();
  return {x: off.left + r.left + r.width / 2, y: off.top + r.top + r.height / 2, n: doc.querySelectorAll('.attn-tok').length};
})(%d)"""
VIEW_STATE_JS = """(() => {
  const frames = [...document.querySelectorAll('iframe')].filter(f => {
    try { return !!f.contentDocument.querySelector('.attn-view'); } catch (e) { return false; } });
  const doc = frames.length ? frames[0].contentDocument : document;
  const toks = [...doc.querySelectorAll('.attn-tok')];
  return {info: doc.querySelector('.attn-info').textContent, shaded: toks.filter(t => t.style.background).length,
          query: doc.querySelector('.attn-view').dataset.query || null};
})()"""


def _hover_changes_the_view(browser, where: str) -> None:
    """Move the mouse onto the last token, then onto the first: the view follows (shading and caption)."""
    before = browser.evaluate(VIEW_STATE_JS)
    n = browser.evaluate(TOKEN_BOX_JS % 0)["n"]
    seen = {}
    for pos in (n - 1, 0):
        box = browser.evaluate(TOKEN_BOX_JS % pos)
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"], y=box["y"])
        time.sleep(0.2)
        seen[pos] = browser.evaluate(VIEW_STATE_JS)
    last, first = seen[n - 1], seen[0]
    # the last token attends over all n tokens; the first only over itself
    assert last["query"] == str(n - 1) and last["shaded"] == n and last["info"] != before["info"], (where, before, last)
    assert first["query"] == "0" and first["shaded"] == 1 and first["info"] != last["info"], (where, first)


@pytest.mark.slow
def test_every_page_at_every_length_in_chromium(server, browser, shots):
    for name, prompt in PROMPTS.items():
        for page, min_charts in PAGES.items():
            state = _load(browser, f"{server}/?page={quote(page)}&prompt={quote(prompt)}", page, min_charts)
            where = f"{page} @ {name}"
            assert not state["exceptions"], (where, state["exceptions"])
            assert not state["errors"], (where, state["errors"])
            _shot(browser, shots / f"{page.lower().replace(' ', '_')}-{name}.png")
            _labels_ok(browser, where)
            if page == "Attention":
                assert state["views"] == 1, (where, state)
                _hover_changes_the_view(browser, where)


@pytest.fixture(scope="module")
def reports(model_dir, tmp_path_factory):

    from interp.report import ReportOptions, collect_report, write_report
    from interp.report.inputs import load_model

    model = load_model(str(model_dir))
    folder = tmp_path_factory.mktemp("reports")
    opts = ReportOptions(k_next=5, k_neurons=3, n_answer_neurons=2, k_answers=3, max_pairs=2000, hist_pairs=500,
                         corpus=str(ROOT / "tests" / "fixtures" / "tiny_corpus.txt"), max_corpus_tokens=2048)
    out = {}
    for name, prompt in PROMPTS.items():
        data = collect_report(model, prompt, opts)
        out[name] = write_report(data, folder / f"report-{name}.html", plotly="shared")
    return out


@pytest.mark.slow
def test_report_at_every_length_in_chromium(reports, browser, shots):
    for name, path in reports.items():
        seconds = browser.open_and_time(path.as_uri())  # measured in benchmarks/report_load.py, not asserted here
        browser.evaluate("interpDrawAll()")  # figures below the fold draw when scrolled to; draw them all now
        state = browser.wait_for_plots(expected=10, timeout=120)
        assert state["drawn"] == state["plots"]
        _shot(browser, shots / f"report-{name}.png")
        lab = _labels_ok(browser, f"report @ {name}")
        assert lab["labels"] > 0
        _hover_changes_the_view(browser, f"report @ {name}")
        print(f"report {name}: opened in {seconds:.2f} s, {state['plots']} figures, {lab['labels']} tick labels")


@pytest.mark.slow
def test_bad_prompt_shows_an_error_in_the_browser(server, browser):
    # type a prompt longer than the model's n_ctx (512) into the sidebar: the page must show st.error
    url = f"{server}/?page=Overview"
    _load(browser, url, "Overview", 1)
    js = """(() => {
      const ta = document.querySelector('textarea');
      const setter = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;
      setter.call(ta, 'x'.repeat(600));
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
    assert any("n_ctx=512" in e for e in state.get("errors", [])), state
