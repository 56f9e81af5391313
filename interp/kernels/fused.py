"""One entry point for fused attention that also returns the log-sum-exp: what the model's attention calls.

``fused_attention(q, k, v, causal=True, scale=None, backend="auto") -> (out, lse)``

Same shapes and conventions as :func:`interp.kernels.flash_attention` (q [b, h, sq, d], k/v [b, hk, sk, d],
bottom-right causal alignment, lse [b, h, sq] float32 in natural log). Backends:

* ``"triton"``: our kernel (CUDA; or Triton's CPU interpreter under ``TRITON_INTERPRET=1``).
* ``"sdpa"``: PyTorch. On the CPU this calls the flash kernel that ``F.scaled_dot_product_attention``
  itself dispatches to there, through the op that also hands back its log-sum-exp, so the output is the one
  sdpa computes and the lse costs nothing. Elsewhere (CUDA without triton, or a head size the kernel refuses)
  it runs ``F.scaled_dot_product_attention`` and computes the lse in query tiles (O(tile * sk) memory).
* ``"auto"``: triton on CUDA when the kernel can take the input, sdpa otherwise.

The lse of the sdpa path is not differentiable (PyTorch's CPU kernel ignores a gradient on it), so it comes
back detached; ``out`` is differentiable on every path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from interp.errors import InterpError
from interp.kernels.flash import MAX_HEAD_DIM, MIN_HEAD_DIM, flash_attention, flash_attention_available

FUSED_BACKENDS = ("auto", "triton", "sdpa")


def _triton_can_take(q: torch.Tensor) -> bool:
    return (
        q.is_cuda
        and flash_attention_available()
        and MIN_HEAD_DIM <= q.shape[-1] <= MAX_HEAD_DIM
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    )


def _visible(sq: int, sk: int, device) -> torch.Tensor:
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    return j <= i + (sk - sq)


@torch.no_grad()
def attention_lse(q: torch.Tensor, k: torch.Tensor, causal: bool = True, scale: float | None = None,
                  tile_elems: int = 1 << 24) -> torch.Tensor:
    """log sum_j exp(scale q_i.k_j) over visible keys: [b, h, sq] float32, in query tiles (no [sq, sk])."""
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    g = h // hk
    tile = max(1, min(sq, tile_elems // max(1, b * h * sk)))
    out = torch.empty(b, h, sq, device=q.device, dtype=torch.float32)
    kT = k.transpose(-1, -2)[:, :, None]  # [b, hk, 1, d, sk]: broadcast over the group instead of copying K
    for start in range(0, sq, tile):
        stop = min(sq, start + tile)
        qt = q[:, :, start:stop].reshape(b, hk, g, stop - start, d)
        s = (torch.matmul(qt, kT) * scale).float().reshape(b, h, stop - start, sk)
        if causal:
            s = s.masked_fill(~_visible(sq, sk, q.device)[start:stop], float("-inf"))
        out[:, :, start:stop] = torch.logsumexp(s, dim=-1)
    return out


def _sdpa(q, k, v, causal: bool, scale: float, need_lse: bool):
    sq, sk = q.shape[2], k.shape[2]
    is_causal = causal and sq == sk and sq > 1
    # With cached keys (sk > sq) the mask must be aligned bottom-right, which sdpa's is_causal does not do.
    needs_mask = causal and sq != sk and sq > 1
    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    # Only when the lse is wanted (a lazy cache): plain forwards and training keep PyTorch's own dispatch.
    if need_lse and q.device.type == "cpu" and cpu_op is not None:
        mask = None
        if needs_mask:
            mask = torch.zeros(sq, sk, dtype=q.dtype).masked_fill(~_visible(sq, sk, q.device), float("-inf"))
        out, lse = cpu_op(q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
        return out, lse.detach().float()
    mask = _visible(sq, sk, q.device) if needs_mask else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    lse = attention_lse(q, k, causal=causal, scale=scale) if need_lse else None
    return out, lse


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, backend: str = "auto",
                    need_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused attention returning ``(out, lse)``; see the module docstring.

    ``need_lse=False`` lets the sdpa path skip the extra lse pass where PyTorch does not return it (lse may
    then be None); the triton path and the CPU path return it anyway at no cost.
    """
    if backend not in FUSED_BACKENDS:
        raise InterpError(f"fused_attention: backend must be one of {list(FUSED_BACKENDS)}; got {backend!r}")
    if backend == "triton" or (backend == "auto" and _triton_can_take(q)):
        return flash_attention(q, k, v, causal=causal, scale=scale)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InterpError(
            f"fused_attention: q, k, v must be 4-D [batch, heads, seq, d_head]; got q={tuple(q.shape)}, "
            f"k={tuple(k.shape)}, v={tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise InterpError(
            f"fused_attention: n_heads ({q.shape[1]}) must be a multiple of n_kv_heads; got {k.shape[1]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _sdpa(q, k, v, causal, scale, need_lse)
