"""The report's SAE section (``interp report "..." --sae FOLDER``), read back and checked against references.

The shipped model and its shipped SAE; the page is parsed with the standard library's ``html.parser``. The
references are independent of the section's code: ``sae.encode`` of the hook's activation from a plain
``run_with_cache``, float64 variance and cross-entropy computed here (the SAE spliced in by a hand-written
TransformerLens hook), ``feature_top_contexts`` (the scan engine) for the top examples that the section
gets from the neuron pages' engine, and ``feature_logit_effects`` for the raises/lowers tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.analysis.sae import (
    SAE,
    SAEConfig,
    evaluate_sae,
    feature_logit_effects,
    feature_top_contexts,
    load_sae,
    save_sae,
)
from interp.report import ReportOptions, collect_report, render_html, render_markdown
from interp.report.inputs import encode_prompt, load_model
from interp.report.readback import check_well_formed, external_references, read_tables, section_ids
from interp.report.render import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
SAE_DIR = ROOT / "models" / "docs-bible-austen-2l" / "sae" / "blocks.0.hook_resid_post"
HOOK = "blocks.0.hook_resid_post"
PROMPT = "And God said, Let there be light: and there was light."
K_FEATURES, N_CARDS, K_EXAMPLES = 4, 2, 3


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def sae():
    return load_sae(SAE_DIR)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few paragraphs of the held-out text: short enough that the cards scan all of it."""
    text = (ROOT / "models" / "docs-bible-austen-2l" / "heldout.txt").read_text(encoding="utf-8")[:6000]
    path = tmp_path_factory.mktemp("corpus") / "few.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(model, corpus):
    opts = ReportOptions(k_next=3, k_neurons=2, n_answer_neurons=1, k_answers=4, n_pattern_heads=1,
                         superposition_sets=("W_E",), max_pairs=300, hist_pairs=100, k_examples=K_EXAMPLES,
                         max_corpus_tokens=4096, patching=False, corpus=str(corpus), sae="default",
                         k_sae_features=K_FEATURES, n_sae_cards=N_CARDS)
    return collect_report(model, PROMPT, opts)


@pytest.fixture(scope="module")
def rendered(data):
    """The HTML page and its tables read back (exact values)."""
    html = render_html(data)
    return html, read_tables(html)


@pytest.fixture
def page(rendered):
    return rendered[0]


@pytest.fixture
def tables(rendered):
    return rendered[1]


@pytest.fixture(scope="module")
def features(model, sae):
    """The reference: ``sae.encode`` of the hook's activation, [pos, d_sae]."""
    _, cache = model.run_with_cache(encode_prompt(model, PROMPT), names_filter=HOOK)
    with torch.no_grad():
        return sae.encode(cache[HOOK][0]).double(), cache[HOOK][0].double()


def _floats(col) -> np.ndarray:
    return np.array([float(v) for v in col])


def test_the_section_is_in_the_page_after_the_neuron_pages(page, data):
    assert check_well_formed(page) == [] and external_references(page) == []
    order = list(SECTIONS)
    order.insert(order.index("neuron-pages") + 1, "sae")
    assert section_ids(page) == order
    assert 'href="#sae"' in page
    assert data.options["sae"] == "default" and data.sae["model_note"] is None


def test_top_features_per_token_are_the_encoders(tables, features):
    f, _ = features
    t = tables["sae_features"]
    for p in range(f.shape[0]):
        vals, ids = f[p].sort(descending=True)
        n = min(K_FEATURES, int((vals > 0).sum()))
        rows = t[t.position == str(p)]
        assert [int(v) for v in rows.feature] == ids[:n].tolist()
        torch.testing.assert_close(torch.tensor(_floats(rows.activation)), vals[:n], rtol=1e-5, atol=1e-6)


def test_prompt_reconstruction_matches_evaluate_sae_and_a_float64_reference(model, sae, tables, features):
    got = {m: float(v) for m, v in zip(tables["sae_metrics"].metric, tables["sae_metrics"].value)}
    toks = encode_prompt(model, PROMPT)
    ev = evaluate_sae(model, sae, toks).metrics
    for key in ("l0", "fve", "cosine", "ce_clean", "ce_sae", "ce_zero_ablation", "ce_loss_recovered"):
        assert got[key] == pytest.approx(ev[key], rel=1e-9, abs=1e-12), key
    f, x = features
    recon = f @ sae.W_dec.detach().double() + sae.b_dec.detach().double()
    fve = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert got["fve"] == pytest.approx(float(fve), rel=1e-4)
    assert got["l0"] == pytest.approx(float((f > 0).sum(-1).double().mean()))

    def ce(logits):
        logp = torch.log_softmax(logits[0, :-1].double(), -1)
        return float(-logp.gather(-1, toks[0, 1:, None]).mean())

    with torch.no_grad():
        clean = ce(model(toks))
        spliced = ce(model.run_with_hooks(toks, fwd_hooks=[(HOOK, lambda act, hook: sae.decode(sae.encode(act)))]))
    assert got["ce_clean"] == pytest.approx(clean, rel=1e-5)
    assert got["ce_sae"] == pytest.approx(spliced, rel=1e-5)
    per = tables["sae_tokens"]  # token by token: its mean is the prompt's CE
    assert np.nanmean(_floats(per.ce_sae)) == pytest.approx(spliced, rel=1e-5)
    rel = ((x - recon).pow(2).sum(-1) / x.pow(2).sum(-1)).numpy()
    np.testing.assert_allclose(_floats(per.rel_error), rel, rtol=1e-4, atol=1e-7)


def test_feature_cards_match_the_reference_analyzers(model, sae, tables, page, data, features, corpus):
    f, _ = features
    peak = f.max(0).values
    want = sorted(range(f.shape[1]), key=lambda i: (-float(peak[i]), i))[:N_CARDS]
    assert data.sae["cards"] == want
    ctx = feature_top_contexts(model, sae, corpus.read_text(encoding="utf-8"), features=want, k=K_EXAMPLES)
    for feat in want:
        assert f'id="sae-feature-{feat}"' in page and f'href="#sae-feature-{feat}"' in page
        ex = tables[f"sae_examples_F{feat}"]
        ref = ctx[ctx.feature == feat]
        assert [int(v) for v in ex.position] == ref.position.tolist()
        np.testing.assert_allclose(_floats(ex.activation), ref.activation.to_numpy(), rtol=1e-5, atol=1e-6)
        eff = feature_logit_effects(model, sae, feat, k=4)
        for direction, name in (("top", "sae_raises"), ("bottom", "sae_lowers")):
            t, e = tables[f"{name}_F{feat}"], eff[eff.direction == direction]
            assert [int(v) for v in t.token_id] == e.token_id.tolist()
            np.testing.assert_allclose(_floats(t.logit), e.logit.to_numpy(), rtol=1e-9)
    # each card's activation histogram: the profile's counts, bin by bin, summing to the tokens scanned
    import re

    prof = data.sae["profiles"]
    for feat in want:
        card = page[page.index(f'id="sae-feature-{feat}"'):]
        card = card[:card.index("</svg>")]
        counts = [int(c) for c in re.findall(r"\): (\d+)</title>", card)]
        h = prof.histogram[prof.histogram.feature == feat]
        assert counts == h["count"].astype(int).tolist()
        assert sum(counts) == int(prof.stats[prof.stats.feature == feat].n_tokens.iloc[0])
    # the card's shading of the prompt: the feature's activation at every token (0 where silent)
    sh = data.sae["shading"]
    for feat in want:
        np.testing.assert_allclose(sh[sh.feature == feat].activation.to_numpy(), f[:, feat].numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_markdown_has_the_section(data):
    md = render_markdown(data)
    assert "## Sparse autoencoder features" in md
    for feat in data.sae["cards"]:
        assert f"### Feature {feat}" in md
    assert md.index("## Neuron pages") < md.index("## Sparse autoencoder features") < md.index("## Superposition")


def test_an_sae_made_for_another_model_is_named_on_the_page(model, tmp_path):
    from interp.report.sae_section import collect_sae_section, load_report_sae, sae_html

    folder = tmp_path / "other"
    save_sae(SAE(SAEConfig(d_in=128, d_sae=16, architecture="relu",
                           metadata={"hook_name": HOOK, "model_name": "gpt2-small"})), folder)
    s = collect_sae_section(model, encode_prompt(model, "In the beginning"), *load_report_sae(model, folder), None,
                            k_features=2, n_cards=1, k_answers=2, k_examples=1, max_tokens=64)
    assert "gpt2-small" in s["model_note"] and "gpt2-small" in sae_html(s).split("</p>")[0]


def _write_sae(folder: Path, hook: str, d_in: int) -> Path:
    save_sae(SAE(SAEConfig(d_in=d_in, d_sae=8, architecture="relu", metadata={"hook_name": hook})), folder)
    return folder


def test_bad_sae_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from interp import cli

    monkeypatch.chdir(tmp_path)
    cases = [
        (str(tmp_path / "missing"), ["--sae", "no SAE folder", "missing"]),
        (str(tmp_path / "empty"), ["--sae", "cfg.json"]),
        (str(_write_sae(tmp_path / "hook", "blocks.7.hook_resid_post", 128)), ["--sae", "blocks.7.hook_resid_post"]),
        (str(_write_sae(tmp_path / "width", HOOK, 64)), ["--sae", "d_in=64", "gives 128"]),
    ]
    (tmp_path / "empty").mkdir()
    for spec, needles in cases:
        capsys.readouterr()
        assert cli.main(["report", PROMPT, "--sae", spec, "--out", "r.html", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        for needle in needles:
            assert needle in err, (needle, err)
    assert not (tmp_path / "r.html").exists()
    # --sae default with a model folder that ships none
    from interp.loading.checkpoint import save_checkpoint
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    bare = save_checkpoint(HookedDecoder(DecoderConfig(d_vocab=300, n_ctx=16, d_model=16, n_layers=1, n_heads=2)),
                           tmp_path / "bare")
    capsys.readouterr()
    assert cli.main(["report", "1 2 3", "--model", str(bare), "--sae", "default", "--heads", "1", "--out", "r.html",
                     "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sae default" in err and "ships no SAE" in err, err
    # the SAE CLI's new option refuses what it cannot do, in one line too
    assert cli.main(["sae", "train", "--out", "s", "--architecture", "topk", "--resample-every", "5", "--quiet"]) == 2
    assert "resample_dead_every" in capsys.readouterr().err


def test_sae_cli_reads_the_shipped_sae_by_default(tmp_path, model, sae, corpus):
    from interp import cli

    out = tmp_path / "features.json"
    assert cli.main(["sae", "features", "--sae", "default", "--feature", "3", "--k", "1", "--logits", "2",
                     "--corpus", str(corpus), "--quiet", "--json", str(out)]) == 0
    tables = json.loads(out.read_text())
    got = tables["logit effects"]
    ref = feature_logit_effects(model, sae, 3, k=2)
    assert [r["token_id"] for r in got] == ref.token_id.tolist()
    bins, abl = tables["quantile bins (bin 0: the top contexts)"], tables["ablation effect on the top contexts"]
    assert [r["bin"] for r in bins] == [0, 1, 2, 3, 4] and sum(r["share"] for r in bins[1:]) == pytest.approx(1.0)
    assert abl and all(r["feature"] == 3 and r["activation"] > 0 for r in abl) and len(tables["correlated features"])


def test_shipped_sae_card_numbers_are_its_eval(sae):
    ev = json.loads((SAE_DIR / "eval.json").read_text())
    card = (SAE_DIR / "README.md").read_text()
    assert sae.cfg.hook_name == HOOK and sae.cfg.architecture == "topk" and sae.cfg.d_sae == 1024
    for key, shown in (("fve", "{:.3f}"), ("ce_loss_recovered", "{:.3f}"), ("l0", "{:.1f}")):
        assert shown.format(ev[key]) in card, key


def test_similar_features_finds_a_planted_near_duplicate_and_opposite():
    from interp.analysis.sae import SAE, SAEConfig, similar_features

    sae = SAE(SAEConfig(d_in=8, d_sae=12, architecture="relu", dtype="float64"))
    gen = torch.Generator().manual_seed(0)
    w = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))[0][:, :8]  # 12 directions, 8 dims
    w[7] = 3.0 * w[3] + 0.01 * torch.randn(8, generator=gen, dtype=torch.float64)  # a scaled near-duplicate of 3
    w[9] = -0.5 * w[3]  # an exact opposite of 3
    with torch.no_grad():
        sae.W_dec.copy_(w)
    near = similar_features(sae, 3, k=3)
    assert near.feature.tolist()[:2] == [9, 7] and near["rank"].tolist() == [1, 2, 3]
    want = torch.nn.functional.cosine_similarity(w[[9, 7]], w[3][None], dim=-1)
    torch.testing.assert_close(torch.tensor(near.cosine.to_numpy()[:2]), want, rtol=1e-12, atol=1e-12)
    assert 3 not in near.feature.tolist()


def test_feature_cards_list_their_nearest_features(data, sae):
    import re

    from interp.analysis.sae import similar_features

    page = render_html(data)
    for feat in data.sae["cards"]:
        card = page[page.index(f'id="sae-feature-{feat}"'):]
        para = card[card.index("<b>Nearest features</b>"):]
        para = para[:para.index("</p>")]
        shown = [int(g) for g in re.findall(r"(?:>|, |: )(\d+)(?:</a>)? \(", para)]
        assert shown == similar_features(sae, feat, k=4).feature.tolist()  # k = the report's k_answers


def test_feature_cards_show_quantile_samples_correlations_and_ablation(model, sae, data, page, tables):
    """What the page shows is what the analyzers return on the same inputs (their own tests check them against
    pandas, numpy and a float64 hand subtraction: tests/test_sae_cards.py)."""
    import re

    from interp.analysis.sae import feature_ablation_effects
    from interp.report.sae_section import PER_BIN, QUANTILE_BINS

    dash, prof = data.sae["dashboard"], data.sae["profiles"]
    md = render_markdown(data)
    for feat in data.sae["cards"]:
        card = page[page.index(f'id="sae-feature-{feat}"'):]
        card = card[:card.index('<div class="neuron-page"') if '<div class="neuron-page"' in card else None]
        para = card[card.index("<b>Correlated features</b>"):]
        para = para[:para.index("</p>")]
        shown = [int(g) for g in re.findall(r"(?:>|, |: )(\d+)(?:</a>)? \(", para)]
        corr = dash.correlated[dash.correlated.feature == feat]
        assert shown == corr.other.tolist() and len(shown) == 4  # k = the report's k_answers
        bins = dash.bins[dash.bins.feature == feat]
        assert bins.bin.tolist() == list(range(QUANTILE_BINS + 1))
        heads = re.findall(r"<b>(Top \d+|Interval \d+) · activation ([^ ]+)–([^ ]+) · ([\d.]+)% of nonzero", card)
        assert [h[0] for h in heads] == [f"Top {PER_BIN}"] + [f"Interval {b}" for b in range(1, QUANTILE_BINS + 1)]
        np.testing.assert_allclose([float(h[3]) for h in heads], 100 * bins.share.to_numpy(), atol=0.051)
        # ablation: the top examples' windows as contexts, the table's firing tokens and changes
        ex = prof.examples[prof.examples.feature == feat]
        ref = feature_ablation_effects(model, sae, [g.token_id.tolist() for _, g in ex.groupby("rank")], feat)
        ref = ref[ref.activation > 0]
        t = tables[f"sae_ablation_F{feat}"]
        assert [int(v) for v in t.position] == ref.position.tolist() and len(ref)
        np.testing.assert_allclose(_floats(t.logprob_change), ref.logprob_change.to_numpy(), rtol=1e-6, atol=1e-9)
        assert card.count('class="act-line"') >= K_EXAMPLES + len(dash.samples[dash.samples.feature == feat]
                                                                  .groupby(["bin", "sample"]))
    assert md.count("Quantile samples:") == len(data.sae["cards"]) and "Correlated features: " in md


def test_a_transcoder_folder_given_to_sae_is_refused_before_any_analysis(model):
    from interp.errors import InterpError
    from interp.report.sae_section import load_report_sae

    folder = ROOT / "models" / "docs-bible-austen-2l" / "transcoders" / "blocks.1.hook_mlp_out"
    with pytest.raises(InterpError, match=r"^--sae: .* holds a transcoder .*--transcoders.*interp sae features"):
        load_report_sae(model, str(folder))
