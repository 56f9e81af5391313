"""SAE dashboard statistics (``interp.analysis.sae.cards``) against independent references.

* Correlated features: a planted SAE whose feature 1 is exactly twice feature 0 and feature 2 fires where
  feature 0 is silent; the correlations equal pandas' ``DataFrame.corr`` of the activations computed here by
  ``run_with_cache`` + ``sae.encode`` per document, and ``co_fire`` numpy's count.
* Quantile samples: bin counts and shares equal numpy's count of the same activations in each interval, the
  top bin holds the largest activations, every sampled token lies in its bin and shows its true activation.
* Ablation effects: a float64 model; the reference subtracts ``activation × W_dec[feature]`` from the hook the
  feature writes to (the SAE's hook, or ``hook_mlp_out`` for a transcoder) by hand at one position, with no SAE
  spliced, and reads the next-token log-probability and the logit change there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import perturbed_float64_model

from interp.analysis.sae import SAE, SAEConfig, Transcoder, TranscoderConfig
from interp.analysis.sae.cards import feature_ablation_effects, feature_correlations, feature_dashboard
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = DecoderConfig(d_vocab=50, n_ctx=16, d_model=16, n_layers=2, n_heads=2, positional="learned", name="tiny")
    return HookedDecoder(cfg).eval()


@pytest.fixture(scope="module")
def docs():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(1, 50, (int(n),), generator=gen) for n in (16, 9, 16, 12, 16, 5, 16, 14)]


@pytest.fixture(scope="module")
def planted():
    """Feature 1 = 2 × feature 0 (correlation 1); feature 2 reads the opposite direction (fires only where 0 is
    silent: negatively correlated); the rest random, with a bias so most fire on some tokens."""
    torch.manual_seed(4)
    sae = SAE(SAEConfig(d_in=16, d_sae=24, architecture="relu", metadata={"hook_name": HOOK}))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.3)
        sae.b_enc[:3] = 0.0  # feature 0 fires on about half the tokens
        sae.W_enc[:, 1] = 2 * sae.W_enc[:, 0]
        sae.W_enc[:, 2] = -sae.W_enc[:, 0]
        sae.W_enc[:, 5] = 0.0  # feature 5: constant (its bias) on every token — correlates with nothing
    return sae.eval()


@pytest.fixture(scope="module")
def reference(tiny, planted, docs):
    """Activations [tokens, d_sae] in document order, with (doc, position) of each token."""
    rows, where = [], []
    with torch.no_grad():
        for d, t in enumerate(docs):
            _, cache = tiny.run_with_cache(t[None], names_filter=HOOK)
            rows.append(planted.encode(cache[HOOK][0]).double())
            where += [(d, p) for p in range(len(t))]
    return torch.cat(rows).numpy(), where


def test_correlations_equal_pandas_on_a_planted_sae(tiny, planted, docs, reference):
    x, _ = reference
    feats = [0, 3, 21]
    got = feature_correlations(tiny, planted, docs, feats, k=30, batch_size=3)  # batches merged (Chan's update)
    want = pd.DataFrame(x).corr()  # NaN for the constant feature 5, as ours leaves it out
    assert x[:, 0].std() > 0 and (x[:, 0] > 0).any() and (x[:, 0] == 0).any()
    for f in feats:
        mine = got[got.feature == f]
        ref = want[f].drop(index=f).dropna().sort_values(ascending=False, kind="stable")
        assert mine.other.tolist() == ref.index[:len(mine)].tolist()
        torch.testing.assert_close(torch.tensor(mine.correlation.to_numpy()), torch.tensor(ref.to_numpy()[:len(mine)]),
                                   rtol=1e-5, atol=1e-6)  # float32 activations, batched vs one by one
        assert 5 not in mine.other.tolist()
        on = x[:, f] > 0
        co = np.array([(x[on, g] > 0).mean() for g in mine.other])
        torch.testing.assert_close(torch.tensor(mine.co_fire.to_numpy()), torch.tensor(co), rtol=1e-12, atol=1e-12)
    zero = got[got.feature == 0].set_index("other")
    assert zero.index[0] == 1  # the planted copy first, perfectly correlated
    torch.testing.assert_close(zero.correlation.loc[1], 1.0, rtol=0, atol=1e-6)
    assert zero.co_fire.loc[1] == 1.0 and zero.co_fire.loc[2] == 0.0
    assert zero.correlation.loc[2] < 0


@pytest.mark.parametrize("spacing", ["width", "quantile"])
def test_quantile_bins_and_samples_match_the_activations(tiny, planted, docs, reference, spacing):
    x, where = reference
    n_bins, per_bin, k_top = 4, 2, 3
    dash = feature_dashboard(tiny, planted, docs, [0, 21, 4], n_bins=n_bins, per_bin=per_bin, k_top=k_top,
                             spacing=spacing, window=3, after=1, seed=0, batch_size=1)  # as the reference runs
    assert dash.stats.set_index("feature").n_nonzero.loc[4] == 0 and not (dash.bins.feature == 4).any()  # silent
    for f in (0, 21):
        v = x[:, f]
        nz = np.sort(v[v > 0])[::-1]
        bins = dash.bins[dash.bins.feature == f].set_index("bin")
        assert bins.index.tolist() == list(range(n_bins + 1))
        np.testing.assert_allclose(bins.loc[0, ["low", "high"]].to_numpy(float), [nz[k_top - 1], nz[0]], rtol=1e-6)
        edges = (np.linspace(0, nz[0], n_bins + 1) if spacing == "width"
                 else np.quantile(nz, np.linspace(0, 1, n_bins + 1)))
        for b in range(1, n_bins + 1):
            lo, hi = edges[n_bins - b], edges[n_bins - b + 1]
            inside = ((nz > lo) | (b == n_bins) & (nz >= lo)) & (nz <= hi)
            np.testing.assert_allclose([bins.loc[b, "low"], bins.loc[b, "high"]], [lo, hi], rtol=1e-6)
            assert bins.loc[b, "count"] == inside.sum()
            torch.testing.assert_close(float(bins.loc[b, "share"]), inside.sum() / len(nz))
        assert bins.loc[1:, "count"].sum() == len(nz)
        if spacing == "quantile":  # equal shares, up to one value per edge
            assert (abs(bins.loc[1:, "count"] - len(nz) / n_bins) <= 1.5).all()

        samples = dash.samples[dash.samples.feature == f]
        trig = samples[samples.is_trigger]
        ref = {w: float(a) for w, a in zip(where, v)}
        top = trig[trig.bin == 0].activation.to_numpy()
        np.testing.assert_allclose(top, nz[:k_top], rtol=1e-6)
        seen = set()
        for (b, s), g in samples.groupby(["bin", "sample"]):
            t = g[g.is_trigger].iloc[0]
            assert (t.doc, t.position) not in seen  # no token shown twice
            seen.add((t.doc, t.position))
            if b:
                lo, hi = bins.loc[b, "low"], bins.loc[b, "high"]
                assert lo - 1e-6 <= t.activation <= hi + 1e-6 and t.activation > 0
            for r in g.itertuples():  # the shading: the true activation of every token around the sample
                assert r.token_id == int(docs[r.doc][r.position + r.offset])
                torch.testing.assert_close(r.activation, ref[(r.doc, r.position + r.offset)], rtol=1e-5, atol=1e-6)
        assert (samples.groupby("bin")["sample"].max() <= np.maximum(per_bin, k_top)).all()
    again = feature_dashboard(tiny, planted, docs, [0, 21, 4], n_bins=n_bins, per_bin=per_bin, k_top=k_top,
                              spacing=spacing, window=3, after=1, seed=0, batch_size=1)
    pd.testing.assert_frame_equal(again.samples, dash.samples)  # deterministic given the seed


def test_dashboard_bad_input_is_one_line(tiny, planted, docs):
    with pytest.raises(InterpError, match=r"^n_bins: must be an int >= 1; given 0$"):
        feature_dashboard(tiny, planted, docs, [0], n_bins=0)
    with pytest.raises(InterpError, match=r"^spacing: must be one of"):
        feature_dashboard(tiny, planted, docs, [0], spacing="log")
    with pytest.raises(InterpError, match=r"^feature: must be in \[-24, 24\); given 99$"):
        feature_ablation_effects(tiny, planted, docs[0], 99)


def _float64_sae_and_transcoder(model):
    torch.manual_seed(2)
    sae = SAE(SAEConfig(d_in=32, d_sae=40, architecture="relu", dtype="float64", metadata={"hook_name": HOOK}))
    tc = Transcoder(TranscoderConfig(d_in=32, d_sae=40, architecture="topk", k=6, skip=True, dtype="float64",
                                     metadata={"hook_name": "blocks.0.ln2.hook_normalized",
                                               "hook_name_out": "blocks.0.hook_mlp_out"}))
    with torch.no_grad():
        for m in (sae, tc):
            m.W_dec.normal_(0, 0.4)
            m.b_enc.add_(0.3)
        tc.W_skip.normal_(0, 0.1)
    return {"sae": (sae, HOOK), "transcoder": (tc, "blocks.0.hook_mlp_out")}


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
def test_ablation_effects_equal_a_hand_subtraction_in_float64(kind):
    model = perturbed_float64_model()
    sae, writes = _float64_sae_and_transcoder(model)[kind]
    reads = sae.cfg.hook_name
    toks = torch.randint(2, 40, (2, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=reads)
        acts = sae.encode(cache[reads])  # [2, 8, d_sae]
    feature = int(((acts > 0).sum((0, 1)) * (acts > 0).any(1).all(0)).argmax())  # fires often, in both contexts
    df = feature_ablation_effects(model, sae, toks, feature, k_logits=3, chunk=3)
    assert len(df) == toks.numel() and (df.activation > 0).sum() >= 3
    with torch.no_grad():
        clean_logits = model(toks)
    clean = torch.log_softmax(clean_logits, -1)
    checked = [0, 0]
    for r in df.itertuples():
        a = float(acts[r.context, r.position, feature])
        torch.testing.assert_close(r.activation, a, rtol=1e-9, atol=1e-12)
        last = r.position == toks.shape[1] - 1
        if a == 0:
            assert (np.isnan(r.logprob_change) if last else r.logprob_change == 0.0) and r.raises == []
            continue
        if checked[r.context] == 3:  # three firing tokens per context (in two chunks of 3) suffice
            continue
        checked[r.context] += 1

        def subtract(act, hook=None, p=r.position, a=a):
            act = act.clone()
            act[0, p] -= a * sae.W_dec[feature]
            return act

        t = toks[r.context: r.context + 1]
        with torch.no_grad():
            ablated = model.run_with_hooks(t, fwd_hooks=[(writes, subtract)])[0, r.position]
        delta = clean_logits[r.context, r.position] - ablated
        delta = delta - delta.mean()
        if not last:
            nxt = int(toks[r.context, r.position + 1])
            want = float(torch.log_softmax(ablated, -1)[nxt] - clean[r.context, r.position, nxt])
            torch.testing.assert_close(r.logprob_change, want, rtol=1e-6, atol=1e-10)
            assert abs(want) > 1e-6  # the ablation moves the prediction: the test can fail
        top = delta.topk(3)
        torch.testing.assert_close(torch.tensor([v for _, v in r.raises], dtype=torch.float64), top.values,
                                   rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(torch.tensor([v for _, v in r.lowers], dtype=torch.float64),
                                   delta.topk(3, largest=False).values, rtol=1e-6, atol=1e-10)
    assert checked == [3, 3]


def test_shipped_transcoder_ablation_equals_the_hand_subtraction():
    """The shipped model and its layer-1 transcoder: the ablation effect equals the hand subtraction at
    ``hook_mlp_out`` (float32 tolerances)."""
    from pathlib import Path

    from interp.analysis.sae import load_transcoder
    from interp.report.inputs import load_model

    folder = Path(__file__).resolve().parents[1] / "models" / "docs-bible-austen-2l" / "transcoders" / \
        "blocks.1.hook_mlp_out"
    model, tc = load_model(), load_transcoder(folder)
    toks = model.to_tokens("In the beginning God created the heaven and the earth.")
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=tc.cfg.hook_name)
        acts = tc.encode(cache[tc.cfg.hook_name])[0]
    p = toks.shape[1] - 2
    feature = int(acts[p].argmax())
    df = feature_ablation_effects(model, tc, toks, feature).set_index("position")
    a = float(acts[p, feature])

    def subtract(act, hook=None):
        act = act.clone()
        act[0, p] -= a * tc.W_dec[feature]
        return act

    with torch.no_grad():
        ablated = torch.log_softmax(model.run_with_hooks(toks, fwd_hooks=[(tc.cfg.hook_name_out, subtract)])[0, p], -1)
        clean = torch.log_softmax(model(toks)[0, p], -1)
    nxt = int(toks[0, p + 1])
    want = float(ablated[nxt] - clean[nxt])
    assert abs(want) > 1e-3
    torch.testing.assert_close(df.logprob_change.loc[p], want, rtol=1e-3, atol=1e-4)
