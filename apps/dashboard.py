"""The interp dashboard: `interp dashboard` or `streamlit run apps/dashboard.py [-- --model M --prompt P]`.

The sidebar picks a model (a zoo entry or a local folder) and a prompt; the pages show what the
analyzers in ``interp.analysis`` say about them. The app only calls analyzers (through small cached
wrappers) and draws their output with the figures the HTML report uses. Bad input — an empty or too
long prompt, a folder that does not exist — shows an error message in the page, never a traceback.

Anyone who reaches the page may type paths, so every path is confined (interp.safe_paths) to the model zoo,
the operator's ``--data-dir`` folders and ``--model``, or the session's own uploads, and every request has
limits (interp.report.serving: corpus bytes, tokens scanned, model size, scan time) that say what they cut.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# `streamlit run apps/dashboard.py` from a source checkout works without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import streamlit as st

from interp.errors import InterpError
from interp.report.serving import add_serving_arguments, is_loopback

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"
# The second prompt of the Compare page: the clean/corrupted pair of activation patching (IOI)
DEFAULT_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
WINDOW = 40  # positions drawn in a token-axis figure at once (the window slider moves them)
GRID_WINDOW = 20  # positions per panel of the all-heads grid
LENS_WINDOW = 18  # positions of the logit-lens grid (a cell holds a token's text)
DEFAULT_MODEL = "default"
LOCAL = "Local folder…"
SAMPLE_CORPUS = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife.\nIn the beginning God created the heaven and the earth.\nThe quick brown fox jumps over the lazy "
    "dog.\nimport numpy as np\nfor i in range(10):\n    print(i)\n"
)


def _cli_defaults() -> argparse.Namespace:
    """Options passed after `--` (``streamlit run apps/dashboard.py -- --model M --prompt P --data-dir D``): the
    preselected model and prompt, and what browser users may read and spend (interp.report.serving)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--model", default=None)
    p.add_argument("--prompt", default=None)
    add_serving_arguments(p)
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


# How refusals describe where a browser user's paths may lead (never the server's absolute paths).
WHERE = "files under the model zoo and the folders given to `interp dashboard --data-dir`"


def allowed_roots(defaults: argparse.Namespace) -> tuple[Path, ...]:
    """The folders a browser user's paths may lead into: the zoo, every --data-dir, and the operator's --model
    folder. Everything else on the server stays unread (interp.safe_paths)."""
    from interp.loading import ZOO
    from interp.safe_paths import real_roots

    preset = defaults.model if defaults.model and Path(defaults.model).expanduser().is_dir() else None
    return real_roots(ZOO, *defaults.data_dir, preset)


def user_folder(text: str, label: str, defaults: argparse.Namespace) -> str:
    """A model or SAE folder typed in the page, confined to the allowed roots and refused when its config
    means more than --max-model-params: its real path (so the caches key on what is read)."""
    from interp.report.serving import check_model_size
    from interp.safe_paths import confine

    found = confine(text, allowed_roots(defaults), label, want="dir", where=WHERE)
    check_model_size(found.path, found.n_bytes, defaults.max_model_params, label)
    return str(found.path)


# ----------------------------------------------------------------------------------------------------
# cached model and analyses. Keys are plain values (model spec, prompt, options) so caching is exact.


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def get_model(spec: str):
    from interp.report.inputs import load_model

    return load_model(None if spec == DEFAULT_MODEL else spec)


def tokens_for(spec: str, prompt: str):
    from interp.report.inputs import encode_prompt

    return encode_prompt(get_model(spec), prompt)


@st.cache_data(show_spinner="Tokenizing…", max_entries=32)
def tokenization(spec: str, prompt: str) -> pd.DataFrame:
    from interp.report.data import tokenization_table

    return tokenization_table(get_model(spec), prompt, tokens_for(spec, prompt))


@st.cache_data(show_spinner=False, max_entries=64)
def next_tokens(spec: str, prompt: str, k: int, temperature: float, top_k, top_p, min_p) -> pd.DataFrame:
    from interp.report.probes import next_token_table

    return next_token_table(get_model(spec), tokens_for(spec, prompt), k, temperature, top_k, top_p, min_p)


@st.cache_data(show_spinner="Scoring heads…", max_entries=32)
def head_scores(spec: str, prompt: str) -> pd.DataFrame:
    from interp.analysis.attention import head_scores as _head_scores

    return _head_scores(get_model(spec), tokens_for(spec, prompt))


@st.cache_data(show_spinner="Reading attention patterns…", max_entries=32)
def patterns(spec: str, prompt: str, layer: int) -> pd.DataFrame:
    from interp.analysis.attention import attention_patterns

    return attention_patterns(get_model(spec), tokens_for(spec, prompt), layers=layer)


@st.cache_data(show_spinner="Ranking neurons…", max_entries=32)
def top_neurons(spec: str, prompt: str, k: int, position: int, target) -> pd.DataFrame:
    from interp.analysis.neurons import top_neurons as _top_neurons

    return _top_neurons(get_model(spec), tokens_for(spec, prompt), position=position, target=target, k=k)


@st.cache_data(show_spinner=False, max_entries=128)
def neuron_answers(spec: str, layer: int, neuron: int, k: int) -> pd.DataFrame:
    from interp.analysis.neurons import neuron_answers as _neuron_answers

    return _neuron_answers(get_model(spec), layer, neuron, k=k, center=True)


@st.cache_data(show_spinner="Reading every head's pattern…", max_entries=16)
def all_patterns(spec: str, prompt: str) -> pd.DataFrame:
    from interp.analysis.attention import attention_patterns

    return attention_patterns(get_model(spec), tokens_for(spec, prompt))


# How the Neurons page names the corpus fields in its messages (interp.report.inputs.read_corpus).
CORPUS_LABELS = {"corpus": "corpus path", "split": "split", "field": "text field"}
HELDOUT, PASTED, SOURCE, UPLOAD = ("held-out text of the model", "pasted text", "file, folder or dataset",
                                   "uploaded file")
UPLOAD_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet")


@st.cache_resource
def private_dir() -> str:
    """This server's private scratch folder (mode 0700, removed at exit): uploads and cut corpora."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="interp-dashboard-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def save_upload(up) -> str:
    """An uploaded file, written once into this session's own folder (other sessions cannot name it): its path."""
    import hashlib
    import tempfile

    from interp.io import atomic_write_bytes

    folder = st.session_state.get("upload_dir")
    if folder is None or not Path(folder).is_dir():
        folder = st.session_state["upload_dir"] = tempfile.mkdtemp(prefix="session-", dir=private_dir())
    data = up.getvalue()
    suffix = Path(up.name).suffix.lower()  # the browser's file name chooses the reader, nothing more
    out = Path(folder) / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix if suffix in UPLOAD_SUFFIXES else '.txt'}"
    if not out.is_file():
        atomic_write_bytes(out, data)
    return str(out)


def user_corpus(typed: str, source: str, limits: argparse.Namespace) -> tuple[str, int, str | None]:
    """A corpus path typed (or an upload saved) by a browser user, confined to the allowed roots (an upload:
    to this session's folder) and cut to --max-corpus-mb: ``(path to read, modification time, what was cut)``."""
    from interp.report.serving import corpus_prefix
    from interp.safe_paths import confine

    if source == UPLOAD:
        found = confine(typed, (Path(st.session_state["upload_dir"]),), "upload", want="file", where="your uploads")
    else:
        found = confine(typed, allowed_roots(limits), CORPUS_LABELS["corpus"], where=WHERE)
    path, note = corpus_prefix(found.path, found.n_bytes, found.is_dir, limits.max_corpus_mb * 10**6,
                               Path(private_dir()) / "cut", CORPUS_LABELS["corpus"])
    return str(path), found.path.stat().st_mtime_ns, note


@st.cache_resource(show_spinner="Reading the corpus…", max_entries=4)
def neuron_corpus(spec: str, kind: str, value: str, split: str | None, field: str | None, stamp=None):
    """``(name, Corpus)`` the Neurons page scans: the model's held-out text, pasted text (one document), or a
    confined path (text / JSONL / Parquet file, a folder, a saved datasets folder). Kept between reruns (a
    Corpus is read-only), so a file is read once per ``stamp`` (its modification time), not at every click."""
    from interp.data import Corpus
    from interp.report.inputs import read_corpus

    if kind == PASTED:
        if not value.strip():
            raise InterpError("corpus: paste some text to scan.")
        return "pasted text", Corpus.from_memory([value])
    # the held-out text is "default", unless the page passed a cut copy of it (value)
    return read_corpus(get_model(spec), "default" if kind == HELDOUT and not value else value, split=split, field=field,
                       flags=CORPUS_LABELS)


@st.cache_data(show_spinner="Scanning the corpus…", max_entries=8)
def layer_profiles(spec: str, kind: str, value: str, split: str | None, field: str | None, stamp, layer: int,
                   max_tokens: int, seconds: int):
    """Every neuron of one layer over the corpus (one pass; any neuron of the layer is then instant). ``stamp``
    (a file's modification time) keys the cache, so an edited file is scanned again. Stopped after ``seconds``."""
    from interp.analysis.neurons import neuron_profiles
    from interp.report.serving import time_limit

    model = get_model(spec)
    _, corpus = neuron_corpus(spec, kind, value, split, field, stamp)
    with time_limit(model, seconds, "corpus scan"):
        return neuron_profiles(model, corpus, [(layer, n) for n in range(int(model.cfg.d_mlp))], k=5,
                               max_tokens=max_tokens)


@st.cache_data(show_spinner=False, max_entries=64)
def prompt_activations(spec: str, prompt: str, layer: int, neuron: int) -> pd.DataFrame:
    from interp.analysis.neurons import neuron_activations

    return neuron_activations(get_model(spec), tokens_for(spec, prompt), layer, neuron)


@st.cache_data(show_spinner="Measuring angles…", max_entries=32)
def angle_data(spec: str, set_name: str, max_pairs: int):
    from interp.analysis import superposition as sp

    model = get_model(spec)
    stats = sp.direction_set_stats(model, sets=(set_name,), max_pairs=max_pairs)
    samples = sp.direction_angle_samples(model, sets=set_name, max_pairs=min(max_pairs, 5000))
    pdf = sp.random_angle_pdf(int(stats.dim.iloc[0]), n_points=361) if len(stats) else None
    return stats, samples, pdf


@st.cache_data(show_spinner="Training the toy model…", max_entries=32)
def toy_model(n_features: int, d_hidden: int, sparsity: float, importance: float, steps: int, seed: int):
    from interp.analysis.superposition import train_toy_model

    return train_toy_model(n_features, d_hidden, feature_probability=1.0 - sparsity, importance=importance,
                           steps=steps, seed=seed, batch_size=256)


@st.cache_resource(show_spinner="Loading the SAE…", max_entries=4)
def get_sae(path: str):
    from interp.analysis.sae import load_sae

    return load_sae(Path(path).expanduser())


@st.cache_data(show_spinner="Reading features…", max_entries=32)
def sae_prompt_features(spec: str, sae_path: str, prompt: str, k: int) -> pd.DataFrame:
    from interp.analysis.sae import feature_activations

    return feature_activations(get_model(spec), get_sae(sae_path), tokens_for(spec, prompt), k=k)


@st.cache_data(show_spinner="Measuring decoder angles…", max_entries=8)
def sae_angles(sae_path: str, max_pairs: int):
    from interp.analysis.sae import decoder_angle_samples, decoder_orthogonality
    from interp.analysis.superposition import random_angle_pdf

    sae = get_sae(sae_path)
    return (decoder_orthogonality(sae, max_pairs=max_pairs), decoder_angle_samples(sae, min(max_pairs, 5000)),
            random_angle_pdf(sae.cfg.d_in, n_points=361))


@st.cache_data(show_spinner=False, max_entries=128)
def sae_logit_effects(spec: str, sae_path: str, feature: int, k: int) -> pd.DataFrame:
    from interp.analysis.sae import feature_logit_effects

    return feature_logit_effects(get_model(spec), get_sae(sae_path), feature, k=k)


@st.cache_data(show_spinner="Scanning the corpus…", max_entries=16)
def sae_top_contexts(spec: str, sae_path: str, corpus: str, feature: int, k: int, seconds: int) -> pd.DataFrame:
    from interp.analysis.sae import feature_top_contexts
    from interp.report.serving import time_limit

    model = get_model(spec)
    docs = [model.to_tokens(d)[0].cpu() for d in corpus.split("\n") if d.strip()]  # bytes without a tokenizer
    if not docs:
        raise InterpError("corpus: give at least one non-empty line of text to scan.")
    with time_limit(model, seconds, "corpus scan"):
        return feature_top_contexts(model, get_sae(sae_path), docs, features=[feature], k=k, window=8)


@st.cache_data(show_spinner="Sampling activations and ablating…", max_entries=16)
def sae_feature_dashboard(spec: str, sae_path: str, corpus: str, feature: int, seconds: int):
    """Quantile samples and correlated features over the corpus, and the ablation effect on the top examples."""
    from interp.analysis.sae import feature_ablation_effects, feature_dashboard
    from interp.report.serving import time_limit

    model, sae = get_model(spec), get_sae(sae_path)
    docs = [model.to_tokens(d)[0].cpu() for d in corpus.split("\n") if d.strip()]
    with time_limit(model, seconds, "feature dashboard"):
        dash = feature_dashboard(model, sae, docs, [feature], n_bins=4, per_bin=2, k_top=3, window=8, after=3)
        top = dash.samples[dash.samples.bin == 0]
        contexts = [g.token_id.tolist() for _, g in top.groupby("sample", sort=True)]
        ablation = feature_ablation_effects(model, sae, contexts, feature) if contexts else None
    return dash, ablation


@st.cache_resource(show_spinner="Loading the transcoders…", max_entries=4)
def get_transcoders(path: str):
    from interp.analysis.sae.transcoder import load_transcoders

    return load_transcoders(Path(path))


def transcoder_folder(text: str, limits: argparse.Namespace) -> str:
    """A transcoder folder typed in the page (one transcoder, or one per subfolder), confined to the allowed
    roots and refused when a transcoder's cfg.json means more than --max-model-params: its real path."""
    from interp.report.serving import check_model_size
    from interp.safe_paths import confine

    found = confine(text, allowed_roots(limits), "transcoder folder", want="dir", where=WHERE)
    subs = [found.path] if (found.path / "cfg.json").is_file() else \
        sorted(p for p in found.path.iterdir() if (p / "cfg.json").is_file())
    for sub in subs:  # the folder's bytes bound every transcoder together
        check_model_size(sub, found.n_bytes, limits.max_model_params, "transcoder folder")
    if not subs and found.n_bytes // 4 > limits.max_model_params:  # circuit-tracer's layout: no config, only bytes
        raise InterpError(f"transcoder folder: about {found.n_bytes // 4:.2e} parameters on disk; this dashboard "
                          f"builds at most {limits.max_model_params:.2e} (interp dashboard --max-model-params).")
    return str(found.path)


def graph_tokens(spec: str, prompt: str, limit: int) -> tuple[tuple[int, ...], str | None]:
    """The prompt's token ids an attribution graph traces: its last ``limit`` (they lead to the prediction), and
    a note saying what was cut."""
    ids = tokens_for(spec, prompt)[0].tolist()
    if len(ids) <= limit:
        return tuple(ids), None
    return tuple(ids[-limit:]), (f"the graph traces the last {limit} of the prompt's {len(ids)} tokens "
                                 "(interp dashboard --max-graph-tokens)")


@st.cache_data(show_spinner="Tracing the attribution graph…", max_entries=16)
def circuit_graph(spec: str, tc_path: str, ids: tuple[int, ...], node_threshold: float, edge_threshold: float,
                  seconds: int):
    import torch

    from interp.analysis.circuits.graph import attribution_graph
    from interp.report.serving import time_limit

    model = get_model(spec)
    with time_limit(model, seconds, "attribution graph"):
        return attribution_graph(model, get_transcoders(tc_path), torch.tensor([ids]), node_threshold=node_threshold,
                                 edge_threshold=edge_threshold)


@st.cache_data(show_spinner="Finding the features' top contexts…", max_entries=16)
def circuit_contexts(spec: str, tc_path: str, ids: tuple[int, ...], node_threshold: float, edge_threshold: float,
                     seconds: int) -> pd.DataFrame:
    """The graph's feature nodes' top contexts (their hover), over the model folder's held-out text or, without
    one, the sample corpus; a bounded scan (interp.report.circuit.HOVER_TOKENS)."""
    from interp.report.circuit import graph_feature_contexts
    from interp.report.inputs import read_corpus
    from interp.report.serving import time_limit

    model = get_model(spec)
    graph = circuit_graph(spec, tc_path, ids, node_threshold, edge_threshold, seconds)
    corpus = read_corpus(model, "default")
    docs = corpus[1] if corpus is not None else [d for d in SAMPLE_CORPUS.split("\n") if d.strip()]
    with time_limit(model, seconds, "top contexts"):
        return graph_feature_contexts(model, get_transcoders(tc_path), graph, docs)


@st.cache_data(show_spinner="Intervening…", max_entries=64)
def circuit_intervention(spec: str, tc_path: str, ids: tuple[int, ...], node: tuple[int, int, int], value: float,
                         mode: str) -> pd.DataFrame:
    import torch

    from interp.analysis.circuits.graph import intervene

    return intervene(get_model(spec), get_transcoders(tc_path), torch.tensor([ids]), {node: value}, mode=mode).table


@st.cache_data(show_spinner="Running the logit lens…", max_entries=32)
def lens(spec: str, prompt: str, k: int, target: str) -> pd.DataFrame:
    from interp.analysis.logit_lens import logit_lens

    return logit_lens(get_model(spec), tokens_for(spec, prompt), k=k, target=target)


@st.cache_data(show_spinner="Patching…", max_entries=16)
def patching(spec: str, prompt: str, corrupted: str | None, answer: str | None, wrong: str | None, where: str):
    """Head and layer x position patching + DLA of the clean prompt. Without ``corrupted``: the prompt
    followed by its own first half, corrupted at the copied token (an induction task)."""
    from interp.analysis import causal
    from interp.report.data import induction_pair, positions_that_matter

    model = get_model(spec)
    notes = []
    if corrupted is None:  # the report's pair: fitted to n_ctx on a long prompt (notes say how)
        pair, notes = induction_pair(model, tokens_for(spec, prompt))
        clean, bad, ans, wr = pair.clean, pair.corrupted, pair.answer, pair.wrong
    else:
        clean, bad = tokens_for(spec, prompt), tokens_for(spec, corrupted)
        ans, wr = [int(x) if x.lstrip("-").isdigit() else x for x in (answer or "", wrong or "")]
        if ans == "" or wr == "":
            raise InterpError("answer and wrong: give the clean prompt's answer and the corrupted prompt's answer "
                              "(one token each, text or id).")
    heads = causal.activation_patching(model, clean, bad, where="z", by_position=False, answer=ans, wrong=wr)
    positions, note = positions_that_matter(model, clean, bad, where, answer=ans, wrong=wr)  # a long prompt: some
    notes = [*notes, note] if note else notes
    grid = causal.activation_patching(model, clean, bad, where=where, answer=ans, wrong=wr, positions=positions)
    dla = causal.direct_logit_attribution(model, clean, ans, wr)
    from interp.report.inputs import str_tokens

    info = {"tokens": str_tokens(model, clean), "clean": heads.attrs["clean"], "corrupted": heads.attrs["corrupted"],
            "answer": dla.attrs["answer"], "wrong": dla.attrs["wrong"], "corrupted_tokens": str_tokens(model, bad),
            "notes": notes}
    return heads, grid, dla, info


@st.cache_data(show_spinner="Scoring every edge…", max_entries=8)
def edge_scores(spec: str, prompt: str, method: str, steps: int):
    """EAP / EAP-IG on the induction pair (as the Patching page) and the faithfulness of the top-n circuits."""
    from interp.analysis.circuits.edges import edge_attribution, faithfulness_curve
    from interp.report.data import induction_pair

    model = get_model(spec)
    pair, notes = induction_pair(model, tokens_for(spec, prompt))  # fitted to n_ctx on a long prompt, as Patching's
    kw = {"answer": pair.answer, "wrong": pair.wrong}
    edges = edge_attribution(model, pair.clean, pair.corrupted, method=method, steps=steps, **kw)
    return edges, faithfulness_curve(model, edges, pair.clean, pair.corrupted, **kw), {**edges.attrs, "notes": notes}


@st.cache_data(show_spinner="Steering…", max_entries=8)
def steering_table(spec: str, prompt: str, positive: tuple, negative: tuple, hook: str, scales: tuple,
                   new_tokens: int):
    from interp.analysis.steering import steering_effect, steering_vector

    model = get_model(spec)
    vec = steering_vector(model, list(positive), list(negative), hook, position="mean")
    df = steering_effect(model, tokens_for(spec, prompt), vec, hook, scales, max_new_tokens=new_tokens)
    return df.drop(columns="prompt").assign(top_tokens=[" | ".join(t) for t in df.top_tokens]), float(vec.norm())


@st.cache_data(show_spinner="Building the report…", max_entries=8)
def report_files(spec: str, prompt: str) -> tuple[bytes, bytes]:
    """The report as (HTML, Markdown) bytes, from one run of the analyzers."""
    from interp.report import collect_report, render_html, render_markdown

    data = collect_report(get_model(spec), prompt)
    return render_html(data).encode("utf-8"), render_markdown(data).encode("utf-8")


# ----------------------------------------------------------------------------------------------------
# helpers


def show(df: pd.DataFrame, key: str | None = None, **kwargs) -> None:
    """A dataframe with token columns made visible (spaces, newlines)."""
    from interp.report.figures import show_token
    from interp.report.render import _TOKEN_COLUMNS

    view = df.copy()
    for c in view.columns:
        if c in _TOKEN_COLUMNS and not pd.api.types.is_numeric_dtype(view[c]):
            view[c] = view[c].map(lambda s: show_token(s) if isinstance(s, str) else s)
    st.dataframe(view, hide_index=True, key=key, **kwargs)


def show_answers(ans: pd.DataFrame, key: str, raises: str) -> None:
    """A ``neuron_answers``-shaped frame side by side: the tokens raised and the tokens lowered."""
    a1, a2 = st.columns(2)
    with a1:
        st.caption(raises)
        show(ans[ans.direction == "top"][["rank", "token", "token_id", "logit"]], key=f"{key}_top")
    with a2:
        st.caption("tokens it lowers")
        show(ans[ans.direction == "bottom"][["rank", "token", "token_id", "logit"]], key=f"{key}_bottom")


def plot(fig, key: str) -> None:
    # A figure with a fixed width (token axes: TOKEN_PX per token) keeps it, so its labels never overlap.
    st.plotly_chart(fig, key=key, config={"displaylogo": False}, width="stretch" if fig.layout.width is None else "content")


def html_block(body: str) -> None:
    """Token shading and other small widgets (interp.report.widgets) inline in the page."""
    from interp.report.widgets import WIDGET_CSS

    st.markdown(f"<style>{WIDGET_CSS}</style>{body}", unsafe_allow_html=True)


def position_window(n: int, key: str, size: int = WINDOW) -> tuple[int, int]:
    """A window of at most ``size`` positions for token-axis figures; a slider moves it when the prompt is longer."""
    from interp.report.figures import token_window

    if n <= size:
        return 0, n
    end = st.slider("positions shown (last of the window)", size, n, n, key=key,
                    help=f"figures draw {size} positions at a time so every token label stays legible")
    return token_window(n, size, end)


def neuron_link(layer: int, neuron: int) -> str:
    return f"?page=Neurons&neuron=L{layer}N{neuron}"


LINK = {"page": st.column_config.LinkColumn("page", display_text="open", help="the neuron's page")}


def sidebar() -> tuple[str, str, str]:
    from interp.loading import zoo_models

    defaults = _cli_defaults()
    st.sidebar.title("interp")
    address = st.get_option("server.address")  # unset: every interface
    if not defaults.allow_remote and address is not None and not is_loopback(address):
        st.sidebar.warning(f"This server listens on {address}, beyond this machine, without login. Serve others "
                           "with `interp dashboard --host H --allow-remote` (see the README).")
    zoo = zoo_models()
    options = [DEFAULT_MODEL, *zoo, LOCAL]
    preset = defaults.model
    index = 0
    if preset:
        index = options.index(preset) if preset in options else len(options) - 1
    choice = st.sidebar.selectbox("Model", options, index=index, key="model_choice",
                                  help="'default' is the shipped model (interp.load()); or a local model folder")
    spec = choice
    if choice == LOCAL:
        path = st.sidebar.text_input("Model folder", value=preset if preset and preset not in options else "",
                                     key="model_path", placeholder="/path/to/model (config.json + weights)")
        spec = path.strip()
    # ?prompt=... (a shared link) sets the first prompt of a session, like --prompt on the command line
    first = st.query_params.get("prompt") or defaults.prompt or DEFAULT_PROMPT
    prompt = st.sidebar.text_area("Prompt", value=first, key="prompt", height=110)
    wanted = st.query_params.get("page", PAGES[0])
    page = st.sidebar.radio("Page", PAGES, index=PAGES.index(wanted) if wanted in PAGES else 0, key="page")
    if st.query_params.get("page") != page:
        st.query_params["page"] = page
    return spec, prompt, page


def check_model(spec: str) -> str:
    """Load the chosen model and return the spec the pages use, or raise InterpError with a message for the page.

    A zoo name loads from the zoo; anything else typed in the folder field is a path confined to the allowed
    roots (never a hub id: a browser user must not make the server download), its size checked before building."""
    from interp.loading import zoo_models

    if not spec:
        raise InterpError("model folder: enter the path of a local model folder (config.json + model.safetensors).")
    defaults = _cli_defaults()
    if spec == defaults.model and Path(spec).expanduser().is_dir():  # the operator's --model: trusted as given
        spec = os.path.realpath(Path(spec).expanduser())
    elif spec != DEFAULT_MODEL and spec not in zoo_models():
        spec = user_folder(spec, "model folder", defaults)
    get_model(spec)
    return spec


# ----------------------------------------------------------------------------------------------------
# pages


def page_overview(spec: str, prompt: str) -> None:
    from interp.report.figures import next_token_bar
    from interp.report.inputs import model_summary

    model = get_model(spec)
    toks = tokenization(spec, prompt)
    st.subheader("Model")
    summary = model_summary(model)
    cols = st.columns(4)
    for col, key in zip(cols, ("parameters", "n_layers", "d_model", "n_heads")):
        col.metric(key, f"{summary[key]:,}")
    with st.expander("Configuration"):
        show(pd.DataFrame({"field": list(summary), "value": [str(v) for v in summary.values()]}), key="config")
    st.subheader(f"Tokens ({len(toks)})")
    show(toks, key="tokens")

    st.subheader("Next token")
    c1, c2, c3, c4 = st.columns(4)
    temperature = c1.slider("temperature", 0.0, 2.0, 1.0, 0.05, key="temperature", help="0 = greedy")
    top_k = c2.number_input("top-k (empty = off)", min_value=1, max_value=int(model.cfg.d_vocab), value=None,
                            key="top_k", help="as --top-k: keep the k most likely tokens; leave empty for no filter")
    top_p = c3.slider("top-p (1 = off)", 0.05, 1.0, 1.0, 0.05, key="top_p")
    k = c4.number_input("rows", 1, 100, 10, key="next_k")
    top_k = None if top_k is None else int(top_k)
    table = next_tokens(spec, prompt, int(k), float(temperature), top_k,
                        None if top_p >= 1.0 else float(top_p), None)
    left, right = st.columns([3, 2])
    with left:
        plot(next_token_bar(table), key="next_bar")
    with right:
        show(table, key="next_table")
    st.caption("prob: the model's softmax; sampled_prob: what the sampler draws from after temperature and filters.")

    st.subheader("Sample")
    s1, s2, s3 = st.columns(3)
    n_new = s1.slider("new tokens", 1, 100, 20, key="max_new_tokens")
    seed = s2.number_input("seed", 0, 10**6, 0, key="seed")
    if s3.button("Generate", key="generate"):
        from interp.generate import generate

        tokens = tokens_for(spec, prompt)
        room = int(model.cfg.n_ctx) - tokens.shape[1]
        if room < 1:
            raise InterpError(f"the prompt fills the model's context (n_ctx={model.cfg.n_ctx}); shorten it to sample.")
        out = generate(model, tokens, max_new_tokens=min(int(n_new), room), temperature=float(temperature),
                       top_k=top_k, top_p=None if top_p >= 1.0 else float(top_p), seed=int(seed))
        st.code(prompt + model.to_string(out[0, tokens.shape[1]:]), language=None)


def page_attention(spec: str, prompt: str) -> None:
    from interp.report.data import notable_heads, pattern_matrix
    from interp.report.figures import (
        head_role_grid,
        pattern_grid,
        pattern_heatmap,
        pattern_overview,
        token_window,
    )
    from interp.report.inputs import str_tokens

    model = get_model(spec)
    scores = head_scores(spec, prompt)
    st.subheader("Head roles")
    plot(head_role_grid(scores), key="role_grid")
    st.caption("duplicate_token and induction are scored on a repeated random sequence, the other roles on the "
               "prompt (column source).")
    with st.expander("Notable heads and all scores", expanded=True):
        show(notable_heads(scores, 6), key="notable")
        wide = scores.pivot_table(index=["layer", "head"], columns="role", values="score", dropna=False)
        show(wide[[r for r in dict.fromkeys(scores.role) if r in wide.columns]].reset_index(), key="head_scores")

    cfg = model.cfg
    strs = str_tokens(model, tokens_for(spec, prompt))
    n = len(strs)
    c1, c2 = st.columns(2)
    layer = int(c1.selectbox("layer", list(range(cfg.n_layers)), key="attn_layer"))
    head = int(c2.selectbox("head", list(range(cfg.n_heads)), key="attn_head"))

    st.subheader("Where each token attends")
    st.caption("Hover a token: every earlier token is shaded by the chosen heads' attention from it (click pins it). "
               "Tick heads to average them.")
    attention_component(spec, prompt, strs, [(layer, head)], key="view")

    st.subheader("Pattern of one head")
    pats = patterns(spec, prompt, layer)
    matrix = pattern_matrix(pats, layer, head, n)
    if n > WINDOW:  # the whole pattern first, pooled into blocks (as the report draws it), then a window of it
        plot(pattern_overview(matrix, strs, f"L{layer}H{head}"), key="pattern_all")
        st.caption(f"All {n} positions pooled into blocks: a cell is the share of a query block's attention that "
                   f"lands on a key block. Below, {WINDOW} positions token by token; the slider moves them.")
    window = position_window(n, "attn_window")
    plot(pattern_heatmap(matrix, strs, f"L{layer}H{head}", window=window), key="pattern")
    if st.checkbox("All heads of this layer", key="all_heads"):
        mats = [pattern_matrix(pats, layer, h, n) for h in range(cfg.n_heads)]
        # two panels side by side fit the page at GRID_WINDOW positions each (TOKEN_PX per token label)
        grid_window = token_window(n, GRID_WINDOW, end=window[1])
        plot(pattern_grid(mats, [f"L{layer}H{h}" for h in range(cfg.n_heads)], strs, window=grid_window,
                          cols=2 if cfg.n_heads > 1 else 1), key="pattern_grid")


def attention_component(spec: str, prompt: str, strs: list[str], checked: list[tuple[int, int]], key: str) -> None:
    """The report's interactive attention view, in an iframe (``st.iframe``, which replaced the deprecated
    ``st.components.v1.html``; the view's script runs inside it): every head when it fits."""
    from interp.report.data import view_heads
    from interp.report.widgets import WIDGET_CSS, attention_view

    model = get_model(spec)
    heads = view_heads(model, pd.DataFrame({"layer": [c[0] for c in checked], "head": [c[1] for c in checked]}),
                       len(strs), 4_000_000)
    pats = all_patterns(spec, prompt) if len(heads) > len(checked) else patterns(spec, prompt, checked[0][0])
    body = attention_view(strs, pats, heads, checked=checked)
    lines = 2 + sum(len(s) + 1 for s in strs) // 90
    height = min(560, 150 + 30 * lines + 24 * (len(heads) // 12))
    st.iframe(f"<style>body{{font-family:sans-serif;margin:0;overflow:auto}}{WIDGET_CSS}</style>{body}", height=height)
    st.session_state[f"{key}_html"] = body  # what the component shows (tests read it back)


def page_neurons(spec: str, prompt: str) -> None:
    model = get_model(spec)
    n_tok = len(tokens_for(spec, prompt)[0])
    c1, c2, c3 = st.columns(3)
    k = c1.slider("neurons per ranking", 3, 50, 10, key="neuron_k")
    position = c2.number_input("position (-1 = last)", -n_tok, n_tok - 1, -1, key="neuron_position")
    target = c3.text_input("target token (empty = prediction)", "", key="neuron_target").strip("\n") or None
    if target is not None and target.lstrip("-").isdigit():
        target = int(target)
    top = top_neurons(spec, prompt, int(k), int(position), target)
    cols = ["rank", "layer", "neuron", "activation", "contribution", "target_token"]
    by_con = top[top.ranked_by == "contribution"][cols].reset_index(drop=True)
    by_act = top[top.ranked_by == "activation"][cols].reset_index(drop=True)
    tgt = by_con.target_token.iloc[0] if len(by_con) else ""
    left, right = st.columns(2)
    for col, title, caption, df, key in (
            (left, "Answer neurons", f"direct logit contribution to {tgt!r}", by_con, "by_contribution"),
            (right, "Question neurons", "largest activation at this position", by_act, "by_activation")):
        with col:
            st.subheader(title)
            st.caption(caption + " · open a neuron's page from its row")
            show(df.assign(page=[neuron_link(r.layer, r.neuron) for r in df.itertuples()]), key=key,
                 column_config=LINK)

    st.subheader("Neuron page")
    listed = [f"L{r.layer}N{r.neuron}" for r in pd.concat([by_con, by_act]).drop_duplicates(["layer", "neuron"])
              .itertuples()]
    wanted = st.query_params.get("neuron")
    if wanted and wanted not in listed and _parse_neuron(model, wanted) is not None:
        listed.insert(0, wanted)
    if wanted in listed and st.session_state.get("neuron_link") != wanted:  # a link was followed: open that page
        st.session_state["neuron_link"] = st.session_state["neuron_pick"] = wanted
    if st.session_state.get("neuron_pick") not in listed:
        st.session_state.pop("neuron_pick", None)
    pick = st.selectbox("neuron", listed, key="neuron_pick")
    layer, neuron = _parse_neuron(model, pick)
    neuron_page(spec, prompt, layer, neuron, int(position), top)


def _parse_neuron(model, text: str):
    """ "L1N23" -> (1, 23) when the model has that neuron, else None."""
    import re

    m = re.fullmatch(r"L(\d+)N(\d+)", str(text).strip())
    if not m:
        return None
    layer, neuron = int(m.group(1)), int(m.group(2))
    return (layer, neuron) if layer < model.cfg.n_layers and neuron < model.cfg.d_mlp else None


def neuron_page(spec: str, prompt: str, layer: int, neuron: int, position: int, top: pd.DataFrame) -> None:
    """Neuronpedia-style: the prompt shaded by the activation, top examples over a corpus, histogram, answers."""
    from interp.report.inputs import read_corpus
    from interp.report.widgets import neuron_examples, shading_scale, token_shading

    model = get_model(spec)
    acts = prompt_activations(spec, prompt, layer, neuron)
    pos = position % len(acts)
    m1, m2 = st.columns(2)
    m1.metric(f"activation at position {pos}", f"{acts.activation.iloc[pos]:.4f}")
    row = top[(top.layer == layer) & (top.neuron == neuron)]
    if len(row) and pd.notna(row.contribution.iloc[0]):
        m2.metric(f"direct effect on the logit of {row.target_token.iloc[0]!r}", f"{row.contribution.iloc[0]:+.4f}")
    scale = shading_scale(acts.activation)
    st.caption("This prompt, each token shaded by the neuron's activation (orange positive, blue negative; full "
               f"colour at ±{scale:.3g}, white at 0):")
    html_block(token_shading(acts.token.tolist(), acts.activation.tolist(), scale=scale, trigger=pos))

    ans = neuron_answers(spec, layer, neuron, 10)
    show_answers(ans, "answers", "tokens it raises (centred logit per unit activation)")

    st.markdown("**Top-activating examples**")
    from interp.report.serving import cap_text

    limits = _cli_defaults()
    heldout = read_corpus(model, "default")
    sources = ([HELDOUT] if heldout else []) + [PASTED, SOURCE, UPLOAD]
    c1, c2 = st.columns([2, 1])
    source = c1.radio("corpus", sources, horizontal=True, key="corpus_source")
    steps = [n for n in (2048, 8192, 16384, 65536) if n < limits.max_scan_tokens] + [limits.max_scan_tokens]
    max_tokens = c2.select_slider("tokens scanned", steps, max(n for n in steps if n <= 16384) if steps[0] <= 16384
                                  else steps[0], key="corpus_tokens",
                                  help=f"at most {limits.max_scan_tokens:,} per scan here (--max-scan-tokens)")
    value, split, field, stamp, note = "", None, None, None, None
    if source in (SOURCE, UPLOAD):
        p1, p2, p3 = st.columns([3, 1, 1])
        if source == SOURCE:
            typed = p1.text_input("corpus path", "", key="corpus_path", help="a text, JSONL or Parquet file, a folder "
                                  "of them, or a saved datasets folder (save_to_disk), under the model zoo or a "
                                  "--data-dir of the server", placeholder="text.txt, data.parquet or a saved "
                                  "dataset (relative to the data folder)").strip()
        else:
            up = p1.file_uploader("corpus file", type=[x[1:] for x in UPLOAD_SUFFIXES], key="corpus_upload",
                                  help="read from a private folder of this session; a long file is cut "
                                       "(--max-corpus-mb)")
            typed = "" if up is None else save_upload(up)
        split = p2.text_input("split", "", key="corpus_split", placeholder="validation",
                              help="the split of a saved DatasetDict (needed when it has several)").strip() or None
        field = p3.text_input("text field", "", key="corpus_field", placeholder="text",
                              help="the text column of a table or dataset (default text)").strip() or None
        if not typed:
            st.info("Enter the path of a text, JSONL or Parquet file, a folder or a saved datasets folder to scan."
                    if source == SOURCE else "Upload a text, JSONL or Parquet file to scan.")
            return
        value, stamp, note = user_corpus(typed, source, limits)
    elif source == HELDOUT:  # the model folder's own text, cut like any file when it is long
        from interp.report.inputs import HELDOUT as HELDOUT_FILE

        held = Path(model._interp_folder) / HELDOUT_FILE
        if held.stat().st_size > limits.max_corpus_mb * 10**6:
            value, stamp, note = user_corpus(str(held), SOURCE, limits)
    elif source == PASTED:
        value, note = cap_text(st.text_area("corpus", SAMPLE_CORPUS, key="corpus", height=120),
                               limits.max_corpus_mb * 10**6, "the pasted text")
    name, _ = neuron_corpus(spec, source, value, split, field, stamp)  # a bad path, split or column: the message now
    if note:
        st.caption(f"{name}: {note}")
    want = (spec, source, value, split, field, stamp, layer, int(max_tokens), limits.scan_seconds)
    if st.button("Scan corpus", key="scan"):
        st.session_state["scanned"] = want
    if st.session_state.get("scanned") != want:
        st.caption(f"Scans {name} for this layer's neurons (once; then every neuron of layer {layer} is instant).")
        return
    prof = layer_profiles(*want)
    ex = prof.examples[prof.examples.neuron == neuron]
    stats = prof.stats[prof.stats.neuron == neuron].iloc[0]
    left, right = st.columns([3, 2])
    with left:
        html_block(neuron_examples(ex, stats))
        st.session_state["examples"] = ex  # what the page shows (tests read it back)
    with right:
        import plotly.graph_objects as go

        h = prof.histogram[prof.histogram.neuron == neuron]
        fig = go.Figure(go.Bar(x=(h.bin_left + h.bin_right) / 2, y=h["count"], width=h.bin_right - h.bin_left,
                               marker_color="#4c78a8"))
        fig.update_layout(title=f"activation over {int(stats.n_tokens):,} tokens", height=300,
                          xaxis_title="activation", yaxis_title="tokens", template="plotly_white",
                          margin={"l": 50, "r": 10, "t": 60, "b": 40}, bargap=0)
        plot(fig, key="neuron_hist")
        st.caption(f"mean {stats['mean']:.3f} · {stats.frac_positive:.1%} of tokens positive · max {stats['max']:.3f}")


def page_compare(spec: str, prompt: str) -> None:
    """Two prompts side by side: next-token distributions, where tokens attend, and what changed."""
    from interp.report.figures import next_token_bar
    from interp.report.inputs import encode_prompt, str_tokens

    model = get_model(spec)
    other = st.text_area("second prompt (e.g. the corrupted one)", DEFAULT_CORRUPTED, key="compare_prompt", height=80)
    encode_prompt(model, other, name="second prompt")  # the sidebar prompt's checks (InterpError -> message)
    c1, c2 = st.columns(2)
    layer = int(c1.selectbox("layer", list(range(model.cfg.n_layers)), key="cmp_layer"))
    head = int(c2.selectbox("head", list(range(model.cfg.n_heads)), key="cmp_head"))
    tables = []
    for col, name, text in zip(st.columns(2), ("A", "B"), (prompt, other)):
        with col:
            st.subheader(f"Prompt {name}" + (" (sidebar)" if name == "A" else " (second)"))
            table = next_tokens(spec, text, 10, 1.0, None, None, None)
            tables.append(table)
            plot(next_token_bar(table), key=f"cmp_bar_{name}")
            attention_component(spec, text, str_tokens(model, tokens_for(spec, text)), [(layer, head)],
                                key=f"cmp_view_{name}")
    st.subheader("What changed")
    a, b = tables
    both = a[["token_id", "token", "prob"]].merge(b[["token_id", "token", "prob"]], on=["token_id", "token"],
                                                   how="outer", suffixes=("_a", "_b"))
    both = both.fillna({"prob_a": 0.0, "prob_b": 0.0})
    both["change"] = both.prob_b - both.prob_a
    show(both.sort_values("change", key=abs, ascending=False).reset_index(drop=True), key="compare_change")
    st.caption("prob a / prob b: next-token probability after each prompt (0 when outside that prompt's top 10).")


def page_superposition(spec: str, prompt: str) -> None:
    from interp.analysis import superposition as sp
    from interp.report.figures import angle_histogram, toy_model_figure

    model = get_model(spec)
    st.subheader("The model's directions vs random")
    available = sp.available_direction_sets(model)
    c1, c2, c3 = st.columns(3)
    set_name = c1.selectbox("direction set", available, key="sp_set",
                            help="embedding rows, unembedding columns, neuron read/write vectors, head weights")
    max_pairs = c2.select_slider("pairs", [1000, 5000, 20000, 100000], 5000, key="sp_pairs")
    stats, samples, pdf = angle_data(spec, set_name, int(max_pairs))
    layers = [int(x) for x in stats.layer.dropna().unique()] if len(stats) else []
    layer = c3.selectbox("layer", layers, key="sp_layer") if layers else None
    st.caption(sp.DIRECTION_SETS.get(set_name, ""))
    plot(angle_histogram(samples, pdf, set_name, layer=layer), key="angles")
    show(stats, key="sp_stats")

    st.subheader("Toy model of superposition")
    t1, t2, t3, t4 = st.columns(4)
    sparsity = t1.slider("sparsity (P feature = 0)", 0.0, 0.99, 0.9, 0.01, key="sparsity")
    n_features = t2.slider("features", 2, 40, 20, key="toy_features")
    d_hidden = t3.slider("hidden dims", 1, 10, 5, key="toy_hidden")
    steps = t4.select_slider("steps", [100, 300, 1000, 3000], 1000, key="toy_steps")
    toy = toy_model(int(n_features), int(d_hidden), float(sparsity), 0.7, int(steps), 0)
    m1, m2, m3 = st.columns(3)
    m1.metric("represented features", f"{toy.n_represented} / {toy.n_features}")
    m2.metric("dimensions per feature", f"{toy.dimensions_per_feature:.3f}")
    m3.metric("final loss", f"{toy.final_loss:.4g}")
    plot(toy_model_figure(toy), key="toy")

    st.subheader("Johnson–Lindenstrauss calculator")
    j1, j2, j3 = st.columns(3)
    n_vec = j1.number_input("vectors", 2, 10**12, 10_000, key="jl_n")
    eps = j2.slider("distortion ε", 0.01, 0.99, 0.1, 0.01, key="jl_eps")
    dim = j3.number_input("dimensions", 2, 10**6, int(model.cfg.d_model), key="jl_dim")
    r1, r2, r3 = st.columns(3)
    r1.metric("dims needed for the vectors", f"{sp.jl_min_dim(int(n_vec), float(eps)):,}")
    # jl_max_vectors inverts JL's loose bound (exp(d·(ε²/2 − ε³/3)/4): 1 for d=128, ε=0.1) and forgets that
    # d orthogonal directions always fit; the random-vector count answers the |cos| <= ε question itself.
    fit = max(int(dim), sp.jl_max_vectors(int(dim), float(eps), method="random"))
    r2.metric("directions with |cos| ≤ ε that fit in the dims", f"{fit:,}")
    r3.metric("random pairs within 90°±1°", f"{sp.near_orthogonal_fraction(int(dim), 1.0):.4f}")
    st.caption(f"At least {int(dim):,} (an orthonormal basis); more when random unit vectors leave fewer than one pair "
               f"with |cos| > ε. JL's own bound, with its loose constants, guarantees "
               f"{sp.jl_max_vectors(int(dim), float(eps)):,} points whose distances a projection to {int(dim):,} "
               "dims keeps within 1±ε.")


def page_sae(spec: str, prompt: str) -> None:
    from interp.report.figures import angle_histogram
    from interp.report.sae_section import default_sae_folder

    model = get_model(spec)
    try:  # the SAE shipped with the model (models/NAME/sae/<hook>/), when there is one
        shipped = str(default_sae_folder(model))
    except InterpError:
        shipped = ""
    path = st.text_input("SAE folder (SAELens layout: cfg.json + sae_weights.safetensors)", shipped, key="sae_path",
                         placeholder="runs/sae  (make one with: interp sae train --out runs/sae)").strip()
    if not path:
        st.info("Enter the folder of a sparse autoencoder trained on this model (`interp sae train`), or of "
                "one saved by SAELens.")
        return
    limits = _cli_defaults()
    path = user_folder(path, "SAE folder", limits)
    sae = get_sae(path)
    hook = sae.cfg.hook_name
    if not hook or hook not in model.hook_dict:
        raise InterpError(f"SAE folder: the SAE reads hook {hook!r}, which this model does not have.")
    c = st.columns(4)
    c[0].metric("architecture", sae.cfg.architecture + (f" (k={sae.cfg.k})" if sae.cfg.k else ""))
    c[1].metric("latents", f"{sae.cfg.d_sae:,}")
    c[2].metric("d_in", f"{sae.cfg.d_in:,}")
    out = getattr(sae.cfg, "hook_name_out", None)  # a transcoder: read at the MLP's input, written to its output
    c[3].metric("hook", f"{hook} → {out}" if out else hook)

    st.subheader("Features on the prompt")
    feats = sae_prompt_features(spec, path, prompt, 5)
    from interp.report.inputs import str_tokens

    strs = str_tokens(model, tokens_for(spec, prompt))
    pos = st.select_slider("position", list(range(len(strs))), len(strs) - 1, key="sae_pos",
                           format_func=lambda i: f"{i}: {strs[i]!r}")
    here = feats[feats.position == pos][["feature", "activation", "token"]].reset_index(drop=True)
    show(here, key="sae_active")
    if here.empty:
        st.caption("no feature fires at this position")

    st.subheader("One feature")
    f1, f2 = st.columns(2)
    default = int(here.feature.iloc[0]) if len(here) else 0
    feature = int(f1.number_input("feature", 0, sae.cfg.d_sae - 1, default, key="sae_feature"))
    k = int(f2.slider("tokens", 3, 30, 10, key="sae_logit_k"))
    try:
        show_answers(sae_logit_effects(spec, path, feature, k), "sae_logits",
                     "tokens it raises (centred logit per unit activation)")
    except InterpError as e:  # a hook that does not write to the residual stream has no logit effects
        st.caption(str(e))
    with st.expander("Top contexts: where does it fire?"):
        from interp.report.serving import cap_text

        corpus, note = cap_text(st.text_area("corpus (one document per line)", SAMPLE_CORPUS, key="sae_corpus",
                                             height=150), limits.max_corpus_mb * 10**6, "the corpus")
        if note:
            st.caption(note)
        if st.button("Scan corpus", key="sae_scan"):
            ctx = sae_top_contexts(spec, path, corpus, feature, 5, limits.scan_seconds)
            show(ctx[["rank", "activation", "doc", "position", "token", "context"]], key="sae_contexts")
            if ctx.empty:
                st.caption("this feature does not fire on the corpus")
            else:
                sae_dashboard_parts(*sae_feature_dashboard(spec, path, corpus, feature, limits.scan_seconds), feature)

    st.subheader("Decoder directions vs random")
    stats, samples, pdf = sae_angles(path, 20_000)
    plot(angle_histogram(samples, pdf, "W_dec"), key="sae_angles")
    show(stats, key="sae_orthogonality")


def sae_dashboard_parts(dash, ablation, feature: int) -> None:
    """Correlated features, quantile samples and the ablation effect, drawn as the report's cards draw them."""
    from interp.report.sae_cards import (
        ABLATION_NOTE,
        QUANTILE_NOTE,
        ablation_html,
        ablation_table,
        correlated_html,
        quantile_html,
    )

    html_block(correlated_html(dash.correlated, feature))
    st.markdown("**Quantile samples**")
    st.caption(QUANTILE_NOTE)
    html_block(quantile_html(dash.bins, dash.samples, feature))
    if ablation is not None:
        st.markdown("**Ablation effect** (per token)")
        st.caption(ABLATION_NOTE)
        html_block(ablation_html(ablation))
        show(ablation_table(ablation), key="sae_ablation")


def page_lens(spec: str, prompt: str) -> None:
    from interp.analysis.logit_lens import summarize_lens
    from interp.report.figures import final_prob_by_layer, lens_grid_heatmap
    from interp.report.inputs import str_tokens

    model = get_model(spec)
    c1, c2, c3 = st.columns(3)
    k = c1.slider("top tokens per cell", 1, 20, 5, key="lens_k")
    target = c2.radio("track", ["final", "next"], horizontal=True, key="lens_target",
                      help="final: the model's own prediction; next: the true next token of the prompt")
    value = c3.radio("colour", ["top_prob", "target_prob", "entropy", "kl"], horizontal=True, key="lens_value")
    df = lens(spec, prompt, int(k), target)
    grid = summarize_lens(df)
    strs = str_tokens(model, tokens_for(spec, prompt))
    window = position_window(len(strs), "lens_window", size=LENS_WINDOW)
    plot(lens_grid_heatmap(grid, strs, value=value, window=window), key="lens_grid")
    pos = st.select_slider("position", list(range(len(strs))), len(strs) - 1, key="lens_pos",
                           format_func=lambda i: f"{i}: {strs[i]!r}")
    cell = grid[grid.position == pos]
    if cell.target_prob.notna().any():
        plot(final_prob_by_layer(cell), key="lens_final")
    st.caption(f"top-{k} at position {pos} for every layer")
    show(df[df.position == pos][["layer", "layer_name", "rank", "token", "prob", "target_token", "target_prob",
                                 "target_rank"]], key="lens_cells")


def page_patching(spec: str, prompt: str) -> None:
    from interp.report.figures import dla_bar, head_patching_heatmap, patching_heatmap, show_token

    c1, c2 = st.columns(2)
    mode = c1.radio("pair", ["induction (prompt repeated)", "custom corrupted prompt"], key="patch_mode",
                    help="induction: the prompt followed by its first half; the corrupted run changes the token "
                         "the repeat should copy")
    where = c2.selectbox("layer × position sweep of", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"],
                         key="patch_where")
    corrupted = answer = wrong = None
    if mode.startswith("custom"):
        corrupted = st.text_input("corrupted prompt (same number of tokens)", key="patch_corrupted")
        c3, c4 = st.columns(2)
        answer = c3.text_input("answer (clean)", key="patch_answer")
        wrong = c4.text_input("wrong answer (corrupted)", key="patch_wrong")
        if not corrupted:
            st.info("Enter a corrupted prompt, the clean answer and the corrupted answer.")
            return
    heads, grid, dla, info = patching(spec, prompt, corrupted, answer, wrong, where)
    st.caption(f"Metric: logit difference {show_token(info['answer'])!r} − {show_token(info['wrong'])!r} at the last "
               f"position: clean {info['clean']:.3f}, corrupted {info['corrupted']:.3f}. normalised: 0 = corrupted, "
               "1 = clean.")
    from interp.report.data import pair_excerpt

    clean, corrupted, shown = pair_excerpt("".join(info["tokens"]), "".join(info["corrupted_tokens"]))
    for note in [*info["notes"], *([shown] if shown else [])]:
        st.caption(f"Shortened: {note}.")
    st.code(f"clean:     {clean}\ncorrupted: {corrupted}", language=None)
    plot(head_patching_heatmap(heads), key="patch_heads")
    plot(patching_heatmap(grid, info["tokens"], title=f"Patching {where}: layer × position"), key="patch_grid")
    plot(dla_bar(dla), key="dla")
    top = dla.reindex(dla.contribution.abs().sort_values(ascending=False, kind="stable").index).head(15)
    show(top[["component", "kind", "layer", "head", "neuron", "contribution"]], key="dla_table")
    with st.expander("Tables"):
        show(heads, key="patch_heads_table")
        show(grid, key="patch_grid_table")


def page_circuit(spec: str, prompt: str) -> None:
    """The prompt's attribution graph through the model's transcoders (interp.analysis.circuits.graph), drawn as
    ``interp circuit`` draws it, and one feature set or scaled to see the next token change."""
    from interp.report.circuit import default_transcoder_folder, feature_table, graph_html

    model = get_model(spec)
    try:  # the transcoders shipped with the model (models/NAME/transcoders/), when there are any
        shipped = str(default_transcoder_folder(model))
    except InterpError:
        shipped = ""
    path = st.text_input("Transcoder folder (one per layer, or a cross-layer transcoder such as the model's clt/; "
                         "SAELens layout)", shipped, key="tc_path",
                         placeholder="runs/transcoders  (make them with: interp sae train --transcoder --out "
                                     "runs/transcoders)").strip()
    if not path:
        st.info("This model ships no transcoders: enter a folder of per-layer transcoders "
                "(`interp sae train --transcoder`) to trace an attribution graph.")
        return
    limits = _cli_defaults()
    path = transcoder_folder(path, limits)
    c1, c2 = st.columns(2)
    node_threshold = c1.slider("node threshold (influence kept)", 0.5, 1.0, 0.8, 0.01, key="tc_nodes")
    edge_threshold = c2.slider("edge threshold (influence kept)", 0.5, 1.0, 0.98, 0.01, key="tc_edges")
    ids, note = graph_tokens(spec, prompt, limits.max_graph_tokens)
    if note:
        st.caption(f"Shortened: {note}.")
    graph = circuit_graph(spec, path, ids, float(node_threshold), float(edge_threshold), limits.scan_seconds)
    s = graph.scores
    m = st.columns(3)
    m[0].metric("replacement score", f"{s['replacement_score']:.3f}")
    m[1].metric("completeness score", f"{s['completeness_score']:.3f}")
    m[2].metric("nodes kept", f"{len(graph.nodes)} of {s['n_nodes_full']}")
    contexts = circuit_contexts(spec, path, ids, float(node_threshold), float(edge_threshold), limits.scan_seconds)
    page = graph_html(graph, title="Attribution graph", contexts=contexts)
    st.session_state["circuit_html"] = page  # what the frame shows (tests read it back)
    st.iframe(page, height=(int(model.cfg.n_layers) + 2) * 90 + 260)

    st.subheader("Features")
    strs = graph.info["str_tokens"]
    table = feature_table(graph, contexts)
    show(table, key="circuit_features")
    if table.empty:
        st.caption("no feature kept after pruning: lower the node threshold")
        return

    st.subheader("Intervene on a feature")
    nodes = list(zip(table.layer.astype(int), table.position.astype(int), table.feature.astype(int)))
    i1, i2, i3 = st.columns(3)
    pick = i1.selectbox("feature node", range(len(nodes)), key="tc_node",
                        format_func=lambda i: f"L{nodes[i][0]} F{nodes[i][2]} at {nodes[i][1]}: "
                                              f"{strs[nodes[i][1]]!r} (activation {table.activation[i]:.3g})")
    mode = i2.radio("mode", ["set", "scale"], horizontal=True, key="tc_mode",
                    help="set: the activation becomes the value (0 ablates); scale: it is multiplied by it")
    value = i3.number_input("value", -1000.0, 1000.0, 0.0 if mode == "set" else 2.0, key=f"tc_value_{mode}")
    want = (spec, path, ids, nodes[pick], float(value), mode)
    if st.button("Apply", key="tc_apply"):
        st.session_state["tc_applied"] = want
    if st.session_state.get("tc_applied") == want:
        out = circuit_intervention(*want)
        out = out.assign(change=out.prob_after - out.prob_before)
        show(out[["token", "token_id", "prob_before", "prob_after", "change"]], key="circuit_intervention")
        st.caption("Top next tokens before and after, with every MLP replaced by its transcoder plus its error (so "
                   "only the edited feature, and what it moves downstream, changes the output).")


def page_edges(spec: str, prompt: str) -> None:
    c1, c2 = st.columns(2)
    method = c1.radio("method", ["eap-ig", "eap"], horizontal=True, key="edges_method")
    steps = c2.slider("EAP-IG steps", 1, 32, 8, key="edges_steps", disabled=method == "eap")
    edges, curve, attrs = edge_scores(spec, prompt, method, steps)
    st.caption(f"The induction pair of the Patching page; logit difference clean {attrs['clean']:.3f}, corrupted "
               f"{attrs['corrupted']:.3f}. score = change of the metric when that edge alone carries the corrupted "
               f"value ({attrs['n_edges']} edges: embeddings, heads' q/k/v inputs, MLPs, logits).")
    for note in attrs["notes"]:
        st.caption(f"Shortened: {note}.")
    from interp.report.edge_figure import edge_circuit_figure

    plot(edge_circuit_figure(edges, top_n=30), key="edges_circuit")
    show(edges[["sender", "receiver", "score", "receiver_input"]].head(25), key="edges_table")
    st.caption("Faithfulness of the top-n edges: the clean run with every other edge corrupted (1 = clean).")
    st.line_chart(curve.set_index("n_edges").faithfulness)
    show(curve, key="edges_curve")


def page_steering(spec: str, prompt: str) -> None:
    model = get_model(spec)
    c1, c2 = st.columns(2)
    positive = [t for t in c1.text_area("positive prompts (one per line)", "love and joy", key="steer_pos").splitlines()
                if t.strip()]
    negative = [t for t in c2.text_area("negative prompts (one per line)", "war and death", key="steer_neg").splitlines()
                if t.strip()]
    hooks = [f"blocks.{lay}.hook_{w}" for lay in range(model.cfg.n_layers) for w in ("resid_pre", "resid_post")]
    c3, c4, c5 = st.columns(3)
    hook = c3.selectbox("hook", hooks, index=min(2 * (model.cfg.n_layers // 2), len(hooks) - 1), key="steer_hook")
    scale = c4.number_input("scale", value=4.0, step=1.0, key="steer_scale")
    new_tokens = c5.slider("new tokens", 0, 32, 12, key="steer_new")
    if not positive or not negative:
        st.info("Enter at least one positive and one negative prompt.")
        return
    df, norm = steering_table(spec, prompt, tuple(positive), tuple(negative), hook, (0.0, scale / 2, scale),
                              new_tokens)
    st.caption(f"Steering vector: mean activation over the positive prompts minus the negative ones at {hook} "
               f"(norm {norm:.3f}), added at every position. kl = KL(unsteered ‖ steered) of the next token.")
    show(df, key="steer_table")


def page_report(spec: str, prompt: str) -> None:
    st.subheader("HTML report")
    st.write("One self-contained file (opens offline) with every section: model, tokenization, next token, "
             "logit lens, attention, neurons, superposition, patching.")
    if st.button("Build report", key="build_report"):
        st.session_state["report_for"] = (spec, prompt)
    if st.session_state.get("report_for") == (spec, prompt):
        html, md = report_files(spec, prompt)
        st.session_state["report_html"] = html  # what the button serves (tests read it back here)
        c1, c2 = st.columns(2)
        c1.download_button(f"Download report.html ({len(html) / 1e6:.1f} MB)", html, file_name="interp-report.html",
                           mime="text/html", key="download_report")
        c2.download_button("Download report.md", md, file_name="interp-report.md", mime="text/markdown",
                           key="download_report_md")


# The page registry, in sidebar order: a new page is one function and one entry here.
RENDER = {"Overview": page_overview, "Attention": page_attention, "Neurons": page_neurons, "Compare": page_compare,
          "Superposition": page_superposition, "SAE features": page_sae, "Logit lens": page_lens,
          "Patching": page_patching, "Attribution graph": page_circuit, "Edges": page_edges, "Steering": page_steering,
          "Report": page_report}
PAGES = tuple(RENDER)


def main() -> None:
    st.set_page_config(page_title="interp dashboard", layout="wide")
    spec, prompt, page = sidebar()
    st.title(page)
    try:
        spec = check_model(spec)
        if page != "Superposition":  # the superposition page reads weights only
            tokens_for(spec, prompt)
        RENDER[page](spec, prompt)
    except InterpError as e:  # bad input: the message says what to change
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - a page must never show a traceback to the user
        st.error(f"Unexpected {type(e).__name__}: {e}")


main()
