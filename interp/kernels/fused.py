"""One entry point for fused attention that also returns the log-sum-exp: what the model's attention calls.

``fused_attention(q, k, v, causal=True, scale=None, backend="auto", window=None, softcap=None, alibi=None)
-> (out, lse)``

Same shapes and conventions as :func:`interp.kernels.flash_attention` (q [b, h, sq, d], k/v [b, hk, sk, d],
bottom-right causal alignment, lse [b, h, sq] float32 in natural log). ``window`` / ``softcap`` / ``alibi``
(slopes [h]) modify the scores as :mod:`interp.kernels.reference` defines. Backends:

* ``"triton"``: our kernel (CUDA; or Triton's CPU interpreter under ``TRITON_INTERPRET=1``).
* ``"sdpa"``: PyTorch. On the CPU this calls the flash kernel that ``F.scaled_dot_product_attention``
  itself dispatches to there, through the op that also hands back its log-sum-exp, so the output is the one
  sdpa computes and the lse costs nothing. Elsewhere (CUDA without triton, or a head size the kernel refuses)
  it runs ``F.scaled_dot_product_attention`` and computes the lse in query tiles (O(tile * sk) memory).
  A window or ALiBi travels to sdpa as an explicit additive mask [h, sq, sk]. A soft-cap is not expressible
  as a mask (it transforms the scores), so with one the sdpa backend runs :func:`tiled_attention`: the same
  arithmetic in query tiles, never more than a tile of scores at once.
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
from interp.kernels.reference import modify_scores, query_key_positions, visible_keys

FUSED_BACKENDS = ("auto", "triton", "sdpa")


def _triton_can_take(q: torch.Tensor) -> bool:
    return (
        q.is_cuda
        and flash_attention_available()
        and MIN_HEAD_DIM <= q.shape[-1] <= MAX_HEAD_DIM
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    )


def _tile_scores(q, kT, start, stop, scale, causal, window, softcap, alibi, upcast: bool, chunk=None):
    """Modified scores of query rows [start, stop) against every key: [b, h, stop - start, sk]."""
    b, h, sq, d = q.shape
    hk, sk = kT.shape[1], kT.shape[-1]
    qt = q[:, :, start:stop].reshape(b, hk, h // hk, stop - start, d)
    s = (torch.matmul(qt, kT) * scale).reshape(b, h, stop - start, sk)
    s = s.float() if upcast else s
    q_pos, k_pos = query_key_positions(sq, sk, q.device)
    return modify_scores(s, q_pos[start:stop], k_pos, causal, window, softcap, alibi, chunk)


def _tile_rows(b: int, h: int, sq: int, sk: int, tile_elems: int) -> int:
    return max(1, min(sq, tile_elems // max(1, b * h * sk)))


@torch.no_grad()
def attention_lse(q: torch.Tensor, k: torch.Tensor, causal: bool = True, scale: float | None = None,
                  tile_elems: int = 1 << 24, window: int | None = None, softcap: float | None = None,
                  alibi: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """log sum_j exp(s_ij) over visible keys: [b, h, sq] float32, in query tiles (no [sq, sk])."""
    b, h, sq, d = q.shape
    sk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    tile = _tile_rows(b, h, sq, sk, tile_elems)
    out = torch.empty(b, h, sq, device=q.device, dtype=torch.float32)
    kT = k.transpose(-1, -2)[:, :, None]  # [b, hk, 1, d, sk]: broadcast over the group instead of copying K
    for start in range(0, sq, tile):
        stop = min(sq, start + tile)
        s = _tile_scores(q, kT, start, stop, scale, causal, window, softcap, alibi, upcast=True, chunk=chunk)
        out[:, :, start:stop] = torch.logsumexp(s, dim=-1)
    return out


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, window: int | None = None, softcap: float | None = None,
                    alibi: torch.Tensor | None = None, tile_elems: int = 1 << 22, differentiable_lse: bool = False,
                    chunk: int | None = None):
    """Attention with any score modification, a query tile at a time: ``(out, lse)``, differentiable (the lse
    too with ``differentiable_lse``: attention sinks rescale the output by a function of it).

    The scores are computed in the inputs' dtype and the softmax in at least float32, as the eager path
    does. Without autograd, memory beyond q/k/v is one tile of scores (``tile_elems``) plus the output; when
    training, autograd keeps each tile's probabilities for the backward (as eager attention would).
    """
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    tile = _tile_rows(b, h, sq, sk, tile_elems)
    kT = k.transpose(-1, -2)[:, :, None]
    vg = v[:, :, None]  # [b, hk, 1, sk, d]
    outs, lses = [], []
    for start in range(0, sq, tile):
        stop = min(sq, start + tile)
        s = _tile_scores(q, kT, start, stop, scale, causal, window, softcap, alibi, upcast=False, chunk=chunk)
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        lse = torch.logsumexp(s, dim=-1)
        p = torch.softmax(s, dim=-1).nan_to_num(0.0).to(v.dtype)  # a row with no visible key gives 0
        o = torch.matmul(p.reshape(b, hk, h // hk, stop - start, sk), vg).reshape(b, h, stop - start, d)
        outs.append(o)
        lses.append(lse.float())
    lse = torch.cat(lses, dim=2)
    return torch.cat(outs, dim=2), lse if differentiable_lse else lse.detach()


def _additive_mask(q, sq, sk, causal, window, alibi, chunk=None):
    """Float mask [h or 1, sq, sk] in q's dtype: ALiBi bias plus -inf where a key is not visible."""
    q_pos, k_pos = query_key_positions(sq, sk, q.device)
    zeros = torch.zeros(1, sq, sk, dtype=q.dtype, device=q.device)
    slopes = None if alibi is None else alibi.to(q.device)
    if slopes is not None:
        zeros = zeros.expand(len(slopes), sq, sk)
    return modify_scores(zeros, q_pos, k_pos, causal, window, None, slopes, chunk)


def _sdpa(q, k, v, causal: bool, scale: float, need_lse: bool, window=None, alibi=None, chunk=None):
    sq, sk = q.shape[2], k.shape[2]
    plain = window is None and alibi is None and chunk is None
    is_causal = plain and causal and sq == sk and sq > 1
    # With cached keys (sk > sq) the mask must be aligned bottom-right, which sdpa's is_causal does not do;
    # a window or ALiBi always needs the explicit mask.
    needs_mask = (causal and sq != sk and sq > 1) or not plain
    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    # Only when the lse is wanted (a lazy cache): plain forwards and training keep PyTorch's own dispatch.
    if need_lse and q.device.type == "cpu" and cpu_op is not None:
        mask = _additive_mask(q, sq, sk, causal, window, alibi, chunk)[None] if needs_mask else None
        out, lse = cpu_op(q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
        return out, lse.detach().float()
    if not needs_mask:
        mask = None
    elif alibi is None:  # a boolean mask (a quarter of a float one): causal and/or the window
        mask = visible_keys(*query_key_positions(sq, sk, q.device), causal=causal, window=window, chunk=chunk)
    else:
        mask = _additive_mask(q, sq, sk, causal, window, alibi, chunk)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    lse = attention_lse(q, k, causal=causal, scale=scale, window=window, alibi=alibi, chunk=chunk) if need_lse else None
    return out, lse


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, backend: str = "auto", need_lse: bool = True,
                    window: int | None = None, softcap: float | None = None,
                    alibi: torch.Tensor | None = None, chunk: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused attention returning ``(out, lse)``; see the module docstring. ``chunk`` (Llama 4's chunked
    attention) is not in the Triton kernel: ``auto`` then takes the sdpa path, and ``triton`` refuses it.

    ``need_lse=False`` lets the sdpa path skip the extra lse pass where PyTorch does not return it (lse may
    then be None); the triton path and the CPU path return it anyway at no cost.
    """
    if backend not in FUSED_BACKENDS:
        raise InterpError(f"fused_attention: backend must be one of {list(FUSED_BACKENDS)}; got {backend!r}")
    if backend == "triton" and chunk is not None:
        raise InterpError("fused_attention: chunked attention (Llama 4's attention_chunk_size) is not in the Triton "
                          "kernel; use backend='sdpa' (or 'auto', which picks it) or the model's eager path.")
    if backend == "triton" or (backend == "auto" and _triton_can_take(q) and chunk is None):
        return flash_attention(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap, alibi=alibi)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InterpError(
            f"fused_attention: q, k, v must be 4-D [batch, heads, seq, d_head]; got q={tuple(q.shape)}, "
            f"k={tuple(k.shape)}, v={tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise InterpError(
            f"fused_attention: n_heads ({q.shape[1]}) must be a multiple of n_kv_heads; got {k.shape[1]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if softcap is not None:  # not a mask: sdpa cannot apply it
        return tiled_attention(q, k, v, causal, scale, window, softcap, alibi, chunk=chunk)
    return _sdpa(q, k, v, causal, scale, need_lse, window, alibi, chunk)
