"""The logit lens: read the residual stream at every layer as if it were the last one.

nostalgebraist's logit lens decodes an intermediate residual ``x_l`` with the model's own head,
``softmax(unembed(ln_final(x_l)))``, so we can watch the prediction form layer by layer. The final norm
is applied *freshly* to each layer's residual (its own mean and scale), exactly as the model applies
it to the last residual; that makes the last row of the lens the model's own output distribution,
bit for bit up to float rounding.

Layers are numbered ``0..n_layers``: layer ``l < n_layers`` is the input of block ``l``
(``blocks.{l}.hook_resid_pre``; layer 0 is the embedding), and layer ``n_layers`` is the final
residual (``blocks.{n_layers-1}.hook_resid_post``). ``layer_name`` spells this out: ``"embed"``,
``"after block 0"``, ..., ``"after block {n_layers-1}"``.

>>> import torch
>>> from interp.model.config import DecoderConfig
>>> from interp.model.transformer import HookedDecoder
>>> _ = torch.manual_seed(0)
>>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
>>> df = logit_lens(model, torch.randint(0, 50, (2, 6)), k=3)
>>> sorted(df.layer.unique().tolist()), len(df) == 3 * 2 * 6 * 3
([0, 1, 2], True)
>>> summary = summarize_lens(df)
>>> summary.columns[:4].tolist()
['batch', 'layer', 'layer_name', 'position']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from interp.analysis._inputs import as_tokens, check_finite_output, check_index, str_tokens, token_str
from interp.errors import InterpError

__all__ = [
    "LENS_COLUMNS",
    "layer_names",
    "lens_logits",
    "logit_lens",
    "residual_stack",
    "summarize_lens",
]

# Columns of the tidy frame, in order. One row per (batch, layer, position, rank); the per-(layer,
# position) quantities (target_*, entropy, kl) repeat on the k rank rows so a single filter gives
# everything about one cell.
LENS_COLUMNS = [
    "batch",
    "layer",
    "layer_name",
    "position",
    "input_token",
    "rank",
    "token_id",
    "token",
    "prob",
    "logprob",
    "target_id",
    "target_token",
    "target_prob",
    "target_rank",
    "entropy",
    "kl",
]

Translate = Callable[[torch.Tensor, int], torch.Tensor]


def layer_names(n_layers: int) -> list[str]:
    """Readable names for lens layers ``0..n_layers``.

    >>> layer_names(2)
    ['embed', 'after block 0', 'after block 1']
    """
    return ["embed"] + [f"after block {b}" for b in range(n_layers)]


def _resid_hook(n_layers: int, layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"


@torch.no_grad()
def residual_stack(model, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model once; return ``(stack [n_layers+1, batch, pos, d_model], logits [batch, pos, vocab])``.

    ``stack[l]`` is the residual stream the lens reads at layer ``l`` (see the module docstring).

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
    >>> stack, logits = residual_stack(model, torch.zeros(2, 5, dtype=torch.long))
    >>> tuple(stack.shape), tuple(logits.shape)
    ((3, 2, 5, 32), (2, 5, 50))
    """
    tokens = as_tokens(model, tokens)
    n_layers = int(model.cfg.n_layers)
    names = [_resid_hook(n_layers, l) for l in range(n_layers + 1)]
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    check_finite_output(model, logits)
    stack = torch.stack([cache[name] for name in names], dim=0)
    return stack, logits


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision models are decoded in float32 so probabilities and KL stay meaningful;
    # float64 models keep float64 so tests against them can be tight.
    return torch.promote_types(x.dtype, torch.float32)


def lens_logits(model, resid: torch.Tensor) -> torch.Tensor:
    """Decode a residual ``[batch, pos, d_model]`` with the model's head: ``ln_final`` then unembed.

    The final norm recomputes its statistics from ``resid`` itself (not the cached scale of the last
    layer), which is what makes this a lens rather than a linear attribution. Gradients flow to
    ``resid`` (the tuned lens trains through this).

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
    >>> stack, logits = residual_stack(model, torch.randint(0, 50, (2, 4)))
    >>> torch.allclose(lens_logits(model, stack[-1]), logits, atol=1e-5)
    True
    """
    # Models built with final_norm=False have no ln_final: their head is the unembedding alone.
    ln_final = getattr(model, "ln_final", None) if getattr(model.cfg, "final_norm", True) else None
    # Feed the norm in the model's own dtype (its weights are in that dtype), then unembed in at
    # least float32.
    param = model.W_U
    x = resid.to(param.dtype)
    if ln_final is not None:
        x = ln_final(x)
    dtype = _compute_dtype(x)
    out = x.to(dtype) @ param.to(dtype)
    b_U = getattr(model, "b_U", None)
    if b_U is not None:
        out = out + b_U.to(dtype)
    return out


def _token_strings(model, ids: Sequence[int]) -> dict[int, str]:
    """Map token ids to display strings, each id on its own (a byte piece of a character reads ``<0xE4>``)."""
    return {i: token_str(model, i) for i in sorted({int(i) for i in ids if int(i) >= 0})}


def _positions(positions, n_pos: int) -> list[int]:
    if positions is None:
        return list(range(n_pos))
    if isinstance(positions, slice):
        return list(range(n_pos))[positions]
    if isinstance(positions, torch.Tensor):
        positions = positions.tolist()
    if isinstance(positions, (list, tuple, range, np.ndarray)):
        out = [check_index("positions", p, n_pos) for p in positions]
        if not out:
            raise InterpError("positions: expected at least one position; given an empty sequence")
        return out
    return [check_index("positions", positions, n_pos)]


def _targets(model, tokens: torch.Tensor, final_logits: torch.Tensor, target) -> torch.Tensor:
    """Target ids ``[batch, pos]``; -1 where there is none (the last position for ``"next"``)."""
    batch, n_pos = tokens.shape
    if isinstance(target, str):
        if target == "final":
            return final_logits.argmax(dim=-1)
        if target == "next":
            out = torch.full_like(tokens, -1)
            out[:, :-1] = tokens[:, 1:]
            return out
        raise InterpError(
            f"target: must be 'final', 'next', a token id or a LongTensor [batch, pos]; given {target!r}"
        )
    d_vocab = int(model.cfg.d_vocab)
    if isinstance(target, torch.Tensor) and target.ndim > 0:
        if tuple(target.shape) != (batch, n_pos) or target.dtype.is_floating_point:
            raise InterpError(
                f"target: a tensor target must be integer ids of shape [batch, pos]={[batch, n_pos]}; "
                f"given dtype={target.dtype}, shape={list(target.shape)}"
            )
        out = target.to(device=tokens.device, dtype=torch.long)
    else:
        out = torch.full_like(tokens, check_index("target", target, d_vocab, allow_negative=False))
    lo, hi = int(out.min()), int(out.max())
    if hi >= d_vocab or lo < -1:
        bad = hi if hi >= d_vocab else lo
        raise InterpError(f"target: ids must be in [0, d_vocab={d_vocab}) (or -1 for none); given id {bad}")
    return out


@torch.no_grad()
def _lens_frame(model, tokens, k: int, target, positions, translate: Translate | None) -> pd.DataFrame:
    """Shared body of the logit lens and the tuned lens: decode every layer and build the tidy frame."""
    tokens = as_tokens(model, tokens)
    d_vocab = int(model.cfg.d_vocab)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= d_vocab:
        raise InterpError(f"k: must be an integer in [1, d_vocab={d_vocab}]; given {k!r}")
    k = int(k)
    stack, final_logits = residual_stack(model, tokens)
    n_layers = stack.shape[0] - 1
    _batch, n_pos = tokens.shape
    pos = _positions(positions, n_pos)
    pos_t = torch.tensor(pos, device=tokens.device)
    targets = _targets(model, tokens, final_logits, target)[:, pos_t]  # [batch, P]
    has_target = targets >= 0
    safe_targets = targets.clamp(min=0).unsqueeze(-1)

    final_logp = torch.log_softmax(final_logits[:, pos_t].to(_compute_dtype(final_logits)), dim=-1)
    final_p = final_logp.exp()

    per_layer = []
    for layer in range(n_layers + 1):
        # Only the requested positions are decoded: the norm, translator and unembedding act per position.
        resid = stack[layer][:, pos_t]
        if translate is not None:
            resid = translate(resid, layer)
        logp = torch.log_softmax(lens_logits(model, resid), dim=-1)  # [batch, P, vocab]
        top_logp, top_ids = logp.topk(k, dim=-1)
        t_logp = logp.gather(-1, safe_targets).squeeze(-1)
        # Rank 1 is the top prediction; ties are broken in the target's favour.
        t_rank = (logp > t_logp.unsqueeze(-1)).sum(-1) + 1
        p = logp.exp()
        entropy = -(p * logp).sum(-1)
        # KL(final || layer): nats of surprise the layer's guess suffers when the model's answer is true.
        kl = (final_p * (final_logp - logp)).sum(-1)
        per_layer.append((top_logp, top_ids, t_logp, t_rank, entropy, kl))

    def cat(i: int) -> np.ndarray:
        t = torch.stack([x[i] for x in per_layer], 0)
        return (t.double() if t.is_floating_point() else t.long()).cpu().numpy()

    top_logp, top_ids, t_logp, t_rank, entropy, kl = (cat(i) for i in range(6))
    # Shapes: top_* [L, B, P, k]; others [L, B, P]. Build the long frame with broadcasting.
    L, B, P = entropy.shape
    shape = (L, B, P, k)
    grid = np.indices(shape).reshape(4, -1)
    layer_idx, b_idx, p_idx, r_idx = grid
    has_t = np.broadcast_to(has_target.cpu().numpy()[None], (L, B, P))
    targets_np = targets.cpu().numpy()

    def per_cell(a):  # [L, B, P] -> one value per long row
        return np.broadcast_to(a[..., None], shape).reshape(-1)

    strs = _token_strings(
        model, list(top_ids.reshape(-1)) + list(targets_np.reshape(-1)) + tokens.reshape(-1).tolist()
    )
    names = np.array(layer_names(n_layers), dtype=object)
    # input tokens read in their sequence: byte pieces of one character are labelled with it ("今₀")
    seq_labels = np.array([str_tokens(model, tokens[b]) for b in range(tokens.shape[0])], dtype=object)
    t_ids = per_cell(np.broadcast_to(targets_np[None], (L, B, P)))
    valid = per_cell(has_t)
    top_ids_flat = top_ids.reshape(-1)
    top_logp_flat = top_logp.reshape(-1)
    df = pd.DataFrame(
        {
            "batch": b_idx,
            "layer": layer_idx,
            "layer_name": names[layer_idx],
            "position": np.asarray(pos)[p_idx],
            "input_token": seq_labels[b_idx, np.asarray(pos)[p_idx]],
            "rank": r_idx + 1,
            "token_id": top_ids_flat.astype(np.int64),
            "token": [strs[int(t)] for t in top_ids_flat],
            "prob": np.exp(top_logp_flat),
            "logprob": top_logp_flat,
            "target_id": t_ids.astype(np.int64),
            "target_token": [strs[int(t)] if t >= 0 else "" for t in t_ids],
            "target_prob": np.where(valid, np.exp(per_cell(t_logp)), np.nan),
            "target_rank": pd.arrays.IntegerArray(per_cell(t_rank).astype(np.int64), ~valid),
            "entropy": per_cell(entropy),
            "kl": per_cell(kl),
        },
        columns=LENS_COLUMNS,
    )
    return df


def logit_lens(model, tokens, k: int = 5, *, target="final", positions=None) -> pd.DataFrame:
    """Top-``k`` next-token predictions read off every layer's residual stream.

    Args:
        model: a ``HookedDecoder`` (any architecture: GPT-2, Llama, NeoX style).
        tokens: text, list of texts, or token ids ``[batch, pos]``.
        k: how many top tokens per (layer, position), in ``[1, d_vocab]``.
        target: which token to track the probability and rank of: ``"final"`` (the model's own top
            prediction at that position), ``"next"`` (the true next token; none at the last
            position, where ``target_prob`` is NaN and ``target_rank`` is missing), a token id, or a
            LongTensor ``[batch, pos]`` (``-1`` marks "no target").
        positions: ``None`` for all, or an int / sequence of ints (negative counts from the end).
            A list of texts is right-padded to one length; rows at padding positions mean nothing, so
            pass texts of equal token length or select ``positions``.

    Returns:
        A tidy DataFrame with columns :data:`LENS_COLUMNS`: ``batch, layer (0..n_layers), layer_name,
        position, input_token, rank (1 = top), token_id, token, prob, logprob, target_id,
        target_token, target_prob, target_rank, entropy`` (nats) and ``kl`` = KL(final ‖ layer) in nats.
        Use :func:`summarize_lens` for one row per (batch, layer, position).

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> _ = torch.manual_seed(0)
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4,
    ...                                     norm="rmsnorm", positional="rotary", act="silu", gated=True))
    >>> df = logit_lens(model, torch.randint(0, 50, (2, 5)), k=2, target="next", positions=[-2, -1])
    >>> bool(df[(df.layer == 2) & (df["rank"] == 1)].kl.abs().max() < 1e-5)
    True
    """
    return _lens_frame(model, tokens, k, target, positions, translate=None)


def summarize_lens(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (batch, layer, position) from a lens frame: the top token and the per-cell stats.

    Columns: ``batch, layer, layer_name, position, input_token, top_token, top_prob, target_token,
    target_prob, target_rank, entropy, kl``.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
    >>> s = summarize_lens(logit_lens(model, torch.zeros(2, 4, dtype=torch.long), k=3))
    >>> len(s) == 2 * 3 * 4
    True
    """
    missing = [c for c in LENS_COLUMNS if c not in df.columns]
    if missing:
        raise InterpError(
            f"df: expected a frame from logit_lens/tuned_lens with columns {LENS_COLUMNS}; missing {missing}"
        )
    top = df[df["rank"] == 1]
    out = top[
        [
            "batch",
            "layer",
            "layer_name",
            "position",
            "input_token",
            "token",
            "prob",
            "target_token",
            "target_prob",
            "target_rank",
            "entropy",
            "kl",
        ]
    ].rename(columns={"token": "top_token", "prob": "top_prob"})
    return out.sort_values(["batch", "layer", "position"]).reset_index(drop=True)
