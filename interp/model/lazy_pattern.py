"""Exact attention patterns from a fused forward pass, built only when read.

Fused attention (sdpa on the CPU, our Triton kernel on CUDA) never forms the [query, key] matrix, which is
why it is fast and why it cannot hand a pattern to a hook. ``run_with_lazy_cache`` gets both:

* Layers whose ``hook_attn_scores`` / ``hook_pattern`` the names filter asks for still run fused. Instead of
  caching an n x n pattern, the cache keeps that layer's rotated queries and keys and the kernel's
  log-sum-exp (O(n * d) per layer; the q/k tensors are the same storage a cached ``hook_rot_q`` would use).
* The first time a pattern entry is read, it is rebuilt in query tiles: the scores ``scale * q k^T`` are
  recomputed exactly as the eager path computes them (same dtype, same scale, same causal mask) and
  ``P = exp(s - lse)`` with lse the row's log-sum-exp, so the pattern equals the eager one to float32
  rounding (~1e-7). The normaliser is taken from the recomputed scores themselves (a softmax), not from the
  kernel's stored lse: that keeps P exact when the lse was rounded differently (an fp32 kernel lse against
  bf16-rounded eager scores). The stored lse is the check instead: if the recomputed scores do not
  reproduce the kernel's normaliser, the read fails with a clear error rather than return an approximation.
  Reading a layer's scores first makes its pattern a plain softmax of them (no second matmul).
* Chosen heads or query rows of a layer come from :meth:`LazyActivationCache.pattern` without building the
  rest; :func:`attention_rows` gets full rows of one head in a long context without any n x n tensor.

Hooks that *edit* the pattern or scores (``run_with_hooks``, ``model.hooks``) force that layer onto the eager
path (interp/model/attention.py), so the edit takes effect; a cache taken while such a hook is attached
stores that layer's pattern the ordinary way (after the edit). ``incl_bwd=True`` (gradients of the pattern)
also uses the eager path for the requested layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, replace

import torch
from transformer_lens.utilities.slice import Slice

from interp.errors import InterpError
from interp.kernels.reference import modify_scores, softmax_with_sinks, visible_keys
from interp.model.processing import InterpActivationCache

PATTERN_HOOK_NAMES = ("hook_attn_scores", "hook_pattern")
_TILE_ELEMS = 1 << 22  # scores per query tile (16 MB of fp32): bounds the temporaries of a rebuild


# --- the recomputation --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedAttention:
    """What one layer's fused attention saw: enough to rebuild its scores and pattern exactly."""

    q: torch.Tensor  # [batch, n_heads, n_query, d_head], after RoPE and after any hook on hook_q/hook_rot_q
    k: torch.Tensor  # [batch, n_kv_heads, n_key, d_head]
    lse: torch.Tensor | None  # [batch, n_heads, n_query] float32, the kernel's log-sum-exp (None: not given)
    scale: float
    window: int | None = None  # the layer's score modifications (interp.kernels.reference)
    softcap: float | None = None
    alibi: torch.Tensor | None = None  # slopes [n_heads]
    chunk: int | None = None  # Llama 4's chunked attention width
    sinks: torch.Tensor | None = None  # GPT-OSS's sink logit per head [n_heads] (softmax_with_sinks)

    def to(self, device) -> RecordedAttention:
        lse = None if self.lse is None else self.lse.to(device)
        alibi = None if self.alibi is None else self.alibi.to(device)
        sinks = None if self.sinks is None else self.sinks.to(device)
        return replace(self, q=self.q.to(device), k=self.k.to(device), lse=lse, alibi=alibi, sinks=sinks)

    def batch_slice(self, index) -> RecordedAttention:
        lse = None if self.lse is None else self.lse[index]
        return replace(self, q=self.q[index], k=self.k[index], lse=lse)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.q, self.k, self.lse) if t is not None]


def _indices(arg, size: int, what: str) -> torch.Tensor:
    """None / int / slice / sequence / tensor -> LongTensor of positions in [0, size), negatives allowed."""
    if arg is None:
        return torch.arange(size)
    if isinstance(arg, slice):
        return torch.arange(size)[arg]
    idx = torch.as_tensor(arg).reshape(-1)
    if idx.dtype in (torch.bool,) or idx.is_floating_point():
        raise InterpError(f"{what} must be integer positions (or a slice); got dtype {idx.dtype}")
    idx = idx.long().cpu()
    if len(idx) and (idx.min() < -size or idx.max() >= size):
        raise InterpError(f"{what} must lie in [-{size}, {size - 1}]; got {arg!r}")
    return torch.where(idx < 0, idx + size, idx)


def attention_from_qk(rec: RecordedAttention, heads=None, queries=None, kind: str = "pattern",
                      tile_elems: int = _TILE_ELEMS) -> torch.Tensor:
    """Rebuild the causal attention pattern (or masked scores) of chosen heads and query rows.

    The layer's window, soft-cap and ALiBi (recorded with q and k) are applied exactly as the eager path
    applies them (interp.kernels.reference.modify_scores, in the model's dtype).

    Returns [batch, len(heads), len(queries), n_key] in the queries' dtype, equal to what the eager path
    hands to ``hook_pattern`` (``kind="pattern"``) or ``hook_attn_scores`` (``kind="scores"``: masked
    entries -inf). Works a tile of query rows at a time, so no more than ``tile_elems`` scores exist at once
    beyond the returned tensor itself.
    """
    if kind not in ("pattern", "scores"):
        raise InterpError(f"kind must be 'pattern' or 'scores'; got {kind!r}")
    q, k = rec.q, rec.k
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    group = h // hk
    head_idx = _indices(heads, h, "heads").to(q.device)
    query_idx = _indices(queries, sq, "queries").to(q.device)
    n_h, n_q = len(head_idx), len(query_idx)

    all_heads = n_h == h and bool((head_idx == torch.arange(h, device=q.device)).all())
    # Masked entries are exactly 0 in a pattern and -inf in scores; tiles only write the visible span.
    fill = 0.0 if kind == "pattern" else float("-inf")
    out = torch.full((b, n_h, n_q, sk), fill, dtype=q.dtype, device=q.device)
    if n_h == 0 or n_q == 0:
        return out
    qh = q if all_heads else q.index_select(1, head_idx)
    if all_heads:
        # [b, hk, 1, d, sk]: one key matrix serves its whole group of query heads (no GQA copy).
        kT = k.transpose(-1, -2)[:, :, None]
    else:
        kT = k.index_select(1, head_idx // group).transpose(-1, -2)  # only the chosen heads' keys
    lse = None
    if rec.lse is not None and kind == "pattern":
        lse = rec.lse if all_heads else rec.lse.index_select(1, head_idx)
    offset = sk - sq  # bottom-right causal alignment: query i sees keys j <= i + offset
    key_pos = torch.arange(sk, device=q.device)
    slopes = None if rec.alibi is None else rec.alibi.to(q.device).index_select(0, head_idx)
    sinks = None if rec.sinks is None else rec.sinks.to(q.device).index_select(0, head_idx)
    tile = max(1, min(n_q, tile_elems // max(1, b * n_h * sk)))
    # The consistency check on the normaliser catches mismatched q/k/lse, not rounding: scores recomputed in
    # half precision (as the eager path rounds them) can differ from the kernel's fp32 ones by an epsilon
    # of their size, so the allowed drift grows with the largest score there.
    half = q.dtype in (torch.float16, torch.bfloat16)
    eps = torch.finfo(q.dtype).eps

    for start in range(0, n_q, tile):
        rows = query_idx[start:start + tile]
        stop = start + len(rows)
        # Keys no row of the tile can see are skipped for scores; a pattern row keeps its full length so its
        # softmax reduces over exactly what the eager path's does (bit-for-bit the same arithmetic).
        hi = sk if kind == "pattern" else min(sk, int(rows.max()) + offset + 1)
        if hi <= 0:
            continue
        qt = qh.index_select(2, rows)  # [b, n_h, t, d]
        if all_heads:
            s = torch.matmul(qt.reshape(b, hk, group, len(rows), d), kT[..., :hi])
            s = s.reshape(b, h, len(rows), hi)
        else:
            s = torch.matmul(qt, kT[..., :hi])
        s.mul_(rec.scale)  # as the eager path: matmul in the model dtype, then the scale
        s = modify_scores(s, rows + offset, key_pos[:hi], True, rec.window, rec.softcap, slopes, rec.chunk)
        if kind == "scores":
            out[:, :, start:stop, :hi] = s
            continue
        check_tol = 1e-3
        if half and lse is not None:
            hidden = ~visible_keys(rows + offset, key_pos[:hi], True, rec.window, rec.chunk)
            check_tol += 2 * eps * s.float().abs().masked_fill_(hidden, 0).amax().item()
        s = s.float()
        if lse is not None:
            # exp(s - lse) must sum to one over each row; it does unless q/k/lse do not belong together.
            stored = lse.index_select(2, rows)
            gap = torch.logsumexp(s, dim=-1) - stored
            drift = torch.where(torch.isneginf(stored), 0.0, gap).abs().max().item()  # rows seeing no key
            if not drift <= check_tol:  # also catches NaN
                raise InterpError(
                    "the stored log-sum-exp does not normalise the recomputed attention scores "
                    f"(|log sum| = {drift:.3g} > {check_tol:.3g}): the cached q/k/lse are inconsistent, so "
                    "an exact pattern cannot be rebuilt. Re-run with attn_backend='eager' to materialise it.")
        out[:, :, start:stop, :hi] = torch.softmax(s, dim=-1) if sinks is None else softmax_with_sinks(s, sinks)
    return out


# --- the lazy cache -----------------------------------------------------------------------------------------


@dataclass
class LazyAttention:
    """A cache value that is not a tensor yet: one layer's pattern or scores, built on first read."""

    rec: RecordedAttention
    kind: str  # "pattern" | "scores"
    queries: torch.Tensor | None = None  # query rows kept (run_with_cache's pos_slice), None = all
    squeeze_batch: bool = False  # remove_batch_dim: drop the (size-1) batch dimension when built
    device: torch.device | str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        b, h, sq, _ = self.rec.q.shape
        n_q = sq if self.queries is None else len(self.queries)
        shape = (b, h, n_q, self.rec.k.shape[2])
        return shape[1:] if self.squeeze_batch else shape

    def build(self) -> torch.Tensor:
        t = attention_from_qk(self.rec, queries=self.queries, kind=self.kind)
        if self.squeeze_batch:
            t = t[0]
        return t if self.device is None else t.to(self.device)


class LazyCacheDict(MutableMapping):
    """The cache's name -> tensor mapping, where attention patterns are built (and kept) when first read.

    Iterating ``values()`` / ``items()`` builds every lazy entry, as a dict of tensors would hold them; use
    :meth:`is_lazy` and :meth:`stored_tensors` to look without building.
    """

    def __init__(self, data: dict | None = None):
        self._data: dict[str, torch.Tensor | LazyAttention] = dict(data or {})
        self._recipes: dict[str, LazyAttention] = {}  # how each built entry was made

    def __getitem__(self, key: str) -> torch.Tensor:
        value = self._data[key]
        if isinstance(value, LazyAttention):
            recipe = value
            value = self._from_built_scores(key, recipe)
            if value is None:
                value = recipe.build()
            self._data[key] = value
            self._recipes[key] = recipe
        return value

    def _from_built_scores(self, key: str, recipe: LazyAttention) -> torch.Tensor | None:
        # A pattern whose layer's scores were already built (same q/k, rows and layout) is their softmax,
        # exactly as the eager path computes it: one cheap pass instead of a second matmul.
        if recipe.kind != "pattern" or not key.endswith("hook_pattern"):
            return None
        sibling = key[: -len("hook_pattern")] + "hook_attn_scores"
        made = self._recipes.get(sibling)
        if made is None or not isinstance(self._data.get(sibling), torch.Tensor):
            return None
        same_rows = (made.queries is None) == (recipe.queries is None) and (
            made.queries is None or torch.equal(made.queries, recipe.queries))
        if made.rec is not recipe.rec or not same_rows or made.squeeze_batch != recipe.squeeze_batch:
            return None
        scores = self._data[sibling]
        pattern = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        return pattern if recipe.device is None else pattern.to(recipe.device)

    def __setitem__(self, key: str, value) -> None:
        self._data[key] = value
        self._recipes.pop(key, None)

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._recipes.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        lazy = [k for k, v in self._data.items() if isinstance(v, LazyAttention)]
        return f"LazyCacheDict({len(self._data)} entries, {len(lazy)} not built yet)"

    def is_lazy(self, key: str) -> bool:
        """True while ``key`` is still a recipe rather than a tensor."""
        return isinstance(self._data[key], LazyAttention)

    def raw(self, key: str):
        """The stored value of ``key`` without building it (a tensor or a :class:`LazyAttention`)."""
        return self._data[key]

    def stored_tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds now (built entries, and the q/k/lse behind lazy ones), once each."""
        seen, out = set(), []
        for value in self._data.values():
            for t in value.rec.tensors() if isinstance(value, LazyAttention) else [value]:
                if id(t) not in seen:
                    seen.add(id(t))
                    out.append(t)
        return out


class LazyActivationCache(InterpActivationCache):
    """TransformerLens' ``ActivationCache`` whose attention patterns are rebuilt exactly when first read.

    Everything TransformerLens offers works as usual (``cache["pattern", 0]``, ``stack_activation``,
    ``decompose_resid`` ...). Added: :meth:`pattern` and :meth:`attention_scores` for chosen heads and query
    rows without building the rest of the layer, and :meth:`is_built`.
    """

    cache_dict: LazyCacheDict

    def __init__(self, cache_dict: LazyCacheDict, model, has_batch_dim: bool = True):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)

    def _batch_size(self) -> int:
        # ActivationCache counts leading dims over values(), which would build every pattern.
        counts: dict[int, int] = {}
        for value in self.cache_dict._data.values():
            shape = value.shape
            if len(shape) > 0:
                counts[shape[0]] = counts.get(shape[0], 0) + 1
        return max(counts, key=counts.get) if counts else 1

    def is_built(self, name: str) -> bool:
        return not self.cache_dict.is_lazy(name)

    def _layer_name(self, layer: int, hook: str) -> str:
        n_layers = self.model.cfg.n_layers
        if not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise InterpError(f"layer must be an int in [-{n_layers}, {n_layers - 1}]; got {layer!r}")
        name = f"blocks.{layer % n_layers}.attn.{hook}"
        if name not in self.cache_dict:
            raise InterpError(f"{name} is not in this cache: include it in run_with_cache's names_filter")
        return name

    def _select(self, layer, hook, kind, heads, queries, batch) -> torch.Tensor:
        name = self._layer_name(layer, hook)
        raw = self.cache_dict.raw(name)
        if isinstance(raw, LazyAttention):
            rec = raw.rec
            if not self.has_batch_dim:
                rec = rec.batch_slice(slice(0, 1))
            if batch is not None:
                rec = rec.batch_slice(_indices(batch, rec.q.shape[0], "batch").to(rec.q.device))
            if raw.queries is not None:
                # pos_slice was applied at caching time: query indices refer to the kept rows
                kept = raw.queries
                queries = kept[_indices(queries, len(kept), "queries")].tolist()
            out = attention_from_qk(rec, heads=heads, queries=queries, kind=kind)
            if not self.has_batch_dim:
                out = out[0]
            return out if raw.device is None else out.to(raw.device)
        t = raw if self.has_batch_dim else raw[None]
        if batch is not None:
            t = t[_indices(batch, t.shape[0], "batch").to(t.device)]
        t = t[:, _indices(heads, t.shape[1], "heads").to(t.device)]
        t = t[:, :, _indices(queries, t.shape[2], "queries").to(t.device)]
        return t if self.has_batch_dim else t[0]

    def pattern(self, layer: int, heads=None, queries=None, batch=None) -> torch.Tensor:
        """Attention probabilities of ``layer`` for chosen ``heads`` and ``queries`` (rows), all keys.

        ``heads``, ``queries``, ``batch``: None (all), an int, a list/tensor of ints, or a slice; negative
        positions count from the end. Returns [batch, heads, queries, keys] (no batch dim if the cache was
        taken with ``remove_batch_dim``). Builds only the rows asked for; nothing is stored in the cache.
        """
        return self._select(layer, "hook_pattern", "pattern", heads, queries, batch)

    def attention_scores(self, layer: int, heads=None, queries=None, batch=None) -> torch.Tensor:
        """Like :meth:`pattern` for the pre-softmax scores (masked entries -inf)."""
        return self._select(layer, "hook_attn_scores", "scores", heads, queries, batch)

    # --- ActivationCache methods that would otherwise build every pattern -----------------------------------

    def to(self, device) -> LazyActivationCache:
        data = {}
        for key, value in self.cache_dict._data.items():
            if isinstance(value, LazyAttention):
                data[key] = replace(value, rec=value.rec.to(device), device=None)
            else:
                data[key] = value.to(device)
        self.cache_dict = LazyCacheDict(data)
        return self

    def remove_batch_dim(self, batch_size: int | None = None) -> LazyActivationCache:
        if not self.has_batch_dim:
            return super().remove_batch_dim(batch_size)  # TransformerLens' warning
        size = self._batch_size() if batch_size is None else batch_size
        if size != 1:
            raise InterpError(f"remove_batch_dim needs a batch of 1; this cache holds a batch of {size}")
        for key, value in list(self.cache_dict._data.items()):
            if isinstance(value, LazyAttention):
                self.cache_dict._data[key] = replace(value, squeeze_batch=True)
            elif value.ndim > 0 and value.size(0) == 1:
                self.cache_dict._data[key] = value[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice) -> LazyActivationCache:
        if not isinstance(batch_slice, Slice):
            batch_slice = Slice(batch_slice)
        if not self.has_batch_dim and batch_slice.mode != "identity":
            raise InterpError("this cache has no batch dimension (remove_batch_dim was applied) to slice")
        size = self._batch_size()
        data = {}
        for key, value in self.cache_dict._data.items():
            if isinstance(value, LazyAttention):
                if batch_slice.mode == "int":  # keep the dim in the recipe, drop it when built
                    i = batch_slice.slice
                    index = slice(i, i + 1) if i != -1 else slice(-1, None)
                    data[key] = replace(value, rec=value.rec.batch_slice(index), squeeze_batch=True)
                else:
                    index = batch_slice.slice
                    if batch_slice.mode == "array":
                        index = torch.as_tensor(index, device=value.rec.q.device)
                    data[key] = replace(value, rec=value.rec.batch_slice(index))
            elif value.ndim > 0 and value.size(0) == size:
                data[key] = batch_slice.apply(value, dim=0)
            else:
                data[key] = value
        still_batched = batch_slice.mode != "int" and self.has_batch_dim
        return LazyActivationCache(LazyCacheDict(data), self.model, has_batch_dim=still_batched)


# --- running the model --------------------------------------------------------------------------------------


def _as_filter(names_filter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if isinstance(names_filter, (list, tuple, set)):
        wanted = set(names_filter)
        return lambda name: name in wanted
    if callable(names_filter):
        return names_filter
    raise InterpError(
        f"names_filter must be None, a hook name, a list of hook names or a function name -> bool; "
        f"got {type(names_filter).__name__}")


def _fused_backend(model, attn_backend) -> bool:
    """Whether this forward would run attention fused (the only path that feeds the recorder)."""
    from interp.model.attention import resolve_backend

    return resolve_backend(attn_backend, model.cfg, model.device) != "eager"


class _Recorders:
    """Attach ``pattern_recorder`` callbacks to chosen layers for the duration of a forward."""

    def __init__(self, model, layers, device=None, stop_after: int | None = None, on_record=None):
        self.model, self.layers, self.device, self.stop_after = model, list(layers), device, stop_after
        self.on_record = on_record
        self.recorded: dict[int, RecordedAttention] = {}
        self._previous = {}

    def _make(self, layer: int):
        scale = float(self.model.cfg.attn_scale)
        attn = self.model.blocks[layer].attn

        def record(_layer_index, q, k, lse):
            rec = RecordedAttention(q.detach(), k.detach(), None if lse is None else lse.detach(), scale,
                                    attn.window, attn.softcap, attn.alibi, attn.chunk,
                                    None if attn.sinks is None else attn.sinks.detach())
            rec = rec if self.device is None else rec.to(self.device)
            self.recorded[layer] = rec
            if self.on_record is not None:
                self.on_record(layer, rec)
            if self.stop_after == layer:
                raise _StopForward

        return record

    def __enter__(self):
        for layer in self.layers:
            attn = self.model.blocks[layer].attn
            self._previous[layer] = attn.pattern_recorder
            attn.pattern_recorder = self._make(layer)
        return self

    def __exit__(self, *exc):
        for layer, previous in self._previous.items():
            self.model.blocks[layer].attn.pattern_recorder = previous
        return False


class _StopForward(Exception):
    """Raised by a recorder to end a forward pass early (nothing after the recorded layer is needed)."""


def run_with_lazy_cache(model, *model_args, names_filter=None, device=None, remove_batch_dim: bool = False,
                        incl_bwd: bool = False, reset_hooks_end: bool = True, clear_contexts: bool = False,
                        pos_slice=None, **model_kwargs):
    """TransformerLens' ``run_with_cache`` with attention patterns and scores kept lazily.

    Same arguments and return value as ``HookedRootModule.run_with_cache`` (``(output, cache)``), but the
    cache is a :class:`LazyActivationCache`: the requested ``hook_pattern`` / ``hook_attn_scores`` of every
    layer that runs fused are rebuilt exactly from q, k and the log-sum-exp when first read. Layers that run
    eagerly anyway (``attn_backend='eager'``, a hook already on their pattern/scores, or ``incl_bwd=True``)
    are cached the ordinary way.
    """
    first = model_args[0] if model_args else None
    if remove_batch_dim and isinstance(first, torch.Tensor) and first.ndim > 1 and first.shape[0] != 1:
        raise InterpError(f"remove_batch_dim needs a batch of 1; the input has {model_args[0].shape[0]}")
    wanted = _as_filter(names_filter)
    lazy: dict[int, list[str]] = {}
    if not incl_bwd and _fused_backend(model, model_kwargs.get("attn_backend")):
        for layer, block in enumerate(model.blocks):
            names = [f"blocks.{layer}.attn.{h}" for h in PATTERN_HOOK_NAMES]
            names = [name for name in names if wanted(name)]
            if names and not block.attn.pattern_hooked():
                lazy[layer] = names
    lazy_names = {name for names in lazy.values() for name in names}

    def plain_filter(name: str) -> bool:
        return name not in lazy_names and wanted(name)

    pos = Slice.unwrap(pos_slice)
    # TransformerLens' run_with_cache, with the recorders attached: the caching hooks fill the plain dict in
    # execution order, and each recorder drops its layer's lazy entries into it where the eager path would
    # have cached them (after q/k/v, before hook_z), so keys() keeps the usual order.
    cache_dict, fwd_hooks, bwd_hooks = model.get_caching_hooks(
        plain_filter, incl_bwd, device, remove_batch_dim=remove_batch_dim, pos_slice=pos_slice)

    def on_record(layer: int, rec: RecordedAttention) -> None:
        queries = None if pos.mode == "identity" else torch.as_tensor(pos.indices(rec.q.shape[2]))
        for name in lazy[layer]:
            kind = "scores" if name.endswith("hook_attn_scores") else "pattern"
            cache_dict[name] = LazyAttention(rec, kind, queries=queries,
                                             squeeze_batch=remove_batch_dim and rec.q.shape[0] == 1)

    recorders = _Recorders(model, lazy, device=device, on_record=on_record)
    hooks = model.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, reset_hooks_end=reset_hooks_end,
                        clear_contexts=clear_contexts)
    with recorders, hooks:
        out = model(*model_args, **model_kwargs)
        if incl_bwd:
            out.backward()
    missing = sorted(set(lazy) - set(recorders.recorded))
    if missing:
        raise InterpError(
            f"layers {missing} did not run fused, so their patterns were not recorded; "
            "call run_with_cache with attn_backend='eager' to cache them materialised")
    return out, LazyActivationCache(LazyCacheDict(cache_dict), model, has_batch_dim=not remove_batch_dim)


@torch.no_grad()
def attention_rows(model, tokens, layer: int, head: int, queries=-1, batch: int = 0,
                   attn_backend: str | None = None) -> torch.Tensor:
    """Full attention rows of one head at chosen query positions, without any [n, n] tensor.

    Runs the model fused up to ``layer`` only (the forward stops there), keeps that layer's rotated q, k and
    log-sum-exp, and rebuilds just the asked rows. Returns [len(queries), n_key] (or [n_key] for an int
    ``queries``), exactly the rows of ``blocks.{layer}.attn.hook_pattern`` the eager path would produce.
    Memory: O(n * d) for q and k plus the rows themselves; an 8k-token context runs on a CPU.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise InterpError(f"layer must be an int in [-{n_layers}, {n_layers - 1}]; got {layer!r}")
    if not isinstance(head, int) or not -n_heads <= head < n_heads:
        raise InterpError(f"head must be an int in [-{n_heads}, {n_heads - 1}]; got {head!r}")
    layer, head = layer % n_layers, head % n_heads
    if model.blocks[layer].attn.pattern_hooked():
        raise InterpError(
            f"blocks.{layer}.attn.hook_pattern/hook_attn_scores have hooks attached, which force the eager "
            "path (an n x n pattern); remove them (model.reset_hooks()) to use attention_rows")
    backend = attn_backend or model.cfg.attn_backend
    if backend == "eager":
        backend = "auto"  # the rows are exact either way; the fused path is the one that keeps memory O(n)
    with _Recorders(model, [layer], stop_after=layer) as recorders:
        try:
            model(tokens, return_type=None, attn_backend=backend)
        except _StopForward:
            pass
    rec = recorders.recorded[layer]
    batch_idx = _indices(batch, rec.q.shape[0], "batch")
    if batch_idx.numel() != 1:
        raise InterpError(f"batch must be a single int; got {batch!r}")
    rec = rec.batch_slice(slice(int(batch_idx), int(batch_idx) + 1))
    rows = attention_from_qk(rec, heads=[head], queries=queries)[0, 0]
    return rows[0] if isinstance(queries, int) else rows


def n_by_n_tensors(cache: LazyActivationCache, n: int) -> list[tuple[int, ...]]:
    """Shapes of tensors in ``cache`` whose last two dims are both ``n`` (what a materialised pattern has)."""
    tensors = cache.cache_dict.stored_tensors()
    return [tuple(t.shape) for t in tensors if t.dim() >= 2 and tuple(t.shape[-2:]) == (n, n)]


__all__ = [
    "LazyActivationCache",
    "LazyAttention",
    "LazyCacheDict",
    "RecordedAttention",
    "attention_from_qk",
    "attention_rows",
    "n_by_n_tensors",
    "run_with_lazy_cache",
]

