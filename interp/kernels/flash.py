"""FlashAttention-2-style fused attention: public API, input checks, launchers and autograd.

``flash_attention(q, k, v, causal=True, scale=None, window=None, softcap=None, alibi=None) -> (out, lse)``

  q      [batch, n_heads,    seq_q, d_head]
  k, v   [batch, n_kv_heads, seq_k, d_head]    n_heads % n_kv_heads == 0 (MHA, GQA, MQA)
  out    [batch, n_heads, seq_q, d_head], q's dtype
  lse    [batch, n_heads, seq_q] float32: natural log of sum_j exp(s_ij) over the visible keys
  window, softcap, alibi (slopes [n_heads]): the score modifications of interp.kernels.reference

Causal masking is aligned to the bottom-right corner: query ``i`` sees key ``j`` iff
``j <= i + seq_k - seq_q`` (the usual convention when the queries are the last ``seq_q`` positions of a
``seq_k``-long context). A query that sees no key at all (only possible when causal and seq_q > seq_k) gets
output 0 and lse -inf.

The kernels run on CUDA tensors, or on CPU tensors inside Triton's interpreter when ``TRITON_INTERPRET=1`` is
set before triton is first imported (that is how the tests run them without a GPU; it is slow, use tiny
shapes).
Both ``out`` and ``lse`` are differentiable: the backward is FA2's (dQ in one pass over key blocks, dK/dV in
one pass over query blocks, recomputing the probabilities from the saved ``lse``; no [seq_q, seq_k] matrix is
ever stored).
"""

from __future__ import annotations

import math
import os

import torch

from interp.errors import InterpError

MIN_HEAD_DIM = 16  # tl.dot needs every tile dimension >= 16
MAX_HEAD_DIM = 256  # beyond this the [BLOCK_M, d] accumulators no longer fit in registers
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Fixed tiles for Triton's CPU interpreter: it executes each program in numpy, so autotuning would be far too
# slow there. Unequal query/key tiles on purpose, so the tests exercise the general block arithmetic.
_INTERPRET_FWD = (32, 16)  # (BLOCK_M, BLOCK_N)
_INTERPRET_DKDV = (16, 32)
_INTERPRET_DQ = (32, 16)
# Tests set this to drive the autotuned launch path through the interpreter (with problems small enough
# that pruning leaves a single config, so nothing is benchmarked).
_AUTOTUNE_IN_INTERPRETER = False


def _fixed_tiles() -> bool:
    return _interpreting() and not _AUTOTUNE_IN_INTERPRETER


def _interpreting() -> bool:
    """Whether Triton would run kernels in its CPU interpreter (TRITON_INTERPRET, read at call time)."""
    try:
        from triton import knobs
    except ImportError:  # pragma: no cover - old or missing triton
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    return bool(knobs.runtime.interpret)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the install
        return False
    return True


def flash_attention_available() -> bool:
    """True when the Triton kernel can run on the GPU here (CUDA device present and triton importable)."""
    return torch.cuda.is_available() and _triton_importable()


def _kernels():
    # Imported on first use, because @triton.jit picks compiled vs interpreted mode when the module is
    # imported; if TRITON_INTERPRET changed since, re-import so our kernels follow it. (Triton's own library
    # functions, tl.zeros, tl.max, ..., are fixed when triton is imported: the variable must be set before
    # that for the interpreter to work at all.)
    import importlib

    from interp.kernels import _triton_flash

    if _triton_flash.INTERPRETED != _interpreting():
        _triton_flash = importlib.reload(_triton_flash)
    return _triton_flash


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale) -> float:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InterpError(f"flash_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise InterpError(
                f"flash_attention: {name} must be 4-D [batch, heads, seq, d_head], got {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise InterpError(
                f"flash_attention: {name}.dtype must be one of float16, bfloat16, float32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise InterpError(
            f"flash_attention: q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise InterpError(
            f"flash_attention: q, k, v must be on one device, got q={q.device}, k={k.device}, v={v.device}")
    if k.shape != v.shape:
        raise InterpError(
            f"flash_attention: k and v must have the same shape, got k={tuple(k.shape)}, v={tuple(v.shape)}")
    b, h, _, d = q.shape
    bk, hk, sk, dk = k.shape
    if bk != b:
        raise InterpError(f"flash_attention: k batch size must equal q's ({b}), got {bk}")
    if dk != d:
        raise InterpError(f"flash_attention: k/v d_head must equal q's d_head ({d}), got {dk}")
    if not (MIN_HEAD_DIM <= d <= MAX_HEAD_DIM):
        raise InterpError(
            f"flash_attention: d_head must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {d} "
            "(use attn_backend='sdpa' or 'eager' for other head sizes)")
    if hk < 1 or h % hk != 0:
        raise InterpError(
            f"flash_attention: n_heads ({h}) must be a multiple of n_kv_heads; got n_kv_heads={hk}")
    if q.shape[2] < 1 or sk < 1:
        raise InterpError(
            f"flash_attention: seq_q and seq_k must be >= 1, got seq_q={q.shape[2]}, seq_k={sk}")
    if q.device.type == "cuda":
        if not _triton_importable():
            raise InterpError("flash_attention: triton is not installed; install interp[gpu] or use 'sdpa'")
    elif not _interpreting():
        raise InterpError(
            f"flash_attention: tensors must be on a CUDA device (got {q.device}); on the CPU the kernel runs "
            "only inside Triton's interpreter (set TRITON_INTERPRET=1 before triton is imported)")
    if scale is None:
        return 1.0 / math.sqrt(d)
    scale = float(scale)
    if not math.isfinite(scale):
        raise InterpError(f"flash_attention: scale must be a finite float, got {scale}")
    return scale


def _lastdim_contiguous(t: torch.Tensor) -> torch.Tensor:
    # The kernels take any batch/head/seq strides (so [b, pos, head, d] views need no copy) but want the
    # feature dimension dense for wide, coalesced loads.
    return t if t.stride(-1) == 1 else t.contiguous()


def _bucket(n: int) -> int:
    # Autotuning key: re-tune per power-of-two length bucket, not per exact length.
    return 1 << max(0, (int(n) - 1).bit_length())


def _block_d(d: int) -> int:
    return max(MIN_HEAD_DIM, 1 << (d - 1).bit_length())


def _meta(q: torch.Tensor, d: int, causal: bool, mods: _Mods) -> dict:
    # UPCAST works around the interpreter's bf16 dot (see _triton_flash._mma); never set on the GPU.
    return {"HEAD_DIM": d, "BLOCK_D": _block_d(d), "CAUSAL": bool(causal), "IEEE": q.dtype == torch.float32,
            "UPCAST": _interpreting() and q.dtype == torch.bfloat16, "SOFTCAP": mods.softcap is not None,
            "HAS_ALIBI": mods.alibi is not None, "HAS_WINDOW": mods.window is not None}


class _Mods:
    """The score modifications as kernel arguments (placeholders where an option is off)."""

    def __init__(self, q, window, softcap, alibi):
        self.window, self.softcap, self.alibi = window, softcap, alibi
        self.window_arg = int(window) if window is not None else 0
        self.softcap_arg = float(softcap) if softcap is not None else 1.0
        self.alibi_arg = alibi if alibi is not None else q  # any pointer; never read when HAS_ALIBI is off


def _forward(q, k, v, causal: bool, scale: float, mods: _Mods):
    kern = _kernels()
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, h, sq), device=q.device, dtype=torch.float32)
    args = (q, k, v, out, lse, mods.alibi_arg,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            h, h // hk, sq, sk, sk - sq, scale * kern.LOG2E, scale, mods.softcap_arg, mods.window_arg,
            _bucket(sq), _bucket(sk))
    meta = _meta(q, d, causal, mods)
    if _fixed_tiles():
        bm, bn = _INTERPRET_FWD
        kern.attn_fwd[(triton_cdiv(sq, bm), b * h)](*args, **meta, BLOCK_M=bm, BLOCK_N=bn)
    else:
        grid = lambda m: (triton_cdiv(sq, m["BLOCK_M"]), b * h)
        kern.attn_fwd_tuned[grid](*args, **meta)
    return out, lse


def _backward(q, k, v, out, lse, dout, dlse, causal: bool, scale: float, mods: _Mods):
    kern = _kernels()
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    dout = _lastdim_contiguous(dout)
    # delta_i = sum_d dO_i * O_i = sum_j P_ij dP_ij. A gradient flowing into lse_i adds dlse_i * P_ij to
    # dS_ij, which is the same as subtracting it from delta (dS = P * (dP - delta)).
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - torch.where(torch.isfinite(lse), dlse.float(), torch.zeros_like(delta))
    delta = delta.contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    common = _meta(q, d, causal, mods)
    qk_scale = scale * kern.LOG2E
    kv_args = (q, k, v, dout, lse, delta, dk, dv, mods.alibi_arg,
               q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
               dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
               h, hk, h // hk, sq, sk, sk - sq, qk_scale, scale, mods.softcap_arg, mods.window_arg,
               _bucket(sq), _bucket(sk))
    q_args = (q, k, v, dout, lse, delta, dq, mods.alibi_arg,
              q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
              dq.stride(0), dq.stride(1), dq.stride(2),
              h, h // hk, sq, sk, sk - sq, qk_scale, scale, mods.softcap_arg, mods.window_arg,
              _bucket(sq), _bucket(sk))
    if _fixed_tiles():
        bm, bn = _INTERPRET_DKDV
        kern.attn_bwd_dkdv[(triton_cdiv(sk, bn), b * hk)](*kv_args, **common, BLOCK_M=bm, BLOCK_N=bn)
        bm, bn = _INTERPRET_DQ
        kern.attn_bwd_dq[(triton_cdiv(sq, bm), b * h)](*q_args, **common, BLOCK_M=bm, BLOCK_N=bn)
    else:
        kern.attn_bwd_dkdv_tuned[lambda m: (triton_cdiv(sk, m["BLOCK_N"]), b * hk)](*kv_args, **common)
        kern.attn_bwd_dq_tuned[lambda m: (triton_cdiv(sq, m["BLOCK_M"]), b * h)](*q_args, **common)
    return dq, dk, dv


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, mods):
        out, lse = _forward(q, k, v, causal, scale, mods)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.mods = causal, scale, mods
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(q, k, v, out, lse, dout, dlse, ctx.causal, ctx.scale, ctx.mods)
        return dq, dk, dv, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, window: int | None = None, softcap: float | None = None,
                    alibi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention; returns ``(out, lse)``. See the module docstring for shapes and conventions.

    ``scale`` defaults to ``1/sqrt(d_head)``. Inputs in fp16/bf16/fp32; accumulation is always fp32 (and fp32
    inputs use IEEE fp32 products, not tf32, so fp32 results match a float64 reference to ~1e-6).
    """
    scale = _check_inputs(q, k, v, scale)
    mods = _Mods(q, window, softcap, _check_mods(q, causal, window, softcap, alibi))
    q, k, v = _lastdim_contiguous(q), _lastdim_contiguous(k), _lastdim_contiguous(v)
    return _FlashAttention.apply(q, k, v, bool(causal), scale, mods)


def _check_mods(q, causal, window, softcap, alibi):
    """Validate window / softcap / alibi; returns the slopes as a contiguous float32 tensor on q's device."""
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InterpError(f"flash_attention: window must be a positive int or None, got {window!r}")
        if not causal:
            raise InterpError("flash_attention: window needs causal=True (a sliding window looks back only)")
    if softcap is not None and not (math.isfinite(float(softcap)) and float(softcap) > 0):
        raise InterpError(f"flash_attention: softcap must be a finite float > 0 or None, got {softcap!r}")
    if alibi is None:
        return None
    if not isinstance(alibi, torch.Tensor) or alibi.shape != (q.shape[1],):
        raise InterpError(f"flash_attention: alibi must be a tensor of n_heads={q.shape[1]} slopes, got "
                          f"{getattr(alibi, 'shape', alibi)!r}")
    return alibi.to(device=q.device, dtype=torch.float32).contiguous()
