"""Steering vectors, the steer context, SAE features as directions, and the effect table.

References: the contrastive mean computed from cached activations; the closed form of adding ``c * W_U[:, t]``
to the final residual stream (``Δlogit = c * W_U[:, t] @ W_U``, through the final LayerNorm computed by hand
where the model has one); KV-cached steered generation against the same generation without a cache.
"""

from __future__ import annotations

import pytest
import torch
from conftest import perturbed_float64_model

from interp.analysis.sae import SAE, SAEConfig
from interp.analysis.steering import feature_direction, steer, steering_effect, steering_vector
from interp.errors import InterpError
from interp.model.transformer import HookedDecoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: two threads only oversubscribe

V = 40


def tiny(family="gpt2", seed=0, **over) -> HookedDecoder:
    return perturbed_float64_model(family, seed, d_vocab=V, n_ctx=24, **over)


LAST = "blocks.1.hook_resid_post"


@pytest.mark.parametrize("position", ["last", "mean"])
def test_steering_vector_is_the_contrastive_mean(position):
    m = tiny()
    pos = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(1))
    neg = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(2))
    hook = "blocks.0.hook_resid_mid"
    _, cp = m.run_with_cache(pos)
    _, cn = m.run_with_cache(neg)
    pick = (lambda a: a[:, -1]) if position == "last" else (lambda a: a.mean(1))
    want = pick(cp[hook]).mean(0) - pick(cn[hook]).mean(0)
    got = steering_vector(m, pos, [neg[0].tolist(), neg[1].tolist()], hook, position=position)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    ragged = steering_vector(m, [pos[0, :3].tolist(), pos[1].tolist()], neg[0], hook, position=position)
    _, c0 = m.run_with_cache(pos[0, :3])
    want = (pick(c0[hook])[0] + pick(cp[hook])[1]) / 2 - pick(cn[hook])[0]
    torch.testing.assert_close(ragged, want, rtol=1e-10, atol=1e-12)  # prompts of any lengths


@pytest.mark.parametrize("final_norm", [False, True])
def test_planted_direction_moves_the_logits_as_the_closed_form_says(final_norm):
    m = tiny(final_norm=final_norm)
    toks = torch.tensor([[3, 9, 14, 2, 7]])
    t, c = 11, 2.5
    d = m.W_U[:, t].detach().clone()
    base, cache = m.run_with_cache(toks)
    with steer(m, d, LAST, scale=c):
        steered = m(toks)
    if not final_norm:  # Δlogits = c d @ W_U exactly; the planted token moves by c |W_U[:, t]|²
        torch.testing.assert_close(steered - base, (c * d @ m.W_U).expand_as(base), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(float(steered[0, -1, t] - base[0, -1, t]), c * float(d @ d), rtol=1e-9, atol=0)
    else:  # through the final LayerNorm, by hand
        x = cache[LAST] + c * d
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + m.cfg.norm_eps).sqrt() * m.ln_final.w + m.ln_final.b
        torch.testing.assert_close(steered, x @ m.W_U + m.b_U, rtol=1e-9, atol=1e-10)
    effect = steering_effect(m, toks, d, LAST, scales=[0.0, c, 50.0], targets=[t], k=3)
    assert effect.scale.tolist() == [0.0, c, 50.0]
    torch.testing.assert_close(float(effect.kl[0]), 0.0, rtol=0, atol=1e-12)
    assert effect.kl[1] > 0
    torch.testing.assert_close(float(effect[f"logit_{t}"][1]), float(steered[0, -1, t]), rtol=1e-10, atol=1e-10)
    assert effect.top_tokens[2][0] == f"<{t}>"  # a large push makes it the top token
    assert len(effect.top_probs[0]) == 3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_steered_generation_with_and_without_kv_cache(family):
    """Positions are absolute, also in KV-cached steps: position 6 lies in the generated part."""
    m = tiny(family)
    toks = torch.tensor([[3, 9, 14, 2, 7]])
    d = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    outs = {}
    for positions in (None, [1, 6]):
        for cache in (True, False):
            with steer(m, d, "blocks.0.hook_resid_post", scale=4.0, positions=positions):
                outs[positions is None, cache] = m.generate(toks, max_new_tokens=6, do_sample=False, verbose=False,
                                                            use_past_kv_cache=cache, stop_at_eos=False)
        assert torch.equal(outs[positions is None, True], outs[positions is None, False])
    plain = m.generate(toks, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False)
    assert not torch.equal(outs[True, True], plain)  # steering changed something...
    assert not m.hook_dict["blocks.0.hook_resid_post"].fwd_hooks  # ...and left no hook behind
    # positions in a full forward: only those rows move
    with steer(m, d, "blocks.0.hook_resid_post", scale=4.0, positions=[1, 3]):
        _, c = m.run_with_cache(toks)
    _, ref = m.run_with_cache(toks)
    delta = c["blocks.0.hook_resid_post"] - ref["blocks.0.hook_resid_post"]
    torch.testing.assert_close(delta[0, [1, 3]], (4.0 * d).expand(2, -1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(delta[0, [0, 2, 4]], torch.zeros(3, 32, dtype=torch.float64), rtol=0, atol=1e-12)


def test_sae_feature_as_direction():
    m = tiny()
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="relu", dtype="float64", metadata={"hook_name": LAST}))
    d = feature_direction(sae, 5)
    torch.testing.assert_close(d, sae.W_dec[5].detach(), rtol=0, atol=0)
    torch.testing.assert_close(float(feature_direction(sae, 5, normalize=True).norm()), 1.0, rtol=1e-12, atol=0)
    toks = torch.tensor([[1, 2, 3]])
    _, cache = m.run_with_cache(toks)
    with steer(m, d, LAST, scale=3.0):
        _, steered = m.run_with_cache(toks)
    torch.testing.assert_close(steered[LAST] - cache[LAST], (3.0 * sae.W_dec[5].detach()).expand(1, 3, -1))


def test_bad_input_is_one_clear_line():
    m = tiny()
    d = torch.ones(32, dtype=torch.float64)
    sae = SAE(SAEConfig(d_in=32, d_sae=8, architecture="relu"))
    cases = [
        (lambda: steering_vector(m, [1, 2], [3, 4], "blocks.9.hook_resid_post"), "hook: 'blocks.9.hook_resid_post'"),
        (lambda: steering_vector(m, [], [3, 4], LAST), "positive: expected a prompt"),
        (lambda: steering_vector(m, [[]], [3, 4], LAST), "positive: "),
        (lambda: steering_vector(m, [1, 2], [3, 4], LAST, position="first"), "position: must be one of"),
        (lambda: steer(m, d, "hook_nope").__enter__(), "hook: 'hook_nope'"),
        (lambda: steer(m, d, LAST, scale=float("nan")).__enter__(), "scale: must be a finite number"),
        (lambda: steer(m, d, LAST, positions=[-1]).__enter__(), "positions: "),
        (lambda: steer(m, torch.tensor(3), LAST).__enter__(), "direction: expected"),
        (lambda: feature_direction(sae, 8), "feature: must be an int in [0, 8)"),
        (lambda: feature_direction(m, 0), "sae: expected"),
        (lambda: steering_effect(m, [1, 2], d, LAST, k=0), "k: must be an int in"),
        (lambda: steering_effect(m, [1, 2], d, LAST, targets=[V]), "targets: "),
    ]
    for call, text in cases:
        with pytest.raises(InterpError) as e:
            call()
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(InterpError, match="does not match the trailing axes"), steer(m, torch.ones(7), LAST):
        m(torch.tensor([[1, 2]]))
    assert not m.hook_dict[LAST].fwd_hooks
