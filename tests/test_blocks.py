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
from dataclasses import replace

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


def _put(state: dict, ours: str, sd: dict, theirs: str, names=("W_in", "b_in"), transpose=True) -> None:
    """A transformers Linear (or norm) ``theirs`` -> our weight/bias pair under ``ours`` (weights transposed)."""
    w = sd[theirs + ".weight"]
    state[f"{ours}.{names[0]}"] = w.T if transpose else w
    state[f"{ours}.{names[1]}"] = sd[theirs + ".bias"]


def _heads_in(w: torch.Tensor, heads: int) -> torch.Tensor:
    return einops.rearrange(w, "(h d) m -> h m d", h=heads)  # a [heads*d, d_model] projection, per head


def _heads_out(w: torch.Tensor, heads: int) -> torch.Tensor:
    return einops.rearrange(w, "m (h d) -> h d m", h=heads)


def _sd(hf) -> dict:
    return {k: v.detach().clone() for k, v in hf.state_dict().items()}


LLAMA_LIKE = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_position_embeddings": N_CTX}


def _llama_cfg(**over) -> DecoderConfig:
    base = {"d_vocab": VOCAB, "n_ctx": N_CTX, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_mlp": 48,
                "positional": "rotary", "norm": "rmsnorm", "norm_eps": 1e-6, "act": "silu", "gated": True, "attn_bias": False,
                "mlp_bias": False}
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
    _compare(_ours(cfg, _gemma_state(_sd(hf), cfg)), hf, tokens_for(2, 40))


def _gemma_state(sd: dict, cfg: DecoderConfig) -> dict:
    """Gemma 2/3: Llama's names plus sandwich norms (and QK-norm when the config has it)."""
    state = llama_state(sd, cfg)
    for l in range(cfg.n_layers):
        p = f"model.layers.{l}."
        state[f"blocks.{l}.ln1_post.w"] = sd[p + "post_attention_layernorm.weight"]
        state[f"blocks.{l}.ln2.w"] = sd[p + "pre_feedforward_layernorm.weight"]
        state[f"blocks.{l}.ln2_post.w"] = sd[p + "post_feedforward_layernorm.weight"]
        for x in "qk" if cfg.qk_norm else "":
            state[f"blocks.{l}.attn.{x}_norm.w"] = sd[p + f"self_attn.{x}_norm.weight"]
    return state


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
            state[f"blocks.{l}.attn.W_{name}"] = _heads_in(sd[p + f"attn.{proj}.weight"], H)
        state[f"blocks.{l}.attn.W_O"] = _heads_out(sd[p + "attn.out_proj.weight"], H)
        _put(state, f"blocks.{l}.ln1", sd, p + "ln_1", ("w", "b"), transpose=False)
        _put(state, f"blocks.{l}.mlp", sd, p + "mlp.fc_in")
        _put(state, f"blocks.{l}.mlp", sd, p + "mlp.fc_out", ("W_out", "b_out"))
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
        state[f"blocks.{l}.attn.W_O"] = _heads_out(sd[p + "self_attention.dense.weight"], H)
        state[f"blocks.{l}.attn.b_O"] = sd[p + "self_attention.dense.bias"]
        for ours_name, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            _put(state, f"blocks.{l}.{ours_name}", sd, p + theirs, ("w", "b"), transpose=False)
        _put(state, f"blocks.{l}.mlp", sd, p + "mlp.dense_h_to_4h")
        _put(state, f"blocks.{l}.mlp", sd, p + "mlp.dense_4h_to_h", ("W_out", "b_out"))
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
            state[f"blocks.{l}.attn.W_{name}"] = _heads_in(sd[p + f"self_attn.{proj}.weight"], H)
            state[f"blocks.{l}.attn.b_{name}"] = sd[p + f"self_attn.{proj}.bias"].reshape(H, -1)
        state[f"blocks.{l}.attn.W_O"] = _heads_out(sd[p + "self_attn.out_proj.weight"], H)
        state[f"blocks.{l}.attn.b_O"] = sd[p + "self_attn.out_proj.bias"]
        for ours_name, theirs in (("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm")):
            _put(state, f"blocks.{l}.{ours_name}", sd, p + theirs, ("w", "b"), transpose=False)
        _put(state, f"blocks.{l}.mlp", sd, p + "fc1")
        _put(state, f"blocks.{l}.mlp", sd, p + "fc2", ("W_out", "b_out"))
    _compare(_ours(cfg, state), hf, tokens_for(2, 20))


# --- mixture of experts --------------------------------------------------------------------------------------

def _moe_layer_state(sd: dict, state: dict, l: int, shared: bool) -> None:
    """transformers' batched experts (gate_up_proj [E, 2I, d], down_proj [E, d, I]) -> one MLP per expert."""
    p = f"model.layers.{l}.mlp."
    for k in [k for k in state if k.startswith(f"blocks.{l}.mlp.")]:
        del state[k]
    state[f"blocks.{l}.mlp.W_router"] = sd[p + "gate.weight"].T
    gate_up, down = sd[p + "experts.gate_up_proj"], sd[p + "experts.down_proj"]
    inner = down.shape[-1]
    for e in range(gate_up.shape[0]):
        state[f"blocks.{l}.mlp.experts.{e}.W_gate"] = gate_up[e, :inner].T
        state[f"blocks.{l}.mlp.experts.{e}.W_in"] = gate_up[e, inner:].T
        state[f"blocks.{l}.mlp.experts.{e}.W_out"] = down[e].T
    if shared:
        for ours, theirs in (("W_gate", "gate_proj"), ("W_in", "up_proj"), ("W_out", "down_proj")):
            state[f"blocks.{l}.mlp.shared_expert.{ours}"] = sd[p + f"shared_expert.{theirs}.weight"].T
        state[f"blocks.{l}.mlp.W_shared_gate"] = sd[p + "shared_expert_gate.weight"].T


def _dense_stand_in(sd: dict, l: int, d_mlp: int) -> None:
    for name in ("gate_proj", "up_proj"):
        sd[f"model.layers.{l}.mlp.{name}.weight"] = torch.zeros(d_mlp, 32)
    sd[f"model.layers.{l}.mlp.down_proj.weight"] = torch.zeros(32, d_mlp)


def mixtral_pair():
    hf = _hf("MixtralConfig", **LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
    cfg = _llama_cfg(n_experts=4, n_experts_per_token=2, rotary_base=hf.config.rope_parameters["rope_theta"],
                     norm_eps=hf.config.rms_norm_eps)
    sd = _sd(hf)
    for l in range(2):
        _dense_stand_in(sd, l, 48)
    state = llama_state(sd, cfg)
    for l in range(2):
        _moe_layer_state(sd, state, l, shared=False)
    return _ours(cfg, state), hf


def test_mixtral_moe_matches_transformers():
    ours, hf = mixtral_pair()
    _compare(ours, hf, tokens_for(2, 20))


def test_qwen2_moe_shared_expert_unnormalised_topk_and_dense_layers():
    hf = _hf("Qwen2MoeConfig", **LLAMA_LIKE, moe_intermediate_size=24, shared_expert_intermediate_size=40,
             num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, mlp_only_layers=[1])
    cfg = _llama_cfg(n_experts=4, n_experts_per_token=2, d_expert=24, d_shared_expert=40, router_norm_topk=False,
                     moe_layers=[0], attn_bias=True, attn_out_bias=False,
                     rotary_base=hf.config.rope_parameters["rope_theta"], norm_eps=hf.config.rms_norm_eps)
    sd = _sd(hf)
    _dense_stand_in(sd, 0, 48)
    state = llama_state(sd, cfg)
    _moe_layer_state(sd, state, 0, shared=True)
    ours = _ours(cfg, state)
    _compare(ours, hf, tokens_for(2, 20))


def test_moe_hooks_show_the_routed_tokens_and_neuron_analyzers_refuse():
    from interp.analysis.neurons import neuron_answers, top_neurons
    from interp.model.mlp import routed_tokens

    ours, _ = mixtral_pair()
    toks = tokens_for(2, 9)
    _, cache = ours.run_with_cache(toks)
    logits = cache["blocks.1.mlp.hook_router_logits"]
    idx, weights = cache["blocks.1.mlp.hook_expert_indices"], cache["blocks.1.mlp.hook_expert_weights"]
    assert logits.shape == (2, 9, 4) and idx.shape == weights.shape == (2, 9, 2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 9))
    assert (idx == torch.topk(logits, 2, dim=-1).indices).all()  # softmax is monotone: top-2 of the logits
    x = cache["blocks.1.ln2.hook_normalized"] * ours.blocks[1].ln2.w  # what the MoE reads
    mixed = torch.zeros_like(x)
    for e in range(4):
        where = routed_tokens(idx, e)
        post = cache[f"blocks.1.mlp.experts.{e}.hook_post"]
        assert post.shape == (len(where), 48)
        expert = ours.blocks[1].mlp.experts[e]
        xe = x[where[:, 0], where[:, 1]]
        torch.testing.assert_close(post, torch.nn.functional.silu(xe @ expert.W_gate) * (xe @ expert.W_in))
        w = (weights * (idx == e)).sum(-1)[where[:, 0], where[:, 1]]
        mixed[where[:, 0], where[:, 1]] += (post @ expert.W_out) * w[:, None]
    assert_close_to_scale(mixed, cache["blocks.1.hook_mlp_out"])
    with pytest.raises(InterpError, match=r"mixture-of-experts.*experts"):
        neuron_answers(ours, 0, 0)
    with pytest.raises(InterpError, match=r"mixture-of-experts"):
        top_neurons(ours, toks[:1])
    with pytest.raises(InterpError, match=r"mixtures of experts"):
        _ = ours.W_in


# --- attention options through every path -------------------------------------------------------------------

def _attn_model(seed=0, **over) -> HookedDecoder:
    torch.manual_seed(seed)
    base = {"d_vocab": VOCAB, "n_ctx": N_CTX, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_head": 16,
                "positional": "rotary", "norm": "rmsnorm", "init_std": 0.2}
    return HookedDecoder(DecoderConfig(**{**base, **over})).eval()


ATTN_OPTIONS = {
    "window": {"sliding_window": 7},
    "window_per_layer": {"sliding_window": 7, "layer_types": ["full_attention", "sliding_attention"]},
    "softcap": {"attn_softcap": 2.0},
    "alibi": {"alibi": True, "positional": "none"},
    "all": {"sliding_window": 7, "attn_softcap": 2.0, "alibi": True, "attn_multiplier": 0.4},
}


def _brute_force_pattern(q, k, scale, window, softcap, slopes):
    """float64, one score at a time: the definition, with no tensor tricks to share bugs with."""
    b, h, n, _ = q.shape
    group = h // k.shape[1]
    out = torch.zeros(b, h, n, n, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                row = []
                for j in range(i + 1):
                    if window is not None and i - j >= window:
                        continue
                    s = scale * float(q[bi, hi, i].double() @ k[bi, hi // group, j].double())
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    if slopes is not None:
                        s -= float(slopes[hi]) * (i - j)
                    row.append((j, s))
                m = max(s for _, s in row)
                total = sum(math.exp(s - m) for _, s in row)
                for j, s in row:
                    out[bi, hi, i, j] = math.exp(s - m) / total
    return out


@pytest.mark.parametrize("option", sorted(ATTN_OPTIONS))
def test_attention_options_eager_sdpa_lazy_agree(option):
    model = _attn_model(**ATTN_OPTIONS[option])
    toks = tokens_for(2, 50)
    names = lambda n: n.endswith(("hook_pattern", "hook_attn_scores", "hook_rot_q", "hook_rot_k", "hook_q",
                                   "hook_k"))
    eager_logits, eager = model.run_with_cache(toks, attn_backend="eager", names_filter=names, lazy_patterns=False)
    sdpa_logits, lazy = model.run_with_cache(toks, attn_backend="sdpa", names_filter=names)
    assert_close_to_scale(sdpa_logits, eager_logits)
    attn = model.blocks[1].attn
    for layer in range(2):
        assert lazy.cache_dict.is_lazy(f"blocks.{layer}.attn.hook_pattern")  # rebuilt, not materialised
        pattern = eager[f"blocks.{layer}.attn.hook_pattern"]
        assert_close_to_scale(lazy[f"blocks.{layer}.attn.hook_pattern"], pattern)
        scores = eager[f"blocks.{layer}.attn.hook_attn_scores"]
        rebuilt = lazy[f"blocks.{layer}.attn.hook_attn_scores"]
        assert torch.equal(torch.isinf(rebuilt), torch.isinf(scores))
        finite = torch.isfinite(scores)
        assert_close_to_scale(rebuilt[finite], scores[finite])
    # eager against the float64 definition (layer 1, both batch rows)
    key = "hook_rot" if model.cfg.positional == "rotary" else "hook"
    q = eager[f"blocks.1.attn.{key}_q"].transpose(1, 2)
    k = eager[f"blocks.1.attn.{key}_k"].transpose(1, 2)
    slopes = attn.alibi
    expected = _brute_force_pattern(q[:, :, :20], k[:, :, :20], model.cfg.attn_scale, attn.window, attn.softcap,
                                    slopes)
    torch.testing.assert_close(eager["blocks.1.attn.hook_pattern"][:, :, :20, :20].double(), expected, rtol=0,
                               atol=2e-6)
    if attn.window is not None:  # the window binds: nothing further back than 7 keys
        far = torch.ones(50, 50, dtype=torch.bool).tril(-7)
        assert (eager["blocks.1.attn.hook_pattern"][..., far] == 0).all()


def test_alibi_slopes_match_bloom():
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    from interp.kernels.reference import alibi_slopes

    for n in (1, 4, 6, 12, 16, 20):
        alibi = build_alibi_tensor(torch.ones(1, 3), n, torch.float64)  # [n, 1, 3] = slope * key position
        torch.testing.assert_close(alibi_slopes(n), alibi[:, 0, 1], rtol=1e-6, atol=0)  # Bloom's are float32


@torch.no_grad()
def test_kv_cached_generation_with_a_sliding_window_equals_full_forward():
    from interp.generate import generate
    from interp.model.attention import KVCache

    model = _attn_model(**ATTN_OPTIONS["all"])  # window 7, soft-cap, ALiBi, custom scale
    prompt = tokens_for(2, 5)
    out = generate(model, prompt, max_new_tokens=10, temperature=0)  # the window slides past the cache start
    full = model(out, attn_backend="eager")
    assert (full[:, 4:-1].argmax(-1) == out[:, 5:]).all()
    cache = KVCache(model.cfg.n_layers)
    steps = [model(out[:, :5], kv_cache=cache)] + [model(out[:, i:i + 1], kv_cache=cache) for i in range(5, 15)]
    assert_close_to_scale(torch.cat(steps, dim=1), full)


def test_kv_cached_generation_with_moe_equals_full_forward():
    from interp.model.attention import KVCache

    ours, _ = mixtral_pair()
    toks = tokens_for(2, 12)
    full = ours(toks)
    cache = KVCache(2)
    steps = [ours(toks[:, :4], kv_cache=cache)] + [ours(toks[:, i:i + 1], kv_cache=cache) for i in range(4, 12)]
    assert_close_to_scale(torch.cat(steps, dim=1), full)


def test_bad_block_options_are_refused_clearly():
    base = {"d_vocab": VOCAB, "n_ctx": N_CTX, "d_model": 32, "n_layers": 2, "n_heads": 4}
    cases = [
        ({"sliding_window": 0}, r"sliding_window must be a positive integer; got 0"),
        ({"layer_types": ["sliding_attention"]}, r"layer_types must be a list with one entry per layer"),
        ({"layer_types": ["sliding_attention", "full_attention"]}, r"sliding_window is None"),
        ({"layer_types": ["local", "full_attention"], "sliding_window": 3}, r"layer_types.*'local'"),
        ({"attn_softcap": -1.0}, r"attn_softcap must be a finite number > 0"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, r"positional='rotary'"),
        ({"positional": "rotary", "rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
         r"needs \['low_freq_factor'"),
        ({"positional": "rotary", "rope_parameters": {"rope_type": "ntk"}}, r"rope_type.*'ntk'"),
        ({"pos_offset": 2, "positional": "rotary"}, r"pos_offset needs positional='learned'"),
        ({"qk_norm": "yes"}, r"qk_norm must be one of"),
        ({"shared_norm": True}, r"shared_norm=True needs parallel_residual=True"),
        ({"n_experts": 4, "n_experts_per_token": 5}, r"n_experts_per_token must be in \[1, n_experts=4\]; got 5"),
        ({"n_experts": 4, "moe_layers": [2]}, r"moe_layers must hold layer indices in \[0, 1\]; got \[2\]"),
        ({"embed_multiplier": 0.0}, r"embed_multiplier must be a finite number > 0"),
    ]
    for over, pattern in cases:
        with pytest.raises(InterpError, match=pattern):
            DecoderConfig(**{**base, **over})


def test_checkpoint_round_trip_keeps_every_block(tmp_path):
    import interp

    cfg = _llama_cfg(sliding_window=5, layer_types=["sliding_attention", "full_attention"], attn_softcap=3.0,
                     rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0},
                                      "sliding_attention": {"rope_theta": 100.0}},
                     qk_norm="per_head", norm_placement="sandwich", norm_weight_offset=1.0, embed_multiplier=2.0,
                     final_softcap=10.0, n_experts=3, n_experts_per_token=2, moe_layers=[1], d_shared_expert=16)
    torch.manual_seed(0)
    model = HookedDecoder(cfg).eval()
    model.save(tmp_path / "m")
    loaded = interp.load(str(tmp_path / "m"))
    assert replace(loaded.cfg, source={}) == model.cfg
    toks = tokens_for(2, 20)
    torch.testing.assert_close(loaded(toks), model(toks), rtol=0, atol=0)


def test_gemma3_local_global_rope_bases_and_qk_norm_with_offset():
    hf = _hf("Gemma3TextConfig", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=N_CTX, query_pre_attn_scalar=8,
             sliding_window=6, layer_types=["sliding_attention", "full_attention"],
             rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    c = hf.config
    cfg = _llama_cfg(act="gelu_new", norm_weight_offset=1.0, norm_placement="sandwich", tie_embeddings=True,
                     embed_multiplier=math.sqrt(32), attn_multiplier=8 ** -0.5, sliding_window=6,
                     layer_types=list(c.layer_types), d_head=8, qk_norm="per_head", norm_eps=c.rms_norm_eps,
                     rope_parameters={k: dict(v) for k, v in c.rope_parameters.items()})
    _compare(_ours(cfg, _gemma_state(_sd(hf), cfg)), hf, tokens_for(2, 30))


def test_smollm3_nope_layers():
    hf = _hf("SmolLM3Config", **LLAMA_LIKE, no_rope_layers=[1, 0], use_sliding_window=False)
    cfg = _llama_cfg(rope_layers=[bool(x) for x in hf.config.no_rope_layers], norm_eps=hf.config.rms_norm_eps,
                     rotary_base=hf.config.rope_parameters["rope_theta"])
    ours = _ours(cfg, llama_state(_sd(hf), cfg))
    _compare(ours, hf, tokens_for(2, 20))
    assert "blocks.1.attn.hook_rot_q" not in dict(ours.run_with_cache(tokens_for(1, 4))[1])  # layer 1: no RoPE


@torch.no_grad()
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_left_padding_with_window_softcap_alibi_matches_the_unpadded_rows(backend):
    model = _attn_model(**ATTN_OPTIONS["all"])
    a, b = tokens_for(1, 12, seed=3), tokens_for(1, 8, seed=4)
    batch = torch.cat([a, torch.cat([torch.full((1, 4), 5), b], dim=1)])
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0  # row 1: four pads on the left
    out = model(batch, attention_mask=mask, attn_backend=backend)
    assert_close_to_scale(out[0], model(a, attn_backend="eager")[0])
    assert_close_to_scale(out[1, 4:], model(b, attn_backend="eager")[0])
