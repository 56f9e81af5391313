"""How much memory a model, a forward pass and a cache will take, before running anything.

``estimate_memory(config, tokens, hooks)``:

* ``weights``: every parameter and buffer, counted on a model built on the meta device (no memory used);
* ``cache``: the tensors ``run_with_cache(tokens, names_filter=hooks)`` keeps: each hook's shape (listed in
  ``per_hook``) times the dtype size. A lazily cached ``hook_pattern`` / ``hook_attn_scores`` costs that
  layer's rotated q and k plus a float32 log-sum-exp, once per layer, instead of ``heads x pos x pos``
  (``lazy_patterns=False``, or the eager backend, gives the full matrices). Hooks that hand on the same
  tensor (``blocks.{l}.hook_resid_pre`` is ``blocks.{l-1}.hook_resid_post``) are counted once;
* ``forward``: the transient activations of one forward pass without a cache: two residual streams, the
  larger of the attention step (q, k, v, z; plus scores and pattern on the eager path) and the MLP step
  (pre, post and, when gated, the linear half), and the logits. A peak estimate, not a measurement:
  allocator slack and kernel workspaces come on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from interp.errors import InterpError

__all__ = ["MemoryEstimate", "estimate_memory", "hook_shape"]


@dataclass
class MemoryEstimate:
    """Bytes for ``weights``, a ``forward`` pass and the ``cache``; ``per_hook`` lists the cached tensors."""

    weights: int
    forward: int
    cache: int
    per_hook: pd.DataFrame

    @property
    def total(self) -> int:
        return self.weights + self.forward + self.cache

    def __str__(self) -> str:
        parts = {"weights": self.weights, "forward": self.forward, "cache": self.cache, "total": self.total}
        return ", ".join(f"{k} {v / 2**30:.3f} GiB" for k, v in parts.items())


def hook_shape(cfg, name: str, batch: int, pos: int) -> tuple[int, ...]:
    """The activation shape at hook ``name`` for ``[batch, pos]`` tokens (TransformerLens layouts)."""
    h, kv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    last = name.rsplit(".", 1)[-1]
    parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if last == "hook_scale":
        return (batch, pos, 1)
    if last in ("hook_q", "hook_rot_q", "hook_z", "hook_q_normed"):
        return (batch, pos, h, dh)
    if last in ("hook_k", "hook_v", "hook_rot_k", "hook_k_normed"):
        return (batch, pos, kv, dh)
    if last in ("hook_attn_scores", "hook_pattern"):
        return (batch, h, pos, pos)
    if last in ("hook_result", "hook_attn_in", "hook_q_input"):  # per-head copies (gated hooks)
        return (batch, pos, h, cfg.d_model)
    if last in ("hook_k_input", "hook_v_input"):
        return (batch, pos, kv, cfg.d_model)
    if name == "hook_unembed":  # the logits
        return (batch, pos, cfg.d_vocab)
    if parent == "mlp":  # hook_pre, hook_pre_linear, hook_post
        return (batch, pos, cfg.d_mlp)
    return (batch, pos, cfg.d_model)  # embeddings, residual streams, sublayer outputs, hook_normalized


def _filter(hooks) -> Callable[[str], bool]:
    if hooks is None:
        return lambda n: False
    if hooks == "all":
        return lambda n: True
    if callable(hooks):
        return hooks
    if isinstance(hooks, str):
        hooks = [hooks]
    if isinstance(hooks, Sequence) and all(isinstance(h, str) for h in hooks):
        wanted = set(hooks)
        # a full name, or a per-block suffix such as "hook_resid_post", "mlp.hook_post" or "hook_pattern"
        return lambda n: n in wanted or (n.startswith("blocks.") and any(n.endswith("." + w) for w in wanted))
    raise InterpError(f"hooks: expected None, 'all', a hook name, a list of names or a function; given {hooks!r:.80}")


def estimate_memory(config, tokens, hooks=None, *, lazy_patterns: bool = True) -> MemoryEstimate:
    """Memory for ``config``'s weights, one forward pass over ``tokens`` and a cache of ``hooks``.

    ``config``: a :class:`~interp.model.config.DecoderConfig` (or a model: its ``cfg``). ``tokens``: a
    number of positions (batch 1), a ``(batch, pos)`` pair, or a token tensor. ``hooks``: None (no cache),
    ``"all"``, hook names / per-block suffixes, or a ``name -> bool`` filter (as ``names_filter``).

    >>> from interp.model.config import DecoderConfig
    >>> est = estimate_memory(DecoderConfig(d_vocab=100, n_ctx=64, d_model=32, n_layers=2, n_heads=4),
    ...                       (2, 64), "hook_resid_post")
    >>> est.cache == 2 * (2 * 64 * 32 * 4)
    True
    """
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    cfg = getattr(config, "cfg", config)
    if not isinstance(cfg, DecoderConfig):
        raise InterpError(f"config: expected a DecoderConfig or a model; given {type(config).__name__}")
    if isinstance(tokens, torch.Tensor):
        batch, pos = (1, tokens.shape[-1]) if tokens.ndim == 1 else tuple(tokens.shape)
    elif isinstance(tokens, int) and not isinstance(tokens, bool):
        batch, pos = 1, tokens
    elif isinstance(tokens, (tuple, list)) and len(tokens) == 2 and all(isinstance(t, int) for t in tokens):
        batch, pos = tokens
    else:
        raise InterpError(f"tokens: expected a number of positions, (batch, pos) or a token tensor; given {tokens!r:.80}")
    if batch < 1 or not 1 <= pos <= cfg.n_ctx:
        raise InterpError(f"tokens: need batch >= 1 and pos in [1, n_ctx={cfg.n_ctx}]; given ({batch}, {pos})")

    with torch.device("meta"):
        model = HookedDecoder(cfg)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    size = torch.empty((), dtype=cfg.torch_dtype).element_size()
    wanted = _filter(hooks)
    fused = cfg.attn_backend != "eager" and lazy_patterns
    rows, lazy_layers = [], set()
    for name in model.hook_dict:
        if not wanted(name) or (name.endswith("hook_result") and not cfg.use_attn_result):
            continue
        if name.endswith(("hook_rot_q", "hook_rot_k")) and cfg.positional != "rotary":
            continue  # never called without rotary embeddings
        if name.endswith("hook_resid_mid") and cfg.parallel_residual and cfg.norm_placement == "pre":
            continue  # a parallel block has no residual between attention and MLP
        alias = _alias(cfg, name)
        if alias is not None and wanted(alias):
            rows.append({"hook": name, "shape": hook_shape(cfg, name, batch, pos), "bytes": 0})
            continue  # the same tensor as an entry already counted
        shape = hook_shape(cfg, name, batch, pos)
        nbytes = int(torch.Size(shape).numel()) * size
        last = name.rsplit(".", 1)[-1]
        if fused and last in ("hook_attn_scores", "hook_pattern"):
            layer = name.split(".")[1]
            nbytes = 0 if layer in lazy_layers else _lazy_bytes(cfg, wanted, layer, batch, pos, size)
            lazy_layers.add(layer)
        rows.append({"hook": name, "shape": shape, "bytes": nbytes})
    per_hook = pd.DataFrame(rows, columns=["hook", "shape", "bytes"])

    resid = batch * pos * cfg.d_model * size
    attn = batch * pos * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.d_head * size
    if not fused:
        attn += 2 * batch * cfg.n_heads * pos * pos * max(size, 4)  # scores and the fp32 softmax
    mlp = batch * pos * cfg.d_mlp * size * (3 if cfg.gated else 2)
    logits = batch * pos * cfg.d_vocab * size
    forward = 2 * resid + max(attn, mlp) + logits
    return MemoryEstimate(weights=weights, forward=forward, cache=int(per_hook["bytes"].sum()), per_hook=per_hook)


def _alias(cfg, name: str) -> str | None:
    """The hook that hands on the very same tensor: a block's resid_pre is the previous block's resid_post
    (or, without an added positional embedding, hook_embed)."""
    if not name.endswith(".hook_resid_pre"):
        return None
    layer = int(name.split(".")[1])
    if layer > 0:
        return f"blocks.{layer - 1}.hook_resid_post"
    return "hook_embed" if cfg.positional in ("rotary", "none") else None


def _lazy_bytes(cfg, wanted, layer: str, batch: int, pos: int, size: int) -> int:
    """A lazily cached pattern keeps the layer's rotated q and k (the very tensors of hook_rot_q / hook_rot_k,
    or hook_q / hook_k without rotary, so free when those are cached too) and a float32 log-sum-exp."""
    rot = "rot_" if cfg.positional == "rotary" else ""
    q = 0 if wanted(f"blocks.{layer}.attn.hook_{rot}q") else batch * pos * cfg.n_heads * cfg.d_head * size
    k = 0 if wanted(f"blocks.{layer}.attn.hook_{rot}k") else batch * pos * cfg.n_kv_heads * cfg.d_head * size
    return q + k + batch * cfg.n_heads * pos * 4
