"""Rotary position embeddings: the frequencies of every RoPE scaling transformers defines, and the rotation.

RoPE rotates feature pairs of q and k by angle pos * inv_freq_i, so q.k depends only on the offset between
positions. The scalings stretch the frequencies so a model reaches past its training length; each function
here reproduces the matching ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` entry (the tests
compare them), reading the same keys of ``rope_parameters``. ``attention_factor`` (yarn, longrope) multiplies
cos and sin, as transformers does, so it scales q.k by its square.

Two pairings: rotate-half (Llama, NeoX: features i and i + r/2) and interleaved (GPT-J: features 2i, 2i+1).
"""

from __future__ import annotations

import math

import torch


def _default(base: float, dim: int, work: torch.dtype) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(work) / dim))


def _llama3(p: dict, inv_freq: torch.Tensor) -> torch.Tensor:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths are interpolated by `factor`, short ones kept, the band between blends smoothly
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(p: dict, base: float, dim: int, n_ctx: int, work: torch.dtype) -> tuple[torch.Tensor, float]:
    factor = p["factor"]
    original = p["original_max_position_embeddings"]

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = float(mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"]))
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):  # the feature index whose wavelength fits `rotations` times in the context
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a division by zero in the ramp
    pos_freqs = base ** (torch.arange(0, dim, 2).to(work) / dim)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32).to(work) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp  # 1: keep the original frequency (fast dims), 0: interpolate by `factor`
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def _longrope(p: dict, base: float, dim: int, n_ctx: int, seq_len: int, work) -> tuple[torch.Tensor, float]:
    original = p["original_max_position_embeddings"]
    factor = p.get("factor") or n_ctx / original
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = torch.tensor(p["long_factor"] if seq_len > original else p["short_factor"], dtype=torch.float32).to(work)
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float().to(work) / dim
    return 1.0 / (ext * base ** shape), float(attention_factor)


def rope_frequencies(params: dict, rotary_dim: int, n_ctx: int, seq_len: int,
                     work: torch.dtype = torch.float32) -> tuple[torch.Tensor, float]:
    """(inv_freq [rotary_dim/2], attention_factor) for one layer's RoPE parameters.

    ``params`` holds 'rope_type' and 'rope_theta' (DecoderConfig.rope_for_layer) plus the type's keys;
    ``seq_len`` is the length of the context being processed (dynamic and longrope depend on it); ``n_ctx``
    stands for transformers' max_position_embeddings.
    """
    rope_type, base, dim = params["rope_type"], float(params["rope_theta"]), rotary_dim
    if rope_type == "dynamic":
        # NTK-aware: past the original length, the base grows with the context (transformers' dynamic
        # update, computed here from this forward's length rather than from a running maximum).
        original = params.get("original_max_position_embeddings", n_ctx)
        factor, length = params["factor"], max(seq_len, original)
        base = base * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
        return _default(base, dim, work), 1.0
    if rope_type == "yarn":
        return _yarn(params, base, dim, n_ctx, work)
    if rope_type == "longrope":
        return _longrope(params, base, dim, n_ctx, seq_len, work)
    inv_freq = _default(base, dim, work)
    if rope_type == "linear":
        return inv_freq / params["factor"], 1.0
    if rope_type == "llama3":
        return _llama3(params, inv_freq), 1.0
    return inv_freq, 1.0


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype,
                   attention_factor: float = 1.0, interleaved: bool = False):
    """cos/sin tables [(batch,) pos, rotary_dim] for the rotate-half or the interleaved pairing (positions
    [batch, pos] when each row counts from its own first real token: left padding)."""
    freqs = positions.to(inv_freq.dtype)[..., None] * inv_freq
    angles = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat([freqs, freqs], dim=-1)
    return (angles.cos() * attention_factor).to(dtype), (angles.sin() * attention_factor).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` features of each head of x [batch, pos, head, d_head].

    Rotate-half pairs (i, i + r/2); interleaved pairs (2i, 2i + 1). Dims past ``rotary_dim`` (partial
    rotary: GPT-NeoX, GPT-J, Phi) pass through unchanged.
    """
    rotary_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        # (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): GPT-J's rotate_every_two
        rotated = torch.stack([-x_rot[..., 1::2], x_rot[..., 0::2]], dim=-1).flatten(-2)
    else:
        half = rotary_dim // 2
        rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # [(batch,) pos, 1, rot]: broadcast over the heads
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)
