"""What an SAE dashboard (SAELens' sae_vis, Neuronpedia) shows for a feature, beyond its top examples.

* ``feature_quantile_samples``: the feature's nonzero activations over a corpus split into activation bins —
  its top examples, then intervals from its maximum down to its smallest nonzero value — each with its range,
  its share of the nonzero activations and a few contexts sampled from it (the activation at every token around
  the sampled one). Top examples alone show what a feature does at its strongest; the lower bins show whether
  its weak activations mean the same thing.
* ``feature_correlations``: the features whose activations rise and fall with this one over the corpus's
  tokens (Pearson correlation), beside ``similar_features``' nearest decoder directions: two features can
  point apart and still fire together (one concept split in two), or point alike and never co-occur.
* ``feature_dashboard``: both from one pass over the corpus (what the report and the dashboard call).
* ``feature_ablation_effects``: on given contexts, the feature zeroed at each token where it fires, with the
  SAE (or transcoder) spliced in *with its error term*, so only that feature's contribution leaves the
  residual stream: per token the change in the log-probability of the actual next token (its effect on the
  loss) and the logits it raises and lowers most there.

An SAE's features are read and written at its hook; a transcoder's are read at its input hook
(``ln2.hook_normalized`` / ``hook_resid_mid``) and written to ``hook_mlp_out`` (``features.feature_hooks``).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pandas as pd
import torch

from interp.analysis.sae.features import _encoder, _features, feature_hooks
from interp.analysis.sae.source import check_hook_name
from interp.errors import InterpError

__all__ = ["FeatureDashboard", "feature_ablation_effects", "feature_correlations", "feature_dashboard",
           "feature_quantile_samples"]

SPACINGS = ("width", "quantile")


@dataclasses.dataclass
class FeatureDashboard:
    """``bins``: ``feature, bin, low, high, count, share`` — bin 0 is the top examples (``k_top`` largest
    activations), bins 1..n the intervals from the largest activations down (``share``: of the feature's nonzero
    activations; a bin holds values in ``(low, high]``, the lowest includes its ``low``). ``samples``: one row per
    token of each sampled context, ``feature, bin, sample, doc, position, offset, token_id, token, activation,
    is_trigger`` (``position`` the sampled token's place in its document, ``offset`` each token's place relative
    to it). ``correlated``: ``feature, rank, other, correlation, co_fire`` (``co_fire``: the fraction of the
    feature's firing tokens where ``other`` fires too). ``stats``: ``feature, n_tokens, n_nonzero, max``."""

    bins: pd.DataFrame
    samples: pd.DataFrame
    correlated: pd.DataFrame
    stats: pd.DataFrame


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InterpError(f"{name}: must be an int >= {lo}; given {v!r}")
    return v


class _Correlation:
    """Running centred sums for the Pearson correlation of every feature with a few chosen ones.

    Each batch is centred on its own mean and merged with Chan et al.'s pairwise update, in float64: no
    ``n·Σx² − (Σx)²`` cancellation, so a feature constant over the corpus has variance exactly 0, and a wide SAE's
    ``[tokens, d_sae]`` batch is never copied to float64."""

    def __init__(self, d_sae: int, chosen: torch.Tensor):
        self.chosen, self.n = chosen, 0
        self.mean = torch.zeros(d_sae, dtype=torch.float64)
        self.m2 = torch.zeros(d_sae, dtype=torch.float64)
        self.cross = torch.zeros(d_sae, len(chosen), dtype=torch.float64)
        self.both = torch.zeros(d_sae, len(chosen), dtype=torch.float64)

    def add(self, f: torch.Tensor) -> None:  # f: [tokens, d_sae]
        nb = f.shape[0]
        if nb == 0:
            return
        mean = f.sum(0, dtype=torch.float64) / nb
        c = f - mean.to(f.dtype)
        m2, cross = c.square().sum(0, dtype=torch.float64), (c.T @ c[:, self.chosen]).double()
        n = self.n + nb
        delta, w = mean - self.mean, self.n * nb / n
        self.m2 += m2 + delta**2 * w
        self.cross += cross + delta[:, None] * delta[self.chosen][None, :] * w
        self.mean += delta * (nb / n)
        self.n = n
        on = (f > 0).to(f.dtype)
        self.both += (on.T @ on[:, self.chosen]).double()

    def frame(self, feats: list[int], k: int) -> pd.DataFrame:
        denom = (self.m2[:, None] * self.m2[self.chosen][None, :]).sqrt()
        # a feature constant over the corpus (dead, or always on at one value) correlates with nothing
        corr = torch.where(denom > 0, self.cross / denom.clamp_min(1e-300), torch.full_like(self.cross, float("nan")))
        fires = self.both[self.chosen, torch.arange(len(feats))]
        rows = []
        for j, f in enumerate(feats):
            c = corr[:, j].clone()
            c[f] = float("nan")  # not its own neighbour
            ok = (~c.isnan()).nonzero().flatten()
            order = ok[torch.sort(c[ok], descending=True, stable=True).indices][:k]
            for rank, g in enumerate(order.tolist(), 1):
                rows.append((f, rank, g, float(c[g]), float(self.both[g, j] / fires[j]) if fires[j] else 0.0))
        return pd.DataFrame(rows, columns=["feature", "rank", "other", "correlation", "co_fire"])


def _bin_edges(v: torch.Tensor, n_bins: int, spacing: str) -> torch.Tensor:
    """``n_bins + 1`` ascending edges over the nonzero values ``v``: equal widths from 0 to the maximum (sae_vis'
    intervals: how the activation mass spreads) or equal counts (quantiles of the nonzero values)."""
    if spacing == "width":
        return torch.linspace(0.0, float(v.max()), n_bins + 1, dtype=torch.float64)
    return torch.quantile(v, torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64))


@torch.no_grad()
def feature_dashboard(model, sae, corpus, features, *, n_bins: int = 5, per_bin: int = 3, k_top: int = 5,
                      spacing: str = "width", k_correlated: int = 5, window: int = 12, after: int = 4,
                      hook_name: str | None = None, seq_len: int | None = None, max_tokens: int | None = 50_000,
                      batch_size: int = 8, overlap: int = 0, text_field: str = "text", split: str = "train",
                      seed: int = 0) -> FeatureDashboard:
    """Quantile samples and correlated features of ``features`` (an int or a list) over ``corpus``, in one pass.

    ``corpus`` is anything ``feature_profiles`` reads, cut and spread the same way (``max_tokens`` scored tokens
    in windows over the whole corpus). Bins (``FeatureDashboard``): the ``k_top`` largest activations, then
    ``n_bins`` intervals of the nonzero activations by ``spacing`` (``"width"``: equal widths from 0 to the
    maximum, as sae_vis; ``"quantile"``: equal shares), top first, with ``per_bin`` contexts sampled uniformly
    from each (``seed``; never one already in the top bin). ``k_correlated`` features correlate most with each.
    ``sae`` is an SAE or a transcoder.
    """
    from interp.analysis._inputs import model_device
    from interp.analysis.neurons import _check_nonneg, profile_windows, str_tokens
    from interp.data.scan import forward_cache, window_batches

    reads, _ = feature_hooks(sae, hook_name)
    reads = check_hook_name(model, reads)
    feats = _features(features, sae.cfg.d_sae)
    if feats is None:
        raise InterpError("features: give a feature index or a list of them; given None")
    feats = list(dict.fromkeys(feats))
    for name, v, lo in (("n_bins", n_bins, 1), ("per_bin", per_bin, 0), ("k_top", k_top, 0),
                        ("k_correlated", k_correlated, 0), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        _check_int(name, v, lo)
    window = _check_nonneg("window", window, "tokens shown before the sampled token")
    after = _check_nonneg("after", after, "tokens shown after the sampled token")
    if spacing not in SPACINGS:
        raise InterpError(f"spacing: must be one of {list(SPACINGS)}; given {spacing!r}")
    windows = profile_windows(model, corpus, seq_len=seq_len, overlap=overlap, max_tokens=max_tokens,
                              text_field=text_field, split=split)

    encode, chosen = _encoder(sae), torch.tensor(feats)
    corr = _Correlation(sae.cfg.d_sae, chosen)
    acts: list[torch.Tensor] = []  # per window: the chosen features at every token, [len, len(feats)]
    for batch in window_batches(windows, batch_size, 0, model_device(model)):
        f = encode(forward_cache(model, batch.tokens, {reads})[reads]).float().cpu()  # [B, L, d_sae]
        acts += [f[i, : len(w.tokens), chosen] for i, w in enumerate(batch.windows)]
        corr.add(f[batch.scored.cpu()])  # scored tokens only (no padding, no overlap): each counted once
    flat = torch.cat([a[w.scored_from:] for a, (w, _) in zip(acts, windows)]).double()  # [tokens, len(feats)]
    where = [(wi, p) for wi, (w, _) in enumerate(windows) for p in range(w.scored_from, len(w.tokens))]

    gen = torch.Generator().manual_seed(seed)
    strs: dict[int, list[str]] = {}
    bin_rows, sample_rows, stat_rows = [], [], []

    def context(j: int, f: int, b: int, sample: int, gi: int) -> None:
        wi, p = where[gi]
        w, _ = windows[wi]
        if wi not in strs:
            strs[wi] = str_tokens(model, w.tokens)
        for q in range(max(0, p - window), min(len(w.tokens), p + after + 1)):
            sample_rows.append((f, b, sample, w.doc, w.offset + p, q - p, int(w.tokens[q]), strs[wi][q],
                                float(acts[wi][q, j]), q == p))

    for j, f in enumerate(feats):
        v = flat[:, j]
        on = (v > 0).nonzero().flatten()
        stat_rows.append((f, len(v), len(on), float(v.max()) if len(v) else 0.0))
        if not len(on):
            continue  # silent on the corpus: no bins to show
        top = on[torch.sort(v[on], descending=True, stable=True).indices[:k_top]]
        if len(top):
            bin_rows.append((f, 0, float(v[top].min()), float(v[top].max()), len(top), len(top) / len(on)))
            for s, gi in enumerate(top.tolist(), 1):
                context(j, f, 0, s, gi)
        edges = _bin_edges(v[on], n_bins, spacing)
        # bucketize: index i with edges[i] < v <= edges[i+1]; the lowest interval also takes values at edges[0]
        which = torch.bucketize(v[on], edges[1:-1], right=False)
        shown = torch.zeros(len(v), dtype=torch.bool)
        shown[top] = True
        for i in range(n_bins - 1, -1, -1):  # top interval first
            b = n_bins - i
            members = on[which == i]
            bin_rows.append((f, b, float(edges[i]), float(edges[i + 1]), len(members), len(members) / len(on)))
            pool = members[~shown[members]]
            pick = pool[torch.randperm(len(pool), generator=gen)[:per_bin]]
            pick = pick[torch.sort(v[pick], descending=True, stable=True).indices]
            for s, gi in enumerate(pick.tolist(), 1):
                context(j, f, b, s, gi)
    return FeatureDashboard(
        bins=pd.DataFrame(bin_rows, columns=["feature", "bin", "low", "high", "count", "share"]),
        samples=pd.DataFrame(sample_rows, columns=["feature", "bin", "sample", "doc", "position", "offset",
                                                   "token_id", "token", "activation", "is_trigger"]),
        correlated=corr.frame(feats, k_correlated),
        stats=pd.DataFrame(stat_rows, columns=["feature", "n_tokens", "n_nonzero", "max"]))


def feature_quantile_samples(model, sae, corpus, features, **options) -> FeatureDashboard:
    """:func:`feature_dashboard` without the correlations (``correlated`` empty): the bins and their samples."""
    return feature_dashboard(model, sae, corpus, features, **{**options, "k_correlated": 0})


def feature_correlations(model, sae, corpus, features, k: int = 10, **options) -> pd.DataFrame:
    """The ``k`` features most correlated with each of ``features`` over ``corpus``'s tokens (Pearson, of the
    activations): :func:`feature_dashboard`'s ``correlated`` frame."""
    return feature_dashboard(model, sae, corpus, features, k_correlated=k,
                             **{**options, "per_bin": 0, "k_top": 0}).correlated


@contextlib.contextmanager
def _spliced(model, sae, reads: str):
    """``model`` with ``sae`` spliced in with its error term (its output is unchanged until a feature is edited)."""
    if getattr(sae.cfg, "d_out", None) is not None:
        from interp.analysis.sae.transcoder import splice_transcoders

        with splice_transcoders(model, [sae], use_error_term=True):
            yield
    else:
        from interp.analysis.sae.evaluate import splice_sae

        with splice_sae(model, sae, reads, use_error_term=True):
            yield


def _contexts(model, tokens) -> list[torch.Tensor]:
    from interp.analysis._inputs import as_tokens

    if isinstance(tokens, (list, tuple)) and tokens and not isinstance(tokens[0], int):
        out = [as_tokens(model, t) for t in tokens]
    else:
        t = as_tokens(model, tokens)
        out = [t[i: i + 1] for i in range(t.shape[0])]
    for i, t in enumerate(out):
        if t.shape[0] != 1 or t.shape[1] < 1:
            raise InterpError(f"tokens: context {i} must be one non-empty sequence; given shape {tuple(t.shape)}")
    return out


def _top_tokens(model, delta: torch.Tensor, k: int, largest: bool) -> list[tuple[str, float]]:
    from interp.analysis._inputs import str_tokens

    vals, ids = delta.topk(k, largest=largest)
    return list(zip(str_tokens(model, ids), vals.tolist()))


@torch.no_grad()
def feature_ablation_effects(model, sae, tokens, feature: int, *, hook_name: str | None = None, k_logits: int = 3,
                             chunk: int = 16) -> pd.DataFrame:
    """Per token of each context in ``tokens``: what zeroing ``feature`` at that token does to the prediction there.

    ``tokens``: a prompt, a ``[batch, pos]`` tensor or a list of contexts (strings or token ids, any lengths; e.g. a
    feature's top contexts). At each position where the feature fires the model is run once more with the SAE or
    transcoder spliced in with its error term and the feature set to 0 at that position only (so the residual
    stream loses exactly ``activation × W_dec[feature]`` there); ``chunk`` such runs go in one batch (contexts
    right-padded: causal attention keeps the padding from reaching a real token).

    Columns: ``context, position, token, token_id, next_token, activation, logprob`` (log-probability of the
    actual next token), ``logprob_change`` (ablated − clean: negative when the feature helps predict the next
    token; 0 where it does not fire; NaN at a context's last token, which has no next token), ``raises`` /
    ``lowers`` (the ``k_logits`` tokens whose logits the feature raises / lowers most there — clean − ablated,
    centred over the vocabulary — as ``(token, change)`` lists; empty where it does not fire).
    """
    from interp.analysis._inputs import check_index, model_device, str_tokens

    reads, _ = feature_hooks(sae, hook_name)
    reads = check_hook_name(model, reads)
    feature = check_index("feature", feature, sae.cfg.d_sae)
    _check_int("k_logits", k_logits, 0)
    _check_int("chunk", chunk, 1)
    dev = model_device(model)
    contexts = _contexts(model, tokens)
    lens = [int(t.shape[1]) for t in contexts]
    toks = torch.zeros(len(contexts), max(lens), dtype=torch.long, device=dev)
    for c, t in enumerate(contexts):
        toks[c, : lens[c]] = t[0].to(dev)
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: n == reads)
    act = _encoder(sae)(cache[reads])[..., feature].double().cpu()  # [contexts, pos]
    del cache
    fires = [(c, p) for c in range(len(contexts)) for p in range(lens[c]) if act[c, p] > 0]
    ablated: dict[tuple[int, int], torch.Tensor] = {}  # (context, position) -> the logits there, feature ablated
    for s in range(0, len(fires), chunk):
        group = fires[s: s + chunk]
        which = torch.tensor([c for c, _ in group], device=dev)
        at = torch.tensor([p for _, p in group], device=dev)

        def ablate(f, hook=None, at=at):
            f = f.clone()
            f[torch.arange(len(at), device=f.device), at, feature] = 0.0
            return f

        with _spliced(model, sae, reads), sae.hooks(fwd_hooks=[("hook_sae_acts_post", ablate)]):
            out = model(toks[which])
        for i, key in enumerate(group):
            ablated[key] = out[i, key[1]].double()
    rows = []
    for c in range(len(contexts)):
        ids = toks[c, : lens[c]].tolist()
        strs = str_tokens(model, ids)
        clean = torch.log_softmax(logits[c, : lens[c]].double(), -1)
        for p in range(lens[c]):
            nxt = ids[p + 1] if p + 1 < lens[c] else None
            lp = float(clean[p, nxt]) if nxt is not None else float("nan")
            change, raises, lowers = (0.0 if nxt is not None else float("nan")), [], []
            if (c, p) in ablated:
                after = ablated[(c, p)]
                if nxt is not None:
                    change = float(torch.log_softmax(after, -1)[nxt]) - lp
                d = logits[c, p].double() - after
                d = d - d.mean()
                k = min(k_logits, d.numel())
                raises, lowers = _top_tokens(model, d, k, True), _top_tokens(model, d, k, False)
            rows.append((c, p, strs[p], ids[p], strs[p + 1] if nxt is not None else None, float(act[c, p]), lp,
                         change, raises, lowers))
    return pd.DataFrame(rows, columns=["context", "position", "token", "token_id", "next_token", "activation",
                                       "logprob", "logprob_change", "raises", "lowers"])
