"""Triton kernels for FlashAttention-2-style attention (forward and backward).

Imported lazily by :mod:`interp.kernels.flash` on the first kernel launch, because ``@triton.jit`` decides at
decoration time whether to compile for the GPU or to run in Triton's CPU interpreter (``TRITON_INTERPRET=1``):
deferring the import lets tests set that variable late.

Layout conventions (all kernels):
  q, o, do, dq : [batch, n_heads,    seq_q, d]   (any strides; the last one should be 1 for wide loads)
  k, v, dk, dv : [batch, n_kv_heads, seq_k, d]
  lse, delta   : [batch, n_heads, seq_q] float32, contiguous
Query head ``h`` reads key/value head ``h // group`` (GQA/MQA by index, never by copying K/V).
Causal masking is bottom-right aligned: query ``i`` sees key ``j`` iff ``j <= i + (seq_k - seq_q)``.

The softmax runs in base 2 (``exp2``) with ``scale * log2(e)`` folded into the scores: one multiply per score
instead of one per exponent, and ``exp2`` is the hardware instruction. ``lse`` is stored in natural log.

Score modifications (interp.kernels.reference, same order): soft-cap ``c * tanh(s / c)`` (SOFTCAP), ALiBi
``- slope_h * (i - j)`` (HAS_ALIBI, slopes [n_heads] float32) and a sliding window of WINDOW keys (HAS_WINDOW).
As in FlashAttention-2, key blocks a query block cannot see through its window are never visited (that is where
windows pay), and blocks entirely inside the window need no mask. The backward multiplies dS by the soft-cap's
derivative 1 - tanh² before it reaches dQ and dK.
Each loop over blocks is split into a part that needs no masks (blocks strictly inside the visible region)
and a part that does (the causal diagonal and the ragged tails), so the common case pays for no ``tl.where``.
"""

import os

import triton
import triton.language as tl

try:
    from triton import knobs

    _INTERPRET_NOW = bool(knobs.runtime.interpret)
except ImportError:  # triton < 3.4 has no knobs: the variable itself is what it reads
    _INTERPRET_NOW = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

# Which mode the @triton.jit decorators below were created in (flash.py re-imports this module if it changed).
INTERPRETED = _INTERPRET_NOW

LOG2E = 1.4426950408889634  # log2(e)
LN2 = 0.6931471805599453  # ln(2)


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Tile product a @ b (+ acc) with fp32 accumulation.

    IEEE: fp32 operands use true fp32 products (Triton's default for fp32 is tf32, ~3e-4 relative error).
    UPCAST: only for Triton's CPU interpreter, whose dot multiplies bf16 tiles as their raw uint16 bit
    patterns; widening bf16 to fp32 is exact, so the result equals a tensor-core bf16 product with fp32
    accumulation.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _modify(qk, offs_m, offs_n, kv_offset, sm_scale, softcap, slope,
            SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Soft-cap and ALiBi on raw dot products; returns (scores in log2 units, tanh(s/c) for the backward).

    TRANSPOSED: the tile is [keys, queries] (the dK/dV pass) instead of [queries, keys].
    """
    s = qk * sm_scale
    th = s
    if SOFTCAP:
        th = 2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0  # tanh(s / c), from a primitive every backend has
        s = softcap * th
    if HAS_ALIBI:
        if TRANSPOSED:
            rel = (offs_m[None, :] + kv_offset) - offs_n[:, None]
        else:
            rel = (offs_m[:, None] + kv_offset) - offs_n[None, :]
        s = s - slope * rel.to(tl.float32)
    return s * 1.4426950408889634, th


@triton.jit
def _visible(offs_m, offs_n, seq_q, seq_k, kv_offset, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
             TRANSPOSED: tl.constexpr):
    """Which (query, key) pairs of a tile exist and may attend ([keys, queries] when TRANSPOSED)."""
    if TRANSPOSED:
        i = offs_m[None, :] + kv_offset
        j = offs_n[:, None]
        ok = (offs_m[None, :] < seq_q) & (j < seq_k)
    else:
        i = offs_m[:, None] + kv_offset
        j = offs_n[None, :]
        ok = j < seq_k
    if CAUSAL:
        ok = ok & (j <= i)
    if HAS_WINDOW:
        ok = ok & (j > i - window)
    return ok


@triton.jit
def _key_range(start_m, seq_k, kv_offset, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key blocks of one query block as [lo, a) masked, [a, b) unmasked, [b, hi) masked."""
    full_k = (seq_k // BLOCK_N) * BLOCK_N
    if CAUSAL:
        # keys < b are visible to every query of this block (j <= start_m + kv_offset); keys >= hi to none.
        hi = tl.minimum(seq_k, tl.maximum(start_m + BLOCK_M + kv_offset, 0))
        b = tl.maximum(start_m + kv_offset + 1, 0) // BLOCK_N * BLOCK_N
        b = tl.minimum(b, full_k)
    else:
        hi = seq_k
        b = full_k
    lo = 0
    a = 0
    if HAS_WINDOW:
        # keys <= i - window are hidden: the block's first query sees from start_m + kv_offset - window + 1,
        # its last one from start_m + BLOCK_M + kv_offset - window; blocks before lo are never loaded.
        lo = tl.maximum(start_m + kv_offset - window + 1, 0) // BLOCK_N * BLOCK_N
        a = tl.cdiv(tl.maximum(start_m + BLOCK_M + kv_offset - window, 0), BLOCK_N) * BLOCK_N
        a = tl.minimum(tl.maximum(a, lo), b)
        lo = tl.minimum(lo, b)
    return lo, a, b, hi


# ----------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, lo, hi, seq_k,
               kv_offset, qk_scale, sm_scale, softcap, slope, window,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
               SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_WINDOW: tl.constexpr):
    d_mask = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = d_mask[None, :]
        if MASKED:
            kv_mask = kv_mask & (offs_n[:, None] < seq_k)
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = _mma(q, tl.trans(k), None, IEEE, UPCAST)
        if SOFTCAP or HAS_ALIBI:
            qk, _th = _modify(qk, offs_m, offs_n, kv_offset, sm_scale, softcap, slope, SOFTCAP, HAS_ALIBI, False)
        else:
            qk = qk * qk_scale
        if MASKED:
            visible = _visible(offs_m, offs_n, 0, seq_k, kv_offset, window, CAUSAL, HAS_WINDOW, False)
            qk = tl.where(visible, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A row that has seen no key yet keeps m = -inf; subtracting it would give NaN (inf - inf).
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = m_new
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = _mma(p.to(v.dtype), v, acc, IEEE, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, ALIBI,
              stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
              n_heads, group, seq_q, seq_k, kv_offset, qk_scale, sm_scale, softcap, window,
              seq_q_bucket, seq_k_bucket,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
              UPCAST: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_WINDOW: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if CAUSAL:
        # The last query blocks see the most keys: launch them first so long programs don't form the tail.
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    off_b = pid_bh // n_heads
    off_h = pid_bh % n_heads
    off_kvh = off_h // group

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM

    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = K + off_b.to(tl.int64) * stride_kb + off_kvh.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_kvh.to(tl.int64) * stride_vh
    o_base = O + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh

    q_mask = (offs_m[:, None] < seq_q) & d_mask[None, :]
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(ALIBI + off_h)

    lo, a, b, hi = _key_range(start_m, seq_k, kv_offset, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                               lo, a, seq_k, kv_offset, qk_scale, sm_scale, softcap, slope, window,
                               HEAD_DIM, BLOCK_N, BLOCK_D, True, CAUSAL, IEEE, UPCAST, SOFTCAP, HAS_ALIBI, HAS_WINDOW)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                               a, b, seq_k, kv_offset, qk_scale, sm_scale, softcap, slope, window,
                               HEAD_DIM, BLOCK_N, BLOCK_D, False, CAUSAL, IEEE, UPCAST, SOFTCAP, HAS_ALIBI, HAS_WINDOW)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                               b, hi, seq_k, kv_offset, qk_scale, sm_scale, softcap, slope, window,
                               HEAD_DIM, BLOCK_N, BLOCK_D, True, CAUSAL, IEEE, UPCAST, SOFTCAP, HAS_ALIBI, HAS_WINDOW)

    # A query row that sees no key at all (only when causal and seq_q > seq_k) gets output 0 and lse -inf.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    out = acc / l_safe[:, None]
    tl.store(LSE + pid_bh.to(tl.int64) * seq_q + offs_m, lse, mask=offs_m < seq_q)
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(O.dtype.element_ty), mask=q_mask)


# ----------------------------------------------------------------------------------------------------------
# backward: dK and dV (one program per key block and key/value head; loops over the query heads of its group)
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                    offs_n, offs_d, lo, hi, seq_q, seq_k, kv_offset, qk_scale, sm_scale, softcap, slope, window,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                    SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_WINDOW: tl.constexpr):
    d_mask = offs_d < HEAD_DIM
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_mask = d_mask[None, :]
        if MASKED:
            row_mask = row_mask & (offs_m[:, None] < seq_q)
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=row_mask, other=0.0)
        if MASKED:
            lse = tl.load(lse_base + offs_m, mask=offs_m < seq_q, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=offs_m < seq_q, other=0.0)
        else:
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        # Work on the transposed tile [keys, queries] so that dk and dv come out of the dots unpermuted.
        qkT = _mma(k, tl.trans(q), None, IEEE, UPCAST)
        if SOFTCAP or HAS_ALIBI:
            sT, thT = _modify(qkT, offs_m, offs_n, kv_offset, sm_scale, softcap, slope, SOFTCAP, HAS_ALIBI, True)
        else:
            sT = qkT * qk_scale
            thT = sT
        pT = tl.math.exp2(sT - lse[None, :] * 1.4426950408889634)
        if MASKED:
            visible = _visible(offs_m, offs_n, seq_q, seq_k, kv_offset, window, CAUSAL, HAS_WINDOW, True)
            pT = tl.where(visible, pT, 0.0)
        dv = _mma(pT.to(do.dtype), do, dv, IEEE, UPCAST)
        dpT = _mma(v, tl.trans(do), None, IEEE, UPCAST)
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:
            dsT = dsT * (1.0 - thT * thT)  # d(c tanh(s/c))/ds
        dk = _mma(dsT.to(q.dtype), q, dk, IEEE, UPCAST)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, ALIBI,
                   stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                   stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                   n_heads, n_kv_heads, group, seq_q, seq_k, kv_offset, qk_scale, sm_scale, softcap, window,
                   seq_q_bucket, seq_k_bucket,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                   UPCAST: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bkv = tl.program_id(1)
    off_b = pid_bkv // n_kv_heads
    off_kvh = pid_bkv % n_kv_heads

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < seq_k) & (offs_d[None, :] < HEAD_DIM)

    k = tl.load(K + off_b.to(tl.int64) * stride_kb + off_kvh.to(tl.int64) * stride_kh
                + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + off_b.to(tl.int64) * stride_vb + off_kvh.to(tl.int64) * stride_vh
                + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Query blocks are visited as [lo, a) masked, [a, b) unmasked, [b, end) masked.
    full_q = (seq_q // BLOCK_M) * BLOCK_M
    end_q = tl.cdiv(seq_q, BLOCK_M) * BLOCK_M
    if CAUSAL:
        # Queries i < start_n - kv_offset see no key of this block;
        # queries i >= start_n + BLOCK_N - 1 - kv_offset see all of them.
        lo = tl.maximum(start_n - kv_offset, 0) // BLOCK_M * BLOCK_M
        all_visible = tl.maximum(start_n + BLOCK_N - 1 - kv_offset, 0)
        a = tl.cdiv(all_visible, BLOCK_M) * BLOCK_M
    else:
        lo = 0
        a = 0
    a = tl.maximum(lo, tl.minimum(a, full_q))
    b = tl.maximum(a, full_q)
    # Ragged last key block: mask every query block. (tl.where, not a runtime `if`: the branches would give
    # a and b different types when lo is the constant 0.)
    ragged = start_n + BLOCK_N > seq_k
    a = tl.where(ragged, lo, a)
    b = tl.where(ragged, lo, b)
    if HAS_WINDOW:
        # query i sees key j only while i - j < window: rows from start_n - kv_offset + window on need a
        # mask, rows from start_n + BLOCK_N - 1 - kv_offset + window on see nothing of this block.
        b = tl.maximum(a, tl.minimum(b, tl.maximum(start_n + window - kv_offset, 0) // BLOCK_M * BLOCK_M))
        end_q = tl.minimum(end_q, tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - kv_offset + window, 0), BLOCK_M)
                           * BLOCK_M)
        end_q = tl.maximum(end_q, b)

    for g in range(group):
        off_h = off_kvh * group + g
        bh = off_b * n_heads + off_h
        slope = 0.0
        if HAS_ALIBI:
            slope = tl.load(ALIBI + off_h)
        q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        do_base = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
        lse_base = LSE + bh.to(tl.int64) * seq_q
        delta_base = DELTA + bh.to(tl.int64) * seq_q
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                                 offs_n, offs_d, lo, a, seq_q, seq_k, kv_offset, qk_scale, sm_scale, softcap,
                                 slope, window, HEAD_DIM, BLOCK_M, BLOCK_D, True, CAUSAL, IEEE, UPCAST,
                                 SOFTCAP, HAS_ALIBI, HAS_WINDOW)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                                 offs_n, offs_d, a, b, seq_q, seq_k, kv_offset, qk_scale, sm_scale, softcap,
                                 slope, window, HEAD_DIM, BLOCK_M, BLOCK_D, False, CAUSAL, IEEE, UPCAST,
                                 SOFTCAP, HAS_ALIBI, HAS_WINDOW)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                                 offs_n, offs_d, b, end_q, seq_q, seq_k, kv_offset, qk_scale, sm_scale, softcap,
                                 slope, window, HEAD_DIM, BLOCK_M, BLOCK_D, True, CAUSAL, IEEE, UPCAST,
                                 SOFTCAP, HAS_ALIBI, HAS_WINDOW)

    dk = dk * sm_scale  # the scores were scale * q.k, so d(scores)/dk carries the scale once
    tl.store(DK + off_b.to(tl.int64) * stride_dkb + off_kvh.to(tl.int64) * stride_dkh
             + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + off_b.to(tl.int64) * stride_dvb + off_kvh.to(tl.int64) * stride_dvh
             + offs_n[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


# ----------------------------------------------------------------------------------------------------------
# backward: dQ (one program per query block and query head)
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, lo, hi,
                  seq_k, kv_offset, qk_scale, sm_scale, softcap, slope, window,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                  SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_WINDOW: tl.constexpr):
    d_mask = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = d_mask[None, :]
        if MASKED:
            kv_mask = kv_mask & (offs_n[:, None] < seq_k)
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = _mma(q, tl.trans(k), None, IEEE, UPCAST)
        if SOFTCAP or HAS_ALIBI:
            s, th = _modify(qk, offs_m, offs_n, kv_offset, sm_scale, softcap, slope, SOFTCAP, HAS_ALIBI, False)
        else:
            s = qk * qk_scale
            th = s
        p = tl.math.exp2(s - lse[:, None] * 1.4426950408889634)
        if MASKED:
            visible = _visible(offs_m, offs_n, 0, seq_k, kv_offset, window, CAUSAL, HAS_WINDOW, False)
            p = tl.where(visible, p, 0.0)
        dp = _mma(do, tl.trans(v), None, IEEE, UPCAST)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - th * th)
        dq = _mma(ds.to(k.dtype), k, dq, IEEE, UPCAST)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, ALIBI,
                 stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                 stride_dqb, stride_dqh, stride_dqm,
                 n_heads, group, seq_q, seq_k, kv_offset, qk_scale, sm_scale, softcap, window,
                 seq_q_bucket, seq_k_bucket,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                 UPCAST: tl.constexpr, SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    off_b = pid_bh // n_heads
    off_h = pid_bh % n_heads
    off_kvh = off_h // group

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = (offs_m[:, None] < seq_q) & (offs_d[None, :] < HEAD_DIM)

    q = tl.load(Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
                + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_mask, other=0.0)
    do = tl.load(DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
                 + offs_m[:, None] * stride_dom + offs_d[None, :], mask=row_mask, other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    k_base = K + off_b.to(tl.int64) * stride_kb + off_kvh.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_kvh.to(tl.int64) * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(ALIBI + off_h)

    lo, a, b, hi = _key_range(start_m, seq_k, kv_offset, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                       lo, a, seq_k, kv_offset, qk_scale, sm_scale, softcap, slope, window, HEAD_DIM, BLOCK_N,
                       BLOCK_D, True, CAUSAL, IEEE, UPCAST, SOFTCAP, HAS_ALIBI, HAS_WINDOW)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                       a, b, seq_k, kv_offset, qk_scale, sm_scale, softcap, slope, window, HEAD_DIM, BLOCK_N,
                       BLOCK_D, False, CAUSAL, IEEE, UPCAST, SOFTCAP, HAS_ALIBI, HAS_WINDOW)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                       b, hi, seq_k, kv_offset, qk_scale, sm_scale, softcap, slope, window, HEAD_DIM, BLOCK_N,
                       BLOCK_D, True, CAUSAL, IEEE, UPCAST, SOFTCAP, HAS_ALIBI, HAS_WINDOW)
    dq = dq * sm_scale
    tl.store(DQ + off_b.to(tl.int64) * stride_dqb + off_h.to(tl.int64) * stride_dqh
             + offs_m[:, None] * stride_dqm + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=row_mask)


# ----------------------------------------------------------------------------------------------------------
# autotuning (GPU only; the interpreter launches the plain kernels with small fixed blocks)
# ----------------------------------------------------------------------------------------------------------
# Candidate tiles for Hopper (H100/H200). No GPU was available to time them, so they were screened by
# compiling every candidate for sm_90 here (python -m interp.kernels.compile_check --all-configs; the table
# is in benchmarks/RESULTS_attention.md): kept are tiles on wgmma without register spills at d_head 64 and
# 128, plus the usual FA2 choices (128-row query tiles, 8 warps) that spill a little at d=128. The dK/dV
# pass holds two [BLOCK_N, d] fp32 accumulators: at d=128 every wgmma tile of it spills, and the spill-free
# ones (BLOCK_N=32, too narrow for wgmma) run on mma.sync, so both kinds are candidates. The autotuner times
# them on the device and keeps the fastest.


def _prune(configs, named_args, **kwargs):
    # Tiles much larger than the problem only waste work. (Shared memory is checked by Triton itself: a
    # config over the limit raises OutOfResources, which the autotuner scores as infinitely slow.)
    seq_q = named_args["seq_q"]
    seq_k = named_args["seq_k"]
    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(seq_q))
            and c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(seq_k))]
    return kept or [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=2)]


def _cfg(bm, bn, w, s):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)


FWD_CONFIGS = [
    _cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 32, 8, 3), _cfg(64, 64, 8, 3), _cfg(64, 64, 4, 3),
    _cfg(64, 32, 4, 4), _cfg(32, 32, 4, 2), _cfg(16, 16, 4, 2),
]
DKDV_CONFIGS = [
    _cfg(32, 128, 8, 3), _cfg(16, 128, 8, 3), _cfg(64, 64, 8, 3), _cfg(32, 64, 4, 3), _cfg(64, 32, 8, 2),
    _cfg(32, 32, 4, 2), _cfg(16, 32, 4, 2), _cfg(16, 16, 4, 2),
]
DQ_CONFIGS = [
    _cfg(128, 64, 8, 3), _cfg(128, 32, 8, 3), _cfg(64, 64, 8, 3), _cfg(64, 64, 4, 3), _cfg(64, 32, 4, 3),
    _cfg(64, 16, 4, 2), _cfg(16, 16, 4, 2),
]
# INTERP_FLASH_CONFIGS=N keeps the first N candidates of each list: a bounded-time run (benchmarks/gpu_check)
# trades the last few percent of autotuning for minutes of compilation. Unset: every candidate.
_LIMIT = int(os.environ.get("INTERP_FLASH_CONFIGS", "0") or 0)
if _LIMIT > 0:
    FWD_CONFIGS, DKDV_CONFIGS, DQ_CONFIGS = FWD_CONFIGS[:_LIMIT], DKDV_CONFIGS[:_LIMIT], DQ_CONFIGS[:_LIMIT]
_KEY = ["seq_q_bucket", "seq_k_bucket", "HEAD_DIM", "CAUSAL", "IEEE", "UPCAST", "group", "SOFTCAP", "HAS_ALIBI",
        "HAS_WINDOW"]

_PRUNE = {"early_config_prune": _prune}
attn_fwd_tuned = triton.autotune(FWD_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)(_attn_fwd)
attn_bwd_dkdv_tuned = triton.autotune(DKDV_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)(_attn_bwd_dkdv)
attn_bwd_dq_tuned = triton.autotune(DQ_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)(_attn_bwd_dq)

attn_fwd = _attn_fwd
attn_bwd_dkdv = _attn_bwd_dkdv
attn_bwd_dq = _attn_bwd_dq
