"""Every hook we share with TransformerLens' ``TransformerBridge`` holds the same activation as the bridge's.

The bridge (TransformerLens 4.3) wraps the very same `transformers` model and exposes TransformerLens hook
names on it, so it is an independent reference for what each hook name should contain. It is built offline:
``boot_transformers`` is given the HF model object and a tokenizer saved in a local folder (the bridge
re-opens the tokenizer by path), and reads no config from a hub.

Differences between the two, checked or documented here rather than papered over:

* ``hook_attn_scores``: masked (future) entries are −inf in ours and ``torch.finfo(dtype).min`` in the
  bridge's; the visible entries must agree and the masked ones must be masked in both.
* hooks only the bridge has (``hook_cos``/``hook_sin``, ``attn.hook_hidden_states``, ``hook_unembed``, the
  ``*.hook_in``/``hook_out`` of its wrapped submodules) have no counterpart in our contract.
* GPT-NeoX: the bridge has no ``hook_rot_q``/``hook_rot_k``; we do. Neither has ``hook_resid_mid`` with a
  parallel residual (there is no such point in the computation).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import HF_FAMILIES, tokens_for

import interp

ATOL = 1e-5

# The hooks the issue requires to match, per layer (plus the global ones below).
REQUIRED_BLOCK_HOOKS = [
    "hook_resid_pre", "hook_resid_post", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern",
    "attn.hook_z", "hook_attn_out", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
]


@pytest.fixture(scope="module")
def bridge_pair_factory(hf_model_factory, hf_tokenizer_dir, tmp_path_factory):
    """family -> (our model, bridge) built from the same perturbed HF weights."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    made = {}

    def factory(family: str):
        if family not in made:
            hf = hf_model_factory(family)
            folder = tmp_path_factory.mktemp(f"bridge_{family}")
            hf.config.save_pretrained(folder)  # model_name must name a local folder, never a hub id
            tokenizer = AutoTokenizer.from_pretrained(hf_tokenizer_dir)
            # The bridge switches the HF model to eager attention and wraps its modules: give it its own copy.
            bridge = TransformerBridge.boot_transformers(
                str(folder), hf_model=copy.deepcopy(hf), tokenizer=tokenizer, device="cpu"
            )
            made[family] = (interp.load(hf), bridge)
        return made[family]

    return factory


def _caches(ours, bridge, tokens):
    with torch.no_grad():
        bridge_logits, bridge_cache = bridge.run_with_cache(tokens)
        our_logits, our_cache = ours.run_with_cache(tokens, attn_backend="eager")
    return our_logits, our_cache, bridge_logits, bridge_cache


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_every_shared_hook_matches_the_bridge(bridge_pair_factory, family):
    from transformer_lens.benchmarks.utils import compare_activation_dicts

    ours, bridge = bridge_pair_factory(family)
    tokens = tokens_for(batch=2, pos=13, seed=11)
    our_logits, our_cache, bridge_logits, bridge_cache = _caches(ours, bridge, tokens)
    torch.testing.assert_close(our_logits, bridge_logits, atol=ATOL, rtol=0)

    required = {"hook_embed", "ln_final.hook_normalized", "ln_final.hook_scale"}
    for layer in range(ours.cfg.n_layers):
        required |= {f"blocks.{layer}.{name}" for name in REQUIRED_BLOCK_HOOKS}
        required |= {f"blocks.{layer}.ln1.hook_normalized", f"blocks.{layer}.ln2.hook_normalized"}
        if not ours.cfg.parallel_residual:
            required.add(f"blocks.{layer}.hook_resid_mid")
        if ours.cfg.positional == "rotary" and family != "neox":
            required |= {f"blocks.{layer}.attn.hook_rot_q", f"blocks.{layer}.attn.hook_rot_k"}
    if ours.cfg.positional == "learned":
        required.add("hook_pos_embed")
    ours_d, bridge_d = dict(our_cache.items()), dict(bridge_cache.items())
    shared = set(ours_d) & set(bridge_d)
    assert required <= shared, f"hooks missing from one side: {sorted(required - shared)}"

    scores = {k for k in shared if k.endswith("hook_attn_scores")}
    mismatches = compare_activation_dicts(
        {k: ours_d[k] for k in shared - scores}, {k: bridge_d[k] for k in shared - scores}, atol=ATOL
    )
    assert not mismatches, mismatches
    # Same shapes exactly (compare_activation_dicts would forgive a missing batch dimension).
    for k in shared:
        assert ours_d[k].shape == bridge_d[k].shape, (k, ours_d[k].shape, bridge_d[k].shape)
    for k in scores:
        visible = torch.isfinite(ours_d[k])
        assert visible.any() and (~visible).any()
        torch.testing.assert_close(ours_d[k][visible], bridge_d[k][visible], atol=ATOL, rtol=0)
        assert (bridge_d[k][~visible] <= torch.finfo(torch.float32).min / 2).all()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_head_ablation_matches_the_bridge(bridge_pair_factory, family):
    """Editing a hook has the same effect on both: zero head 1 of layer 0 (hook_z) and one MLP's output."""
    ours, bridge = bridge_pair_factory(family)
    tokens = tokens_for(batch=2, pos=10, seed=12)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    def zero(act, hook):
        return torch.zeros_like(act)

    hooks = [("blocks.0.attn.hook_z", zero_head), ("blocks.1.hook_mlp_out", zero)]
    with torch.no_grad():
        ref = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        got = ours.run_with_hooks(tokens, fwd_hooks=hooks)
        clean = ours(tokens)
    assert (got - clean).abs().max() > 1e-3  # the ablation did something
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_cache_methods_match_the_bridge(bridge_pair_factory, family):
    """TransformerLens' ActivationCache methods give the same numbers on our cache and on the bridge's."""
    ours, bridge = bridge_pair_factory(family)
    tokens = tokens_for(batch=2, pos=9, seed=13)
    _, our_cache, _, bridge_cache = _caches(ours, bridge, tokens)
    torch.testing.assert_close(
        our_cache.accumulated_resid(apply_ln=True), bridge_cache.accumulated_resid(apply_ln=True),
        atol=ATOL, rtol=0,
    )
    torch.testing.assert_close(
        our_cache.decompose_resid(apply_ln=True).sum(0), bridge_cache.decompose_resid(apply_ln=True).sum(0),
        atol=ATOL, rtol=0,
    )
