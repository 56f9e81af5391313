"""One dataclass describing every decoder-only architecture interp supports.

The fields are the architecture choices discussed in the seeds (positional scheme, norm type and
placement, activation, gating, MHA/GQA/MQA, parallel residual, biases, tying). Properties with
TransformerLens' names (``normalization_type``, ``act_fn``, ``d_head`` ...) let TransformerLens'
``ActivationCache`` treat our model like one of its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError

POSITIONAL = ("learned", "sinusoidal", "rotary", "none")
NORMS = ("layernorm", "rmsnorm")
# pre: x + f(LN x) | post: LN(x + f x) | deepnorm: LN(αx + f x) | sandwich: x + LN_post(f(LN x)) (Gemma 2/3)
# | sublayer_post: x + LN(f x) (OLMo 2: the norm on the sublayer's output only)
NORM_PLACEMENTS = ("pre", "post", "deepnorm", "sandwich", "sublayer_post")
LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention")  # transformers' spelling (layer_types)
# per_head: one norm over d_head shared by all heads (Qwen3, Gemma 3, Phi's qk_layernorm); each_head: the
# same, but every head has its own gain and no bias (StableLM's qk_layernorm, Cohere's use_qk_norm);
# across_heads: one norm over all heads' q (or k) at once (OLMo 2)
QK_NORMS = (None, "per_head", "each_head", "across_heads")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "relu2")  # relu2: relu(x)² (NanoChat)
BACKENDS = ("auto", "eager", "sdpa", "triton")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise InterpError(f"DecoderConfig.{name} must be one of {list(allowed)}; got {value!r}.")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InterpError(f"DecoderConfig.{name} must be a positive integer; got {value!r}.")


def _positive_float(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise InterpError(f"DecoderConfig.{name} must be a finite number > 0{' or None' if allow_none else ''}; "
                          f"got {value!r}.")


def _layer_list(name: str, value: Any, n_layers: int) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != n_layers:
        raise InterpError(f"DecoderConfig.{name} must be a list with one entry per layer (n_layers={n_layers}); "
                          f"got {value!r}.")
    return list(value)


# keys each RoPE scaling type needs in its rope_parameters dict (transformers' names)
_ROPE_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",),
                  "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                  "yarn": ("factor", "original_max_position_embeddings"),
                  "longrope": ("long_factor", "short_factor", "original_max_position_embeddings")}


@dataclass
class DecoderConfig:
    d_vocab: int
    n_ctx: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None -> n_heads (MHA); 1 -> MQA; in between -> GQA
    d_head: int | None = None  # None -> d_model // n_heads
    d_mlp: int | None = None  # None -> 4 * d_model
    positional: str = "learned"  # learned | sinusoidal | rotary | none
    rotary_fraction: float = 1.0  # share of each head's dims that rotate (GPT-NeoX's rotary_pct)
    rotary_base: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_placement: str = "pre"  # pre | post | deepnorm
    act: str = "gelu"  # gelu (exact erf) | gelu_new (tanh approximation) | relu | silu
    gated: bool = False  # SwiGLU-style: act(x W_gate) * (x W_in)
    parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)
    attn_bias: bool = True
    attn_out_bias: bool | None = None  # None -> attn_bias
    mlp_bias: bool = True
    final_norm: bool = True
    tie_embeddings: bool = False
    attn_backend: str = "auto"  # auto | eager | sdpa | triton
    use_attn_result: bool = False  # opt-in per-head output hook blocks.{l}.attn.hook_result
    use_attn_in: bool = False  # opt-in blocks.{l}.hook_attn_in (interp.model.gated_hooks)
    use_split_qkv_input: bool = False  # opt-in blocks.{l}.hook_q_input / hook_k_input / hook_v_input
    use_hook_mlp_in: bool = False  # opt-in blocks.{l}.hook_mlp_in
    init_std: float = 0.02
    deepnorm_alpha: float | None = None  # None -> (2 N)^(1/4) for deepnorm (DeepNet, decoder-only)
    deepnorm_beta: float | None = None  # None -> (8 N)^(-1/4)
    # --- blocks of modern LLMs (issue #10). Every one is off by default; names follow transformers' configs
    # so a family mapping is renaming. Attention masks and scores:
    sliding_window: int | None = None  # local attention: query i sees keys i-w < j <= i (Mistral, Gemma 2/3)
    layer_types: list | None = None  # per layer "full_attention" | "sliding_attention"; None: all sliding
    #                                  when sliding_window is set, else all full (HF config.layer_types)
    attention_chunk_size: int | None = None  # "chunked_attention" layers: query i sees keys j <= i in its own block
    #                                          of this many positions, i // c == j // c (Llama 4)
    alibi: bool = False  # ALiBi: score -= slope_h * (i - j), Bloom/MPT slopes (geometric, any head count)
    alibi_before_scale: bool = False  # Falcon-RW adds ALiBi to q·k *before* the score scale, so its slopes act
    #                                   multiplied by it: score = scale * (q·k - slope_h * (i - j))
    attn_sinks: bool = False  # a learned logit per head in every softmax denominator (GPT-OSS's sinks)
    attn_softcap: float | None = None  # scores -> c * tanh(scores / c) before the mask (Gemma 2)
    attn_multiplier: float | None = None  # score scale; None -> 1/sqrt(d_head). Gemma: query_pre_attn_scalar**-0.5,
    #                                       Granite: attention_multiplier
    # Multi-head latent attention (DeepSeek V3), on when kv_lora_rank is set: keys and values come from a shared
    # latent x·W_KV_a (normed) of kv_lora_rank dims, per head through W_K_b / W_V_b, plus one rotated key part of
    # qk_rope_dim dims shared by all heads; queries through a latent of q_lora_rank dims (None: W_Q directly). The
    # last qk_rope_dim features of each q/k head rotate; value heads have d_head_v features.
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_rope_dim: int = 0
    d_head_v: int | None = None  # None -> d_head (only multi-head latent attention sets it)
    rope_tail_deinterleave: bool = True  # interleaved pairs of the rotated tail come out as [evens | odds] (DeepSeek
    #                                      V3's apply_rotary_pos_emb_interleave); False: in place (V2's complex RoPE)
    # Positions:
    rope_parameters: dict | None = None  # transformers' rope_parameters: {"rope_type": linear|dynamic|llama3|yarn|
    #    longrope, "rope_theta"?, "factor", ...}, or one such dict per layer type {"full_attention": {...},
    #    "sliding_attention": {...}} (Gemma 3's local/global bases). "rope_theta" overrides rotary_base there.
    rotary_interleaved: bool = False  # GPT-J: rotate pairs (2i, 2i+1) instead of halves (i, i + r/2)
    rotary_reversed: bool = False  # rotate by -angle (NanoChat's rotate_half has the opposite sign)
    rope_layers: list | None = None  # per layer True/False: whether RoPE applies (SmolLM3's no_rope_layers)
    query_scale_beta: float | None = None  # q (after RoPE) * 1 + beta * log(1 + floor((p + offset) / length)) at
    query_scale_length: int | None = None  # position p: Ministral 3's llama_4_scaling (offset 0), Llama 4's
    query_scale_offset: int = 0  # attention temperature tuning (offset 1); None: no scaling
    query_scale_layers: list | None = None  # per layer True/False: where the query scaling applies (None: all;
    #                                         Llama 4: its NoPE layers)
    pos_offset: int = 0  # learned positions: position p reads row p + pos_offset of W_pos (OPT: 2)
    embed_norm: bool = False  # a norm on the embeddings before block 0, hooked as embed_ln.* (Bloom)
    # Norms:
    clip_qkv: float | None = None  # q, k and v clamped to [-c, c] right after their projections (OLMo's clip_qkv)
    qk_norm: str | None = None  # None | "per_head" (Qwen3, Gemma 3: over d_head) | "each_head" (StableLM,
    #                             Cohere: a gain per head, no bias) | "across_heads" (OLMo 2:
    #                             over all heads' q / k at once). Hooked: attn.q_norm.*, attn.hook_q_normed
    qk_norm_layers: list | None = None  # per layer True/False: where the QK-norm applies (None: every layer; Llama 4:
    #                                     its RoPE layers)
    qk_norm_after_rope: bool = False  # the QK-norm reads the rotated q, k (NanoChat) instead of the projections
    norm_weight_offset: float = 0.0  # norms scale by (offset + w): Gemma's RMSNorm stores w and uses (1 + w)
    norm_affine: bool = True  # False: no learned gain/bias in any norm (OLMo 1's LayerNorm)
    shared_norm: bool = False  # parallel block reads one norm (ln1) for attention and MLP (GPT-J, Phi, Falcon)
    # Scalars:
    embed_multiplier: float = 1.0  # embeddings * m (Gemma: sqrt(d_model); Granite: embedding_multiplier)
    residual_multiplier: float = 1.0  # each sublayer's output * m before it joins the residual (Granite);
    #                                   hook_attn_out / hook_mlp_out see the scaled value (resid sums stay exact)
    logit_scale: float = 1.0  # logits * s (Cohere's logit_scale; Granite: 1 / logits_scaling)
    final_softcap: float | None = None  # logits -> c * tanh(logits / c) (Gemma 2's final_logit_softcapping)
    # Mixture of experts (Mixtral, Qwen2-MoE). n_experts = 0: dense MLP everywhere.
    n_experts: int = 0  # routed experts per MoE layer
    n_experts_per_token: int = 2  # top-k
    d_expert: int | None = None  # each expert's hidden size; None -> d_mlp (Qwen2-MoE: moe_intermediate_size)
    moe_layers: list | None = None  # indices of the layers whose MLP is an MoE; None -> every layer
    router_softmax_after_topk: bool = False  # False: softmax over all experts, then top-k (Mixtral, Qwen2-MoE)
    #                                          True: top-k of the logits, softmax over the k chosen
    router_norm_topk: bool = True  # renormalise the k weights to sum 1 (Mixtral; Qwen2-MoE's norm_topk_prob)
    router_sparsemixer_eps: float | None = None  # PhiMoE's sparsemixer (top-2 only): each round picks the best
    #    remaining expert, weighted by its softmax over the experts within a relative margin 2·eps of it
    router_bias: bool = False  # the router logits have a bias (GPT-OSS)
    router_sigmoid: bool = False  # scores sigmoid(logit) instead of a softmax, each expert on its own (Llama 4,
    #                               DeepSeek V3, GLM-4-MoE); the k chosen are renormalised if router_norm_topk
    router_correction_bias: bool = False  # a per-expert bias added to the sigmoid scores for choosing only (DeepSeek
    #                                       V3's e_score_correction_bias); the weights are the uncorrected scores
    router_groups: int = 1  # group-limited routing: experts in router_groups groups, a group scored by the sum of its
    router_topk_groups: int = 1  # two best scores; experts chosen only from the router_topk_groups best groups
    router_group_score_top: int = 2  # a group's score: the sum of its this-many best scores (DeepSeek V2: 1, the max)
    routed_scaling: float = 1.0  # the routed experts' weights * this (DeepSeek V3's routed_scaling_factor)
    router_scale_input: bool = False  # Llama 4: the weight scales the expert's input, expert(w·x), not its output
    swiglu_limit: float | None = None  # GPT-OSS's clamped SwiGLU: gate clamped to <= limit and up to [-limit, limit],
    swiglu_alpha: float = 1.0  # then (up + 1) * gate * sigmoid(swiglu_alpha * gate); None: the usual act(gate) * up
    d_shared_expert: int | None = None  # hidden size of an always-on shared expert (Qwen2-MoE); None: none
    shared_expert_gate: bool = True  # the shared expert's output * sigmoid(x . w_gate) (Qwen2-MoE)
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    # TransformerLens weight processing applied to the weights (interp.model.processing), in order, e.g.
    # ["fold_ln", "center_writing_weights"]. After "fold_ln" ln1/ln2/ln_final have no gain or bias (TL's
    # LNPre / RMSPre): their parameters live in the weights that read them.
    weight_processing: list = field(default_factory=list)
    default_prepend_bos: bool | None = None  # TransformerLens' name; None -> True when bos_token_id is set
    dtype: str = "float32"
    name: str = "interp-model"
    source: dict = field(default_factory=dict)  # where the weights came from (HF class, path, ...)

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "n_layers", "n_heads"):
            _positive(name, getattr(self, name))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        _positive("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise InterpError(
                f"DecoderConfig.n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}): "
                f"each key/value head serves a whole group of query heads. Pick n_kv_heads from "
                f"{[d for d in range(1, self.n_heads + 1) if self.n_heads % d == 0]}."
            )
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise InterpError(
                    f"DecoderConfig.d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); "
                    f"set d_head explicitly or choose n_heads dividing d_model."
                )
            self.d_head = self.d_model // self.n_heads
        _positive("d_head", self.d_head)
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        _positive("d_mlp", self.d_mlp)
        _choice("positional", self.positional, POSITIONAL)
        _choice("norm", self.norm, NORMS)
        _choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        _choice("act", self.act, ACTIVATIONS)
        _choice("attn_backend", self.attn_backend, BACKENDS)
        _choice("dtype", self.dtype, tuple(DTYPES))
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise InterpError(f"DecoderConfig.rotary_fraction must be in (0, 1]; got {self.rotary_fraction}.")
        if self.positional == "rotary" and self.rotary_dim % 2:
            raise InterpError(
                f"rotary dims per head (d_head * rotary_fraction = {self.rotary_dim}) must be even; "
                f"adjust rotary_fraction ({self.rotary_fraction}) or d_head ({self.d_head})."
            )
        if self.parallel_residual and self.norm_placement != "pre":
            raise InterpError(
                "DecoderConfig.parallel_residual=True needs norm_placement='pre' (GPT-NeoX style); "
                f"got norm_placement={self.norm_placement!r}."
            )
        if self.default_prepend_bos is None:
            self.default_prepend_bos = self.bos_token_id is not None
        if self.use_attn_in and self.use_split_qkv_input:
            raise InterpError("DecoderConfig.use_attn_in and use_split_qkv_input exclude each other; set one.")
        if self.attn_out_bias is None:
            self.attn_out_bias = self.attn_bias
        if self.norm_eps <= 0:
            raise InterpError(f"DecoderConfig.norm_eps must be > 0; got {self.norm_eps}.")
        from interp.model.processing import STEPS

        unknown = [step for step in self.weight_processing if step not in STEPS]
        if unknown:
            raise InterpError(f"DecoderConfig.weight_processing entries must be in {list(STEPS)}; got {unknown}.")
        self._check_blocks()

    def _check_blocks(self) -> None:
        """Validate the issue-#10 block options (each off by default)."""
        L = self.n_layers
        if self.sliding_window is not None:
            _positive("sliding_window", self.sliding_window)
        if self.layer_types is not None:
            self.layer_types = _layer_list("layer_types", self.layer_types, L)
            for t in self.layer_types:
                _choice("layer_types[...]", t, LAYER_TYPES)
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise InterpError("DecoderConfig.layer_types has 'sliding_attention' layers but sliding_window is "
                                  "None; set sliding_window to the window width.")
            if "chunked_attention" in self.layer_types and self.attention_chunk_size is None:
                raise InterpError("DecoderConfig.layer_types has 'chunked_attention' layers but attention_chunk_size "
                                  "is None; set it to the chunk width.")
        if self.attention_chunk_size is not None:
            _positive("attention_chunk_size", self.attention_chunk_size)
        for name in ("qk_norm_layers", "query_scale_layers"):
            if getattr(self, name) is not None:
                setattr(self, name, [bool(x) for x in _layer_list(name, getattr(self, name), L)])
        if self.alibi_before_scale and not self.alibi:
            raise InterpError("DecoderConfig.alibi_before_scale=True needs alibi=True (it says where ALiBi is added).")
        for name in ("attn_softcap", "attn_multiplier", "final_softcap", "clip_qkv"):
            _positive_float(name, getattr(self, name), allow_none=True)
        for name in ("embed_multiplier", "residual_multiplier", "logit_scale"):
            _positive_float(name, getattr(self, name))
        if self.rope_parameters is not None:
            if self.positional != "rotary":
                raise InterpError(f"DecoderConfig.rope_parameters needs positional='rotary'; got "
                                  f"positional={self.positional!r}.")
            if not isinstance(self.rope_parameters, dict):
                raise InterpError(f"DecoderConfig.rope_parameters must be a dict; got {self.rope_parameters!r}.")
            per_type = set(self.rope_parameters) <= set(LAYER_TYPES) and self.rope_parameters
            for key, params in (self.rope_parameters.items() if per_type else [("", self.rope_parameters)]):
                where = f"rope_parameters[{key!r}]" if key else "rope_parameters"
                if not isinstance(params, dict):
                    raise InterpError(f"DecoderConfig.{where} must be a dict; got {params!r}.")
                rope_type = params.get("rope_type", params.get("type", "default"))
                _choice(f"{where}['rope_type']", rope_type, ROPE_TYPES)
                missing = [k for k in _ROPE_REQUIRED.get(rope_type, ()) if params.get(k) is None]
                if missing:
                    raise InterpError(f"DecoderConfig.{where}: RoPE type {rope_type!r} needs {missing}; got {params!r}.")
                if rope_type == "longrope":
                    for k in ("long_factor", "short_factor"):
                        if len(params[k]) != self.rotary_dim // 2:
                            raise InterpError(
                                f"DecoderConfig.{where}['{k}'] must have rotary_dim/2 = {self.rotary_dim // 2} "
                                f"entries; got {len(params[k])}.")
        if self.kv_lora_rank is not None:
            _positive("kv_lora_rank", self.kv_lora_rank)
            if self.q_lora_rank is not None:
                _positive("q_lora_rank", self.q_lora_rank)
            _positive("d_head_v", self.d_head_v if self.d_head_v is not None else self.d_head)
            if self.positional != "rotary" or not 0 < self.qk_rope_dim < self.d_head or self.qk_rope_dim % 2:
                raise InterpError(f"DecoderConfig.qk_rope_dim must be even and in (0, d_head={self.d_head}) with "
                                  f"positional='rotary' for latent attention; got {self.qk_rope_dim}.")
            if self.n_kv_heads != self.n_heads or self.use_split_qkv_input or self.attn_bias or self.qk_norm:
                raise InterpError("DecoderConfig.kv_lora_rank (latent attention) needs n_kv_heads == n_heads and "
                                  "no use_split_qkv_input, attn_bias or qk_norm.")
        elif self.d_head_v is not None or self.q_lora_rank is not None:
            raise InterpError("DecoderConfig.d_head_v / q_lora_rank are for latent attention: set kv_lora_rank.")
        if self.qk_norm_after_rope and self.qk_norm is None:
            raise InterpError("DecoderConfig.qk_norm_after_rope=True needs a qk_norm.")
        if (self.rotary_interleaved or self.rotary_reversed) and self.positional != "rotary":
            raise InterpError("DecoderConfig.rotary_interleaved / rotary_reversed need positional='rotary'.")
        if self.rope_layers is not None:
            if self.positional != "rotary":
                raise InterpError("DecoderConfig.rope_layers needs positional='rotary'.")
            self.rope_layers = [bool(x) for x in _layer_list("rope_layers", self.rope_layers, L)]
        if self.query_scale_beta is not None:
            _positive_float("query_scale_beta", self.query_scale_beta)
            _positive("query_scale_length", self.query_scale_length)
            if not isinstance(self.query_scale_offset, int) or self.query_scale_offset < 0:
                raise InterpError(f"DecoderConfig.query_scale_offset must be an integer >= 0; got "
                                  f"{self.query_scale_offset!r}.")
        if not isinstance(self.pos_offset, int) or self.pos_offset < 0:
            raise InterpError(f"DecoderConfig.pos_offset must be an integer >= 0; got {self.pos_offset!r}.")
        if self.pos_offset and self.positional != "learned":
            raise InterpError(f"DecoderConfig.pos_offset needs positional='learned'; got {self.positional!r}.")
        _choice("qk_norm", self.qk_norm, QK_NORMS)
        if self.shared_norm and not self.parallel_residual:
            raise InterpError("DecoderConfig.shared_norm=True needs parallel_residual=True (one norm feeds both "
                              "the attention and the MLP of a parallel block).")
        if self.norm_placement in ("sandwich", "sublayer_post") and self.parallel_residual:
            raise InterpError(f"DecoderConfig.norm_placement={self.norm_placement!r} cannot be combined with "
                              "parallel_residual=True.")
        if self.swiglu_limit is not None:
            _positive_float("swiglu_limit", self.swiglu_limit)
            _positive_float("swiglu_alpha", self.swiglu_alpha)
            if not self.gated:
                raise InterpError("DecoderConfig.swiglu_limit (GPT-OSS's clamped SwiGLU) needs gated=True.")
        if not isinstance(self.n_experts, int) or isinstance(self.n_experts, bool) or self.n_experts < 0:
            raise InterpError(f"DecoderConfig.n_experts must be an integer >= 0 (0: dense); got {self.n_experts!r}.")
        if self.n_experts:
            _positive("n_experts_per_token", self.n_experts_per_token)
            if self.n_experts_per_token > self.n_experts:
                raise InterpError(f"DecoderConfig.n_experts_per_token must be in [1, n_experts={self.n_experts}]; "
                                  f"got {self.n_experts_per_token}.")
            if self.d_expert is not None:
                _positive("d_expert", self.d_expert)
            if self.router_groups != 1 or self.router_topk_groups != 1:
                _positive("router_groups", self.router_groups)
                _positive("router_topk_groups", self.router_topk_groups)
                if self.n_experts % self.router_groups or self.router_topk_groups > self.router_groups:
                    raise InterpError(f"DecoderConfig.router_groups ({self.router_groups}) must divide n_experts "
                                      f"({self.n_experts}) and router_topk_groups ({self.router_topk_groups}) be at "
                                      "most router_groups.")
            _positive_float("routed_scaling", self.routed_scaling)
            _positive("router_group_score_top", self.router_group_score_top)
            if self.router_sparsemixer_eps is not None:
                _positive_float("router_sparsemixer_eps", self.router_sparsemixer_eps)
                if self.n_experts_per_token != 2:
                    raise InterpError("DecoderConfig.router_sparsemixer_eps (PhiMoE's routing) needs "
                                      f"n_experts_per_token=2; got {self.n_experts_per_token}.")
            if self.d_shared_expert is not None:
                _positive("d_shared_expert", self.d_shared_expert)
            if self.moe_layers is not None:
                bad = [i for i in self.moe_layers if not isinstance(i, int) or not 0 <= i < L]
                if bad:
                    raise InterpError(f"DecoderConfig.moe_layers must hold layer indices in [0, {L - 1}]; got {bad}.")
                self.moe_layers = sorted(set(self.moe_layers))
        elif self.moe_layers:
            raise InterpError("DecoderConfig.moe_layers is set but n_experts=0; set n_experts (> 0).")

    # --- derived quantities -------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        if self.positional != "rotary":
            return 0
        return self.qk_rope_dim if self.kv_lora_rank is not None else int(self.d_head * self.rotary_fraction)

    @property
    def alpha(self) -> float:
        """Residual multiplier: DeepNet's α for deepnorm, 1 otherwise."""
        if self.norm_placement != "deepnorm":
            return 1.0
        return self.deepnorm_alpha if self.deepnorm_alpha is not None else (2.0 * self.n_layers) ** 0.25

    @property
    def beta(self) -> float:
        """DeepNet's β: the gain on value/output/FFN weights at initialisation."""
        if self.norm_placement != "deepnorm":
            return 1.0
        return self.deepnorm_beta if self.deepnorm_beta is not None else (8.0 * self.n_layers) ** -0.25

    @property
    def norm_folded(self) -> bool:
        """fold_ln has moved the norms' gains and biases into the weights that read them."""
        return "fold_ln" in self.weight_processing

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def attn_scale(self) -> float:
        """The multiplier of q·k: attn_multiplier if given, else 1/sqrt(d_head)."""
        return self.attn_multiplier if self.attn_multiplier is not None else 1.0 / math.sqrt(self.d_head)

    # --- per-layer views of the block options ----------------------------------------------------
    def layer_type(self, layer: int) -> str:
        """'full_attention' or 'sliding_attention' for ``layer``."""
        if self.layer_types is not None:
            return self.layer_types[layer]
        return "sliding_attention" if self.sliding_window is not None else "full_attention"

    def window(self, layer: int) -> int | None:
        """The sliding-window width of ``layer`` (None: full causal attention)."""
        return self.sliding_window if self.layer_type(layer) == "sliding_attention" else None

    def chunk(self, layer: int) -> int | None:
        """The chunk width of a 'chunked_attention' layer (None: not chunked)."""
        return self.attention_chunk_size if self.layer_type(layer) == "chunked_attention" else None

    @property
    def has_chunked_layers(self) -> bool:
        return any(self.chunk(i) is not None for i in range(self.n_layers))

    def uses_qk_norm(self, layer: int) -> bool:
        return self.qk_norm is not None and (self.qk_norm_layers is None or self.qk_norm_layers[layer])

    def scales_queries(self, layer: int) -> bool:
        return self.query_scale_beta is not None and (self.query_scale_layers is None or self.query_scale_layers[layer])

    def uses_rope(self, layer: int) -> bool:
        return self.positional == "rotary" and (self.rope_layers is None or self.rope_layers[layer])

    def rope_for_layer(self, layer: int) -> dict:
        """This layer's RoPE parameters with 'rope_type' and 'rope_theta' always present."""
        params = self.rope_parameters or {}
        if params and set(params) <= set(LAYER_TYPES):
            params = params.get(self.layer_type(layer), {})
        out = dict(params)
        out["rope_type"] = out.get("rope_type", out.pop("type", "default"))
        out.setdefault("rope_theta", self.rotary_base)
        return out

    def is_moe(self, layer: int) -> bool:
        return self.n_experts > 0 and (self.moe_layers is None or layer in self.moe_layers)

    @property
    def has_moe(self) -> bool:
        return any(self.is_moe(i) for i in range(self.n_layers))

    # --- TransformerLens-compatible names (ActivationCache reads these) -------------------------
    @property
    def normalization_type(self) -> str | None:
        if self.norm_placement not in ("pre", "sandwich"):
            return None  # apply_ln on a post-LN stream has no meaning; TL then skips folding
        kind = "LN" if self.norm == "layernorm" else "RMS"
        # TL's names for a norm without gain or bias: after fold_ln, or parameter-free norms (OLMo)
        return kind + "Pre" if self.norm_folded or not self.norm_affine else kind

    @property
    def final_rms(self) -> bool:
        return self.norm == "rmsnorm"

    @property
    def act_fn(self) -> str:
        return self.act

    @property
    def gated_mlp(self) -> bool:
        return self.gated

    @property
    def n_key_value_heads(self) -> int:
        return self.n_kv_heads

    @property
    def positional_embedding_type(self) -> str:
        return {"learned": "standard", "sinusoidal": "sinusoidal", "rotary": "rotary", "none": "none"}[
            self.positional
        ]

    @property
    def attn_only(self) -> bool:
        return False

    @property
    def eps(self) -> float:
        return self.norm_eps

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def original_architecture(self) -> str | None:
        """The `transformers` class the weights came from (TL's field), None for our own checkpoints."""
        return (self.source or {}).get("transformers_class")

    # --- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InterpError(
                f"config.json has fields DecoderConfig does not know: {unknown}. Known fields: {sorted(known)}."
            )
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise InterpError(f"config.json lacks the required fields {missing}; a complete config has "
                              f"{required} (write one with model.save(folder)).")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:  # a field of the wrong type deep inside __post_init__
            if isinstance(e, InterpError):
                raise
            raise InterpError(f"config.json has a field of the wrong type or value: {e}.") from None

    def save(self, path: str | Path) -> None:
        from interp.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DecoderConfig:
        from interp.io import read_json

        data = read_json(path)
        try:
            return cls.from_dict(data)
        except InterpError as e:
            raise InterpError(f"{path}: {e}") from None
