"""Fused attention kernels.

``flash_attention(q, k, v, causal=True, scale=None, window=None, softcap=None, alibi=None) -> (out, lse)``:
our Triton FlashAttention-2 kernel (forward + backward; CUDA, or Triton's CPU interpreter under
``TRITON_INTERPRET=1``), with a sliding window (skipping the key blocks it cannot see), a soft-cap and ALiBi.
``fused_attention(q, k, v, causal=True, scale=None, backend="auto", window=, softcap=, alibi=) -> (out, lse)``:
what the model calls; triton on CUDA, PyTorch's fused attention (with its log-sum-exp) elsewhere.
``reference_attention``: the float64 eager oracle with the same conventions; ``interp.kernels.reference``
also holds ``modify_scores``, the one definition of the score modifications every path shares.
``attention_lse``: the log-sum-exp alone, in query tiles.
``flash_attention_available()``: True when CUDA and triton are both present.
"""

from interp.kernels.flash import MAX_HEAD_DIM, MIN_HEAD_DIM, flash_attention, flash_attention_available
from interp.kernels.fused import FUSED_BACKENDS, attention_lse, fused_attention
from interp.kernels.reference import reference_attention

__all__ = [
    "FUSED_BACKENDS",
    "MAX_HEAD_DIM",
    "MIN_HEAD_DIM",
    "attention_lse",
    "flash_attention",
    "flash_attention_available",
    "fused_attention",
    "reference_attention",
]
