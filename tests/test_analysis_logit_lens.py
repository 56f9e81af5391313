"""Logit lens and tuned lens, checked against independent references.

* the last lens layer is the model's own distribution (softmax of the model's logits);
* layer ``l`` of the lens equals the *output* of a copy of the model whose blocks ``l..`` are made the
  identity (attention W_O/b_O and MLP W_out/b_out zeroed): the planted construction behind the lens;
* TransformerLens' own logit lens (``accumulated_resid`` + ``apply_ln_to_stack(recompute_ln=True)``);
* entropy / KL / ranks against scipy and numpy closed forms;
* the tuned lens beats the logit lens after brief training, and saves/loads exactly.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAMILY_CONFIGS
from scipy.special import rel_entr
from scipy.stats import entropy as scipy_entropy

from interp.analysis.logit_lens import LENS_COLUMNS, layer_names, logit_lens, summarize_lens
from interp.analysis.tuned_lens import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    TunedLens,
    evaluate_lenses,
    train_tuned_lens,
    tuned_lens,
)
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

V = 64
# init_std 0.3 makes the random models' distributions peaked enough that the comparisons below are
# not comparisons of near-uniform vectors.
BASE = {"d_vocab": V, "n_ctx": 16, "d_model": 32, "n_layers": 3, "n_heads": 4, "init_std": 0.3}
FAMILIES = FAMILY_CONFIGS


def make_model(family: str = "gpt2", seed: int = 0, **kw) -> HookedDecoder:
    torch.manual_seed(seed)
    return HookedDecoder(DecoderConfig(**{**BASE, **FAMILIES[family], **kw})).eval()


@torch.no_grad()
def softmax_out(model, tokens) -> np.ndarray:
    """The model's own next-token distribution, float64 [batch, pos, vocab]."""
    return torch.softmax(model(tokens).double(), -1).numpy()


def make_tokens(batch=2, pos=7, seed=1) -> torch.Tensor:
    return torch.randint(0, V, (batch, pos), generator=torch.Generator().manual_seed(seed))


def identity_from(model: HookedDecoder, first_block: int) -> HookedDecoder:
    """A copy of ``model`` whose blocks ``first_block..`` add exactly zero to the residual stream."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for block in m.blocks[first_block:]:
            for p in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
                if p is not None:
                    p.zero_()
    return m


def probs_of(df, layer):
    """[batch, pos, vocab] probabilities of one layer from a full-vocabulary lens frame."""
    d = df[df.layer == layer]
    out = np.full((int(d.batch.max()) + 1, int(d.position.max()) + 1, V), np.nan)
    out[d.batch.values, d.position.values, d.token_id.values] = d.prob.values
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_last_layer_is_the_models_own_distribution(family):
    model, tokens = make_model(family), make_tokens()
    df = logit_lens(model, tokens, k=V)
    assert list(df.columns) == LENS_COLUMNS
    ref = softmax_out(model, tokens)
    got = probs_of(df, model.cfg.n_layers)
    assert np.abs(got - ref).max() <= 1e-6
    last = df[(df.layer == model.cfg.n_layers) & (df["rank"] == 1)]
    # target="final" is the model's argmax: rank 1 at the last layer, KL(final || final) = 0
    assert (last.target_rank == 1).all() and (last.target_id == last.token_id).all()
    assert last.kl.abs().max() <= 1e-6
    assert np.allclose(last.entropy.values, scipy_entropy(ref.reshape(-1, V), axis=-1), atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_layer_l_equals_model_with_blocks_from_l_made_identity(family):
    model, tokens = make_model(family), make_tokens()
    df = logit_lens(model, tokens, k=V)
    n = model.cfg.n_layers
    final = softmax_out(model, tokens)
    for layer in range(n + 1):
        ref = softmax_out(identity_from(model, layer), tokens)
        assert np.abs(probs_of(df, layer) - ref).max() <= 1e-6, layer
        # KL(final || layer) and entropy of that layer against scipy
        kl_ref = rel_entr(final, ref).sum(-1)
        cell = df[(df.layer == layer) & (df["rank"] == 1)].sort_values(["batch", "position"])
        assert np.allclose(cell.kl.values, kl_ref.reshape(-1), atol=1e-5), layer
    # the brief's special case: a last block that is the identity makes the last two rows agree
    df2 = logit_lens(identity_from(model, n - 1), tokens, k=5)
    a, b = df2[df2.layer == n - 1], df2[df2.layer == n]
    assert (a.token_id.values == b.token_id.values).all()
    assert np.abs(a.prob.values - b.prob.values).max() <= 1e-6


def test_matches_transformer_lens_logit_lens():
    model, tokens = make_model("llama"), make_tokens()
    _, cache = model.run_with_cache(tokens)
    stack = cache.accumulated_resid(apply_ln=False)
    ref_logits = cache.apply_ln_to_stack(stack, recompute_ln=True) @ model.W_U + model.b_U
    ref = torch.softmax(ref_logits.double(), -1).detach().numpy()
    df = logit_lens(model, tokens, k=V)
    for layer in range(model.cfg.n_layers + 1):
        # TransformerLens' cache runs attention eagerly (it caches patterns); ours may run fused: 1e-5
        assert np.abs(probs_of(df, layer) - ref[layer]).max() <= 1e-5


def test_targets_ranks_positions_and_summary():
    model, tokens = make_model("neox"), make_tokens(batch=3, pos=6)
    n = model.cfg.n_layers
    df = logit_lens(model, tokens, k=4, target="next", positions=[0, -1, 3])
    assert sorted(df.position.unique()) == [0, 3, 5]
    assert len(df) == (n + 1) * 3 * 3 * 4
    assert (
        list(df[df.layer <= n].layer_name.unique())
        == layer_names(n)
        == ["embed", "after block 0", "after block 1", "after block 2"]
    )
    p = softmax_out(model, tokens)
    last = df[(df.layer == n) & (df["rank"] == 1)]
    for row in last.itertuples():
        if row.position == 5:  # no next token at the last position
            assert row.target_id == -1 and np.isnan(row.target_prob) and pd.isna(row.target_rank)
            continue
        nxt = int(tokens[row.batch, row.position + 1])
        assert row.target_id == nxt
        assert abs(row.target_prob - p[row.batch, row.position, nxt]) <= 1e-6
        assert row.target_rank == 1 + int(
            (p[row.batch, row.position] > p[row.batch, row.position, nxt]).sum()
        )
    # top-k are sorted, ranks 1..k
    for _, g in df.groupby(["batch", "layer", "position"]):
        assert list(g["rank"]) == [1, 2, 3, 4] and (np.diff(g.prob.values) <= 0).all()
    # a fixed target id and a per-position tensor target agree
    a = logit_lens(model, tokens, k=1, target=7)
    b = logit_lens(model, tokens, k=1, target=torch.full_like(tokens, 7))
    assert np.array_equal(a.target_prob.values, b.target_prob.values)
    s = summarize_lens(df)
    assert len(s) == (n + 1) * 3 * 3 and s.top_prob.between(0, 1).all()
    assert (s.kl >= -1e-6).all()


def test_bad_input_names_the_argument():
    model, tokens = make_model(), make_tokens()
    with pytest.raises(InterpError, match="k"):
        logit_lens(model, tokens, k=0)
    with pytest.raises(InterpError, match="target"):
        logit_lens(model, tokens, target="nope")
    with pytest.raises(InterpError, match="target"):
        logit_lens(model, tokens, target=V)
    with pytest.raises(InterpError, match="positions"):
        logit_lens(model, tokens, positions=[99])
    with pytest.raises(InterpError, match="tokens"):
        logit_lens(model, torch.tensor([[0, V]]))


# --- tuned lens ------------------------------------------------------------------------------------
def corpus(n_batches, seed, batch=8, pos=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (batch, pos), generator=g) for _ in range(n_batches)]


def test_untrained_tuned_lens_is_the_logit_lens():
    model, tokens = make_model("gpt2"), make_tokens()
    a = logit_lens(model, tokens, k=3)
    b = tuned_lens(model, tokens, TunedLens.for_model(model), k=3)
    assert (a.token_id.values == b.token_id.values).all()
    assert np.abs(a.prob.values - b.prob.values).max() <= 1e-6


def test_tuned_lens_training_lowers_kl_and_keeps_the_model_frozen(tmp_path):
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    lens = train_tuned_lens(model, corpus(16, seed=2), steps=40, lr=1e-2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())

    held_out = corpus(3, seed=3)
    table = evaluate_lenses(model, held_out, lens)
    assert list(table.columns) == ["layer", "layer_name", "lens", "kl", "ce"]
    kl = table.pivot(index="layer", columns="lens", values="kl")
    ce = table.pivot(index="layer", columns="lens", values="ce")
    assert kl.loc[0, "tuned"] < 0.7 * kl.loc[0, "logit"]  # the early layer is where the lens helps
    assert (kl["tuned"][:-1] < kl["logit"][:-1]).all()
    n = model.cfg.n_layers
    # the last layer is the model itself for both lenses: KL 0 and CE = the model's own loss
    assert abs(kl.loc[n, "logit"]) < 1e-6 and abs(kl.loc[n, "tuned"]) < 1e-6
    loss = torch.stack([model(t, return_type="loss") for t in held_out]).mean().item()
    assert abs(ce.loc[n, "logit"] - loss) < 1e-5 and abs(ce.loc[n, "tuned"] - loss) < 1e-5

    # same columns as the logit lens; the last layer is unchanged by the lens
    tokens = held_out[0][:2]
    df_t, df_l = tuned_lens(model, tokens, lens, k=3), logit_lens(model, tokens, k=3)
    assert list(df_t.columns) == LENS_COLUMNS
    assert np.abs(df_t[df_t.layer == n].prob.values - df_l[df_l.layer == n].prob.values).max() <= 1e-6

    # save / load round trip (safetensors + JSON, nothing else left behind)
    lens.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["n_layers"] == n and meta["info"]["steps"] == 40
    back = TunedLens.load(tmp_path, model)
    for (k1, v1), (k2, v2) in zip(lens.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    df_b = tuned_lens(model, tokens, back, k=3)
    assert np.array_equal(df_b.prob.values, df_t.prob.values)

    # a mismatched pair of files, or a different model, is refused with a clear error
    meta["weights_sha256"] = "0" * 64
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(InterpError, match="does not match"):
        TunedLens.load(tmp_path)
    with pytest.raises(InterpError, match="lens"):
        tuned_lens(make_model("gpt2", n_layers=2), tokens, lens)


def test_tuned_lens_training_is_deterministic():
    model = make_model("neox")
    data = corpus(4, seed=5, batch=4, pos=8)
    a = train_tuned_lens(model, data, steps=5, lr=1e-2, seed=3, progress=False)
    b = train_tuned_lens(model, data, steps=5, lr=1e-2, seed=3, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(InterpError, match="steps"):
        train_tuned_lens(model, data, steps=0, progress=False)
    with pytest.raises(InterpError, match="token_batches"):
        train_tuned_lens(model, [], progress=False)


def test_float64_model_text_input_and_float64_lens_round_trip(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["<eos>", "the", "cat", "sat", "on", "mat"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tok.pre_tokenizer = Whitespace()
    torch.manual_seed(0)
    model = HookedDecoder(DecoderConfig(**{**BASE, "dtype": "float64"}), tokenizer=tok).eval()
    df = logit_lens(model, "the cat sat on the mat", k=V)
    assert df[df.layer == 0].groupby("position").input_token.first().tolist() == [
        "the", "cat", "sat", "on", "the", "mat",
    ]  # fmt: skip
    ref = softmax_out(model, model.to_tokens("the cat sat on the mat"))
    assert np.abs(probs_of(df, model.cfg.n_layers) - ref).max() <= 1e-12
    lens = TunedLens.for_model(model)
    assert lens.translators[0].weight.dtype == torch.float64
    a = tuned_lens(model, "the cat sat", lens, k=3)
    b = logit_lens(model, "the cat sat", k=3)
    assert np.abs(a.prob.values - b.prob.values).max() <= 1e-12
    back = TunedLens.load(lens.save(tmp_path), model)
    assert back.translators[0].weight.dtype == torch.float64
