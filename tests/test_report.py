"""Reports: one self-contained HTML (or Markdown) file whose numbers equal the analyzers' outputs.

The report is built for the default model (``interp.load()``), parsed back with the standard library's
``html.parser`` and compared, table by table, with fresh analyzer calls and with independent references
(the model's own softmax for the next-token distribution, UTF-8 bytes / the tokenizer for token ids).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp.errors import InterpError
from interp.report import ReportOptions, collect_report, render_html, render_markdown, write_report
from interp.report.inputs import encode_prompt, load_model
from interp.report.readback import check_well_formed, external_references, read_tables, section_ids
from interp.report.render import SECTIONS, format_for

PROMPT = "The cat sat on the mat. The cat"
# Small enough for 2 shared CPU cores; the structure is the same as the defaults'.
OPTIONS = ReportOptions(k_next=5, k_neurons=5, n_answer_neurons=2, k_answers=3, n_pattern_heads=2,
                        superposition_sets=("W_E", "W_out"), max_pairs=1500, hist_pairs=500, k_examples=2,
                        max_corpus_tokens=1024)


@pytest.fixture(scope="module")
def model():
    return load_model()  # the shipped default (the random stand-in until a trained model ships)


@pytest.fixture(scope="module")
def data(model):
    return collect_report(model, PROMPT, OPTIONS)


@pytest.fixture(scope="module")
def page(data):
    return render_html(data)


@pytest.fixture(scope="module")
def tables(page):
    return read_tables(page)


def figure_specs(page: str) -> dict:
    """Each figure's plotly spec (data, layout, config) by div id, from the page's JSON script blocks."""
    import json
    import re

    return {m.group(1): json.loads(m.group(2)) for m in
            re.finditer(r'<script type="application/json" id="(fig-[^"]+)-spec">(.*?)</script>', page, re.DOTALL)}


def _floats(col) -> np.ndarray:
    return np.array([float(v) for v in col], dtype=np.float64)


def test_html_is_well_formed_offline_and_has_every_section(page):
    assert check_well_formed(page) == []
    assert section_ids(page) == list(SECTIONS)
    assert external_references(page) == []
    from plotly.offline import get_plotlyjs

    # plotly's library is embedded exactly once; figures reuse it (drawn by one loader when they scroll in)
    assert page.count(get_plotlyjs()[:500]) == 1
    specs = figure_specs(page)
    assert len(specs) >= 6 and all(spec["data"] for spec in specs.values())
    # every histogram: one per direction set, and per layer for the per-layer sets
    n_layers = int(load_model().cfg.n_layers)
    assert {k for k in specs if k.startswith("fig-angles-")} == {
        "fig-angles-W_E", *(f"fig-angles-W_out-{i}" for i in range(n_layers))}


def test_model_section_matches_config(model, tables):
    got = dict(zip(tables["model"].field, tables["model"].value))
    cfg = model.cfg
    for key in ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx"):
        assert int(got[key]) == int(getattr(cfg, key))
    assert int(got["parameters"]) == sum(p.numel() for p in model.parameters())


def test_tokenization_matches_an_independent_encoding(model, tables, data):
    ids = [int(v) for v in tables["tokens"].token_id]
    if getattr(model, "_interp_byte_tokenizer", False):
        reference = list(PROMPT.encode("utf-8"))  # the stand-in reads bytes
    else:
        reference = model.tokenizer.encode(PROMPT, add_special_tokens=False)
        if model.cfg.bos_token_id is not None:
            reference = [model.cfg.bos_token_id] + reference
    assert ids == reference == data.token_ids


def test_next_token_distribution_is_the_models_softmax(model, tables):
    tokens = encode_prompt(model, PROMPT)
    with torch.no_grad():
        probs = torch.softmax(model(tokens)[0, -1].double(), -1)
    top = probs.topk(OPTIONS.k_next)
    t = tables["next_tokens"]
    assert [int(v) for v in t.token_id] == top.indices.tolist()
    np.testing.assert_allclose(_floats(t.prob), top.values.numpy(), rtol=1e-4, atol=1e-7)


def test_logit_lens_tables_equal_the_analyzer(model, tables):
    from interp.analysis.logit_lens import logit_lens, summarize_lens

    grid = summarize_lens(logit_lens(model, encode_prompt(model, PROMPT), k=OPTIONS.k_next, target="final"))
    t = tables["lens_grid"]
    assert len(t) == len(grid) == (model.cfg.n_layers + 1) * len(encode_prompt(model, PROMPT)[0])
    assert list(t.top_token) == list(grid.top_token)
    np.testing.assert_allclose(_floats(t.top_prob), grid.top_prob.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(_floats(t.kl), grid.kl.to_numpy(), rtol=1e-9, atol=1e-12)
    last = grid[grid.position == grid.position.max()]
    f = tables["final_by_layer"]
    np.testing.assert_allclose(_floats(f.target_prob), last.target_prob.to_numpy(), rtol=1e-12)
    # the lens' last layer is the model's output: the final prediction ranks first there
    assert int(f.target_rank.iloc[-1]) == 1


def test_attention_tables_equal_the_analyzer(model, tables, data):
    from interp.analysis.attention import head_scores

    ref = head_scores(model, encode_prompt(model, PROMPT), seed=OPTIONS.seed)
    t = tables["head_roles"]
    assert len(t) == model.cfg.n_layers * model.cfg.n_heads
    for role in ("previous_token", "induction", "attention_sink", "entropy"):
        want = ref[ref.role == role].sort_values(["layer", "head"]).score.to_numpy()
        np.testing.assert_allclose(_floats(t[role]), want, rtol=1e-12, equal_nan=True)
    notable = tables["notable_heads"]
    assert 1 <= len(notable) <= OPTIONS.n_pattern_heads
    for r in notable.itertuples():  # each notable head is the best head of its role
        best = ref[ref.role == r.role].score.max()
        assert math.isclose(float(r.score), best, rel_tol=1e-12)
    # a drawn pattern is a causal distribution over keys for every query
    pat = data.patterns
    sums = pat.groupby(["layer", "head", "query_pos"]).weight.sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    assert (pat.key_pos <= pat.query_pos).all()


def test_neuron_tables_equal_the_analyzer(model, tables):
    from interp.analysis.neurons import neuron_answers, top_neurons

    ref = top_neurons(model, encode_prompt(model, PROMPT), position=-1, k=OPTIONS.k_neurons)
    for name, ranked_by in (("neurons_contribution", "contribution"), ("neurons_activation", "activation")):
        t = tables[name]
        r = ref[ref.ranked_by == ranked_by]
        assert [(int(a), int(b)) for a, b in zip(t.layer, t.neuron)] == list(zip(r.layer, r.neuron))
        np.testing.assert_allclose(_floats(t.contribution), r.contribution.to_numpy(), rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(_floats(t.activation), r.activation.to_numpy(), rtol=1e-12)
    ans = tables["neuron_answers"]
    first = ans[(ans.layer == ans.layer.iloc[0]) & (ans.neuron == ans.neuron.iloc[0])]
    ref_ans = neuron_answers(model, int(first.layer.iloc[0]), int(first.neuron.iloc[0]), k=OPTIONS.k_answers,
                             center=True)
    np.testing.assert_allclose(_floats(first.logit), ref_ans.logit.to_numpy(), rtol=1e-12)
    # the predicted token is the target every contribution refers to
    assert set(tables["neurons_contribution"].target_token) == {tables["next_tokens"].token.iloc[0]}


def test_superposition_table_equals_the_analyzer_and_random_baseline(model, tables):
    from interp.analysis.superposition import direction_set_stats, random_angle_moments

    ref = direction_set_stats(model, sets=OPTIONS.superposition_sets, max_pairs=OPTIONS.max_pairs, seed=OPTIONS.seed)
    t = tables["superposition"]
    assert list(t.set) == list(ref.set)
    np.testing.assert_allclose(_floats(t.mean_abs_cos), ref.mean_abs_cos.to_numpy(), rtol=1e-12)
    # the baseline column is the closed form for random unit vectors in d_model dimensions
    exact = random_angle_moments(int(model.cfg.d_model), 1.0)
    np.testing.assert_allclose(_floats(t.baseline_frac_within_tol), exact["frac_within_tol"], rtol=1e-12)


def test_patching_section_equals_the_analyzers(model, tables, data):
    """Induction on the prompt repeated: the shipped model's induction head L1H3 restores the answer."""
    from interp.analysis.causal import activation_patching, direct_logit_attribution, repeated_text_pair

    pair = repeated_text_pair(model, encode_prompt(model, PROMPT))
    kw = {"answer": pair.answer, "wrong": pair.wrong}
    ref = activation_patching(model, pair.clean, pair.corrupted, where="z", by_position=False, **kw)
    t = tables["patching_heads"]
    np.testing.assert_allclose(_floats(t.effect), ref.effect.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(_floats(t.normalised), ref.normalised.to_numpy(), rtol=1e-9, atol=1e-12)
    best = t.iloc[int(np.argmax(_floats(t.normalised)))]
    assert (int(best.layer), int(best["head"])) == (1, 3)  # the shipped model's induction head
    grid = activation_patching(model, pair.clean, pair.corrupted, where="resid_pre", **kw)
    np.testing.assert_allclose(_floats(tables["patching_grid"].effect), grid.effect.to_numpy(), rtol=1e-9)
    dla = direct_logit_attribution(model, pair.clean, pair.answer, pair.wrong, k_neurons=OPTIONS.k_neurons)
    shown = tables["dla"]
    want = dla.set_index("component").contribution[list(shown.component)]
    np.testing.assert_allclose(_floats(shown.contribution), want.to_numpy(), rtol=1e-9)
    assert data.patching["pair"]["position"] == pair.position


def test_patching_section_edges_equal_the_analyzers(model, tables, page, data):
    """Edge attribution on the same induction pair: top edges, faithfulness 0 (no edge) to 1 (every edge)."""
    from interp.analysis.causal import repeated_text_pair
    from interp.analysis.circuits.edges import edge_attribution

    pair = repeated_text_pair(model, encode_prompt(model, PROMPT))
    ref = edge_attribution(model, pair.clean, pair.corrupted, answer=pair.answer, wrong=pair.wrong).head(20)
    shown = tables["patching_edges"]
    assert list(shown.sender) == list(ref.sender) and list(shown.receiver) == list(ref.receiver)
    np.testing.assert_allclose(_floats(shown.score), ref.score.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(_floats(tables["patching_faithfulness"].faithfulness)[[0, -1]], [0.0, 1.0], atol=1e-4)
    assert 'id="fig-edges"' in page
    assert "Edge attribution (EAP) over all" in render_markdown(data)


def test_markdown_report_has_every_section_and_the_numbers(data):
    md = render_markdown(data)
    for title in SECTIONS.values():
        assert f"\n## {title}\n" in md
    top = data.next_tokens.iloc[0]
    assert f"{top['prob']:.4f}" in md
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines:
            widths = {ln.replace("\\|", "").count("|") for ln in lines}
            assert len(widths) == 1, block[:200]


def test_write_report_is_atomic_and_refuses_to_overwrite(data, tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    write_report(data, out)
    assert check_well_formed(out.read_text(encoding="utf-8")) == []
    with pytest.raises(InterpError, match="--force"):
        write_report(data, out)
    before = out.read_bytes()

    from interp.report import render

    def interrupted(_data):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "render_html", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(data, out, force=True)
    assert out.read_bytes() == before  # the old report is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary file left behind
    write_report(data, tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text(encoding="utf-8").startswith("# interp report")


def test_format_and_option_errors_name_the_argument():
    assert format_for("x.md", None) == "md" and format_for("x.html", None) == "html" and format_for(None, None) == "html"
    with pytest.raises(InterpError, match="--format"):
        format_for("x.html", "pdf")
    with pytest.raises(InterpError, match="k_next"):
        ReportOptions(k_next=0)


def test_bad_prompts_raise_clear_errors(model):
    with pytest.raises(InterpError, match="non-empty"):
        collect_report(model, "   ", OPTIONS)
    with pytest.raises(InterpError, match="n_ctx"):
        encode_prompt(model, "word " * (model.cfg.n_ctx + 5))


def test_report_on_a_tokenizer_model_with_bos(tmp_path):
    """A model with a real BPE tokenizer and a BOS token: the token table gets the BOS row first."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.tokenize import train_tokenizer

    tok = train_tokenizer(["the cat sat on the mat"] * 20 + ["a dog ran far away"] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = DecoderConfig(d_vocab=tok.get_vocab_size(), n_ctx=32, d_model=32, n_layers=1, n_heads=2, bos_token_id=0)
    m = HookedDecoder(cfg, tokenizer=tok).eval()
    d = collect_report(m, "the cat sat", ReportOptions(k_next=3, k_neurons=3, n_answer_neurons=1, k_answers=2,
                                                       n_pattern_heads=1, superposition_sets=("W_E",),
                                                       max_pairs=200, hist_pairs=100))
    assert d.token_ids[0] == 0 and d.token_ids[1:] == tok.encode("the cat sat").ids
    assert list(d.tokens.token_id) == d.token_ids
    assert check_well_formed(render_html(d)) == []
    assert isinstance(d.tokens, pd.DataFrame) and d.model["tokenizer"].startswith("Tokenizer")


def test_attention_view_carries_the_analyzers_patterns(model, page, data):
    import json
    import re

    from interp.analysis.attention import attention_patterns
    from interp.report.widgets import decode_attention_data

    blob = re.search(r'<script type="application/json" class="attn-data">(.*?)</script>', page, re.DOTALL).group(1)
    view = json.loads(blob)
    n = len(data.token_ids)
    heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    assert view["heads"] == [f"L{a}H{b}" for a, b in heads] and view["n"] == n  # every head fits the budget
    got = decode_attention_data(view)
    ref = attention_patterns(model, encode_prompt(model, PROMPT))
    for i, (layer, head) in enumerate(heads):
        r = ref[(ref.layer == layer) & (ref["head"] == head)]
        want = np.zeros((n, n))
        want[r.query_pos, r.key_pos] = r.weight
        np.testing.assert_allclose(got[i], want, atol=0.5 / 255 + 1e-9)  # one byte per weight
    from interp.report.figures import show_token

    assert view["tokens"] == [show_token(t) for t in data.str_tokens]


def test_neuron_pages_are_linked_from_every_table_and_match_the_analyzers(model, page, tables, data):
    import re

    from interp.analysis.neurons import neuron_activations, neuron_answers, neuron_profiles
    from interp.report.inputs import read_corpus

    named = {(int(a), int(b)) for t in ("neurons_contribution", "neurons_activation", "neuron_answers")
             for a, b in zip(tables[t].layer, tables[t].neuron)}
    anchors = set(re.findall(r'<div class="neuron-page" id="neuron-L(\d+)N(\d+)"', page))
    assert {(int(a), int(b)) for a, b in anchors} == named
    links = {(int(a), int(b)) for a, b in re.findall(r'href="#neuron-L(\d+)N(\d+)"', page)}
    assert links == named
    layer, neuron = int(tables["neurons_contribution"].layer.iloc[0]), int(tables["neurons_contribution"].neuron.iloc[0])
    raises = tables[f"neuron_raises_L{layer}N{neuron}"]
    ref = neuron_answers(model, layer, neuron, k=OPTIONS.k_answers, center=True)
    np.testing.assert_allclose(_floats(raises.logit), ref[ref.direction == "top"].logit, rtol=1e-12)
    assert [int(r) for r in raises["rank"]] == list(range(1, OPTIONS.k_answers + 1))
    assert (_floats(raises.logit) > 0).all()  # centred: what it raises is positive
    # examples over the shipped held-out text: the report's numbers are the analyzer's
    name, text = read_corpus(model)
    assert data.corpus_name == name and "heldout.txt" in name
    prof = neuron_profiles(model, text, [(layer, neuron)], k=OPTIONS.k_examples, max_tokens=OPTIONS.max_corpus_tokens)
    section = page[page.index(f'id="neuron-L{layer}N{neuron}"'):]
    section = section[:section.index('<div class="neuron-page"', 10) if '<div class="neuron-page"' in section[10:]
                      else len(section)]
    shaded = [float(v) for v in re.findall(r'<span class="act-tok[^"]*" data-value="([^"]+)"', section)]
    on = neuron_activations(model, encode_prompt(model, PROMPT), layer, neuron)
    want = [*on.activation.tolist(), *prof.examples.activation.tolist()]
    np.testing.assert_allclose(shaded, want, rtol=1e-5, atol=1e-6)


def test_chinese_prompt_labels_name_characters_not_replacement_chars(model):
    prompt = "今天天气真好啊"
    d = collect_report(model, prompt, ReportOptions(k_next=3, k_neurons=2, n_answer_neurons=1, k_answers=2,
                                                    n_pattern_heads=1, superposition_sets=("W_E",),
                                                    max_pairs=200, hist_pairs=100, corpus=None))
    page = render_html(d, plotly_src="plotly.js")  # plotly.js itself has a U+FFFD in a regular expression
    assert "\ufffd" not in page
    # each character of the prompt names the token(s) holding its bytes, on the figures' axes too
    ticks = " ".join(" ".join(map(str, spec["layout"].get("xaxis", {}).get("ticktext", [])))
                     for spec in figure_specs(page).values())
    for ch in set(prompt):
        assert ch in ticks
    assert "".join(d.tokens.text_span) .replace(" ", "") != ""


def test_shared_plotly_report_folder(data, tmp_path):
    from plotly.offline import get_plotlyjs

    from interp.report.render import plotly_file_name

    a = write_report(data, tmp_path / "a.html", plotly="shared")
    lib = tmp_path / plotly_file_name()
    assert lib.read_text(encoding="utf-8") == get_plotlyjs()
    stamp = lib.stat().st_mtime_ns
    write_report(data, tmp_path / "b.html", plotly="shared")
    assert lib.stat().st_mtime_ns == stamp  # one copy, reused by the second report
    page = a.read_text(encoding="utf-8")
    assert f'src="{plotly_file_name()}"' in page and get_plotlyjs()[:500] not in page
    assert external_references(page) == [] and check_well_formed(page) == []
    assert a.stat().st_size < lib.stat().st_size / 2
    # the figures' plotly template (about 7 kB) is in the page once, not in every figure's spec
    assert page.count('id="plotly-template"') == 1
    assert not [k for k, spec in figure_specs(page).items() if "template" in spec["layout"]]
    with pytest.raises(InterpError, match="--plotly"):
        write_report(data, tmp_path / "c.html", plotly="cdn")


def test_shared_report_draws_every_figure_in_chromium(data, tmp_path):
    """The shared page (plotly.js beside it, one template for every figure) draws in a real browser:
    every figure, each with the template's colours (plotly's own, read from Python)."""
    import plotly.io as pio

    from interp.report.chromium import find_chromium, launch
    from interp.report.figures import TEMPLATE

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("needs Debian's chromium (/usr/bin/chromium)")
    path = write_report(data, tmp_path / "r.html", plotly="shared")
    n_figures = len(figure_specs(path.read_text(encoding="utf-8")))
    with launch(chromium, tmp_path / "profile") as browser:
        browser.open_and_time(path.as_uri())
        browser.evaluate("interpDrawAll()")
        state = browser.wait_for_plots(expected=n_figures, timeout=120)
        colours = browser.evaluate("[...document.querySelectorAll('.js-plotly-plot')]"
                                   ".map(p => p._fullLayout.plot_bgcolor)")
    assert state["plots"] == state["drawn"] == n_figures
    assert set(colours) == {pio.templates[TEMPLATE].layout.plot_bgcolor}


def test_report_cli_corpus_and_shared_plotly(tmp_path, monkeypatch):
    from interp import cli
    from interp.report.render import plotly_file_name

    monkeypatch.chdir(tmp_path)
    corpus = Path(__file__).parent / "fixtures" / "tiny_corpus.txt"
    args = ["report", PROMPT, "--out", "r.html", "--plotly", "shared", "--corpus", str(corpus), "--max-pairs", "300",
            "--neurons", "2", "--heads", "1", "--sets", "W_E", "--quiet"]
    assert cli.main(args) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert (tmp_path / plotly_file_name()).is_file() and f'src="{plotly_file_name()}"' in page
    assert "tiny_corpus.txt" in page and 'class="neuron-page"' in page
    assert cli.main(["report", PROMPT, "--out", "x.html", "--corpus", "no-such.txt", "--quiet"]) == 2
    assert cli.main(["report", PROMPT, "--out", "-", "--plotly", "shared", "--quiet"]) == 2
