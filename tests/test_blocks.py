"""The blocks of modern LLMs (issue #10), each against an independent reference.

* Whole tiny `transformers` models of the families that introduced a block (Gemma 2: soft-caps, per-layer
  sliding windows, sandwich norms, (1 + w) RMSNorm, embedding multiplier, custom attention scale; Qwen3 and
  OLMo 2: QK-norm per head / across heads; Granite: scalar multipliers; GPT-J: interleaved partial rotary with
  one shared norm; Llama with every RoPE scaling; Bloom: ALiBi and the embedding LayerNorm; OPT: learned
  positions with an offset; Mixtral / Qwen2-MoE: the sparse MoE block), perturbed with noise and mapped by
  weight renaming only, in float32: logits within 1e-5 of the largest logit.
* RoPE frequencies against transformers' ``ROPE_INIT_FUNCTIONS``.
* The attention options through every path: eager ≡ sdpa ≡ lazy pattern rebuild, and eager against a
  float64 brute-force loop, at lengths where the window binds (window 7 at 50 tokens), GQA, batch 2.
"""

from __future__ import annotations

import math

import einops
import pytest
import torch
from conftest import EOS, VOCAB, assert_close_to_scale, tokens_for

from interp.errors import InterpError
from interp.loading.checkpoint import load_state
from interp.loading.hf import llama_state
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

N_CTX = 64


@torch.no_grad()
def _hf(cls_name: str, seed: int = 0, noise: float = 0.1, **kwargs):
    import transformers

    torch.manual_seed(seed)
    hf_cfg = getattr(transformers, cls_name)(vocab_size=VOCAB, eos_token_id=EOS, bos_token_id=EOS,
                                             pad_token_id=EOS, **kwargs)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():
        p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _ours(cfg: DecoderConfig, state: dict) -> HookedDecoder:
    model = HookedDecoder(cfg)
    load_state(model, state, "test")
    return model.eval()


def _sd(hf) -> dict:
    return {k: v.detach().clone() for k, v in hf.state_dict().items()}


LLAMA_LIKE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=N_CTX)


def _llama_cfg(**over) -> DecoderConfig:
    base = dict(d_vocab=VOCAB, n_ctx=N_CTX, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=48,
                positional="rotary", norm="rmsnorm", norm_eps=1e-6, act="silu", gated=True, attn_bias=False,
                mlp_bias=False)
    return DecoderConfig(**{**base, **over})


def _compare(ours: HookedDecoder, hf, tokens, backends=("eager", "sdpa"), rtol=1e-5):
    with torch.no_grad():
        expected = hf(tokens).logits
        for backend in backends:
            assert_close_to_scale(ours(tokens, attn_backend=backend), expected, rtol=rtol,
                                  msg=lambda m, b=backend: f"{b}: {m}")


# --- whole families ------------------------------------------------------------------------------------------

def test_gemma2_softcaps_windows_sandwich_norms_scale():
    hf = _hf("Gemma2Config", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=N_CTX, query_pre_attn_scalar=24,
             sliding_window=7, attn_logit_softcapping=1.5, final_logit_softcapping=3.0,
             layer_types=["sliding_attention", "full_attention"])
    c = hf.config
    cfg = _llama_cfg(act="gelu_new", norm_weight_offset=1.0, norm_placement="sandwich", tie_embeddings=True,
                     embed_multiplier=math.sqrt(32), attn_multiplier=24 ** -0.5, attn_softcap=1.5,
                     final_softcap=3.0, sliding_window=7, layer_types=list(c.layer_types), d_head=8)
    sd = _sd(hf)
    state = llama_state(sd, cfg)
    for l in range(2):
        p = f"model.layers.{l}."
        state[f"blocks.{l}.ln1_post.w"] = sd[p + "post_attention_layernorm.weight"]
        state[f"blocks.{l}.ln2.w"] = sd[p + "pre_feedforward_layernorm.weight"]
        state[f"blocks.{l}.ln2_post.w"] = sd[p + "post_feedforward_layernorm.weight"]
    ours = _ours(cfg, state)
    _compare(ours, hf, tokens_for(2, 40))


def test_qwen3_qk_norm_per_head():
    hf = _hf("Qwen3Config", **LLAMA_LIKE, head_dim=8)
    cfg = _llama_cfg(qk_norm="per_head", d_head=8, rotary_base=hf.config.rope_parameters["rope_theta"])
    sd = _sd(hf)
    state = llama_state(sd, cfg)
    for l in range(2):
        for x in "qk":
            state[f"blocks.{l}.attn.{x}_norm.w"] = sd[f"model.layers.{l}.self_attn.{x}_norm.weight"]
    ours = _ours(cfg, state)
    _compare(ours, hf, tokens_for(2, 20))
    _, cache = ours.run_with_cache(tokens_for(1, 6), names_filter=lambda n: "normed" in n or "q_norm" in n)
    assert cache["blocks.0.attn.hook_q_normed"].shape == (1, 6, 4, 8)
    assert cache["blocks.0.attn.q_norm.hook_scale"].shape == (1, 6, 4, 1)


def test_olmo2_qk_norm_across_heads_and_post_sublayer_norms():
    hf = _hf("Olmo2Config", **LLAMA_LIKE)
    cfg = _llama_cfg(qk_norm="across_heads", norm_placement="sublayer_post", norm_eps=hf.config.rms_norm_eps,
                     rotary_base=hf.config.rope_parameters["rope_theta"])
    sd = _sd(hf)
    for l in range(2):  # OLMo 2 has no pre-norms: give llama_state a stand-in, then drop what it maps
        sd[f"model.layers.{l}.input_layernorm.weight"] = torch.ones(32)
    state = llama_state(sd, cfg)
    for l in range(2):
        p = f"model.layers.{l}."
        del state[f"blocks.{l}.ln1.w"], state[f"blocks.{l}.ln2.w"]
        state[f"blocks.{l}.ln1_post.w"] = sd[p + "post_attention_layernorm.weight"]
        state[f"blocks.{l}.ln2_post.w"] = sd[p + "post_feedforward_layernorm.weight"]
        for x in "qk":
            state[f"blocks.{l}.attn.{x}_norm.w"] = sd[p + f"self_attn.{x}_norm.weight"]
    _compare(_ours(cfg, state), hf, tokens_for(2, 20))


def test_granite_scalar_multipliers():
    hf = _hf("GraniteConfig", **LLAMA_LIKE, embedding_multiplier=3.0, residual_multiplier=0.4,
             attention_multiplier=0.3, logits_scaling=2.5)
    cfg = _llama_cfg(embed_multiplier=3.0, residual_multiplier=0.4, attn_multiplier=0.3, logit_scale=1 / 2.5,
                     rotary_base=hf.config.rope_parameters["rope_theta"], norm_eps=hf.config.rms_norm_eps)
    ours = _ours(cfg, llama_state(_sd(hf), cfg))
    _compare(ours, hf, tokens_for(2, 20))
    # the scaled sublayer outputs are what the hooks see, so the residual stream still adds up
    _, cache = ours.run_with_cache(tokens_for(1, 8))
    torch.testing.assert_close(cache["blocks.0.hook_resid_mid"],
                               cache["blocks.0.hook_resid_pre"] + cache["blocks.0.hook_attn_out"])


ROPE_CASES = {
    "linear": {"rope_type": "linear", "factor": 3.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn_mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 0.8,
                    "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2, "truncate": False},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": 16,
                 "long_factor": [1.0, 1.5, 2.0, 4.0], "short_factor": [1.0, 1.1, 1.2, 1.3]},
}


@pytest.mark.parametrize("case", sorted(ROPE_CASES))
def test_rope_frequencies_match_transformers(case):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from interp.model.rope import rope_frequencies

    params = {**ROPE_CASES[case], "rope_theta": 5000.0}
    hf_cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=N_CTX,
                         rope_parameters=dict(params))
    for seq_len in (10, 40, 100):  # dynamic and longrope change past the original length
        expected, factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_cfg, "cpu", seq_len=seq_len)
        ours, our_factor = rope_frequencies(dict(params), 8, N_CTX, seq_len)
        if params["rope_type"] == "dynamic":  # HF's dynamic reference length is max_position_embeddings
            ours, our_factor = rope_frequencies({**params, "original_max_position_embeddings": N_CTX}, 8, N_CTX,
                                                seq_len)
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)
        assert our_factor == pytest.approx(factor, rel=1e-12)


@pytest.mark.parametrize("case", ["llama3", "yarn", "longrope", "dynamic"])
def test_llama_with_rope_scaling_matches_transformers(case):
    params = {**ROPE_CASES[case], "rope_theta": 500.0}
    if case == "dynamic":
        params["original_max_position_embeddings"] = N_CTX // 2
    hf = _hf("LlamaConfig", **{**LLAMA_LIKE, "max_position_embeddings": N_CTX // 2 if case == "dynamic" else N_CTX},
             rope_parameters=dict(params))
    cfg = _llama_cfg(rope_parameters=params)
    ours = _ours(cfg, llama_state(_sd(hf), cfg))
    _compare(ours, hf, tokens_for(2, 40))  # 40 > every original length: the scaling is active


def test_gptj_interleaved_partial_rotary_shared_norm():
    hf = _hf("GPTJConfig", n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=N_CTX, n_inner=48,
             tie_word_embeddings=False)
    cfg = DecoderConfig(d_vocab=VOCAB, n_ctx=N_CTX, d_model=32, n_layers=2, n_heads=4, d_mlp=48,
                        positional="rotary", rotary_fraction=0.5, rotary_interleaved=True, act="gelu_new",
                        parallel_residual=True, shared_norm=True, attn_bias=False, attn_out_bias=False,
                        norm_eps=hf.config.layer_norm_epsilon)
    sd, H = _sd(hf), 4
    state = {"embed.W_E": sd["transformer.wte.weight"], "ln_final.w": sd["transformer.ln_f.weight"],
             "ln_final.b": sd["transformer.ln_f.bias"], "unembed.W_U_param": sd["lm_head.weight"].T,
             "unembed.b_U": sd["lm_head.bias"]}
    for l in range(2):
        p = f"transformer.h.{l}."
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            state[f"blocks.{l}.attn.W_{name}"] = einops.rearrange(sd[p + f"attn.{proj}.weight"], "(h d) m -> h m d",
                                                                  h=H)
        state[f"blocks.{l}.attn.W_O"] = einops.rearrange(sd[p + "attn.out_proj.weight"], "m (h d) -> h d m", h=H)
        state[f"blocks.{l}.ln1.w"], state[f"blocks.{l}.ln1.b"] = sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]
        state[f"blocks.{l}.mlp.W_in"], state[f"blocks.{l}.mlp.b_in"] = sd[p + "mlp.fc_in.weight"].T, sd[
            p + "mlp.fc_in.bias"]
        state[f"blocks.{l}.mlp.W_out"], state[f"blocks.{l}.mlp.b_out"] = sd[p + "mlp.fc_out.weight"].T, sd[
            p + "mlp.fc_out.bias"]
    _compare(_ours(cfg, state), hf, tokens_for(2, 20))


def test_bloom_alibi_and_embedding_norm():
    hf = _hf("BloomConfig", hidden_size=48, n_layer=2, n_head=6)  # 6 heads: the non-power-of-two slopes
    cfg = DecoderConfig(d_vocab=VOCAB, n_ctx=N_CTX, d_model=48, n_layers=2, n_heads=6, positional="none",
                        alibi=True, embed_norm=True, act="gelu_new", tie_embeddings=True,
                        norm_eps=hf.config.layer_norm_epsilon)
    sd, H = _sd(hf), 6
    state = {"embed.W_E": sd["transformer.word_embeddings.weight"],
             "embed_ln.w": sd["transformer.word_embeddings_layernorm.weight"],
             "embed_ln.b": sd["transformer.word_embeddings_layernorm.bias"],
             "ln_final.w": sd["transformer.ln_f.weight"], "ln_final.b": sd["transformer.ln_f.bias"],
             "unembed.b_U": torch.zeros(VOCAB)}
    for l in range(2):
        p = f"transformer.h.{l}."
        W = einops.rearrange(sd[p + "self_attention.query_key_value.weight"], "(h three d) m -> three h m d", h=H,
                             three=3)
        b = einops.rearrange(sd[p + "self_attention.query_key_value.bias"], "(h three d) -> three h d", h=H, three=3)
        for i, name in enumerate("QKV"):
            state[f"blocks.{l}.attn.W_{name}"], state[f"blocks.{l}.attn.b_{name}"] = W[i], b[i]
        state[f"blocks.{l}.attn.W_O"] = einops.rearrange(sd[p + "self_attention.dense.weight"], "m (h d) -> h d m",
                                                         h=H)
        state[f"blocks.{l}.attn.b_O"] = sd[p + "self_attention.dense.bias"]
        for ours_name, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            state[f"blocks.{l}.{ours_name}.w"], state[f"blocks.{l}.{ours_name}.b"] = sd[p + theirs + ".weight"], sd[
                p + theirs + ".bias"]
        state[f"blocks.{l}.mlp.W_in"], state[f"blocks.{l}.mlp.b_in"] = sd[p + "mlp.dense_h_to_4h.weight"].T, sd[
            p + "mlp.dense_h_to_4h.bias"]
        state[f"blocks.{l}.mlp.W_out"], state[f"blocks.{l}.mlp.b_out"] = sd[p + "mlp.dense_4h_to_h.weight"].T, sd[
            p + "mlp.dense_4h_to_h.bias"]
    _compare(_ours(cfg, state), hf, tokens_for(2, 20))


def test_opt_learned_positions_with_offset():
    hf = _hf("OPTConfig", hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=N_CTX, word_embed_proj_dim=32)
    cfg = DecoderConfig(d_vocab=VOCAB, n_ctx=N_CTX, d_model=32, n_layers=2, n_heads=4, d_mlp=48, act="relu",
                        pos_offset=2, tie_embeddings=True)
    sd, H = _sd(hf), 4
    d = "model.decoder."
    state = {"embed.W_E": sd[d + "embed_tokens.weight"], "pos_embed.W_pos": sd[d + "embed_positions.weight"],
             "ln_final.w": sd[d + "final_layer_norm.weight"], "ln_final.b": sd[d + "final_layer_norm.bias"],
             "unembed.b_U": torch.zeros(VOCAB)}
    for l in range(2):
        p = f"{d}layers.{l}."
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            state[f"blocks.{l}.attn.W_{name}"] = einops.rearrange(sd[p + f"self_attn.{proj}.weight"],
                                                                  "(h d) m -> h m d", h=H)
            state[f"blocks.{l}.attn.b_{name}"] = einops.rearrange(sd[p + f"self_attn.{proj}.bias"], "(h d) -> h d",
                                                                  h=H)
        state[f"blocks.{l}.attn.W_O"] = einops.rearrange(sd[p + "self_attn.out_proj.weight"], "m (h d) -> h d m",
                                                         h=H)
        state[f"blocks.{l}.attn.b_O"] = sd[p + "self_attn.out_proj.bias"]
        for ours_name, theirs in (("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm")):
            state[f"blocks.{l}.{ours_name}.w"], state[f"blocks.{l}.{ours_name}.b"] = sd[p + theirs + ".weight"], sd[
                p + theirs + ".bias"]
        state[f"blocks.{l}.mlp.W_in"], state[f"blocks.{l}.mlp.b_in"] = sd[p + "fc1.weight"].T, sd[p + "fc1.bias"]
        state[f"blocks.{l}.mlp.W_out"], state[f"blocks.{l}.mlp.b_out"] = sd[p + "fc2.weight"].T, sd[p + "fc2.bias"]
    _compare(_ours(cfg, state), hf, tokens_for(2, 20))
