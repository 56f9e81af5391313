"""What a learned feature is, through the analyzers the project already has.

* ``feature_top_contexts``: where it fires most over a corpus — the neuron scan of
  ``interp.analysis.neurons.scan_top_contexts``, reading ``sae.encode(activation)`` instead of a neuron.
* ``feature_logit_effects``: what it writes — its decoder row through the final norm's linear part and the
  unembedding (``interp.analysis.neurons.residual_direction``), centred over the vocabulary (a constant
  added to every logit changes no probability). A feature of ``mlp.hook_post`` writes through ``W_out``.
* ``decoder_orthogonality`` / ``decoder_angle_samples``: the pairwise angles of the decoder directions
  beside random unit vectors of the same dimension and count (``interp.analysis.superposition``) — the
  "many almost perpendicular directions" picture, measured on learned features.
* ``feature_activations``: which features fire where in a prompt.
* ``feature_profiles``: a feature's top examples with its activation at every token around each, a histogram
  and firing statistics over a corpus — ``interp.analysis.neurons.neuron_profiles`` (the neuron pages'
  engine) reading features instead of neurons.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pandas as pd
import torch

from interp.analysis.sae.evaluate import _hook_of
from interp.analysis.sae.model import SAE
from interp.analysis.sae.source import check_hook_name
from interp.errors import InterpError

__all__ = ["decoder_angle_samples", "decoder_orthogonality", "feature_activations", "feature_hooks", "feature_logit_effects",
           "feature_profiles", "feature_top_contexts", "similar_features", "transcoder_feature_profiles"]


def feature_hooks(sae, hook_name: str | None = None) -> tuple[str, str]:
    """``(reads, writes)``: the hook a feature's activation is computed from and the hook its decoder row writes
    to. An SAE: its one hook (``hook_name``, else its cfg's) twice; a transcoder: its input hook (``hook_name``
    overrides it) and ``hook_name_out`` (``blocks.{l}.hook_mlp_out``)."""
    if getattr(sae.cfg, "d_out", None) is None:
        name = _hook_of(sae, hook_name)
        return name, name
    reads, writes = hook_name or sae.cfg.hook_name, sae.cfg.hook_name_out
    if not reads or not writes:
        raise InterpError(f"sae: this transcoder's cfg names no input or output hook (metadata.hook_name="
                          f"{sae.cfg.hook_name!r}, hook_name_out={writes!r})")
    return reads, writes


def _encoder(sae: SAE):
    def read(act: torch.Tensor) -> torch.Tensor:
        # at least float32 (a bf16 model's activations), never less than they are (a float64 model's)
        return sae.encode(act.reshape(*act.shape[:2], -1).to(torch.promote_types(act.dtype, torch.float32)))

    return read


def _features(features, d_sae: int) -> list[int] | None:
    from interp.analysis._inputs import check_index

    if features is None:
        return None
    if isinstance(features, int):
        features = [features]
    out = [check_index("features", f, d_sae) for f in features]
    if not out:
        raise InterpError(f"features: expected None, an int or a non-empty list of ints in [0, {d_sae}); given []")
    return out


@torch.no_grad()
def feature_top_contexts(model, sae: SAE, corpus, features=None, k: int = 10, *, hook_name: str | None = None,
                         window: int = 10, after: int = 3, batch_size: int = 8, seq_len: int | None = None,
                         overlap: int = 0, progress: bool = False) -> pd.DataFrame:
    """Each feature's ``k`` top-activating contexts over ``corpus`` (as ``scan_top_contexts`` does for neurons:
    the same corpus forms, windows, running top-k and context rows, and ``torchrun`` sharding).

    Columns: ``feature, rank, activation, doc, position, token_id, token, next_token_id, next_token,
    context`` (the trigger marked «like this»). ``features`` (an int or a list) keeps just those.
    """
    from interp.analysis import neurons as nr
    from interp.data.scan import TopK, run_scan

    name = check_hook_name(model, feature_hooks(sae, hook_name)[0])
    k = nr._resolve_k(k)
    for arg, v in (("window", window), ("after", after)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InterpError(f"{arg}: must be an int >= 0; given {v!r}")
    keep = _features(features, sae.cfg.d_sae)
    encode = _encoder(sae)

    class FeatureTopK(TopK):  # the neuron scan's running top-k, fed the SAE's features instead of the hook
        def update(self, acts, batch):
            super().update({name: encode(acts[name])}, batch)

    top = FeatureTopK([name], k, before=window, after=after)
    try:
        run_scan(model, corpus, [top], seq_len=seq_len, overlap=overlap, batch_size=batch_size, progress=progress,
                 desc="scanning features")
    except InterpError as e:
        raise InterpError(f"corpus: {e}") from None
    df = nr._top_frame(model, top, {name: 0}, window, after).drop(columns="layer").rename(columns={"neuron": "feature"})
    df = df[df.activation > 0]  # a feature that is 0 everywhere has no top contexts
    if keep is not None:
        df = df[df.feature.isin(keep)]
    return df.reset_index(drop=True)


def _write_directions(model, sae: SAE, hook_name: str) -> torch.Tensor:
    """``[d_sae, d_model]``: what each feature adds to the residual stream per unit activation."""
    w = sae.W_dec.detach().double()
    d_model = int(model.cfg.d_model)
    m = re.fullmatch(r"blocks\.(\d+)\.mlp\.hook_post", hook_name)
    if m:
        from interp.analysis.neurons import _W_out

        return w @ _W_out(model, int(m.group(1))).detach().double()
    if (getattr(sae.cfg, "d_out", None) or sae.cfg.d_in) == d_model and re.search(r"resid|hook_(attn|mlp)_out|hook_embed|hook_pos_embed", hook_name):
        return w
    raise InterpError(f"hook_name: logit effects need a feature that writes to the residual stream (a resid, "
                      f"attn_out / mlp_out or mlp.hook_post hook with d_in={d_model}); given {hook_name!r} "
                      f"(d_in={sae.cfg.d_in})")


@torch.no_grad()
def feature_logit_effects(model, sae: SAE, feature: int, k: int = 10, direction: str = "both",
                          hook_name: str | None = None) -> pd.DataFrame:
    """Tokens the feature's decoder direction raises (``top``) and lowers (``bottom``), per unit activation.

    ``logit`` is ``N(W_dec[feature]) · W_U[:, t]`` minus its mean over the vocabulary (``N`` the final norm's
    linear part; before its positive ``1/scale``). Columns as ``neuron_answers``: ``token, logit, token_id,
    direction, rank``.
    """
    from interp.analysis._inputs import check_index
    from interp.analysis.neurons import answer_frame, residual_direction

    name = feature_hooks(sae, hook_name)[1]
    feature = check_index("feature", feature, sae.cfg.d_sae)
    w = _write_directions(model, sae, name)[feature]
    logits = residual_direction(model, w) @ model.W_U.detach().double()
    return answer_frame(model, logits - logits.mean(), k, direction)


@torch.no_grad()
def similar_features(sae: SAE, feature: int, k: int = 5) -> pd.DataFrame:
    """The ``k`` features whose decoder directions are nearest ``feature``'s (largest cosine): ``rank, feature,
    cosine``. Near-duplicates (cosine near 1) often split one concept; near-opposites are listed by |cosine| too
    (``cosine`` keeps its sign)."""
    from interp.analysis._inputs import check_index

    feature = check_index("feature", feature, sae.cfg.d_sae)
    w = sae.W_dec.detach().double()
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    cos = w @ w[feature]
    cos[feature] = 0.0  # not its own neighbour
    k = max(0, min(int(k), sae.cfg.d_sae - 1))
    top = cos.abs().topk(k).indices
    return pd.DataFrame({"rank": range(1, k + 1), "feature": top.tolist(), "cosine": cos[top].tolist()})


def _decoder_set(sae: SAE) -> SimpleNamespace:
    # superposition's direction-set machinery reads named weights; the decoder rows play "W_E" (rows = vectors)
    return SimpleNamespace(W_E=sae.W_dec.detach())


def decoder_orthogonality(sae: SAE, max_pairs: int = 100_000, seed: int = 0,
                          tolerance_deg: float = 1.0) -> pd.DataFrame:
    """Pairwise-angle statistics of the decoder directions beside the random baseline (one row, ``set="W_dec"``).

    Columns of ``superposition.direction_set_stats``: ``count, dim, n_pairs, mean_abs_cos, max_abs_cos,
    frac_within_tol, std_angle_deg, ...`` and ``baseline_*`` for random unit vectors of the same dimension.
    """
    from interp.analysis.superposition import direction_set_stats

    df = direction_set_stats(_decoder_set(sae), sets=("W_E",), max_pairs=max_pairs, seed=seed,
                             tolerance_deg=tolerance_deg)
    df["set"] = "W_dec"
    return df


def decoder_angle_samples(sae: SAE, max_pairs: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """Raw pairwise cosines and angles of the decoder directions and of a random set (``source`` column)."""
    from interp.analysis.superposition import direction_angle_samples

    df = direction_angle_samples(_decoder_set(sae), "W_E", max_pairs=max_pairs, seed=seed)
    df["set"] = "W_dec"
    return df


@torch.no_grad()
def feature_activations(model, sae: SAE, tokens, hook_name: str | None = None, k: int | None = None) -> pd.DataFrame:
    """The active features at every position of a prompt: ``batch, position, token, feature, activation``
    (sorted by position, strongest first; ``k`` keeps each position's ``k`` strongest)."""
    from interp.analysis._inputs import as_tokens, str_tokens

    name = check_hook_name(model, feature_hooks(sae, hook_name)[0])
    toks = as_tokens(model, tokens)
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n == name)
    f = _encoder(sae)(cache[name]).cpu()  # [batch, pos, d_sae]
    rows = []
    for b in range(f.shape[0]):
        strs = str_tokens(model, toks[b])
        for p in range(f.shape[1]):
            v, i = f[b, p].sort(descending=True)
            n = int((v > 0).sum()) if k is None else min(int(k), int((v > 0).sum()))
            rows += [(b, p, strs[p], int(j), float(x)) for x, j in zip(v[:n].tolist(), i[:n].tolist())]
    return pd.DataFrame(rows, columns=["batch", "position", "token", "feature", "activation"])


@torch.no_grad()
def transcoder_feature_profiles(model, transcoders, features: dict, corpus, **options):
    """:func:`feature_profiles` for the features of a set of transcoders (per-layer ones or a cross-layer one:
    ``transcoder.transcoder_set``), every layer in one pass over ``corpus``: ``features`` ``{layer: [feature,
    ...]}``; the frames start with ``layer, feature``. ``options`` are :func:`feature_profiles`' (``k``,
    ``window``, ``after``, ``max_tokens``, ...)."""
    from interp.analysis.neurons import column_profiles
    from interp.analysis.sae.transcoder import transcoder_set

    tset = transcoder_set(model, transcoders)
    wanted = {}
    for layer, feats in features.items():
        if layer not in tset.layers:
            raise InterpError(f"features: layer {layer} has no transcoder; the transcoders replace layers "
                              f"{tset.layers}")
        chosen = _features(list(feats), tset.d_sae(layer))
        if chosen:
            wanted[layer] = list(dict.fromkeys(chosen))
    if not wanted:
        raise InterpError("features: give at least one feature; given none")

    def read(cache) -> torch.Tensor:  # [batch, pos, all chosen features, layer by layer]
        parts = []
        for layer, feats in wanted.items():
            x = cache[tset.hook_in(layer)]
            f = tset.encode(layer, x.to(torch.promote_types(x.dtype, torch.float32)), clean=True)
            parts.append(f[..., torch.tensor(feats, device=f.device)])
        return torch.cat(parts, -1)

    labels = [(layer, f) for layer, feats in wanted.items() for f in feats]
    return column_profiles(model, corpus, {tset.hook_in(layer) for layer in wanted}, read, labels,
                           ("layer", "feature"), **options)


@torch.no_grad()
def feature_profiles(model, sae: SAE, corpus, features, k: int = 5, *, hook_name: str | None = None,
                     window: int = 12, after: int = 4, bins: int = 40, seq_len: int | None = None,
                     max_tokens: int | None = 200_000, batch_size: int = 8, overlap: int = 0,
                     text_field: str = "text", split: str = "train"):
    """What the neuron pages show for a neuron, for SAE ``features`` (an int or a list) over ``corpus``.

    ``interp.analysis.neurons.neuron_profiles``' scan (any corpus ``as_corpus`` reads, the same windows, the
    same ``max_tokens`` spread over the corpus, the same ranking) reading ``sae.encode`` of the hook: a ``NeuronProfiles`` whose frames start with ``feature``
    instead of ``layer, neuron``. ``examples``: each top example's tokens around the trigger with the
    feature's activation at each; ``histogram``; ``stats`` (``frac_positive`` is the firing frequency).
    """
    from interp.analysis.neurons import column_profiles

    name = check_hook_name(model, feature_hooks(sae, hook_name)[0])
    feats = _features(features, sae.cfg.d_sae)
    if feats is None:
        raise InterpError("features: give a feature index or a list of them; given None")
    feats = list(dict.fromkeys(feats))
    idx = torch.tensor(feats)
    encode = _encoder(sae)

    def read(cache) -> torch.Tensor:  # [batch, pos, len(feats)]
        f = encode(cache[name])
        return f[..., idx.to(f.device)]

    return column_profiles(model, corpus, {name}, read, [(f,) for f in feats], ("feature",), k=k, window=window,
                           after=after, bins=bins, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size,
                           overlap=overlap, text_field=text_field, split=split)
