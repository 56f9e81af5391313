"""The dashboard's "Attribution graph" page through ``streamlit.testing.v1.AppTest``: what it shows must equal
fresh calls of the analyzers (``attribution_graph``, ``intervene``) on the same tiny model, transcoders and
(cut) tokens, and the drawing must be ``interp circuit``'s."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.analysis.circuits.graph import attribution_graph, intervene
from interp.analysis.sae import save_sae
from interp.analysis.sae.transcoder import Transcoder, TranscoderConfig, load_transcoders
from interp.report.circuit import HOVER_CONTEXTS, graph_feature_contexts, graph_html
from interp.report.inputs import encode_prompt, load_model

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parents[1] / "apps" / "dashboard.py")


def _app_constant(name: str):
    """A module-level constant of the app, read without running it."""
    import ast

    tree = ast.parse(Path(APP).read_text(encoding="utf-8"))
    return next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == name for t in n.targets))


SAMPLE_CORPUS = _app_constant("SAMPLE_CORPUS")
PROMPT = "the cat sat on the mat, the cat"  # 31 bytes: cut to the last MAX_TOKENS
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A byte-level model and one transcoder per layer (random, biases shifted so features fire)."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.inputs import byte_tokenizer

    torch.manual_seed(3)
    root = tmp_path_factory.mktemp("dash_circuit")
    cfg = DecoderConfig(d_vocab=256, n_ctx=48, d_model=32, n_layers=2, n_heads=2, name="circuit-test")
    HookedDecoder(cfg, tokenizer=byte_tokenizer()).save(root / "m")
    for layer in range(2):
        tc = Transcoder(TranscoderConfig(d_in=32, d_sae=48, architecture="topk", k=4, metadata={
            "hook_name": f"blocks.{layer}.ln2.hook_normalized", "hook_name_out": f"blocks.{layer}.hook_mlp_out",
            "model_name": "circuit-test"}))
        save_sae(tc, root / "tc" / f"blocks.{layer}.hook_mlp_out")
    return root


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _frame(at, *columns):
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def _check_contexts(model, tcs, graph, corpus, contexts, page):
    """The hover's contexts are the scan engine's top contexts (``feature_top_contexts``, an independent path:
    the streaming top-k of ``run_scan``), and every feature node's hover lists them."""
    import html

    from interp.analysis.sae import feature_top_contexts

    feats = graph.nodes[graph.nodes.kind == "feature"]
    assert len(contexts) and set(zip(contexts.layer, contexts.feature)) <= set(zip(feats.layer, feats.feature))
    for layer, g in feats.groupby("layer"):
        wanted = sorted({int(f) for f in g.feature})
        ref = feature_top_contexts(model, tcs[int(layer)], corpus, features=wanted, k=HOVER_CONTEXTS)
        mine = contexts[contexts.layer == layer].sort_values(["feature", "rank"])
        assert mine.feature.tolist() == ref.feature.tolist()
        np.testing.assert_allclose(mine.activation.to_numpy(), ref.activation.to_numpy(), rtol=1e-5, atol=1e-6)
        for r in mine.itertuples():
            assert html.escape(f"  {r.activation:.3g}: {r.context}") in page
    assert page.count("top contexts:") == len(feats)


def test_circuit_page(folders, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dashboard.py", "--data-dir", str(folders), "--max-graph-tokens",
                                      str(MAX_TOKENS)])
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.sidebar.selectbox(key="model_choice").set_value("Local folder…").run()
    at.sidebar.text_input(key="model_path").set_value(str(folders / "m")).run()
    at.sidebar.text_area(key="prompt").set_value(PROMPT).run()
    at.sidebar.radio(key="page").set_value("Attribution graph").run()
    _ok(at)
    assert "ships no transcoders" in at.info[0].value  # none shipped: one line saying how to get some

    at.text_input(key="tc_path").set_value(str(folders / "tc")).run()
    _ok(at)
    model, tcs = load_model(str(folders / "m")), load_transcoders(folders / "tc")
    ids = encode_prompt(model, PROMPT)[:, -MAX_TOKENS:]
    assert any(f"last {MAX_TOKENS} of the prompt's 31 tokens" in c.value for c in at.caption)
    ref = attribution_graph(model, tcs, ids)
    # hover: each feature's top contexts over the sample corpus (the model folder has no heldout.txt)
    docs = [d for d in SAMPLE_CORPUS.split("\n") if d.strip()]
    contexts = graph_feature_contexts(model, tcs, ref, docs)
    assert at.session_state["circuit_html"] == graph_html(ref, title="Attribution graph", contexts=contexts)
    _check_contexts(model, tcs, ref, docs, contexts, at.session_state["circuit_html"])
    assert at.session_state["circuit_html"].count('<g class="cg-node">') == len(ref.nodes)
    feats = ref.nodes[ref.nodes.kind == "feature"].sort_values("influence", ascending=False)
    shown = _frame(at, "feature", "raises")
    assert len(shown) == len(feats) > 0
    assert shown[["layer", "position", "feature"]].values.tolist() == feats[["layer", "position", "feature"]].values.tolist()
    np.testing.assert_allclose(shown.activation.to_numpy(), feats.activation.to_numpy(), rtol=1e-5, atol=1e-6)
    assert shown.raises.iloc[0].startswith(repr(feats.top_logits.iloc[0][0][0]))  # hover and table: top logit effects

    # ablate the most influential feature: the table is intervene()'s on the same tokens
    at.radio(key="tc_mode").set_value("set").run()
    at.number_input(key="tc_value_set").set_value(0.0).run()
    at.button(key="tc_apply").click().run()
    _ok(at)
    r = feats.iloc[0]
    want = intervene(model, tcs, ids, {(int(r.layer), int(r.position), int(r.feature)): 0.0}).table
    got = _frame(at, "prob_after", "change")
    assert got.token_id.tolist() == want.token_id.tolist()
    np.testing.assert_allclose(got.prob_after.to_numpy(), want.prob_after.to_numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.change.to_numpy(), (want.prob_after - want.prob_before).to_numpy(), rtol=1e-5,
                               atol=1e-7)

    # a transcoder folder outside the allowed roots is refused with one line, never read
    at.text_input(key="tc_path").set_value("/etc").run()
    assert not at.exception and "is not a file or folder this dashboard may read" in at.error[0].value
