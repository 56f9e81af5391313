"""Linear probes: planted features in synthetic activations, exact activation collection, and cosine matches.

References: features planted along known directions (the probe must find them), the model's own
``run_with_cache`` (collection must return exactly those vectors), and numpy cosines.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILY_CONFIGS, assert_close_to_scale
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from interp.analysis.probing import (
    Activations,
    collect_activations,
    direction_matches,
    expand_hooks,
    fit_probes,
)
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

V = 48
BASE = {"d_vocab": V, "n_ctx": 16, "d_model": 32, "n_layers": 3, "n_heads": 4, "init_std": 0.3}
FAMILIES = FAMILY_CONFIGS


def make_model(family="gpt2", seed=0, tokenizer=None):
    torch.manual_seed(seed)
    return HookedDecoder(DecoderConfig(**{**BASE, **FAMILIES[family]}), tokenizer=tokenizer).eval()


def unit(rng, d):
    v = rng.normal(size=d)
    return v / np.linalg.norm(v)


# --- planted features in synthetic activations -----------------------------------------------------
def test_planted_binary_feature_is_recovered():
    rng = np.random.default_rng(0)
    n, d = 400, 32
    u = unit(rng, d)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d)) + 3.0 * (2 * y - 1)[:, None] * u + 5.0  # an offset the intercept must absorb
    r = fit_probes(X, y, seed=0)
    row = r.scores.iloc[0]
    assert row.metric == "accuracy" and row.test >= 0.95 and row.train >= 0.95
    assert 0.35 <= row.baseline <= 0.65  # majority class of a balanced label
    assert row.n_train + row.n_test == n
    w = r.directions["activations"]
    assert abs(np.linalg.norm(w) - 1) < 1e-9
    assert w @ u >= 0.9  # points towards classes[1] == 1, i.e. along +u
    # the direction is the normal of the probe's decision boundary in the raw basis
    dec = r.probes["activations"].decision_function(X)
    assert np.corrcoef(dec, X @ w)[0, 1] > 0.999999


def test_planted_multiclass_and_regression_features():
    rng = np.random.default_rng(1)
    n, d = 450, 24
    us = np.stack([unit(rng, d) for _ in range(3)])
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)) + 4.0 * us[y]
    r = fit_probes({"h": X}, np.array(["a", "b", "c"])[y], seed=1)
    assert r.task == "classification" and r.classes.tolist() == ["a", "b", "c"]
    assert r.scores.test.iloc[0] >= 0.95
    assert r.directions["h"].shape == (3, d)
    # each class's row aligns best with its own planted direction (up to the shared mean)
    centred = us - us.mean(0)
    cos = r.directions["h"] @ (centred / np.linalg.norm(centred, axis=1, keepdims=True)).T
    assert (np.argmax(cos, axis=1) == [0, 1, 2]).all() and np.diag(cos).min() > 0.8

    u = unit(rng, d)
    target = 2.0 * (X @ u) + 0.1 * rng.normal(size=n)
    r = fit_probes(X, target, seed=0)
    assert r.task == "regression" and r.scores.metric.iloc[0] == "r2"
    assert r.scores.test.iloc[0] >= 0.95 and abs(r.scores.baseline.iloc[0]) < 0.1
    assert abs(r.directions["activations"] @ u) >= 0.99


def test_directions_are_in_the_raw_basis_for_badly_scaled_features():
    # Features with scales from 0.1 to 10 (like residual dims with outliers): the probe standardises
    # internally, and the reported direction must still be the raw-coordinate weight vector.
    rng = np.random.default_rng(2)
    n, d = 600, 16
    scales = np.geomspace(0.1, 10, d)
    X = rng.normal(size=(n, d)) * scales
    w_true = rng.normal(size=d) / scales
    y = X @ w_true
    r = fit_probes(X, y, task="regression", alpha=1e-6, seed=0)
    assert r.directions["activations"] @ (w_true / np.linalg.norm(w_true)) > 0.9999


def test_fit_probes_is_deterministic_and_checks_input():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 8))
    y = (X[:, 0] > 0).astype(int)
    a, b = fit_probes(X, y, seed=4), fit_probes(X, y, seed=4)
    assert a.scores.equals(b.scores) and np.array_equal(
        a.directions["activations"], b.directions["activations"]
    )
    assert np.array_equal(a.test_idx, b.test_idx)
    with pytest.raises(InterpError, match="labels"):
        fit_probes(X, y[:-1])
    with pytest.raises(InterpError, match="labels"):
        fit_probes(X, np.zeros(80, dtype=int))
    with pytest.raises(InterpError, match="test_size"):
        fit_probes(X, y, test_size=1.5)
    with pytest.raises(InterpError, match="task"):
        fit_probes(X, y, task="clustering")
    with pytest.raises(InterpError, match="activations"):
        fit_probes(np.full((80, 8), np.nan), y)


# --- collecting activations from a model -----------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_collected_activations_equal_the_cache_and_layer_probes_run(family):
    model = make_model(family)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (60, 5), generator=g)
    y = torch.randint(0, 2, (60,), generator=g)
    tokens[:, -1] = torch.where(y == 1, 3, 11)  # label = which of two tokens ends the prompt
    acts = collect_activations(model, tokens, ["hook_embed", "resid_pre", "mlp.hook_post"], batch_size=16)
    n = model.cfg.n_layers
    assert acts.hooks == ["hook_embed"] + [f"blocks.{l}.hook_resid_pre" for l in range(n)] + [
        f"blocks.{l}.mlp.hook_post" for l in range(n)
    ]
    _, cache = model.run_with_cache(tokens)
    for hook in acts.hooks:
        # another batch shape than the cache's run: BLAS rounding differs, so compare relative to the magnitude
        assert_close_to_scale(acts[hook], cache[hook][:, -1].float(), msg=hook)
    assert acts.index.position.eq(4).all() and acts.index.token_id.tolist() == tokens[:, -1].tolist()

    r = fit_probes(acts, y, seed=0)
    s = r.scores.set_index("hook")
    assert list(s.index) == acts.hooks
    assert s.loc["blocks.0.hook_resid_pre", "layer"] == 0 and s["layer"].isna().sum() == 1  # hook_embed
    assert s.loc["hook_embed", "test"] == 1.0 and s.loc["blocks.0.hook_resid_pre", "test"] == 1.0
    assert r.directions[f"blocks.{n - 1}.mlp.hook_post"].shape == (model.cfg.d_mlp,)
    # at the embedding the probe direction separates exactly the two planted token embeddings
    w = r.directions["hook_embed"]
    E = model.W_E.detach().double().numpy()
    assert (E[3] - E[11]) @ w > 0


def word_tokenizer():
    words = ["<eos>", "the", "cat", "dog", "sat", "on", "mat", "a", "big", "red", "ran", "far"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tok.pre_tokenizer = Whitespace()
    return tok


def test_prompts_of_different_lengths_are_not_padded():
    model = make_model("llama", tokenizer=word_tokenizer())
    prompts = ["the cat sat", "a big red dog ran far", "the dog"]
    acts = collect_activations(model, prompts, "resid_post", positions=-1)
    assert acts.index.token.tolist() == ["sat", "far", "dog"]
    assert acts.index.position.tolist() == [2, 5, 1]
    for i, p in enumerate(prompts):
        _, cache = model.run_with_cache(model.to_tokens(p))
        for hook in acts.hooks:
            assert_close_to_scale(acts[hook][i], cache[hook][0, -1].float())
    every = collect_activations(model, prompts, "blocks.{layer}.hook_attn_out", positions="all")
    assert len(every) == 3 + 6 + 2 and every.index.prompt.tolist() == [0] * 3 + [1] * 6 + [2] * 2
    chosen = collect_activations(model, prompts, ["hook_embed"], positions=[1, 0, -2])
    assert chosen.index.token.tolist() == ["cat", "a", "the"]


def test_collect_activations_rejects_bad_input():
    model = make_model()
    tokens = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(InterpError, match="hooks"):
        collect_activations(model, tokens, "resid_middle")
    with pytest.raises(InterpError, match="hooks"):
        collect_activations(model, tokens, "attn.hook_pattern")
    with pytest.raises(InterpError, match="positions"):
        collect_activations(model, tokens, "resid_pre", positions=[0, 1, 2])
    with pytest.raises(InterpError, match="positions"):
        collect_activations(model, tokens, "resid_pre", positions=4)
    assert expand_hooks(model, "hook_resid_mid") == [f"blocks.{l}.hook_resid_mid" for l in range(3)]
    assert isinstance(collect_activations(model, tokens, "hook_embed"), Activations)


# --- matching directions with neurons and embeddings -----------------------------------------------
def test_direction_matches_finds_planted_neuron_and_token():
    model = make_model("llama")
    rng = np.random.default_rng(5)
    W_in = model.W_in.detach().double().numpy()  # [layer, d_model, d_mlp]
    direction = W_in[1][:, 5] + 0.01 * np.linalg.norm(W_in[1][:, 5]) * rng.normal(size=32)
    m = direction_matches(model, direction, k=4)
    assert set(m.kind) == {"W_in", "W_gate", "W_out", "W_E", "W_U"}
    top = m[m.kind == "W_in"].iloc[0]
    assert (int(top.layer), int(top["index"])) == (1, 5) and top.cosine > 0.99
    # cosines equal numpy's, sorted by |cosine|, k per kind
    E = model.W_E.detach().double().numpy()
    ref = E @ direction / (np.linalg.norm(E, axis=1) * np.linalg.norm(direction))
    emb = m[m.kind == "W_E"]
    assert len(emb) == 4 and emb["index"].tolist() == np.argsort(-np.abs(ref))[:4].tolist()
    assert np.allclose(emb.cosine.values, ref[emb["index"].values], atol=1e-12)
    assert emb.layer.isna().all()
    # a token's embedding is its own best W_E match, with the token string filled in
    m2 = direction_matches(model, model.W_E[7], k=1, kinds="W_E")
    assert int(m2["index"][0]) == 7 and abs(m2.cosine[0] - 1) < 1e-9
    # non-gated models have no W_gate rows; bad input is refused
    assert "W_gate" not in set(direction_matches(make_model("gpt2"), direction, k=2).kind)
    with pytest.raises(InterpError, match="direction"):
        direction_matches(model, np.ones(31))
    with pytest.raises(InterpError, match="kinds"):
        direction_matches(model, direction, kinds=["W_Q"])
    with pytest.raises(InterpError, match="layers"):
        direction_matches(model, direction, layers=[7])
