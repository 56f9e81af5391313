"""The numerical oracle for the fused kernels, and the score modifications every attention path shares.

Scores of query i against key j (positions counted from the first key; with a KV cache the queries are the
last ``seq_q`` positions, so query row r sits at position r + seq_k - seq_q) are built in this order, the
same on every path (eager, sdpa, triton, the lazy pattern rebuild):

    s = scale * q_i . k_j                       the usual scaled dot product
    s = c * tanh(s / c)                         soft-cap (Gemma 2's attn_logit_softcapping), when c is given
    s = s - slope_h * (i - j)                   ALiBi (Press et al.; Bloom's slopes), when slopes are given
    s = -inf  where j > i (causal) or j <= i - w (sliding window of width w: w keys, itself included)
              or i // c != j // c (chunked attention of width c: Llama 4's local layers)
"""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes [n_heads] float64, as Bloom/MPT compute them (any head count).

    For a power of two n: 2^(-8 i / n), i = 1..n. Otherwise the slopes of the nearest lower power of two,
    then every other slope of the next power of two (Press et al.'s recipe; transformers' build_alibi_tensor).
    """
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = base ** torch.arange(1, closest + 1, dtype=torch.float64)
    if closest != n_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        remaining = min(closest, n_heads - closest)
        slopes = torch.cat([slopes, extra_base ** torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.float64)])
    return slopes


def visible_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool = True,
                 window: int | None = None, chunk: int | None = None) -> torch.Tensor:
    """Boolean [n_q, n_k]: True where query position q_pos[r] may attend to key position k_pos[c]."""
    rel = q_pos[:, None] - k_pos[None, :]  # i - j
    visible = rel >= 0 if causal else torch.ones_like(rel, dtype=torch.bool)
    if window is not None:
        visible = visible & (rel < window)
    if chunk is not None:  # the context cut into blocks of `chunk` positions; a query sees its own block only
        visible = visible & (q_pos[:, None] // chunk == k_pos[None, :] // chunk)
    return visible


def modify_scores(s: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool = True,
                  window: int | None = None, softcap: float | None = None,
                  slopes: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """Apply soft-cap, ALiBi and the causal/window mask to scaled scores s [..., heads, n_q, n_k].

    ``slopes`` [heads] lines up with s's head dimension (dim -3). Returns a new tensor in s's dtype; masked
    entries are -inf. This is the one definition the eager path, the reference and the lazy rebuild share.
    """
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if slopes is not None:
        rel = (q_pos[:, None] - k_pos[None, :]).to(s.dtype)
        s = s - slopes.to(s.dtype)[:, None, None] * rel
    if causal or window is not None or chunk is not None:
        s = s.masked_fill(~visible_keys(q_pos, k_pos, causal, window, chunk), float("-inf"))
    return s


def softmax_with_sinks(s: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Attention sinks (GPT-OSS): each head h has a learned logit sinks[h] that joins every row's softmax
    denominator and is then dropped, so a row may give less than 1 to the real keys. ``s`` [..., heads, n_q, n_k]
    (float); the probabilities of the real keys, in s's dtype. A fused path gets the same from its lse:
    p = exp(s - logaddexp(lse, sink)), i.e. its output times sigmoid(lse - sink)."""
    sink = sinks.to(s.dtype)[:, None, None].expand(*s.shape[:-1], 1)
    return torch.softmax(torch.cat([s, sink], dim=-1), dim=-1)[..., :-1]


def query_key_positions(seq_q: int, seq_k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the queries (the last seq_q of the context) and of the keys (all of it)."""
    return torch.arange(seq_q, device=device) + (seq_k - seq_q), torch.arange(seq_k, device=device)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                        scale: float | None = None, window: int | None = None, softcap: float | None = None,
                        alibi: torch.Tensor | None = None, chunk: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention computed in float64 (same conventions as :func:`interp.kernels.flash_attention`).

    q [b, h, sq, d]; k, v [b, hk, sk, d] with h % hk == 0. Causal masking is bottom-right aligned
    (query i sees key j iff j <= i + sk - sq); ``window``, ``softcap`` and ``alibi`` (slopes [h]) modify the
    scores as the module docstring says. Returns ``(out, lse)`` in float64: out [b, h, sq, d] and
    lse [b, h, sq] = log sum_j exp(s_ij) over visible keys. A query that sees no key gets out 0 and
    lse -inf. Differentiable (gradients flow back to the inputs in their own dtype).
    """
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    h, hk = q.shape[1], k.shape[1]
    qd, kd, vd = q.double(), k.double(), v.double()
    # GQA: query head h reads key/value head h // (h / hk).
    kd = kd.repeat_interleave(h // hk, dim=1)
    vd = vd.repeat_interleave(h // hk, dim=1)
    scores = scale * (qd @ kd.transpose(-1, -2))
    q_pos, k_pos = query_key_positions(q.shape[2], k.shape[2], q.device)
    slopes = None if alibi is None else alibi.double()
    scores = modify_scores(scores, q_pos, k_pos, causal, window, softcap, slopes, chunk)
    lse = torch.logsumexp(scores, dim=-1)
    empty = torch.isneginf(lse)
    p = torch.exp(scores - torch.where(empty, torch.zeros_like(lse), lse)[..., None])
    out = p @ vd
    return out, lse
