"""Tiny random `transformers` models of any architecture, built offline from its config class's defaults.

``tiny_model(arch)`` shrinks the default config of ``transformers.<arch>`` (every size field to a few units:
2 layers, d_model 32, 4 heads of 8, a 96-token vocabulary, 4 experts with 2 active, small state-space
dimensions; per-layer lists cut to 2 entries keeping two different layer kinds, so a hybrid keeps one layer of
each), builds it, and adds noise to every parameter (transformers initialises biases to 0 and norm gains to 1,
which would hide a dropped bias). A few architectures need a consistent override (``OVERRIDES``).
Nothing is downloaded.
"""

from __future__ import annotations

import torch

# field -> tiny value (a field of any config or sub-config dict with this name, when it holds an int)
SIZES = {
    "hidden_size": 32, "d_model": 32, "n_embd": 32, "dim": 32, "hidden_dim": 32, "embed_dim": 32, "n_embed": 32,
    "intermediate_size": 64, "ffn_dim": 64, "n_inner": 64, "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32, "ffn_hidden_size": 64, "intermediate_size_mlp": 64,
    "expert_intermediate_size": 32, "mlp_hidden_size": 64,
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "attention_head_dim": 8, "kv_channels": 8,
    "vocab_size": 96, "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "moe_topk": 2, "n_group": 1, "topk_group": 1, "n_shared_experts": 1,
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
    "state_size": 8, "mamba_d_state": 8, "ssm_state_size": 8, "mamba_n_heads": 4, "mamba_head_dim": 16,
    "mamba_d_head": 16, "time_step_rank": 4, "mamba_dt_rank": 4, "max_position_embeddings": 256,
    "n_positions": 256, "n_ctx": 256, "sliding_window": 4, "attention_window_size": 4,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
    "lru_width": 32, "image_size": 32, "patch_size": 8, "rwkv_head_size": 8,
}
LAYER_KIND_LISTS = ("layer_types", "layers_block_type", "block_types")
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
_FILL_NONE = ("num_key_value_heads", "head_dim", "num_experts_per_tok", "n_group", "topk_group")
_MLA = {"num_key_value_heads": 4}  # multi-head latent attention has as many key/value heads as heads
OVERRIDES = {
    "CodeGenForCausalLM": {"rotary_dim": 4}, "GPTJForCausalLM": {"rotary_dim": 4},
    "GPTNeoForCausalLM": {"attention_types": [[["global", "local"], 1]], "window_size": 4},
    "Mamba2ForCausalLM": {"head_dim": 16, "num_heads": 4, "n_groups": 1},
    "JambaForCausalLM": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
                         "expert_layer_offset": 1},
    "BambaForCausalLM": {"attn_layer_indices": [1]},
    "RwkvForCausalLM": {"attention_hidden_size": 32, "intermediate_size": 64},
    "FalconH1ForCausalLM": {"mamba_d_ssm": 64, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_expand": 2,
                            "mamba_n_groups": 1},
    "DeepseekV2ForCausalLM": {**_MLA, "n_group": 1, "topk_group": 1},
    "DeepseekV3ForCausalLM": _MLA, "YoutuForCausalLM": _MLA, "GlmMoeDsaForCausalLM": _MLA,
    "Glm4MoeLiteForCausalLM": _MLA,
    "NemotronHForCausalLM": {"layers_block_type": ["linear_attention", "full_attention"], "mamba_num_heads": 4,
                             "mamba_head_dim": 16, "n_groups": 1},
    "GraniteMoeHybridForCausalLM": {"layer_types": ["linear_attention", "attention"], "mamba_n_heads": 4,
                                    "mamba_d_head": 16},
    "Lfm2MoeForCausalLM": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    "Gemma4ForCausalLM": {"per_layer_config": {}, "hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": 96},
}


def _two_kinds(values: list) -> list:
    """Two entries of a per-layer list, of two different kinds where it has them (a hybrid keeps both)."""
    keys = [str(v) for v in values]
    kinds = list(dict.fromkeys(keys))[:2]
    picked = [values[keys.index(k)] for k in kinds]
    return picked if len(picked) == 2 else picked * 2


def shrink(d: dict) -> dict:
    """A config dict with every size field made tiny (recursing into sub-config dicts)."""
    n_layers = next((d[k] for k in ("num_hidden_layers", "num_layers", "n_layer") if isinstance(d.get(k), int)), None)
    out = {}
    for k, v in d.items():
        if k in ("torch_dtype", "dtype", "architectures", "model_type", "transformers_version"):
            continue
        if isinstance(v, dict) and k.endswith("_config"):
            out[k] = shrink(v)
        elif k in LAYER_KIND_LISTS and isinstance(v, list) and v:
            out[k] = _two_kinds(v)
        elif isinstance(v, list) and v and len(v) == n_layers:  # another per-layer list (sizes or kinds)
            if all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                size = next((s for name, s in SIZES.items() if name in k), 64)
                out[k] = [size, size]
            else:
                out[k] = _two_kinds(v)
        elif k in SIZES and (isinstance(v, int) and not isinstance(v, bool) or
                             v is None and k in _FILL_NONE):
            out[k] = min(v, SIZES[k]) if k == "num_key_value_heads" and v else SIZES[k]
        elif k in SPECIAL_IDS:
            out[k] = None if v is None else 0 if k == "pad_token_id" else [1] if isinstance(v, list) else 1
        elif k not in LAYER_KIND_LISTS:
            out[k] = v
    return out


def model_class(arch: str):
    import transformers

    return getattr(transformers, arch, None)


def tiny_config(arch: str):
    cls = model_class(arch)
    d = shrink(cls.config_class().to_dict())
    d.update(OVERRIDES.get(arch, {}))
    return cls.config_class(**d)


def tiny_model(arch: str, seed: int = 0, noise: float = 0.1):
    """A tiny random ``transformers.<arch>`` in eval mode with HF's eager attention (the reference)."""
    cls = model_class(arch)
    torch.manual_seed(seed)
    model = cls(tiny_config(arch)).eval()
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except (ValueError, NotImplementedError):
            pass
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model
