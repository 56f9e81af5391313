"""The dashboard's "SAE features" page through ``streamlit.testing.v1.AppTest``, numbers checked against the
analyzers on the same tiny model and SAE."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.report.inputs import encode_prompt, load_model

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parents[1] / "apps" / "dashboard.py")
PROMPT = "t3 t4 t5 t6 t7 t8 t3 t4"  # words of the word-level test tokenizer
HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from interp.analysis.sae import SAE, SAEConfig, save_sae
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("dash_sae")
    from conftest import VOCAB, word_level_tokenizer

    model = HookedDecoder(DecoderConfig(d_vocab=VOCAB, n_ctx=48, d_model=32, n_layers=2, n_heads=2, name="t"))
    model.tokenizer = word_level_tokenizer()  # unknown words of the page's sample corpus read as t0
    model.save(root / "m")
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, metadata={"hook_name": HOOK}))
    with torch.no_grad():
        sae.b_enc.add_(0.1 * torch.randn(64))
    save_sae(sae, root / "sae")
    return str(root / "m"), str(root / "sae")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _frame(at, *columns):
    for d in at.dataframe:
        if set(columns) <= set(d.value.columns):
            return d.value
    raise AssertionError(f"no dataframe with {columns}")


def test_sae_page(folders, monkeypatch):
    from interp.analysis.sae import (
        decoder_orthogonality,
        feature_activations,
        feature_logit_effects,
        load_sae,
    )

    model_dir, sae_dir = folders
    monkeypatch.setattr(sys, "argv", ["dashboard.py", "--data-dir", str(Path(sae_dir).parent)])  # the app's --data-dir
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.sidebar.selectbox(key="model_choice").set_value("Local folder…").run()
    at.sidebar.text_input(key="model_path").set_value(model_dir).run()
    at.sidebar.text_area(key="prompt").set_value(PROMPT).run()
    at.sidebar.radio(key="page").set_value("SAE features").run()
    _ok(at)
    assert at.info  # no SAE yet: the page says how to get one
    at.text_input(key="sae_path").set_value(sae_dir).run()
    _ok(at)
    model, sae = load_model(model_dir), load_sae(sae_dir)
    toks = encode_prompt(model, PROMPT)
    ref = feature_activations(model, sae, toks, k=5)
    last = ref[ref.position == toks.shape[1] - 1]
    shown = _frame(at, "feature", "activation")
    assert shown.feature.tolist() == last.feature.tolist()
    np.testing.assert_allclose(shown.activation.to_numpy(), last.activation.to_numpy(), rtol=1e-6)
    feat = int(at.number_input(key="sae_feature").value)
    assert feat == int(last.feature.iloc[0])
    eff = feature_logit_effects(model, sae, feat, k=10)
    top = _frame(at, "logit", "token_id")
    np.testing.assert_allclose(top.logit.to_numpy(), eff[eff.direction == "top"].logit.to_numpy(), rtol=1e-9)
    stats = _frame(at, "mean_abs_cos", "baseline_mean_abs_cos")
    np.testing.assert_allclose(stats.mean_abs_cos.to_numpy(), decoder_orthogonality(sae, max_pairs=20_000)
                               .mean_abs_cos.to_numpy(), rtol=1e-12)
    assert "sae_angles" in {c.key for c in at.get("plotly_chart")}
    at.button(key="sae_scan").click().run()
    _ok(at)
    ctx = _frame(at, "context", "activation")
    assert ctx.activation.is_monotonic_decreasing
    # quantile samples, correlations and the ablation table: the analyzers' on the page's corpus
    from interp.analysis.sae import feature_ablation_effects, feature_dashboard

    docs = [model.to_tokens(d)[0] for d in at.text_area(key="sae_corpus").value.split("\n") if d.strip()]
    dash = feature_dashboard(model, sae, docs, [feat], n_bins=4, per_bin=2, k_top=3, window=8, after=3)
    top = dash.samples[dash.samples.bin == 0]
    ref = feature_ablation_effects(model, sae, [g.token_id.tolist() for _, g in top.groupby("sample")], feat)
    ref = ref[ref.activation > 0]
    abl = _frame(at, "logprob_change", "raises")
    assert abl.position.tolist() == ref.position.tolist() and len(ref)
    np.testing.assert_allclose(abl.logprob_change.to_numpy(), ref.logprob_change.to_numpy(), rtol=1e-6, atol=1e-9)
    page = " ".join(m.value for m in at.markdown)
    assert "Quantile samples" in page and "Interval 4 · activation" in page
    assert len(dash.correlated) and all(f" {g} (" in page or f">{g}</a> (" in page for g in dash.correlated.other)
    at.text_input(key="sae_path").set_value("/no/such/sae").run()
    assert not at.exception and any("may read" in e.value for e in at.error)


def test_sae_page_opens_with_the_shipped_sae():
    from interp.analysis.sae import feature_activations, load_sae

    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.sidebar.radio(key="page").set_value("SAE features").run()
    _ok(at)
    path = at.text_input(key="sae_path").value
    assert Path(path).parts[-2:] == ("sae", "blocks.0.hook_resid_post")
    model, sae = load_model(), load_sae(path)
    toks = encode_prompt(model, at.sidebar.text_area(key="prompt").value)
    ref = feature_activations(model, sae, toks, k=5)
    shown = _frame(at, "feature", "activation")
    assert shown.feature.tolist() == ref[ref.position == toks.shape[1] - 1].feature.tolist()
