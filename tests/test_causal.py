"""Causal analysis against TransformerLens' patching sweeps, a planted copying head and exact decompositions."""

from __future__ import annotations

import doctest

import pytest
import torch
from conftest import FAMILY_CONFIGS
from transformer_lens import patching

from interp.analysis import causal
from interp.analysis.causal import (
    ablation,
    activation_patching,
    attribution_patching,
    direct_logit_attribution,
    logit_diff,
    path_patching,
)
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

V = 40
ANS, WRONG = [3, 4, 5], [6, 7, 8]


def random_model(family: str, seed: int = 0, **over) -> HookedDecoder:
    """A tiny random model of a family, its biases and norm gains perturbed so none is trivially 0 or 1."""
    torch.manual_seed(seed)
    cfg = {"d_vocab": V, "n_ctx": 16, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_mlp": 48}
    m = HookedDecoder(DecoderConfig(**{**cfg, **FAMILY_CONFIGS[family], **over})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def pair(batch: int = 3, pos: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(10, V, (batch, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (corrupted[:, 2] + 7) % V
    return clean, corrupted


def tl_metric(logits):
    return logit_diff(logits, torch.tensor(ANS), torch.tensor(WRONG)).mean()


def grid(df, ref: torch.Tensor, order) -> torch.Tensor:
    return torch.tensor(df.sort_values(order).effect.to_numpy()).reshape(ref.shape)


# TransformerLens sweep, our `where`, our options, our column order matching TL's axes
SWEEPS = [
    (patching.get_act_patch_resid_pre, "resid_pre", {}, ["layer", "position"]),
    (patching.get_act_patch_attn_out, "attn_out", {}, ["layer", "position"]),
    (patching.get_act_patch_mlp_out, "mlp_out", {}, ["layer", "position"]),
    (patching.get_act_patch_attn_head_out_by_pos, "z", {}, ["layer", "position", "head"]),
    (patching.get_act_patch_attn_head_out_all_pos, "z", {"by_position": False}, ["layer", "head"]),
    (patching.get_act_patch_attn_head_pattern_by_pos, "pattern", {}, ["layer", "head", "position"]),
    (patching.get_act_patch_attn_head_v_all_pos, "v", {"by_position": False}, ["layer", "head"]),
]


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_sweeps_equal_transformer_lens(family):
    """Cell by cell equal to transformer_lens.patching on the same model and prompts (resid, heads, MLP)."""
    m = random_model(family, n_heads=2)  # TL runs one forward per cell: keep the grids small
    clean, corrupted = pair(pos=4)
    _, clean_cache = m.run_with_cache(clean)
    sweeps = SWEEPS if family == "gpt2" else [SWEEPS[i] for i in (0, 2, 3)]  # every family: resid, mlp, heads
    for tl_fn, where, opts, order in sweeps:
        ref = tl_fn(m, corrupted, clean_cache, tl_metric).double()
        df = activation_patching(m, clean, corrupted, answer=ANS, wrong=WRONG, where=where, batch_size=5, **opts)
        assert len(df) == ref.numel()
        torch.testing.assert_close(grid(df, ref, order), ref, rtol=1e-4, atol=1e-5, msg=f"{family} {where} {opts}")


def test_batched_equals_unbatched_and_budget():
    """k copies per pass (any k, or from a memory budget) give the table of one copy per pass."""
    m = random_model("llama")
    clean, corrupted = pair(batch=2)
    one = activation_patching(m, clean, corrupted, answer=ANS[:2], wrong=WRONG[:2], where="resid_post", batch_size=1)
    for kw in ({"batch_size": 3}, {"batch_size": 1000}, {"memory_budget": 30_000}):
        many = activation_patching(m, clean, corrupted, answer=ANS[:2], wrong=WRONG[:2], where="resid_post", **kw)
        torch.testing.assert_close(torch.tensor(many.effect.values), torch.tensor(one.effect.values),
                                   rtol=1e-5, atol=1e-6)
    assert 1 < many.attrs["copies_per_pass"] < len(many)
    # a callable metric reading every position takes the same batched path (logits before p0 from the cache)
    full = activation_patching(m, clean, corrupted, lambda lg: logit_diff(lg, torch.tensor(ANS[:2]),
                                                                         torch.tensor(WRONG[:2])).mean(),
                               where="resid_post", batch_size=4)
    torch.testing.assert_close(torch.tensor(full.effect.values), torch.tensor(one.effect.values), rtol=1e-5,
                               atol=1e-6)


def test_neuron_patching_equals_transformer_lens_generic():
    """Single MLP neurons: TL's generic_activation_patch over an index_df of (layer, pos, neuron)."""
    import pandas as pd

    m = random_model("gpt2")
    clean, corrupted = pair()
    _, clean_cache = m.run_with_cache(clean)
    neurons = [(0, 5), (1, 7), (1, 40)]
    index_df = pd.DataFrame([(lay, p, n) for lay, n in neurons for p in range(clean.shape[1])],
                            columns=["layer", "pos", "neuron"])

    def setter(act, index, clean_act):
        _, p, n = index
        act[:, p, n] = clean_act[:, p, n]
        return act

    ref = patching.generic_activation_patch(m, corrupted, clean_cache, tl_metric, setter, "post", index_df=index_df)
    df = activation_patching(m, clean, corrupted, answer=ANS, wrong=WRONG, where="post", neurons=neurons)
    torch.testing.assert_close(torch.tensor(df.effect.values), ref.double(), rtol=1e-4, atol=1e-5)


def test_bootstrap_interval_without_transformer_lens_4_draws_the_same(monkeypatch):
    """The interval computed here (what TL 3.x gets) equals TL 4's bootstrap_ci, resample for resample."""
    import sys

    statistics = pytest.importorskip("transformer_lens.utilities.statistics")
    values = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = statistics.bootstrap_ci(values, n_resamples=600, generator=statistics.derive_generator(4, "causal"))
    monkeypatch.setitem(sys.modules, "transformer_lens.utilities.statistics", None)  # as if absent: ImportError
    got = causal.bootstrap_interval(values, 600, 4, "causal")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bootstrap_interval_over_pairs():
    """Per-pair values equal TL's reduce='none' sweep; the interval is TL's bootstrap_ci of them."""
    m = random_model("gpt2")
    clean, corrupted = pair(batch=6)
    ans, wrong = [3] * 6, [6] * 6
    _, clean_cache = m.run_with_cache(clean)
    res = patching.get_act_patch_resid_pre(
        m, corrupted, clean_cache, lambda lg: logit_diff(lg, torch.tensor(ans), torch.tensor(wrong)), reduce="none")
    per = res.values.double().reshape(-1, 6)  # [layer * pos, batch]
    df = activation_patching(m, clean, corrupted, answer=3, wrong=6, where="resid_pre", seed=2)
    torch.testing.assert_close(torch.tensor(df.effect.values), per.mean(-1), rtol=1e-4, atol=1e-5)
    statistics = pytest.importorskip("transformer_lens.utilities.statistics")  # TransformerLens 4.x
    low, high = statistics.bootstrap_ci(per, generator=statistics.derive_generator(2, "causal"))
    torch.testing.assert_close(torch.tensor(df.ci_low.values), low, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(df.ci_high.values), high, rtol=1e-4, atol=1e-5)
    assert (df.ci_low <= df.effect + 1e-9).all() and (df.effect <= df.ci_high + 1e-9).all()


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_dla_components_sum_to_the_logit(family):
    """Embeddings + heads + attention biases + MLPs + norm bias + b_U = the logit (difference), centred or not."""
    m = random_model(family)
    clean, _ = pair()
    for wrong in (None, WRONG):
        for centered in (False, True):
            df = direct_logit_attribution(m, clean, ANS, wrong, centered=centered, position=-2)
            logits = m(clean)[:, -2].double().detach()
            if centered:
                logits = logits - logits.mean(-1, keepdim=True)
            rows = torch.arange(3)
            want = logits[rows, ANS] - (0 if wrong is None else logits[rows, WRONG])
            got = torch.tensor(df[df.kind != "neuron"].contribution.sum())
            torch.testing.assert_close(got, want.mean(), rtol=1e-4, atol=1e-4)
            assert df.attrs["logit"] == pytest.approx(float(want.mean()), rel=1e-5, abs=1e-6)
    # the neuron rows split their MLP row: with every neuron listed, they and b_out sum to each MLP
    full = direct_logit_attribution(m, clean[:1], ANS[0], k_neurons=2 * m.cfg.d_mlp)
    with torch.no_grad():
        _, cache = m.run_with_cache(clean[:1])
        u = causal.final_norm_map(m).direction(m.W_U[:, ANS[0]].double())
    for lay in range(2):
        b_out = m.blocks[lay].mlp.b_out
        bias = 0.0 if b_out is None else float(b_out.detach().double() @ u / cache["ln_final.hook_scale"][0, -1].double())
        neurons = full[(full.kind == "neuron") & (full.layer == lay)].contribution.sum()
        mlp = full[(full.kind == "mlp") & (full.layer == lay)].contribution.item()
        assert neurons + bias == pytest.approx(mlp, abs=1e-6)


# ----------------------------------------------------------------------------------------------------
# a planted circuit: head L0H0 copies the first token to the last position

P = 6
A, B, X = 1, 2, 5  # clean first token, corrupted first token, filler


def copying_model() -> HookedDecoder:
    """Two layers, float64. Residual dims 0..7: token one-hot; 8..15: position one-hot. L0H0's query
    (from every position) matches only position 0's key, and its OV circuit writes position 0's token
    back onto the token dims, which the unembedding reads. Everything else is small random noise."""
    cfg = DecoderConfig(d_vocab=8, n_ctx=8, d_model=32, n_layers=2, n_heads=2, d_head=8, d_mlp=16, norm="rmsnorm",
                        attn_bias=False, mlp_bias=False, dtype="float64")
    torch.manual_seed(0)
    m = HookedDecoder(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln" not in name:  # norm gains stay 1
                p.mul_(0.2)  # small random weights everywhere else (init std 0.02 -> 0.004)
        m.embed.W_E.zero_()
        m.embed.W_E[:, :8] += torch.eye(8, dtype=torch.float64)
        m.pos_embed.W_pos.zero_()
        m.pos_embed.W_pos[:, 8:16] += torch.eye(8, dtype=torch.float64)
        attn = m.blocks[0].attn
        attn.W_Q[0].zero_()
        attn.W_K[0].zero_()
        attn.W_Q[0][8:16, 0] = 3.0  # every position asks the same question ...
        attn.W_K[0][8, 0] = 3.0  # ... that only position 0 answers
        attn.W_V[0].zero_()
        attn.W_V[0][:8, :8] = torch.eye(8, dtype=torch.float64)
        attn.W_O[0].zero_()
        attn.W_O[0][:8, :8] = 2.0 * torch.eye(8, dtype=torch.float64)
        m.unembed.W_U_param.zero_()
        m.unembed.W_U_param[:8, :8] = torch.eye(8, dtype=torch.float64)
    return m


def planted_pair():
    clean = torch.tensor([[A] + [X] * (P - 1)])
    corrupted = torch.tensor([[B] + [X] * (P - 1)])
    return clean, corrupted


def test_planted_copying_head_is_singled_out():
    m = copying_model()
    clean, corrupted = planted_pair()
    lg = m(clean)[0, -1]
    assert lg.argmax() == A and m(corrupted)[0, -1].argmax() == B  # the circuit works

    heads = activation_patching(m, clean, corrupted, answer=A, wrong=B, where="z", by_position=False)
    top = heads.sort_values("normalised", ascending=False).iloc[0]
    assert (top.layer, top["head"]) == (0, 0) and top.normalised == pytest.approx(1.0, abs=0.05)
    assert heads.normalised.iloc[1:].abs().max() < 0.05
    resid = activation_patching(m, clean, corrupted, answer=A, wrong=B, where="resid_pre")
    # before the head, only the first position carries the answer; after it, only the last
    r0 = resid[resid.layer == 0].set_index("position").normalised
    r1 = resid[resid.layer == 1].set_index("position").normalised
    assert r0[0] == pytest.approx(1.0, abs=1e-9) and r0.drop(0).abs().max() < 1e-9
    assert r1[P - 1] == pytest.approx(1.0, abs=0.05) and r1.drop(P - 1).abs().max() < 0.05

    dla = direct_logit_attribution(m, clean, A, B)
    comp = dla[dla.kind != "neuron"].set_index("component").contribution
    assert comp.abs().idxmax() == "L0H0" and comp["L0H0"] > 0.9 * dla.attrs["logit"]

    other = torch.tensor([[3] + [X] * (P - 1), [4] + [X] * (P - 1)])  # first tokens that are neither A nor B
    for method, ref in (("zero", None), ("mean", other), ("resample", other)):
        abl = ablation(m, clean, answer=A, wrong=B, what="heads", method=method, reference=ref)
        row = abl[(abl.layer == 0) & (abl["head"] == 0)].iloc[0]
        assert abs(row.effect) < 0.1 * abl.attrs["baseline"], method  # the effect is gone
        others = abl[~((abl.layer == 0) & (abl["head"] == 0))]
        assert others.change.abs().max() < 0.1 * abl.attrs["baseline"]

    attr = attribution_patching(m, clean, corrupted, answer=A, wrong=B, where="z", by_position=False, exact=True)
    best = attr.loc[attr.attribution.abs().idxmax()]
    assert (best.layer, best["head"]) == (0, 0)
    assert attr.attrs["pearson"] > 0.9

    path = path_patching(m, clean, corrupted, "L0H0", ["logits", "MLP0", "L1H1.v"], answer=A, wrong=B)
    by = path.set_index("receiver").normalised
    assert by["logits"] > 0.9 and abs(by["MLP0"]) < 0.05 and abs(by["L1H1.v"]) < 0.05


def test_path_patching_last_component_equals_activation_patching():
    """The last MLP's (and, with a parallel residual, the last layer's heads') only reader is the logits."""
    for family in ("gpt2", "neox"):
        m = random_model(family)
        clean, corrupted = pair()
        mlp = activation_patching(m, clean, corrupted, answer=ANS, wrong=WRONG, where="mlp_out", by_position=False)
        pp = path_patching(m, clean, corrupted, "MLP1", "logits", answer=ANS, wrong=WRONG)
        assert pp.effect.item() == pytest.approx(mlp[mlp.layer == 1].effect.item(), abs=1e-5)
    heads = activation_patching(m, clean, corrupted, answer=ANS, wrong=WRONG, where="z", by_position=False)
    pp = path_patching(m, clean, corrupted, (1, 2), "logits", answer=ANS, wrong=WRONG)
    assert pp.effect.item() == pytest.approx(heads.query("layer == 1 and head == 2").effect.item(), abs=1e-5)


def test_attribution_patching_is_exact_for_a_linear_path():
    """The unembedding is linear: patching the final resid_post is exactly its first-order estimate
    when there is no final norm, so attribution equals the exact change there."""
    m = random_model("gpt2", final_norm=False)
    clean, corrupted = pair()
    df = attribution_patching(m, clean, corrupted, answer=ANS, wrong=WRONG, where="resid_post", layers=1, exact=True)
    torch.testing.assert_close(torch.tensor(df.attribution.values), torch.tensor(df.exact_change.values),
                               rtol=1e-4, atol=1e-5)


def test_errors_name_the_argument():
    m = random_model("gpt2")
    clean, corrupted = pair()
    cases = [
        (lambda: activation_patching(m, clean, corrupted[:, :4], answer=1, wrong=2), "corrupted"),
        (lambda: activation_patching(m, clean, corrupted, answer=1, wrong=2, where="resid"), "where"),
        (lambda: activation_patching(m, clean, corrupted, answer=1), "wrong"),
        (lambda: activation_patching(m, clean, corrupted, answer=V, wrong=2), "answer"),
        (lambda: activation_patching(m, clean, corrupted, answer=1, wrong=2, where="post"), "neurons"),
        (lambda: activation_patching(m, clean, corrupted, answer=1, wrong=2, batch_size=0), "batch_size"),
        (lambda: activation_patching(random_model("neox"), clean, corrupted, answer=1, wrong=2, where="resid_mid"),
         "where"),
        (lambda: ablation(m, clean, answer=1, wrong=2, method="mean"), "reference"),
        (lambda: ablation(m, clean, answer=1, wrong=2, method="resample", reference=corrupted[:, :3]), "reference"),
        (lambda: path_patching(m, clean, corrupted, "L1H0", "L0H1.q", answer=1, wrong=2), "receivers"),
        (lambda: path_patching(m, clean, corrupted, "logits", answer=1, wrong=2), "sender"),
        (lambda: direct_logit_attribution(m, clean, 1, position=9), "position"),
        (lambda: direct_logit_attribution(random_model("gpt2", norm_placement="post"), clean, 1), "model"),
    ]
    for fn, name in cases:
        with pytest.raises(InterpError, match=name):
            fn()


def test_doctests():
    assert doctest.testmod(causal, optionflags=doctest.ELLIPSIS).failed == 0


def test_kl_and_log_prob_metrics_equal_transformer_lens_with_torch_metrics():
    import torch.nn.functional as F

    m = random_model("llama")
    clean, corrupted = pair()
    clean_logits, clean_cache = m.run_with_cache(clean)
    ref_lp = clean_logits[:, -1].log_softmax(-1)

    def tl_kl(logits):
        lp = logits[:, -1].log_softmax(-1)
        return F.kl_div(lp, ref_lp, log_target=True, reduction="none").sum(-1).mean()

    def tl_logprob(logits):
        return logits[:, -1].log_softmax(-1)[torch.arange(3), ANS].mean()

    for name, fn in (("kl", tl_kl), ("log_prob", tl_logprob)):
        ref = patching.get_act_patch_resid_pre(m, corrupted, clean_cache, fn).double()
        df = activation_patching(m, clean, corrupted, name, answer=ANS)
        torch.testing.assert_close(grid(df, ref, ["layer", "position"]), ref, rtol=1e-4, atol=1e-6)
    # patching the only differing position at layer 0 restores the clean output: KL 0, normalised 1
    row = df[(df.layer == 0) & (df.position == 2)]
    kl = activation_patching(m, clean, corrupted, "kl")
    assert kl[(kl.layer == 0) & (kl.position == 2)].normalised.item() == pytest.approx(1.0, abs=1e-5)
    assert row.normalised.item() == pytest.approx(1.0, abs=1e-5)


def test_zero_ablation_of_mlp_and_neurons_equals_a_hand_hook():
    m = random_model("neox")
    clean, _ = pair()
    base = logit_diff(m(clean), torch.tensor(ANS), torch.tensor(WRONG)).mean().detach()
    mlp = ablation(m, clean, answer=ANS, wrong=WRONG, what="mlp")
    neurons = ablation(m, clean, answer=ANS, wrong=WRONG, what="neurons", neurons=[(0, 3), (1, 10)])
    for lay in range(2):
        lg = m.run_with_hooks(clean, fwd_hooks=[(f"blocks.{lay}.hook_mlp_out", lambda a, hook: a * 0)])
        want = logit_diff(lg, torch.tensor(ANS), torch.tensor(WRONG)).mean().detach()
        assert mlp.effect[lay] == pytest.approx(float(want), abs=1e-5)
    for i, (lay, n) in enumerate([(0, 3), (1, 10)]):
        def zero(a, hook, n=n):
            a = a.clone()
            a[:, :, n] = 0
            return a

        lg = m.run_with_hooks(clean, fwd_hooks=[(f"blocks.{lay}.mlp.hook_post", zero)])
        want = logit_diff(lg, torch.tensor(ANS), torch.tensor(WRONG)).mean().detach()
        assert neurons.effect[i] == pytest.approx(float(want), abs=1e-5)
        assert neurons.change[i] == pytest.approx(float(want - base), abs=1e-5)
