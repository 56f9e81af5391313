"""Steering: add a direction to an activation while the model runs, and measure what changes.

* :func:`steering_vector` is the contrastive mean difference (Turner et al. 2023's activation addition,
  Rimsky et al. 2024's CAA): the mean activation at ``hook`` over ``positive`` prompts minus the mean over
  ``negative`` prompts, read at each prompt's last position (``position="last"``) or averaged over its
  positions (``"mean"``).
* :func:`feature_direction` is an SAE (or transcoder) feature's decoder row ``W_dec[feature]``: the direction
  the feature writes.
* :func:`steer` is a context manager adding ``scale * direction`` at ``hook`` on every forward pass inside
  it, so it works around ``model(...)``, ``model.generate`` (the KV-cached steps are steered too) and any
  analyzer or report. ``positions`` restricts it to absolute positions (counted from the start of the
  sequence, also while generating).
* :func:`steering_effect` compares the next-token distribution (and, optionally, a greedy continuation) with
  and without steering, for several scales: KL from the unsteered distribution, the top tokens, the logits
  of chosen tokens.

At the final residual stream (``blocks.{L-1}.hook_resid_post``) of a model without a final norm, adding
``c * d`` changes the logits by exactly ``c * d @ W_U``: steering along ``W_U[:, t]`` raises token ``t``'s
logit by ``c * |W_U[:, t]|²`` (tests/test_steering.py checks this).
"""

from __future__ import annotations

import contextlib
import math

import pandas as pd
import torch

from interp.analysis._inputs import as_tokens, str_tokens
from interp.errors import InterpError

__all__ = ["feature_direction", "steer", "steering_effect", "steering_vector"]

POSITIONS = ("last", "mean")


def _check_hook(model, hook: str) -> str:
    names = getattr(model, "hook_dict", {})
    if not isinstance(hook, str) or hook not in names:
        close = [n for n in names if isinstance(hook, str) and n.split(".")[-1] == hook.split(".")[-1]][:4]
        raise InterpError(f"hook: {hook!r} is not a hook point of this model (TransformerLens names, e.g. "
                          f"'blocks.0.hook_resid_post'); similar: {close or sorted(names)[:4]}")
    return hook


def _prompt_list(name: str, prompts) -> list:
    """One entry per prompt: a string, or token ids (a list of ints, a 1-D tensor, a row of a 2-D tensor)."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        return list(prompts if prompts.ndim == 2 else prompts[None])
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise InterpError(f"{name}: expected a prompt or a non-empty list of prompts; given {prompts!r}")
    return list(prompts)


@torch.no_grad()
def steering_vector(model, positive, negative, hook: str, *, position: str = "last") -> torch.Tensor:
    """``mean(act(positive)) - mean(act(negative))`` at ``hook`` (float32 or the model's wider dtype).

    ``positive`` / ``negative``: a prompt or a list of prompts (strings or token ids, any lengths: each runs
    alone). ``position="last"`` reads each prompt's last token, ``"mean"`` averages over its tokens. The
    result has the activation's trailing shape (``[d_model]`` for residual hooks).
    """
    _check_hook(model, hook)
    if position not in POSITIONS:
        raise InterpError(f"position: must be one of {list(POSITIONS)}; given {position!r}")
    means = []
    for name, prompts in (("positive", positive), ("negative", negative)):
        acts = []
        for p in _prompt_list(name, prompts):
            _, cache = model.run_with_cache(as_tokens(model, p, name=name), names_filter=lambda n: n == hook)
            a = cache[hook][0]  # [pos, ...]
            acts.append(a[-1] if position == "last" else a.mean(0))
        means.append(torch.stack(acts).to(torch.promote_types(acts[0].dtype, torch.float32)).mean(0))
    return means[0] - means[1]


def feature_direction(sae, feature: int, *, normalize: bool = False) -> torch.Tensor:
    """The decoder row ``W_dec[feature]`` of an SAE or transcoder (unit length with ``normalize``)."""
    W = getattr(sae, "W_dec", None)
    if not isinstance(W, torch.Tensor) or W.ndim != 2:
        raise InterpError(f"sae: expected an SAE or transcoder with a W_dec [d_sae, d_in]; given {type(sae).__name__}")
    n = W.shape[0]
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < n:
        raise InterpError(f"feature: must be an int in [0, {n}) (d_sae); given {feature!r}")
    d = W[feature].detach().clone()
    return d / d.norm() if normalize else d


def _check_direction(direction, scale) -> torch.Tensor:
    if not isinstance(direction, torch.Tensor) or not direction.is_floating_point() or direction.ndim == 0:
        raise InterpError(f"direction: expected a floating-point tensor shaped like the activation's last axes "
                          f"(e.g. [d_model]); given {direction!r:.80}")
    if not bool(torch.isfinite(direction).all()):
        raise InterpError("direction: holds NaN or inf")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InterpError(f"scale: must be a finite number; given {scale!r}")
    return direction.detach()


def _check_positions(positions) -> list[int] | None:
    if positions is None:
        return None
    items = [positions] if isinstance(positions, int) else positions
    if (isinstance(positions, bool) or not isinstance(items, (list, tuple, range)) or not items
            or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in items)):
        raise InterpError(f"positions: None (every position) or absolute positions >= 0 (an int or a list); "
                          f"given {positions!r}")
    return sorted(set(items))


@contextlib.contextmanager
def steer(model, direction: torch.Tensor, hook: str, scale: float = 1.0, positions=None):
    """Inside the ``with`` block, every forward pass adds ``scale * direction`` to the activation at ``hook``.

    ``positions``: None (every position, generated ones included) or absolute positions (an int or a list;
    counted from the sequence start, so a KV-cached generation step knows where it is). Leaving the block
    removes the hook.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2))
    >>> with steer(m, torch.ones(16), "blocks.0.hook_resid_post", scale=2.0):
    ...     steered = m(torch.tensor([[1, 2, 3]]))
    >>> steered.shape
    torch.Size([1, 3, 20])
    """
    _check_hook(model, hook)
    d = _check_direction(direction, scale)
    where = _check_positions(positions)
    offset = {"past": 0}

    def track(module, args, kwargs):  # where this pass starts: the KV cache's length while generating
        kv = kwargs.get("kv_cache")
        offset["past"] = 0 if kv is None else int(kv.length)

    def add(act, hook):
        shape = tuple(act.shape[act.ndim - d.ndim:]) if act.ndim > d.ndim else None
        if shape != tuple(d.shape):
            raise InterpError(f"direction: shape {tuple(d.shape)} does not match the trailing axes of {hook.name} "
                              f"{tuple(act.shape[2:])} (activation {tuple(act.shape)})")
        delta = (scale * d).to(act.device, act.dtype)
        if where is None:
            return act + delta
        idx = [p - offset["past"] for p in where if 0 <= p - offset["past"] < act.shape[1]]
        if not idx:
            return act
        act = act.clone()
        act[:, idx] += delta
        return act

    handle = model.register_forward_pre_hook(track, with_kwargs=True) if where is not None else None
    try:
        with model.hooks(fwd_hooks=[(hook, add)]):
            yield model
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def steering_effect(model, prompts, direction: torch.Tensor, hook: str, scales=(0.0, 1.0), *, positions=None,
                    k: int = 5, targets=None, max_new_tokens: int = 0) -> pd.DataFrame:
    """What steering changes, for each prompt and each scale (0 = unsteered).

    Columns: ``prompt`` (index), ``scale``, ``kl`` (``KL(unsteered || steered)`` of the next-token distribution
    at the last position, nats), ``top_tokens`` / ``top_probs`` (the steered ``k`` most likely next tokens),
    ``logit_<id>`` for each token id in ``targets``, and ``generation`` (a greedy continuation of
    ``max_new_tokens`` tokens, text when the model has a tokenizer) when ``max_new_tokens > 0``.
    """
    _check_hook(model, hook)
    scales = [scales] if isinstance(scales, (int, float)) else list(scales)
    for s in scales:
        _check_direction(direction, s)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= model.cfg.d_vocab:
        raise InterpError(f"k: must be an int in [1, {model.cfg.d_vocab}] (d_vocab); given {k!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InterpError(f"max_new_tokens: must be an int >= 0; given {max_new_tokens!r}")
    tids = [] if targets is None else [targets] if isinstance(targets, int) else list(targets)
    for t in tids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < model.cfg.d_vocab:
            raise InterpError(f"targets: token ids in [0, {model.cfg.d_vocab}); given {t!r}")
    rows = []
    for i, p in enumerate(_prompt_list("prompts", prompts)):
        toks = as_tokens(model, p, name="prompts")
        base = model(toks)[0, -1].double().log_softmax(-1)
        for s in scales:
            with steer(model, direction, hook, s, positions):
                logits = model(toks)[0, -1].double()
                gen = model.generate(toks, max_new_tokens=max_new_tokens, do_sample=False, stop_at_eos=False,
                                     return_type="tokens", verbose=False) if max_new_tokens else None
            lp = logits.log_softmax(-1)
            top = lp.topk(k)
            row = {"prompt": i, "scale": float(s), "kl": float((base.exp() * (base - lp)).sum()),
                   "top_tokens": str_tokens(model, top.indices), "top_probs": top.values.exp().tolist()}
            row.update({f"logit_{t}": float(logits[t]) for t in tids})
            if gen is not None:
                new = gen[0, toks.shape[1]:]
                row["generation"] = (model.to_string(new) if getattr(model, "tokenizer", None) is not None
                                     else " ".join(str_tokens(model, new)))
            rows.append(row)
    return pd.DataFrame(rows)
