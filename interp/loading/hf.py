"""Hugging Face `transformers` models → a HookedDecoder with identical outputs.

The per-family knowledge (config fields, weight names, fused layouts) is the table in
:mod:`interp.loading.families`; this module runs it: read the config, map the weights, check that nothing
was left behind, check the memory, build the model in the source's dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from interp.errors import InterpError
from interp.loading.families import (
    FAMILIES,
    check_memory,
    collect_slots,
    estimate_bytes,
    family_of,
    to_interp_state,
)
from interp.model.config import DTYPES, DecoderConfig

# TransformerLens prepends BOS by default except for these families (its bridge adapters set
# default_prepend_bos=False: their tokenizers add no BOS and their models were trained without one).
NO_BOS_BY_DEFAULT = ("GPTNeoXForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3ForCausalLM",
                     "Qwen3MoeForCausalLM", "PhiForCausalLM", "BloomForCausalLM", "MptForCausalLM", "GraniteForCausalLM",
                     "SmolLM3ForCausalLM", "Exaone4ForCausalLM", "GlmForCausalLM", "Glm4ForCausalLM", "SeedOssForCausalLM",
                     "Starcoder2ForCausalLM", "PhimoeForCausalLM", "GraniteMoeForCausalLM", "Ernie4_5ForCausalLM",
                     "Glm4MoeForCausalLM")


def _dtype_name(dtype: torch.dtype) -> str:
    names = {v: k for k, v in DTYPES.items()}
    if dtype not in names:
        raise InterpError(f"the model's dtype {dtype} is not supported; supported: {sorted(DTYPES)}.")
    return names[dtype]


def config_from_hf(hf_config, arch: str | None = None, dtype: torch.dtype = torch.float32) -> DecoderConfig:
    """The DecoderConfig of a `transformers` config (``arch``: the *ForCausalLM class name)."""
    arch = arch or (getattr(hf_config, "architectures", None) or [""])[0]
    _, family = family_of(arch)
    kwargs = family.config(hf_config)
    kwargs["dtype"] = _dtype_name(dtype)
    # TransformerLens prepends BOS by default, except where its adapter says not to
    kwargs["default_prepend_bos"] = kwargs.get("bos_token_id") is not None and arch not in NO_BOS_BY_DEFAULT
    cfg = DecoderConfig(**kwargs)
    cfg.source = {"transformers_class": arch, "family": family.name}
    return cfg


def _shape_fields(cfg: DecoderConfig) -> dict:
    """What the fused-tensor splitters need to know of the config."""
    return {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "d_head": cfg.d_head,
            "d_model": cfg.d_model, "n_ctx": cfg.n_ctx, "tie_embeddings": cfg.tie_embeddings,
            "qk_norm_layers": cfg.qk_norm_layers}


def llama_state(sd: dict, cfg: DecoderConfig) -> dict:
    """The Llama-named tensors of a `transformers` state dict in our layout; other tensors are left out.

    For tests that build a DecoderConfig by hand and add a block's own weights themselves."""
    return to_interp_state(collect_slots(FAMILIES["LlamaForCausalLM"], sd, _shape_fields(cfg), strict=False), cfg)


def from_hf_model(hf_model: Any, tokenizer: Any = None):
    """Convert a `transformers` causal-LM object into a HookedDecoder with identical outputs."""
    from interp.loading.checkpoint import empty_model, load_state

    arch, family = family_of(hf_model)
    first = next(hf_model.parameters())
    cfg = config_from_hf(hf_model.config, arch, first.dtype)
    # our copy sits beside the transformers model while it is built: refuse before allocating it
    n_params = sum(p.numel() for p in hf_model.parameters())
    check_memory(estimate_bytes(n_params, first.dtype), "cpu", f"converting {arch} ({n_params / 1e6:.0f}M parameters)")
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    state = to_interp_state(collect_slots(family, sd, _shape_fields(cfg)), cfg)
    model = empty_model(cfg, tokenizer)
    load_state(model, {k: v.to("cpu").contiguous() for k, v in state.items()}, arch)
    model.eval()
    return model.to(first.device)
