"""End to end in a real browser: every dashboard page and the HTML report at 10, 250, 500 and 2,000 tokens, and in
Chinese.

Chromium is Debian's ``chromium`` package. When it is missing and we are root, the test installs it with
``apt-get`` (under a timeout); it skips, saying why, only when that is impossible. One Chromium is driven
through the DevTools protocol (``interp.report.chromium``) for the whole module. A dashboard page counts as
loaded when Streamlit says its script run has finished, its title is rendered and every plotly chart has been
drawn; then the DOM is read as a person would see it (``LABELS_JS``, ``FIGURES_JS``):

* no figure wider than the viewport unless it sits in an element that scrolls, and no figure drawing more than
  ``MAX_CELLS`` cells or points (the payload that bounds its draw time; the times themselves are measured in
  ``benchmarks/report_load.py``, not asserted here);
* no two tick labels of an axis overlap (bounding boxes), none reads like another (split characters: 今₁·11 vs
  今₁₁·1), none shows U+FFFD, and no U+FFFD anywhere in the page text;
* hovering a token (a real mouse event at its position) changes the interactive attention view;
* the report at 250 tokens (the shipped model on a repeated random sequence) draws its induction head's whole
  pattern, and the stripe one period below the diagonal carries the attention; at 2,000 tokens it says what it cut.

The shipped model reads 256 tokens: 10 and 250 tokens use it, longer prompts a model with n_ctx 2048 —
``models/docs-bible-austen-2l-2k`` when it ships, else a tiny random one with the shipped tokenizer (real text).
Screenshots go to ``$INTERP_SCREENSHOTS`` when set, else to a temporary folder (printed with ``-s``).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "docs-bible-austen-2l"  # reads 256 tokens
SHIPPED_2K = ROOT / "models" / "docs-bible-austen-2l-2k"  # reads 2,048 tokens, once it ships
LENGTHS = (10, 250, 500, 2000)
ZH = "今天天气真好啊"  # characters the shipped tokenizer cuts into byte pieces, labelled 今₀ 今₁ …
# Charts each page must draw (plotly) with the n_ctx-2048 model; 0 for pages with tables and buttons only (and
# SAE features / Attribution graph, which draw only for a model that ships an SAE / transcoders).
PAGES = {"Overview": 1, "Attention": 2, "Neurons": 0, "Compare": 2, "Superposition": 2, "SAE features": 0,
         "Logit lens": 2, "Patching": 3, "Attribution graph": 0, "Edges": 1, "Steering": 0, "Report": 0}
ZH_PAGES = ("Attention", "Logit lens", "Patching")  # the pages with token axes
# The most cells (heatmap) or points a figure may draw: a 128 x 128 pooled pattern plus a little. Figures that grew
# with the prompt (a 2,000 x 2,000 pattern: 4 M cells) froze the tab for tens of seconds.
MAX_CELLS = 20_000


def text_of(tokenizer, text: str, n: int) -> str:
    """The longest start of ``text`` that the tokenizer reads as exactly ``n`` tokens."""
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    for m in range(n, n + 8):
        cut = text[:offsets[m - 1][1]]
        if len(tokenizer.encode(cut, add_special_tokens=False).ids) == n:
            return cut
    raise AssertionError(f"no start of the text is exactly {n} tokens")


def repeated_random_words(tokenizer, n: int, seed: int = 0) -> str:
    """``n // 2`` random vocabulary words (" word": one token each), twice: an induction task of period n // 2."""
    vocab = sorted(w for w in (tokenizer.decode([i]) for i in range(tokenizer.get_vocab_size()))
                   if re.fullmatch(r" [a-z]{3,}", w))
    words = np.random.default_rng(seed).choice(vocab, size=n // 2, replace=False)
    return "".join(words) * 2


@pytest.fixture(scope="module")
def tokenizer():
    if not (SHIPPED / "tokenizer.json").is_file():
        pytest.skip("the shipped model is not in models/")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(SHIPPED / "tokenizer.json"))


@pytest.fixture(scope="module")
def prompts(tokenizer) -> dict:
    """Real text of 10, 250, 500 and 2,000 tokens (the shipped model's held-out documents), and the Chinese line."""
    text = (SHIPPED / "heldout.txt").read_text(encoding="utf-8").replace("<|endoftext|>", "\n")
    out = {str(n): text_of(tokenizer, text, n) for n in LENGTHS}
    out["zh"] = ZH
    return out


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory, tokenizer):
    """A model that reads 2,048 tokens: the shipped one when it exists, else a tiny random one (same tokenizer)."""
    if (SHIPPED_2K / "config.json").is_file():
        return SHIPPED_2K
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("e2e") / "tiny-2k"
    HookedDecoder(DecoderConfig(d_vocab=tokenizer.get_vocab_size(), n_ctx=2048, d_model=32, n_layers=2, n_heads=2,
                                d_mlp=64, positional="rotary", name="e2e-tiny-2k"), tokenizer=tokenizer).save(folder)
    return folder


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
def server(long_model_dir, prompts):
    """The dashboard on the n_ctx-2048 model (the pages choose the prompt with ?prompt=...)."""
    from interp.report.chromium import dashboard_server

    with dashboard_server(ROOT, "--model", str(long_model_dir), "--prompt", prompts["10"]) as base:
        yield base


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


def _load(browser, url: str, page: str, min_charts: int) -> dict:
    try:
        return browser.load_dashboard_page(url, page, min_charts)
    except TimeoutError as e:
        pytest.fail(str(e))


def _labels_ok(browser, where: str) -> dict:
    from interp.report.chromium import LABELS_JS

    lab = browser.evaluate(LABELS_JS)
    assert lab["n_overlaps"] == 0, (where, lab["overlaps"])
    assert not lab["bad"] and lab["replacement_chars"] == 0, (where, lab["bad"])
    assert not lab["duplicates"], (where, lab["duplicates"])  # every tick reads differently: none is ambiguous
    return lab


def _figures_ok(browser, where: str) -> list[dict]:
    """Every figure fits the viewport or scrolls inside its own box, and draws a bounded number of cells."""
    from interp.report.chromium import FIGURES_JS

    figs = browser.evaluate(FIGURES_JS)
    for f in figs:
        assert f["fits"] or f["scrolls"], (where, "wider than the viewport and not in a scrolling box", f)
        assert 0 < f["cells"] <= MAX_CELLS, (where, f)
    return figs


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
def test_every_page_at_every_length_in_chromium(server, browser, shots, prompts):
    cases = [(name, page) for name in map(str, LENGTHS) for page in PAGES] + [("zh", page) for page in ZH_PAGES]
    for name, page in cases:
        start = time.perf_counter()
        state = _load(browser, f"{server}/?page={quote(page)}&prompt={quote(prompts[name])}", page, PAGES[page])
        where = f"{page} @ {name}"
        print(f"{where}: {time.perf_counter() - start:.1f} s")
        assert state["pages"] == list(PAGES), (where, "a page this test does not visit", state["pages"])
        assert not state["exceptions"], (where, state["exceptions"])
        assert not state["errors"], (where, state["errors"])
        _labels_ok(browser, where)
        _figures_ok(browser, where)
        if name in ("2000", "zh"):
            _shot(browser, shots / f"{page.lower().replace(' ', '_')}-{name}.png")
        if page == "Attention":
            assert state["views"] == 1, (where, state)
            _hover_changes_the_view(browser, where)


# options that keep a report on a long prompt to seconds (the causal section stays on)
REPORT_OPTIONS = {"k_next": 5, "k_neurons": 3, "n_answer_neurons": 2, "k_answers": 3, "max_pairs": 2000,
                  "hist_pairs": 500, "superposition_sets": ("W_E", "W_out"),
                  "corpus": str(ROOT / "tests" / "fixtures" / "tiny_corpus.txt"), "max_corpus_tokens": 2048}


@pytest.fixture(scope="module")
def reports(long_model_dir, prompts, tokenizer, tmp_path_factory):
    """Reports at 10 and 250 tokens (the shipped model; 250 = a repeated random sequence), 500, 2,000 and the
    Chinese line (the n_ctx-2048 model): ``{name: (path, ReportData)}``."""
    from interp.report import ReportOptions, collect_report, write_report
    from interp.report.inputs import load_model

    shipped, long = load_model(str(SHIPPED)), load_model(str(long_model_dir))
    folder = tmp_path_factory.mktemp("reports")
    todo = {"10": (shipped, prompts["10"]), "250": (shipped, repeated_random_words(tokenizer, 250)),
            "500": (long, prompts["500"]), "2000": (long, prompts["2000"]), "zh": (long, prompts["zh"])}
    out = {}
    for name, (model, prompt) in todo.items():
        with torch.no_grad():
            data = collect_report(model, prompt, ReportOptions(**REPORT_OPTIONS))
        out[name] = (write_report(data, folder / f"report-{name}.html", plotly="shared"), data)
    return out


# the pooled pattern of one head as drawn: its cells and the position span of each key block ("a–b", its x)
POOLED_JS = """((id) => { const t = document.getElementById(id)._fullData[0];
  return {z: Array.from(t.z, row => Array.from(row)), spans: Array.from(t.x)}; })(%r)"""


def _pooled(browser, fig_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A drawn overview's cells and the first position of each block."""
    fig = browser.evaluate(POOLED_JS % fig_id)
    z = np.array([[np.nan if v is None else v for v in row] for row in fig["z"]], dtype=float)
    return z, np.array([int(s.split("–")[0]) for s in fig["spans"]])


def _induction_stripe(browser, fig_id: str, period: int) -> float:
    """The share of attention the drawn overview puts within one block of the induction offset (query q to key
    q - period + 1), averaged over the query blocks of the second copy."""
    z, starts = _pooled(browser, fig_id)
    shares = []
    for i, first in enumerate(starts):
        if first >= period:
            k = int(np.searchsorted(starts, first - period + 1, side="right")) - 1
            shares.append(np.nansum(z[i, max(0, k - 1):k + 2]))
    return float(np.mean(shares))


@pytest.mark.slow
def test_report_at_every_length_in_chromium(reports, browser, shots):
    from interp.report.figures import LENS_WINDOW
    from interp.report.render import NEURON_PROMPT_TOKENS

    for name, (path, data) in reports.items():
        n = len(data.token_ids)
        seconds = browser.open_and_time(path.as_uri())  # measured in benchmarks/report_load.py, not asserted here
        browser.evaluate("interpDrawAll()")  # figures below the fold draw when scrolled to; draw them all now
        state = browser.wait_for_plots(expected=10, timeout=120)
        assert state["drawn"] == state["plots"]
        _shot(browser, shots / f"html-report-{name}.png")
        lab = _labels_ok(browser, f"report @ {name}")
        assert lab["labels"] > 0
        figs = _figures_ok(browser, f"report @ {name}")
        _hover_changes_the_view(browser, f"report @ {name}")
        text = browser.evaluate("document.body.innerText")
        for f in figs:  # every head drawn whole holds all its attention: each query block's shares sum to 1
            if f["id"].startswith("fig-pattern-all-"):
                z, _ = _pooled(browser, f["id"])
                np.testing.assert_allclose(np.nansum(z, axis=1), 1.0, atol=0.01, err_msg=f"{name} {f['id']}")
        if n > LENS_WINDOW:  # what was cut, and why, in a line beside the figure
            assert f"the last {LENS_WINDOW} of {n} positions" in text, name
            assert f"A {n}-token prompt: each head is drawn whole" in text, name
        if n > 64:
            assert "Shortened: resid_pre is patched at" in text, name
        if n > NEURON_PROMPT_TOKENS:  # each neuron page shades the prompt's last tokens, saying so
            assert f"The last {NEURON_PROMPT_TOKENS} of its {n} tokens." in text, name
        if len(data.patching["pair"]["clean"]) > 1200:  # the clean/corrupted texts: excerpts, saying so
            assert "Shortened: the texts are" in text, name
        if len(data.view_heads) < len(data.head_scores[["layer", "head"]].drop_duplicates()):
            assert f"The view holds {len(data.view_heads)} of the" in text, name
        if name == "250":  # the shipped model's induction head, drawn whole: its stripe carries the attention
            induction = data.notable_heads[data.notable_heads.role == "induction"].iloc[0]
            fig_id = f"fig-pattern-all-{induction.layer}-{induction['head']}"
            assert any(f["id"] == fig_id and f["fits"] for f in figs), (fig_id, figs)
            assert _induction_stripe(browser, fig_id, period=n // 2) > 0.5
        print(f"report {name}: {n} tokens, opened in {seconds:.2f} s, {state['plots']} figures, "
              f"{lab['labels']} tick labels")


@pytest.mark.slow
def test_bad_prompt_shows_an_error_in_the_browser(server, browser):
    from interp.report.chromium import DASHBOARD_JS

    # type a prompt longer than the model's n_ctx (2048) into the sidebar: the page must show st.error
    url = f"{server}/?page=Overview"
    _load(browser, url, "Overview", 1)
    js = """(() => {
      const ta = document.querySelector('textarea');
      const setter = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;
      setter.call(ta, ' the'.repeat(2100));
      ta.dispatchEvent(new Event('input', {bubbles: true}));
      ta.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', ctrlKey: true, bubbles: true}));
      ta.blur();
      return true;
    })()"""
    browser.evaluate(js)
    deadline, state = time.time() + 60, {}
    while time.time() < deadline:
        state = browser.evaluate(DASHBOARD_JS) or {}
        if state.get("errors") or state.get("exceptions"):
            break
        time.sleep(0.5)
    assert not state.get("exceptions"), state
    assert any("n_ctx=2048" in e for e in state.get("errors", [])), state
