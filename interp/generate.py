"""Sampling with a KV cache: greedy, temperature, top-k, top-p (nucleus) and min-p.

The output layer gives a score (logit) per vocabulary token; sampling turns them into a choice
(seed 001): divide by the temperature (→0 is greedy, >1 flattens), then optionally keep only the k best
(top-k), the smallest set whose probability reaches p (top-p), or the tokens whose probability is at
least ``min_p`` times the best one (min-p), renormalise and draw. Hooks stay live during generation:
wrap the call in ``with model.hooks(fwd_hooks=...)`` to steer or ablate while sampling.
"""

from __future__ import annotations

import torch

from interp.errors import InterpError
from interp.model.attention import KVCache


def _check_sampling(temperature, top_k, top_p, min_p) -> None:
    if not 0 <= temperature < float("inf"):  # also refuses NaN and inf, which would reach torch.multinomial
        raise InterpError(f"temperature must be finite and >= 0 (0 means greedy); got {temperature}.")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise InterpError(f"top_k must be a positive integer or None; got {top_k!r}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InterpError(f"top_p must be in (0, 1] or None; got {top_p}.")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise InterpError(f"min_p must be in [0, 1] or None; got {min_p}.")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                  min_p: float | None = None) -> torch.Tensor:
    """Set to −inf every logit outside the top-k / top-p / min-p sets (each applied if given).

    The best token always survives, so the result is never all −inf.
    """
    _check_sampling(1.0, top_k, top_p, min_p)
    logits = logits.float().clone()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly better tokens
        drop_sorted = before >= top_p  # keep a token while the better ones have not yet reached p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p is not None and min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        threshold = min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None, min_p=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``logits`` [batch, vocab]."""
    _check_sampling(temperature, top_k, top_p, min_p)
    if not bool(torch.isfinite(logits).all()):  # argmax of NaN is 0 (often EOS): a silent, empty continuation
        raise InterpError("the model's next-token logits hold NaN or inf, so nothing can be sampled; check the "
                          "weights or run in float32.")
    if temperature == 0:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits / temperature, top_k, top_p, min_p)
    probs = torch.softmax(filtered, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def penalize_frequency(logits: torch.Tensor, tokens: torch.Tensor, freq_penalty: float,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract ``freq_penalty`` × (times each token already occurs in the row) from ``logits`` [batch, vocab]
    (TransformerLens' frequency penalty); padding (mask 0) is not counted."""
    weights = None if mask is None else mask.to(logits.dtype)
    counts = torch.zeros_like(logits).scatter_add_(
        -1, tokens, torch.ones_like(tokens, dtype=logits.dtype) if weights is None else weights)
    return logits - freq_penalty * counts


@torch.no_grad()
def generate(model, tokens, max_new_tokens: int = 20, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, seed: int | None = 0,
             stop_at_eos: bool = True, eos_token_id: int | None = None, use_kv_cache: bool = True,
             freq_penalty: float = 0.0, attention_mask: torch.Tensor | None = None,
             verbose: bool = False) -> torch.Tensor:
    """Continue ``tokens`` (text or LongTensor [batch, pos]) by up to ``max_new_tokens`` sampled tokens.

    Returns the prompt plus the continuation, [batch, pos + new]; rows that hit EOS are padded with EOS.
    ``attention_mask`` [batch, pos] (1 = real token) marks left padding of a batch of prompts of different
    lengths; every row then continues from its own last token. ``freq_penalty`` (sampling only, as in
    TransformerLens) lowers the logit of each token by ``freq_penalty`` per earlier occurrence in the row.
    ``model.generate`` is the TransformerLens-style method built on this function.

    >>> import interp
    >>> model = interp.load()
    >>> out = generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=5, temperature=0)
    >>> out.shape
    torch.Size([1, 8])
    """
    for out in generate_steps(model, tokens, max_new_tokens, temperature, top_k, top_p, min_p, seed, stop_at_eos,
                              eos_token_id, use_kv_cache, freq_penalty, attention_mask, verbose):
        pass
    return out


@torch.no_grad()
def generate_steps(model, tokens, max_new_tokens: int = 20, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, min_p: float | None = None, seed: int | None = 0,
                   stop_at_eos: bool = True, eos_token_id: int | None = None, use_kv_cache: bool = True,
                   freq_penalty: float = 0.0, attention_mask: torch.Tensor | None = None, verbose: bool = False):
    """:func:`generate` one step at a time: yields the prompt (once), then prompt + continuation after each new
    token [batch, pos + k], so a caller can stream (``HookedDecoder.generate_stream``)."""
    _check_sampling(temperature, top_k, top_p, min_p)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InterpError(f"max_new_tokens must be a non-negative integer; got {max_new_tokens!r}.")
    if not freq_penalty >= 0:
        raise InterpError(f"freq_penalty must be >= 0; got {freq_penalty}.")
    tokens = model._as_tokens(tokens)
    room = model.cfg.n_ctx - tokens.shape[1]
    if room < 0:
        model._check_length(tokens.shape[1])
    if max_new_tokens > room:
        raise InterpError(
            f"max_new_tokens={max_new_tokens} would run past the context: the prompt has {tokens.shape[1]} tokens "
            f"and n_ctx={model.cfg.n_ctx}, so at most {room} new tokens fit."
        )
    mask = model._check_mask(attention_mask, tokens, 0)
    eos = eos_token_id if eos_token_id is not None else model.cfg.eos_token_id
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    cache = KVCache(model.cfg.n_layers) if use_kv_cache else None
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    step_input = tokens
    yield tokens
    steps = range(max_new_tokens)
    if verbose:
        from interp.progress import progress_bar

        steps = progress_bar(steps, desc="generate", leave=False)
    for _ in steps:
        logits = model(step_input if use_kv_cache else tokens, kv_cache=cache, attention_mask=mask)[:, -1]
        if freq_penalty and temperature > 0:
            logits = penalize_frequency(logits.float(), tokens, freq_penalty, mask)
        nxt = sample_next(logits, temperature, top_k, top_p, min_p, generator)
        if eos is not None and stop_at_eos:
            nxt = torch.where(finished, torch.full_like(nxt, eos), nxt)
            finished |= nxt == eos
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_input = nxt[:, None]
        yield tokens
        if eos is not None and stop_at_eos and bool(finished.all()):
            break
