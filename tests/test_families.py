"""The family matrix: every family of the issue, as `transformers` builds it, loads into interp exactly.

For each case: a tiny random model from the family's own `transformers` config, every parameter perturbed
with N(0, 0.1) noise (norm gains and biases included, so a dropped bias or a swapped gain shows), a batch of
2 sequences of 24 tokens (every sliding window, 8 wide, binds). Checked against `transformers`' eager
implementation (the reference) and against ourselves across paths:

* logits equal `transformers`' to ≤ 1e-5 of their magnitude (fp32);
* the lazy pattern rebuilt from the fused path equals the eager pattern;
* a KV-cached generation step equals the full forward;
* for every case where TransformerLens' bridge runs correctly (BRIDGE_FAILS says where it does not), every
  hook it also exposes holds the bridge's value.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_hf_from_config

import interp
from interp.errors import InterpError
from interp.loading.families import FAMILIES
from interp.model.attention import KVCache
from interp.model.processing import _check_refactorable

VOCAB, N_CTX, POS, WINDOW = 96, 64, 24, 8
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "max_position_embeddings": N_CTX, "bos_token_id": 1, "eos_token_id": 2}
LLAMA = {**SMALL, "intermediate_size": 48, "num_key_value_heads": 2}
ROPE = {"rope_theta": 10000.0}

# case -> (transformers config class, kwargs). One per family, plus the variants the issue names.
CASES: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT2Config", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": N_CTX}),
    "gpt_neo": ("GPTNeoConfig", {"vocab_size": VOCAB, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                                 "attention_types": [[["global", "local"], 1]], "window_size": WINDOW,
                                 "max_position_embeddings": N_CTX}),
    "gptj": ("GPTJConfig", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4,
                            "n_positions": N_CTX}),
    "neox": ("GPTNeoXConfig", {**SMALL, "intermediate_size": 64, "rotary_pct": 0.25}),
    "opt": ("OPTConfig", {**SMALL, "ffn_dim": 64, "word_embed_proj_dim": 32}),
    "bloom": ("BloomConfig", {"vocab_size": VOCAB, "hidden_size": 32, "n_layer": 2, "n_head": 4}),
    "llama": ("LlamaConfig", LLAMA),
    "llama_linear": ("LlamaConfig", {**LLAMA, "rope_parameters": {**ROPE, "rope_type": "linear", "factor": 2.0}}),
    "llama_dynamic": ("LlamaConfig", {**LLAMA, "rope_parameters": {**ROPE, "rope_type": "dynamic", "factor": 2.0}}),
    "llama3": ("LlamaConfig", {**LLAMA, "rope_parameters": {
        **ROPE, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}),
    "llama_yarn": ("LlamaConfig", {**LLAMA, "rope_parameters": {
        **ROPE, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}}),
    "mistral": ("MistralConfig", {**LLAMA, "sliding_window": WINDOW}),
    "mixtral": ("MixtralConfig", {**LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2,
                                  "sliding_window": WINDOW}),
    "qwen2": ("Qwen2Config", LLAMA),
    "qwen2_window": ("Qwen2Config", {**LLAMA, "use_sliding_window": True, "sliding_window": WINDOW,
                                     "max_window_layers": 1}),
    "qwen2_moe": ("Qwen2MoeConfig", {**LLAMA, "moe_intermediate_size": 24, "shared_expert_intermediate_size": 40,
                                     "num_experts": 4, "num_experts_per_tok": 2, "mlp_only_layers": [1]}),
    "qwen3": ("Qwen3Config", {**LLAMA, "head_dim": 16}),
    "gemma": ("GemmaConfig", {**LLAMA, "head_dim": 16}),
    "gemma2": ("Gemma2Config", {**LLAMA, "head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 24,
                                "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}),
    "gemma3": ("Gemma3TextConfig", {**LLAMA, "head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 24,
                                    "layer_types": ["sliding_attention", "full_attention"]}),
    # Gemma 3 4B/12B/27B's class: a vision tower (tiny here) beside the Gemma 3 text model; text-only input
    "gemma3_multimodal": ("Gemma3Config", {
        "text_config": {**LLAMA, "head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 24,
                        "layer_types": ["sliding_attention", "full_attention"]},
        "vision_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                          "num_attention_heads": 4, "image_size": 28, "patch_size": 14}, "mm_tokens_per_image": 4}),
    "phi": ("PhiConfig", {**SMALL, "intermediate_size": 48}),
    "phi_gqa": ("PhiConfig", {**SMALL, "intermediate_size": 48, "num_key_value_heads": 2}),
    "phi3": ("Phi3Config", {**LLAMA, "pad_token_id": 0}),
    "phi3_longrope": ("Phi3Config", {**LLAMA, "pad_token_id": 0, "original_max_position_embeddings": 16,
                                     "rope_parameters": {**ROPE, "rope_type": "longrope",
                                                         "long_factor": [1.0, 1.5, 2.0, 3.0],
                                                         "short_factor": [1.0, 1.1, 1.2, 1.3]}}),
    "stablelm": ("StableLmConfig", LLAMA),
    "olmo": ("OlmoConfig", {**LLAMA, "pad_token_id": 0}),
    "olmo2": ("Olmo2Config", {**LLAMA, "pad_token_id": 0}),
    "falcon_7b": ("FalconConfig", {**SMALL}),  # multi-query, parallel attention, one shared LayerNorm
    "falcon_40b": ("FalconConfig", {**SMALL, "new_decoder_architecture": True, "num_kv_heads": 2}),
    # the variant TransformerLens' bridge gets wrong by 2.4 in the logits
    "falcon_new_mha": ("FalconConfig", {**SMALL, "new_decoder_architecture": True, "multi_query": False,
                                        "num_kv_heads": 4}),
    "falcon_sequential_mha": ("FalconConfig", {**SMALL, "multi_query": False, "parallel_attn": False, "bias": True}),
    # Falcon's ALiBi variants: Falcon-RW (sequential, MHA, biases) and ALiBi with the 7B block (MQA, parallel)
    "falcon_rw": ("FalconConfig", {**SMALL, "alibi": True, "multi_query": False, "parallel_attn": False,
                                   "bias": True}),
    "falcon_alibi_mqa": ("FalconConfig", {**SMALL, "alibi": True}),
    # beyond the issue's 25: StarCoder's GPTBigCode (multi-query and not) and Qwen3-MoE
    "gpt_bigcode": ("GPTBigCodeConfig", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4,
                                         "n_positions": N_CTX}),
    "gpt_bigcode_mha": ("GPTBigCodeConfig", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4,
                                             "n_positions": N_CTX, "multi_query": False}),
    "qwen3_moe": ("Qwen3MoeConfig", {**LLAMA, "head_dim": 16, "moe_intermediate_size": 24, "num_experts": 4,
                                     "num_experts_per_tok": 2, "mlp_only_layers": [1], "norm_topk_prob": True}),
    # MPT: ALiBi with 6 heads (not a power of two: the interleaved slopes), clip_qkv binding, a softmax scale
    "mpt": ("MptConfig", {"vocab_size": VOCAB, "d_model": 48, "n_layers": 2, "n_heads": 6, "max_seq_len": N_CTX,
                          "attn_config": {"clip_qkv": 0.5, "softmax_scale": 0.3}}),
    "codegen": ("CodeGenConfig", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4,
                                  "n_positions": N_CTX, "n_ctx": N_CTX}),
    "cohere": ("CohereConfig", {**LLAMA, "pad_token_id": 0, "logit_scale": 0.5}),
    "granite": ("GraniteConfig", {**LLAMA, "embedding_multiplier": 3.0, "residual_multiplier": 0.5,
                                  "attention_multiplier": 0.3, "logits_scaling": 2.0}),
    "smollm3": ("SmolLM3Config", {**LLAMA, "pad_token_id": 0, "no_rope_layers": [1, 0]}),
    # the QK-norm and clipping variants: Phi's one LayerNorm over d_head, StableLM's LayerNorm per head (with a
    # parallel block), Cohere's per-head gains, OLMo's clip_qkv (0.3 binds: |q| reaches ~1 in these models)
    "phi_qk_layernorm": ("PhiConfig", {**SMALL, "intermediate_size": 48, "qk_layernorm": True}),
    "stablelm_qk_layernorm": ("StableLmConfig", {**LLAMA, "qk_layernorm": True, "use_parallel_residual": True}),
    "cohere_qk_norm": ("CohereConfig", {**LLAMA, "pad_token_id": 0, "logit_scale": 0.5, "use_qk_norm": True}),
    "olmo_clip_qkv": ("OlmoConfig", {**LLAMA, "pad_token_id": 0, "clip_qkv": 0.3}),
    # issue 20's native families: Llama/Mistral-shaped variants
    "ministral": ("MinistralConfig", {**LLAMA, "head_dim": 8, "sliding_window": WINDOW,
                                      "layer_types": ["sliding_attention", "full_attention"]}),
    # Ministral 3: YaRN and queries scaled by 1 + 0.1 log(1 + floor(p / 8)) (binds from position 8 on)
    "ministral3": ("Ministral3Config", {**LLAMA, "head_dim": 8, "rope_parameters": {
        **ROPE, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}}),
    "seed_oss": ("SeedOssConfig", {**LLAMA, "head_dim": 8, "attention_bias": True, "attention_out_bias": False}),
    "starcoder2": ("Starcoder2Config", {**LLAMA, "sliding_window": WINDOW}),
    "olmo3": ("Olmo3Config", {**LLAMA, "pad_token_id": 0, "sliding_window": WINDOW,
                              "layer_types": ["sliding_attention", "full_attention"]}),
    "exaone4": ("Exaone4Config", {**LLAMA, "sliding_window": WINDOW,
                                  "layer_types": ["sliding_attention", "full_attention"]}),
    "cohere2": ("Cohere2Config", {**LLAMA, "head_dim": 8, "pad_token_id": 0, "logit_scale": 0.5,
                                  "sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"]}),
    "glm": ("GlmConfig", {**LLAMA, "head_dim": 8, "pad_token_id": 0}),
    "glm4": ("Glm4Config", {**LLAMA, "head_dim": 8, "pad_token_id": 0}),
    # mixtures of experts: OLMoE (softmax then top-k), Granite-MoE (top-k then softmax; + a shared expert),
    # PhiMoE (sparsemixer routing; a 0.3 margin lets the second round see more than one expert)
    "olmoe": ("OlmoeConfig", {**LLAMA, "pad_token_id": 0, "num_experts": 4, "num_experts_per_tok": 2}),
    "granite_moe": ("GraniteMoeConfig", {**LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2,
                                         "embedding_multiplier": 3.0, "residual_multiplier": 0.5,
                                         "attention_multiplier": 0.3, "logits_scaling": 2.0}),
    "granite_moe_shared": ("GraniteMoeSharedConfig", {**LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2,
                                                      "shared_intermediate_size": 40}),
    "phimoe": ("PhimoeConfig", {**LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2,
                                "router_jitter_noise": 0.3, "lm_head_bias": True}),
    "xglm": ("XGLMConfig", {"vocab_size": VOCAB, "d_model": 32, "num_layers": 2, "attention_heads": 4, "ffn_dim": 48,
                            "max_position_embeddings": N_CTX}),
    "nanochat": ("NanoChatConfig", {**LLAMA, "final_logit_softcapping": 3.0}),
    # GPT-OSS: attention sinks, alternating windows, YaRN (its default), a biased router, biased experts whose
    # SwiGLU clamp binds at 0.5
    "gpt_oss": ("GptOssConfig", {**LLAMA, "head_dim": 8, "pad_token_id": 0, "num_local_experts": 4,
                                 "num_experts_per_tok": 2, "sliding_window": WINDOW, "swiglu_limit": 0.5}),
    # Llama 4's text model: layer 0 RoPE + chunked attention (chunks of 8) + QK-norm + dense MLP; layer 1 NoPE +
    # full attention + temperature-tuned queries (floor 8) + MoE (sigmoid top-1 scaling the expert input, shared expert)
    "llama4": ("Llama4TextConfig", {**LLAMA, "head_dim": 8, "pad_token_id": 0, "intermediate_size_mlp": 40,
                                    "num_local_experts": 4, "num_experts_per_tok": 1, "attention_chunk_size": WINDOW,
                                    "interleave_moe_layer_step": 2, "no_rope_layer_interval": 2, "floor_scale": 8}),
    # more Llama-shaped families the bridge registers
    "arcee": ("ArceeConfig", {**LLAMA, "head_dim": 8, "pad_token_id": 0}),
    "ernie4_5": ("Ernie4_5Config", {**LLAMA, "head_dim": 8, "pad_token_id": 0, "use_bias": True}),
    "vaultgemma": ("VaultGemmaConfig", {**LLAMA, "head_dim": 16, "pad_token_id": 0, "sliding_window": WINDOW,
                                        "query_pre_attn_scalar": 24, "attn_logit_softcapping": 5.0,
                                        "final_logit_softcapping": 3.0}),
    "flex_olmo": ("FlexOlmoConfig", {**LLAMA, "head_dim": 8, "pad_token_id": 0, "num_experts": 4,
                                     "num_experts_per_tok": 2}),
    "nemotron": ("NemotronConfig", {**LLAMA, "head_dim": 8, "pad_token_id": 0}),
    # Hunyuan's static NTK-alpha RoPE (labelled "dynamic" with an alpha)
    "hunyuan_dense": ("HunYuanDenseV1Config", {**LLAMA, "head_dim": 8, "pad_token_id": 0, "rope_parameters": {
        **ROPE, "rope_type": "dynamic", "factor": 1.0, "alpha": 4.0}}),
    # GLM-4-MoE: a dense first layer, then DeepSeek V3's router: 8 experts in 2 groups, the best group only, top-2,
    # a correction bias (perturbed in _pair: transformers keeps it as a buffer), routed scaling 2.5; a shared expert
    "glm4_moe": ("Glm4MoeConfig", {**LLAMA, "head_dim": 8, "pad_token_id": 0, "moe_intermediate_size": 24,
                                   "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
                                   "routed_scaling_factor": 2.5, "use_qk_norm": True}),
    # DeepSeek V3: latent attention (q through a latent of 16, k/v through one of 12; 4 rotated dims of 12, value
    # heads of 6), YaRN with mscale_all_dim, a dense first layer then its experts (as GLM-4-MoE's)
    "deepseek_v3": ("DeepseekV3Config", {**LLAMA, "num_key_value_heads": 4, "pad_token_id": 0, "q_lora_rank": 16,
                                         "kv_lora_rank": 12,
                                         "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 6,
                                         "moe_intermediate_size": 24, "n_routed_experts": 8, "num_experts_per_tok": 2,
                                         "n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5,
                                         "rope_parameters": {**ROPE, "rope_type": "yarn", "factor": 4.0,
                                                             "original_max_position_embeddings": 16, "mscale": 1.0,
                                                             "mscale_all_dim": 1.0}}),
    # DeepSeek V2: the same latent attention with RoPE pairs in place, no q latent; softmax routing limited to the best
    # group by its top score (group_limited_greedy), routed scaling
    "deepseek_v2": ("DeepseekV2Config", {**LLAMA, "num_key_value_heads": 4, "pad_token_id": 0, "q_lora_rank": None,
                                         "kv_lora_rank": 12, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
                                         "v_head_dim": 6, "head_dim": 4, "moe_intermediate_size": 24,
                                         "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
                                         "topk_method": "group_limited_greedy", "routed_scaling_factor": 2.5,
                                         "first_k_dense_replace": 1}),
    "openai_gpt": ("OpenAIGPTConfig", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4,
                                       "n_positions": N_CTX}),
}

# Cases whose reference is transformers' sdpa path: for Falcon with ALiBi, transformers' eager path adds the
# ALiBi bias twice (once to q·k, once more inside the mask it builds), so its eager and sdpa logits differ; the
# sdpa path computes softmax((q·k + alibi) / sqrt(d)) as Falcon-RW's original modelling code does.
SDPA_REFERENCE = {"falcon_rw", "falcon_alibi_mqa"}

# The 25 families of the issue, by their transformers class.
ISSUE_FAMILIES = {
    "GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM", "OPTForCausalLM",
    "BloomForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "PhiForCausalLM", "Phi3ForCausalLM", "StableLmForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM",
    "FalconForCausalLM", "CodeGenForCausalLM", "CohereForCausalLM", "GraniteForCausalLM", "SmolLM3ForCausalLM",
}

_BUILT: dict = {}


def _pair(case: str):
    """(transformers model, interp model) of a case, built once per session."""
    if case not in _BUILT:
        import transformers

        cls, kwargs = CASES[case]
        hf = build_hf_from_config(getattr(transformers, cls)(**kwargs), seed=3,
                                  attn_implementation="sdpa" if case in SDPA_REFERENCE else "eager")
        with torch.no_grad():  # DeepSeek V3's router correction bias is a buffer: noise it as the parameters are
            for name, buffer in hf.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    buffer.add_(torch.randn(buffer.shape, generator=torch.Generator().manual_seed(4)))
        _BUILT[case] = (hf, interp.load(hf))
    return _BUILT[case]


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, POS), generator=torch.Generator().manual_seed(seed))


def test_every_family_of_the_issue_is_in_the_table():
    assert ISSUE_FAMILIES <= set(FAMILIES)
    built = {type(_pair(case)[0]).__name__ for case in CASES}
    assert ISSUE_FAMILIES <= built  # and each one is exercised below


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_matches_transformers(case):
    hf, model = _pair(case)
    tokens = _tokens()
    with torch.no_grad():
        ref = hf(tokens).logits
        ours = model(tokens, attn_backend="eager")
        fused = model(tokens)  # the default (fused) path
    scale = ref.abs().max()
    assert scale > 0.1
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-5 * scale)
    cfg, c = model.cfg, hf.config
    assert cfg.n_ctx == getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or 2048
    if cfg.sliding_window is not None:
        assert cfg.sliding_window < POS  # the window binds


@pytest.mark.parametrize("case", sorted(CASES))
def test_lazy_pattern_and_kv_cache_step(case):
    _, model = _pair(case)
    tokens = _tokens(1)
    with torch.no_grad():
        _, lazy = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        _, eager = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"),
                                        lazy_patterns=False, attn_backend="eager")
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_pattern"
            torch.testing.assert_close(lazy[name], eager[name], rtol=0, atol=1e-6)
        full = model(tokens)
        cache = KVCache(model.cfg.n_layers)
        model(tokens[:, :-1], kv_cache=cache)
        step = model(tokens[:, -1:], kv_cache=cache)
    torch.testing.assert_close(step[:, 0], full[:, -1], rtol=0, atol=1e-5 * full.abs().max())


# Every case through TransformerLens' bridge (it reads the same HF weights): every shared hook, except where the
# bridge itself fails or is wrong (checked against transformers above instead):
BRIDGE_FAILS = {
    "codegen": "the bridge's forward raises AttributeError ('CodeGenAttention' has no 'embed_positions')",
    "falcon_40b": "the bridge's fused-qkv split raises RuntimeError for new_decoder_architecture with GQA",
    "falcon_new_mha": "the bridge's logits are off by ~1.2 (new_decoder_architecture with multi_query=False)",
    "falcon_rw": "the bridge runs transformers' eager Falcon, which adds ALiBi twice (logits off by ~0.2)",
    "falcon_alibi_mqa": "the bridge runs transformers' eager Falcon, which adds ALiBi twice (logits off by ~0.1)",
    "phi_qk_layernorm": "the bridge refuses Phi's q_layernorm (its adapter does not declare it)",
    "gpt_bigcode_mha": "the bridge's GPTBigCode adapter asserts multi_query=True",
    # a multimodal class makes the bridge `pip install torchvision` (which once swapped this machine's CPU torch
    # for a CUDA build): tests never install, so it is not booted (its text tower is checked against transformers)
    "gemma3_multimodal": "the bridge installs torchvision for multimodal classes",
    "ministral": "the bridge has no adapter for MinistralForCausalLM (only Ministral3)",
    "granite_moe_shared": "the bridge has no adapter for GraniteMoeSharedForCausalLM",
    "phimoe": "the bridge registers 'PhiMoEForCausalLM'; transformers' class is PhimoeForCausalLM (not found)",
}
BRIDGE_CASES = sorted(set(CASES) - set(BRIDGE_FAILS))
# processed as well (TL's processing on both sides): one case per kind of norm and block
BRIDGE_PROCESSED = ["bloom", "cohere", "gemma2", "gptj", "granite", "phi", "qwen3"]
# hooks that hold another quantity on the bridge: Mixtral's router weights over all experts (ours: the k chosen)
BRIDGE_OTHER_MEANING = ("mlp.hook_expert_weights",)


PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True}


def _processed(case: str):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # steps that cannot be exact here (RMSNorm centring, soft-cap) are skipped
        return interp.load(_pair(case)[0], **PROCESSING)


def _bridge_layout(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """The bridge's tensor in our layout: HF's [batch, head, pos, ...] QK-norm outputs (ours are [batch, pos, head,
    ...] like every per-head hook of TransformerLens), and batch·pos flattened where HF flattens (OPT's MLP, MoE)."""
    if theirs.shape == ours.shape:
        return theirs
    if theirs.ndim == 4 and theirs.transpose(1, 2).shape == ours.shape:
        return theirs.transpose(1, 2)
    assert theirs.numel() == ours.numel(), (tuple(theirs.shape), tuple(ours.shape))
    return theirs.reshape(ours.shape)


@pytest.mark.parametrize(("case", "compat"), [(c, False) for c in BRIDGE_CASES] + [(c, True) for c in BRIDGE_PROCESSED],
                         ids=lambda v: {False: "raw", True: "processed"}.get(v, v) if isinstance(v, bool) else v)
def test_hooks_equal_the_bridge(case, compat, hf_tokenizer_dir, tmp_path, monkeypatch):
    """Raw: our plain load vs the bridge. Processed: ours with TL's four processing steps vs the bridge after
    enable_compatibility_mode() (TL's defaults: the same four, skipped where TL skips them)."""
    from transformer_lens.benchmarks.utils import compare_activation_dicts
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import helpers
    from transformers import AutoTokenizer

    monkeypatch.setattr(helpers, "_ensure_torchvision", lambda: False)  # the bridge must never pip install here

    hf, model = _pair(case)
    if compat:
        model = _processed(case)
    hf.config.architectures = [type(hf).__name__]  # the bridge picks its adapter by architecture
    hf.config.save_pretrained(tmp_path)  # the bridge needs a local folder, never a hub id
    bridge = TransformerBridge.boot_transformers(
        str(tmp_path), hf_model=copy.deepcopy(hf), tokenizer=AutoTokenizer.from_pretrained(hf_tokenizer_dir), device="cpu"
    )
    if compat:
        bridge.enable_compatibility_mode(disable_warnings=True)
    tokens = _tokens(2)
    with torch.no_grad():
        ref_logits, ref_cache = bridge.run_with_cache(tokens)
        logits, cache = model.run_with_cache(tokens, attn_backend="eager")
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5 * ref_logits.abs().max())
    if model.cfg.bos_token_id is not None:  # BOS prepended by default exactly where TransformerLens does
        assert model.cfg.default_prepend_bos == bridge.cfg.default_prepend_bos
    ours, theirs = dict(cache.items()), dict(ref_cache.items())
    shared = {k for k in set(ours) & set(theirs)
              if not k.endswith(("hook_attn_scores", *BRIDGE_OTHER_MEANING))}  # scores: −inf vs finfo.min
    if compat and case == "granite":
        # our fold_ln moves Granite's 1/logits_scaling into W_U (so logit attributions add up to the logits);
        # the bridge keeps it outside its lm_head, whose output is hook_unembed. The logits agree (above).
        shared.discard("hook_unembed")
    if model.cfg.clip_qkv is not None:
        # OLMo and MPT clamp the projections after the bridge has cached them: the bridge's hook_q is the value
        # before the clamp, ours the clamped one attention uses.
        c = model.cfg.clip_qkv
        for k in [k for k in shared if k.endswith(("attn.hook_q", "attn.hook_k", "attn.hook_v"))]:
            torch.testing.assert_close(ours[k], theirs[k].clamp(-c, c), rtol=0, atol=1e-5 * c)
            shared.discard(k)
    must = {"hook_embed", "blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.1.mlp.hook_post",
            "blocks.0.attn.hook_pattern", "blocks.0.hook_attn_out"}
    if model.cfg.has_moe:
        must -= {"blocks.1.mlp.hook_post"}
    if model.cfg.kv_lora_rank is not None:  # latent attention: the bridge's hook_q / hook_k are the q, k attention
        r = model.cfg.qk_rope_dim  # reads (ours: hook_rot_q / hook_rot_k); its hook_rot_q / hook_rot_k only their
        for k in [k for k in shared if k.endswith(("hook_rot_q", "hook_rot_k"))]:  # rotated tail (k: one shared head)
            tail = ours[k][..., -r:]
            torch.testing.assert_close(tail[..., :1, :] if k.endswith("k") else tail, theirs[k], rtol=0, atol=1e-5)
            read = k.replace("hook_rot_", "hook_")
            torch.testing.assert_close(ours[k], _bridge_layout(ours[k], theirs[read]), rtol=0, atol=1e-5)
            shared -= {k, read}
    if case == "granite_moe":  # Granite's router returns (logits, weights, indices): the bridge's hook_expert_indices
        shared -= {k for k in shared if k.endswith("mlp.hook_expert_indices")}  # holds the router logits
    if case == "nanochat":  # the bridge's hook_embed is the raw embedding; ours is what joins the residual stream
        torch.testing.assert_close(theirs.pop("hook_embed"), model.W_E[tokens], rtol=0, atol=1e-6)  # (after embed_ln)
        shared.discard("hook_embed")
        must.discard("hook_embed")
    if case == "openai_gpt":  # the bridge's post-LN GPT-1 block has no hook_resid_post on its last block
        must -= {"blocks.1.hook_resid_post"}
    assert must <= shared, sorted(must - shared)
    bad = compare_activation_dicts({k: ours[k] for k in shared},
                                   {k: _bridge_layout(ours[k], theirs[k]) for k in shared}, atol=1e-5)
    assert not bad, bad


@pytest.mark.parametrize("case", sorted(CASES))
def test_processing_keeps_log_probs_and_dla_adds_up(case):
    """TransformerLens' weight processing on every family: log-probabilities unchanged, and TL's
    decompose_resid + logit_attrs of a logit difference sums to it (before Gemma 2's final soft-cap)."""
    hf, plain = _pair(case)
    refusal = None
    if plain.cfg.norm_placement in ("post", "sublayer_post"):  # no norm reads the residual stream before a sublayer
        refusal = "norm_placement"
    elif plain.cfg.norm == "layernorm" and plain.cfg.has_moe:  # a LayerNorm's bias has no home in bias-free experts
        refusal = "mixture of experts"
    elif plain.cfg.kv_lora_rank is not None:  # ln1 is read by latent projections
        refusal = "latent attention"
    if refusal is not None:
        with pytest.raises(InterpError, match=refusal):
            interp.load(hf, **PROCESSING)
        return
    model = _processed(case)
    tokens = _tokens(4)
    with torch.no_grad():
        ref = hf(tokens).logits
        logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits.log_softmax(-1), ref.log_softmax(-1), rtol=0, atol=1e-5 * ref.abs().max())
    a, b = 5, 7
    stack = cache.decompose_resid(apply_ln=False, pos_slice=-1)
    attrs = cache.logit_attrs(stack, tokens=torch.tensor([a, a]), incorrect_tokens=torch.tensor([b, b]), pos_slice=-1)
    if model.cfg.final_softcap is None:
        diff = logits[:, -1, a] - logits[:, -1, b]
    else:  # the attribution is of the logits before the soft-cap
        pre_cap = cache["ln_final.hook_normalized"][:, -1] @ model.W_U + model.b_U
        diff = pre_cap[:, a] - pre_cap[:, b]
    want = diff - (model.b_U[a] - model.b_U[b])  # the unembedding bias is no component of the residual stream
    assert want.abs().max() > 0.05
    torch.testing.assert_close(attrs.sum(0), want, rtol=0, atol=1e-4)
    try:  # TL's fifth step where the scores are a bilinear form of one W_Q, W_K per head (no RoPE/QK-norm/GQA)
        _check_refactorable(model)
    except InterpError:
        return
    with torch.no_grad():
        refactored = model.process_weights(refactor_factored_attn_matrices=True)(tokens)
    torch.testing.assert_close(refactored.log_softmax(-1), ref.log_softmax(-1), rtol=0, atol=1e-5 * ref.abs().max())


@pytest.mark.parametrize("case", ["bloom", "gemma3", "qwen2_moe", "gpt_oss", "llama4", "deepseek_v3"])
def test_interp_checkpoint_of_a_family_round_trips(case, tmp_path):
    """Saved as our own checkpoint (config.json + safetensors) and loaded back: the same model."""
    _, model = _pair(case)
    model.save(tmp_path / case)
    again = interp.load(tmp_path / case)
    tokens = _tokens(5)
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), model(tokens), rtol=0, atol=0)
    assert again.cfg.to_dict() | {"source": {}} == model.cfg.to_dict() | {"source": {}}


def test_folder_load_takes_n_ctx_dtype_and_special_tokens_from_the_config(tmp_path):
    hf, _ = _pair("llama3")
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    hf.to(torch.float32)
    model = interp.load(tmp_path)
    cfg = model.cfg
    assert cfg.dtype == "bfloat16" and model.W_E.dtype == torch.bfloat16  # bf16 stays bf16
    assert cfg.n_ctx == N_CTX and cfg.bos_token_id == 1 and cfg.eos_token_id == 2
    assert cfg.rope_parameters["rope_type"] == "llama3"
    tokens = _tokens(3)
    with torch.no_grad():
        ref = hf.to(torch.bfloat16)(tokens).logits.float()
        ours = model(tokens).float()
    hf.to(torch.float32)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0.05 * ref.abs().max())  # bf16: a few ulps of rounding


def test_a_model_larger_than_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    import psutil
    import transformers

    hf, _ = _pair("gpt2")
    hf.save_pretrained(tmp_path)

    class Tiny:
        available = 1000  # bytes

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained must not run: the model does not fit")

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(InterpError, match=r"needs about .* GiB of cpu memory but only"):
        interp.load(tmp_path)
    with pytest.raises(InterpError, match="memory"):
        interp.load(hf)  # an object already in memory: our copy would not fit either


def test_an_unsupported_architecture_is_refused_naming_what_it_needs():
    """On the native path; without path='native' these open on the universal path (tests/test_universal.py)."""
    import transformers

    mamba = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1)
    with pytest.raises(InterpError, match=r"MambaForCausalLM .*interp models --families"):
        interp.load(transformers.MambaForCausalLM(mamba), path="native")
    mpt = transformers.MptConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, max_seq_len=N_CTX,
                                 attn_config={"qk_ln": True})
    with pytest.raises(InterpError, match=r"MPT: the config setting attn_config_qk_ln"):
        interp.load(transformers.MptForCausalLM(mpt), path="native")
    assert interp.load(transformers.MptForCausalLM(mpt)).cfg.path == "universal"  # auto: HF's modules run it
    with pytest.raises(InterpError, match=r"GPT2ForSequenceClassification .* not a causal language model"):
        interp.load(transformers.GPT2ForSequenceClassification(transformers.GPT2Config(**CASES["gpt2"][1])))


def test_the_variant_settings_bind_in_their_cases():
    """The variant cases test something: OLMo's clip actually clamps there, and each QK-norm has distinct
    per-head parameters loaded (not the identity an unmapped norm would leave)."""
    for case in ("olmo_clip_qkv", "mpt"):
        _, model = _pair(case)
        clip = model.cfg.clip_qkv
        unclipped = copy.deepcopy(model)
        unclipped.cfg.clip_qkv = None
        tokens = _tokens()
        with torch.no_grad():
            _, cache = unclipped.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_q"))
            assert cache["blocks.0.attn.hook_q"].abs().max() > 2 * clip
            assert (unclipped(tokens) - model(tokens)).abs().max() > 1e-2
    _, glm4_moe = _pair("glm4_moe")  # the group limit and the correction bias both change which experts are chosen
    ungrouped, uncorrected = copy.deepcopy(glm4_moe), copy.deepcopy(glm4_moe)
    ungrouped.cfg.router_groups = ungrouped.cfg.router_topk_groups = 1
    with torch.no_grad():
        for block in uncorrected.blocks[1:]:
            block.mlp.b_choice.zero_()
        chosen = [m.run_with_cache(_tokens(), names_filter="blocks.1.mlp.hook_expert_indices")[1][
            "blocks.1.mlp.hook_expert_indices"].sort(-1)[0] for m in (glm4_moe, ungrouped, uncorrected)]
    assert (chosen[0] != chosen[1]).any() and (chosen[0] != chosen[2]).any()
    with pytest.raises(InterpError, match="multi-head latent attention .* no per-head W_K"):
        _ = _pair("deepseek_v3")[1].W_K  # latent attention has no per-head key matrix to hand out
    _, phimoe = _pair("phimoe")  # sparsemixer's margin admits rival experts: weights below 1 (margin 0: all 1)
    with torch.no_grad():
        _, cache = phimoe.run_with_cache(_tokens(), names_filter=lambda n: n.endswith("hook_expert_weights"))
    assert cache["blocks.0.mlp.hook_expert_weights"].min() < 0.9
    for case, shape in (("stablelm_qk_layernorm", (4, 8)), ("cohere_qk_norm", (4, 8)), ("phi_qk_layernorm", (8,))):
        norm = _pair(case)[1].blocks[1].attn.q_norm
        assert tuple(norm.w.shape) == shape and (norm.w - 1).abs().min() > 0
        assert (norm.b is None) == (case != "phi_qk_layernorm")  # StableLM's and Cohere's have no bias


def test_variant_settings_are_validated():
    from interp.model.config import DecoderConfig

    base = {"d_vocab": 40, "n_ctx": 16, "d_model": 16, "n_layers": 1, "n_heads": 2}
    with pytest.raises(InterpError, match="alibi_before_scale=True needs alibi=True"):
        DecoderConfig(**base, alibi_before_scale=True)
    with pytest.raises(InterpError, match=r"clip_qkv must be a finite number > 0 or None; got -1"):
        DecoderConfig(**base, clip_qkv=-1.0)
    with pytest.raises(InterpError, match="qk_norm must be one of"):
        DecoderConfig(**base, qk_norm="per_layer")
    with pytest.raises(InterpError, match="'chunked_attention' layers but attention_chunk_size is None"):
        DecoderConfig(**base, layer_types=["chunked_attention"])
    with pytest.raises(InterpError, match=r"qk_norm_layers must be a list with one entry per layer \(n_layers=1\)"):
        DecoderConfig(**base, qk_norm="per_head", qk_norm_layers=[True, False])
    with pytest.raises(InterpError, match="router_sparsemixer_eps .* needs n_experts_per_token=2"):
        DecoderConfig(**base, n_experts=4, n_experts_per_token=1, router_sparsemixer_eps=0.01)
    with pytest.raises(InterpError, match="swiglu_limit .* needs gated=True"):
        DecoderConfig(**base, swiglu_limit=7.0)
