"""The numerical oracle for the fused kernel: plain attention in float64, returning (out, lse)."""

from __future__ import annotations

import math

import torch


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                        scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention computed in float64 (same conventions as :func:`interp.kernels.flash_attention`).

    q [b, h, sq, d]; k, v [b, hk, sk, d] with h % hk == 0. Causal masking is bottom-right aligned
    (query i sees key j iff j <= i + sk - sq). Returns ``(out, lse)`` in float64: out [b, h, sq, d] and
    lse [b, h, sq] = log sum_j exp(scale q_i.k_j) over visible keys. A query that sees no key gets out 0 and
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
    sq, sk = q.shape[2], k.shape[2]
    if causal:
        i = torch.arange(sq, device=q.device)[:, None]
        j = torch.arange(sk, device=q.device)[None, :]
        scores = scores.masked_fill(j > i + (sk - sq), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    empty = torch.isneginf(lse)
    p = torch.exp(scores - torch.where(empty, torch.zeros_like(lse), lse)[..., None])
    out = p @ vd
    return out, lse
