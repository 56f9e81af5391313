"""Splicing an SAE into a model, and how good it is.

* ``splice_sae(model, sae)``: a context manager; inside it the model's forward passes (``model(...)``,
  ``run_with_cache``, ``run_with_hooks``, and any causal tool built on ``model.hooks``) see the SAE's
  reconstruction at ``sae.cfg.hook_name`` — or, with ``use_error_term=True``, the reconstruction plus the
  SAE's error, which leaves the output unchanged until a hook on the SAE (``sae.hooks(fwd_hooks=[
  ("hook_sae_acts_post", fn)])``) edits features: then exactly the edit's effect goes downstream.
* ``sae_metrics(sae, activations)``: L0, fraction of variance explained, MSE, cosine, dead and dense latents.
* ``ce_loss_recovered(model, sae, tokens)``: SAELens' ``ce_loss_score`` —
  (CE with the hook zero-ablated − CE with the SAE spliced) / (CE zero-ablated − CE clean): 1 is perfect,
  0 is no better than deleting the activation.
* ``evaluate_sae(model, sae, corpus)``: all of it in one pass over a corpus.
* ``token_reconstruction(model, sae, tokens)``: the same, token by token, on one prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import pandas as pd
import torch

from interp.analysis.sae.model import SAE
from interp.analysis.sae.source import as_source, check_hook_name, token_batches
from interp.errors import InterpError

__all__ = ["SAEEval", "ce_loss_recovered", "evaluate_sae", "run_with_cache_with_saes", "run_with_saes", "sae_hook",
           "sae_metrics", "splice_sae", "splice_saes", "token_reconstruction"]

# what splice_sae needs of an SAE object (ours, or SAELens' ``SAE``: duck-typed, sae_lens is never imported)
_SAE_SURFACE = ("W_enc", "W_dec", "b_dec", "cfg", "encode", "decode")


def _check_sae(sae) -> None:
    missing = [name for name in _SAE_SURFACE if not hasattr(sae, name)]
    if missing or not callable(sae):
        raise InterpError(f"sae: expected an SAE (interp's, or SAELens' SAE object with {list(_SAE_SURFACE)}); "
                          f"given {type(sae).__name__}, missing {missing or ['__call__']}")


def _meta(cfg, key: str):
    """``cfg.<key>``, else ``cfg.metadata[key]`` (ours: a dict; SAELens 6: an object)."""
    meta = getattr(cfg, "metadata", None)
    return getattr(cfg, key, None) or (meta.get(key) if isinstance(meta, dict) else getattr(meta, key, None))


def _hook_of(sae, hook_name: str | None) -> str:
    """The hook an SAE reads: ``hook_name``, else its cfg's (ours: ``cfg.hook_name``; SAELens 6:
    ``cfg.metadata.hook_name``; SAELens < 6: ``cfg.hook_name``)."""
    if getattr(sae.cfg, "d_out", None) is not None:  # a transcoder: its output goes elsewhere than its input
        raise InterpError(f"sae: this is a transcoder (reads {_meta(sae.cfg, 'hook_name')!r}, predicts "
                          f"{_meta(sae.cfg, 'hook_name_out')!r}); use splice_transcoders / evaluate_transcoders")
    name = hook_name or _meta(sae.cfg, "hook_name")
    if not name:
        raise InterpError("hook_name: the SAE's cfg names no hook (metadata.hook_name); pass hook_name=...")
    return name


@contextlib.contextmanager
def _error_term(sae, use_error_term: bool | None):
    """The SAE's ``use_error_term`` set for the duration (None: its own setting). SAELens 6 deprecates setting the
    attribute (in favour of its HookedSAETransformer); it is the one switch both SAE classes share."""
    if use_error_term is None:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        was, sae.use_error_term = sae.use_error_term, use_error_term
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            sae.use_error_term = was


def sae_hook(sae, use_error_term: bool | None = False):
    """A TransformerLens forward hook ``fn(activation, hook)`` that returns the SAE's output in its place.

    interp's SAE: dimensions after ``[batch, pos]`` are flattened to ``d_in`` and restored (so ``hook_z`` works
    whatever the SAE's cfg says). A SAELens ``SAE`` gets the activation as the hook gives it (its
    ``reshape_activations="hook_z"`` flattens heads itself). ``use_error_term`` None keeps the SAE's setting.
    """
    _check_sae(sae)
    ours = isinstance(sae, SAE)

    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        shape = act.shape
        x = act.reshape(*shape[:2], -1) if act.ndim > 3 and ours else act
        d_in = x.shape[-1] if ours or act.ndim <= 3 else shape[-2] * shape[-1]
        if d_in != sae.cfg.d_in:
            raise InterpError(f"sae: reads d_in={sae.cfg.d_in} but the hook gives {tuple(shape)}")
        with _error_term(sae, use_error_term):
            out = sae(x)
        return out.to(act.dtype).reshape(shape)

    return hook


@contextlib.contextmanager
def splice_sae(model, sae: SAE, hook_name: str | None = None, use_error_term: bool = False):
    """Run ``model`` with ``sae`` in place at ``hook_name`` (default the SAE's own) inside the ``with``.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> from interp.analysis.sae.model import SAE, SAEConfig
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2))
    >>> sae = SAE(SAEConfig(d_in=16, d_sae=32, architecture="relu", metadata={"hook_name": "blocks.0.hook_resid_post"}))
    >>> t = torch.tensor([[1, 2, 3]])
    >>> clean = m(t)
    >>> with splice_sae(m, sae, use_error_term=True):
    ...     torch.equal(m(t), clean)
    True
    """
    with splice_saes(model, [sae], use_error_term=use_error_term, hook_names=[hook_name]):
        yield model


@contextlib.contextmanager
def splice_saes(model, saes, use_error_term: bool | None = None, hook_names=None):
    """:func:`splice_sae` for several SAEs at once (each at its own hook; ``hook_names`` overrides them in order).
    ``use_error_term`` None keeps each SAE's own setting (SAELens' convention)."""
    saes = [saes] if not isinstance(saes, (list, tuple)) else list(saes)
    names = list(hook_names) if hook_names is not None else [None] * len(saes)
    if len(names) != len(saes):
        raise InterpError(f"hook_names: one per SAE ({len(saes)}); given {len(names)}")
    hooks = []
    for sae, name in zip(saes, names):
        _check_sae(sae)
        hooks.append((check_hook_name(model, _hook_of(sae, name)), sae_hook(sae, use_error_term)))
    if len({n for n, _ in hooks}) != len(hooks):
        raise InterpError(f"saes: two SAEs read the same hook ({[n for n, _ in hooks]}); splice one per hook")
    with model.hooks(fwd_hooks=hooks):
        yield model


def run_with_saes(model, *model_args, saes=(), use_error_term: bool | None = None, **model_kwargs):
    """SAELens' ``HookedSAETransformer.run_with_saes``: the model's forward pass with ``saes`` spliced in at their
    hooks (the model is left as it was afterwards). ``saes``: interp or SAELens SAE objects."""
    with splice_saes(model, saes, use_error_term=use_error_term):
        return model(*model_args, **model_kwargs)


def run_with_cache_with_saes(model, *model_args, saes=(), use_error_term: bool | None = None,
                             names_filter=None, **model_kwargs):
    """SAELens' ``run_with_cache_with_saes``: ``(output, ActivationCache)`` with ``saes`` spliced in. The cache
    also holds each SAE's own hook points under SAELens' names, ``"<hook>.hook_sae_acts_post"`` etc. (what a
    HookedSAETransformer caches, since it mounts the SAE at the hook). ``names_filter`` applies to both."""
    from transformer_lens.hook_points import HookPoint

    saes = [saes] if not isinstance(saes, (list, tuple)) else list(saes)
    wanted = _names_filter(names_filter)
    sae_cache: dict[str, torch.Tensor] = {}

    def store(name):
        def hook(module, inputs, output):  # a torch forward hook on the SAE's HookPoint
            sae_cache[name] = output.detach()
        return hook

    sae_hooks = []  # (HookPoint, fn) on the SAEs' own hook points
    for sae in saes:
        _check_sae(sae)
        for point_name, point in sae.named_modules():
            full = f"{_hook_of(sae, None)}.{point_name}"
            if isinstance(point, HookPoint) and point_name and wanted(full):
                sae_hooks.append(point.register_forward_hook(store(full)))
    try:
        with splice_saes(model, saes, use_error_term=use_error_term):
            out, cache = model.run_with_cache(*model_args, names_filter=lambda n: wanted(n), **model_kwargs)
    finally:
        for handle in sae_hooks:
            handle.remove()
    cache.cache_dict.update(sae_cache)
    return out, cache


def _names_filter(names_filter):
    """TransformerLens' names_filter (None, a name, a list of names, or a predicate) as a predicate."""
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if isinstance(names_filter, (list, tuple)):
        return lambda name: name in names_filter
    if callable(names_filter):
        return names_filter
    raise InterpError(f"names_filter: None, a hook name, a list of names or a function; given {names_filter!r}")


# ----------------------------------------------------------------------------------------------------


class _Stats:
    """Running sums over activations for L0, variance explained and per-latent firing."""

    def __init__(self, d_sae: int):
        self.n = 0
        self.sum_x = None
        self.sum_sq = 0.0
        self.sum_resid = 0.0
        self.sum_l0 = 0.0
        self.sum_cos = 0.0
        self.fires = torch.zeros(d_sae, dtype=torch.float64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_max = torch.zeros(d_sae, dtype=torch.float64)

    @torch.no_grad()
    def add(self, sae: SAE, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Add rows ``x``; ``y``: what the reconstruction aims at (a transcoder's target; default ``x``)."""
        x = x.reshape(-1, sae.cfg.d_in).to(sae.W_enc.device)
        f = sae.encode(x)
        self.add_prediction(f, sae.decode(f) + sae.skip(x), x if y is None else y)

    @torch.no_grad()
    def add_prediction(self, f: torch.Tensor, recon: torch.Tensor, x: torch.Tensor) -> None:
        """Add rows of latents ``f``, the reconstruction they give and what it aims at, ``x``."""
        recon = recon.reshape(-1, recon.shape[-1]).double()
        x = x.reshape(recon.shape).to(recon.device).double()
        f = f.reshape(-1, f.shape[-1]).double().cpu()
        self.n += x.shape[0]
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_sq += float(x.pow(2).sum())
        self.sum_resid += float((x - recon).pow(2).sum())
        self.sum_cos += float(torch.nn.functional.cosine_similarity(x, recon, dim=-1).sum())
        active = f > 0
        self.sum_l0 += float(active.sum())
        self.fires += active.sum(0)
        self.act_sum += f.sum(0)
        self.act_max = torch.maximum(self.act_max, f.max(0).values)

    def metrics(self, dense_threshold: float) -> dict:
        total = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n  # Σ‖x - mean‖²
        freq = self.fires / self.n
        fve = 1.0 - self.sum_resid / total if total > 0 else float("nan")  # one token (or all equal): no variance
        return {"n_tokens": self.n, "l0": self.sum_l0 / self.n, "fve": fve,
                "mse": self.sum_resid / self.n, "cosine": self.sum_cos / self.n,
                "dead_frac": float((freq == 0).double().mean()),
                "dense_frac": float((freq > dense_threshold).double().mean())}

    def latents(self, dense_threshold: float) -> pd.DataFrame:
        freq = self.fires / self.n
        return pd.DataFrame({"latent": range(len(freq)), "frequency": freq.numpy(),
                             "mean_activation": (self.act_sum / self.fires.clamp_min(1)).numpy(),
                             "max_activation": self.act_max.numpy(), "dead": (freq == 0).numpy(),
                             "dense": (freq > dense_threshold).numpy()})


def _check_threshold(dense_threshold) -> float:
    if not isinstance(dense_threshold, (int, float)) or not 0 < dense_threshold <= 1:
        raise InterpError(f"dense_threshold: must be a fraction of tokens in (0, 1]; given {dense_threshold!r}")
    return float(dense_threshold)


@torch.no_grad()
def sae_metrics(sae: SAE, activations, dense_threshold: float = 0.1, batch_size: int = 4096) -> dict:
    """Reconstruction and sparsity of ``sae`` on ``activations`` (any ``train_sae`` source form).

    Keys: ``n_tokens``; ``l0`` (mean active latents per token); ``fve`` (fraction of variance explained,
    1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²); ``mse`` (mean ‖x − x̂‖²); ``cosine`` (mean cos(x, x̂)); ``dead_frac`` (latents
    that never fire here); ``dense_frac`` (latents firing on more than ``dense_threshold`` of tokens).

    >>> from interp.analysis.sae.model import SAEConfig
    >>> sae = SAE(SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2))
    >>> sae_metrics(sae, torch.randn(100, 4))["l0"] <= 2
    True
    """
    dense_threshold = _check_threshold(dense_threshold)
    src = as_source(activations)
    if src.d_in != sae.cfg.d_in:
        raise InterpError(f"activations: must have d_in={sae.cfg.d_in} columns; given {src.d_in}")
    stats = _Stats(sae.cfg.d_sae)
    for i in range(len(src.sizes)):
        x = src.shard(i)
        for s in range(0, x.shape[0], batch_size):
            stats.add(sae, x[s : s + batch_size].float())
    return stats.metrics(dense_threshold)


def _token_ce(model, tokens: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy of ``tokens`` under the model's current hooks (or of given ``logits``)."""
    logits = model(tokens) if logits is None else logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    return -logp.gather(-1, tokens[:, 1:, None]).sum()


def _zero_hook(act, hook=None):
    return torch.zeros_like(act)


@torch.no_grad()
def _ce_pass(model, sae, name, toks, clean_logits=None) -> tuple[float, float, float]:
    clean = float(_token_ce(model, toks, clean_logits))
    with model.hooks(fwd_hooks=[(name, sae_hook(sae))]):
        spliced = float(_token_ce(model, toks))
    with model.hooks(fwd_hooks=[(name, _zero_hook)]):
        zero = float(_token_ce(model, toks))
    return clean, spliced, zero


def _ce_metrics(sums, n_pred) -> dict:
    clean, spliced, zero = (s / n_pred for s in sums)
    denom = zero - clean
    return {"ce_clean": clean, "ce_sae": spliced, "ce_zero_ablation": zero,
            "ce_loss_recovered": (zero - spliced) / denom if denom != 0 else float("nan")}


@torch.no_grad()
def ce_loss_recovered(model, sae: SAE, tokens, hook_name: str | None = None, batch_size: int = 8) -> dict:
    """Cross-entropy with the SAE spliced in, against the clean model and against zero-ablating the hook.

    ``tokens``: ``[batch, pos]`` ids (or anything ``as_tokens`` takes). Returns ``ce_clean``, ``ce_sae``,
    ``ce_zero_ablation`` (mean next-token CE in nats over all predicted tokens) and ``ce_loss_recovered`` =
    (ce_zero_ablation − ce_sae) / (ce_zero_ablation − ce_clean).
    """
    from interp.analysis._inputs import as_tokens

    name = check_hook_name(model, _hook_of(sae, hook_name))
    toks = as_tokens(model, tokens)
    if toks.shape[1] < 2:
        raise InterpError(f"tokens: need at least 2 positions per row to score next tokens; given {toks.shape[1]}")
    sums = [0.0, 0.0, 0.0]
    for s in range(0, toks.shape[0], batch_size):
        for i, v in enumerate(_ce_pass(model, sae, name, toks[s : s + batch_size])):
            sums[i] += v
    return _ce_metrics(sums, toks.shape[0] * (toks.shape[1] - 1))


@dataclasses.dataclass
class SAEEval:
    """``metrics``: one dict (``sae_metrics``' keys plus the CE keys of ``ce_loss_recovered``);
    ``latents``: per latent ``latent, frequency, mean_activation`` (when active), ``max_activation, dead, dense``."""

    metrics: dict
    latents: pd.DataFrame

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"metric": list(self.metrics), "value": list(self.metrics.values())})


@torch.no_grad()
def evaluate_sae(model, sae: SAE, corpus, hook_name: str | None = None, *, seq_len: int | None = None,
                 batch_size: int = 8, max_tokens: int | None = None, time_budget: float | None = None,
                 dense_threshold: float = 0.1, progress: bool = False) -> SAEEval:
    """Everything at once over ``corpus`` (text, texts or token ids): sparsity, reconstruction, CE recovered.

    The corpus is cut into ``seq_len`` chunks (default ``n_ctx``); each batch runs clean (recording the
    activation), with the SAE spliced in, and with the hook zero-ablated. ``max_tokens`` stops early;
    ``time_budget`` (seconds) stops after the batch that reaches it (at least one batch is scored).
    The metrics' ``n_tokens`` says how many were scored.
    """
    import time

    from interp.analysis._inputs import model_device
    from interp.progress import progress_bar

    dense_threshold = _check_threshold(dense_threshold)
    name = check_hook_name(model, _hook_of(sae, hook_name))
    stats = _Stats(sae.cfg.d_sae)
    sums, n_pred = [0.0, 0.0, 0.0], 0
    dev = model_device(model)
    start = time.perf_counter()
    for toks in progress_bar(token_batches(model, corpus, seq_len, batch_size), desc="evaluating SAE",
                             unit="batch", enabled=progress):
        toks = toks.to(dev)
        clean_logits, cache = model.run_with_cache(toks, names_filter=lambda n: n == name)
        stats.add(sae, cache[name].reshape(toks.shape[0] * toks.shape[1], -1).float())
        if toks.shape[1] >= 2:  # the cached run's logits are the clean ones: three passes a batch, not four
            for i, v in enumerate(_ce_pass(model, sae, name, toks, clean_logits)):
                sums[i] += v
            n_pred += toks.shape[0] * (toks.shape[1] - 1)
        if max_tokens is not None and stats.n >= max_tokens:
            break
        if time_budget is not None and time.perf_counter() - start >= time_budget:
            break
    metrics = stats.metrics(dense_threshold)
    metrics.update(_ce_metrics(sums, n_pred) if n_pred else {})
    return SAEEval(metrics=metrics, latents=stats.latents(dense_threshold))


@torch.no_grad()
def token_reconstruction(model, sae: SAE, tokens, hook_name: str | None = None) -> pd.DataFrame:
    """Token by token on one sequence: how well the SAE rebuilds the activation, and what splicing it in costs.

    Columns: ``position, token_id, token``; ``l0`` (active latents); ``rel_error`` (‖x − x̂‖² / ‖x‖²);
    ``cosine`` (cos(x, x̂)); ``next_token``; ``ce_clean`` and ``ce_sae``: the next-token loss (nats) at this
    position, clean and with the SAE spliced in (NaN at the last position, which has no next token).
    Their means are ``evaluate_sae``'s ``ce_clean`` / ``ce_sae`` on the same tokens.
    """
    from interp.analysis._inputs import as_tokens, str_tokens

    name = check_hook_name(model, _hook_of(sae, hook_name))
    toks = as_tokens(model, tokens)[:1]
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: n == name)
    x = cache[name].reshape(toks.shape[1], -1).to(sae.W_enc.device)
    if x.shape[-1] != sae.cfg.d_in:
        raise InterpError(f"sae: reads d_in={sae.cfg.d_in} but hook {name!r} gives {x.shape[-1]} values per token")
    f = sae.encode(x.float())
    recon = sae.decode(f).double()
    x = x.double()
    with model.hooks(fwd_hooks=[(name, sae_hook(sae))]):
        spliced = model(toks)

    def next_loss(lg: torch.Tensor) -> list[float]:
        logp = torch.log_softmax(lg[0, :-1].double(), -1)
        return [*(-logp.gather(-1, toks[0, 1:, None])[:, 0]).cpu().tolist(), float("nan")]

    ids = toks[0].tolist()
    strs = str_tokens(model, toks[0])
    return pd.DataFrame({
        "position": range(len(ids)), "token_id": ids, "token": strs,
        "l0": (f > 0).sum(-1).cpu().numpy(),
        "rel_error": ((x - recon).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-30)).cpu().numpy(),
        "cosine": torch.nn.functional.cosine_similarity(x, recon, dim=-1).cpu().numpy(),
        "next_token": [*strs[1:], ""], "ce_clean": next_loss(logits), "ce_sae": next_loss(spliced)})
