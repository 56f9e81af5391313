"""Hugging Face `transformers` models → DecoderConfig + our weights.

Each family gets one small function that reads the HF config into a DecoderConfig and one that maps
the HF state dict into TransformerLens-shaped tensors. Anything we cannot reproduce exactly (a RoPE
scaling scheme, sliding-window attention, …) is refused with an error naming the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops
import torch

from interp.errors import InterpError
from interp.model.config import DecoderConfig

ACTS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}


def _act(name: str, family: str) -> str:
    if name not in ACTS:
        raise InterpError(f"{family}: activation {name!r} is not supported; supported: {sorted(ACTS)}.")
    return ACTS[name]


def _rope(hf_cfg, family: str) -> tuple[float, float]:
    """(base, partial fraction) from transformers' rope_parameters (v5) or the older fields."""
    params = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise InterpError(f"{family}: RoPE scaling type {rope_type!r} is not supported (only 'default').")
    base = params.get("rope_theta", getattr(hf_cfg, "rope_theta", getattr(hf_cfg, "rotary_emb_base", 10000.0)))
    fraction = params.get("partial_rotary_factor", getattr(hf_cfg, "rotary_pct", 1.0))
    return float(base), float(fraction)


def _dtype_name(model) -> str:
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}[
        next(model.parameters()).dtype
    ]


# --- GPT-2 --------------------------------------------------------------------------------------
def gpt2_config(c, dtype: str) -> DecoderConfig:
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or getattr(c, "reorder_and_upcast_attn", False):
        raise InterpError("GPT-2: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported.")
    if not getattr(c, "scale_attn_weights", True):
        raise InterpError("GPT-2: scale_attn_weights=False is not supported.")
    return DecoderConfig(
        d_vocab=c.vocab_size, n_ctx=c.n_positions, d_model=c.n_embd, n_layers=c.n_layer, n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, positional="learned", norm="layernorm", norm_eps=c.layer_norm_epsilon,
        act=_act(c.activation_function, "GPT-2"), tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)), eos_token_id=c.eos_token_id,
        dtype=dtype, name=getattr(c, "name_or_path", "") or "gpt2",
    )


def gpt2_state(sd: dict, cfg: DecoderConfig) -> dict:
    H, dh, L = cfg.n_heads, cfg.d_head, cfg.n_layers
    out = {"embed.W_E": sd["transformer.wte.weight"], "pos_embed.W_pos": sd["transformer.wpe.weight"]}
    for l in range(L):
        p = f"transformer.h.{l}."
        W = sd[p + "attn.c_attn.weight"]  # Conv1D: [d_model, 3 d_model], x @ W
        b = sd[p + "attn.c_attn.bias"]
        for i, name in enumerate("QKV"):
            out[f"blocks.{l}.attn.W_{name}"] = einops.rearrange(W[:, i * H * dh:(i + 1) * H * dh], "m (h d) -> h m d", h=H)
            out[f"blocks.{l}.attn.b_{name}"] = einops.rearrange(b[i * H * dh:(i + 1) * H * dh], "(h d) -> h d", h=H)
        out[f"blocks.{l}.attn.W_O"] = einops.rearrange(sd[p + "attn.c_proj.weight"], "(h d) m -> h d m", h=H)
        out[f"blocks.{l}.attn.b_O"] = sd[p + "attn.c_proj.bias"]
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[f"blocks.{l}.{ours}.w"] = sd[p + theirs + ".weight"]
            out[f"blocks.{l}.{ours}.b"] = sd[p + theirs + ".bias"]
        out[f"blocks.{l}.mlp.W_in"] = sd[p + "mlp.c_fc.weight"]
        out[f"blocks.{l}.mlp.b_in"] = sd[p + "mlp.c_fc.bias"]
        out[f"blocks.{l}.mlp.W_out"] = sd[p + "mlp.c_proj.weight"]
        out[f"blocks.{l}.mlp.b_out"] = sd[p + "mlp.c_proj.bias"]
    out["ln_final.w"], out["ln_final.b"] = sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]
    if not cfg.tie_embeddings:
        out["unembed.W_U_param"] = sd["lm_head.weight"].T
    out["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=out["embed.W_E"].dtype)
    return out


# --- Llama / Mistral / Qwen2 --------------------------------------------------------------------
def llama_config(c, dtype: str) -> DecoderConfig:
    family = type(c).__name__
    window = getattr(c, "sliding_window", None)
    if window is not None and getattr(c, "use_sliding_window", True) and window < c.max_position_embeddings:
        raise InterpError(f"{family}: sliding-window attention (sliding_window={window}) is not supported.")
    base, fraction = _rope(c, family)
    bias = bool(getattr(c, "attention_bias", False)) or family.startswith("Qwen2")
    return DecoderConfig(
        d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads, n_kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        d_head=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads, d_mlp=c.intermediate_size,
        positional="rotary", rotary_base=base, rotary_fraction=fraction, norm="rmsnorm", norm_eps=c.rms_norm_eps,
        act=_act(c.hidden_act, family), gated=True, attn_bias=bias,
        attn_out_bias=bool(getattr(c, "attention_bias", False)), mlp_bias=bool(getattr(c, "mlp_bias", False)),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        eos_token_id=_first(c.eos_token_id), bos_token_id=None, dtype=dtype,
        name=getattr(c, "name_or_path", "") or family,
    )


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def llama_state(sd: dict, cfg: DecoderConfig) -> dict:
    H, K = cfg.n_heads, cfg.n_kv_heads
    out = {"embed.W_E": sd["model.embed_tokens.weight"]}
    for l in range(cfg.n_layers):
        p = f"model.layers.{l}."
        for name, proj, heads in (("Q", "q_proj", H), ("K", "k_proj", K), ("V", "v_proj", K)):
            out[f"blocks.{l}.attn.W_{name}"] = einops.rearrange(sd[p + f"self_attn.{proj}.weight"], "(h d) m -> h m d", h=heads)
            if cfg.attn_bias:
                out[f"blocks.{l}.attn.b_{name}"] = einops.rearrange(sd[p + f"self_attn.{proj}.bias"], "(h d) -> h d", h=heads)
        out[f"blocks.{l}.attn.W_O"] = einops.rearrange(sd[p + "self_attn.o_proj.weight"], "m (h d) -> h d m", h=H)
        if cfg.attn_out_bias:
            out[f"blocks.{l}.attn.b_O"] = sd[p + "self_attn.o_proj.bias"]
        out[f"blocks.{l}.ln1.w"] = sd[p + "input_layernorm.weight"]
        out[f"blocks.{l}.ln2.w"] = sd[p + "post_attention_layernorm.weight"]
        out[f"blocks.{l}.mlp.W_gate"] = sd[p + "mlp.gate_proj.weight"].T
        out[f"blocks.{l}.mlp.W_in"] = sd[p + "mlp.up_proj.weight"].T
        out[f"blocks.{l}.mlp.W_out"] = sd[p + "mlp.down_proj.weight"].T
        if cfg.mlp_bias:
            out[f"blocks.{l}.mlp.b_gate"] = sd[p + "mlp.gate_proj.bias"]
            out[f"blocks.{l}.mlp.b_in"] = sd[p + "mlp.up_proj.bias"]
            out[f"blocks.{l}.mlp.b_out"] = sd[p + "mlp.down_proj.bias"]
    out["ln_final.w"] = sd["model.norm.weight"]
    if not cfg.tie_embeddings:
        out["unembed.W_U_param"] = sd["lm_head.weight"].T
    out["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=out["embed.W_E"].dtype)
    return out


# --- GPT-NeoX / Pythia --------------------------------------------------------------------------
def neox_config(c, dtype: str) -> DecoderConfig:
    base, fraction = _rope(c, "GPT-NeoX")
    return DecoderConfig(
        d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads, d_mlp=c.intermediate_size, positional="rotary", rotary_base=base,
        rotary_fraction=fraction, norm="layernorm", norm_eps=c.layer_norm_eps, act=_act(c.hidden_act, "GPT-NeoX"),
        parallel_residual=bool(c.use_parallel_residual), attn_bias=bool(getattr(c, "attention_bias", True)),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)), eos_token_id=_first(c.eos_token_id),
        dtype=dtype, name=getattr(c, "name_or_path", "") or "gpt-neox",
    )


def neox_state(sd: dict, cfg: DecoderConfig) -> dict:
    H = cfg.n_heads
    out = {"embed.W_E": sd["gpt_neox.embed_in.weight"]}
    for l in range(cfg.n_layers):
        p = f"gpt_neox.layers.{l}."
        # query_key_value output features are laid out per head as [q | k | v] (HF views it [.., head, 3*d_head]).
        W = einops.rearrange(sd[p + "attention.query_key_value.weight"], "(h three d) m -> three h m d", h=H, three=3)
        for i, name in enumerate("QKV"):
            out[f"blocks.{l}.attn.W_{name}"] = W[i]
        if cfg.attn_bias:
            b = einops.rearrange(sd[p + "attention.query_key_value.bias"], "(h three d) -> three h d", h=H, three=3)
            for i, name in enumerate("QKV"):
                out[f"blocks.{l}.attn.b_{name}"] = b[i]
        out[f"blocks.{l}.attn.W_O"] = einops.rearrange(sd[p + "attention.dense.weight"], "m (h d) -> h d m", h=H)
        if cfg.attn_out_bias:
            out[f"blocks.{l}.attn.b_O"] = sd[p + "attention.dense.bias"]
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            out[f"blocks.{l}.{ours}.w"] = sd[p + theirs + ".weight"]
            out[f"blocks.{l}.{ours}.b"] = sd[p + theirs + ".bias"]
        out[f"blocks.{l}.mlp.W_in"] = sd[p + "mlp.dense_h_to_4h.weight"].T
        out[f"blocks.{l}.mlp.b_in"] = sd[p + "mlp.dense_h_to_4h.bias"]
        out[f"blocks.{l}.mlp.W_out"] = sd[p + "mlp.dense_4h_to_h.weight"].T
        out[f"blocks.{l}.mlp.b_out"] = sd[p + "mlp.dense_4h_to_h.bias"]
    out["ln_final.w"] = sd["gpt_neox.final_layer_norm.weight"]
    out["ln_final.b"] = sd["gpt_neox.final_layer_norm.bias"]
    if not cfg.tie_embeddings:
        # transformers >= 5 names the head lm_head; older releases called it embed_out
        out["unembed.W_U_param"] = sd["lm_head.weight" if "lm_head.weight" in sd else "embed_out.weight"].T
    out["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=out["embed.W_E"].dtype)
    return out


# TransformerLens prepends BOS by default except for these families (its adapters set default_prepend_bos=False).
NO_BOS_BY_DEFAULT = ("GPTNeoXForCausalLM", "Qwen2ForCausalLM")


def set_bos(cfg: DecoderConfig, hf_cfg, arch: str) -> None:
    """Keep the HF config's BOS id, and prepend it by default where TransformerLens does."""
    cfg.bos_token_id = _first(getattr(hf_cfg, "bos_token_id", None))
    cfg.default_prepend_bos = cfg.bos_token_id is not None and arch not in NO_BOS_BY_DEFAULT


FAMILIES: dict[str, tuple[Callable, Callable]] = {
    "GPT2LMHeadModel": (gpt2_config, gpt2_state),
    "LlamaForCausalLM": (llama_config, llama_state),
    "MistralForCausalLM": (llama_config, llama_state),
    "Qwen2ForCausalLM": (llama_config, llama_state),
    "GPTNeoXForCausalLM": (neox_config, neox_state),
}


def from_hf_model(hf_model: Any, tokenizer: Any = None):
    """Convert a `transformers` causal-LM object into a HookedDecoder with identical outputs."""
    from interp.loading.checkpoint import load_state
    from interp.model.transformer import HookedDecoder

    arch = type(hf_model).__name__
    if arch not in FAMILIES:
        raise InterpError(
            f"architecture {arch} is not supported; supported: {sorted(FAMILIES)}. "
            "(For GPT-2 / Llama / NeoX base models without an LM head, load the *ForCausalLM class.)"
        )
    make_config, map_state = FAMILIES[arch]
    cfg = make_config(hf_model.config, _dtype_name(hf_model))
    cfg.source = {"transformers_class": arch}
    set_bos(cfg, hf_model.config, arch)
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    try:
        state = map_state(sd, cfg)
    except KeyError as e:
        raise InterpError(f"{arch}: the state dict lacks tensor {e.args[0]!r}, which this family needs.") from None
    with torch.device("meta"):
        model = HookedDecoder(cfg, tokenizer=tokenizer)
    model = model.to_empty(device="cpu")
    load_state(model, {k: v.to("cpu").contiguous() for k, v in state.items()}, arch)
    model.eval()
    return model.to(next(hf_model.parameters()).device)
