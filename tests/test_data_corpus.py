"""Streaming corpora and windows: sources read back as the same documents, windows never cross a document,
and a planted neuron whose top context would straddle a document boundary if documents were concatenated."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pytest
import torch
from conftest import word_level_tokenizer

from interp.analysis.neurons import scan_top_contexts
from interp.data import Corpus, as_corpus, document_windows, tokenized
from interp.data.activations import ActivationDataset
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_windows_score_every_token_once_with_context():
    g = torch.Generator().manual_seed(0)
    for n, seq_len, overlap in [(1, 4, 0), (10, 4, 2), (37, 8, 3), (64, 16, 15), (9, 9, 4), (100, 7, 0)]:
        doc = torch.randint(100, (n,), generator=g)
        scored = []
        for i, w in enumerate(document_windows(5, doc, seq_len, overlap)):
            assert w.doc == 5 and 1 <= len(w.tokens) <= seq_len
            assert torch.equal(w.tokens, doc[w.offset:w.offset + len(w.tokens)])  # one document only
            assert w.scored_from == (0 if i == 0 else overlap)
            scored += range(w.offset + w.scored_from, w.offset + len(w.tokens))
        assert scored == list(range(n))  # every token exactly once, in order
    with pytest.raises(InterpError, match="overlap"):
        document_windows(0, torch.arange(5), 4, 4)


def _texts():
    return ["t3 t4 t5", "t6 t7", "t8 t9 t10 t11", "t12", "t13 t14", "t15 t16 t17 t18 t19", "t2"]


def test_sources_read_back_as_the_same_documents(tmp_path):
    import datasets

    texts = _texts()
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text(texts[0])
    (folder / "b.md").write_text(texts[1])
    (folder / "c.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts[2:4])))
    pd.DataFrame({"text": texts[4:6]}).to_parquet(folder / "d.parquet")
    (folder / "e.txt").write_text(texts[6])
    (folder / ".hidden.txt").write_text("t1 t1")  # dot files are not corpus
    assert list(Corpus.from_path(folder)) == texts
    assert list(as_corpus(folder / "c.jsonl")) == texts[2:4]
    (tmp_path / "paras.txt").write_text("\n\n".join(texts))
    assert list(Corpus.from_path(tmp_path / "paras.txt", doc_sep="\n\n")) == texts

    ds = datasets.Dataset.from_dict({"body": texts})
    assert list(as_corpus(ds, text_field="body")) == texts
    ds.save_to_disk(str(tmp_path / "saved"))
    assert list(Corpus.from_path(tmp_path / "saved", text_field="body")) == texts
    with pytest.raises(InterpError, match="text_field"):
        as_corpus(ds)

    # tokenized in the background exactly as model.to_tokens tokenizes one text
    m = HookedDecoder(DecoderConfig(d_vocab=24, n_ctx=8, d_model=8, n_layers=1, n_heads=2),
                      tokenizer=word_level_tokenizer(24))
    got = list(tokenized(m, Corpus.from_path(folder), batch_docs=2, prefetch=1))
    assert [t.tolist() for _, t in got] == [m.to_tokens(t)[0].tolist() for t in texts]
    assert [i for i, _ in got] == list(range(len(texts)))
    # a selection tokenizes only those documents, keeping their numbers
    picked = list(tokenized(m, as_corpus(["", *texts]), select=lambda i: i % 3 == 1))
    assert [(i, t.tolist()) for i, t in picked] == [(i, m.to_tokens(texts[i])[0].tolist()) for i in (1, 4)]
    # the fingerprint follows the content, not the path
    fp = Corpus.from_path(folder).fingerprint()
    (folder / "b.md").write_text("t6 t7 t8")
    assert Corpus.from_path(folder).fingerprint() != fp
    with pytest.raises(InterpError, match="token ids must be in"):
        list(tokenized(m, as_corpus([torch.tensor([1, 99])])))


def test_scan_of_a_folder_equals_scan_of_its_texts_with_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INTERP_PROGRESS", "1")  # captured stderr is no terminal: the bar is forced on
    m = HookedDecoder(DecoderConfig(d_vocab=24, n_ctx=8, d_model=8, n_layers=1, n_heads=2, d_mlp=8),
                      tokenizer=word_level_tokenizer(24))
    texts = _texts()
    for i, t in enumerate(texts):
        (tmp_path / f"{i:02d}.txt").write_text(t)
    a = scan_top_contexts(m, texts, k=2, window=2, progress=False)
    b = scan_top_contexts(m, as_corpus(tmp_path), k=2, window=2, progress=True)
    pd.testing.assert_frame_equal(a, b)
    err = capsys.readouterr().err
    assert "tok/s" in err and "scanning neurons" in err
    # without the override a redirected stderr gets no bar (it would flood a log file)
    monkeypatch.delenv("INTERP_PROGRESS")
    scan_top_contexts(m, texts, k=2, window=2, progress=True)
    assert "tok/s" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# a planted neuron: fires on B, more the larger the share of A tokens before it


A, B, X = 1, 2, 3


def straddle_model() -> HookedDecoder:
    """Attention is uniform over the visible prefix (W_Q = W_K = 0) and writes sqrt(8) * share(A) into
    residual dim 3; neuron 0 reads dims 1 (is B) and 3. After ln2 (RMSNorm, d = 8) its activation on B
    with an A-share f is about sqrt(8) (1 + g) / sqrt(1 + g^2), g = sqrt(8) f (``closed_form`` keeps the
    norms' eps): rising in f for f < 0.35, and every non-B token stays below the B with f = 0."""
    cfg = DecoderConfig(d_vocab=8, n_ctx=16, d_model=8, n_layers=1, n_heads=1, d_mlp=4, positional="none",
                        norm="rmsnorm", act="relu", attn_bias=False, dtype="float64")
    m = HookedDecoder(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for blk_norm in (m.blocks[0].ln1, m.blocks[0].ln2, m.ln_final):
            blk_norm.w.fill_(1.0)
        m.W_E[A, 0] = m.W_E[B, 1] = 1.0
        for t in range(3, 8):
            m.W_E[t, 2] = 1.0
        m.blocks[0].attn.W_V[0, 0, 0] = 1.0
        m.blocks[0].attn.W_O[0, 0, 3] = 1.0
        m.blocks[0].mlp.W_in[1, 0] = m.blocks[0].mlp.W_in[3, 0] = 1.0
        m.unembed.W_U_param.normal_()
    return m


def closed_form(f: float, eps: float = 1e-5) -> float:
    """Neuron 0 on B with an A-share f: ln1 scales a one-hot by c = 1/sqrt(1/8 + eps), attention writes c f."""
    c = 1 / math.sqrt(1 / 8 + eps)
    return (1 + c * f) / math.sqrt((1 + (c * f) ** 2) / 8 + eps)


def test_planted_top_context_would_straddle_a_boundary_but_does_not():
    m = straddle_model()
    docs = [torch.tensor([X, X, X, X, X, A, A]),  # ends in A's ...
            torch.tensor([B, X, X, X, X, X, X, X]),  # ... and the next document opens with B
            torch.tensor([X] * 7 + [A, X, X, X, B])]  # B with an A-share of 1/12 inside its own document
    # the premise: glued together, the B after the boundary sees 2 A's in 8 tokens and would top the scan
    _, cache = m.run_with_cache(torch.cat(docs[:2])[None])
    glued = float(cache["blocks.0.mlp.hook_post"][0, 7, 0])
    torch.testing.assert_close(glued, closed_form(2 / 8), rtol=1e-6, atol=0)
    assert glued > closed_form(1 / 12)

    df = scan_top_contexts(m, docs, k=2, window=4, after=1, batch_size=2, seq_len=16, progress=False)
    top = df[df.neuron == 0].sort_values("rank")
    assert list(zip(top.doc, top.position)) == [(2, 11), (1, 0)]
    torch.testing.assert_close(top.activation.tolist(), [closed_form(1 / 12), closed_form(0.0)], rtol=1e-6,
                               atol=0)
    # the boundary B's context holds nothing of the previous document
    assert top.context.iloc[1] == f"«<{B}>» <{X}>"
    assert top.context.iloc[0] == f"<{A}> <{X}> <{X}> <{X}> «<{B}>»"
    assert top.next_token_id.tolist() == [-1, X]


def test_overlap_gives_later_windows_context():
    """Without overlap a trigger that opens a window is scored blind; with it, it sees its document."""
    m = straddle_model()
    doc = torch.tensor([X, A, X, X, X, B, X, X, X, X])  # B at position 5 opens the second 5-token window
    plain = scan_top_contexts(m, [doc], k=1, window=2, seq_len=5, progress=False)
    ctx = scan_top_contexts(m, [doc], k=1, window=2, seq_len=5, overlap=4, progress=False)
    p0, p1 = (d[d.neuron == 0].iloc[0] for d in (plain, ctx))
    assert (p0.position, p1.position) == (5, 5)
    torch.testing.assert_close(p0.activation, closed_form(0.0), rtol=1e-6, atol=0)
    assert p0.context == f"«<{B}>» <{X}> <{X}> <{X}>"
    # the overlapping window starts at position 1: B sees A, X, X, X and itself
    torch.testing.assert_close(p1.activation, closed_form(1 / 5), rtol=1e-6, atol=0)
    assert p1.context == f"<{X}> <{X}> «<{B}>» <{X}> <{X}> <{X}>"


def test_activation_dataset_is_memory_mapped_and_refuses_overwrite(tmp_path):
    from interp.data import write_activation_dataset

    m = straddle_model()
    docs = [torch.tensor([X, A, B]), torch.tensor([B, X])]
    ds = write_activation_dataset(m, docs, "blocks.0.hook_resid_mid", tmp_path / "ds", seq_len=4, progress=False)
    x = ds.shard(0)["blocks.0.hook_resid_mid"]
    if os.path.exists("/proc/self/maps"):  # the tensor's memory is a mapping of the shard file itself
        shard = str((tmp_path / "ds" / ds.manifest["shards"][0]["file"]).resolve())
        with open("/proc/self/maps") as maps:
            spans = [line.split()[0].split("-") for line in maps if line.rstrip().endswith(shard)]
        assert any(int(lo, 16) <= x.data_ptr() < int(hi, 16) for lo, hi in spans)
    _, cache = m.run_with_cache(docs[0][None])
    torch.testing.assert_close(ds.activations("blocks.0.hook_resid_mid")[:3], cache["blocks.0.hook_resid_mid"][0].float())
    assert ds.index().values.tolist() == [[0, 0, X], [0, 1, A], [0, 2, B], [1, 0, B], [1, 1, X]]
    man = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert man["corpus"]["n_tokens"] == 5 and man["hooks"]["blocks.0.hook_resid_mid"]["shape"] == [8]
    with pytest.raises(InterpError, match="overwrite"):
        write_activation_dataset(m, docs, "blocks.0.hook_resid_mid", tmp_path / "ds", progress=False)
    with pytest.raises(InterpError, match="hook"):
        ds.activations("blocks.0.hook_resid_post")
    with pytest.raises(InterpError, match="manifest"):
        ActivationDataset(tmp_path)


def test_tuned_lens_trains_from_an_activation_dataset_as_from_tokens(tmp_path):
    from interp.analysis.tuned_lens import train_tuned_lens
    from interp.data import write_activation_dataset

    torch.manual_seed(0)
    m = HookedDecoder(DecoderConfig(d_vocab=30, n_ctx=8, d_model=16, n_layers=2, n_heads=2, init_std=0.3)).eval()
    tokens = torch.randint(30, (3, 8))
    ds = write_activation_dataset(m, tokens, ["resid_pre", "blocks.1.hook_resid_post"], tmp_path / "ds",
                                  progress=False)
    direct = train_tuned_lens(m, [tokens], steps=3, lr=1e-2, progress=False)
    stored = train_tuned_lens(m, ds, steps=3, lr=1e-2, batch_rows=24, progress=False)  # the same 24 tokens a step
    for name, v in direct.state_dict().items():
        torch.testing.assert_close(stored.state_dict()[name], v, rtol=1e-5, atol=1e-6)
    assert not torch.equal(direct.translators[0].weight, torch.eye(16))
    assert stored.info["tokens_per_step"] == 24
    partial = write_activation_dataset(m, tokens, "resid_post", tmp_path / "partial", progress=False)
    with pytest.raises(InterpError, match="resid_pre"):
        train_tuned_lens(m, partial, steps=1, progress=False)
