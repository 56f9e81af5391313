"""Attention analyzers against planted heads, closed forms and hand-computed patterns.

The planted model uses one-hot subspaces of a 64-dim residual stream (d_vocab = n_ctx = d_head = 16):

    dims  0..15  token identity        (W_E)
    dims 16..31  position              (W_pos)
    dims 32..47  previous token        (written by the layer-0 previous-token head)
    dims 48..63  induction output      (written by the layer-1 induction head, read by W_U)

RMSNorm and no biases keep the norms pure rescalings, so large query scales make the heads sharp.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAMILY_CONFIGS

import interp.analysis._inputs as inputs_mod
import interp.analysis.attention as attention_mod
from interp.analysis._inputs import as_tokens
from interp.analysis.attention import (
    ROLES,
    attention_patterns,
    head_scores,
    in_context_learning_score,
    per_token_loss,
    repeated_random_tokens,
    repeated_sequence_loss,
    top_attended,
)
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

V = N_CTX = 16


def _zero_all(model):
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()


def planted_model(induction: bool = True, copy_output: bool = False) -> HookedDecoder:
    cfg = DecoderConfig(
        d_vocab=V,
        n_ctx=N_CTX,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_head=16,
        positional="learned",
        norm="rmsnorm",
        attn_bias=False,
        mlp_bias=False,
        act="relu",
        dtype="float64",
    )
    torch.manual_seed(0)
    m = HookedDecoder(cfg)
    _zero_all(m)  # MLPs, unused heads and biases all zero: an attention-only model
    with torch.no_grad():
        for t in range(V):
            m.embed.W_E[t, t] = 1.0
        for p in range(N_CTX):
            m.pos_embed.W_pos[p, 16 + p] = 1.0
        for blk in m.blocks:
            blk.ln1.w.fill_(1.0)
            blk.ln2.w.fill_(1.0)
        m.ln_final.w.fill_(1.0)
        a0 = m.blocks[0].attn
        for i in range(N_CTX):
            a0.W_Q[0, 16 + i, i] = 5.0  # query of position i points at direction i ...
        for j in range(N_CTX - 1):
            a0.W_K[0, 16 + j, j + 1] = 1.0  # ... which the key of position i-1 carries
        rms0 = math.sqrt(2 / 64)  # residual = two one-hots -> RMSNorm multiplies by 1/rms0
        for t in range(V):
            a0.W_V[0, t, t] = rms0  # copy the attended (previous) token's identity ...
            a0.W_O[0, t, 32 + t] = 1.0  # ... into the previous-token subspace
        if induction:
            a1 = m.blocks[1].attn
            for t in range(V):
                a1.W_Q[0, t, t] = 10.0  # current token ...
                a1.W_K[0, 32 + t, t] = 1.0  # ... matched against each key's previous token (K-composition)
            if copy_output:
                for t in range(V):
                    a1.W_V[0, t, t] = 1.0  # copy the attended token (the one after the earlier occurrence)
                    m.unembed.W_U_param[48 + t, t] = 1.0
                    a1.W_O[0, t, 48 + t] = 20.0
    return m


def scores_by_head(df: pd.DataFrame) -> pd.DataFrame:
    return df.pivot_table(index=["layer", "head"], columns="role", values="score")


# ---------------------------------------------------------------------------------------------------
# head roles


def test_planted_previous_token_head_scores_high_only_on_previous_token():
    m = planted_model(induction=False)
    toks = torch.randint(V, (3, N_CTX), generator=torch.Generator().manual_seed(1))
    s = scores_by_head(head_scores(m, toks)).loc[(0, 0)]
    assert s["previous_token"] >= 0.95
    for role in ROLES:
        if role != "previous_token":
            assert s[role] <= 0.3, (role, s[role])


def test_planted_induction_circuit_scores_as_induction():
    m = planted_model(induction=True)
    toks = torch.randint(V, (2, N_CTX), generator=torch.Generator().manual_seed(2))
    df = head_scores(m, toks)
    s = scores_by_head(df)
    assert s.loc[(1, 0), "induction"] >= 0.8
    assert s.loc[(0, 0), "previous_token"] >= 0.95
    # the previous-token head is not an induction head, and the heads left at zero are uniform ones
    assert s.loc[(0, 0), "induction"] <= 0.3
    assert (s.drop(index=[(1, 0)])["induction"] <= 0.3).all()
    assert set(df[df.role == "induction"].source) == {"repeated_random"}


def test_induction_on_natural_tokens_where_they_repeat():
    m = planted_model(induction=True)
    # a "sentence" with repeats that is not a clean random repeat: 3 4 5 6 7 3 4 9 5 6 ...
    toks = torch.tensor([[3, 4, 5, 6, 7, 3, 4, 9, 5, 6, 1, 2, 7, 11, 12, 13]])
    s = scores_by_head(head_scores(m, toks, repeats="tokens"))
    assert s.loc[(1, 0), "induction"] >= 0.8
    assert s.loc[(0, 0), "induction"] <= 0.3
    # nothing repeats -> the repeat roles are undefined (NaN), never a made-up number
    df = head_scores(m, torch.arange(16)[None], repeats="tokens")
    assert df[df.role.isin(["induction", "duplicate_token"])].score.isna().all()
    assert df[~df.role.isin(["induction", "duplicate_token"])].score.notna().all()


def test_random_model_scores_low_on_induction_and_previous_token():
    torch.manual_seed(0)
    m = HookedDecoder(DecoderConfig(d_vocab=64, n_ctx=32, d_model=32, n_layers=2, n_heads=4))
    df = head_scores(m, torch.randint(64, (2, 32)))
    s = scores_by_head(df)
    assert (s["induction"] <= 0.3).all()
    assert (s["previous_token"] <= 0.3).all()
    assert df.score.between(0, 1).all()


def test_uniform_heads_match_closed_forms():
    """Heads with W_Q = W_K = 0 attend uniformly: P[q, k] = 1 / (q + 1) for k <= q.

    (1e-6, not 1e-12: the eager softmax runs in float32 even for a float64 model.)
    """
    m = planted_model(induction=False)  # heads 1..3 of both layers and every head of layer 1 are zero
    n, w = 12, 4
    toks = torch.randint(V, (2, n), generator=torch.Generator().manual_seed(3))
    s = scores_by_head(head_scores(m, toks, window=w, seq_len=6)).loc[(1, 2)]
    q = np.arange(1, n)
    assert s["previous_token"] == pytest.approx(np.mean(1 / (q + 1)), abs=1e-6)
    assert s["attention_sink"] == pytest.approx(np.mean(1 / (q + 1)), abs=1e-6)
    assert s["entropy"] == pytest.approx(1.0, abs=1e-6)
    qw = np.arange(w, n)
    assert s["local_window"] == pytest.approx(np.mean(w / (qw + 1)), abs=1e-6)
    # repeated random sequence of 2 x 6 tokens: queries 6..11 each have one earlier occurrence
    q2 = np.arange(6, 12)
    assert s["duplicate_token"] == pytest.approx(np.mean(1 / (q2 + 1)), abs=1e-6)
    assert s["induction"] == pytest.approx(np.mean(1 / (q2 + 1)), abs=1e-6)


def test_head_scores_frame_shape_and_options():
    m = planted_model(induction=True)
    df = head_scores(m)  # tokens=None: everything on the repeated random sequence
    assert list(df.columns) == ["layer", "head", "role", "score", "source"]
    assert len(df) == 2 * 4 * len(ROLES)
    assert set(df.source) == {"repeated_random"}
    assert df.score.between(0, 1).all()
    with pytest.raises(InterpError, match="window"):
        head_scores(m, window=1)
    with pytest.raises(InterpError, match="repeats"):
        head_scores(m, torch.zeros(1, 4, dtype=torch.long), repeats="natural")
    with pytest.raises(InterpError, match="seq_len"):
        head_scores(m, seq_len=9)


@pytest.mark.parametrize(
    "kw",
    [
        {},  # GPT-2 style
        {**FAMILY_CONFIGS["llama"], "n_kv_heads": 1},  # Llama style with MQA
        {**FAMILY_CONFIGS["neox"], "rotary_fraction": 0.5},  # GPT-NeoX style
    ],
)
def test_head_scores_and_patterns_on_architectures(kw):
    torch.manual_seed(0)
    m = HookedDecoder(DecoderConfig(d_vocab=40, n_ctx=16, d_model=32, n_layers=2, n_heads=4, **kw))
    toks = torch.randint(40, (2, 10))
    df = head_scores(m, toks)
    assert len(df) == 2 * 4 * len(ROLES) and df.score.between(0, 1).all()
    # the pattern frame equals softmax(q k^T / sqrt(d_head)) computed here from the (rotated) q and k
    names = [
        "blocks.1.attn.hook_q",
        "blocks.1.attn.hook_k",
        "blocks.1.attn.hook_rot_q",
        "blocks.1.attn.hook_rot_k",
    ]
    _, cache = m.run_with_cache(toks, names_filter=lambda n: n in names)
    rot = "rot_" if kw.get("positional") == "rotary" else ""
    q, k = cache[f"blocks.1.attn.hook_{rot}q"][1], cache[f"blocks.1.attn.hook_{rot}k"][1]  # batch element 1
    k = k.repeat_interleave(4 // k.shape[1], dim=1)  # GQA/MQA: kv head h // group serves query head h
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(m.cfg.d_head)
    scores = scores.masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), float("-inf"))
    ref = torch.softmax(scores, -1)
    pat = attention_patterns(m, toks, layers=1, batch=1)
    got = torch.zeros(4, 10, 10, dtype=torch.float64)
    got[pat["head"].tolist(), pat.query_pos.tolist(), pat.key_pos.tolist()] = torch.tensor(
        pat.weight.tolist(), dtype=torch.float64
    )
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------
# patterns and top attended tokens


def test_attention_patterns_frame():
    m = planted_model(induction=False)
    toks = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    df = attention_patterns(m, toks, layers=[0], heads=0, batch=None)
    assert list(df.columns) == [
        "batch",
        "layer",
        "head",
        "query_pos",
        "key_pos",
        "query_id",
        "key_id",
        "query_token",
        "key_token",
        "weight",
    ]
    assert len(df) == 2 * 15  # two sequences x 5*6/2 causal pairs
    assert (df.key_pos <= df.query_pos).all()
    sums = df.groupby(["batch", "query_pos"]).weight.sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-12)
    prev = df[(df.key_pos == df.query_pos - 1)]
    assert (prev.weight > 0.99).all()
    row = df[(df.batch == 1) & (df.query_pos == 3) & (df.key_pos == 2)].iloc[0]
    assert (row.query_id, row.key_id, row.query_token, row.key_token) == (5, 6, "<5>", "<6>")
    with pytest.raises(InterpError, match="layers"):
        attention_patterns(m, toks, layers=5)
    with pytest.raises(InterpError, match="batch"):
        attention_patterns(m, toks, batch=2)


def test_top_attended_finds_previous_token():
    m = planted_model(induction=False)
    toks = torch.randint(V, (2, 8), generator=torch.Generator().manual_seed(4))
    df = top_attended(m, toks, layers=0, heads=0, batch=1, k=2)
    top = df[df["rank"] == 1]
    assert (top[top.query_pos >= 1].key_pos == top[top.query_pos >= 1].query_pos - 1).all()
    assert len(df) == 1 + 2 * 7  # query 0 sees one key
    assert (df.groupby("query_pos").weight.apply(lambda w: w.is_monotonic_decreasing)).all()
    with pytest.raises(InterpError, match="k"):
        top_attended(m, toks, k=0)


# ---------------------------------------------------------------------------------------------------
# losses


def test_repeated_random_tokens_are_seeded_and_distinct_within_a_half():
    m = planted_model(induction=False)
    a = repeated_random_tokens(m, seq_len=8, batch=3, seed=5)
    b = repeated_random_tokens(m, seq_len=8, batch=3, seed=5)
    assert torch.equal(a, b) and a.shape == (3, 16)
    assert torch.equal(a[:, :8], a[:, 8:])
    assert all(len(set(row[:8].tolist())) == 8 for row in a)
    p = repeated_random_tokens(m, seq_len=7, batch=1, seed=5, prefix=0)
    assert p.shape == (1, 15) and p[0, 0] == 0
    # a model with a BOS gets it in front by default (never drawn inside); prefix=None turns it off
    bos = HookedDecoder(DecoderConfig(d_vocab=10, n_ctx=20, d_model=8, n_layers=1, n_heads=1, bos_token_id=3))
    r = repeated_random_tokens(bos, seq_len=9, batch=5)
    assert r.shape == (5, 19) and (r[:, 0] == 3).all() and not (r[:, 1:] == 3).any()
    assert repeated_random_tokens(bos, seq_len=9, batch=1, prefix=None).shape == (1, 18)
    with pytest.raises(InterpError, match="prefix"):
        repeated_random_tokens(bos, prefix="eos")
    rep = repeated_sequence_loss(bos, seq_len=9, batch=1)
    assert rep.position.min() == 1 and rep.groupby("half").size().tolist() == [9, 9]


def test_induction_model_learns_in_context():
    m = planted_model(induction=True, copy_output=True)
    rep = repeated_sequence_loss(m, seq_len=8, batch=4)
    halves = rep.groupby("half").loss.mean()
    assert halves["second"] < 0.2 * halves["first"]
    assert halves["first"] > 1.5  # nothing to copy in the first half: close to log(16) = 2.77
    # the same losses as the model's own per-token cross-entropy
    toks = repeated_random_tokens(m, seq_len=8, batch=4)
    ref = HookedDecoder.loss(m(toks), toks, per_token=True).detach()
    torch.testing.assert_close(
        per_token_loss(m, toks), ref.double(), atol=1e-6, rtol=0
    )  # the model computes it in fp32
    icl = in_context_learning_score(m, toks, early=2, late=14)
    assert (icl.icl_score < -1.0).all()
    np.testing.assert_allclose(icl.early_loss, ref[:, 1].numpy(), atol=1e-6)
    np.testing.assert_allclose(icl.late_loss, ref[:, 13].numpy(), atol=1e-6)


def test_icl_indices_clamp_to_context():
    m = planted_model(induction=False)
    toks = torch.randint(V, (2, 16))
    df = in_context_learning_score(m, toks)  # Olsson's 50 / 500 on a 16-token context
    assert df.late_index.tolist() == [15, 15] and df.early_index.tolist() == [1, 1]
    assert in_context_learning_score(m, toks, early=3, late=10).early_index.tolist() == [3, 3]
    with pytest.raises(InterpError, match="early"):
        in_context_learning_score(m, toks, early=10, late=5)


# ---------------------------------------------------------------------------------------------------
# input normalisation


def test_as_tokens_forms_and_errors():
    m = planted_model(induction=False)
    assert as_tokens(m, torch.tensor([1, 2])).shape == (1, 2)
    assert as_tokens(m, [[1, 2], [3, 4]]).dtype == torch.long
    assert as_tokens(m, np.array([[1, 2]])).tolist() == [[1, 2]]
    for bad, msg in [
        ("text", "tokenizer"),
        ([], "non-empty"),
        (torch.tensor([16]), r"\[0, d_vocab=16\)"),
        (torch.zeros(1, 17, dtype=torch.long), "n_ctx=16"),
        (torch.zeros(3), "integer"),
        ([[1], [1, 2]], "same length"),
        (3.5, "expected"),
    ]:
        with pytest.raises(InterpError, match=msg):
            as_tokens(m, bad)


def test_docstring_examples_run():
    for mod in (attention_mod, inputs_mod):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0, mod.__name__


def test_padded_texts_are_scored_on_their_own_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(V)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    m = planted_model(induction=False)
    m.tokenizer = tok
    texts = ["w1 w2 w3 w4 w5 w6 w7 w8 w9", "w3 w4 w5"]  # the second is right-padded with 6 pad tokens
    s = scores_by_head(head_scores(m, texts))
    q = np.concatenate([np.arange(1, 9), np.arange(1, 3)])  # real queries only
    assert s.loc[(1, 2), "previous_token"] == pytest.approx(np.mean(1 / (q + 1)), abs=1e-6)
    assert s.loc[(0, 0), "previous_token"] >= 0.95
