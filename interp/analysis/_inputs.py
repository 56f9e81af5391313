"""Shared input normalisation for the analyzers.

Every analyzer accepts ``tokens`` as a string, a list of strings, or token ids, and turns them into
one thing: a ``LongTensor [batch, pos]`` on the model's device. Doing it in one place means every
analyzer rejects bad input with the same clear message instead of failing deep inside the model.

>>> import torch
>>> from interp.model.config import DecoderConfig
>>> from interp.model.transformer import HookedDecoder
>>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=16, n_layers=1, n_heads=2))
>>> as_tokens(model, torch.tensor([1, 2, 3])).shape
torch.Size([1, 3])
>>> as_tokens(model, [[1, 2], [3, 4]]).tolist()
[[1, 2], [3, 4]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp.errors import InterpError

__all__ = ["as_tokens", "check_index", "model_device", "str_tokens", "text_lengths", "token_str"]


def model_device(model) -> torch.device:
    """The device the model's parameters live on (CPU for a parameterless stub); for a model placed with a
    device map, where its inputs go."""
    placed = getattr(model, "input_device", None)
    if isinstance(placed, torch.device):
        return placed
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _describe(x) -> str:
    """Short description of a bad value for error messages (never dump a huge tensor)."""
    if isinstance(x, torch.Tensor):
        return f"tensor(dtype={x.dtype}, shape={tuple(x.shape)})"
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


def _is_int_like(v) -> bool:
    # bool is an int subclass but never a token id; numpy integers expose __index__.
    if isinstance(v, bool):
        return False
    try:
        v.__index__()
    except (AttributeError, TypeError):
        return False
    return True


def as_tokens(model, tokens, *, name: str = "tokens") -> torch.LongTensor:
    """Normalise ``tokens`` into a ``LongTensor [batch, pos]`` on the model's device.

    Accepted forms:
      * ``str`` or a non-empty ``list[str]``: tokenised with ``model.to_tokens`` (needs a tokenizer;
        a list is right-padded by the tokenizer's convention);
      * an integer ``torch.Tensor`` / numpy array of shape ``[pos]`` (treated as batch 1) or
        ``[batch, pos]``;
      * a list of ints (batch 1) or a list of equal-length lists of ints.

    Ids must lie in ``[0, d_vocab)`` and ``pos`` in ``[1, n_ctx]``; anything else raises
    :class:`~interp.errors.InterpError` naming ``name``, the allowed range and the given value.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=10, n_ctx=8, d_model=8, n_layers=1, n_heads=1))
    >>> as_tokens(m, [4, 5, 6]).tolist()
    [[4, 5, 6]]
    """
    cfg = model.cfg
    if isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and len(tokens) > 0 and all(isinstance(t, str) for t in tokens)
    ):
        if getattr(model, "tokenizer", None) is None:
            raise InterpError(
                f"{name}: text input needs a model with a tokenizer (model.tokenizer is None); "
                f"pass token ids as a LongTensor [batch, pos] instead; given {_describe(tokens)}"
            )
        if isinstance(tokens, str) and len(tokens) == 0:
            raise InterpError(f"{name}: expected a non-empty string; given ''")
        out = model.to_tokens(tokens if isinstance(tokens, str) else list(tokens))
    elif isinstance(tokens, torch.Tensor):
        out = tokens
    elif hasattr(tokens, "__array__") and not isinstance(tokens, (list, tuple)):
        # numpy arrays and friends
        out = torch.as_tensor(tokens)
    elif isinstance(tokens, Sequence) and not isinstance(tokens, (str, bytes)):
        if len(tokens) == 0:
            raise InterpError(f"{name}: expected a non-empty string, list of strings or token ids; given []")
        if all(_is_int_like(t) for t in tokens):
            out = torch.tensor([[int(t) for t in tokens]])
        elif all(isinstance(r, Sequence) and not isinstance(r, (str, bytes)) for r in tokens) and all(
            _is_int_like(t) for r in tokens for t in r
        ):
            lengths = {len(r) for r in tokens}
            if len(lengths) != 1:
                raise InterpError(
                    f"{name}: nested lists of token ids must all have the same length; "
                    f"given lengths {sorted(lengths)}"
                )
            out = torch.tensor([[int(t) for t in r] for r in tokens])
        else:
            raise InterpError(
                f"{name}: expected a string, a list of strings, a list of ints, a list of equal-length "
                f"lists of ints, or an integer tensor [batch, pos]; given {_describe(tokens)}"
            )
    else:
        raise InterpError(
            f"{name}: expected a string, a list of strings or an integer tensor [batch, pos]; "
            f"given {type(tokens).__name__} {_describe(tokens)}"
        )

    if out.dtype.is_floating_point or out.dtype.is_complex or out.dtype == torch.bool:
        raise InterpError(f"{name}: token ids must be an integer tensor; given {_describe(out)}")
    if out.ndim == 1:
        out = out.unsqueeze(0)
    if out.ndim != 2:
        raise InterpError(f"{name}: token ids must have shape [pos] or [batch, pos]; given {_describe(out)}")
    batch, pos = out.shape
    if batch == 0 or pos == 0:
        raise InterpError(f"{name}: need at least one sequence of at least one token; given {_describe(out)}")
    n_ctx = int(cfg.n_ctx)
    if pos > n_ctx:
        raise InterpError(f"{name}: sequence length must be in [1, n_ctx={n_ctx}]; given {pos}")
    d_vocab = int(cfg.d_vocab)
    lo, hi = int(out.min()), int(out.max())
    if lo < 0 or hi >= d_vocab:
        bad = lo if lo < 0 else hi
        raise InterpError(f"{name}: token ids must be in [0, d_vocab={d_vocab}); given id {bad}")
    return out.to(device=model_device(model), dtype=torch.long)


def check_index(name: str, value, size: int, *, allow_negative: bool = True) -> int:
    """Validate an index into an axis of length ``size`` and return it as a non-negative int.

    >>> check_index("layer", -1, 4)
    3
    """
    if not _is_int_like(value):
        raise InterpError(f"{name}: expected an integer index in [0, {size}); given {_describe(value)}")
    v = int(value)
    lo = -size if allow_negative else 0
    if not lo <= v < size:
        rng = f"[{-size}, {size})" if allow_negative else f"[0, {size})"
        raise InterpError(f"{name}: must be in {rng}; given {v}")
    return v % size


def str_tokens(model, ids) -> list[str]:
    """One display string per token id of a 1-D sequence (``model.to_str_tokens``; ``<id>`` without one).

    >>> import types
    >>> str_tokens(types.SimpleNamespace(tokenizer=None), [3, 4])
    ['<3>', '<4>']
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    ids = [int(i) for i in ids]
    tok = getattr(model, "tokenizer", None)
    if tok is not None:  # any tokenizer: sequence_labels answers None when it is not byte-level BPE
        # byte-level BPE: characters cut across tokens read as "今₀", "今₁", never "\ufffd" (interp.tokenize)
        from interp.tokenize import sequence_labels

        labels = sequence_labels(tok, ids)
        if labels is not None:
            return labels
    if hasattr(model, "to_str_tokens"):
        return [str(s) for s in model.to_str_tokens(torch.tensor(ids, dtype=torch.long))]
    if getattr(model, "tokenizer", None) is None:
        return [f"<{i}>" for i in ids]
    return [str(model.tokenizer.decode([i])) for i in ids]


def token_str(model, token_id: int) -> str:
    """Display string of one token id (``str(id)`` without a tokenizer)."""
    return str_tokens(model, [int(token_id)])[0]


def text_lengths(model, tokens, toks: torch.Tensor) -> list[int]:
    """Unpadded length of every row of ``toks = as_tokens(model, tokens)``.

    Only a list of several strings is padded (right-padded by ``model.to_tokens``); every other input
    has all rows full length. Analyzers use this so padding never counts as text.
    """
    full = [int(toks.shape[1])] * int(toks.shape[0])
    if isinstance(tokens, (list, tuple)) and len(tokens) > 1 and all(isinstance(t, str) for t in tokens):
        return [int(model.to_tokens(t).shape[-1]) for t in tokens]
    return full


def check_finite_output(model, logits: torch.Tensor) -> torch.Tensor:
    """Refuse to analyse a forward pass whose logits hold NaN or inf (an overflowing fp16 model, corrupt
    weights): every probability, rank and score computed from them would be silently meaningless."""
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise InterpError(
            f"the model's output holds {bad} non-finite values (NaN or inf) for these tokens, so there is nothing "
            f"meaningful to analyse; check the weights (interp.load checks them at load) or run in float32 "
            f"(dtype={model.cfg.dtype!r})."
        )
    return logits
