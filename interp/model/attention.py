"""Multi-head attention with Q/K/V hooks, RoPE, GQA/MQA and interchangeable backends.

The seeds' recipe: project the residual stream to queries, keys and values; score every query against
every visible key with q·k/√d; mask the future with −inf (causal); softmax; mix the values. Backends:

* ``eager`` — exactly that recipe, materialising scores and pattern. It is the numerical oracle and the
  only path on which hooks on ``hook_attn_scores`` / ``hook_pattern`` can *edit* attention, so any layer
  whose score or pattern hook point has a hook runs eagerly.
* ``sdpa`` — PyTorch's fused ``scaled_dot_product_attention``; never builds the [query, key] matrix.
* ``triton`` — our FlashAttention-2 style kernel (``interp.kernels``), CUDA only.
* ``auto`` — triton on CUDA when available, sdpa elsewhere.

GQA/MQA: ``n_kv_heads`` key/value heads each serve ``n_heads // n_kv_heads`` consecutive query heads
(query head h reads kv head h // group), as in Llama/Mistral.

Blocks of modern LLMs, each off by default (DecoderConfig): q/k/v clamped after projection (OLMo's
clip_qkv), QK-norm on q and k before RoPE (Qwen3, OLMo 2, Gemma 3, Phi, StableLM, Cohere; hooked as
``attn.q_norm.*``/``attn.hook_q_normed``), per-layer RoPE (scalings, base, or none),
and the score modifications of :mod:`interp.kernels.reference` (soft-cap, ALiBi, sliding window, Llama 4's
chunked attention), which every backend and the lazy pattern rebuild apply identically (the Triton kernel has no
chunk mask and refuses it by name). GPT-OSS's attention sinks (a learned logit per head in each softmax
denominator) enter the eager softmax directly and the fused paths through their log-sum-exp: out ·
sigmoid(lse − sink); under autograd the fused call becomes the tiled one, whose lse is differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from interp.errors import InterpError
from interp.kernels.reference import alibi_slopes, modify_scores, query_key_positions, softmax_with_sinks
from interp.model.config import BACKENDS, DecoderConfig
from interp.model.norm import Norm
from interp.model.rope import apply_rotary, rope_frequencies, rotary_cos_sin


# --- backends -----------------------------------------------------------------------------------
def resolve_backend(requested: str | None, cfg: DecoderConfig, device: torch.device) -> str:
    backend = requested or cfg.attn_backend
    if backend not in BACKENDS:
        raise InterpError(f"attn_backend must be one of {list(BACKENDS)}; got {backend!r}.")
    if backend == "auto":
        if device.type != "cuda":
            return "sdpa"
        from interp.kernels import MAX_HEAD_DIM, MIN_HEAD_DIM, flash_attention_available

        kernel_fits = MIN_HEAD_DIM <= cfg.d_head <= MAX_HEAD_DIM and cfg.dtype in ("float16", "bfloat16", "float32")
        kernel_fits = kernel_fits and not cfg.has_chunked_layers  # chunked attention (Llama 4): not in the kernel
        return "triton" if kernel_fits and flash_attention_available() else "sdpa"
    if backend == "triton" and device.type != "cuda":
        from interp.kernels.flash import _interpreting

        if not _interpreting():  # on the CPU the kernel runs only in Triton's interpreter (slow: tests, CI)
            raise InterpError(
                "attn_backend='triton' needs a CUDA device (the kernel is compiled for the GPU); the model is on "
                f"{device}. Use attn_backend='sdpa' or 'eager' on the CPU, or 'auto' to choose for you "
                "(or set TRITON_INTERPRET=1 before triton is imported to run the kernel in Triton's interpreter)."
            )
    return backend


def causal_mask(n_query: int, n_key: int, device: torch.device) -> torch.Tensor:
    """Boolean [query, key] mask, True where the key is visible. Queries are the last n_query positions."""
    offset = n_key - n_query
    q = torch.arange(n_query, device=device)[:, None] + offset
    k = torch.arange(n_key, device=device)[None, :]
    return k <= q


def visible_keys(n_query: int, n_key: int, key_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Causal mask [query, key], or [batch, 1, query, key] with a padding mask ``key_mask`` [batch, key]
    (True = real token). A padding query sees only itself: its output is finite and never read by a real
    token (pad keys are hidden from every other query)."""
    visible = causal_mask(n_query, n_key, device)
    if key_mask is None:
        return visible
    offset = n_key - n_query
    is_self = torch.arange(n_key, device=device)[None, :] == torch.arange(n_query, device=device)[:, None] + offset
    return visible & (key_mask.bool()[:, None, None, :] | is_self)


class KVCache:
    """Keys and values of the positions already processed, one entry per layer (for generation)."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[1]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=1)
            v = torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        H, K, d, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head
        # TransformerLens layouts: per-head [head, d_model, d_head] in, [head, d_head, d_model] out.
        self.W_Q = nn.Parameter(torch.empty(H, d, dh))
        self.W_K = nn.Parameter(torch.empty(K, d, dh))
        self.W_V = nn.Parameter(torch.empty(K, d, dh))
        self.W_O = nn.Parameter(torch.empty(H, cfg.d_head_v or dh, d))
        if cfg.kv_lora_rank is not None:
            self._latent_parameters(cfg)
        if cfg.attn_bias:
            self.b_Q = nn.Parameter(torch.zeros(H, dh))
            self.b_K = nn.Parameter(torch.zeros(K, dh))
            self.b_V = nn.Parameter(torch.zeros(K, dh))
        else:
            self.register_parameter("b_Q", None)
            self.register_parameter("b_K", None)
            self.register_parameter("b_V", None)
        self.b_O = nn.Parameter(torch.zeros(d)) if cfg.attn_out_bias else None
        self.sinks = nn.Parameter(torch.zeros(H)) if cfg.attn_sinks else None  # GPT-OSS: a logit per head
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # [batch, pos, head, d_head]
        if cfg.uses_rope(layer):  # registered only where RoPE runs, so every hook point fires
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query, key], masked entries −inf
        self.hook_pattern = HookPoint()  # [batch, head, query, key]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        # hook_result [batch, pos, head, d_model] exists while cfg.use_attn_result (interp.model.gated_hooks)
        # Set by the lazy-pattern cache (interp.model.lazy_pattern) to receive rotated q, k and lse.
        self.pattern_recorder = None
        # score modifications of this layer (interp.kernels.reference)
        self.window = cfg.window(layer)
        self.chunk = cfg.chunk(layer)
        self.softcap = cfg.attn_softcap
        self.rope = cfg.rope_for_layer(layer) if cfg.uses_rope(layer) else None
        self._rope_cache: dict = {}  # (device, dtype, length) -> (inv_freq, attention factor); not state
        self.qk_normed = cfg.uses_qk_norm(layer)
        self.scales_queries = cfg.scales_queries(layer)
        if not self.qk_normed:
            pass
        elif cfg.qk_norm == "each_head":  # a gain per head, no bias (StableLM, Cohere)
            self.q_norm, self.k_norm = Norm(cfg, (H, dh), bias=False), Norm(cfg, (K, dh), bias=False)
        else:
            per_head = cfg.qk_norm == "per_head"
            self.q_norm = Norm(cfg, dh if per_head else H * dh)
            self.k_norm = Norm(cfg, dh if per_head else K * dh)
        if self.qk_normed:
            self.hook_q_normed, self.hook_k_normed = HookPoint(), HookPoint()  # [batch, pos, head, d_head]

    def _latent_parameters(self, cfg: DecoderConfig) -> None:
        """Multi-head latent attention (DeepSeek V3): W_K / W_V do not exist; keys and values come from a latent."""
        H, d, dh, r, rope = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.kv_lora_rank, cfg.qk_rope_dim
        self.W_K = self.W_V = None
        if cfg.q_lora_rank is not None:  # queries through their own normed latent
            self.W_Q = None
            self.W_Q_a = nn.Parameter(torch.empty(d, cfg.q_lora_rank))
            self.q_a_norm = Norm(cfg, cfg.q_lora_rank)
            self.W_Q_b = nn.Parameter(torch.empty(H, cfg.q_lora_rank, dh))
        self.W_KV_a = nn.Parameter(torch.empty(d, r + rope))  # [latent | the shared key part that rotates]
        self.kv_a_norm = Norm(cfg, r)
        self.W_K_b = nn.Parameter(torch.empty(H, r, dh - rope))
        self.W_V_b = nn.Parameter(torch.empty(H, r, cfg.d_head_v or dh))

    def _latent_qkv(self, x: torch.Tensor):
        """q, k, v [batch, pos, head, ·] of latent attention; k's last qk_rope_dim features are one shared head."""
        cfg = self.cfg
        if self.W_Q is None:
            q = torch.einsum("bpr,hrd->bphd", self.q_a_norm(x @ self.W_Q_a), self.W_Q_b)
        else:
            q = self._project(x, self.W_Q, None)
        latent, k_shared = (x @ self.W_KV_a).split([cfg.kv_lora_rank, cfg.qk_rope_dim], dim=-1)
        latent = self.kv_a_norm(latent)
        k_own = torch.einsum("bpr,hrd->bphd", latent, self.W_K_b)
        k = torch.cat([k_own, k_shared[:, :, None].expand(-1, -1, cfg.n_heads, -1)], dim=-1)
        v = torch.einsum("bpr,hrd->bphd", latent, self.W_V_b)
        return self.hook_q(q), self.hook_k(k), self.hook_v(v)

    @property
    def alibi(self) -> torch.Tensor | None:
        """ALiBi slopes [n_heads] (float64, on the weights' device), or None. Computed, not stored: a model
        built on the meta device and loaded from a state dict has them right without a buffer to fill."""
        if not self.cfg.alibi:
            return None
        slopes = alibi_slopes(self.cfg.n_heads).to(self.W_Q.device)
        # Falcon-RW: scale * (q·k + bias) = scale * q·k + (scale * slope) * ... — the same block, scaled slopes
        return slopes * self.cfg.attn_scale if self.cfg.alibi_before_scale else slopes

    @property
    def group(self) -> int:
        return self.cfg.n_heads // self.cfg.n_kv_heads

    def _project(self, x, W, b):
        # x is the residual [b, pos, d_model], or one copy per head [b, pos, head, d_model] (split inputs)
        out = torch.einsum("bphm,hmd->bphd" if x.ndim == 4 else "bpm,hmd->bphd", x, W)
        return out if b is None else out + b

    def _clip(self, t: torch.Tensor) -> torch.Tensor:
        """OLMo's clip_qkv: projections clamped to [-c, c] (before the hooks, so hook_q is what attention uses)."""
        c = self.cfg.clip_qkv
        return t if c is None else t.clamp(-c, c)

    def pattern_hooked(self) -> bool:
        """True when something hooks the scores or the pattern, so they must be materialised."""
        return self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

    def _qk_norm(self, t: torch.Tensor, norm: Norm, hook: HookPoint) -> torch.Tensor:
        if self.cfg.qk_norm in ("per_head", "each_head"):  # statistics over d_head
            return hook(norm(t))
        return hook(norm(t.flatten(-2)).unflatten(-1, t.shape[-2:]))  # across heads: one norm over h*d

    def _frequencies(self, positions, work):
        """(inv_freq on the device, attention factor), computed once per device/dtype (and length, for dynamic
        and longrope, whose frequencies depend on the length of the context processed so far)."""
        by_length = self.rope["rope_type"] in ("dynamic", "longrope")
        seq_len = int(positions.max()) + 1 if by_length else 0  # (the only host sync, and only for those two)
        key = (positions.device, work, seq_len)
        if key not in self._rope_cache:
            if len(self._rope_cache) > 8:
                self._rope_cache.clear()
            inv_freq, factor = rope_frequencies(self.rope, self.cfg.rotary_dim, self.cfg.n_ctx, seq_len, work)
            self._rope_cache[key] = (inv_freq.to(positions.device), factor)
        return self._rope_cache[key]

    def _rotate_tail(self, t, cos, sin):
        """DeepSeek V3: RoPE on the last qk_rope_dim features; interleaved pairs come out as [evens | odds], as its
        apply_rotary_pos_emb_interleave leaves them (q and k alike, so the scores do not depend on the order)."""
        keep, turn = t[..., :-self.cfg.qk_rope_dim], apply_rotary(t[..., -self.cfg.qk_rope_dim:], cos, sin,
                                                                   self.cfg.rotary_interleaved)
        if self.cfg.rotary_interleaved and self.cfg.rope_tail_deinterleave:
            turn = torch.cat([turn[..., 0::2], turn[..., 1::2]], dim=-1)
        return torch.cat([keep, turn], dim=-1)

    def _rotate(self, q, k, positions):
        cfg = self.cfg
        work = torch.promote_types(q.dtype, torch.float32)  # a float64 model keeps full precision
        inv_freq, factor = self._frequencies(positions, work)
        cos, sin = rotary_cos_sin(positions, inv_freq, q.dtype, factor, cfg.rotary_interleaved)
        if cfg.rotary_reversed:  # rotating by -angle: sin(-a) = -sin(a)
            sin = -sin
        if cfg.kv_lora_rank is not None:  # latent attention: the last qk_rope_dim features rotate
            q, k = self._rotate_tail(q, cos, sin), self._rotate_tail(k, cos, sin)
            return self.hook_rot_q(q), self.hook_rot_k(k)
        q = apply_rotary(q, cos, sin, cfg.rotary_interleaved)
        if self.scales_queries:  # hook_rot_q holds the query the scores use (as the bridge's)
            q = self._scale_queries(q, positions)
        q = self.hook_rot_q(q)
        k = self.hook_rot_k(apply_rotary(k, cos, sin, cfg.rotary_interleaved))
        return q, k

    def _scale_queries(self, q, positions):
        """Ministral 3 / Llama 4: queries sharpened with the log of their position's block index, so attention
        stays peaked at lengths past training. Every backend (and the lazy rebuild) then sees the scaled q."""
        cfg = self.cfg
        block = torch.floor((positions + cfg.query_scale_offset).to(torch.float32) / cfg.query_scale_length)
        scale = 1 + cfg.query_scale_beta * torch.log1p(block)  # [(batch,) pos]
        return q * scale[..., None, None].to(q.dtype)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: KVCache | None = None,
        backend: str | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: [batch, pos, d_model], or a (q, k, v) tuple of per-head inputs [batch, pos, head, d_model].
        ``key_mask`` [batch, n_key] (True = real token) hides padding; positions are then [batch, pos]."""
        cfg = self.cfg
        q_in, k_in, v_in = x if isinstance(x, tuple) else (x, x, x)  # a tuple: per-head inputs (gated hooks)
        if cfg.kv_lora_rank is not None:
            q, k, v = self._latent_qkv(x)
        else:
            q = self.hook_q(self._clip(self._project(q_in, self.W_Q, self.b_Q)))
            k = self.hook_k(self._clip(self._project(k_in, self.W_K, self.b_K)))
            v = self.hook_v(self._clip(self._project(v_in, self.W_V, self.b_V)))
        if self.qk_normed and not cfg.qk_norm_after_rope:
            q = self._qk_norm(q, self.q_norm, self.hook_q_normed)
            k = self._qk_norm(k, self.k_norm, self.hook_k_normed)
        if self.rope is not None:
            q, k = self._rotate(q, k, positions)
        elif self.scales_queries:
            q = self._scale_queries(q, positions)
        if self.qk_normed and cfg.qk_norm_after_rope:  # NanoChat: norms of the rotated q, k
            q = self._qk_norm(q, self.q_norm, self.hook_q_normed)
            k = self._qk_norm(k, self.k_norm, self.hook_k_normed)
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer, k, v)

        backend = resolve_backend(backend, cfg, q.device)
        if self.pattern_hooked() or backend == "eager":
            z = self._eager(q, k, v, key_mask)
        elif key_mask is not None and (self.window or self.chunk or self.softcap or self.cfg.alibi
                                       or self.sinks is not None):
            z = self._eager(q, k, v, key_mask)  # padding and score modifications together: the exact path
        elif key_mask is not None:  # padding: PyTorch's sdpa with an explicit mask (no kernel lse to record)
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=cfg.attn_scale,
                attn_mask=visible_keys(q.shape[1], k.shape[1], key_mask, q.device), enable_gqa=self.group > 1,
            ).transpose(1, 2)
        else:
            z = self._fused(q, k, v, backend)
        z = self.hook_z(z)
        if cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O))
            out = result.sum(dim=2)
        else:
            out = torch.einsum("bphd,hdm->bpm", z, self.W_O)
        return out if self.b_O is None else out + self.b_O

    def _eager(self, q, k, v, key_mask=None):
        """The reference: scores (soft-cap, ALiBi), −inf where masked (causal, window, padding), softmax,
        weighted sum of values."""
        qh = q.transpose(1, 2)  # [b, head, q, d]
        kh = k.transpose(1, 2).repeat_interleave(self.group, dim=1)
        vh = v.transpose(1, 2).repeat_interleave(self.group, dim=1)
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * self.cfg.attn_scale
        q_pos, k_pos = query_key_positions(q.shape[1], k.shape[1], q.device)
        scores = modify_scores(scores, q_pos, k_pos, True, self.window, self.softcap, self.alibi, self.chunk)
        if key_mask is not None:  # padding: pad keys hidden from every other query (interp.model.text)
            scores = scores.masked_fill(~visible_keys(q.shape[1], k.shape[1], key_mask, q.device), float("-inf"))
        scores = self.hook_attn_scores(scores)
        # softmax in at least fp32: half precision is upcast, float64 (the oracle) is not truncated
        work = torch.promote_types(scores.dtype, torch.float32)
        if self.sinks is None:
            probs = torch.softmax(scores, dim=-1, dtype=work)
        else:  # GPT-OSS: the sink joins each row's denominator (the pattern's rows then sum to less than 1)
            probs = softmax_with_sinks(scores.to(work), self.sinks)
        pattern = self.hook_pattern(probs.to(v.dtype))
        return torch.matmul(pattern, vh).transpose(1, 2)

    def _fused(self, q, k, v, backend):
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        from interp.kernels import fused_attention
        from interp.kernels.fused import tiled_attention

        # With cached keys (generation) queries are the last n_q positions; fused_attention aligns the causal
        # mask bottom-right. The log-sum-exp is only asked for when a lazy cache will rebuild the pattern.
        d_qk, d_v = qh.shape[-1], vh.shape[-1]
        if d_v != d_qk:  # latent attention's value heads are narrower: zero features change no score or output
            if d_v < d_qk:
                vh = F.pad(vh, (0, d_qk - d_v))
            else:
                qh, kh = F.pad(qh, (0, d_v - d_qk)), F.pad(kh, (0, d_v - d_qk))
        mods = {"scale": self.cfg.attn_scale, "window": self.window, "softcap": self.softcap, "alibi": self.alibi,
                "chunk": self.chunk}
        if self.sinks is not None and torch.is_grad_enabled() and qh.requires_grad:
            # the sinks act through the lse, which the kernels return without a gradient: for a backward pass
            # (training, attribution patching) the tiled path, whose lse is differentiable
            z, lse = tiled_attention(qh, kh, vh, True, differentiable_lse=True, **mods)
        else:
            z, lse = fused_attention(qh, kh, vh, causal=True, backend=backend, **mods,
                                     need_lse=self.pattern_recorder is not None or self.sinks is not None)
        if self.pattern_recorder is not None:
            self.pattern_recorder(self.layer, qh, kh, lse)
        if self.sinks is not None:  # softmax_with_sinks through the lse: each row scaled by sigmoid(lse - sink)
            keep = torch.sigmoid(lse.float() - self.sinks.float()[:, None])
            z = z * keep[..., None].to(z.dtype)
        return z[..., :d_v].transpose(1, 2)
