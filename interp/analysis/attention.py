"""Attention analyzers: patterns as tidy frames, head roles, in-context learning.

Every function here is pure: ``(model, tokens, options) -> pandas.DataFrame``. Attention patterns are
read from ``model.run_with_cache(tokens, names_filter=...)`` restricted to the ``hook_pattern`` of the
layers asked for, so on the fused backends the exact pattern is recomputed lazily, one layer at a time,
and never for layers nobody reads.

Head roles (``head_scores``), every score in ``[0, 1]``, averaged over batch elements and the query
positions where the role is defined:

===================  =========================================================================
role                 score for one query row ``P[q, :]`` (keys ``k <= q``)
===================  =========================================================================
previous_token       ``P[q, q-1]``                                   (queries ``q >= 1``)
duplicate_token      ``sum P[q, k]`` over earlier ``k < q`` with ``tok[k] == tok[q]``
                     (queries whose token occurred before)
induction            ``sum P[q, k]`` over ``1 <= k < q`` with ``tok[k-1] == tok[q]``: attend to the
                     token *after* an earlier occurrence of the current token (prefix matching,
                     Olsson et al. 2022), on queries where such a ``k`` exists
attention_sink       ``P[q, 0]``: attention to the first position / BOS        (queries ``q >= 1``)
local_window         ``m * H_w``: the attention mass ``m`` on the last ``window`` keys
                     ``(q-window, q]`` times the normalised entropy ``H_w`` of the attention
                     *within* that window. High for heads that spread attention over the recent
                     tokens; a sharp previous-token head scores ~0 here (it is its own role).
                     Queries ``q >= window`` (all ``q >= 1`` when the sequence is shorter).
entropy              ``H(P[q, :]) / log(q + 1)``: 0 = one key, 1 = uniform over visible keys
                     (queries ``q >= 1``, where there is more than one visible key)
===================  =========================================================================

``duplicate_token`` and ``induction`` are measured on an internally generated repeated random
sequence (seeded; each random half uses distinct tokens whenever the vocabulary allows, so the only
repeats are the planted ones, as in TransformerLens/Olsson). The other roles are measured on the
``tokens`` you pass. ``head_scores(..., repeats="tokens")`` measures the repeat-based roles on your
tokens instead (for natural text, where they repeat). The ``source`` column says which.

A list of strings of different lengths is right-padded by ``model.to_tokens``; ``head_scores``
scores each row on its own tokens only, so the padding never counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from interp.analysis._inputs import (
    as_tokens,
    check_finite_output,
    check_index,
    model_device,
    str_tokens,
    text_lengths,
)
from interp.errors import InterpError

__all__ = [
    "ROLES",
    "attention_patterns",
    "head_scores",
    "in_context_learning_score",
    "per_token_loss",
    "repeated_random_tokens",
    "repeated_sequence_loss",
    "top_attended",
]

ROLES = ("previous_token", "duplicate_token", "induction", "attention_sink", "local_window", "entropy")


# ----------------------------------------------------------------------------------------------------
# selection helpers


def _select(name: str, value, size: int) -> list[int]:
    """None -> all; int -> [int]; iterable of ints -> list (each validated against ``size``)."""
    if value is None:
        return list(range(size))
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return [check_index(name, value, size)]
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        out = [check_index(name, v, size) for v in value]
        if not out:
            raise InterpError(
                f"{name}: expected None, an int or a non-empty list of ints in [0, {size}); given []"
            )
        return sorted(set(out))
    raise InterpError(f"{name}: expected None, an int or a list of ints in [0, {size}); given {value!r}")


def _pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def _run_patterns(model, toks: torch.Tensor, layers: list[int]):
    """Run once, caching only the requested layers' patterns (read lazily, layer by layer)."""
    wanted = {_pattern_name(layer) for layer in layers}
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks, names_filter=lambda n: n in wanted)
    return check_finite_output(model, logits), cache


def _pattern(cache, layer: int) -> torch.Tensor:
    """The ``[batch, head, query, key]`` pattern of one layer as float32 (float64 kept as is)."""
    p = cache[_pattern_name(layer)]
    return p if p.dtype == torch.float64 else p.float()


# ----------------------------------------------------------------------------------------------------
# patterns as frames


@torch.no_grad()
def _pattern_inputs(model, tokens, layers, heads, batch, cache):
    """Tokens, the chosen layers/heads/batch rows, and a cache holding those layers' patterns."""
    toks = as_tokens(model, tokens)
    layer_list = _select("layers", layers, model.cfg.n_layers)
    head_list = _select("heads", heads, model.cfg.n_heads)
    batch_list = _select("batch", batch, toks.shape[0])
    if cache is None:
        _, cache = _run_patterns(model, toks, layer_list)
    return toks, layer_list, head_list, batch_list, cache


def attention_patterns(
    model, tokens, layers=None, heads=None, batch: int | None = 0, cache=None
) -> pd.DataFrame:
    """Attention patterns as a tidy frame, one row per (layer, head, query, visible key).

    Columns: ``batch, layer, head, query_pos, key_pos, query_id, key_id, query_token, key_token,
    weight``. Only causal entries (``key_pos <= query_pos``) are listed. ``batch=None`` keeps every
    batch element; ``layers``/``heads`` take None (all), an int or a list. ``cache`` reuses an
    ``ActivationCache`` from an earlier ``run_with_cache`` on the same tokens.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> torch.manual_seed(0) and None
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=2, n_heads=2))
    >>> df = attention_patterns(m, torch.tensor([[1, 2, 3, 4]]), layers=1, heads=[0])
    >>> len(df), float(df.groupby("query_pos").weight.sum().round(6).min())
    (10, 1.0)
    """
    toks, layer_list, head_list, batch_list, cache = _pattern_inputs(model, tokens, layers, heads, batch, cache)
    n = toks.shape[1]
    qi, ki = torch.tril_indices(n, n)  # causal (query, key) pairs, query-major
    frames = []
    for b in batch_list:
        strs = str_tokens(model, toks[b])
        ids = toks[b].tolist()
        q_list, k_list = qi.tolist(), ki.tolist()
        for layer in layer_list:
            pat = _pattern(cache, layer)[b]  # [head, q, k]
            for h in head_list:
                w = pat[h][qi, ki].double().cpu().numpy()
                frames.append(
                    pd.DataFrame(
                        {
                            "batch": b,
                            "layer": layer,
                            "head": h,
                            "query_pos": q_list,
                            "key_pos": k_list,
                            "query_id": [ids[q] for q in q_list],
                            "key_id": [ids[k] for k in k_list],
                            "query_token": [strs[q] for q in q_list],
                            "key_token": [strs[k] for k in k_list],
                            "weight": w,
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def top_attended(
    model, tokens, layers=None, heads=None, batch: int | None = 0, k: int = 3, cache=None
) -> pd.DataFrame:
    """The ``k`` most attended keys for every query position of the chosen heads.

    Columns: ``batch, layer, head, query_pos, query_token, rank, key_pos, key_token, weight`` (rank 1
    is the most attended key; queries with fewer than ``k`` visible keys list them all).

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2))
    >>> df = top_attended(m, torch.tensor([[5, 6, 7, 8]]), k=2)
    >>> df.groupby(["head", "query_pos"]).size().tolist()
    [1, 2, 2, 2, 1, 2, 2, 2]
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InterpError(f"k: expected an int >= 1; given {k!r}")
    toks, layer_list, head_list, batch_list, cache = _pattern_inputs(model, tokens, layers, heads, batch, cache)
    n = toks.shape[1]
    kk = min(k, n)
    causal = torch.ones(n, n, dtype=torch.bool, device=toks.device).tril()
    # (head, query, rank) grid; a query sees q + 1 keys, so ranks beyond that are dropped
    hh, qq, rr = torch.meshgrid(torch.tensor(head_list), torch.arange(n), torch.arange(kk), indexing="ij")
    keep = (rr <= qq).reshape(-1).numpy()
    hh, qq, rr = (t.reshape(-1).numpy()[keep] for t in (hh, qq, rr))
    frames = []
    for layer in layer_list:
        pat = _pattern(cache, layer)
        for b in batch_list:
            strs = np.array(str_tokens(model, toks[b]), dtype=object)
            # -1 on masked keys so they never outrank a visible key (weights are >= 0)
            p = pat[b][head_list].masked_fill(~causal, -1.0)
            vals, idx = p.topk(kk, dim=-1)  # [head, query, kk]
            vals = vals.double().cpu().reshape(-1).numpy()[keep]
            idx = idx.cpu().reshape(-1).numpy()[keep]
            frames.append(
                pd.DataFrame(
                    {
                        "batch": b,
                        "layer": layer,
                        "head": hh,
                        "query_pos": qq,
                        "query_token": strs[qq],
                        "rank": rr + 1,
                        "key_pos": idx,
                        "key_token": strs[idx],
                        "weight": vals,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------------
# head roles


def _resolve_prefix(model, prefix):
    """``"bos"`` -> the model's BOS id (or None); an int is validated; None stays None."""
    if isinstance(prefix, str):
        if prefix != "bos":
            raise InterpError(f"prefix: must be a token id, None or 'bos'; given {prefix!r}")
        bos = getattr(model.cfg, "bos_token_id", None)
        return None if bos is None else int(bos)
    if prefix is not None:
        return check_index("prefix", prefix, int(model.cfg.d_vocab), allow_negative=False)
    return None


def repeated_random_tokens(
    model, seq_len: int | None = None, batch: int = 4, seed: int = 0, prefix: int | str | None = "bos"
) -> torch.LongTensor:
    """A seeded random sequence repeated twice: ``[batch, (1 if prefix) + 2 * seq_len]``.

    Each half uses distinct tokens when the vocabulary has enough (so the only repeats are the planted
    ones); ``seq_len=None`` takes ``min(50, (n_ctx - prefix) // 2)``. ``prefix`` is a token id put in
    front of every row; the default ``"bos"`` uses ``model.cfg.bos_token_id`` when the model has one
    (as TransformerLens does: a model trained with a BOS expects it) and nothing otherwise; ``None``
    never prefixes. The model's BOS and EOS ids are never drawn.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=100, n_ctx=32, d_model=16, n_layers=1, n_heads=2))
    >>> t = repeated_random_tokens(m, seq_len=5, batch=2)
    >>> t.shape, bool((t[:, :5] == t[:, 5:]).all())
    (torch.Size([2, 10]), True)
    """
    cfg = model.cfg
    prefix = _resolve_prefix(model, prefix)
    n_pre = 0 if prefix is None else 1
    max_len = (int(cfg.n_ctx) - n_pre) // 2
    if max_len < 2:
        raise InterpError(
            f"model.cfg.n_ctx: need n_ctx >= {4 + n_pre} for a repeated sequence; given {cfg.n_ctx}"
        )
    if seq_len is None:
        seq_len = min(50, max_len)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 2 <= seq_len <= max_len:
        raise InterpError(f"seq_len: must be an int in [2, {max_len}] (half of n_ctx); given {seq_len!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InterpError(f"batch: must be an int >= 1; given {batch!r}")
    vocab = torch.arange(int(cfg.d_vocab))
    for special in (getattr(cfg, "eos_token_id", None), getattr(cfg, "bos_token_id", None)):
        if special is not None and len(vocab) > 1:
            vocab = vocab[vocab != int(special)]
    g = torch.Generator().manual_seed(int(seed))
    rows = []
    for _ in range(batch):
        if len(vocab) >= seq_len:
            half = vocab[torch.randperm(len(vocab), generator=g)[:seq_len]]
        else:  # tiny vocabulary: repeats inside a half are unavoidable (the scores handle them)
            half = vocab[torch.randint(len(vocab), (seq_len,), generator=g)]
        rows.append(torch.cat([half, half]))
    out = torch.stack(rows)
    if prefix is not None:
        out = torch.cat([torch.full((batch, 1), int(prefix)), out], dim=1)
    return out.to(model_device(model))


def _query_masks(toks: torch.Tensor, window: int):
    """Per-role (key mask [q, k], query weight [q]) for one sequence ``toks [pos]``."""
    n = toks.shape[0]
    dev = toks.device
    q = torch.arange(n, device=dev)[:, None]
    k = torch.arange(n, device=dev)[None, :]
    causal = k <= q
    after_first = (torch.arange(n, device=dev) >= 1).double()
    same = toks[:, None] == toks[None, :]  # same[q, k]: tok[q] == tok[k]
    dup = same & (k < q)
    # induction target k: the token before k equals the current token, 1 <= k < q
    prev_same = torch.zeros(n, n, dtype=torch.bool, device=dev)
    prev_same[:, 1:] = same[:, :-1]
    ind = prev_same & (k < q)
    win = causal & (k > q - window)
    win_q = (torch.arange(n, device=dev) >= (window if n > window else 1)).double()
    return {
        "previous_token": (k == q - 1, after_first),
        "duplicate_token": (dup, dup.any(-1).double()),
        "induction": (ind, ind.any(-1).double()),
        "attention_sink": ((k == 0).expand(n, n), after_first),
        "local_window": (win, win_q),
        "entropy": (causal, after_first),
    }


def _head_role_sums(pat: torch.Tensor, masks: dict, roles: Sequence[str]):
    """For one sequence's pattern ``[head, q, k]``: per role, (sum over weighted queries [head], weight)."""
    out = {}
    for role in roles:
        mask, qw = masks[role]
        mask = mask.to(pat.dtype)
        if role == "entropy":
            n_vis = mask.sum(-1)  # q + 1 visible keys
            h = -torch.xlogy(pat, pat).sum(-1)  # [head, q]
            per_q = h / torch.log(n_vis.clamp_min(2))
        elif role == "local_window":
            pw = pat * mask
            mass = pw.sum(-1)
            p = pw / mass.clamp_min(1e-30)[..., None]
            h = -torch.xlogy(p, p).sum(-1)
            n_win = mask.sum(-1)
            per_q = mass * torch.where(n_win > 1, h / torch.log(n_win.clamp_min(2)), torch.zeros_like(h))
        else:
            per_q = (pat * mask).sum(-1)  # [head, q]
        qw = qw.to(pat.dtype)
        out[role] = ((per_q.double() * qw.double()).sum(-1), float(qw.sum()))
    return out


def _role_scores(model, toks: torch.Tensor, roles: Sequence[str], window: int, lengths=None) -> dict:
    """{role: tensor [n_layers, n_heads]} averaged over batch elements and defined queries.

    ``lengths`` (one per row) drops right padding: row ``b`` is scored on its first ``lengths[b]``
    positions only (causal attention means real tokens never see the padding after them).
    """
    cfg = model.cfg
    layers = list(range(cfg.n_layers))
    lengths = lengths or [toks.shape[1]] * toks.shape[0]
    _, cache = _run_patterns(model, toks, layers)
    masks = [_query_masks(toks[b, : lengths[b]], window) for b in range(toks.shape[0])]
    num = {r: torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64) for r in roles}
    den = dict.fromkeys(roles, 0.0)
    for layer in layers:
        pat = _pattern(cache, layer)  # read (and, on fused backends, rebuild) one layer at a time
        for b in range(toks.shape[0]):
            n = lengths[b]
            for role, (s, w) in _head_role_sums(pat[b, :, :n, :n], masks[b], roles).items():
                num[role][layer] += s.cpu()
                if layer == 0:
                    den[role] += w
        del pat
    # roles undefined on these tokens (e.g. no repeats) come back as NaN, never as a made-up 0
    return {r: (num[r] / den[r]) if den[r] > 0 else torch.full_like(num[r], float("nan")) for r in roles}


@torch.no_grad()
def head_scores(
    model,
    tokens=None,
    *,
    window: int = 4,
    repeats: str = "random",
    seq_len: int | None = None,
    n_random: int = 4,
    seed: int = 0,
    prefix: int | str | None = "bos",
) -> pd.DataFrame:
    """Score every head on every role (see the module docstring); scores lie in ``[0, 1]``.

    Returns a long frame ``layer, head, role, score, source`` with one row per (layer, head, role).
    ``source`` is ``"tokens"`` (measured on ``tokens``) or ``"repeated_random"`` (measured on
    ``repeated_random_tokens(model, seq_len, n_random, seed, prefix)``). ``repeats="random"``
    (default) measures ``duplicate_token`` and ``induction`` on the repeated random sequence;
    ``repeats="tokens"`` on ``tokens`` (NaN when nothing repeats there). ``tokens=None`` measures
    everything on the repeated random sequence. ``window`` is the local-window width (keys
    ``q-window+1 .. q``).

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=16, n_layers=2, n_heads=2))
    >>> df = head_scores(m, torch.randint(50, (2, 12)))
    >>> len(df), bool(df.score.between(0, 1).all())
    (24, True)
    >>> df.pivot_table(index=["layer", "head"], columns="role", values="score").shape
    (4, 6)
    """
    if repeats not in ("random", "tokens"):
        raise InterpError(f"repeats: must be 'random' or 'tokens'; given {repeats!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise InterpError(f"window: must be an int >= 2 (keys q-window+1..q); given {window!r}")
    rand = repeated_random_tokens(model, seq_len=seq_len, batch=n_random, seed=seed, prefix=prefix)
    repeat_roles = ("duplicate_token", "induction")
    plain_roles = tuple(r for r in ROLES if r not in repeat_roles)
    scores: dict = {}
    source: dict = {}
    if tokens is None:
        scores.update(_role_scores(model, rand, ROLES, window))
        source.update({r: "repeated_random" for r in ROLES})
    else:
        toks = as_tokens(model, tokens)
        on_tokens = ROLES if repeats == "tokens" else plain_roles
        lengths = text_lengths(model, tokens, toks)
        scores.update(_role_scores(model, toks, on_tokens, window, lengths))
        source.update({r: "tokens" for r in on_tokens})
        if repeats == "random":
            scores.update(_role_scores(model, rand, repeat_roles, window))
            source.update({r: "repeated_random" for r in repeat_roles})
    cfg = model.cfg
    rows = []
    for layer in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            for role in ROLES:
                s = float(scores[role][layer, h])
                # clip float round-off (e.g. 1.0000000002) so scores are exactly within [0, 1]
                rows.append((layer, h, role, s if math.isnan(s) else min(max(s, 0.0), 1.0), source[role]))
    return pd.DataFrame(rows, columns=["layer", "head", "role", "score", "source"])


# ----------------------------------------------------------------------------------------------------
# losses: in-context learning and repeated sequences


@torch.no_grad()
def per_token_loss(model, tokens) -> torch.Tensor:
    """Next-token cross-entropy ``[batch, pos - 1]``: entry ``t`` is the loss of predicting token ``t+1``.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2))
    >>> per_token_loss(m, torch.tensor([[1, 2, 3, 4]])).shape
    torch.Size([1, 3])
    """
    toks = as_tokens(model, tokens)
    if toks.shape[1] < 2:
        raise InterpError(f"tokens: need at least 2 positions for a next-token loss; given {toks.shape[1]}")
    with torch.no_grad():
        logits = model(toks)
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    return -logp.gather(-1, toks[:, 1:, None]).squeeze(-1)


@torch.no_grad()
def in_context_learning_score(model, tokens, early: int = 50, late: int = 500) -> pd.DataFrame:
    """Olsson et al.'s in-context-learning score: loss at token index ``late`` minus at ``early``.

    Token index ``t`` means the loss of predicting token ``t`` from tokens ``< t``. When the context
    is shorter than ``late``, ``late`` is clamped to the last token (``pos - 1``) and ``early`` is
    scaled by the same factor (kept >= 1 and < late), preserving the early/late ratio. A negative
    score means later tokens are predicted better: the model learns in context.
    Columns: ``batch, early_index, late_index, early_loss, late_loss, icl_score`` (one row per batch
    element; average ``icl_score`` over a dataset as Olsson et al. do).

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=32, d_model=16, n_layers=1, n_heads=2))
    >>> df = in_context_learning_score(m, torch.randint(20, (2, 32)))
    >>> df[["early_index", "late_index"]].iloc[0].tolist()
    [3, 31]
    """
    for name, v in (("early", early), ("late", late)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InterpError(f"{name}: must be an int >= 1 (a token index); given {v!r}")
    if early >= late:
        raise InterpError(f"early: must be < late={late}; given {early}")
    toks = as_tokens(model, tokens)
    n = toks.shape[1]
    if n < 3:
        raise InterpError(f"tokens: need at least 3 positions for an early and a late loss; given {n}")
    late_eff = min(late, n - 1)
    early_eff = early if late_eff == late else max(1, min(late_eff - 1, (early * late_eff) // late))
    loss = per_token_loss(model, toks).cpu()  # loss[:, t-1] predicts token t
    rows = []
    for b in range(toks.shape[0]):
        le, ll = float(loss[b, early_eff - 1]), float(loss[b, late_eff - 1])
        rows.append((b, early_eff, late_eff, le, ll, ll - le))
    return pd.DataFrame(
        rows, columns=["batch", "early_index", "late_index", "early_loss", "late_loss", "icl_score"]
    )


@torch.no_grad()
def repeated_sequence_loss(
    model, seq_len: int | None = None, batch: int = 4, seed: int = 0, prefix: int | str | None = "bos"
) -> pd.DataFrame:
    """Per-token loss on a repeated random sequence (see ``repeated_random_tokens``).

    Columns: ``batch, position, token_id, loss, half`` where ``position`` is the predicted token's
    index and ``half`` is ``"first"`` or ``"second"`` copy. Induction heads show as a much lower loss
    on the second half: ``df.groupby("half").loss.mean()``.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=32, d_model=16, n_layers=1, n_heads=2))
    >>> df = repeated_sequence_loss(m, seq_len=8, batch=2)
    >>> df.groupby("half").size().tolist()
    [14, 16]
    """
    prefix = _resolve_prefix(model, prefix)
    toks = repeated_random_tokens(model, seq_len=seq_len, batch=batch, seed=seed, prefix=prefix)
    n_pre = 0 if prefix is None else 1
    half_len = (toks.shape[1] - n_pre) // 2
    loss = per_token_loss(model, toks).cpu()
    rows = []
    for b in range(toks.shape[0]):
        for t in range(1, toks.shape[1]):
            half = "first" if t < n_pre + half_len else "second"
            rows.append((b, t, int(toks[b, t]), float(loss[b, t - 1]), half))
    return pd.DataFrame(rows, columns=["batch", "position", "token_id", "loss", "half"])
