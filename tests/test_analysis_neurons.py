"""MLP-neuron analyzers against a planted key-value neuron, brute force, and an exact logit decomposition."""

from __future__ import annotations

import doctest
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAMILY_CONFIGS
from tokenizers import Tokenizer, models, pre_tokenizers

import interp.analysis.neurons as neurons_mod
from interp.analysis.neurons import (
    answer_agreement,
    neuron_answers,
    neuron_contributions,
    scan_top_contexts,
    top_neurons,
)
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

A, B, C = 5, 11, 2  # trigger token, answer token, another token
NEURON = 3
V = 16


def planted_model(norm: str = "layernorm") -> HookedDecoder:
    """One layer; MLP neuron 3 fires only when the current token is A and writes B's unembedding direction.

    Attention writes nothing (W_V = W_O = 0), so ln2 sees the token embedding plus a tiny positional
    embedding; the neuron's key is the normalised embedding of A, and a negative bias keeps every
    other token (cosine ~ N(0, 1/sqrt(d))) below the ReLU threshold.
    """
    cfg = DecoderConfig(
        d_vocab=V, n_ctx=8, d_model=32, n_layers=1, n_heads=2, d_mlp=8, act="relu", norm=norm, dtype="float64"
    )
    torch.manual_seed(0)
    m = HookedDecoder(cfg)
    d = cfg.d_model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        m.embed.W_E.copy_(torch.randn(V, d, generator=g, dtype=torch.float64))
        m.pos_embed.W_pos.copy_(0.01 * torch.randn(8, d, generator=g, dtype=torch.float64))
        m.blocks[0].attn.W_V.zero_()
        m.blocks[0].attn.W_O.zero_()
        m.unembed.W_U_param.copy_(torch.randn(d, V, generator=g, dtype=torch.float64))
        mlp = m.blocks[0].mlp
        mlp.W_in.copy_(0.3 * torch.randn(d, cfg.d_mlp, generator=g, dtype=torch.float64))
        mlp.W_out.copy_(0.1 * torch.randn(cfg.d_mlp, d, generator=g, dtype=torch.float64))
        key = m.embed.W_E[A] - (m.embed.W_E[A].mean() if norm == "layernorm" else 0)
        key = key / key.norm() * d**0.5  # ~ what ln2 outputs for token A
        mlp.W_in[:, NEURON] = 4.0 * key / d
        mlp.b_in[NEURON] = -2.0
        u = m.unembed.W_U_param[:, B]
        mlp.W_out[NEURON] = 3.0 * u / u.norm()
    return m


def word_tokenizer() -> Tokenizer:
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "mat",
        "dog",
        "ran",
        "a",
        "big",
        "red",
        "far",
        "away",
        "and",
        "then",
        "it",
        "slept",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


# ---------------------------------------------------------------------------------------------------
# the answer


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_planted_neuron_answer_is_B(norm):
    m = planted_model(norm)
    df = neuron_answers(m, 0, NEURON, k=3)
    assert df.token_id.iloc[0] == B
    assert list(df.columns[:2]) == ["token", "logit"]
    top, bottom = df[df.direction == "top"], df[df.direction == "bottom"]
    assert top.logit.is_monotonic_decreasing and bottom.logit.is_monotonic_increasing
    assert top.logit.min() > bottom.logit.max()
    # closed form: the value vector through the final norm's linear part, read by the unembedding
    v = m.blocks[0].mlp.W_out[NEURON].detach()
    if norm == "layernorm":
        v = v - v.mean()
    ref = (v * m.ln_final.w.detach()) @ m.W_U.detach()
    np.testing.assert_allclose(top.logit, ref.sort(descending=True).values[:3].numpy(), atol=1e-12)
    with pytest.raises(InterpError, match="neuron"):
        neuron_answers(m, 0, 8)
    with pytest.raises(InterpError, match="direction"):
        neuron_answers(m, 0, 1, direction="up")


# ---------------------------------------------------------------------------------------------------
# the question


def test_planted_neuron_question_is_A_and_scan_matches_brute_force():
    m = planted_model()
    g = torch.Generator().manual_seed(7)
    # variable-length documents (some longer than n_ctx = 8, so they are chunked), A appears a few times
    docs = [torch.randint(V, (int(n),), generator=g) for n in torch.randint(3, 20, (12,), generator=g)]
    docs[2][1] = A
    docs[5][-1] = A
    docs[9][4] = A
    df = scan_top_contexts(m, docs, k=3, window=2, batch_size=3, progress=False)
    assert list(df.columns) == [
        "layer",
        "neuron",
        "rank",
        "activation",
        "doc",
        "position",
        "token_id",
        "token",
        "next_token_id",
        "next_token",
        "context",
    ]
    n_a = sum(int((d == A).sum()) for d in docs)
    assert n_a >= 3
    planted = df[df.neuron == NEURON]
    assert (planted.token_id == A).all() and (planted.activation > 0.5).all()
    assert planted.context.str.contains(f"«<{A}>»").all()
    # brute force: every chunk through the model on its own, top-3 of all positions per neuron
    acts, where = [], []
    for di, d in enumerate(docs):
        for off in range(0, len(d), 8):
            _, cache = m.run_with_cache(d[off : off + 8][None])
            acts.append(cache["blocks.0.mlp.hook_post"][0])
            where += [(di, off + p) for p in range(len(d[off : off + 8]))]
    acts = torch.cat(acts)
    vals = acts.topk(3, dim=0).values
    for n in range(8):
        got = df[df.neuron == n].sort_values("rank")
        np.testing.assert_allclose(got.activation, vals[:, n].detach().numpy(), atol=1e-10)
        # ties are common here (attention writes nothing, so equal token + nearby position ~ equal key), so
        # check that each reported (doc, position) really has the reported activation, and no repeats
        at = {w: acts[i, n].item() for i, w in enumerate(where)}
        np.testing.assert_allclose(
            [at[(d, p)] for d, p in zip(got.doc, got.position)], got.activation, atol=1e-10
        )
        assert len(set(zip(got.doc, got.position))) == 3
        for _, row in got.iterrows():
            d = docs[row.doc]
            assert row.token_id == d[row.position]
            assert row.next_token_id == (int(d[row.position + 1]) if row.position + 1 < len(d) else -1)


def test_scan_cache_loads_instead_of_recomputing(tmp_path, monkeypatch):
    m = planted_model()
    corpus = torch.randint(V, (5, 8), generator=torch.Generator().manual_seed(3))
    folder = tmp_path / "scan"
    first = scan_top_contexts(m, corpus, k=2, cache_path=folder, progress=False)
    assert (folder / "meta.json").is_file()
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(m, "run_with_cache", boom)
    again = scan_top_contexts(m, corpus, k=2, cache_path=folder, progress=False)
    pd.testing.assert_frame_equal(first, again, check_dtype=False)
    with pytest.raises(AssertionError, match="recomputed"):  # a different corpus is not served from the cache
        scan_top_contexts(m, corpus[:4], k=2, cache_path=folder, progress=False)
    with pytest.raises(AssertionError, match="recomputed"):  # nor different options
        scan_top_contexts(m, corpus, k=3, cache_path=folder, progress=False)
    with torch.no_grad():
        m.blocks[0].mlp.W_out[0, 0] += 1.0
    with pytest.raises(AssertionError, match="recomputed"):  # nor different weights
        scan_top_contexts(m, corpus, k=2, cache_path=folder, progress=False)


def test_scan_texts_with_tokenizer_and_geva_agreement():
    m = planted_model()
    m.tokenizer = word_tokenizer()
    vocab = m.tokenizer.get_vocab()
    a_word = next(w for w, i in vocab.items() if i == A)
    b_word = next(w for w, i in vocab.items() if i == B)
    c_word = next(w for w, i in vocab.items() if i == C)
    assert {a_word, b_word, c_word}.isdisjoint({"the", "cat", "on", "mat", "it", "ran", "red", "big", "then"})
    texts = [
        f"the cat {a_word} {b_word} on mat",
        f"it ran {a_word} {b_word}",
        f"red big {a_word} {b_word} then",
    ]
    df = scan_top_contexts(m, texts, k=2, window=3, progress=False)
    planted = df[df.neuron == NEURON]
    assert (planted.token == a_word).all() and planted.context.str.contains(f"«{a_word}»").all()
    agree = answer_agreement(m, df, by="neuron").set_index("neuron")
    assert agree.loc[NEURON, "agree"] and agree.loc[NEURON, "top_answer_id"] == B
    assert agree.loc[NEURON, "next_rank"] == 0
    layer = answer_agreement(m, df)
    assert layer.agreement.iloc[0] == pytest.approx(agree.agree.mean())
    assert layer.n_neurons.iloc[0] == len(agree)
    # the same trigger followed by another token: the answer no longer agrees
    other = [t.replace(b_word, c_word) for t in texts]
    agree2 = answer_agreement(m, scan_top_contexts(m, other, k=2, progress=False), by="neuron").set_index(
        "neuron"
    )
    assert not agree2.loc[NEURON, "agree"] and agree2.loc[NEURON, "next_rank"] > 0
    with pytest.raises(InterpError, match="contexts"):
        answer_agreement(m, pd.DataFrame({"x": [1]}))


# ---------------------------------------------------------------------------------------------------
# per prompt: contributions


def test_top_neurons_finds_planted_neuron():
    m = planted_model()
    toks = torch.tensor([[1, 2, 3, A], [4, A, 6, 7]])
    df = top_neurons(m, toks, position=[3, 1], target=B, k=3)
    assert list(df.columns) == [
        "layer",
        "neuron",
        "activation",
        "contribution",
        "batch",
        "position",
        "target_token",
        "target_id",
        "ranked_by",
        "rank",
    ]
    for b in (0, 1):
        for by in ("activation", "contribution"):
            top = df[(df.batch == b) & (df.ranked_by == by)].iloc[0]
            assert top.neuron == NEURON and top.contribution > 1.0
    # target None -> the model's top prediction at that position
    df = top_neurons(m, toks, k=2)
    logits = m(toks)[:, -1]
    assert df.groupby("batch").target_id.first().tolist() == logits.argmax(-1).tolist()
    with pytest.raises(InterpError, match="position"):
        top_neurons(m, toks, position=4)
    with pytest.raises(InterpError, match="target"):
        top_neurons(m, toks, target=V)
    with pytest.raises(InterpError, match="k"):
        top_neurons(m, toks, k=0)


ARCHS = {
    "gpt2": {},
    "llama": {**FAMILY_CONFIGS["llama"], "n_kv_heads": 1},  # MQA
    "neox": {**FAMILY_CONFIGS["neox"], "rotary_fraction": 0.5},
    "tied_sinusoidal_relu": {"positional": "sinusoidal", "tie_embeddings": True, "act": "relu"},
    "no_final_norm": {"final_norm": False},
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_direct_logit_attribution_reconstructs_the_logit(arch):
    """Neuron contributions + every other residual component, each through the final norm as a linear map
    given its cached scale (LayerNorm: centre each component), + norm bias + b_U == the logit.

    1e-5, not float64 round-off: neuron_contributions' run caches no pattern (sdpa, float64) while this
    test's full cache hooks the patterns (eager, whose softmax runs in float32), so activations differ ~1e-7.
    """
    cfg = DecoderConfig(
        d_vocab=24,
        n_ctx=8,
        d_model=16,
        n_layers=2,
        n_heads=4,
        d_mlp=32,
        init_std=0.4,
        dtype="float64",
        **ARCHS[arch],
    )
    torch.manual_seed(1)
    m = HookedDecoder(cfg)
    with torch.no_grad():  # non-zero biases and norm gains so every term matters
        for name, p in m.named_parameters():
            if name.split(".")[-1] in ("b_in", "b_out", "b_O", "b_Q", "b_K", "b_V", "b_U", "b", "b_gate"):
                p.normal_(0, 0.3)
            if name.split(".")[-1] == "w":
                p.uniform_(0.5, 1.5)
    toks = torch.randint(24, (3, 7))
    positions, target = [6, 2, -1], [3, 17, 9]
    contrib = neuron_contributions(m, toks, position=positions, target=target)
    logits, cache = m.run_with_cache(toks)
    for b, (p, t) in enumerate(zip(positions, target)):
        u = m.W_U[:, t].detach()
        ln = getattr(m, "ln_final", None)
        w = ln.w.detach() if ln is not None else torch.ones(16, dtype=torch.float64)
        bias = ln.b if ln is not None and ln.b is not None else None
        scale = cache["ln_final.hook_scale"][b, p, 0] if ln is not None else 1.0
        centre = cfg.norm == "layernorm" and ln is not None

        def through_norm(c, centre=centre, w=w, u=u, scale=scale):
            c = c - c.mean() if centre else c
            return float((c * w) @ u / scale)

        comps = [cache["hook_embed"][b, p]]
        if "hook_pos_embed" in cache.cache_dict:
            comps.append(cache["hook_pos_embed"][b, p])
        for layer in range(cfg.n_layers):
            comps.append(cache[f"blocks.{layer}.hook_attn_out"][b, p])
            if m.blocks[layer].mlp.b_out is not None:
                comps.append(m.blocks[layer].mlp.b_out.detach())
            # the neurons' outputs are exactly hook_post @ W_out (+ b_out): hook_post is the key, also when gated
            recon = cache[f"blocks.{layer}.mlp.hook_post"][b, p] @ m.blocks[layer].mlp.W_out
            if m.blocks[layer].mlp.b_out is not None:
                recon = recon + m.blocks[layer].mlp.b_out
            torch.testing.assert_close(recon, cache[f"blocks.{layer}.hook_mlp_out"][b, p], atol=1e-12, rtol=0)
        other = sum(through_norm(c) for c in comps)
        const = float(m.b_U[t].detach()) + (float(bias.detach() @ u) if bias is not None else 0.0)
        neurons = contrib[contrib.batch == b].contribution.sum()
        assert neurons + other + const == pytest.approx(float(logits[b, p, t].detach()), abs=1e-5)
        assert abs(neurons) > 1e-3  # the neurons' share is not negligible, so the check has teeth
    assert contrib.groupby("batch").target_id.first().tolist() == target


def test_post_norm_contributions_are_nan_not_wrong():
    m = HookedDecoder(
        DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2, norm_placement="post")
    )
    df = top_neurons(m, torch.tensor([[1, 2, 3]]), k=2)
    assert df.contribution.isna().all() and df.activation.notna().all()


def test_docstring_examples_run():
    res = doctest.testmod(neurons_mod, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0


def test_top_neurons_on_padded_texts_uses_each_texts_last_token():
    m = planted_model()
    m.tokenizer = word_tokenizer()
    texts = ["the cat sat on the mat", "a big dog"]
    df = neuron_contributions(m, texts, position=-1, target=B)
    assert df.groupby("batch").position.first().tolist() == [5, 2]
    alone = neuron_contributions(m, texts[1], position=-1, target=B)
    np.testing.assert_allclose(df[df.batch == 1].contribution, alone.contribution, atol=1e-9)
    with pytest.raises(InterpError, match="position"):
        neuron_contributions(m, texts, position=4)  # past the end of "a big dog"


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
def test_neuron_analyzers_on_architectures(arch):
    cfg = DecoderConfig(d_vocab=24, n_ctx=8, d_model=16, n_layers=2, n_heads=4, d_mlp=32, **ARCHS[arch])
    torch.manual_seed(2)
    m = HookedDecoder(cfg)
    corpus = torch.randint(24, (4, 8))
    ctx = scan_top_contexts(m, corpus, k=2, batch_size=3, progress=False)
    assert len(ctx) == 2 * 32 * 2
    _, cache = m.run_with_cache(corpus)
    top = ctx[ctx["rank"] == 1]
    for layer in (0, 1):
        best = (
            cache[f"blocks.{layer}.mlp.hook_post"].reshape(-1, 32).max(0).values
        )  # act(gate) * up when gated
        np.testing.assert_allclose(top[top.layer == layer].activation, best.detach().numpy(), atol=1e-5)
    assert len(answer_agreement(m, ctx)) == 2
    assert len(neuron_answers(m, 1, 7, k=4)) == 8
    assert len(top_neurons(m, corpus[:2], k=4)) == 2 * 2 * 4


# ---------------------------------------------------------------------------------------------------
# neuron pages: profiles over a corpus, activations on a prompt, centred answers


def test_neuron_profiles_match_a_brute_force_scan():
    from interp.analysis.neurons import neuron_activations, neuron_profiles

    m = planted_model()
    g = torch.Generator().manual_seed(3)
    docs = [torch.randint(V, (int(n),), generator=g) for n in torch.randint(4, 20, (10,), generator=g)]
    docs[4][2] = A
    prof = neuron_profiles(m, docs, [(0, NEURON), (0, 1)], k=3, window=2, after=1, bins=10)
    # brute force: every chunk of n_ctx = 8 tokens through the model on its own
    acts, where = [], []
    for di, d in enumerate(docs):
        for off in range(0, len(d), 8):
            _, cache = m.run_with_cache(d[off: off + 8][None])
            acts.append(cache["blocks.0.mlp.hook_post"][0])
            where += [(di, off + p) for p in range(len(d[off: off + 8]))]
    acts = torch.cat(acts).detach()
    for neuron in (NEURON, 1):
        ex = prof.examples[prof.examples.neuron == neuron]
        trig = ex[ex.is_trigger].sort_values("rank")
        assert trig["rank"].tolist() == [1, 2, 3]
        torch.testing.assert_close(torch.tensor(trig.activation.to_numpy()), acts[:, neuron].topk(3).values,
                                   rtol=1e-5, atol=1e-6)
        at = {w: acts[i, neuron].item() for i, w in enumerate(where)}
        for r in ex.itertuples():  # every shaded token's activation is the brute-force value at that place
            assert math.isclose(r.activation, at[(r.doc, r.position + r.offset)], rel_tol=1e-5, abs_tol=1e-6)
            assert r.token_id == int(docs[r.doc][r.position + r.offset])
        h = prof.histogram[prof.histogram.neuron == neuron]
        assert h["count"].sum() == len(where)
        assert math.isclose(h.bin_left.min(), acts[:, neuron].min().item(), abs_tol=1e-6)
        st = prof.stats[prof.stats.neuron == neuron].iloc[0]
        assert math.isclose(st["mean"], acts[:, neuron].mean().item(), rel_tol=1e-6, abs_tol=1e-9)
    top = prof.examples[(prof.examples.neuron == NEURON) & prof.examples.is_trigger & (prof.examples["rank"] == 1)]
    assert int(top.token_id.iloc[0]) == A  # the planted neuron's best example is its trigger token
    # at most max_tokens tokens are read, spread over the corpus
    small = neuron_profiles(m, docs, [(0, NEURON)], k=1, max_tokens=24)
    assert small.stats.n_tokens.iloc[0] <= 24 + 8
    with pytest.raises(InterpError, match="neuron"):
        neuron_profiles(m, docs, [(0, 99)])
    on = neuron_activations(m, docs[4][None, :8], 0, NEURON)
    torch.testing.assert_close(torch.tensor(on.activation.to_numpy()), at_positions(m, docs[4][:8], NEURON))


def at_positions(m, doc, neuron):
    _, cache = m.run_with_cache(doc[None])
    return cache["blocks.0.mlp.hook_post"][0, :, neuron].detach()


def test_centred_answers_raise_and_lower_and_ranks_start_at_1():
    m = planted_model()
    raw = neuron_answers(m, 0, NEURON, k=3)
    cen = neuron_answers(m, 0, NEURON, k=3, center=True)
    assert raw.token_id.tolist() == cen.token_id.tolist()  # a shared shift keeps the order
    v = m.blocks[0].mlp.W_out[NEURON].detach()
    ref = ((v - v.mean()) * m.ln_final.w.detach()) @ m.W_U.detach()
    ref = ref - ref.mean()
    top = cen[cen.direction == "top"]
    torch.testing.assert_close(torch.tensor(top.logit.to_numpy()), ref.sort(descending=True).values[:3])
    assert (top.logit > 0).all() and (cen[cen.direction == "bottom"].logit < 0).all()
    assert top["rank"].tolist() == [1, 2, 3]
