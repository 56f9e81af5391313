"""Reports stay usable at 10, 250, 500 and 2,000 tokens: whole patterns, figures of bounded size, the causal
section on long prompts (and what it chose), over-long prompts refused before the model loads; and the small
layout fixes (unambiguous split-character ticks, DLA labels, symmetric neuron shading)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from interp.report import figures
from interp.report.figures import (
    LENS_CELL_PX,
    LENS_WINDOW,
    OVERVIEW_PX,
    TOKEN_PX,
    pattern_overview,
    pooled_pattern,
    tick_label,
)

SIZES = (10, 250, 500, 2000)


def induction_pattern(n: int, period: int) -> np.ndarray:
    """A planted induction head on a sequence repeating every ``period`` tokens: query q attends to q - period + 1
    (the token after the previous occurrence of its own token) once there is one, else to position 0."""
    m = np.full((n, n), np.nan)
    m[np.tril_indices(n)] = 0.0
    for q in range(n):
        m[q, q - period + 1 if q >= period else 0] = 1.0
    return m


def pooled_reference(m: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Block shares by explicit loops in float64 (the definition, written out)."""
    k = len(edges) - 1
    out = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(k):
            if edges[j] <= edges[i + 1] - 1:  # some key of block j is visible to some query of block i
                qs = range(edges[i], edges[i + 1])
                out[i, j] = np.mean([np.nansum(m[q, edges[j]:edges[j + 1]]) for q in qs])
    return out


@pytest.mark.parametrize("n", SIZES)
def test_pooled_pattern_keeps_every_weight_and_the_induction_stripe(n):
    m = induction_pattern(n, period=max(2, n // 3))
    pooled, edges = pooled_pattern(m)
    assert edges[0] == 0 and edges[-1] == n and len(edges) - 1 == min(n, figures.OVERVIEW_BLOCKS)
    torch.testing.assert_close(torch.tensor(pooled), torch.tensor(pooled_reference(m, edges)), equal_nan=True,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(np.nansum(pooled, axis=1)), torch.ones(len(edges) - 1, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)  # no attention lost between blocks
    # the stripe: a late query block puts its attention on the block one period back (± one block)
    period = max(2, n // 3)
    q = n - 1
    qb = np.searchsorted(edges, q, side="right") - 1
    kb = np.searchsorted(edges, q - period + 1, side="right") - 1
    assert np.nansum(pooled[qb, max(0, kb - 1):kb + 2]) > 0.99


@pytest.mark.parametrize("n", SIZES)
def test_pattern_overview_is_bounded_and_its_ticks_never_crowd(n):
    tokens = [f"t{i}" for i in range(n)]
    fig = pattern_overview(induction_pattern(n, max(2, n // 3)), tokens, "L1H0")
    assert fig.layout.width <= OVERVIEW_PX + figures._AXIS_ROOM and fig.layout.height <= OVERVIEW_PX + 300
    ticks = fig.layout.xaxis.tickvals
    blocks = fig.data[0].z.shape[1]
    assert len(ticks) * TOKEN_PX <= OVERVIEW_PX + TOKEN_PX and blocks <= figures.OVERVIEW_BLOCKS
    assert f"all {n} positions" in fig.layout.title.text


def test_split_character_ticks_are_unambiguous():
    from interp.tokenize import token_labels

    labels = token_labels(["我".encode()[:1], "我".encode()[1:], b"x"])  # 我 cut in two: 我₀ 我₁
    assert labels[:2] == ["我₀", "我₁"]
    # piece 1 at position 11 and piece 11 (were there one) at position 1 must read differently
    assert tick_label("我₁", 11) == "我₁<sub>·11</sub>" and tick_label("我₁₁", 1) == "我₁₁<sub>·1</sub>"
    assert tick_label("x", 3) == "x<sub>3</sub>"  # no dot where nothing is ambiguous


def test_dla_bar_labels_have_rows_of_their_own():
    dla = pd.DataFrame({"component": [f"L{i // 4}H{i % 4}" for i in range(12)] + ["embed", "bias"],
                        "kind": ["head"] * 12 + ["embed", "bias"],
                        "contribution": np.random.default_rng(0).normal(size=14)})
    fig = figures.dla_bar(dla, k=12)
    bar = fig.data[0]
    assert bar.orientation == "h" and bar.textposition == "none"  # nothing written on the bars
    assert fig.layout.height >= figures.DLA_ROW_PX * len(bar.y)  # each label its own row
    assert list(bar.y) == dla.reindex(dla.contribution.abs().sort_values(ascending=False).index).component[:12].tolist()


def test_neuron_prompt_shading_is_symmetric_on_the_neurons_scale():
    from interp.report.widgets import shading_scale, token_shading

    # a prompt where the neuron is slightly negative everywhere, a neuron reaching 4.0 over the corpus
    scale = shading_scale([-0.05, -0.1, -0.02], (-0.17, 4.0))
    assert scale == 4.0
    line = token_shading(["a", "b", "c"], [-0.05, -0.1, -0.02], scale=scale)
    alphas = [float(a) for a in re.findall(r"rgba\(31,119,180,([0-9.]+)\)", line)]
    np.testing.assert_allclose(alphas, [0.05 / 4, 0.1 / 4, 0.02 / 4], atol=1e-3)  # pale, not deep blue
    assert shading_scale([0.0, 0.0]) == 1.0  # an all-zero line stays white


# ----------------------------------------------------------------------------------------------------
# a whole report on a long prompt: a tiny byte-level model with a 512-token context


@pytest.fixture(scope="module")
def long_report():
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report import ReportOptions, collect_report, render_html
    from interp.report.inputs import attach_byte_tokenizer

    torch.manual_seed(0)
    model = attach_byte_tokenizer(HookedDecoder(DecoderConfig(
        d_vocab=256, n_ctx=512, d_model=32, n_layers=2, n_heads=2, d_mlp=64, positional="rotary",
        name="random-tiny-long")).eval())
    prompt = ("abcdefghij klmnopqrst " * 6)[:120]  # 120 byte tokens, repeating: an induction task everywhere
    options = ReportOptions(k_next=3, k_neurons=3, n_answer_neurons=1, k_answers=2, n_pattern_heads=1,
                            superposition_sets=("W_E",), max_pairs=200, hist_pairs=100, corpus=None)
    with torch.no_grad():
        data = collect_report(model, prompt, options)
    return model, data, render_html(data)


def _specs(page: str) -> dict:
    return {m.group(1): json.loads(m.group(2)) for m in
            re.finditer(r'<script type="application/json" id="(fig-[^"]+)-spec">(.*?)</script>', page, re.DOTALL)}


def test_long_report_figures_are_bounded_and_say_what_they_cut(long_report):
    _, data, page = long_report
    specs = _specs(page)
    n = len(data.str_tokens)
    assert n == 120
    widths = {k: v["layout"].get("width") for k, v in specs.items()}
    lens_width = widths["fig-lens-grid"]
    assert lens_width <= figures._AXIS_ROOM + LENS_CELL_PX * LENS_WINDOW
    assert f"last {LENS_WINDOW} of {n} positions" in page
    # every notable head: the whole pattern (pooled) and the token-by-token window
    heads = [k for k in specs if k.startswith("fig-pattern-all-")]
    assert heads and all(widths[k] <= OVERVIEW_PX + figures._AXIS_ROOM for k in heads)
    assert f"A {n}-token prompt: each head is drawn whole" in page
    for k, v in specs.items():  # no figure grows with the prompt beyond a few thousand pixels
        assert (v["layout"].get("width") or 0) <= 4000 and (v["layout"].get("height") or 0) <= 4000, k
    assert ".scroll{overflow:auto;max-height:36em}" in page  # long tables (tokens) scroll inside their box


def test_long_report_patches_the_positions_that_matter(long_report):
    from interp.analysis import causal
    from interp.report.data import induction_pair

    model, data, page = long_report
    p = data.patching
    assert p, "the causal section runs on a long prompt"
    n_clean = len(p["tokens"])
    positions = sorted(p["grid"].position.unique())
    pair = p["pair"]
    assert n_clean - 1 in positions and pair["position"] in positions
    assert len(positions) <= 2 + 16 < n_clean
    assert any("patched at" in note for note in p["notes"]) and "Shortened: resid_pre is patched at" in page
    # the cells it patched equal the full sweep's at those positions (an independent run over every position)
    pair_again, _ = induction_pair(model, model.to_tokens(data.prompt))
    assert pair_again.position == pair["position"]
    full = causal.activation_patching(model, pair_again.clean, pair_again.corrupted, where="resid_pre",
                                      answer=pair_again.answer, wrong=pair_again.wrong, layers=[1])
    mine = p["grid"][p["grid"].layer == 1].set_index("position").effect
    torch.testing.assert_close(torch.tensor(mine.to_numpy()),
                               torch.tensor(full.set_index("position").effect[mine.index].to_numpy()),
                               rtol=1e-4, atol=1e-5)


def test_prompt_longer_than_the_context_is_refused_before_loading(monkeypatch, capsys):
    from interp import cli
    from interp.report import inputs
    from interp.zoo import ZOO, default_model_name

    if not (ZOO / default_model_name() / "tokenizer.json").is_file():
        pytest.skip("the shipped model is not in models/")
    n_ctx = inputs.context_length(None)
    assert n_ctx == json.loads((ZOO / default_model_name() / "config.json").read_text())["n_ctx"]

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the prompt was checked")

    monkeypatch.setattr(inputs, "load_model", no_loading)
    long = "And it came to pass. " * 200
    for argv in (["report", long, "--out", "r.html"], ["generate", long], ["probe", "attention", long]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"at most n_ctx={n_ctx} tokens" in err and "before loading the model" in err, err


def test_context_length_reads_transformers_spellings(tmp_path):
    from interp.report.inputs import context_length

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 1024}))
    assert context_length(str(tmp_path)) == 1024
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 4096}))
    assert context_length(str(tmp_path)) == 4096
    (tmp_path / "config.json").write_text("{broken")
    assert context_length(str(tmp_path)) is None


# ----------------------------------------------------------------------------------------------------
# the attention view, CircuitsVis-style: each head its own colour, a thumbnail of each head's whole pattern.
# Its script runs under node against a minimal DOM (the browser test, tests/test_dashboard_e2e.py, needs chromium).

_DOM = r"""
class El { constructor(o = {}) { Object.assign(this, {dataset: {}, style: {}, listeners: {}}, o);
  this.classList = {add() {}, remove() {}}; }
  addEventListener(t, f) { (this.listeners[t] = this.listeners[t] || []).push(f); }
  dispatchEvent(e) { (this.listeners[e.type] || []).forEach(f => f(e)); } }
const spec = JSON.parse(process.argv[process.argv.length - 1]);
const toks = Array.from({length: spec.n}, () => new El());
const boxes = spec.checked.map((c, i) => new El({checked: c, dataset: {index: String(i)}}));
const canvases = spec.checked.map((c, i) => { const cv = new El({width: spec.side, dataset: {index: String(i)},
  parentNode: new El()});
  cv.getContext = () => ({createImageData: (w, h) => ({data: new Uint8ClampedArray(w * h * 4)}),
                          putImageData: img => { cv.img = Array.from(img.data); }});
  return cv; });
const info = new El(), text = new El();
const root = {dataset: {}, querySelector: s => s === 'script.attn-data' ? {textContent: spec.payload}
              : s === '.attn-info' ? info : text,
              querySelectorAll: s => s === '.attn-tok' ? toks : s === 'canvas.attn-thumb' ? canvases : boxes};
global.document = {getElementById: () => root};
global.Event = class { constructor(t) { this.type = t; } };
global.atob = s => Buffer.from(s, 'base64').toString('binary');
eval(spec.script);
toks[spec.n - 1].dispatchEvent(new Event('mouseenter'));
console.log(JSON.stringify({backgrounds: toks.map(t => t.style.background), thumbs: canvases.map(c => c.img),
                            info: info.textContent}));
"""


@pytest.mark.skipif(__import__("shutil").which("node") is None, reason="node is not installed")
def test_attention_view_colours_each_head_and_draws_whole_thumbnails(tmp_path):
    import html as html_mod
    import shutil
    import subprocess

    from interp.report.widgets import attention_view, head_colors

    n = 7
    rows = []  # planted heads: L0H0 attends to the previous token, L0H1 to position 0
    for q in range(n):
        for k in range(q + 1):
            rows.append((0, 0, q, k, 1.0 if k == max(q - 1, 0) else 0.0))
            rows.append((0, 1, q, k, 1.0 if k == 0 else 0.0))
    pats = pd.DataFrame(rows, columns=["layer", "head", "query_pos", "key_pos", "weight"])
    page = attention_view([f"t{i}" for i in range(n)], pats, [(0, 0), (0, 1)], checked=[(0, 0), (0, 1)])
    colors = head_colors(2)
    assert colors[0] != colors[1] and f"background:rgb({','.join(map(str, colors[1]))})" in page
    payload = html_mod.unescape(re.search(r'class="attn-data">(.*?)</script>', page, re.DOTALL).group(1))
    script = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)[-1]
    spec = {"n": n, "side": n, "checked": [True, True], "payload": payload, "script": script}
    res = subprocess.run([shutil.which("node"), "-e", _DOM, "--", json.dumps(spec)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    bg = out["backgrounds"]
    # hovering the last token: its previous token in L0H0's colour, the first token in L0H1's, both at full weight
    assert bg[n - 2] == f"rgba({','.join(map(str, colors[0]))},1.000)"
    assert bg[0] == f"rgba({','.join(map(str, colors[1]))},1.000)"
    # the other keys it can see are coloured transparent (alpha 0): the shaded span is the causal window
    assert all(b.startswith("rgba(") and b.endswith(",0.000)") for b in bg[1:n - 2] + [bg[n - 1]]), bg
    for h, want_key in ((0, lambda q: max(q - 1, 0)), (1, lambda q: 0)):
        alpha = np.array(out["thumbs"][h][3::4]).reshape(n, n)
        want = np.zeros((n, n))
        for q in range(n):
            want[q, want_key(q)] = 255
        np.testing.assert_array_equal(alpha, want)  # the head's whole pattern, pixel for pixel
        rgb = np.array(out["thumbs"][h]).reshape(n, n, 4)[want > 0][:, :3]
        assert (rgb == colors[h]).all()


def test_a_long_clean_corrupted_pair_is_shown_in_excerpts_that_keep_the_difference():
    from interp.report.data import pair_excerpt

    assert pair_excerpt("short a", "short b") == ("short a", "short b", None)
    rng = np.random.default_rng(0)
    clean = "".join(rng.choice(list("abcdefgh "), size=9000))
    corrupted = clean[:4321] + "XYZ" + clean[4324:]
    a, b, note = pair_excerpt(clean, corrupted, limit=1200)
    for shown, text in ((a, clean), (b, corrupted)):
        assert len(shown) < 1500 and shown.startswith(text[:200]) and shown.endswith(text[-200:])
        cuts = [int(n.replace(",", "")) for n in re.findall(r"\[… ([0-9,]+) characters …\]", shown)]
        kept = re.sub(r" \[… [0-9,]+ characters …\] ", "", shown)
        assert len(cuts) == 2 and sum(cuts) + len(kept) == len(text)  # every character is shown or counted
    assert clean[4300:4330] in a and corrupted[4300:4330] in b  # the difference is in view
    assert "9,000 and 9,000 characters" in note
