"""The families researchers study: `transformers` configs and weights → DecoderConfig + our weights.

One table, :data:`FAMILIES`, maps each ``*ForCausalLM`` class to a :class:`Family`:

* ``config`` reads the `transformers` config into DecoderConfig keyword arguments (every architectural
  choice is a config option of our model: the family adds no model code);
* ``names`` says where each *slot* lives in the HF state dict (module paths; ``{l}`` is the layer);
* ``split`` (optional) cuts a family's fused tensors (GPT-2's Conv1D ``c_attn``, NeoX/Bloom/Falcon's
  ``query_key_value``, CodeGen's ``qkv_proj``, Phi-3's ``qkv_proj``/``gate_up_proj``) into those slots.

Slots hold HF ``nn.Linear`` layouts (``weight`` [out, in], ``bias`` [out]); :func:`to_interp_state` then
rearranges them into TransformerLens' per-head shapes, the same code for every family. Every tensor of
the HF state dict must be consumed by some slot: a weight we would silently ignore (say a QK-norm of a
variant we do not map) is an error naming it, never a quietly wrong model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import einops
import torch

from interp.errors import InterpError, OutOfMemoryRefusal

ACTS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new", "gelu": "gelu",
        "relu": "relu", "silu": "silu", "swish": "silu", "relu2": "relu2"}

# Slots per layer (prefix "layers.{l}.") and global slots. Norm slots hold weight (+ bias for LayerNorm).
LAYER_SLOTS = ("ln1", "ln2", "q", "k", "v", "o", "gate", "up", "down", "q_norm", "k_norm", "ln1_post", "ln2_post",
               "router", "experts_gate_up", "experts_down", "shared_gate", "shared_up", "shared_down",
               "shared_expert_gate", "sinks", "router_correction", "q_a", "q_a_norm", "q_b", "kv_a", "kv_a_norm",
               "kv_b")
GLOBAL_SLOTS = ("embed", "pos", "embed_ln", "final_norm", "lm_head")


# --- reading the HF config ------------------------------------------------------------------------
def _get(c, *names, default=None):
    """The first of ``names`` the HF config has (families spell the same thing differently)."""
    for name in names:
        value = getattr(c, name, None)
        if value is not None:
            return value
    return default


def _act(c, family: str) -> str:
    name = _get(c, "hidden_activation", "hidden_act", "activation_function", "activation", default="gelu")
    if name not in ACTS:
        raise InterpError(f"{family}: activation {name!r} is not supported; supported: {sorted(ACTS)}.")
    return ACTS[name]


def _token_id(value, vocab: int) -> int | None:
    """A special-token id from the config (first of a list), kept only if it lies inside the vocabulary."""
    value = value[0] if isinstance(value, (list, tuple)) and value else value
    return value if isinstance(value, int) and 0 <= value < vocab else None


def _rope(c) -> dict:
    """rotary_base, rotary_fraction and (for scaled / per-layer-type RoPE) rope_parameters."""
    params = dict(_get(c, "rope_parameters", "rope_scaling", default={}) or {})
    per_type = bool(params) and set(params) <= {"full_attention", "sliding_attention"}
    main = params.get("full_attention", {}) if per_type else params
    base = main.get("rope_theta", _get(c, "rope_theta", "rotary_emb_base", default=10000.0))
    fraction = main.get("partial_rotary_factor", _get(c, "partial_rotary_factor", "rotary_pct", default=1.0))
    out = {"positional": "rotary", "rotary_base": float(base), "rotary_fraction": float(fraction)}
    if per_type:  # Gemma 3: a RoPE (base, scaling) per layer type
        out["rope_parameters"] = {t: {k: v for k, v in p.items() if k != "partial_rotary_factor"}
                                  for t, p in params.items()}
    elif main.get("rope_type", main.get("type", "default")) != "default":
        out["rope_parameters"] = {k: v for k, v in main.items() if k != "partial_rotary_factor"}
        if "original_max_position_embeddings" not in out["rope_parameters"] and out["rope_parameters"].get(
                "rope_type") in ("yarn", "longrope", "dynamic"):
            original = _get(c, "original_max_position_embeddings")
            if original is not None:
                out["rope_parameters"]["original_max_position_embeddings"] = original
    return out


def _window(c) -> dict:
    """sliding_window / layer_types from transformers' config (use_sliding_window, layer_types)."""
    window = _get(c, "sliding_window")
    if not window or not getattr(c, "use_sliding_window", True):
        return {}
    types = getattr(c, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return {}
    out = {"sliding_window": int(window)}
    if types is not None:
        out["layer_types"] = list(types)
    return out


def _common(c, family: str, **kw) -> dict:
    vocab = c.vocab_size
    out = {
        "d_vocab": vocab,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "n_ctx": _get(c, "max_position_embeddings", "n_positions"),
        "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "bos_token_id": _token_id(getattr(c, "bos_token_id", None), vocab),
        "eos_token_id": _token_id(getattr(c, "eos_token_id", None), vocab),
        "name": getattr(c, "name_or_path", "") or family,
    }
    out.update(kw)
    return out


def _refuse(family: str, **settings) -> None:
    """Raise for the first HF setting that is on and that we cannot reproduce (name = what it is)."""
    for what, on in settings.items():
        if on:
            raise InterpError(f"{family}: the config setting {what} is not supported by interp's model.")


def _llama_like(c, family: str, **kw) -> dict:
    """Llama's recipe (RMSNorm, SwiGLU, RoPE, GQA), the base most modern families adjust."""
    head_dim = _get(c, "head_dim", default=c.hidden_size // c.num_attention_heads)
    bias = bool(_get(c, "attention_bias", "qkv_bias", "use_qkv_bias", default=False))
    out = _common(
        c, family, n_kv_heads=_get(c, "num_key_value_heads", default=c.num_attention_heads), d_head=head_dim,
        d_mlp=c.intermediate_size, norm="rmsnorm", norm_eps=_get(c, "rms_norm_eps", "layer_norm_eps", default=1e-6),
        act=_act(c, family), gated=True, attn_bias=bias, attn_out_bias=bool(getattr(c, "attention_bias", False)),
        mlp_bias=bool(getattr(c, "mlp_bias", False)), **_rope(c), **_window(c),
    )
    out.update(kw)
    return out


# --- one config reader per family ---------------------------------------------------------------------
def gpt2(c) -> dict:
    _refuse("GPT-2", scale_attn_by_inverse_layer_idx=getattr(c, "scale_attn_by_inverse_layer_idx", False),
            reorder_and_upcast_attn=getattr(c, "reorder_and_upcast_attn", False),
            scale_attn_weights_False=not getattr(c, "scale_attn_weights", True))
    return _common(c, "GPT-2", d_mlp=c.n_inner or 4 * c.n_embd, positional="learned", norm_eps=c.layer_norm_epsilon,
                   act=_act(c, "GPT-2"), tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)))


def gpt_neo(c) -> dict:
    layers = list(c.attention_layers)
    local = [t == "local" for t in layers]
    kw = {}
    if any(local):
        kw = {"sliding_window": c.window_size,
              "layer_types": ["sliding_attention" if x else "full_attention" for x in local]}
    return _common(c, "GPT-Neo", d_mlp=c.intermediate_size or 4 * c.hidden_size, positional="learned",
                   norm_eps=c.layer_norm_epsilon, act=_act(c, "GPT-Neo"), attn_bias=False, attn_out_bias=True,
                   attn_multiplier=1.0,  # GPT-Neo does not divide scores by sqrt(d_head)
                   tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)), **kw)


def gptj(c) -> dict:
    """GPT-J and CodeGen: one block (parallel, a shared LayerNorm, interleaved partial rotary); only CodeGen's
    fused qkv layout differs (:func:`_split_codegen`)."""
    family = type(c).__name__.removesuffix("Config")
    d_head = c.n_embd // c.n_head
    rotary = c.rotary_dim or d_head
    return _common(c, family, d_mlp=c.n_inner or 4 * c.n_embd, positional="rotary", rotary_fraction=rotary / d_head,
                   rotary_interleaved=True, norm_eps=c.layer_norm_epsilon, act=_act(c, family),
                   parallel_residual=True, shared_norm=True, attn_bias=False, mlp_bias=True)


def gpt_bigcode(c) -> dict:
    """StarCoder / SantaCoder: GPT-2's block with multi-query attention (one key/value head) by default."""
    return _common(c, "GPTBigCode", n_kv_heads=1 if c.multi_query else c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
                   positional="learned", norm_eps=c.layer_norm_epsilon, act=_act(c, "GPTBigCode"),
                   attn_multiplier=None if c.scale_attn_weights else 1.0,
                   tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)))


def neox(c) -> dict:
    return _common(c, "GPT-NeoX", d_mlp=c.intermediate_size, norm_eps=c.layer_norm_eps, act=_act(c, "GPT-NeoX"),
                   parallel_residual=bool(c.use_parallel_residual), attn_bias=bool(getattr(c, "attention_bias", True)),
                   **_rope(c))


def opt(c) -> dict:
    _refuse("OPT", word_embed_proj_dim_different_from_hidden_size=c.word_embed_proj_dim != c.hidden_size,
            layer_norm_without_elementwise_affine=not c.layer_norm_elementwise_affine)
    pre = c.do_layer_norm_before
    return _common(c, "OPT", d_mlp=c.ffn_dim, positional="learned", pos_offset=2, act=_act(c, "OPT"),
                   norm_placement="pre" if pre else "post", final_norm=pre and not c._remove_final_layer_norm,
                   attn_bias=c.enable_bias, mlp_bias=c.enable_bias)


def bloom(c) -> dict:
    return _common(c, "Bloom", n_ctx=getattr(c, "seq_length", None) or 2048, positional="none", alibi=True,
                   embed_norm=True, norm_eps=c.layer_norm_epsilon, act="gelu_new")


def mpt(c) -> dict:
    """MPT: pre-LN blocks without any bias (LayerNorms included), exact GELU, Bloom's ALiBi slopes (MPT's recipe
    gives the same slopes for alibi_bias_max=8, the only value transformers' MptModel builds), clip_qkv."""
    a = c.attn_config
    _refuse("MPT", attn_config_alibi_False=not a.alibi, attn_config_alibi_bias_max_not_8=a.alibi_bias_max != 8,
            attn_config_qk_ln=a.qk_ln, attn_config_prefix_lm=a.prefix_lm,
            attn_config_attn_uses_sequence_id=a.attn_uses_sequence_id)
    return _common(c, "MPT", n_ctx=c.max_seq_len, d_mlp=4 * c.d_model, positional="none", alibi=True, act="gelu",
                   norm_eps=c.layer_norm_epsilon, attn_bias=False, mlp_bias=False, clip_qkv=a.clip_qkv or None,
                   attn_multiplier=a.softmax_scale, tie_embeddings=True)


def falcon(c) -> dict:
    new = bool(c.new_decoder_architecture)
    kv = c.num_kv_heads if new else (1 if c.multi_query else c.num_attention_heads)
    parallel = new or bool(c.parallel_attn)
    shared = parallel and (not new or getattr(c, "num_ln_in_parallel_attn", 2) == 1)
    # Falcon-RW (alibi=True) adds Bloom's ALiBi to q·k *before* the 1/sqrt(d_head) scale, as its original
    # modelling code and transformers' sdpa path do. (transformers' eager path adds it a second time through
    # the mask: its eager and sdpa logits differ; we follow the original and sdpa.)
    kw = {"positional": "none", "alibi": True, "alibi_before_scale": True} if c.alibi else _rope(c)
    return _common(c, "Falcon", n_kv_heads=kv, d_mlp=getattr(c, "ffn_hidden_size", None) or 4 * c.hidden_size,
                   norm_eps=c.layer_norm_epsilon, act=_act(c, "Falcon"), parallel_residual=parallel,
                   shared_norm=shared, attn_bias=bool(c.bias), mlp_bias=bool(c.bias),
                   n_ctx=getattr(c, "max_position_embeddings", None) or 2048, **kw)


def llama(c) -> dict:
    return _llama_like(c, type(c).__name__.removesuffix("Config"))


def qwen2(c) -> dict:
    return _llama_like(c, "Qwen2", attn_bias=True, attn_out_bias=False)


def qwen3(c) -> dict:
    return _llama_like(c, "Qwen3", qk_norm="per_head")


def mixtral(c) -> dict:
    return _llama_like(c, "Mixtral", n_experts=c.num_local_experts, n_experts_per_token=c.num_experts_per_tok,
                       router_norm_topk=True)


def _qwen_moe(c) -> dict:
    """Qwen's MoE layout: every decoder_sparse_step-th layer routes (softmax over all experts, top-k, optionally
    renormalised), except the dense layers listed in mlp_only_layers."""
    step, dense = c.decoder_sparse_step, set(c.mlp_only_layers or [])
    moe_layers = [i for i in range(c.num_hidden_layers) if i not in dense and c.num_experts > 0 and (i + 1) % step == 0]
    return {"n_experts": c.num_experts, "n_experts_per_token": c.num_experts_per_tok, "d_expert": c.moe_intermediate_size,
            "moe_layers": moe_layers, "router_norm_topk": bool(c.norm_topk_prob)}


def qwen2_moe(c) -> dict:
    return _llama_like(c, "Qwen2-MoE", attn_bias=bool(getattr(c, "qkv_bias", True)), attn_out_bias=False,
                       d_shared_expert=c.shared_expert_intermediate_size or None, shared_expert_gate=True,
                       **_qwen_moe(c))


def qwen3_moe(c) -> dict:
    """Qwen3's attention (QK-norm over d_head) with Qwen's routed experts and no shared expert."""
    return _llama_like(c, "Qwen3-MoE", qk_norm="per_head", **_qwen_moe(c))


def gemma(c) -> dict:
    return _llama_like(c, "Gemma", norm_weight_offset=1.0, embed_multiplier=c.hidden_size ** 0.5)


def gemma2(c) -> dict:
    return _llama_like(c, "Gemma 2", norm_weight_offset=1.0, embed_multiplier=c.hidden_size ** 0.5,
                       norm_placement="sandwich", attn_softcap=c.attn_logit_softcapping,
                       final_softcap=c.final_logit_softcapping, attn_multiplier=c.query_pre_attn_scalar ** -0.5)


def gemma3(c) -> dict:
    return _llama_like(c, "Gemma 3", norm_weight_offset=1.0, embed_multiplier=c.hidden_size ** 0.5,
                       norm_placement="sandwich", attn_softcap=c.attn_logit_softcapping, qk_norm="per_head",
                       final_softcap=c.final_logit_softcapping, attn_multiplier=c.query_pre_attn_scalar ** -0.5)


def gemma3_multimodal(c) -> dict:
    """Gemma3ForConditionalGeneration (Gemma 3 4B/12B/27B): its text tower is a Gemma 3 text model; text-only
    input never reaches the vision tower, so the model we build is that tower with the LM head."""
    return gemma3(c.text_config)


def phi(c) -> dict:
    qk = {"qk_norm": "per_head"} if getattr(c, "qk_layernorm", False) else {}  # one LayerNorm over d_head
    return _common(c, "Phi", n_kv_heads=_get(c, "num_key_value_heads", default=c.num_attention_heads),
                   d_mlp=c.intermediate_size, norm_eps=c.layer_norm_eps, act=_act(c, "Phi"),
                   parallel_residual=True, shared_norm=True, **_rope(c), **qk)


def phi3(c) -> dict:
    return _llama_like(c, "Phi-3", attn_bias=False, attn_out_bias=False)


def stablelm(c) -> dict:
    parallel = bool(getattr(c, "use_parallel_residual", False))
    qk = {"qk_norm": "each_head"} if getattr(c, "qk_layernorm", False) else {}  # a bias-free LayerNorm per head
    return _llama_like(c, "StableLM", norm="layernorm", norm_eps=c.layer_norm_eps, parallel_residual=parallel,
                       shared_norm=parallel, attn_out_bias=False, **qk)


def olmo(c) -> dict:
    return _llama_like(c, "OLMo", norm="layernorm", norm_eps=1e-5, norm_affine=False,
                       clip_qkv=getattr(c, "clip_qkv", None))


def olmo2(c) -> dict:
    return _llama_like(c, "OLMo 2", norm_placement="sublayer_post", qk_norm="across_heads")


def cohere(c) -> dict:
    qk = {"qk_norm": "each_head"} if getattr(c, "use_qk_norm", False) else {}  # gains [heads, d_head], no bias
    return _llama_like(c, "Cohere", norm="layernorm", norm_eps=c.layer_norm_eps, parallel_residual=True,
                       shared_norm=True, rotary_interleaved=True, logit_scale=c.logit_scale, **qk)


def granite(c) -> dict:
    return _llama_like(c, "Granite", embed_multiplier=c.embedding_multiplier, residual_multiplier=c.residual_multiplier,
                       attn_multiplier=c.attention_multiplier, logit_scale=1.0 / c.logits_scaling)


def smollm3(c) -> dict:
    rope_layers = [bool(x) for x in c.no_rope_layers]  # transformers: 1 = this layer uses RoPE
    return _llama_like(c, "SmolLM3", **({} if all(rope_layers) else {"rope_layers": rope_layers}))


def ministral3(c) -> dict:
    """Ministral 3: Mistral's block, YaRN RoPE, and queries scaled by position (its llama_4_scaling_beta)."""
    out = _llama_like(c, "Ministral 3")
    params = out.get("rope_parameters") or {}
    beta = params.pop("llama_4_scaling_beta", None)
    params.pop("max_position_embeddings", None)
    if beta:
        out.update(query_scale_beta=float(beta), query_scale_length=int(params["original_max_position_embeddings"]))
    return out


def xglm(c) -> dict:
    """XGLM: fairseq's pre-LN decoder; token embeddings scaled by sqrt(d_model), fixed sinusoidal positions
    (fairseq's [sin | cos] layout, read from row p + 2), which we hold as a position table (:func:`_xglm_positions`)."""
    return _common(c, "XGLM", d_mlp=c.ffn_dim, positional="learned", pos_offset=2, act=_act(c, "XGLM"),
                   embed_multiplier=c.d_model ** 0.5 if c.scale_embedding else 1.0,
                   tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)))


def nanochat(c) -> dict:
    """NanoChat: parameter-free RMSNorms (on the embeddings too), RoPE by -angle, QK-norm after RoPE, a plain
    squared-ReLU MLP, and a final logit soft-cap."""
    return _llama_like(c, "NanoChat", gated=False, norm_affine=False, embed_norm=True, rotary_reversed=True,
                       qk_norm="per_head", qk_norm_after_rope=True, final_softcap=c.final_logit_softcapping)


def gpt_oss(c) -> dict:
    """GPT-OSS: attention sinks, alternating sliding/full layers, biased attention, YaRN; an MoE with a biased
    router (top-k of the logits, softmax over the k) and biased experts with GPT-OSS's clamped SwiGLU."""
    return _llama_like(c, "GPT-OSS", attn_sinks=True, n_experts=c.num_local_experts,
                       n_experts_per_token=c.num_experts_per_tok, router_softmax_after_topk=True, router_bias=True,
                       mlp_bias=True, swiglu_limit=float(c.swiglu_limit), swiglu_alpha=float(c.swiglu_alpha))


def llama4(c) -> dict:
    """Llama 4's text model: RoPE layers (interleaved pairs) with chunked attention and a parameter-free QK-norm,
    NoPE layers with full attention and position-scaled queries; MoE layers (top-k by sigmoid, the weight scaling
    the expert's input) with a shared expert, dense layers of intermediate_size_mlp."""
    rope = [bool(x) for x in c.no_rope_layers]  # transformers: 1 = this layer uses RoPE
    out = _llama_like(c, "Llama 4", d_mlp=c.intermediate_size_mlp, rotary_interleaved=True,
                      rope_layers=None if all(rope) else rope, layer_types=list(c.layer_types),
                      attention_chunk_size=c.attention_chunk_size if "chunked_attention" in c.layer_types else None,
                      n_experts=c.num_local_experts, n_experts_per_token=c.num_experts_per_tok,
                      d_expert=c.intermediate_size, moe_layers=list(c.moe_layers), router_sigmoid=True,
                      router_norm_topk=False,
                      router_scale_input=True, d_shared_expert=c.intermediate_size, shared_expert_gate=False)
    if c.use_qk_norm:
        out.update(qk_norm="per_head", qk_norm_layers=rope)
    if c.attn_temperature_tuning and not all(rope):
        out.update(query_scale_beta=float(c.attn_scale), query_scale_length=int(c.floor_scale), query_scale_offset=1,
                   query_scale_layers=[not r for r in rope])
    return out


def arcee(c) -> dict:
    """Arcee (AFM): Llama's attention with a plain squared-ReLU MLP (up, down)."""
    return _llama_like(c, "Arcee", gated=False)


def ernie4_5(c) -> dict:
    """ERNIE 4.5: Llama's recipe with interleaved RoPE pairs and one use_bias switch for every projection."""
    bias = bool(getattr(c, "use_bias", False))
    return _llama_like(c, "ERNIE 4.5", rotary_interleaved=True, attn_bias=bias, attn_out_bias=bias, mlp_bias=bias)


def vaultgemma(c) -> dict:
    """VaultGemma: Gemma 2 without its post-sublayer norms (pre-norm blocks)."""
    return gemma2(c) | {"norm_placement": "pre"}


def flex_olmo(c) -> dict:
    """FlexOlmo: OLMo 2's block (norms on the sublayer outputs, QK-norm across heads) with OLMoE's experts."""
    return _llama_like(c, "FlexOlmo", norm_placement="sublayer_post", qk_norm="across_heads", n_experts=c.num_experts,
                       n_experts_per_token=c.num_experts_per_tok, router_norm_topk=bool(c.norm_topk_prob))


def nemotron(c) -> dict:
    """Nemotron: LayerNorms whose gain is 1 + w (LayerNorm1P), a plain squared-ReLU MLP, partial RoPE."""
    return _llama_like(c, "Nemotron", norm="layernorm", norm_eps=c.norm_eps, norm_weight_offset=1.0, gated=False)


def hunyuan_dense(c) -> dict:
    """Hunyuan dense: Llama's recipe with a QK-norm (over d_head) of the rotated q, k. Its "dynamic" RoPE with a
    fixed alpha is static NTK scaling: the base times alpha^(d/(d-2))."""
    out = _llama_like(c, "HunYuan", qk_norm="per_head", qk_norm_after_rope=True)
    params = out.get("rope_parameters") or {}
    if params.get("rope_type") == "dynamic" and params.get("alpha"):
        dim = out["d_head"]
        out["rotary_base"] = out["rotary_base"] * float(params["alpha"]) ** (dim / (dim - 2))
        del out["rope_parameters"]
    return out


def _deepseek_moe(c) -> dict:
    """DeepSeek V3's experts (also GLM-4-MoE's): after first_k_dense_replace dense layers, a router of sigmoid scores
    with a choice-only correction bias, group-limited top-k and routed scaling, plus always-on shared experts."""
    return {"n_experts": c.n_routed_experts, "n_experts_per_token": c.num_experts_per_tok,
            "d_expert": c.moe_intermediate_size, "moe_layers": list(range(c.first_k_dense_replace, c.num_hidden_layers)),
            "router_sigmoid": True, "router_correction_bias": True, "router_groups": c.n_group or 1,
            "router_topk_groups": c.topk_group or 1, "router_norm_topk": bool(c.norm_topk_prob),
            "routed_scaling": float(c.routed_scaling_factor), "shared_expert_gate": False,
            "d_shared_expert": c.moe_intermediate_size * c.n_shared_experts if c.n_shared_experts else None}


def glm4_moe(c) -> dict:
    """GLM-4-MoE (GLM-4.5/4.6): GLM's biased q/k/v with rotate-half partial RoPE, optional QK-norm, DeepSeek V3's
    experts."""
    qk = {"qk_norm": "per_head"} if getattr(c, "use_qk_norm", False) else {}
    return _llama_like(c, "GLM-4-MoE", attn_out_bias=False, **_deepseek_moe(c), **qk)


def _latent(c, family: str, **kw) -> dict:
    """DeepSeek's multi-head latent attention (kv_lora_rank, q_lora_rank; RoPE on a qk_rope_head_dim tail, one rotated
    key part shared by all heads; value heads of v_head_dim) and DeepSeek's experts. With YaRN, the score scale
    carries mscale_all_dim's factor squared, as transformers' yarn_apply_mscale."""
    _refuse(family, attention_bias=getattr(c, "attention_bias", False))
    d_head = c.qk_nope_head_dim + c.qk_rope_head_dim
    scale = d_head ** -0.5
    params = c.rope_parameters or {}
    if params.get("rope_type", "default") != "default" and params.get("mscale_all_dim"):
        mscale = 0.1 * params["mscale_all_dim"] * math.log(params["factor"]) + 1.0 if params["factor"] > 1 else 1.0
        scale *= mscale * mscale
    return _llama_like(c, family, n_kv_heads=c.num_attention_heads, d_head=d_head, d_head_v=c.v_head_dim,
                       kv_lora_rank=c.kv_lora_rank, q_lora_rank=c.q_lora_rank, qk_rope_dim=c.qk_rope_head_dim,
                       rotary_interleaved=bool(getattr(c, "rope_interleave", True)), attn_multiplier=scale,
                       attn_bias=False, attn_out_bias=False, **{**_deepseek_moe(c), **kw})


def deepseek_v3(c) -> dict:
    return _latent(c, "DeepSeek V3")


def deepseek_v2(c) -> dict:
    """DeepSeek V2: V3's latent attention with its RoPE pairs left in place (complex RoPE), and its own router: a
    softmax over all experts, top-k (group_limited_greedy: from the best groups by their top score), routed scaling."""
    _refuse("DeepSeek V2", topk_method_unsupported=c.topk_method not in ("greedy", "group_limited_greedy"))
    grouped = c.topk_method == "group_limited_greedy"
    return _latent(c, "DeepSeek V2", rope_tail_deinterleave=False, router_sigmoid=False,
                   router_correction_bias=False, router_norm_topk=False, router_group_score_top=1,
                   router_groups=c.n_group if grouped else 1, router_topk_groups=c.topk_group if grouped else 1)


def seed_oss(c) -> dict:
    return _llama_like(c, "Seed-OSS", attn_out_bias=bool(getattr(c, "attention_out_bias", False)))


def starcoder2(c) -> dict:
    """Starcoder2: Llama's attention (GQA, RoPE, optional sliding window) with GPT-2's LayerNorms and plain MLP."""
    bias = bool(c.use_bias)
    return _llama_like(c, "Starcoder2", norm="layernorm", norm_eps=c.norm_epsilon, gated=False, attn_bias=bias,
                       attn_out_bias=bias, mlp_bias=bias)


def _rope_on_sliding_layers(c) -> dict:
    """Cohere 2 and EXAONE 4: with a sliding window, only the sliding layers use RoPE (the global ones: none)."""
    if not getattr(c, "sliding_window", None):
        return {}
    rope = [t == "sliding_attention" for t in c.layer_types]
    return {} if all(rope) else {"rope_layers": rope}


def olmo3(c) -> dict:
    """OLMo 3: OLMo 2's block (norms on the sublayer outputs, QK-norm across heads) with sliding-window layers."""
    return _llama_like(c, "OLMo 3", norm_placement="sublayer_post", qk_norm="across_heads")


def exaone4(c) -> dict:
    """EXAONE 4: norms on the sublayer outputs, QK-norm over d_head, local layers with RoPE, global ones without."""
    return _llama_like(c, "EXAONE 4", norm_placement="sublayer_post", qk_norm="per_head", **_rope_on_sliding_layers(c))


def cohere2(c) -> dict:
    out = cohere(c)
    out.update(_rope_on_sliding_layers(c))
    return out


def glm(c) -> dict:
    """GLM / GLM-4: Llama's recipe with q/k/v biases, interleaved partial RoPE; GLM-4 adds post-sublayer norms."""
    family = "GLM-4" if type(c).__name__ == "Glm4Config" else "GLM"
    sandwich = {"norm_placement": "sandwich"} if family == "GLM-4" else {}
    return _llama_like(c, family, attn_out_bias=False, rotary_interleaved=True, **sandwich)


def openai_gpt(c) -> dict:
    """GPT-1: post-LN blocks (LN(x + f(x))), learned positions, no final norm, tied head."""
    act = {"gelu": "gelu_new", "relu": "relu", "silu": "silu", "swish": "silu"}.get(c.afn)  # its "gelu" is tanh
    _refuse("OpenAI GPT", afn_unsupported=act is None)
    return _common(c, "OpenAI GPT", d_mlp=4 * c.n_embd, positional="learned", norm_eps=c.layer_norm_epsilon,
                   act=act, norm_placement="post", final_norm=False,
                   tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)))


def olmoe(c) -> dict:
    """OLMoE: OLMo 2's QK-norm across heads in a pre-norm block, routed experts (softmax, top-k)."""
    _refuse("OLMoE", clip_qkv=getattr(c, "clip_qkv", None))  # OLMoE clamps after its QK-norm; interp before
    return _llama_like(c, "OLMoE", qk_norm="across_heads", n_experts=c.num_experts,
                       n_experts_per_token=c.num_experts_per_tok, router_norm_topk=bool(c.norm_topk_prob))


def granite_moe(c) -> dict:
    """Granite-MoE (and GraniteMoeShared): Granite's multipliers; top-k of the router logits, softmax over the k;
    the shared variant adds an always-on, ungated SwiGLU expert."""
    shared = getattr(c, "shared_intermediate_size", 0) or None
    return granite(c) | {"n_experts": c.num_local_experts, "n_experts_per_token": c.num_experts_per_tok,
                         "router_softmax_after_topk": True, "d_shared_expert": shared, "shared_expert_gate": False}


def phimoe(c) -> dict:
    """PhiMoE: Mixtral's block with LayerNorms, biased attention and LM head, and sparsemixer routing (top-2)."""
    rope = _rope(c)
    _refuse("PhiMoE", num_experts_per_tok_not_2=c.num_experts_per_tok != 2,
            rope_scaling_with_short_long_mscale="rope_parameters" in rope)
    return _llama_like(c, "PhiMoE", norm="layernorm", n_experts=c.num_local_experts, n_experts_per_token=2,
                       router_sparsemixer_eps=c.router_jitter_noise)


# --- fused tensors -> slots -------------------------------------------------------------------------------
def _split_gpt2(sd: dict, cfg: dict) -> None:
    """GPT-2's Conv1D stores [in, out]; c_attn is [q | k | v] along out."""
    for l in range(cfg["n_layers"]):
        p = f"transformer.h.{l}."
        W, b = sd.pop(p + "attn.c_attn.weight").T, sd.pop(p + "attn.c_attn.bias")
        for i, slot in enumerate("qkv"):
            sd[f"layers.{l}.{slot}.weight"], sd[f"layers.{l}.{slot}.bias"] = W.chunk(3)[i], b.chunk(3)[i]
        for slot, name in (("o", "attn.c_proj"), ("up", "mlp.c_fc"), ("down", "mlp.c_proj")):
            sd[f"layers.{l}.{slot}.weight"] = sd.pop(p + name + ".weight").T
            sd[f"layers.{l}.{slot}.bias"] = sd.pop(p + name + ".bias")


def _heads_qkv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """A fused projection whose output features are grouped per head as [q | k | v] -> [3, heads·d, ...]."""
    return einops.rearrange(t, "(h three d) ... -> three (h d) ...", h=heads, three=3)


def _zero_bias(sd: dict, *norms: str) -> None:
    """A LayerNorm with a gain and no bias (Cohere, MPT): ours with a zero bias is the same function."""
    for norm in norms:
        sd[norm + ".bias"] = torch.zeros_like(sd[norm + ".weight"])


def _per_head_qkv(prefix: str):
    """NeoX / Bloom / GPTBigCode (multi_query=False): output features grouped per head as [q | k | v]."""
    def split(sd: dict, cfg: dict) -> None:
        for l in range(cfg["n_layers"]):
            for kind in ("weight", "bias"):
                key = prefix.format(l=l) + "." + kind
                if key in sd:
                    for slot, x in zip("qkv", _heads_qkv(sd.pop(key), cfg["n_heads"])):
                        sd[f"layers.{l}.{slot}.{kind}"] = x
    return split


def _split_falcon(sd: dict, cfg: dict) -> None:
    H, K = cfg["n_heads"], cfg["n_kv_heads"]
    for l in range(cfg["n_layers"]):
        for kind in ("weight", "bias"):
            key = f"transformer.h.{l}.self_attention.query_key_value.{kind}"
            if key not in sd:
                continue
            t = sd.pop(key)
            if K == H:  # per head [q | k | v]
                q, k, v = _heads_qkv(t, H)
            else:  # per kv group [q_1 .. q_{H/K} | k | v] (new_decoder_architecture; MQA is one group)
                t = einops.rearrange(t, "(g s d) ... -> g s d ...", g=K, s=H // K + 2)
                q = einops.rearrange(t[:, :-2], "g s d ... -> (g s d) ...")
                k = einops.rearrange(t[:, -2], "g d ... -> (g d) ...")
                v = einops.rearrange(t[:, -1], "g d ... -> (g d) ...")
            for slot, x in zip("qkv", (q, k, v)):
                sd[f"layers.{l}.{slot}.{kind}"] = x


def _split_bigcode(sd: dict, cfg: dict) -> None:
    """GPTBigCode's c_attn (nn.Linear): [q (H·d) | k (d) | v (d)] with multi-query, per head [q | k | v] without."""
    prefix = "transformer.h.{l}.attn.c_attn"
    if cfg["n_kv_heads"] != 1:
        return _per_head_qkv(prefix)(sd, cfg)
    d = cfg["d_model"] // cfg["n_heads"]
    for l in range(cfg["n_layers"]):
        for kind in ("weight", "bias"):
            for slot, x in zip("qkv", sd.pop(f"{prefix.format(l=l)}.{kind}").split([cfg["d_model"], d, d])):
                sd[f"layers.{l}.{slot}.{kind}"] = x


def _split_codegen(sd: dict, cfg: dict) -> None:
    """CodeGen's qkv_proj: 4 model-parallel shards, each [q | v | k] of d_model/4 features."""
    for l in range(cfg["n_layers"]):
        W = einops.rearrange(sd.pop(f"transformer.h.{l}.attn.qkv_proj.weight"), "(mp three d) m -> three (mp d) m",
                             mp=4, three=3)
        sd[f"layers.{l}.q.weight"], sd[f"layers.{l}.v.weight"], sd[f"layers.{l}.k.weight"] = W[0], W[1], W[2]


def _split_phi3(sd: dict, cfg: dict) -> None:
    """Phi-3's qkv_proj is [q (H·d) ; k (K·d) ; v (K·d)], gate_up_proj is [gate ; up]."""
    H, K = cfg["n_heads"], cfg["n_kv_heads"]
    d = cfg.get("d_head") or cfg["d_model"] // H
    for l in range(cfg["n_layers"]):
        p = f"model.layers.{l}."
        q, k, v = sd.pop(p + "self_attn.qkv_proj.weight").split([H * d, K * d, K * d])
        sd[f"layers.{l}.q.weight"], sd[f"layers.{l}.k.weight"], sd[f"layers.{l}.v.weight"] = q, k, v
        gate, up = sd.pop(p + "mlp.gate_up_proj.weight").chunk(2)
        sd[f"layers.{l}.gate.weight"], sd[f"layers.{l}.up.weight"] = gate, up


def _split_gate_up(sd: dict, cfg: dict) -> None:
    """GLM's gate_up_proj is [gate ; up]."""
    for l in range(cfg["n_layers"]):
        gate, up = sd.pop(f"model.layers.{l}.mlp.gate_up_proj.weight").chunk(2)
        sd[f"layers.{l}.gate.weight"], sd[f"layers.{l}.up.weight"] = gate, up


def _xglm_positions(sd: dict, cfg: dict) -> None:
    """XGLM's sinusoidal table (not a weight of the checkpoint): fairseq's [sin | cos] halves with frequencies
    10000^(-i / (d/2 - 1)), rows 0..n_ctx+1 (positions start at row 2; row 1, the padding row, is zero)."""
    n, d = cfg["n_ctx"] + 2, cfg["d_model"]
    half = d // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(n, dtype=torch.float32)[:, None] * freqs[None]
    table = torch.cat([angles.sin(), angles.cos(), torch.zeros(n, d % 2)], dim=1)
    table[1] = 0.0
    sd["xglm.positions.weight"] = table.to(sd["model.embed_tokens.weight"].dtype)


def _split_gpt_oss(sd: dict, cfg: dict) -> None:
    """GPT-OSS's experts: gate_up_proj [E, d, 2m] with gate and up interleaved along the last axis, down_proj
    [E, m, d], each with a bias -> Mixtral's [E, 2m, d] = [gate ; up] and [E, d, m]."""
    for l in range(cfg["n_layers"]):
        p = f"model.layers.{l}.mlp.experts."
        gate_up, gate_up_bias = sd.pop(p + "gate_up_proj"), sd.pop(p + "gate_up_proj_bias")
        sd[f"layers.{l}.experts_gate_up.weight"] = torch.cat([gate_up[..., ::2], gate_up[..., 1::2]], -1).mT
        sd[f"layers.{l}.experts_gate_up.bias"] = torch.cat([gate_up_bias[..., ::2], gate_up_bias[..., 1::2]], -1)
        sd[f"layers.{l}.experts_down.weight"] = sd.pop(p + "down_proj").mT
        sd[f"layers.{l}.experts_down.bias"] = sd.pop(p + "down_proj_bias")
        sd[f"layers.{l}.sinks.weight"] = sd.pop(f"model.layers.{l}.self_attn.sinks")


def _split_llama4(sd: dict, cfg: dict) -> None:
    """Llama 4's experts are stored for bmm ([E, d, 2m] = [gate | up], [E, m, d]): transposed to Mixtral's layout.
    Its QK-norm has no parameters: a gain of ones."""
    for l in range(cfg["n_layers"]):
        p = f"model.layers.{l}.feed_forward.experts."
        if p + "gate_up_proj" in sd:
            sd[f"layers.{l}.experts_gate_up.weight"] = sd.pop(p + "gate_up_proj").mT
            sd[f"layers.{l}.experts_down.weight"] = sd.pop(p + "down_proj").mT
        if cfg["qk_norm_layers"] is not None and cfg["qk_norm_layers"][l]:
            ones = torch.ones(cfg["d_head"], dtype=sd["model.embed_tokens.weight"].dtype)
            sd[f"layers.{l}.q_norm.weight"], sd[f"layers.{l}.k_norm.weight"] = ones, ones.clone()


def _split_granite_shared(sd: dict, cfg: dict) -> None:
    """GraniteMoeShared's shared expert: input_linear is [gate ; up]."""
    for l in range(cfg["n_layers"]):
        key = f"model.layers.{l}.shared_mlp.input_linear.weight"
        if key in sd:
            sd[f"layers.{l}.shared_gate.weight"], sd[f"layers.{l}.shared_up.weight"] = sd.pop(key).chunk(2)


def _stack_head_norms(sd: dict, cfg: dict) -> None:
    """StableLM's qk_layernorm is one LayerNorm per head (``q_layernorm.norms.{h}``): stacked to [heads, d_head]."""
    for l in range(cfg["n_layers"]):
        for slot, heads in (("q", cfg["n_heads"]), ("k", cfg["n_kv_heads"])):
            keys = [f"model.layers.{l}.self_attn.{slot}_layernorm.norms.{h}.weight" for h in range(heads)]
            if keys[0] in sd:
                sd[f"layers.{l}.{slot}_norm.weight"] = torch.stack([sd.pop(k) for k in keys])


def _split_mpt(sd: dict, cfg: dict) -> None:
    """MPT's Wqkv is [q | k | v] (d_model each); its LayerNorms have no bias: ours with a zero bias is the same."""
    for l in range(cfg["n_layers"]):
        p = f"transformer.blocks.{l}."
        for slot, x in zip("qkv", sd.pop(p + "attn.Wqkv.weight").chunk(3)):
            sd[f"layers.{l}.{slot}.weight"] = x
        _zero_bias(sd, p + "norm_1", p + "norm_2")
    _zero_bias(sd, "transformer.norm_f")


def _split_cohere(sd: dict, cfg: dict) -> None:
    """Cohere's LayerNorms have a gain and no bias."""
    _zero_bias(sd, *(f"model.layers.{l}.input_layernorm" for l in range(cfg["n_layers"])), "model.norm")


def _text_tower(sd: dict, cfg: dict) -> None:
    """A vision-language model's text tower under Llama's names: ``model.language_model.*`` becomes ``model.*``,
    and the vision tower and its projector (unused by text-only input) are set aside."""
    for key in list(sd):
        if key.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            del sd[key]
        elif key.startswith("model.language_model."):
            sd["model." + key.removeprefix("model.language_model.")] = sd.pop(key)


# --- the table ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    name: str
    config: Callable[[Any], dict]
    names: dict = field(default_factory=dict)  # slot -> HF module path ({l} = layer index)
    split: Callable[[dict, dict], None] | None = None


LLAMA_NAMES = {
    "embed": "model.embed_tokens", "final_norm": "model.norm", "lm_head": "lm_head",
    "ln1": "model.layers.{l}.input_layernorm", "ln2": "model.layers.{l}.post_attention_layernorm",
    "q": "model.layers.{l}.self_attn.q_proj", "k": "model.layers.{l}.self_attn.k_proj",
    "v": "model.layers.{l}.self_attn.v_proj", "o": "model.layers.{l}.self_attn.o_proj",
    "gate": "model.layers.{l}.mlp.gate_proj", "up": "model.layers.{l}.mlp.up_proj",
    "down": "model.layers.{l}.mlp.down_proj",
    "q_norm": "model.layers.{l}.self_attn.q_norm", "k_norm": "model.layers.{l}.self_attn.k_norm",
}
SANDWICH_NAMES = {**LLAMA_NAMES, "ln1_post": "model.layers.{l}.post_attention_layernorm",
                  "ln2": "model.layers.{l}.pre_feedforward_layernorm",
                  "ln2_post": "model.layers.{l}.post_feedforward_layernorm"}
MOE_NAMES = {**LLAMA_NAMES, "router": "model.layers.{l}.mlp.gate",
             "experts_gate_up": "model.layers.{l}.mlp.experts.gate_up_proj",
             "experts_down": "model.layers.{l}.mlp.experts.down_proj",
             "shared_gate": "model.layers.{l}.mlp.shared_expert.gate_proj",
             "shared_up": "model.layers.{l}.mlp.shared_expert.up_proj",
             "shared_down": "model.layers.{l}.mlp.shared_expert.down_proj",
             "shared_expert_gate": "model.layers.{l}.mlp.shared_expert_gate",
             # a Qwen2-MoE layer listed in mlp_only_layers keeps a dense MLP
             "gate": "model.layers.{l}.mlp.gate_proj", "up": "model.layers.{l}.mlp.up_proj",
             "down": "model.layers.{l}.mlp.down_proj"}
SUBLAYER_POST_NAMES = {**LLAMA_NAMES, "ln1": "", "ln2": "", "ln1_post": "model.layers.{l}.post_attention_layernorm",
                       "ln2_post": "model.layers.{l}.post_feedforward_layernorm"}  # OLMo 2/3, EXAONE 4
GRANITE_MOE_NAMES = {**LLAMA_NAMES, "router": "model.layers.{l}.block_sparse_moe.router",
                     "experts_gate_up": "model.layers.{l}.block_sparse_moe.experts.gate_up_proj",
                     "experts_down": "model.layers.{l}.block_sparse_moe.experts.down_proj",
                     "shared_down": "model.layers.{l}.shared_mlp.output_linear"}
DEEPSEEK_MOE_NAMES = {**MOE_NAMES, "router_correction": "model.layers.{l}.mlp.gate.e_score_correction_bias",
                      **{f"shared_{w}": f"model.layers.{{l}}.mlp.shared_experts.{w}_proj" for w in ("gate", "up", "down")}}
LATENT_NAMES = {**DEEPSEEK_MOE_NAMES, **{slot: f"model.layers.{{l}}.self_attn.{name}" for slot, name in (
    ("q_a", "q_a_proj"), ("q_a_norm", "q_a_layernorm"), ("q_b", "q_b_proj"), ("kv_a", "kv_a_proj_with_mqa"),
    ("kv_a_norm", "kv_a_layernorm"), ("kv_b", "kv_b_proj"))}}  # DeepSeek V2/V3
GPT2_NAMES = {"embed": "transformer.wte", "pos": "transformer.wpe", "final_norm": "transformer.ln_f",
              "lm_head": "lm_head", "ln1": "transformer.h.{l}.ln_1", "ln2": "transformer.h.{l}.ln_2"}
GPTJ_NAMES = {"embed": "transformer.wte", "final_norm": "transformer.ln_f", "lm_head": "lm_head",
              "ln1": "transformer.h.{l}.ln_1", "q": "transformer.h.{l}.attn.q_proj",
              "k": "transformer.h.{l}.attn.k_proj", "v": "transformer.h.{l}.attn.v_proj",
              "o": "transformer.h.{l}.attn.out_proj", "up": "transformer.h.{l}.mlp.fc_in",
              "down": "transformer.h.{l}.mlp.fc_out"}
NEOX_NAMES = {"embed": "gpt_neox.embed_in", "final_norm": "gpt_neox.final_layer_norm", "lm_head": "lm_head",
              "ln1": "gpt_neox.layers.{l}.input_layernorm", "ln2": "gpt_neox.layers.{l}.post_attention_layernorm",
              "o": "gpt_neox.layers.{l}.attention.dense", "up": "gpt_neox.layers.{l}.mlp.dense_h_to_4h",
              "down": "gpt_neox.layers.{l}.mlp.dense_4h_to_h"}
BLOOM_NAMES = {"embed": "transformer.word_embeddings", "embed_ln": "transformer.word_embeddings_layernorm",
               "final_norm": "transformer.ln_f", "lm_head": "lm_head",
               "ln1": "transformer.h.{l}.input_layernorm", "ln2": "transformer.h.{l}.post_attention_layernorm",
               "o": "transformer.h.{l}.self_attention.dense", "up": "transformer.h.{l}.mlp.dense_h_to_4h",
               "down": "transformer.h.{l}.mlp.dense_4h_to_h"}
FALCON_NAMES = {**BLOOM_NAMES, "embed_ln": "", "ln1": "transformer.h.{l}.input_layernorm|transformer.h.{l}.ln_attn",
                "ln2": "transformer.h.{l}.post_attention_layernorm|transformer.h.{l}.ln_mlp"}
OPT_NAMES = {"embed": "model.decoder.embed_tokens", "pos": "model.decoder.embed_positions",
             "final_norm": "model.decoder.final_layer_norm", "lm_head": "lm_head",
             "ln1": "model.decoder.layers.{l}.self_attn_layer_norm", "ln2": "model.decoder.layers.{l}.final_layer_norm",
             "q": "model.decoder.layers.{l}.self_attn.q_proj", "k": "model.decoder.layers.{l}.self_attn.k_proj",
             "v": "model.decoder.layers.{l}.self_attn.v_proj", "o": "model.decoder.layers.{l}.self_attn.out_proj",
             "up": "model.decoder.layers.{l}.fc1", "down": "model.decoder.layers.{l}.fc2"}
GPT_NEO_NAMES = {**GPT2_NAMES, "q": "transformer.h.{l}.attn.attention.q_proj",
                 "k": "transformer.h.{l}.attn.attention.k_proj", "v": "transformer.h.{l}.attn.attention.v_proj",
                 "o": "transformer.h.{l}.attn.attention.out_proj", "up": "transformer.h.{l}.mlp.c_fc",
                 "down": "transformer.h.{l}.mlp.c_proj"}
PHI_NAMES = {**LLAMA_NAMES, "final_norm": "model.final_layernorm", "o": "model.layers.{l}.self_attn.dense",
             "up": "model.layers.{l}.mlp.fc1", "down": "model.layers.{l}.mlp.fc2", "ln2": "",
             "q_norm": "model.layers.{l}.self_attn.q_layernorm", "k_norm": "model.layers.{l}.self_attn.k_layernorm"}

FAMILIES: dict[str, Family] = {
    "GPT2LMHeadModel": Family("GPT-2", gpt2, GPT2_NAMES, _split_gpt2),
    "GPTNeoForCausalLM": Family("GPT-Neo", gpt_neo, GPT_NEO_NAMES),
    "GPTJForCausalLM": Family("GPT-J", gptj, GPTJ_NAMES),
    "GPTNeoXForCausalLM": Family("GPT-NeoX", neox, NEOX_NAMES,
                                 _per_head_qkv("gpt_neox.layers.{l}.attention.query_key_value")),
    "OPTForCausalLM": Family("OPT", opt, OPT_NAMES),
    "BloomForCausalLM": Family("Bloom", bloom, BLOOM_NAMES,
                               _per_head_qkv("transformer.h.{l}.self_attention.query_key_value")),
    "LlamaForCausalLM": Family("Llama", llama, LLAMA_NAMES),
    "MistralForCausalLM": Family("Mistral", llama, LLAMA_NAMES),
    "MixtralForCausalLM": Family("Mixtral", mixtral, MOE_NAMES),
    "Qwen2ForCausalLM": Family("Qwen2", qwen2, LLAMA_NAMES),
    "Qwen2MoeForCausalLM": Family("Qwen2-MoE", qwen2_moe, MOE_NAMES),
    "Qwen3ForCausalLM": Family("Qwen3", qwen3, LLAMA_NAMES),
    "GemmaForCausalLM": Family("Gemma", gemma, LLAMA_NAMES),
    "Gemma2ForCausalLM": Family("Gemma 2", gemma2, SANDWICH_NAMES),
    "Gemma3ForCausalLM": Family("Gemma 3", gemma3, SANDWICH_NAMES),
    "Gemma3ForConditionalGeneration": Family("Gemma 3", gemma3_multimodal, SANDWICH_NAMES, _text_tower),
    "PhiForCausalLM": Family("Phi", phi, PHI_NAMES),
    "Phi3ForCausalLM": Family("Phi-3", phi3, LLAMA_NAMES, _split_phi3),
    "StableLmForCausalLM": Family("StableLM", stablelm, LLAMA_NAMES, _stack_head_norms),
    "OlmoForCausalLM": Family("OLMo", olmo, LLAMA_NAMES),
    "Olmo2ForCausalLM": Family("OLMo 2", olmo2, SUBLAYER_POST_NAMES),
    "FalconForCausalLM": Family("Falcon", falcon, FALCON_NAMES, _split_falcon),
    "CodeGenForCausalLM": Family("CodeGen", gptj, GPTJ_NAMES, _split_codegen),
    "GPTBigCodeForCausalLM": Family("GPTBigCode", gpt_bigcode, {**GPT2_NAMES, "o": "transformer.h.{l}.attn.c_proj",
                                                                 "up": "transformer.h.{l}.mlp.c_fc",
                                                                 "down": "transformer.h.{l}.mlp.c_proj"},
                                    _split_bigcode),
    "Qwen3MoeForCausalLM": Family("Qwen3-MoE", qwen3_moe, MOE_NAMES),
    "MptForCausalLM": Family("MPT", mpt, {"embed": "transformer.wte", "final_norm": "transformer.norm_f",
                                          "lm_head": "lm_head", "ln1": "transformer.blocks.{l}.norm_1",
                                          "ln2": "transformer.blocks.{l}.norm_2", "o": "transformer.blocks.{l}.attn.out_proj",
                                          "up": "transformer.blocks.{l}.ffn.up_proj",
                                          "down": "transformer.blocks.{l}.ffn.down_proj"}, _split_mpt),
    "CohereForCausalLM": Family("Cohere", cohere, LLAMA_NAMES, _split_cohere),
    "GraniteForCausalLM": Family("Granite", granite, LLAMA_NAMES),
    "SmolLM3ForCausalLM": Family("SmolLM3", smollm3, LLAMA_NAMES),
    "MinistralForCausalLM": Family("Ministral", llama, LLAMA_NAMES),
    "Ministral3ForCausalLM": Family("Ministral 3", ministral3, LLAMA_NAMES),
    "SeedOssForCausalLM": Family("Seed-OSS", seed_oss, LLAMA_NAMES),
    "Starcoder2ForCausalLM": Family("Starcoder2", starcoder2, {**LLAMA_NAMES, "up": "model.layers.{l}.mlp.c_fc",
                                                                "down": "model.layers.{l}.mlp.c_proj"}),
    "Olmo3ForCausalLM": Family("OLMo 3", olmo3, SUBLAYER_POST_NAMES),
    "Exaone4ForCausalLM": Family("EXAONE 4", exaone4, SUBLAYER_POST_NAMES),
    "Cohere2ForCausalLM": Family("Cohere 2", cohere2, LLAMA_NAMES, _split_cohere),
    "GlmForCausalLM": Family("GLM", glm, LLAMA_NAMES, _split_gate_up),
    "Glm4ForCausalLM": Family("GLM-4", glm, {**LLAMA_NAMES, "ln1_post": "model.layers.{l}.post_self_attn_layernorm",
                                             "ln2_post": "model.layers.{l}.post_mlp_layernorm"}, _split_gate_up),
    "OlmoeForCausalLM": Family("OLMoE", olmoe, MOE_NAMES),
    "GraniteMoeForCausalLM": Family("Granite-MoE", granite_moe, GRANITE_MOE_NAMES),
    "GraniteMoeSharedForCausalLM": Family("Granite-MoE-Shared", granite_moe, GRANITE_MOE_NAMES, _split_granite_shared),
    "PhimoeForCausalLM": Family("PhiMoE", phimoe, {**MOE_NAMES, "router": "model.layers.{l}.mlp.router"}),
    "XGLMForCausalLM": Family("XGLM", xglm, {**{k: v.replace("model.decoder.", "model.") for k, v in OPT_NAMES.items()},
                                             "pos": "xglm.positions", "final_norm": "model.layer_norm"},
                              _xglm_positions),
    "NanoChatForCausalLM": Family("NanoChat", nanochat, {**LLAMA_NAMES, "up": "model.layers.{l}.mlp.fc1",
                                                          "down": "model.layers.{l}.mlp.fc2"}),
    "GptOssForCausalLM": Family("GPT-OSS", gpt_oss, {**LLAMA_NAMES, "router": "model.layers.{l}.mlp.router"},
                                _split_gpt_oss),
    "Llama4ForCausalLM": Family("Llama 4", llama4, {**{k: v.replace(".mlp.", ".feed_forward.") for k, v in
                                                      MOE_NAMES.items()},
                                                   "router": "model.layers.{l}.feed_forward.router"}, _split_llama4),
    "ArceeForCausalLM": Family("Arcee", arcee, LLAMA_NAMES),
    "Ernie4_5ForCausalLM": Family("ERNIE 4.5", ernie4_5, LLAMA_NAMES),
    "VaultGemmaForCausalLM": Family("VaultGemma", vaultgemma, {**LLAMA_NAMES,
                                                               "ln2": "model.layers.{l}.pre_feedforward_layernorm"}),
    "FlexOlmoForCausalLM": Family("FlexOlmo", flex_olmo, {**MOE_NAMES, "ln1": "", "ln2": "",
                                                         "ln1_post": "model.layers.{l}.post_attention_layernorm",
                                                         "ln2_post": "model.layers.{l}.post_feedforward_layernorm"}),
    "NemotronForCausalLM": Family("Nemotron", nemotron, LLAMA_NAMES),
    "HunYuanDenseV1ForCausalLM": Family("HunYuan", hunyuan_dense, {
        **LLAMA_NAMES, "q_norm": "model.layers.{l}.self_attn.query_layernorm",
        "k_norm": "model.layers.{l}.self_attn.key_layernorm"}),
    "Glm4MoeForCausalLM": Family("GLM-4-MoE", glm4_moe, DEEPSEEK_MOE_NAMES),
    "DeepseekV3ForCausalLM": Family("DeepSeek V3", deepseek_v3, LATENT_NAMES),
    "DeepseekV2ForCausalLM": Family("DeepSeek V2", deepseek_v2, LATENT_NAMES),
    "OpenAIGPTLMHeadModel": Family("OpenAI GPT", openai_gpt, {"embed": "transformer.tokens_embed",
                                                               "pos": "transformer.positions_embed",
                                                               "ln1": "transformer.h.{l}.ln_1",
                                                               "ln2": "transformer.h.{l}.ln_2", "lm_head": "lm_head"},
                                   _split_gpt2),
}


# --- slots -> our parameters ---------------------------------------------------------------------------
# HF tensors that are not weights (recomputed buffers some checkpoints still carry).
_IGNORED = re.compile(r"(\.rotary_emb\.inv_freq|(^|\.)(attn|attention)\.(bias|masked_bias)|\.embed_positions)$")


def collect_slots(family: Family, hf_sd: dict, cfg: dict, strict: bool = True) -> dict:
    """HF state dict -> {"layers.{l}.q.weight": ..., "embed.weight": ...}; every HF tensor consumed (unless
    ``strict=False``: then tensors outside the family's names are left out)."""
    sd = {k: v for k, v in hf_sd.items() if not _IGNORED.search(k)}
    if family.split is not None:
        family.split(sd, cfg)  # fused tensors become slot entries; it pops what it used
    slots = {k: sd.pop(k) for k in list(sd) if k.startswith("layers.")}
    for slot, paths in family.names.items():
        if not paths:
            continue
        layers = range(cfg["n_layers"]) if "{l}" in paths else [None]
        for l in layers:
            for path in paths.split("|"):  # alternatives (Falcon: input_layernorm or ln_attn)
                path = path.format(l=l)
                key = slot if l is None else f"layers.{l}.{slot}"
                for kind in ("weight", "bias"):
                    if f"{path}.{kind}" in sd:
                        slots[f"{key}.{kind}"] = sd.pop(f"{path}.{kind}")
                if path in sd:  # a bare parameter (Mixtral's fused expert tensors)
                    slots[f"{key}.weight"] = sd.pop(path)
    if cfg.get("tie_embeddings"):
        sd.pop("lm_head.weight", None)  # the same tensor as the embedding
    if sd and strict:
        raise InterpError(
            f"{family.name}: the checkpoint has weights interp does not map: {sorted(sd)[:6]}"
            f"{'...' if len(sd) > 6 else ''}; this variant uses a feature interp's model does not implement."
        )
    return slots


def _heads_in(W: torch.Tensor, heads: int) -> torch.Tensor:
    return einops.rearrange(W, "(h d) m -> h m d", h=heads)


def to_interp_state(slots: dict, cfg) -> dict:
    """Slots (HF Linear layouts) -> our parameter names and TransformerLens shapes."""
    H, K = cfg.n_heads, cfg.n_kv_heads
    out: dict[str, torch.Tensor] = {"embed.W_E": slots.pop("embed.weight")}
    if "pos.weight" in slots:
        out["pos_embed.W_pos"] = slots.pop("pos.weight")
    for slot, ours in (("embed_ln", "embed_ln"), ("final_norm", "ln_final")):
        for kind, name in (("weight", "w"), ("bias", "b")):
            if f"{slot}.{kind}" in slots:
                out[f"{ours}.{name}"] = slots.pop(f"{slot}.{kind}")
    lm_head = slots.pop("lm_head.weight", None)
    if not cfg.tie_embeddings:
        out["unembed.W_U_param"] = lm_head.T
    b_U = slots.pop("lm_head.bias", None)
    out["unembed.b_U"] = b_U if b_U is not None else torch.zeros(cfg.d_vocab, dtype=out["embed.W_E"].dtype)
    for l in range(cfg.n_layers):
        s = {k.split(".", 2)[2]: slots.pop(k) for k in [k for k in slots if k.startswith(f"layers.{l}.")]}
        p = f"blocks.{l}."
        for slot, heads in (("q", H), ("k", K), ("v", K)) if "kv_a.weight" not in s else ():
            out[p + f"attn.W_{slot.upper()}"] = _heads_in(s.pop(f"{slot}.weight"), heads)
            if f"{slot}.bias" in s:
                out[p + f"attn.b_{slot.upper()}"] = einops.rearrange(s.pop(f"{slot}.bias"), "(h d) -> h d", h=heads)
        if "kv_a.weight" in s:
            out.update(_latent_state(s, p, cfg))
        out[p + "attn.W_O"] = einops.rearrange(s.pop("o.weight"), "m (h d) -> h d m", h=H)
        if "o.bias" in s:
            out[p + "attn.b_O"] = s.pop("o.bias")
        for slot, ours in (("ln1", "ln1"), ("ln2", "ln2"), ("ln1_post", "ln1_post"), ("ln2_post", "ln2_post"),
                           ("q_norm", "attn.q_norm"), ("k_norm", "attn.k_norm")):
            for kind, name in (("weight", "w"), ("bias", "b")):
                if f"{slot}.{kind}" in s:
                    out[p + f"{ours}.{name}"] = s.pop(f"{slot}.{kind}")
        if "gate.weight" in s:
            out[p + "mlp.W_gate"] = s.pop("gate.weight").T
            if "gate.bias" in s:
                out[p + "mlp.b_gate"] = s.pop("gate.bias")
        if "up.weight" in s:
            out[p + "mlp.W_in"] = s.pop("up.weight").T
            if "up.bias" in s:
                out[p + "mlp.b_in"] = s.pop("up.bias")
            out[p + "mlp.W_out"] = s.pop("down.weight").T
            if "down.bias" in s:
                out[p + "mlp.b_out"] = s.pop("down.bias")
        if "sinks.weight" in s:
            out[p + "attn.sinks"] = s.pop("sinks.weight")
        out.update(_moe_state(s, p, cfg))
        if s:
            raise InterpError(f"layer {l}: slots left unmapped: {sorted(s)} (a mapping bug; please report).")
    if slots:
        raise InterpError(f"slots left unmapped: {sorted(slots)} (a mapping bug; please report).")
    return out


def _latent_state(s: dict, p: str, cfg) -> dict:
    """DeepSeek V3's latent attention: q (or q_a, its norm, q_b), kv_a, its norm, and kv_b ([own key | value] per
    head) -> W_Q (or W_Q_a, q_a_norm, W_Q_b), W_KV_a, kv_a_norm, W_K_b, W_V_b."""
    H, own = cfg.n_heads, cfg.d_head - cfg.qk_rope_dim
    out = {p + "attn.W_KV_a": s.pop("kv_a.weight").T, p + "attn.kv_a_norm.w": s.pop("kv_a_norm.weight")}
    kv_b = einops.rearrange(s.pop("kv_b.weight"), "(h e) r -> h r e", h=H)
    out[p + "attn.W_K_b"], out[p + "attn.W_V_b"] = kv_b[..., :own], kv_b[..., own:]
    if "q_a.weight" in s:
        out[p + "attn.W_Q_a"] = s.pop("q_a.weight").T
        out[p + "attn.q_a_norm.w"] = s.pop("q_a_norm.weight")
        out[p + "attn.W_Q_b"] = einops.rearrange(s.pop("q_b.weight"), "(h d) r -> h r d", h=H)
    else:
        out[p + "attn.W_Q"] = _heads_in(s.pop("q.weight"), H)
    return out


def _moe_state(s: dict, p: str, cfg) -> dict:
    """Mixtral / Qwen2-MoE experts: fused [E, 2m, d] gate_up and [E, d, m] down -> per-expert matrices."""
    if "router.weight" not in s:
        return {}
    out = {p + "mlp.W_router": s.pop("router.weight").T}
    if "router.bias" in s:
        out[p + "mlp.b_router"] = s.pop("router.bias")
    if "router_correction.weight" in s:
        out[p + "mlp.b_choice"] = s.pop("router_correction.weight")
    gate_up, down = s.pop("experts_gate_up.weight"), s.pop("experts_down.weight")
    gate_up_bias, down_bias = s.pop("experts_gate_up.bias", None), s.pop("experts_down.bias", None)
    for e in range(gate_up.shape[0]):
        gate, up = gate_up[e].chunk(2)
        out[p + f"mlp.experts.{e}.W_gate"] = gate.T
        out[p + f"mlp.experts.{e}.W_in"] = up.T
        out[p + f"mlp.experts.{e}.W_out"] = down[e].T
        if gate_up_bias is not None:  # GPT-OSS's experts have biases
            out[p + f"mlp.experts.{e}.b_gate"], out[p + f"mlp.experts.{e}.b_in"] = gate_up_bias[e].chunk(2)
            out[p + f"mlp.experts.{e}.b_out"] = down_bias[e]
    if "shared_gate.weight" in s:
        out[p + "mlp.shared_expert.W_gate"] = s.pop("shared_gate.weight").T
        out[p + "mlp.shared_expert.W_in"] = s.pop("shared_up.weight").T
        out[p + "mlp.shared_expert.W_out"] = s.pop("shared_down.weight").T
    if "shared_expert_gate.weight" in s:
        out[p + "mlp.W_shared_gate"] = s.pop("shared_expert_gate.weight").T  # [1, d] -> [d, 1]
    return out


# What an architecture outside the table would need (model_type -> the missing feature), for the error.
MISSING_FEATURE = {
    "mamba": "state-space layers (no attention)", "mamba2": "state-space layers (no attention)",
    "rwkv": "recurrent (RWKV) layers (no attention)", "jamba": "interleaved state-space layers",
}


def _why_unsupported(arch: str, config) -> str:
    model_type = getattr(config, "model_type", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model and interp's model is decoder-only"
    if not arch.endswith(("ForCausalLM", "LMHeadModel")):
        return ("it is not a causal language model with its LM head (load the family's *ForCausalLM class: a base "
                "model or a classifier has no next-token logits)")
    if model_type in MISSING_FEATURE:
        return f"it needs {MISSING_FEATURE[model_type]}"
    return "its family is not in interp's table (interp.loading.families.FAMILIES)"


def family_of(hf_model_or_arch, config=None) -> tuple[str, Family]:
    """(architecture class name, Family) of a transformers model object or its class name."""
    if isinstance(hf_model_or_arch, str):
        arch = hf_model_or_arch
    else:
        arch, config = type(hf_model_or_arch).__name__, getattr(hf_model_or_arch, "config", None)
    if arch not in FAMILIES:
        raise InterpError(f"architecture {arch} is not supported: {_why_unsupported(arch, config)}. "
                          f"See `interp models --families` for the native families.")
    return arch, FAMILIES[arch]


def estimate_bytes(n_params: int, dtype: torch.dtype) -> int:
    return n_params * (torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 8)


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def check_memory(n_bytes: int, device: str | torch.device, what: str,
                 fix: str = "load it in a smaller dtype (e.g. torch_dtype=torch.bfloat16), on a larger device, or "
                            "free memory") -> None:
    """Refuse before allocating when ``n_bytes`` more will not fit in the device's free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    elif device.type == "cpu":
        import psutil

        free = psutil.virtual_memory().available
    else:
        return
    if n_bytes > free:
        raise OutOfMemoryRefusal(
            f"{what} needs about {_gib(n_bytes)} of {device.type} memory but only {_gib(free)} is free; {fix}."
        )


__all__ = ["FAMILIES", "Family", "check_memory", "collect_slots", "estimate_bytes", "family_of", "to_interp_state"]
