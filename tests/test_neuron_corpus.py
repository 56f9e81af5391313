"""Neuron pages over a `datasets` split: the same examples whatever the container, equal to a float64 brute force.

The documents are built here (``datasets.Dataset.from_dict``), saved with ``save_to_disk`` and as Parquet under
``tmp_path``, and given as a folder of text files too; nothing touches the network.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from interp.errors import InterpError

datasets = pytest.importorskip("datasets")

SEQ = 16  # the tiny model's n_ctx: documents longer than this are cut into several windows
DOCS = [
    "In the beginning God created the heaven and the earth.",
    "",  # an empty row: no document number, as the scan engine numbers them
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "for i in range(10): print(i)",
    "Call me Ishmael.",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
]
NEURONS = [(0, 3), (1, 7), (1, 30)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A small checkpoint whose tokenizer is the byte tokenizer (token id = UTF-8 byte: an independent encoding)."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.inputs import byte_tokenizer

    torch.manual_seed(7)
    cfg = DecoderConfig(d_vocab=256, n_ctx=SEQ, d_model=32, n_layers=2, n_heads=2, name="corpus-test")
    folder = tmp_path_factory.mktemp("neuron_corpus") / "tiny"
    HookedDecoder(cfg, tokenizer=byte_tokenizer()).save(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from interp.report.inputs import load_model

    return load_model(str(tiny_dir))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same documents as a DatasetDict split, a saved datasets folder, a Parquet file and text files."""
    base = tmp_path_factory.mktemp("sources")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["other text entirely"], "label": [0]}),
        "validation": datasets.Dataset.from_dict({"text": DOCS, "label": list(range(len(DOCS)))}),
    })
    dd.save_to_disk(str(base / "saved"))
    dd["validation"].to_parquet(str(base / "validation.parquet"))
    (base / "texts").mkdir()
    for i, doc in enumerate(DOCS):
        (base / "texts" / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    return dd, base


def brute_force(model, docs: list[str], neuron: tuple[int, int], overlap: int) -> tuple[dict, dict]:
    """Float64 activations with every token's context written in closed form.

    Token ``t`` of a document is scored in the window that starts at 0 when ``t < SEQ`` and otherwise at
    ``SEQ + j * (SEQ - overlap) - overlap`` with ``j = (t - SEQ) // (SEQ - overlap)``. Returns
    ``scored[(doc, t)] = (activation, start)`` and ``seen[(doc, q, start)]``: the activation at ``q`` in the
    window starting at ``start`` (causal attention: the model's output on ``doc[start : start + SEQ]``).
    """
    import copy

    m64 = copy.deepcopy(model).double()
    layer, n = neuron
    name = f"blocks.{layer}.mlp.hook_post"
    scored, seen = {}, {}
    for di, doc in enumerate(d for d in docs if d):  # empty rows get no document number
        ids = torch.tensor(list(doc.encode("utf-8")))
        for t in range(len(ids)):
            start = 0 if t < SEQ else SEQ + ((t - SEQ) // (SEQ - overlap)) * (SEQ - overlap) - overlap
            if (di, start, start) not in seen:
                _, cache = m64.run_with_cache(ids[None, start:start + SEQ], names_filter=name)
                for q, v in enumerate(cache[name][0, :, n].tolist(), start):
                    seen[(di, q, start)] = v
            scored[(di, t)] = (seen[(di, t, start)], start)
    return scored, seen


@pytest.mark.parametrize("overlap", [0, 5])
def test_datasets_split_examples_equal_text_files_and_a_float64_brute_force(tiny, sources, overlap):
    from interp.analysis.neurons import neuron_profiles, scan_top_contexts
    from interp.report.inputs import read_corpus

    dd, base = sources
    kw = {"k": 4, "window": 6, "after": 3, "bins": 12, "overlap": overlap, "max_tokens": None}
    got = neuron_profiles(tiny, dd, NEURONS, split="validation", **kw)
    # the same documents in every other container give the same pages
    for source, options in ((base / "saved", {"split": "validation"}), (base / "validation.parquet", {}),
                            (base / "texts", {})):
        _, corpus = read_corpus(tiny, str(source), **options)
        other = neuron_profiles(tiny, corpus, NEURONS, **kw)
        for a, b in ((got.examples, other.examples), (got.histogram, other.histogram), (got.stats, other.stats)):
            pd.testing.assert_frame_equal(a, b)
    docs = [d for d in DOCS if d]
    ids = [list(d.encode("utf-8")) for d in docs]
    # the scan engine (interp scan neurons) windows the documents the same way: the same triggers
    engine = scan_top_contexts(tiny, dd["validation"], layers=[0, 1], k=4, overlap=overlap, progress=False)
    for neuron in NEURONS:
        every, seen = brute_force(tiny, DOCS, neuron, overlap)
        values = torch.tensor([v for v, _ in every.values()], dtype=torch.float64)
        ex = got.examples[(got.examples.layer == neuron[0]) & (got.examples.neuron == neuron[1])]
        trig = ex[ex.is_trigger].sort_values("rank")
        # the top 4 over every token of every document, by value (then document, position)
        order = sorted(every, key=lambda key: (-every[key][0], key))[:4]
        assert list(zip(trig.doc, trig.position)) == order
        torch.testing.assert_close(torch.tensor(trig.activation.to_numpy(), dtype=torch.float64),
                                   values.sort(descending=True).values[:4], rtol=1e-5, atol=1e-6)
        mine = engine[(engine.layer == neuron[0]) & (engine.neuron == neuron[1])].sort_values("rank")
        assert list(zip(mine.doc, mine.position)) == order
        np.testing.assert_allclose(mine.activation.to_numpy(), trig.activation.to_numpy(), rtol=1e-6, atol=1e-7)
        for r in ex.itertuples():  # each shaded token: same document, seen in the trigger's window
            start = every[(r.doc, r.position)][1]
            q = r.position + r.offset
            assert start <= q < len(ids[r.doc]) and r.token_id == ids[r.doc][q]
            assert np.isclose(r.activation, seen[(r.doc, q, start)], rtol=1e-5, atol=1e-6)
        st = got.stats[(got.stats.layer == neuron[0]) & (got.stats.neuron == neuron[1])].iloc[0]
        assert st.n_tokens == sum(len(i) for i in ids)  # every token scored exactly once
        assert np.isclose(st["max"], values.max().item(), rtol=1e-5, atol=1e-6)
        assert np.isclose(st["mean"], values.mean().item(), rtol=1e-5, atol=1e-6)


def test_api_bad_split_field_and_empty_corpus(tiny, sources):
    from interp.analysis.neurons import neuron_profiles
    from interp.report.inputs import read_corpus

    dd, base = sources
    with pytest.raises(InterpError, match=r"split: must be one of \['train', 'validation'\]; given 'test'"):
        neuron_profiles(tiny, dd, NEURONS, split="test")
    with pytest.raises(InterpError, match=r"text_field: .*\['text', 'label'\]; given 'body'"):
        neuron_profiles(tiny, dd, NEURONS, split="validation", text_field="body")
    empty = datasets.Dataset.from_dict({"text": ["", ""]})
    with pytest.raises(InterpError, match="corpus: no tokens"):
        neuron_profiles(tiny, empty, NEURONS)
    with pytest.raises(InterpError, match=r"--corpus-split: .*saved has splits \['train', 'validation'\]; given none"):
        read_corpus(tiny, str(base / "saved"))
    with pytest.raises(InterpError, match=r"--corpus: .* holds no text"):
        read_corpus(tiny, empty)
    with pytest.raises(InterpError, match=r"--corpus-field: column 'label' .* holds int64"):
        read_corpus(tiny, dd, split="validation", field="label")
    with pytest.raises(InterpError, match=r"split: .*text file.*no splits; given 'validation'"):
        read_corpus(tiny, str(base / "texts" / "00.txt"), split="validation")


def test_report_cli_with_a_datasets_split(tiny, tiny_dir, sources, tmp_path, monkeypatch):
    """`interp report --corpus SAVED --corpus-split validation`: the neuron pages read back as the analyzer's."""
    from interp import cli
    from interp.analysis.neurons import neuron_activations, neuron_profiles
    from interp.report.data import ReportOptions
    from interp.report.inputs import encode_prompt

    dd, base = sources
    monkeypatch.chdir(tmp_path)
    prompt = "the cat sat"
    args = ["report", prompt, "--model", str(tiny_dir), "--out", "r.html", "--corpus", str(base / "saved"),
            "--corpus-split", "validation", "--neurons", "2", "--heads", "1", "--sets", "W_E", "--max-pairs", "200",
            "--quiet"]
    assert cli.main(args) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "saved [validation]" in page
    anchors = [(int(a), int(b)) for a, b in re.findall(r'<div class="neuron-page" id="neuron-L(\d+)N(\d+)"', page)]
    assert anchors
    opts = ReportOptions()
    prof = neuron_profiles(tiny, dd["validation"], anchors, k=opts.k_examples, max_tokens=opts.max_corpus_tokens)
    tokens = encode_prompt(tiny, prompt)
    for i, (layer, neuron) in enumerate(anchors):  # each page: the prompt, then the examples
        section = page[page.index(f'id="neuron-L{layer}N{neuron}"'):]
        if i + 1 < len(anchors):
            section = section[:section.index('<div class="neuron-page"')]
        shaded = [float(v) for v in re.findall(r'<span class="act-tok[^"]*" data-value="([^"]+)"', section)]
        on = neuron_activations(tiny, tokens, layer, neuron)
        ex = prof.examples[(prof.examples.layer == layer) & (prof.examples.neuron == neuron)]
        np.testing.assert_allclose(shaded, [*on.activation, *ex.activation], rtol=1e-5, atol=1e-6)
    assert cli.main([*args[:-1], "--corpus-split", "test", "--force", "--quiet"]) == 2
