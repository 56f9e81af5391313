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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from interp.errors import InterpError
from interp.model.config import BACKENDS, DecoderConfig


# --- rotary position embedding ------------------------------------------------------------------
def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, base: float, dtype: torch.dtype):
    """cos/sin tables [(batch,) pos, rotary_dim] for the rotate-half convention (Llama, GPT-NeoX)."""
    work = torch.promote_types(dtype, torch.float32)  # at least fp32; a float64 model keeps full precision
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=work) / rotary_dim))
    freqs = positions.to(inv_freq.dtype)[..., None] * inv_freq  # [(batch,) pos, rotary_dim / 2]
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` features of each head of x [batch, pos, head, d_head].

    Pairs (i, i + rotary_dim/2) rotate by angle pos·θ_i, so q·k depends only on the relative offset.
    Dims past ``rotary_dim`` (partial rotary, GPT-NeoX) pass through unchanged.
    """
    rotary_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    # cos/sin are [pos, rot] (shared positions) or [batch, pos, rot] (left padding): add the head axis
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return torch.cat([x_rot * cos + rotated_half * sin, x_pass], dim=-1)


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
        return "triton" if kernel_fits and flash_attention_available() else "sdpa"
    if backend == "triton" and device.type != "cuda":
        raise InterpError(
            "attn_backend='triton' needs a CUDA device (the kernel is compiled for the GPU); the model is on "
            f"{device}. Use attn_backend='sdpa' or 'eager' on the CPU, or 'auto' to choose for you."
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
        self.W_O = nn.Parameter(torch.empty(H, dh, d))
        if cfg.attn_bias:
            self.b_Q = nn.Parameter(torch.zeros(H, dh))
            self.b_K = nn.Parameter(torch.zeros(K, dh))
            self.b_V = nn.Parameter(torch.zeros(K, dh))
        else:
            self.register_parameter("b_Q", None)
            self.register_parameter("b_K", None)
            self.register_parameter("b_V", None)
        self.b_O = nn.Parameter(torch.zeros(d)) if cfg.attn_out_bias else None
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # [batch, pos, head, d_head]
        if cfg.positional == "rotary":  # registered only where RoPE runs, so every hook point fires
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query, key], masked entries −inf
        self.hook_pattern = HookPoint()  # [batch, head, query, key]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        # hook_result [batch, pos, head, d_model] exists while cfg.use_attn_result (interp.model.gated_hooks)
        # Set by the lazy-pattern cache (interp.model.lazy_pattern) to receive rotated q, k and lse.
        self.pattern_recorder = None

    @property
    def group(self) -> int:
        return self.cfg.n_heads // self.cfg.n_kv_heads

    def _project(self, x, W, b):
        # x is the residual [b, pos, d_model], or one copy per head [b, pos, head, d_model] (split inputs)
        out = torch.einsum("bphm,hmd->bphd" if x.ndim == 4 else "bpm,hmd->bphd", x, W)
        return out if b is None else out + b

    def pattern_hooked(self) -> bool:
        """True when something hooks the scores or the pattern, so they must be materialised."""
        return self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

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
        q = self.hook_q(self._project(q_in, self.W_Q, self.b_Q))
        k = self.hook_k(self._project(k_in, self.W_K, self.b_K))
        v = self.hook_v(self._project(v_in, self.W_V, self.b_V))
        if cfg.positional == "rotary":
            cos, sin = rotary_cos_sin(positions, cfg.rotary_dim, cfg.rotary_base, q.dtype)
            q = self.hook_rot_q(apply_rotary(q, cos, sin))
            k = self.hook_rot_k(apply_rotary(k, cos, sin))
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer, k, v)

        backend = resolve_backend(backend, cfg, q.device)
        if self.pattern_hooked() or backend == "eager":
            z = self._eager(q, k, v, key_mask)
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
        """The reference: scores, −inf above the diagonal (and on padding), softmax, weighted sum of values."""
        qh = q.transpose(1, 2)  # [b, head, q, d]
        kh = k.transpose(1, 2).repeat_interleave(self.group, dim=1)
        vh = v.transpose(1, 2).repeat_interleave(self.group, dim=1)
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * self.cfg.attn_scale
        visible = visible_keys(q.shape[1], k.shape[1], key_mask, q.device)
        scores = self.hook_attn_scores(scores.masked_fill(~visible, float("-inf")))
        # softmax in at least fp32: half precision is upcast, float64 (the oracle) is not truncated
        probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
        pattern = self.hook_pattern(probs.to(v.dtype))
        return torch.matmul(pattern, vh).transpose(1, 2)

    def _fused(self, q, k, v, backend):
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        from interp.kernels import fused_attention

        # With cached keys (generation) queries are the last n_q positions; fused_attention aligns the causal
        # mask bottom-right. The log-sum-exp is only asked for when a lazy cache will rebuild the pattern.
        z, lse = fused_attention(qh, kh, vh, causal=True, scale=self.cfg.attn_scale, backend=backend,
                                 need_lse=self.pattern_recorder is not None)
        if self.pattern_recorder is not None:
            self.pattern_recorder(self.layer, qh, kh, lse)
        return z.transpose(1, 2)
