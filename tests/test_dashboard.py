"""The Streamlit dashboard through ``streamlit.testing.v1.AppTest``: every page, its widgets and its numbers.

Pages run on a tiny checkpoint chosen through the sidebar's "Local folder" field (so that path is
tested too); the Overview also runs on the default model. Numbers shown are compared with fresh
analyzer calls or the model's own softmax. Bad input must show ``st.error`` in the page, never an exception.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp.report.inputs import encode_prompt, load_model
from interp.report.widgets import decode_attention_data

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parents[1] / "apps" / "dashboard.py")
PROMPT = "the cat sat on the mat, the cat"
LOCAL = "Local folder…"
REFUSED = "is not a file or folder this dashboard may read"  # the one message for every path refused


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    """The app's --data-dir (read from sys.argv as after `streamlit run apps/dashboard.py --`): pytest's base
    temporary folder, which holds every tmp_path of these tests."""
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["dashboard.py", "--data-dir", str(base)])
        yield base


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A small checkpoint whose tokenizer.json is the byte tokenizer (d_vocab 256: text is read as bytes)."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.inputs import byte_tokenizer

    torch.manual_seed(1)
    cfg = DecoderConfig(d_vocab=256, n_ctx=48, d_model=32, n_layers=2, n_heads=2, name="dashboard-test")
    folder = tmp_path_factory.mktemp("dash") / "tiny"
    HookedDecoder(cfg, tokenizer=byte_tokenizer()).save(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def app(tiny_dir):
    """One AppTest session on the tiny model (pages are visited in turn; caches persist between runs)."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.sidebar.selectbox(key="model_choice").set_value(LOCAL).run()
    at.sidebar.text_input(key="model_path").set_value(tiny_dir).run()
    at.sidebar.text_area(key="prompt").set_value(PROMPT).run()
    return at


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _goto(at, page: str):
    at.sidebar.radio(key="page").set_value(page).run()
    _ok(at)
    assert at.title[0].value == page
    return at


def _frame(at, *columns: str) -> pd.DataFrame:
    """The first dataframe shown with all of ``columns``."""
    for d in at.dataframe:
        if set(columns) <= set(d.value.columns):
            return d.value
    raise AssertionError(f"no dataframe with columns {columns}: {[list(d.value.columns) for d in at.dataframe]}")


def _charts(at) -> set[str]:
    return {c.key for c in at.get("plotly_chart")}


def _view_data(page: str) -> dict:
    import json
    import re

    return json.loads(re.search(r'<script type="application/json" class="attn-data">(.*?)</script>', page, re.DOTALL).group(1))


def _next_probs(model, prompt: str, k: int) -> torch.return_types.topk:
    with torch.no_grad():
        return torch.softmax(model(encode_prompt(model, prompt))[0, -1].double(), -1).topk(k)


def test_overview_default_model():
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    _ok(at)
    assert at.title[0].value == "Overview" and at.sidebar.selectbox(key="model_choice").value == "default"
    model = load_model()
    prompt = at.sidebar.text_area(key="prompt").value
    table = _frame(at, "prob", "sampled_prob")
    ref = _next_probs(model, prompt, 10)
    assert table.token_id.tolist() == ref.indices.tolist()
    np.testing.assert_allclose(table.prob.to_numpy(), ref.values.numpy(), rtol=1e-6)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["n_layers"] == str(model.cfg.n_layers)


def test_overview_sampling_controls_and_generate(app, tiny):
    _goto(app, "Overview")
    assert {"temperature", "top_k", "top_p", "max_new_tokens", "seed", "generate"} <= {
        w.key for w in [*app.slider, *app.number_input, *app.button]}
    assert "next_bar" in _charts(app)
    tokens = _frame(app, "token_id", "bytes")
    assert tokens.token_id.tolist() == list(PROMPT.encode("utf-8"))
    app.number_input(key="top_k").set_value(3).run()
    _ok(app)
    table = _frame(app, "prob", "sampled_prob")
    ref = _next_probs(tiny, PROMPT, 10)
    want = np.zeros(10)
    want[:3] = ref.values[:3].numpy() / ref.values[:3].sum().item()
    np.testing.assert_allclose(table.sampled_prob.to_numpy(), want, rtol=1e-6, atol=1e-12)
    app.slider(key="temperature").set_value(0.0).run()
    app.slider(key="max_new_tokens").set_value(4).run()
    app.button(key="generate").click().run()
    _ok(app)
    from interp.generate import generate

    greedy = generate(tiny, encode_prompt(tiny, PROMPT), max_new_tokens=4, temperature=0)
    assert app.code[0].value == PROMPT + tiny.to_string(greedy[0, len(PROMPT.encode()):])
    app.number_input(key="top_k").set_value(None).run()  # empty = no filter, as the CLI without --top-k
    app.slider(key="temperature").set_value(1.0).run()


def test_attention_page(app, tiny):
    from interp.analysis.attention import attention_patterns, head_scores

    _goto(app, "Attention")
    assert {"role_grid", "pattern"} <= _charts(app)
    scores = _frame(app, "previous_token", "induction")
    ref = head_scores(tiny, encode_prompt(tiny, PROMPT))
    want = ref[ref.role == "previous_token"].sort_values(["layer", "head"]).score.to_numpy()
    np.testing.assert_allclose(scores.previous_token.to_numpy(), want, rtol=1e-12)
    app.selectbox(key="attn_layer").set_value(1).run()
    app.selectbox(key="attn_head").set_value(1).run()
    app.checkbox(key="all_heads").check().run()
    _ok(app)
    assert "pattern_grid" in _charts(app)
    grid = next(c for c in app.get("plotly_chart") if c.key == "pattern_grid")
    import json

    spec = json.loads(grid.proto.spec)
    assert len(spec["data"]) == tiny.cfg.n_heads  # one panel per head, one shared colour bar
    assert sum(bool(t.get("showscale")) for t in spec["data"]) == 1
    pat = attention_patterns(tiny, encode_prompt(tiny, PROMPT), layers=1, heads=1)
    assert np.allclose(pat.groupby("query_pos").weight.sum(), 1.0, atol=1e-5)
    # the interactive view carries every head's pattern (one byte per weight), layer 1 head 1 ticked
    view = _view_data(app.session_state["view_html"])
    assert "L1H1" in view["heads"] and 'data-index="3" checked' in app.session_state["view_html"]
    # it is shown with st.iframe (st.components.v1.html is deprecated), its script inside the frame
    assert any(app.session_state["view_html"] in e.proto.srcdoc for e in app.get("iframe"))
    got = decode_attention_data(view)[view["heads"].index("L1H1")]
    want = np.zeros_like(got)
    want[pat.query_pos, pat.key_pos] = pat.weight
    np.testing.assert_allclose(got, want, atol=0.5 / 255 + 1e-9)


def test_neurons_page(app, tiny):
    from interp.analysis.neurons import neuron_answers, top_neurons

    _goto(app, "Neurons")
    tokens = encode_prompt(tiny, PROMPT)
    ref = top_neurons(tiny, tokens, k=10)
    shown = _frame(app, "contribution", "target_token")
    want = ref[ref.ranked_by == "contribution"]
    assert list(zip(shown.layer, shown.neuron)) == list(zip(want.layer, want.neuron))
    np.testing.assert_allclose(shown.contribution.to_numpy(), want.contribution.to_numpy(), rtol=1e-12)
    pick = app.selectbox(key="neuron_pick").value
    layer, neuron = (int(x) for x in pick[1:].split("N"))
    ans = _frame(app, "logit", "token_id")
    ref_ans = neuron_answers(tiny, layer, neuron, k=10, center=True)
    np.testing.assert_allclose(ans.logit.to_numpy(), ref_ans[ref_ans.direction == "top"].logit.to_numpy(), rtol=1e-12)
    assert (ans.logit > 0).all()  # centred: what it raises is positive
    assert ans["rank"].tolist() == list(range(1, 11))
    assert shown["rank"].tolist() == list(range(1, len(shown) + 1))
    assert shown.page.str.startswith("?page=Neurons&neuron=L").all()  # each row opens the neuron's page
    app.button(key="scan").click().run()
    _ok(app)
    from interp.analysis.neurons import neuron_activations, neuron_profiles

    corpus = app.text_area(key="corpus").value
    ref = neuron_profiles(tiny, corpus, [(layer, n) for n in range(tiny.cfg.d_mlp)], k=5, max_tokens=16384)
    got = app.session_state["examples"]
    want = ref.examples[ref.examples.neuron == neuron]
    np.testing.assert_allclose(got.activation.to_numpy(), want.activation.to_numpy(), rtol=1e-6, atol=1e-7)
    assert "neuron_hist" in _charts(app)
    # a neuron named in a link (?neuron=L1N7) opens its page, with its activation on the prompt
    app.query_params["neuron"] = "L1N7"
    app.run()
    _ok(app)
    assert app.selectbox(key="neuron_pick").value == "L1N7"
    acts = neuron_activations(tiny, tokens, 1, 7)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics[f"activation at position {len(acts) - 1}"] == f"{acts.activation.iloc[-1]:.4f}"
    del app.query_params["neuron"]


def test_neurons_page_scans_a_datasets_split(app, tiny, tmp_path):
    """The corpus choice: a saved DatasetDict folder with a split, a Parquet file with a text field; bad choices
    show the splits / columns found in the page."""
    datasets = pytest.importorskip("datasets")
    from interp.analysis.neurons import neuron_profiles

    docs = ["the cat sat on the mat", "", "a dog ran in the park, the dog ran", "the end"]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["unrelated"], "body": ["x"]}),
                               "validation": datasets.Dataset.from_dict({"text": ["x"] * len(docs), "body": docs})})
    dd.save_to_disk(str(tmp_path / "saved"))
    dd["validation"].to_parquet(str(tmp_path / "v.parquet"))
    _goto(app, "Neurons")
    layer, neuron = (int(x) for x in app.selectbox(key="neuron_pick").value[1:].split("N"))
    app.radio(key="corpus_source").set_value("file, folder or dataset").run()
    _ok(app)
    app.text_input(key="corpus_path").set_value(str(tmp_path / "saved")).run()
    assert "split: " in app.error[0].value and "['train', 'validation']; given none" in app.error[0].value
    app.text_input(key="corpus_split").set_value("validation").run()
    app.text_input(key="corpus_field").set_value("bodies").run()
    assert "text field: " in app.error[0].value and "['text', 'body']; given 'bodies'" in app.error[0].value
    app.text_input(key="corpus_field").set_value("body").run()
    _ok(app)
    app.button(key="scan").click().run()
    _ok(app)
    ref = neuron_profiles(tiny, dd["validation"], [(layer, n) for n in range(tiny.cfg.d_mlp)], k=5, max_tokens=16384,
                          text_field="body")
    want = ref.examples[ref.examples.neuron == neuron].reset_index(drop=True)
    got = app.session_state["examples"].reset_index(drop=True)
    assert got[["rank", "doc", "position", "token_id"]].equals(want[["rank", "doc", "position", "token_id"]])
    np.testing.assert_allclose(got.activation.to_numpy(), want.activation.to_numpy(), rtol=1e-6, atol=1e-7)
    assert set(got.doc) <= {0, 1, 2}  # three non-empty documents, numbered as the scan engine numbers them
    # the same documents as a Parquet file: the same examples
    app.text_input(key="corpus_split").set_value("").run()
    app.text_input(key="corpus_path").set_value(str(tmp_path / "v.parquet")).run()
    _ok(app)
    app.button(key="scan").click().run()
    _ok(app)
    np.testing.assert_allclose(app.session_state["examples"].activation.to_numpy(), want.activation.to_numpy(),
                               rtol=1e-6, atol=1e-7)
    app.text_input(key="corpus_path").set_value(str(tmp_path / "nowhere")).run()
    assert f"corpus path: {str(tmp_path / 'nowhere')!r} {REFUSED}" in app.error[0].value
    app.radio(key="corpus_source").set_value("pasted text").run()  # back to the default for the other tests
    _ok(app)


def test_compare_page(app, tiny):
    app.sidebar.radio(key="page").set_value("Compare").run()  # its default second prompt is too long for n_ctx=48
    assert any("second prompt" in e.value and "n_ctx=48" in e.value for e in app.error)
    other = "the dog sat on the mat, the dog"
    app.text_area(key="compare_prompt").set_value(other).run()
    _ok(app)
    assert {"cmp_bar_A", "cmp_bar_B"} <= _charts(app)
    change = _frame(app, "prob_a", "prob_b", "change")
    pa, pb = _next_probs(tiny, PROMPT, 10), _next_probs(tiny, other, 10)
    a = dict(zip(pa.indices.tolist(), pa.values.tolist()))
    b = dict(zip(pb.indices.tolist(), pb.values.tolist()))
    for r in change.itertuples():
        np.testing.assert_allclose([r.prob_a, r.prob_b], [a.get(r.token_id, 0.0), b.get(r.token_id, 0.0)], rtol=1e-6)
    assert set(change.token_id) == set(a) | set(b)
    for key, text in (("cmp_view_A_html", PROMPT), ("cmp_view_B_html", other)):
        assert _view_data(app.session_state[key])["n"] == len(encode_prompt(tiny, text)[0])
    app.text_area(key="compare_prompt").set_value("   ").run()
    assert not app.exception and any("non-empty" in e.value for e in app.error)


def test_superposition_page(app, tiny):
    from interp.analysis.superposition import direction_set_stats, jl_max_vectors, jl_min_dim, train_toy_model

    _goto(app, "Superposition")
    assert {"angles", "toy"} <= _charts(app)
    stats = _frame(app, "mean_abs_cos", "baseline_mean_abs_cos")
    ref = direction_set_stats(tiny, sets=("W_E",), max_pairs=5000)
    np.testing.assert_allclose(stats.mean_abs_cos.to_numpy(), ref.mean_abs_cos.to_numpy(), rtol=1e-12)
    app.select_slider(key="toy_steps").set_value(100).run()
    app.slider(key="toy_features").set_value(8).run()
    app.slider(key="toy_hidden").set_value(3).run()
    app.slider(key="sparsity").set_value(0.95).run()
    _ok(app)
    toy = train_toy_model(8, 3, feature_probability=1.0 - 0.95, importance=0.7, steps=100, seed=0, batch_size=256)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["represented features"] == f"{toy.n_represented} / 8"
    assert metrics["dimensions per feature"] == f"{toy.dimensions_per_feature:.3f}"
    assert metrics["dims needed for the vectors"] == f"{jl_min_dim(10_000, 0.1):,}"
    # an orthonormal basis of d_model = 32 dims always fits: never "1" (JL's loose bound alone)
    fit = int(metrics["directions with |cos| ≤ ε that fit in the dims"].replace(",", ""))
    assert fit == max(32, jl_max_vectors(32, 0.1, method="random")) >= 32
    app.selectbox(key="sp_set").set_value("W_out").run()
    _ok(app)
    assert app.selectbox(key="sp_layer").options == ["0", "1"]


def test_logit_lens_page(app, tiny):
    from interp.analysis.logit_lens import logit_lens

    _goto(app, "Logit lens")
    assert {"lens_grid", "lens_final"} <= _charts(app)
    app.slider(key="lens_k").set_value(3).run()
    app.radio(key="lens_target").set_value("next").run()
    app.select_slider(key="lens_pos").set_value(4).run()
    _ok(app)
    cells = _frame(app, "rank", "prob", "target_rank")
    ref = logit_lens(tiny, encode_prompt(tiny, PROMPT), k=3, target="next")
    ref = ref[ref.position == 4]
    np.testing.assert_allclose(cells.prob.to_numpy(), ref.prob.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(cells.target_prob.to_numpy(), ref.target_prob.to_numpy(), rtol=1e-12)


def test_report_page_download(app, tiny):
    from interp.report.readback import check_well_formed, read_tables, section_ids
    from interp.report.render import SECTIONS

    _goto(app, "Report")
    assert not app.get("download_button")  # nothing is built until asked
    app.button(key="build_report").click().run()
    _ok(app)
    assert len(app.get("download_button")) == 2  # HTML and Markdown
    page = app.session_state["report_html"].decode("utf-8")  # the bytes the download button serves
    assert check_well_formed(page) == [] and section_ids(page) == list(SECTIONS)
    shown = read_tables(page)["next_tokens"]
    ref = _next_probs(tiny, PROMPT, len(shown))
    np.testing.assert_allclose([float(v) for v in shown.prob], ref.values.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "prompt, needle",
    [("", "non-empty"), ("   ", "non-empty"), ("x" * 60, "n_ctx=48")],
)
def test_bad_prompt_shows_an_error_not_a_traceback(app, prompt, needle):
    for page in ("Overview", "Logit lens"):
        app.sidebar.radio(key="page").set_value(page).run()
        app.sidebar.text_area(key="prompt").set_value(prompt).run()
        assert not app.exception
        assert any(needle in e.value for e in app.error), [e.value for e in app.error]
    app.sidebar.text_area(key="prompt").set_value(PROMPT).run()
    _ok(app)


@pytest.mark.parametrize("path, needle", [("/no/such/model", REFUSED), ("", "enter the path"),
                                          ("no-such-zoo-name", REFUSED)])
def test_bad_model_path_shows_an_error(tiny_dir, path, needle):
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.sidebar.selectbox(key="model_choice").set_value(LOCAL).run()
    at.sidebar.text_input(key="model_path").set_value(path).run()
    assert not at.exception
    assert any(needle in e.value for e in at.error), [e.value for e in at.error]


def test_long_prompt_position_windows(app, tiny):
    """Past WINDOW tokens the token-axis figures show a window of positions that a slider moves."""
    import json

    long_prompt = "the cat sat on the mat and the dog sat on a log"  # 47 byte tokens (n_ctx 48)
    app.sidebar.text_area(key="prompt").set_value(long_prompt).run()
    _goto(app, "Attention")
    app.slider(key="attn_window").set_value(44).run()
    _ok(app)
    spec = json.loads(next(c for c in app.get("plotly_chart") if c.key == "pattern").proto.spec)
    assert spec["data"][0]["x"] == list(range(4, 44))  # 40 positions ending before 44
    ticks = spec["layout"]["xaxis"]["ticktext"]
    assert len(ticks) == 40 and ticks[0].endswith("<sub>4</sub>")
    _goto(app, "Logit lens")
    app.slider(key="lens_window").set_value(30).run()
    _ok(app)
    spec = json.loads(next(c for c in app.get("plotly_chart") if c.key == "lens_grid").proto.spec)
    assert spec["data"][0]["x"] == list(range(12, 30))
    app.sidebar.text_area(key="prompt").set_value(PROMPT).run()
    _ok(app)


def test_patching_page(app, tiny):
    """The induction pair's head and layer x position sweeps and DLA equal the analyzers; a custom pair too."""
    from interp.analysis.causal import activation_patching, direct_logit_attribution, repeated_text_pair

    _goto(app, "Patching")
    assert {"patch_heads", "patch_grid", "dla"} <= _charts(app)
    pair = repeated_text_pair(tiny, encode_prompt(tiny, PROMPT))
    kw = {"answer": pair.answer, "wrong": pair.wrong}
    ref = activation_patching(tiny, pair.clean, pair.corrupted, where="z", by_position=False, **kw)
    shown = _frame(app, "head", "normalised")
    np.testing.assert_allclose(shown.effect.to_numpy(), ref.effect.to_numpy(), rtol=1e-9)
    grid = _frame(app, "position", "token", "normalised")
    ref_grid = activation_patching(tiny, pair.clean, pair.corrupted, where="resid_pre", **kw)
    np.testing.assert_allclose(grid.effect.to_numpy(), ref_grid.effect.to_numpy(), rtol=1e-9)
    dla = _frame(app, "component", "contribution")
    ref_dla = direct_logit_attribution(tiny, pair.clean, pair.answer, pair.wrong).set_index("component")
    np.testing.assert_allclose(dla.contribution.to_numpy(), ref_dla.contribution[dla.component].to_numpy(), rtol=1e-9)

    app.radio(key="patch_mode").set_value("custom corrupted prompt").run()
    app.text_input(key="patch_corrupted").set_value(PROMPT.replace("mat", "hat")).run()
    app.text_input(key="patch_answer").set_value("m").run()
    app.text_input(key="patch_wrong").set_value("h").run()
    _ok(app)
    shown = _frame(app, "head", "normalised")
    ref = activation_patching(tiny, encode_prompt(tiny, PROMPT), encode_prompt(tiny, PROMPT.replace("mat", "hat")),
                              where="z", by_position=False, answer="m", wrong="h")
    np.testing.assert_allclose(shown.effect.to_numpy(), ref.effect.to_numpy(), rtol=1e-9)
    app.text_input(key="patch_corrupted").set_value("too short").run()
    assert app.error and "corrupted" in app.error[0].value
    app.radio(key="patch_mode").set_value("induction (prompt repeated)").run()
