"""Causal analysis: activation patching, ablations, path patching, attribution patching and direct
logit attribution (DLA) by component.

Caching activations says what a model computes; intervening on them says what *matters*.

* **Metrics** are functions of the logits returning one value per batch element: ``logit_diff``
  (answer minus wrong answer), ``log_prob`` of a target, ``kl`` from the clean output; and
  ``normalised(value, clean, corrupted)`` maps 0 to the corrupted run and 1 to the clean run.
* **Activation patching** runs the corrupted prompt with one activation (a cell: layer × position,
  layer × head, a neuron, ...) replaced by its value on the clean prompt. Cells are **batched**: ``k``
  patched copies of the corrupted batch go through one forward pass, copy ``c`` patched at cell ``c``.
  Each pass starts at the lowest patched layer from the corrupted run's cached residual stream, and, when
  every cell of the pass names a position, at the lowest patched position with the corrupted run's keys
  and values as a KV cache (the model is causal, so nothing before a patch can change). Only the
  positions the metric reads go through the unembedding. The numbers equal TransformerLens'
  ``transformer_lens.patching`` sweeps (tests/test_causal.py) at a fraction of the forward passes.
* **Ablations** are the same sweep with another source: zeros, the mean over a reference batch, or
  the activation on a resampled reference prompt. ``path_patching`` patches one component's output
  only along its direct path into one later component (a head's q/k/v input, an MLP, or the logits).
* **Attribution patching** (Nanda 2023) estimates every cell's patching effect from one clean forward
  and one corrupted forward + backward: ``(clean - corrupted) · ∂metric/∂activation``.
* **Direct logit attribution** splits the final residual stream into embeddings, each head
  (``z @ W_O``), each attention-output bias, each MLP layer and the final norm's bias, reads each
  through the linear part of the final norm and the unembedding (the cached ``ln_final.hook_scale`` is
  the data-dependent part, as ``interp.analysis.neurons`` does for neurons), so the components sum to
  the logit (or logit difference). ``centered=True`` judges a token against the vocabulary mean.

Every function returns a long-form DataFrame (``layer``, ``position``, ``head``, ``neuron`` where they
apply, then the numbers). With several prompt pairs and a per-example metric, each cell also gets the
mean's bootstrap interval (``ci_low``, ``ci_high``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from interp.analysis._inputs import (
    _is_int_like,
    as_tokens,
    check_index,
    model_device,
    str_tokens,
    text_lengths,
)
from interp.analysis.neurons import _single_token_id, _W_out, final_norm_map
from interp.errors import InterpError
from interp.model.attention import KVCache

__all__ = [
    "ablation",
    "activation_patching",
    "attribution_patching",
    "direct_logit_attribution",
    "kl",
    "log_prob",
    "logit_diff",
    "make_metric",
    "normalised",
    "path_patching",
    "repeated_text_pair",
]

# ----------------------------------------------------------------------------------------------------
# metrics: functions of the logits [batch, pos, vocab] -> [batch]


def _token_ids(model, value, batch: int, name: str) -> torch.Tensor:
    """One token id per batch element from an id, a single-token string, or a list of either."""
    vals = list(value) if isinstance(value, (list, tuple)) else [value] * batch
    if len(vals) != batch:
        raise InterpError(f"{name}: expected one token or one per prompt pair ({batch}); given {len(vals)}")
    ids = []
    for v in vals:
        if isinstance(v, str):
            try:
                ids.append(_single_token_id(model, v))
            except InterpError as e:
                raise InterpError(f"{name}: {str(e).split(': ', 1)[-1]}") from None
        elif _is_int_like(v):
            ids.append(check_index(name, v, int(model.cfg.d_vocab), allow_negative=False))
        else:
            raise InterpError(f"{name}: expected a token id or a single-token string; given {v!r}")
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class Metric:
    """A metric that reads one position: ``metric(logits [batch, pos, vocab]) -> [batch]``.

    ``at(logits [batch, vocab])`` is the same number from the logits of that position alone, which
    lets the patching sweeps unembed only that position.
    """

    kind: str  # "logit_diff" | "log_prob" | "kl"
    position: int
    answer: torch.Tensor | None = None  # [batch] token ids
    wrong: torch.Tensor | None = None
    clean_log_probs: torch.Tensor | None = None  # [batch, vocab] (kl)

    def at(self, logits: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        if self.kind == "kl":
            ref = self.clean_log_probs.to(logits.device)
            ref = ref.repeat(n // ref.shape[0], 1)
            lp = logits.double().log_softmax(-1)
            return (ref.exp() * (ref - lp)).sum(-1)
        ans = self.answer.to(logits.device).repeat(n // self.answer.shape[0])
        rows = torch.arange(n, device=logits.device)
        if self.kind == "log_prob":
            return logits.double().log_softmax(-1)[rows, ans]
        wrong = self.wrong.to(logits.device).repeat(n // self.wrong.shape[0])
        return logits[rows, ans].double() - logits[rows, wrong].double()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.at(logits[:, self.position])


def logit_diff(logits: torch.Tensor, answer, wrong, position: int = -1) -> torch.Tensor:
    """``logits[b, position, answer[b]] - logits[b, position, wrong[b]]`` (float64, ``[batch]``).

    >>> logit_diff(torch.tensor([[[0.0, 2.0, 0.5]]]), 1, 2)
    tensor([1.5000], dtype=torch.float64)
    """
    b = logits.shape[0]
    return Metric("logit_diff", position, torch.as_tensor(answer).expand(b), torch.as_tensor(wrong).expand(b))(logits)


def log_prob(logits: torch.Tensor, target, position: int = -1) -> torch.Tensor:
    """Log-probability of ``target[b]`` at ``position`` (float64, ``[batch]``)."""
    return Metric("log_prob", position, torch.as_tensor(target).expand(logits.shape[0]))(logits)


def kl(logits: torch.Tensor, clean_logits: torch.Tensor, position: int = -1) -> torch.Tensor:
    """``KL(clean || patched)`` of the next-token distributions at ``position`` (``[batch]``; 0 = clean)."""
    return Metric("kl", position, clean_log_probs=clean_logits[:, position].double().log_softmax(-1))(logits)


def normalised(value, clean, corrupted):
    """``(value - corrupted) / (clean - corrupted)``: 0 = the corrupted run, 1 = the clean run."""
    return (value - corrupted) / (clean - corrupted)


def make_metric(model, metric="logit_diff", *, answer=None, wrong=None, position: int = -1, clean_logits=None,
                batch: int = 1) -> Callable:
    """A metric callable from a name (``"logit_diff"``, ``"log_prob"``, ``"kl"``) and its arguments.

    ``answer`` / ``wrong``: token ids or single-token strings, one for all prompt pairs or one per pair.
    A callable ``metric`` is returned unchanged: it gets logits ``[batch, pos, vocab]`` and returns a
    scalar or one value per batch element.
    """
    if callable(metric) and not isinstance(metric, str):
        return metric
    if metric not in ("logit_diff", "log_prob", "kl"):
        raise InterpError(f"metric: must be a callable or one of 'logit_diff', 'log_prob', 'kl'; given {metric!r}")
    if metric == "kl":
        if clean_logits is None:
            raise InterpError("metric='kl' needs clean_logits (the clean run's logits [batch, pos, vocab])")
        return Metric("kl", position, clean_log_probs=clean_logits[:, position].detach().double().log_softmax(-1))
    if answer is None:
        raise InterpError(f"answer: metric={metric!r} needs the answer token (a string or an id); given None")
    ans = _token_ids(model, answer, batch, "answer")
    if metric == "log_prob":
        return Metric("log_prob", position, ans)
    if wrong is None:
        raise InterpError("wrong: metric='logit_diff' needs the wrong answer token (a string or an id); given None")
    return Metric("logit_diff", position, ans, _token_ids(model, wrong, batch, "wrong"))


# ----------------------------------------------------------------------------------------------------
# where: which activation, and which of its axes a cell addresses


@dataclass(frozen=True)
class _Site:
    hook: str  # format string with {layer}
    axes: dict  # cell column -> activation axis (batch is axis 0)
    pos_axis: int  # the activation's position (query) axis


_SITES = {
    **{w: _Site(f"blocks.{{layer}}.hook_{w}", {"position": 1}, 1)
       for w in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")},
    **{w: _Site(f"blocks.{{layer}}.attn.hook_{w}", {"position": 1, "head": 2}, 1) for w in ("z", "q", "k", "v")},
    "pattern": _Site("blocks.{layer}.attn.hook_pattern", {"head": 1, "position": 2}, 2),
    "post": _Site("blocks.{layer}.mlp.hook_post", {"position": 1, "neuron": 2}, 1),
}
WHERE = tuple(_SITES)


def _site(where: str) -> _Site:
    if where not in _SITES:
        raise InterpError(f"where: must be one of {list(_SITES)} (TransformerLens hook suffixes); given {where!r}")
    return _SITES[where]


def _layer_list(model, layers) -> list[int]:
    n = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n))
    if _is_int_like(layers):
        return [check_index("layers", layers, n)]
    return sorted({check_index("layers", v, n) for v in layers})


def _cells(model, where: str, n_pos: int, by_position: bool, layers, neurons, positions=None) -> pd.DataFrame:
    """Every cell of a sweep as a DataFrame (layer first, as TransformerLens orders its grids); ``positions``
    (with ``by_position``) keeps only those positions, e.g. the few that matter in a long prompt."""
    cfg = model.cfg
    if positions is not None and by_position:
        positions = sorted({check_index("positions", int(p), n_pos) for p in positions})
        if not positions:
            raise InterpError("positions: give at least one position to patch; given none")
    else:
        positions = list(range(n_pos)) if by_position else [None]
    rows = []
    if where == "post":
        if neurons is None:
            raise InterpError("neurons: where='post' patches single MLP neurons; give neurons=[(layer, neuron), ...]")
        pairs = []
        for item in neurons:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise InterpError(f"neurons: expected (layer, neuron) pairs; given {item!r}")
            pairs.append((check_index("neurons layer", item[0], cfg.n_layers),
                          check_index("neurons neuron", item[1], cfg.d_mlp)))
        rows = [{"layer": lay, "neuron": nrn, "position": p} for lay, nrn in pairs for p in positions]
    elif "head" in _SITES[where].axes:
        n_heads = cfg.n_kv_heads if where in ("k", "v") else cfg.n_heads
        rows = [{"layer": lay, "head": h, "position": p}
                for lay in _layer_list(model, layers) for h in range(n_heads) for p in positions]
    else:
        rows = [{"layer": lay, "position": p} for lay in _layer_list(model, layers) for p in positions]
    df = pd.DataFrame(rows)
    return df.drop(columns="position") if not by_position else df


# ----------------------------------------------------------------------------------------------------
# the batched engine


def _memory_per_copy(model, batch: int, n_pos: int, where: str) -> int:
    """Rough bytes one patched copy of the batch needs in a forward pass (activations + logits)."""
    cfg = model.cfg
    width = 6 * cfg.d_model + 2 * cfg.d_mlp + cfg.d_vocab + (2 * cfg.n_heads * n_pos if where == "pattern" else 0)
    return batch * n_pos * width * torch.finfo(cfg.torch_dtype).bits // 8


def _choose_k(model, n_cells, batch, n_pos, where, batch_size, memory_budget) -> int:
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InterpError(f"batch_size: patched copies per forward pass must be an int >= 1; given {batch_size!r}")
        return min(batch_size, max(n_cells, 1))
    if not isinstance(memory_budget, (int, float)) or memory_budget <= 0:
        raise InterpError(f"memory_budget: bytes per forward pass must be > 0; given {memory_budget!r}")
    return max(1, min(n_cells, int(memory_budget // _memory_per_copy(model, batch, n_pos, where))))


def _kv_names(model, layer: int) -> tuple[str, str]:
    k = "hook_rot_k" if model.cfg.positional == "rotary" else "hook_k"
    return f"blocks.{layer}.attn.{k}", f"blocks.{layer}.attn.hook_v"


class _Runner:
    """Runs ``k`` copies of the corrupted batch from a layer and position on, with patches applied.

    Holds the corrupted run's residual stream (``hook_resid_pre`` of every layer), keys and values, and
    full logits; a pass starting at layer ``l0`` and position ``p0`` feeds the cached ``resid_pre[l0]``
    at positions ``p0:`` into blocks ``l0..``, with the cached keys/values of positions ``< p0`` as the
    attention's KV cache (exactly what the full corrupted forward computes there).
    """

    def __init__(self, model, corrupted: torch.Tensor, metric):
        self.model, self.tokens, self.metric = model, corrupted, metric
        cfg = model.cfg
        # a universal-path model runs HF's forward, which cannot start at a layer: every pass is a full one
        self.full_passes = getattr(cfg, "path", "native") == "universal"
        names = {f"blocks.{layer}.hook_resid_pre" for layer in range(cfg.n_layers)}
        if self.full_passes:
            names = set()
        else:
            names |= {n for layer in range(cfg.n_layers) for n in _kv_names(model, layer)}
        with torch.no_grad():
            self.logits, cache = model.run_with_cache(corrupted, names_filter=lambda n: n in names)
        self.cache = {n: cache[n] for n in names}
        self.batch, self.n_pos = corrupted.shape
        pos = getattr(metric, "position", None)  # a Metric reads one position: only that one is unembedded
        self.metric_pos = None if pos is None else check_index("position", pos, self.n_pos)

    def start(self, p0: int) -> int:
        """The first position a pass must compute when its earliest patch is at ``p0``."""
        if self.full_passes:
            return 0
        return p0 if self.metric_pos is None else min(p0, self.metric_pos)

    def run(self, k: int, l0: int, p0: int, fwd_hooks) -> torch.Tensor:
        """Metric values ``[k, batch]`` (or ``[k]`` for a scalar metric) of ``k`` patched copies,
        computing positions ``p0:`` (``p0`` from :meth:`start`) of blocks ``l0:``."""
        model, B = self.model, self.batch
        if self.full_passes:
            with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
                logits = model(self.tokens.repeat(k, 1))
            if self.metric_pos is not None:
                return self.metric.at(logits[:, self.metric_pos]).reshape(k, B)
            return torch.stack([torch.as_tensor(self.metric(c)).detach() for c in logits.split(B)]).double()
        x = self.cache[f"blocks.{l0}.hook_resid_pre"][:, p0:].repeat(k, 1, 1)
        positions = torch.arange(p0, self.n_pos, device=x.device)
        kv = None
        if p0 > 0:
            kv = KVCache(model.cfg.n_layers)
            for layer in range(l0, model.cfg.n_layers):
                kn, vn = _kv_names(model, layer)
                kv.keys[layer] = self.cache[kn][:, :p0].repeat(k, 1, 1, 1)
                kv.values[layer] = self.cache[vn][:, :p0].repeat(k, 1, 1, 1)
        with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
            for block in model.blocks[l0:]:
                x = block(x, positions, kv)
            if self.metric_pos is not None:  # unembed only the position the metric reads
                x = x[:, self.metric_pos - p0]
            if model.cfg.final_norm:
                x = model.ln_final(x)
            logits = model.unembed(x)
        if self.metric_pos is not None:
            vals = self.metric.at(logits)
            return vals.reshape(k, B)
        if p0 > 0:
            logits = torch.cat([self.logits[:, :p0].repeat(k, 1, 1), logits], dim=1)
        out = [torch.as_tensor(self.metric(chunk)).detach() for chunk in logits.split(B)]
        return torch.stack(out).double()


def _patch_hook(rows: torch.Tensor, index: list, source: torch.Tensor, k: int, batch: int, pos_axis: int, p0: int):
    """A hook writing ``source`` into the rows of copies ``rows`` at the per-copy ``index`` of each axis."""

    def hook(act, hook):
        view = act.unflatten(0, (k, batch))  # [copy, batch, ...] (a view: writes land in act)
        src = source
        if p0 and src.shape[pos_axis] > 1:
            src = src.narrow(pos_axis, p0, src.shape[pos_axis] - p0)
        src = src.to(act.dtype).expand(batch, *act.shape[1:]).unsqueeze(0).expand(k, batch, *act.shape[1:])
        idx = (rows, slice(None), *index)
        view[idx] = src[idx]
        return act

    return hook


def _sweep(model, runner: _Runner, where: str, cells: pd.DataFrame, source_of: Callable[[int], torch.Tensor],
           k: int) -> torch.Tensor:
    """Metric values ``[n_cells, batch]`` (or ``[n_cells]``): each cell patched from ``source_of(layer)``."""
    site = _SITES[where]
    cols = {c: torch.tensor(cells[c].to_numpy(), dtype=torch.long) if c in cells else None
            for c in ("layer", "position", "head", "neuron")}
    has_pos = cols["position"] is not None
    out = []
    dev = model_device(model)
    # A pass holds at most k cells of one layer: it starts at that layer, so mixing in cells of a later
    # layer would recompute the layers between for them (and a pass from layer 0 would redo everything).
    bounds = [0] + [i for i in range(1, len(cells)) if cols["layer"][i] != cols["layer"][i - 1]] + [len(cells)]
    passes = [slice(s, min(s + k, b)) for a, b in itertools.pairwise(bounds) for s in range(a, b, k)]
    for sl in passes:
        n = sl.stop - sl.start
        layer = cols["layer"][sl]
        p0 = runner.start(int(cols["position"][sl].min())) if has_pos else 0
        hooks = []
        for lay in layer.unique().tolist():
            rows = (layer == lay).nonzero().flatten()
            index = [slice(None)] * (max(site.axes.values()))
            for col, axis in site.axes.items():
                if cols.get(col) is not None:
                    v = cols[col][sl][rows]
                    index[axis - 1] = (v - p0 if col == "position" else v).to(dev)
            hooks.append((site.hook.format(layer=lay),
                          _patch_hook(rows.to(dev), index, source_of(lay), n, runner.batch, site.pos_axis, p0)))
        out.append(runner.run(n, int(layer.min()), p0, hooks))
    return torch.cat(out)


def _frame(model, cells: pd.DataFrame, values: torch.Tensor, clean_value, corrupted_value, tokens, column="effect",
           bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Long-form result: the cells, ``token`` at each position, the mean value, normalised, interval."""
    df = cells.copy()
    if "position" in df:
        strs = str_tokens(model, tokens[0])
        df["token"] = [strs[p] for p in df.position]
    per_example = values.ndim == 2
    mean = values.mean(-1) if per_example else values
    df[column] = mean.cpu().numpy()
    if clean_value is not None:
        c, r = float(torch.as_tensor(clean_value).double().mean()), float(torch.as_tensor(corrupted_value).double().mean())
        df["normalised"] = normalised(df[column], c, r) if c != r else float("nan")
        df.attrs.update(clean=c, corrupted=r)
    if per_example and values.shape[1] > 1 and bootstrap:
        low, high = bootstrap_interval(values.cpu(), bootstrap, seed, "causal")
        df["ci_low"], df["ci_high"] = low.numpy(), high.numpy()
    return df.reset_index(drop=True)


def bootstrap_interval(values: torch.Tensor, n_resamples: int, seed: int, label: str, confidence: float = 0.95,
                       chunk: int = 256):
    """95 % percentile-bootstrap interval of the mean over the last axis of ``values`` [..., n].

    TransformerLens 4's ``bootstrap_ci`` with its ``derive_generator(seed, label)`` where installed; under TL 3
    (which has neither) the same procedure here, drawing the same resamples: a CPU generator seeded from
    SHA-256 of ``"seed:label"``, ``chunk`` resamples of n indices at a time, percentiles of the means.
    """
    try:
        from transformer_lens.utilities.statistics import bootstrap_ci, derive_generator
    except ImportError:  # TransformerLens 3.x
        pass
    else:
        return bootstrap_ci(values, n_resamples=n_resamples, generator=derive_generator(seed, label),
                            confidence=confidence, chunk_size=chunk)
    import hashlib

    digest = hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8]
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    n = values.shape[-1]
    means = [values[..., torch.randint(0, n, (min(chunk, n_resamples - start), n), generator=generator)].mean(-1)
             for start in range(0, n_resamples, chunk)]
    draws = torch.cat(means, dim=-1).to(torch.promote_types(values.dtype, torch.float32))
    tail = (1.0 - confidence) / 2.0
    low, high = torch.quantile(draws, tail, dim=-1), torch.quantile(draws, 1.0 - tail, dim=-1)
    return low.to(values.dtype), high.to(values.dtype)


def _pair(model, clean, corrupted):
    c = as_tokens(model, clean, name="clean")
    r = as_tokens(model, corrupted, name="corrupted")
    for name, given, toks in (("clean", clean, c), ("corrupted", corrupted, r)):
        lengths = set(text_lengths(model, given, toks))
        if len(lengths) > 1:  # right-padding would move the metric's position off the text
            raise InterpError(f"{name}: every prompt of a batch must have the same number of tokens (positions "
                              f"line up across pairs); given lengths {sorted(lengths)}")
    if c.shape != r.shape:
        raise InterpError(
            f"corrupted: must have the clean prompt's shape {tuple(c.shape)} (same batch and token count, so "
            f"positions line up); given {tuple(r.shape)}"
        )
    return c, r


def _metric_values(metric, logits) -> torch.Tensor:
    return torch.as_tensor(metric(logits)).detach().double()


@torch.no_grad()
def activation_patching(model, clean, corrupted, metric="logit_diff", where: str = "resid_pre", *,
                        answer=None, wrong=None, position: int = -1, by_position: bool = True, layers=None,
                        neurons=None, positions=None, batch_size: int | None = None, memory_budget: float = 2**30,
                        bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Patch each cell of ``where`` from the clean run into the corrupted run; the metric on each.

    ``positions`` (with ``by_position``): patch only these positions (default every one); on a long prompt,
    choose them with :func:`attribution_patching`, which estimates every position in one backward pass.

    ``where`` is a TransformerLens hook suffix: ``resid_pre``, ``resid_mid``, ``resid_post``,
    ``attn_out``, ``mlp_out`` (cells: layer × position), ``z``/``q``/``k``/``v`` (layer × head ×
    position; ``by_position=False``: layer × head at every position at once), ``pattern`` (layer ×
    head × destination position, or layer × head) and ``post`` (the MLP neurons ``neurons=[(layer,
    neuron), ...]``, per position or at every position). ``metric``: a name (``logit_diff`` with
    ``answer``/``wrong``, ``log_prob`` with ``answer``, ``kl``) read at ``position``, or a callable of
    the logits ``[batch, pos, vocab]`` returning a scalar or one value per prompt pair.

    ``clean`` / ``corrupted``: prompts or token ids of the same shape; several rows are several prompt
    pairs. ``batch_size`` patched copies of the corrupted batch run per forward pass (default: as many
    as ``memory_budget`` bytes allow).

    Returns columns ``layer, [head | neuron], [position, token], effect, normalised`` (+ ``ci_low,
    ci_high`` over several pairs); ``effect`` is the metric on the patched run (mean over pairs) and
    ``normalised`` is 0 at the corrupted run and 1 at the clean run (``df.attrs``: ``clean``,
    ``corrupted``).

    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=2, n_heads=2)).eval()
    >>> df = activation_patching(m, [[1, 2, 3]], [[1, 4, 3]], answer=5, wrong=6)
    >>> df.columns.tolist(), len(df)
    (['layer', 'position', 'token', 'effect', 'normalised'], 6)
    """
    site = _site(where)
    if where == "resid_mid" and getattr(model.cfg, "parallel_residual", False):
        raise InterpError("where: a parallel-residual model (GPT-NeoX) has no resid_mid; given 'resid_mid'")
    c, r = _pair(model, clean, corrupted)
    clean_logits, clean_cache = model.run_with_cache(
        c, names_filter=lambda n: n.endswith("hook_" + where) and n.startswith("blocks."))
    metric = make_metric(model, metric, answer=answer, wrong=wrong, position=position, clean_logits=clean_logits,
                         batch=c.shape[0])
    cells = _cells(model, where, c.shape[1], by_position, layers, neurons, positions)
    runner = _Runner(model, r, metric)
    k = _choose_k(model, len(cells), c.shape[0], c.shape[1], where, batch_size, memory_budget)
    values = _sweep(model, runner, where, cells, lambda lay: clean_cache[site.hook.format(layer=lay)], k)
    df = _frame(model, cells, values, _metric_values(metric, clean_logits), _metric_values(metric, runner.logits),
                c, bootstrap=bootstrap, seed=seed)
    df.attrs.update(where=where, copies_per_pass=k)
    return df


# ----------------------------------------------------------------------------------------------------
# ablations: the same sweep with zeros, a reference mean or a resampled reference as the source

_ABLATE = {"heads": ("z", "head"), "mlp": ("mlp_out", None), "neurons": ("post", "neuron")}


@torch.no_grad()
def ablation(model, tokens, metric="logit_diff", what: str = "heads", method: str = "zero", *, reference=None,
             answer=None, wrong=None, position: int = -1, layers=None, neurons=None, batch_size: int | None = None,
             memory_budget: float = 2**30, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Ablate each head, MLP layer or neuron (at every position) and read the metric.

    ``what``: ``"heads"`` (``hook_z`` of one head), ``"mlp"`` (``hook_mlp_out``) or ``"neurons"``
    (``mlp.hook_post`` of one neuron; ``neurons=[(layer, neuron), ...]``, default every neuron of
    ``layers``). ``method``: ``"zero"``; ``"mean"``, the activation's mean over every token of
    ``reference`` (prompts or ids, any length); ``"resample"``, the activation on a reference prompt
    drawn (with ``seed``) for each prompt of ``tokens`` (``reference`` must have ``tokens``' length).

    Returns ``layer, [head | neuron], effect, change`` (+ ``ci_low, ci_high`` over several prompts):
    ``effect`` is the metric with the component ablated and ``change`` its difference from the intact
    run (``df.attrs["baseline"]``).
    """
    if what not in _ABLATE:
        raise InterpError(f"what: must be one of {list(_ABLATE)}; given {what!r}")
    if method not in ("zero", "mean", "resample"):
        raise InterpError(f"method: must be 'zero', 'mean' or 'resample'; given {method!r}")
    where, _ = _ABLATE[what]
    site = _SITES[where]
    toks = as_tokens(model, tokens)
    if what == "neurons" and neurons is None:
        neurons = [(lay, n) for lay in _layer_list(model, layers) for n in range(model.cfg.d_mlp)]
    logits = model(toks)
    metric = make_metric(model, metric, answer=answer, wrong=wrong, position=position, clean_logits=logits,
                         batch=toks.shape[0])
    cells = _cells(model, where, toks.shape[1], False, layers, neurons)
    names = {site.hook.format(layer=lay) for lay in cells.layer.unique()}
    if method == "zero":
        def source_of(lay):  # a zero of the activation's trailing shape, broadcast over batch and positions
            return torch.zeros(1, 1, *_trailing(model, where), device=toks.device, dtype=logits.dtype)
    else:
        if reference is None:
            raise InterpError(f"reference: method={method!r} needs reference prompts or token ids; given None")
        ref = as_tokens(model, reference, name="reference")
        _, ref_cache = model.run_with_cache(ref, names_filter=lambda n: n in names)
        if method == "mean":
            def source_of(lay):
                return ref_cache[site.hook.format(layer=lay)].mean((0, 1), keepdim=True)
        else:
            if ref.shape[1] != toks.shape[1]:
                raise InterpError(f"reference: resample ablation needs prompts of the same length as tokens "
                                  f"({toks.shape[1]} tokens); given {ref.shape[1]}")
            gen = torch.Generator().manual_seed(seed)
            pick = torch.randint(0, ref.shape[0], (toks.shape[0],), generator=gen).to(toks.device)

            def source_of(lay):
                return ref_cache[site.hook.format(layer=lay)][pick]
    runner = _Runner(model, toks, metric)
    k = _choose_k(model, len(cells), toks.shape[0], toks.shape[1], where, batch_size, memory_budget)
    values = _sweep(model, runner, where, cells, source_of, k)
    base = _metric_values(metric, logits)
    df = _frame(model, cells, values, None, None, toks, bootstrap=bootstrap, seed=seed)
    df.insert(df.columns.get_loc("effect") + 1, "change", df.effect - float(base.mean()))
    df.attrs.update(baseline=float(base.mean()), what=what, method=method, copies_per_pass=k)
    return df


def _trailing(model, where: str) -> tuple[int, ...]:
    cfg = model.cfg
    return {"z": (cfg.n_heads, cfg.d_head), "mlp_out": (cfg.d_model,), "post": (cfg.d_mlp,)}[where]


# ----------------------------------------------------------------------------------------------------
# path patching: one component's output, only along its direct path into one later component


@dataclass(frozen=True)
class _Component:
    kind: str  # "head" | "mlp" | "logits"
    layer: int = -1
    head: int = -1
    input: str = ""  # q | k | v for a receiving head

    @property
    def name(self) -> str:
        if self.kind == "logits":
            return "logits"
        base = f"L{self.layer}H{self.head}" if self.kind == "head" else f"MLP{self.layer}"
        return base + (f".{self.input}" if self.input else "")


def _component(model, spec, name: str, receiver: bool) -> _Component:
    """Parse ``"L1H3"`` / ``"L1H3.q"`` / ``"MLP0"`` / ``"logits"`` (or ``(layer, head)``)."""
    import re

    cfg = model.cfg
    if isinstance(spec, tuple) and len(spec) == 2:
        spec = f"L{spec[0]}H{spec[1]}"
    m = re.fullmatch(r"L(\d+)H(\d+)(?:\.([qkv]))?|MLP(\d+)|logits", str(spec)) if isinstance(spec, str) else None
    if m is None or (not receiver and (spec == "logits" or m.group(3))) or (receiver and m.group(2) and not m.group(3)):
        want = "'L{layer}H{head}.q|k|v', 'MLP{layer}' or 'logits'" if receiver else "'L{layer}H{head}' or 'MLP{layer}'"
        raise InterpError(f"{name}: expected {want}; given {spec!r}")
    if spec == "logits":
        return _Component("logits", cfg.n_layers)
    if m.group(4) is not None:
        return _Component("mlp", check_index(f"{name} layer", int(m.group(4)), cfg.n_layers))
    return _Component("head", check_index(f"{name} layer", int(m.group(1)), cfg.n_layers),
                      check_index(f"{name} head", int(m.group(2)), cfg.n_heads), m.group(3) or "")


def _output(model, cache, comp: _Component) -> torch.Tensor:
    """What a component writes into the residual stream at every position ``[batch, pos, d_model]``."""
    if comp.kind == "mlp":
        return cache[f"blocks.{comp.layer}.hook_mlp_out"]
    z = cache[f"blocks.{comp.layer}.attn.hook_z"][:, :, comp.head]
    return z @ model.blocks[comp.layer].attn.W_O[comp.head]


def _reads_after(model, sender: _Component, receiver: _Component) -> bool:
    """True when ``receiver`` reads the residual stream after ``sender`` has written to it."""
    if receiver.kind == "logits":
        return True
    if receiver.kind == "head" or model.cfg.parallel_residual or sender.kind == "mlp":
        return sender.layer < receiver.layer
    return sender.layer <= receiver.layer  # a head feeds its own layer's MLP (sequential residual)


def _receiver_hook(model, receiver: _Component, resid_in: torch.Tensor):
    """A hook replacing the receiver's output by its value on input ``resid_in`` (the path-patched stream)."""
    block = model.blocks[min(receiver.layer, model.cfg.n_layers - 1)]
    if receiver.kind == "logits":
        return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", lambda act, hook: resid_in.to(act.dtype)
    if receiver.kind == "mlp":
        return f"blocks.{receiver.layer}.hook_mlp_out", lambda act, hook: block.mlp(block.ln2(resid_in)).to(act.dtype)
    attn = block.attn
    comp = receiver.input
    head = receiver.head if comp == "q" else receiver.head // attn.group

    def hook(act, hook):
        W, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K), "v": (attn.W_V, attn.b_V)}[comp]
        x = block.ln1(resid_in)
        new = x @ W[head] + (0 if b is None else b[head])
        act = act.clone()
        act[:, :, head] = new.to(act.dtype)
        return act

    return f"blocks.{receiver.layer}.attn.hook_{comp}", hook


def _default_receivers(model, sender: _Component) -> list[_Component]:
    cfg = model.cfg
    out = []
    for lay in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            for comp in "qkv":
                out.append(_Component("head", lay, h, comp))
        out.append(_Component("mlp", lay))
    out.append(_Component("logits", cfg.n_layers))
    return [r for r in out if _reads_after(model, sender, r)]


@torch.no_grad()
def path_patching(model, clean, corrupted, sender, receivers=None, metric="logit_diff", *, answer=None,
                  wrong=None, position: int = -1) -> pd.DataFrame:
    """Patch ``sender``'s clean output into the corrupted run along its direct path to each receiver only.

    ``sender``: ``"L{layer}H{head}"`` (the head's ``z @ W_O``) or ``"MLP{layer}"``. ``receivers``: a
    list of ``"L{layer}H{head}.q|k|v"`` (that head's query, key or value input), ``"MLP{layer}"`` or
    ``"logits"`` (the direct path to the unembedding); default every component that reads the stream
    after the sender. For each receiver, the corrupted run is repeated with the receiver's input
    replaced by ``corrupted resid + (sender_clean - sender_corrupted)`` and everything else left
    corrupted (Wang et al. 2022's path patching of one edge). Pre-norm models only. With GQA a key or
    value receiver patches the key/value head its query head reads (shared by its group).

    Returns ``sender, receiver, effect, normalised`` (``df.attrs``: ``clean``, ``corrupted``).
    """
    if getattr(model.cfg, "norm_placement", "pre") != "pre":
        raise InterpError("model: path patching needs a pre-norm model (the residual stream is a sum of "
                          f"component outputs); given norm_placement={model.cfg.norm_placement!r}")
    src = _component(model, sender, "sender", receiver=False)
    recs = (_default_receivers(model, src) if receivers is None else
            [_component(model, r, "receivers", receiver=True) for r in
             ([receivers] if isinstance(receivers, (str, tuple)) else receivers)])
    for r in recs:
        if not _reads_after(model, src, r):
            raise InterpError(f"receivers: {r.name} does not read the residual stream after {src.name} writes it")
    c, r_toks = _pair(model, clean, corrupted)
    clean_logits, clean_cache = model.run_with_cache(c)
    corr_logits, corr_cache = model.run_with_cache(r_toks)
    metric = make_metric(model, metric, answer=answer, wrong=wrong, position=position, clean_logits=clean_logits,
                         batch=c.shape[0])
    delta = _output(model, clean_cache, src) - _output(model, corr_cache, src)
    rows = []
    for rec in recs:
        if rec.kind == "logits":
            stream = corr_cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
        elif rec.kind == "mlp" and not model.cfg.parallel_residual:
            stream = corr_cache[f"blocks.{rec.layer}.hook_resid_mid"]
        else:
            stream = corr_cache[f"blocks.{rec.layer}.hook_resid_pre"]
        name, hook = _receiver_hook(model, rec, stream + delta)
        logits = model.run_with_hooks(r_toks, fwd_hooks=[(name, hook)])
        rows.append({"sender": src.name, "receiver": rec.name, "effect": float(_metric_values(metric, logits).mean())})
    df = pd.DataFrame(rows)
    cv, rv = float(_metric_values(metric, clean_logits).mean()), float(_metric_values(metric, corr_logits).mean())
    df["normalised"] = normalised(df.effect, cv, rv) if cv != rv else float("nan")
    df.attrs.update(clean=cv, corrupted=rv)
    return df


# ----------------------------------------------------------------------------------------------------
# attribution patching: a first-order estimate of every cell from one forward + backward pair


def attribution_patching(model, clean, corrupted, metric="logit_diff", where: str = "resid_pre", *, answer=None,
                         wrong=None, position: int = -1, by_position: bool = True, layers=None, neurons=None,
                         positions=None, exact: bool = False, batch_size: int | None = None,
                         memory_budget: float = 2**30, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Estimate every cell's patching effect as ``(clean - corrupted) · ∂metric/∂activation``.

    One clean forward and one corrupted forward + backward cover the whole sweep (same cells and
    arguments as :func:`activation_patching`). Returns the cells with ``attribution`` (the estimated
    change of the metric from the corrupted run) and ``normalised`` (``attribution / (clean -
    corrupted)``). ``exact=True`` also runs :func:`activation_patching` and adds ``effect``,
    ``exact_change`` and, in ``df.attrs``, the ``pearson`` and ``spearman`` correlations between the
    estimate and the exact change.
    """
    site = _site(where)
    c, r = _pair(model, clean, corrupted)
    cells = _cells(model, where, c.shape[1], by_position, layers, neurons, positions)
    names = [site.hook.format(layer=lay) for lay in sorted(cells.layer.unique())]
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(c, names_filter=lambda n: n in names)
    metric_fn = make_metric(model, metric, answer=answer, wrong=wrong, position=position, clean_logits=clean_logits,
                            batch=c.shape[0])
    acts = {}

    def keep(act, hook):
        acts[hook.name] = act

    with torch.enable_grad():
        logits = model.run_with_hooks(r, fwd_hooks=[(n, keep) for n in names])
        m = torch.as_tensor(metric_fn(logits))
        grads = torch.autograd.grad(m.sum(), [acts[n] for n in names], allow_unused=True)
    grad = dict(zip(names, grads))
    B = c.shape[0]
    per = {}
    for n in names:
        g = grad[n] if grad[n] is not None else torch.zeros_like(acts[n])
        per[n] = ((clean_cache[n].double() - acts[n].detach().double()) * g.double())
    values = []
    for row in cells.itertuples(index=False):
        t = per[site.hook.format(layer=row.layer)]
        idx = [slice(None)] * max(site.axes.values())
        for col, axis in site.axes.items():
            if hasattr(row, col):
                idx[axis - 1] = getattr(row, col)
        v = t[(slice(None), *idx)].reshape(B, -1).sum(-1)
        values.append(v if m.ndim else v.sum())
    values = torch.stack(values)
    df = _frame(model, cells, values, _metric_values(metric_fn, clean_logits.detach()),
                _metric_values(metric_fn, logits.detach()), c, column="attribution", bootstrap=bootstrap, seed=seed)
    df["normalised"] = df.attribution / (df.attrs["clean"] - df.attrs["corrupted"])
    df.attrs.update(where=where)
    if exact:
        ex = activation_patching(model, c, r, metric_fn, where, by_position=by_position, layers=layers,
                                 neurons=neurons, positions=positions, batch_size=batch_size,
                                 memory_budget=memory_budget, bootstrap=0)
        df["effect"] = ex.effect.to_numpy()
        df["exact_change"] = df.effect - df.attrs["corrupted"]
        df.attrs.update(pearson=float(df.attribution.corr(df.exact_change)),
                        spearman=float(df.attribution.corr(df.exact_change, method="spearman")))
    return df


# ----------------------------------------------------------------------------------------------------
# direct logit attribution by component


@torch.no_grad()
def direct_logit_attribution(model, tokens, answer=None, wrong=None, *, position: int = -1, centered: bool = False,
                             k_neurons: int = 10, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Split the logit of ``answer`` (minus that of ``wrong``) at ``position`` into what each component wrote.

    Components (rows with ``kind`` ``embed``, ``pos_embed``, ``head``, ``attn_bias``, ``mlp``,
    ``norm_bias``, ``unembed_bias``) sum exactly to the logit (difference): each residual component
    ``c`` contributes ``c · N(u) / scale`` with ``u`` the unembedding direction, ``N`` the linear part of
    the final norm and ``scale`` the cached ``ln_final.hook_scale`` (see ``interp.analysis.neurons``);
    the norm's bias contributes ``b · u`` and the unembedding bias ``b_U``. ``kind="neuron"`` rows are
    the ``k_neurons`` MLP neurons with the largest ``|contribution|``: a finer split of their ``mlp``
    rows, not extra terms. ``answer=None`` explains the model's prediction. ``centered=True`` replaces
    ``u`` by ``u - mean over the vocabulary`` (and ``b_U`` likewise): the logit *relative to the
    average token*, which raw logits hide (a direction can raise every token).

    Columns ``component, kind, layer, head, neuron, contribution`` (+ ``ci_low, ci_high`` over several
    prompts); ``df.attrs``: ``logit`` (the model's own value), ``total`` (sum of the components),
    ``answer``, ``wrong``.
    """
    cfg = model.cfg
    if getattr(cfg, "path", "native") == "universal":
        raise InterpError("model: direct logit attribution needs the per-head W_O and the final norm's weights, which "
                          "the universal path does not read; use activation_patching(where='attn_out'/'mlp_out') or "
                          "a native family (`interp models --families`)")
    toks = as_tokens(model, tokens)
    B, P = toks.shape
    pos = check_index("position", position, P)
    nm = final_norm_map(model)
    if not nm.decomposable:
        raise InterpError("model: direct logit attribution needs a pre-norm model (a post-norm residual stream "
                          f"is not a sum of components); given norm_placement={cfg.norm_placement!r}")
    logits, cache = model.run_with_cache(toks)
    at = logits[:, pos].double()
    ans = at.argmax(-1).cpu() if answer is None else _token_ids(model, answer, B, "answer")
    W_U = model.W_U.detach().double()
    b_U = model.b_U.detach().double()
    if centered:
        W_U, b_U, at = W_U - W_U.mean(1, keepdim=True), b_U - b_U.mean(), at - at.mean(-1, keepdim=True)
    dev = W_U.device
    u, bias, target = W_U[:, ans.to(dev)].T, b_U[ans.to(dev)], at[torch.arange(B), ans.to(at.device)]
    if wrong is not None:
        wr = _token_ids(model, wrong, B, "wrong").to(dev)
        u, bias, target = u - W_U[:, wr].T, bias - b_U[wr], target - at[torch.arange(B), wr.to(at.device)]
    d = nm.direction(u)  # [B, d_model]
    scale = cache["ln_final.hook_scale"][:, pos].double().reshape(B) if nm.has_norm else torch.ones(B, device=dev)

    def through(x):  # [B, ..., d_model] -> [B, ...] logit contribution
        return torch.einsum("b...d,bd->b...", x.double(), d) / scale.reshape(B, *[1] * (x.ndim - 2))

    rows: list[tuple] = []  # (component, kind, layer, head, neuron, values [B])
    rows.append(("embed", "embed", None, None, None, through(cache["hook_embed"][:, pos])))
    if "hook_pos_embed" in cache.cache_dict:
        rows.append(("pos_embed", "pos_embed", None, None, None, through(cache["hook_pos_embed"][:, pos])))
    neuron_rows = []
    for lay in range(cfg.n_layers):
        attn = model.blocks[lay].attn
        z = cache[f"blocks.{lay}.attn.hook_z"][:, pos].double()  # [B, H, d_head]
        heads = through(torch.einsum("bhe,hed->bhd", z, attn.W_O.detach().double()))  # [B, H]
        rows += [(f"L{lay}H{h}", "head", lay, h, None, heads[:, h]) for h in range(cfg.n_heads)]
        if attn.b_O is not None:
            rows.append((f"L{lay}.b_O", "attn_bias", lay, None, None, through(attn.b_O.detach().expand(B, -1))))
        rows.append((f"MLP{lay}", "mlp", lay, None, None, through(cache[f"blocks.{lay}.hook_mlp_out"][:, pos])))
        post = cache[f"blocks.{lay}.mlp.hook_post"][:, pos].double()  # [B, d_mlp]
        per_unit = (_W_out(model, lay).detach().double() @ d.T).T  # [B, d_mlp]
        neuron_rows.append(post * per_unit / scale[:, None])
    if nm.bias is not None:
        rows.append(("ln_final.b", "norm_bias", None, None, None, (u * nm.bias.detach().double()).sum(-1)))
    rows.append(("b_U", "unembed_bias", None, None, None, bias))
    total = torch.stack([r[-1] for r in rows]).sum(0)
    neurons = torch.stack(neuron_rows, 1)  # [B, layer, d_mlp]
    k = min(int(k_neurons), neurons[0].numel())
    if k > 0:
        top = neurons.mean(0).abs().flatten().topk(k).indices
        for i in top.tolist():
            lay, n = divmod(i, cfg.d_mlp)
            rows.append((f"L{lay}N{n}", "neuron", lay, None, n, neurons[:, lay, n]))
    values = torch.stack([r[-1] for r in rows])  # [rows, B]
    df = pd.DataFrame({"component": [r[0] for r in rows], "kind": [r[1] for r in rows],
                       "layer": pd.array([r[2] for r in rows], dtype="Int64"),
                       "head": pd.array([r[3] for r in rows], dtype="Int64"),
                       "neuron": pd.array([r[4] for r in rows], dtype="Int64")})
    out = _frame(model, df, values if B > 1 else values[:, 0], None, None, toks, column="contribution",
                 bootstrap=bootstrap, seed=seed)
    out.attrs.update(logit=float(target.mean()), total=float(total.mean()), position=pos, centered=centered,
                     answer=str_tokens(model, ans[:1])[0], wrong=None if wrong is None else
                     str_tokens(model, _token_ids(model, wrong, B, "wrong")[:1])[0])
    return out


# ----------------------------------------------------------------------------------------------------
# a prompt pair with a real mechanism in it: induction on repeated text


@dataclass
class PromptPair:
    clean: torch.Tensor  # [1, pos]
    corrupted: torch.Tensor  # [1, pos]
    answer: int
    wrong: int
    position: int  # where the first copy differs


def repeated_text_pair(model, tokens, position: int | None = None, wrong: int | None = None) -> PromptPair:
    """A clean/corrupted pair that an induction head decides: the prompt followed by its own beginning.

    ``clean = t[0..n) + t[0..j)`` predicts ``t[j]`` by copying what followed ``t[j-1]`` the first time;
    ``corrupted`` is the same with ``t[j]`` of the first copy replaced by ``wrong`` (default: the first
    prompt token that differs from ``t[j-1]`` and ``t[j]``, else ``t[j] + 1``), so an induction head
    now copies ``wrong``. ``j`` (``position``) defaults to ``n // 2``; it needs ``n >= 2`` tokens.
    The metric is ``logit_diff(answer=t[j], wrong=wrong)`` at the last position.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=16, d_model=16, n_layers=1, n_heads=2))
    >>> p = repeated_text_pair(m, [5, 6, 7, 8])
    >>> p.clean.tolist(), p.corrupted.tolist(), p.answer, p.wrong
    ([[5, 6, 7, 8, 5, 6]], [[5, 6, 5, 8, 5, 6]], 7, 5)
    """
    t = as_tokens(model, tokens)[0]
    n = t.shape[0]
    if n < 2:
        raise InterpError(f"tokens: a repeated-text pair needs a prompt of at least 2 tokens; given {n}")
    j = n // 2 if position is None else check_index("position", position, n)
    if j == 0:
        raise InterpError("position: must be >= 1 (the token before it is what the induction head matches); given 0")
    if n + j > int(model.cfg.n_ctx):
        raise InterpError(f"tokens: the prompt plus its repeat ({n + j} tokens) must fit n_ctx={model.cfg.n_ctx}")
    answer = int(t[j])
    if wrong is None:
        others = [int(x) for x in t.tolist() if int(x) not in (answer, int(t[j - 1]))]
        wrong = others[0] if others else (answer + 1) % int(model.cfg.d_vocab)
    wrong = check_index("wrong", wrong, int(model.cfg.d_vocab), allow_negative=False)
    if wrong == answer:
        raise InterpError(f"wrong: must differ from the answer token {answer}; given {wrong}")
    clean = torch.cat([t, t[:j]])[None]
    corrupted = clean.clone()
    corrupted[0, j] = wrong
    return PromptPair(clean, corrupted, answer, wrong, j)
