"""Fused attention kernels.

``flash_attention(q, k, v, causal=True, scale=None) -> (out, lse)``: our Triton FlashAttention-2 kernel
(forward + backward; CUDA, or Triton's CPU interpreter under ``TRITON_INTERPRET=1``).
``reference_attention``: the float64 eager oracle with the same conventions.
``flash_attention_available()``: True when CUDA and triton are both present.
"""

from interp.kernels.flash import MAX_HEAD_DIM, MIN_HEAD_DIM, flash_attention, flash_attention_available
from interp.kernels.reference import reference_attention

__all__ = [
           "MAX_HEAD_DIM",
           "MIN_HEAD_DIM",
           "flash_attention",
           "flash_attention_available",
           "reference_attention",
]
