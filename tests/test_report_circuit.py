"""The report's attribution-graph section (``interp report "..." --transcoders default``), read back and checked.

The shipped model and its shipped transcoders. References independent of the section: each listed feature's
activation is ``transcoder.encode`` of its input hook from a plain ``run_with_cache`` on the same (cut) tokens,
and the counts the section reports (nodes and edges kept of the full graph) are a fresh ``attribution_graph``'s,
pruned and unpruned.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.analysis.circuits.graph import attribution_graph
from interp.analysis.sae.transcoder import load_transcoders
from interp.report import ReportOptions, collect_report, render_html, render_markdown
from interp.report.inputs import encode_prompt, load_model
from interp.report.readback import check_well_formed, external_references, read_tables, section_ids
from interp.report.render import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
TC_DIR = ROOT / "models" / "docs-bible-austen-2l" / "transcoders"
PROMPT = "And God said, Let there be light: and there was light."
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def data(model):
    opts = ReportOptions(k_next=3, k_neurons=2, n_answer_neurons=1, k_answers=2, n_pattern_heads=1,
                         superposition_sets=("W_E",), max_pairs=300, hist_pairs=100, patching=False, corpus=None,
                         transcoders="default", max_graph_tokens=MAX_TOKENS)
    return collect_report(model, PROMPT, opts)


@pytest.fixture(scope="module")
def page(data):
    return render_html(data)


@pytest.fixture(scope="module")
def cut(model):
    toks = encode_prompt(model, PROMPT)
    assert toks.shape[1] > MAX_TOKENS  # the cut is exercised
    return toks, toks[:, -MAX_TOKENS:]


def test_the_section_follows_the_neuron_pages_and_says_what_was_cut_and_pruned(model, data, page, cut):
    assert check_well_formed(page) == [] and external_references(page) == []
    order = list(SECTIONS)
    order.insert(order.index("neuron-pages") + 1, "circuit")
    assert section_ids(page) == order and 'href="#circuit"' in page
    full, ids = cut
    assert f"last {MAX_TOKENS} of the prompt&#x27;s {full.shape[1]} tokens" in page
    tcs = load_transcoders(TC_DIR)
    pruned, unpruned = attribution_graph(model, tcs, ids), attribution_graph(model, tcs, ids, prune=False)
    n_edges = int((unpruned.adjacency != 0).sum())
    assert (f"{len(pruned.nodes)} nodes and {len(pruned.edges())} edges kept of {len(unpruned.nodes)} and "
            f"{n_edges}") in page
    assert "carrying 80% of the influence" in page and "carrying 98%" in page
    assert page.count('<g class="cg-node">') == len(pruned.nodes)  # interp circuit's drawing, one mark per node
    assert data.options["transcoders"] == "default" and data.options["max_graph_tokens"] == MAX_TOKENS


def test_listed_features_are_the_transcoders_activations(model, page, cut):
    _, ids = cut
    tcs = load_transcoders(TC_DIR)
    _, cache = model.run_with_cache(ids)
    t = read_tables(page)["circuit_features"]
    assert len(t) > 0
    for r in t.itertuples():
        layer, pos, feat = int(r.layer), int(r.position), int(r.feature)
        with torch.no_grad():
            want = tcs[layer].encode(cache[tcs[layer].cfg.hook_name][0, pos])[feat]
        torch.testing.assert_close(torch.tensor(float(r.activation), dtype=torch.float64), want.double().cpu(), rtol=1e-4, atol=1e-5)
    influence = np.array([float(v) for v in t.influence])
    assert (np.diff(influence) <= 0).all()  # most influential first
    logits = read_tables(page)["circuit_logits"]
    probs = torch.softmax(model(ids)[0, -1].double(), -1)
    top = probs.topk(len(logits))
    assert [int(v) for v in logits.token_id] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([float(v) for v in logits.probability], dtype=torch.float64),
                               top.values, rtol=1e-4, atol=1e-6)


def test_markdown_has_the_section_and_a_report_without_transcoders_has_none(data):
    md = render_markdown(data)
    assert "## Attribution graph" in md and "kept of" in md and f"last {MAX_TOKENS} of" in md
    bare = dataclasses.replace(data, circuit={})
    assert "circuit" not in section_ids(render_html(bare)) and "## Attribution graph" not in render_markdown(bare)
    assert ReportOptions().transcoders is None  # off by default


def test_bad_transcoders_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from interp import cli
    from interp.loading.checkpoint import save_checkpoint
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    monkeypatch.chdir(tmp_path)
    bare = save_checkpoint(HookedDecoder(DecoderConfig(d_vocab=300, n_ctx=16, d_model=16, n_layers=2, n_heads=2)),
                           tmp_path / "bare")
    cases = [([], str(tmp_path / "missing"), ["--transcoders", "does not exist"]),
             (["--model", str(bare)], "default", ["--transcoders default", "ships no transcoders"]),
             (["--model", str(bare)], str(TC_DIR), ["--transcoders", "d_model is 16"])]
    for extra, spec, needles in cases:
        capsys.readouterr()
        assert cli.main(["report", "1 2 3", *extra, "--transcoders", spec, "--heads", "1", "--out", "r.html",
                         "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        for needle in needles:
            assert needle in err, (needle, err)
    assert not (tmp_path / "r.html").exists()


def test_cli_writes_the_section(tmp_path):
    from interp import cli

    out = tmp_path / "r.md"
    assert cli.main(["report", PROMPT, "--transcoders", "default", "--max-graph-tokens", "4", "--out", str(out),
                     "--corpus", "none", "--heads", "1", "--neurons", "1", "--k", "2", "--sets", "W_E",
                     "--max-pairs", "100", "--quiet"]) == 0
    md = out.read_text(encoding="utf-8")
    assert "## Attribution graph" in md and "last 4 of the prompt" in md and "--max-graph-tokens" in md


def test_feature_hover_shows_top_contexts_over_the_report_corpus(model, data):
    """The shipped transcoders: each feature node's hover lists its top contexts over the corpus, which are the
    scan engine's (``feature_top_contexts``, another path than the cards' ``feature_profiles``)."""
    import html

    from interp.analysis.sae import feature_top_contexts
    from interp.report.circuit import HOVER_CONTEXTS, graph_feature_contexts
    from interp.report.circuit_section import circuit_html

    tcs = load_transcoders(TC_DIR)
    text = (ROOT / "models" / "docs-bible-austen-2l" / "heldout.txt").read_text(encoding="utf-8")[:1500]
    assert data.circuit["contexts"] is None  # the report had no corpus: no contexts, as before
    # what collect_circuit_section adds with a corpus (the graph is the report's: not traced again)
    s = {**data.circuit, "contexts": graph_feature_contexts(model, tcs, data.circuit["graph"], text)}
    page, ctx = circuit_html(s), s["contexts"]
    feats = s["graph"].nodes[s["graph"].nodes.kind == "feature"]
    assert len(ctx) and page.count("top contexts:") == len(feats)
    for layer, g in feats.groupby("layer"):
        ref = feature_top_contexts(model, tcs[int(layer)], text, features=sorted(set(g.feature.astype(int))),
                                   k=HOVER_CONTEXTS)
        mine = ctx[ctx.layer == layer].sort_values(["feature", "rank"])
        assert mine.feature.tolist() == ref.feature.tolist() and len(mine)
        np.testing.assert_allclose(mine.activation.to_numpy(), ref.activation.to_numpy(), rtol=1e-5, atol=1e-6)
        assert all(html.escape(f"  {r.activation:.3g}: {r.context}") in page for r in mine.itertuples())
    table = read_tables(page)["circuit_features"]
    assert any("«" in str(v) for v in table.top_context)


def test_feature_hover_contexts_of_the_shipped_cross_layer_transcoder(model):
    """A cross-layer transcoder's feature nodes get their top contexts too: each equals a hand reference (the
    text's windows run one by one, ``encode_layer`` of the layer's input, the largest activations)."""
    from interp.report.circuit import HOVER_CONTEXTS, graph_feature_contexts, load_graph_transcoders

    clt = load_graph_transcoders(model, "clt")
    graph = attribution_graph(model, clt, "And God said")
    text = (ROOT / "models" / "docs-bible-austen-2l" / "heldout.txt").read_text(encoding="utf-8")[:600]
    ctx = graph_feature_contexts(model, clt, graph, text)
    feats = graph.nodes[graph.nodes.kind == "feature"]
    assert len(ctx) and set(zip(ctx.layer, ctx.feature)) <= set(zip(feats.layer, feats.feature))
    toks = model.to_tokens(text)[0]
    n_ctx = int(model.cfg.n_ctx)
    hooks = clt[0].cfg.hook_name
    per_layer = {layer: [] for layer in set(ctx.layer)}
    with torch.no_grad():
        for s in range(0, len(toks), n_ctx):
            _, cache = model.run_with_cache(toks[None, s:s + n_ctx])
            for layer, acts in per_layer.items():
                acts.append(clt[0].encode_layer(cache[hooks[layer]][0], layer))
    for (layer, f), g in ctx.groupby(["layer", "feature"]):
        acts = torch.cat(per_layer[layer])[:, f].double()
        want = acts[acts > 0].sort(descending=True).values[:HOVER_CONTEXTS]
        np.testing.assert_allclose(g.sort_values("rank").activation.to_numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
