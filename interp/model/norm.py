"""LayerNorm and RMSNorm with TransformerLens' hooks, in every parametrisation the families use.

``hook_scale`` is the divisor sqrt(mean(x²) + eps) (after centering for LayerNorm) and ``hook_normalized``
the unit-scale vector before the learned gain and bias; caching the scale is what lets
``ActivationCache.apply_ln_to_stack`` treat the norm as linear per position.

Options (DecoderConfig): ``norm_weight_offset`` (the gain is offset + w: Gemma stores w and scales by
1 + w), ``norm_affine=False`` (no gain or bias at all: OLMo 1's LayerNorm). ``learned=False``: a norm
whose gain and bias ``fold_ln`` moved into the weights reading it (TransformerLens' LNPre / RMSPre).
``shape=(n_heads, d_head)``: statistics over the last axis, but a gain per head (StableLM's and Cohere's
QK-norm); ``bias=False``: a LayerNorm without bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from interp.model.config import DecoderConfig


class Norm(nn.Module):
    def __init__(self, cfg: DecoderConfig, dim: int | tuple[int, ...] | None = None, learned: bool = True,
                 bias: bool = True):
        super().__init__()
        shape = (cfg.d_model,) if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
        self.rms = cfg.norm == "rmsnorm"
        self.eps = cfg.norm_eps
        self.offset = cfg.norm_weight_offset
        if cfg.norm_affine and learned:
            self.w = nn.Parameter(torch.ones(shape) - self.offset)  # so the initial gain is 1
            self.b = None if self.rms or not bias else nn.Parameter(torch.zeros(shape))
        else:
            self.register_parameter("w", None)
            self.register_parameter("b", None)
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def gain(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The multiplier actually applied: offset + w (None without learned parameters)."""
        if self.w is None:
            return None
        w = self.w.to(dtype)
        return w + self.offset if self.offset else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32, as HF does
        w, b = self.gain(x.dtype), None if self.b is None else self.b.to(x.dtype)
        per_head = w is not None and w.ndim > 1  # a gain per head: F's norms take a gain over the last axis only
        if not (self.hook_scale.has_hooks() or self.hook_normalized.has_hooks() or per_head):
            # nothing observes the intermediates: one fused call (what HF itself runs for LayerNorm)
            if self.rms:
                return F.rms_norm(x, x.shape[-1:], w, self.eps).to(dtype)
            return F.layer_norm(x, x.shape[-1:], w, b, self.eps).to(dtype)
        if not self.rms:
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        if w is not None:
            x = x * w
        if b is not None:
            x = x + b
        return x.to(dtype)
