"""MLP neurons as key-value memories (Geva et al. 2021, "Transformer Feed-Forward Layers Are
Key-Value Memories").

A neuron ``n`` of layer ``l`` reads the residual stream with its input weights (the *key*: the
question it asks) and, scaled by its activation, adds its output weights ``W_out[l][n]`` (the
*value*: the answer) back into the stream.

* The activation is ``blocks.{l}.mlp.hook_post``: ``act(x @ W_in + b_in)`` for a plain MLP and
  ``act(x @ W_gate) * (x @ W_in)`` for a gated (SwiGLU) MLP, i.e. the key is the product of the
  gate and the "up" projection, and the value is always the row ``W_out[l][n]``.
* The answer (``neuron_answers``) is the value read through the unembedding: the change in every
  token's logit per unit of activation, ``logit_per_unit[t] = (N(W_out[l][n])) . W_U[:, t]``, where
  ``N`` is the linear part of the final norm: multiply by its weight (RMSNorm and LayerNorm) and, for
  LayerNorm, subtract the mean over ``d_model`` first (LayerNorm centres its input, and centring is
  linear, so it applies to each residual component separately). The final norm's data-dependent
  ``1 / scale`` is positive, so it does not change the ranking.
* The question (``scan_top_contexts``) is the set of corpus contexts where the neuron fires most.
* ``top_neurons`` ranks the neurons of one prompt position by activation and by direct logit
  contribution ``activation * N(W_out[l][n]) . W_U[:, target] / scale``, with ``scale`` the cached
  ``ln_final.hook_scale`` at that position. Together with the other residual components
  (embeddings, attention outputs, ``b_out``), each through the same map, plus the final norm's bias
  ``b . W_U[:, target]`` and ``b_U[target]``, these contributions sum exactly to the logit in a
  pre-norm model. Post-norm / DeepNorm models have no such decomposition: contributions are NaN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch

from interp.analysis._inputs import (
    _is_int_like,
    as_tokens,
    check_finite_output,
    check_index,
    model_device,
    str_tokens,
    text_lengths,
    token_str,
)
from interp.errors import InterpError
from interp.io import atomic_path

__all__ = [
    "NeuronProfiles",
    "answer_agreement",
    "final_norm_map",
    "neuron_activations",
    "neuron_answers",
    "neuron_contributions",
    "neuron_direction",
    "neuron_profiles",
    "scan_top_contexts",
    "top_neurons",
]

_SCAN_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# weights and the final norm


def _W_out(model, layer: int) -> torch.Tensor:
    """``[d_mlp, d_model]`` output (value) weights of one layer."""
    mlp = model.blocks[layer].mlp
    w = getattr(mlp, "W_out", None)
    if w is None:
        w = model.W_out[layer]
    return w


def _W_U(model) -> torch.Tensor:
    return model.W_U


def _b_U(model) -> torch.Tensor | None:
    b = getattr(model, "b_U", None)
    return b


def _param(module, *names):
    for n in names:
        v = getattr(module, n, None)
        if isinstance(v, torch.Tensor):
            return v
    return None


@dataclasses.dataclass
class FinalNormMap:
    """The linear part of the final norm: ``x -> (centre(x) if center else x) * weight`` (then ``/ scale + bias``)."""

    center: bool
    weight: torch.Tensor | None  # [d_model] or None (no elementwise weight)
    bias: torch.Tensor | None  # [d_model] or None
    decomposable: bool  # False for post-norm / DeepNorm: the final residual is not a sum of components
    has_norm: bool = True  # False when the model has no final norm (then scale is 1)

    def direction(self, u: torch.Tensor) -> torch.Tensor:
        """Turn an unembedding direction ``u [..., d_model]`` into ``d`` with ``component . d`` =
        the component's logit contribution times ``scale``: ``d = centre(weight * u)`` (LayerNorm) or
        ``weight * u`` (RMSNorm). Centring ``d`` instead of each component is the same number, since
        ``centre(c) . v = c . centre(v)``."""
        d = u if self.weight is None else u * self.weight.to(u.dtype)
        if self.center:
            d = d - d.mean(-1, keepdim=True)
        return d


def final_norm_map(model) -> FinalNormMap:
    """Describe ``model.ln_final`` as a linear map (see ``FinalNormMap``).

    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2, norm="rmsnorm"))
    >>> final_norm_map(m).center
    False
    """
    cfg = model.cfg
    ntype = str(getattr(cfg, "normalization_type", None) or getattr(cfg, "norm", "LN"))
    center = ntype.upper().startswith("LN") or ntype.lower() == "layernorm"
    ln = getattr(model, "ln_final", None)
    weight = bias = None
    if ln is not None:
        weight = _param(ln, "w", "weight")
        bias = _param(ln, "b", "bias")
    else:  # cfg.final_norm=False: the final residual goes straight to the unembedding
        center = False
    placement = str(getattr(cfg, "norm_placement", "pre"))
    return FinalNormMap(
        center=center, weight=weight, bias=bias, decomposable=placement == "pre", has_norm=ln is not None
    )


@torch.no_grad()
def neuron_direction(model, layer: int, neuron: int | None = None) -> torch.Tensor:
    """The value vector(s) as the final norm sees them, float64: ``N(W_out[layer][neuron])``.

    ``neuron=None`` gives all ``[d_mlp, d_model]``. Dot it with ``W_U`` for logits per unit activation.

    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2))
    >>> neuron_direction(m, 0, 3).shape
    torch.Size([16])
    """
    cfg = model.cfg
    layer = check_index("layer", layer, cfg.n_layers)
    w = _W_out(model, layer).detach().double()
    if neuron is not None:
        w = w[check_index("neuron", neuron, w.shape[0])]
    nm = final_norm_map(model)
    if nm.center:
        w = w - w.mean(-1, keepdim=True)
    if nm.weight is not None:
        w = w * nm.weight.detach().double()
    return w


def _resolve_k(k, name="k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InterpError(f"{name}: must be an int >= 1; given {k!r}")
    return k


@torch.no_grad()
def neuron_answers(model, layer: int, neuron: int, k: int = 10, direction: str = "both",
                   center: bool = False) -> pd.DataFrame:
    """The neuron's *answer*: tokens whose logits its value vector raises (``top``) and lowers (``bottom``).

    Columns: ``token, logit, token_id, direction, rank``. ``logit`` is the logit change per unit
    activation before the final norm's positive ``1/scale`` (see module docstring). Rows: the top
    ``k`` in descending order, then the bottom ``k`` (most negative first). ``direction`` picks
    ``"top"``, ``"bottom"`` or ``"both"``. Ranks start at 1.

    ``center=True`` subtracts the mean over the vocabulary first. The softmax ignores a shift shared
    by every logit, so only the centred effect says what the neuron *raises* (positive) and *lowers*
    (negative): an uncentred value vector can lower every logit and still raise some tokens'
    probabilities.

    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2))
    >>> df = neuron_answers(m, 0, 5, k=3)
    >>> df.direction.tolist(), bool(df.logit.iloc[0] >= df.logit.iloc[1])
    (['top', 'top', 'top', 'bottom', 'bottom', 'bottom'], True)
    """
    if direction not in ("top", "bottom", "both"):
        raise InterpError(f"direction: must be 'top', 'bottom' or 'both'; given {direction!r}")
    k = _resolve_k(k)
    logits = neuron_direction(model, layer, neuron) @ _W_U(model).detach().double()  # [d_vocab]
    if center:
        logits = logits - logits.mean()
    k = min(k, logits.shape[0])
    rows = []
    if direction in ("top", "both"):
        v, i = logits.topk(k)
        rows += [("top", r, int(t), float(x)) for r, (x, t) in enumerate(zip(v.tolist(), i.tolist()), 1)]
    if direction in ("bottom", "both"):
        v, i = (-logits).topk(k)
        rows += [("bottom", r, int(t), -float(x)) for r, (x, t) in enumerate(zip(v.tolist(), i.tolist()), 1)]
    return pd.DataFrame(
        {
            "token": [token_str(model, t) for _, _, t, _ in rows],
            "logit": [x for *_, x in rows],
            "token_id": [t for _, _, t, _ in rows],
            "direction": [d for d, *_ in rows],
            "rank": [r for _, r, *_ in rows],
        }
    )


# ----------------------------------------------------------------------------------------------------
# per prompt: activations and direct logit contributions


def _per_batch(name: str, value, batch: int) -> list:
    """An int (same for every batch element) or one int per batch element -> list of ``batch`` values."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if _is_int_like(value):
        return [int(value)] * batch
    if isinstance(value, (Sequence, torch.Tensor)) and not isinstance(value, (str, bytes)):
        vals = value.tolist() if isinstance(value, torch.Tensor) else list(value)
        if len(vals) != batch:
            raise InterpError(
                f"{name}: expected an int or one value per batch element ({batch}); given {len(vals)} values"
            )
        return vals
    raise InterpError(f"{name}: expected an int or a list of ints (one per batch element); given {value!r}")


def _target_ids(model, target, logits_at: torch.Tensor) -> list[int]:
    """Resolve ``target`` (None -> argmax, int, single-token str, or one per batch element)."""
    batch, d_vocab = logits_at.shape
    if target is None:
        return logits_at.argmax(-1).tolist()
    if isinstance(target, str):
        return [_single_token_id(model, target)] * batch
    if isinstance(target, (list, tuple)) and target and all(isinstance(t, str) for t in target):
        if len(target) != batch:
            raise InterpError(f"target: expected one token per batch element ({batch}); given {len(target)}")
        return [_single_token_id(model, t) for t in target]
    return [
        check_index("target", t, d_vocab, allow_negative=False) for t in _per_batch("target", target, batch)
    ]


def _single_token_id(model, s: str) -> int:
    if getattr(model, "tokenizer", None) is None:
        raise InterpError(f"target: a string target needs a tokenizer (model.tokenizer is None); given {s!r}")
    try:
        ids = model.to_tokens(s, prepend_bos=False).reshape(-1).tolist()
    except TypeError:  # a model whose to_tokens has no prepend_bos switch
        ids = model.to_tokens(s).reshape(-1).tolist()
    if len(ids) != 1:
        raise InterpError(f"target: must be a single token; {s!r} tokenises to {len(ids)} tokens {ids}")
    return int(ids[0])


def _layers(name, layers, n_layers) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    if _is_int_like(layers) and not isinstance(layers, torch.Tensor):
        return [check_index(name, layers, n_layers)]
    if isinstance(layers, Iterable) and not isinstance(layers, (str, bytes)):
        out = sorted({check_index(name, v, n_layers) for v in layers})
        if out:
            return out
    raise InterpError(
        f"{name}: expected None, an int or a non-empty list of ints in [0, {n_layers}); given {layers!r}"
    )


@torch.no_grad()
def neuron_contributions(model, tokens, position=-1, target=None, layers=None) -> pd.DataFrame:
    """Activation and direct logit contribution of *every* neuron at one position per batch element.

    Columns: ``batch, position, target_id, target_token, layer, neuron, activation, contribution``.
    ``contribution = activation * N(W_out[layer][neuron]) . W_U[:, target] / scale`` (module
    docstring), computed in float64. ``position`` and ``target`` take one value for all batch
    elements or one per element; ``target=None`` is the model's top prediction there.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=2, n_heads=2))
    >>> df = neuron_contributions(m, torch.tensor([[1, 2, 3], [4, 5, 6]]))
    >>> len(df) == 2 * 2 * m.cfg.d_mlp
    True
    """
    toks = as_tokens(model, tokens)
    cfg = model.cfg
    batch = toks.shape[0]
    # a negative position counts from each row's own end, so -1 is the last real token of a padded text
    lengths = text_lengths(model, tokens, toks)
    pos = [
        check_index("position", p, lengths[b]) for b, p in enumerate(_per_batch("position", position, batch))
    ]

    layer_list = _layers("layers", layers, cfg.n_layers)
    names = {f"blocks.{layer}.mlp.hook_post" for layer in layer_list} | {"ln_final.hook_scale"}
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks, names_filter=lambda nm: nm in names)
    check_finite_output(model, logits)
    bi = torch.arange(batch, device=toks.device)
    pi = torch.tensor(pos, device=toks.device)
    tgt = _target_ids(model, target, logits[bi, pi])
    nm = final_norm_map(model)
    if nm.decomposable:
        u = _W_U(model).detach().double()[:, tgt].T  # [batch, d_model]
        d = nm.direction(u)
        if nm.has_norm:
            scale = cache["ln_final.hook_scale"][bi, pi].double().reshape(batch)  # [batch]
        else:
            scale = torch.ones(batch, dtype=torch.float64, device=toks.device)
    frames = []
    tstr = [token_str(model, t) for t in tgt]
    for layer in layer_list:
        act = cache[f"blocks.{layer}.mlp.hook_post"][bi, pi].double()  # [batch, d_mlp]
        if nm.decomposable:
            per_unit = _W_out(model, layer).detach().double() @ d.T  # [d_mlp, batch]
            contrib = act * per_unit.T / scale[:, None]
        else:
            contrib = torch.full_like(act, float("nan"))
        d_mlp = act.shape[1]
        for b in range(batch):
            frames.append(
                pd.DataFrame(
                    {
                        "batch": b,
                        "position": pos[b],
                        "target_id": tgt[b],
                        "target_token": tstr[b],
                        "layer": layer,
                        "neuron": range(d_mlp),
                        "activation": act[b].cpu().numpy(),
                        "contribution": contrib[b].cpu().numpy(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def top_neurons(model, tokens, position=-1, target=None, k: int = 20, layers=None) -> pd.DataFrame:
    """Neurons with the largest activation and the largest direct effect on ``target``'s logit.

    For every batch element, the ``k`` neurons (over all ``layers``) with the largest activation
    (``ranked_by="activation"``) and the ``k`` with the largest ``|contribution|``
    (``ranked_by="contribution"``; the sign shows promotion vs suppression). Columns: ``layer,
    neuron, activation, contribution, batch, position, target_token, target_id, ranked_by, rank``.
    See ``neuron_contributions`` for the arguments and the module docstring for the exact formula.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=2, n_heads=2))
    >>> df = top_neurons(m, torch.tensor([[1, 2, 3], [4, 5, 6]]), k=5)
    >>> df.groupby(["batch", "ranked_by"]).size().tolist()
    [5, 5, 5, 5]
    """
    k = _resolve_k(k)
    full = neuron_contributions(model, tokens, position=position, target=target, layers=layers)
    cols = ["layer", "neuron", "activation", "contribution", "batch", "position", "target_token", "target_id"]
    out = []
    for _, g in full.groupby("batch", sort=True):
        by_act = g.sort_values("activation", ascending=False, kind="stable").head(k)
        key = g.contribution.abs()
        by_con = g.loc[key.sort_values(ascending=False, kind="stable").index].head(k)
        for name, sel in (("activation", by_act), ("contribution", by_con)):
            sel = sel[cols].copy()
            sel["ranked_by"] = name
            sel["rank"] = range(1, len(sel) + 1)  # 1-based, as in every table
            out.append(sel)
    return pd.concat(out, ignore_index=True)


# ----------------------------------------------------------------------------------------------------
# per neuron: the question (top-activating contexts over a corpus)


def _documents(model, corpus) -> list[torch.Tensor]:
    """Normalise a corpus into a list of 1-D LongTensors (one per document), on the CPU."""
    if isinstance(corpus, str):
        corpus = [corpus]
    if isinstance(corpus, torch.Tensor):
        corpus = [corpus]
    docs: list[torch.Tensor] = []
    if not isinstance(corpus, Iterable):
        raise InterpError(
            "texts_or_token_batches: expected a string, a list of strings, a LongTensor [n, pos] or an "
            f"iterable of token batches; given {type(corpus).__name__}"
        )
    for i, item in enumerate(corpus):
        if isinstance(item, str):
            if getattr(model, "tokenizer", None) is None:
                raise InterpError(
                    "texts_or_token_batches: text needs a model with a tokenizer (model.tokenizer is None); "
                    "pass token ids instead"
                )
            if not item:
                continue
            t = model.to_tokens(item).reshape(-1)
        else:
            t = item if isinstance(item, torch.Tensor) else torch.as_tensor(item)
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim not in (1, 2):
                raise InterpError(
                    f"texts_or_token_batches[{i}]: expected a string or integer token ids of shape [pos] or "
                    f"[batch, pos]; given dtype={t.dtype}, shape={tuple(t.shape)}"
                )
        t = t.detach().to("cpu", torch.long)
        rows = [t] if t.ndim == 1 else list(t)
        for r in rows:
            if r.numel() and (int(r.min()) < 0 or int(r.max()) >= model.cfg.d_vocab):
                raise InterpError(
                    f"texts_or_token_batches[{i}]: token ids must be in [0, d_vocab={model.cfg.d_vocab}); "
                    f"given range [{int(r.min())}, {int(r.max())}]"
                )
            if r.numel():
                docs.append(r)
    if not docs:
        raise InterpError("texts_or_token_batches: the corpus is empty (no tokens)")
    return docs


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_fingerprint(model) -> str:
    """sha256 over the config and every parameter/buffer (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    cfg = model.cfg
    try:
        cfg_repr = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    except TypeError:
        cfg_repr = repr(cfg)
    h.update(cfg_repr.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _corpus_fingerprint(docs: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(len(d).to_bytes(8, "little"))
        h.update(_tensor_bytes(d))
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Write via ``write(tmp_path)`` into a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        write(tmp)


def _save_frame(df: pd.DataFrame, folder: Path) -> str:
    try:
        import pyarrow  # noqa: F401

        name = "top_contexts.parquet"
        _atomic_write(folder / name, lambda p: df.to_parquet(p, index=False))
    except ImportError:  # pandas' JSON writer needs nothing extra
        name = "top_contexts.jsonl"
        _atomic_write(folder / name, lambda p: df.to_json(p, orient="records", lines=True, force_ascii=False))
    return name


def _load_frame(folder: Path, name: str) -> pd.DataFrame:
    if name.endswith(".parquet"):
        return pd.read_parquet(folder / name)
    return pd.read_json(folder / name, orient="records", lines=True)


@torch.no_grad()
def scan_top_contexts(
    model,
    texts_or_token_batches,
    layers=None,
    k: int = 10,
    window: int = 10,
    batch_size: int = 8,
    cache_path=None,
    *,
    seq_len: int | None = None,
    after: int = 3,
    progress: bool = True,
) -> pd.DataFrame:
    """The *question* each neuron asks: its ``k`` top-activating contexts over a corpus.

    The corpus (a string, a list of strings, a LongTensor ``[n, pos]``, or an iterable of token
    batches / id lists) is split into documents, each cut into chunks of at most ``seq_len``
    (default ``n_ctx``) tokens, and streamed through the model ``batch_size`` chunks at a time
    (right-padded; padded positions never count) with a tqdm bar. Per layer, a running top-``k`` per
    neuron is merged with each batch's top-``k`` (``torch.topk`` over the old and new candidates), so
    memory stays ``O(k * d_mlp)`` whatever the corpus size. The activation is ``mlp.hook_post``
    (``act(gate) * up`` for gated MLPs).

    Returns one row per (layer, neuron, rank): ``layer, neuron, rank, activation, doc, position,
    token_id, token, next_token_id, next_token, context``. ``position`` indexes the document;
    ``next_token_id`` is -1 at a document's end. ``context`` shows up to ``window`` tokens before the
    trigger (those the model saw in that chunk), the trigger marked «like this», and ``after``
    tokens after it.

    ``cache_path`` (a folder): when it holds a scan with the same model fingerprint (config and
    weights), corpus fingerprint (token ids) and options, that scan is loaded instead of recomputed;
    otherwise the result is written atomically there (``top_contexts.parquet`` + ``meta.json``).

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2, d_mlp=32))
    >>> df = scan_top_contexts(m, torch.randint(20, (6, 8)), k=3, window=2, progress=False)
    >>> len(df) == 1 * 32 * 3, bool(df.context.str.contains("«").all())
    (True, True)
    """
    cfg = model.cfg
    k = _resolve_k(k)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise InterpError(f"window: must be an int >= 0 (tokens shown before the trigger); given {window!r}")
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InterpError(f"after: must be an int >= 0 (tokens shown after the trigger); given {after!r}")
    batch_size = _resolve_k(batch_size, "batch_size")
    if seq_len is None:
        seq_len = int(cfg.n_ctx)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= cfg.n_ctx:
        raise InterpError(f"seq_len: must be an int in [1, n_ctx={cfg.n_ctx}]; given {seq_len!r}")
    layer_list = _layers("layers", layers, cfg.n_layers)
    docs = _documents(model, texts_or_token_batches)

    meta = {
        "version": _SCAN_VERSION,
        "model": model_fingerprint(model),
        "corpus": _corpus_fingerprint(docs),
        "options": {"layers": layer_list, "k": k, "window": window, "after": after, "seq_len": seq_len},
    }
    folder = Path(cache_path) if cache_path is not None else None
    if folder is not None and (folder / "meta.json").is_file():
        try:
            old = json.loads((folder / "meta.json").read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if (
            old is not None
            and {key: old.get(key) for key in meta} == meta
            and (folder / old["data"]).is_file()
        ):
            df = _load_frame(folder, old["data"])
            df.attrs["meta"] = old
            return df

    # chunks: (doc index, offset in doc, tokens)
    chunks = [
        (di, off, d[off : off + seq_len]) for di, d in enumerate(docs) for off in range(0, len(d), seq_len)
    ]
    dev = model_device(model)
    names = {f"blocks.{layer}.mlp.hook_post": layer for layer in layer_list}
    best_val: dict[int, torch.Tensor] = {}
    best_id: dict[int, torch.Tensor] = {}
    from tqdm.auto import tqdm

    starts = range(0, len(chunks), batch_size)
    for s in tqdm(starts, desc="scanning neurons", unit="batch", disable=not progress):
        group = chunks[s : s + batch_size]
        L = max(len(c[2]) for c in group)
        toks = torch.zeros(len(group), L, dtype=torch.long)
        valid = torch.zeros(len(group), L, dtype=torch.bool)
        for i, (_, _, c) in enumerate(group):
            toks[i, : len(c)] = c
            valid[i, : len(c)] = True
        toks, valid = toks.to(dev), valid.to(dev)
        # global id of (chunk, position): chunk index * seq_len + position
        gid = (
            torch.arange(s, s + len(group), device=dev)[:, None] * seq_len + torch.arange(L, device=dev)
        ).reshape(-1)
        with torch.no_grad():
            _, cache = model.run_with_cache(toks, names_filter=lambda nm: nm in names)
        for name, layer in names.items():
            act = cache[name].float().masked_fill(~valid[..., None], float("-inf"))
            act = act.reshape(-1, act.shape[-1])  # [rows, d_mlp]
            # this batch's top-k first, then merge with the running top-k: O(k * d_mlp) extra memory
            v, idx = act.topk(min(k, act.shape[0]), dim=0)
            ids = gid[idx]
            if layer in best_val:
                v, ids = torch.cat([best_val[layer], v]), torch.cat([best_id[layer], ids])
                v, idx = v.topk(min(k, v.shape[0]), dim=0)
                ids = ids.gather(0, idx)
            best_val[layer], best_id[layer] = v, ids
        del cache

    strs_cache: dict[int, list[str]] = {}
    id_strs: dict[int, str] = {}

    def id_str(t: int) -> str:
        if t not in id_strs:
            id_strs[t] = token_str(model, t)
        return id_strs[t]

    sep = "" if getattr(model, "tokenizer", None) is not None else " "

    def chunk_strs(ci: int) -> list[str]:
        if ci not in strs_cache:
            strs_cache[ci] = str_tokens(model, chunks[ci][2])
        return strs_cache[ci]

    frames = []
    for layer in layer_list:
        v, gi = best_val[layer].cpu(), best_id[layer].cpu()  # [kk, d_mlp]
        kk, d_mlp = v.shape
        neuron = torch.arange(d_mlp).expand(kk, d_mlp)
        rank = torch.arange(kk)[:, None].expand(kk, d_mlp)
        keep = torch.isfinite(v)  # fewer than k valid positions in the corpus leaves -inf slots
        v, gi, neuron, rank = v.T[keep.T], gi.T[keep.T], neuron.T[keep.T], rank.T[keep.T]  # neuron-major
        ci_all, pos_all = (gi // seq_len).tolist(), (gi % seq_len).tolist()
        docs_col, dpos, tok_id, tok_s, nxt_id, nxt_s, ctx = [], [], [], [], [], [], []
        for ci, p in zip(ci_all, pos_all):
            di, off, c = chunks[ci]
            strs = chunk_strs(ci)
            dp = off + p
            docs_col.append(di)
            dpos.append(dp)
            tok_id.append(int(c[p]))
            tok_s.append(strs[p])
            nid = int(docs[di][dp + 1]) if dp + 1 < len(docs[di]) else -1
            nxt_id.append(nid)
            nxt_s.append(id_str(nid) if nid >= 0 else "")
            pre = sep.join(strs[max(0, p - window) : p])
            post = sep.join(strs[p + 1 : p + 1 + after])
            ctx.append(
                sep.join(x for x in (pre, f"«{strs[p]}»", post) if x) if sep else f"{pre}«{strs[p]}»{post}"
            )
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": neuron.numpy(),
                    "rank": rank.numpy() + 1,
                    "activation": v.double().numpy(),
                    "doc": docs_col,
                    "position": dpos,
                    "token_id": tok_id,
                    "token": tok_s,
                    "next_token_id": nxt_id,
                    "next_token": nxt_s,
                    "context": ctx,
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    if folder is not None:
        meta["data"] = _save_frame(df, folder)
        _atomic_write(folder / "meta.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    df.attrs["meta"] = meta
    return df


# ----------------------------------------------------------------------------------------------------
# Geva et al.'s agreement: does the answer predict what follows the question?


@torch.no_grad()
def answer_agreement(model, contexts: pd.DataFrame, by: str = "layer", chunk: int = 1024) -> pd.DataFrame:
    """Geva et al.'s agreement: is a neuron's top answer the token that follows its top trigger?

    ``contexts`` is the frame from ``scan_top_contexts``. A neuron's top answer is
    ``argmax_t N(W_out[l][n]) . W_U[:, t]`` (as in ``neuron_answers``); its top trigger is its rank-1
    context, and neurons whose top trigger ends a document (no next token) are left out.

    ``by="layer"`` (default) — columns ``layer, n_neurons, agreement, agreement_any,
    mean_next_rank, chance``: ``agreement`` is the share of neurons whose top answer equals the
    token after the top-1 trigger (Geva et al. 2021's agreement rate); ``agreement_any`` the share
    where it equals the token after any of the scanned top-k triggers; ``mean_next_rank`` the mean
    rank of the top-1 trigger's next token among all ``d_vocab`` answers (0 = top); ``chance`` is
    ``1 / d_vocab``. ``by="neuron"`` — columns ``layer, neuron, top_answer_id, top_answer,
    next_token_id, next_token, agree, agree_any, next_rank``.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=2, n_heads=2, d_mlp=32))
    >>> ctx = scan_top_contexts(m, torch.randint(20, (6, 8)), k=3, progress=False)
    >>> answer_agreement(m, ctx).columns.tolist()
    ['layer', 'n_neurons', 'agreement', 'agreement_any', 'mean_next_rank', 'chance']
    """
    need = {"layer", "neuron", "rank", "next_token_id"}
    if not isinstance(contexts, pd.DataFrame) or not need <= set(contexts.columns):
        raise InterpError(f"contexts: expected the DataFrame from scan_top_contexts (columns {sorted(need)})")
    if by not in ("layer", "neuron"):
        raise InterpError(f"by: must be 'layer' or 'neuron'; given {by!r}")
    chunk = _resolve_k(chunk, "chunk")
    W_U = _W_U(model).detach().double()
    d_vocab = W_U.shape[1]
    per_neuron = []
    for layer, g in contexts.groupby("layer", sort=True):
        layer = check_index("contexts.layer", int(layer), model.cfg.n_layers, allow_negative=False)
        top1 = g.sort_values(["neuron", "rank"], kind="stable").drop_duplicates("neuron")
        top1 = top1[top1.next_token_id >= 0]
        g = g[g.next_token_id >= 0]
        if len(top1) == 0:
            continue
        d = neuron_direction(model, layer)  # [d_mlp, d_model]
        neurons = torch.tensor(top1.neuron.to_numpy(), dtype=torch.long)
        nxt = torch.tensor(top1.next_token_id.to_numpy(), dtype=torch.long)
        answers, ranks = [], []
        for s in range(0, len(neurons), chunk):  # [chunk, d_vocab] at a time: d_mlp x d_vocab can be large
            lg = d[neurons[s : s + chunk]] @ W_U
            answers.append(lg.argmax(-1).cpu())
            ranks.append((lg > lg.gather(1, nxt[s : s + chunk, None].to(lg.device))).sum(-1).cpu())
        top_answer = torch.cat(answers)
        answer_of = dict(zip(neurons.tolist(), top_answer.tolist()))
        any_hit = (g.next_token_id == g.neuron.map(answer_of)).groupby(g.neuron).any()
        per_neuron.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": neurons.numpy(),
                    "top_answer_id": top_answer.numpy(),
                    "top_answer": [token_str(model, t) for t in top_answer.tolist()],
                    "next_token_id": nxt.numpy(),
                    "next_token": [token_str(model, t) for t in nxt.tolist()],
                    "agree": (top_answer == nxt).numpy(),
                    "agree_any": any_hit.reindex(neurons.numpy()).to_numpy(dtype=bool),
                    "next_rank": torch.cat(ranks).numpy(),
                }
            )
        )
    cols = [
        "layer",
        "neuron",
        "top_answer_id",
        "top_answer",
        "next_token_id",
        "next_token",
        "agree",
        "agree_any",
        "next_rank",
    ]
    neurons_df = pd.concat(per_neuron, ignore_index=True) if per_neuron else pd.DataFrame(columns=cols)
    if by == "neuron":
        return neurons_df
    out = (
        neurons_df.groupby("layer", sort=True)
        .agg(
            n_neurons=("neuron", "size"),
            agreement=("agree", "mean"),
            agreement_any=("agree_any", "mean"),
            mean_next_rank=("next_rank", "mean"),
        )
        .reset_index()
    )
    out["chance"] = 1.0 / d_vocab
    return out[["layer", "n_neurons", "agreement", "agreement_any", "mean_next_rank", "chance"]]


# ----------------------------------------------------------------------------------------------------
# one neuron, Neuronpedia-style: where it fires over a corpus, how its activations are spread, and its
# activation over every token of a prompt


@dataclasses.dataclass
class NeuronProfiles:
    """What :func:`neuron_profiles` found for a few neurons over one corpus.

    ``examples``: one row per token of each top-activating example (``layer, neuron, rank, doc,
    position, offset, token_id, token, activation, is_trigger``): ``rank`` 1 is the largest
    activation, ``position`` the trigger's index in its document, ``offset`` the token's place
    relative to the trigger (``-window .. after``), ``activation`` the neuron's value at that token (in
    the chunk the model saw). ``histogram``: ``layer, neuron, bin_left, bin_right, count`` over every
    scanned token. ``stats``: ``layer, neuron, n_tokens, mean, std, min, max, frac_positive``.
    """

    examples: pd.DataFrame
    histogram: pd.DataFrame
    stats: pd.DataFrame


def _neuron_list(model, neurons) -> list[tuple[int, int]]:
    cfg = model.cfg
    out = []
    for item in neurons:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InterpError(f"neurons: expected (layer, neuron) pairs; given {item!r}")
        layer = check_index("layer", item[0], int(cfg.n_layers), allow_negative=False)
        out.append((layer, check_index("neuron", item[1], int(cfg.d_mlp), allow_negative=False)))
    if not out:
        raise InterpError("neurons: give at least one (layer, neuron) pair")
    return list(dict.fromkeys(out))


@torch.no_grad()
def neuron_profiles(model, corpus, neurons, k: int = 5, window: int = 12, after: int = 4, bins: int = 40,
                    seq_len: int | None = None, max_tokens: int | None = 200_000,
                    batch_size: int = 8) -> NeuronProfiles:
    """Top-activating examples, with the activation at every token around the trigger, and histograms.

    ``corpus`` is what :func:`scan_top_contexts` takes (text, list of texts, token ids). Documents are
    cut into chunks of ``seq_len`` (default ``n_ctx``) tokens; when the corpus is longer than
    ``max_tokens`` (``None``: no limit), about that many tokens are read, in chunks spread evenly over it. Every chunk runs through the model once, keeping ``mlp.hook_post`` of the chosen
    ``neurons`` ((layer, neuron) pairs) only, so memory is ``O(tokens * len(neurons))``.
    """
    k = _resolve_k(k)
    bins = _resolve_k(bins, "bins")
    for name, v in (("window", window), ("after", after)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InterpError(f"{name}: must be an int >= 0; given {v!r}")
    cfg = model.cfg
    seq_len = int(cfg.n_ctx) if seq_len is None else seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= cfg.n_ctx:
        raise InterpError(f"seq_len: must be an int in [1, n_ctx={cfg.n_ctx}]; given {seq_len!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise InterpError(f"max_tokens: must be an int >= 1 or None; given {max_tokens!r}")
    pairs = _neuron_list(model, neurons)
    docs = _documents(model, corpus)
    chunks = [(di, off, d[off: off + seq_len]) for di, d in enumerate(docs) for off in range(0, len(d), seq_len)]
    total = sum(len(c) for _, _, c in chunks)
    if max_tokens is not None and total > max_tokens:
        # chunks spread evenly over the corpus (not just its beginning), about max_tokens tokens in all
        keep = max(1, round(len(chunks) * max_tokens / total))
        picks = sorted({round(i * (len(chunks) - 1) / max(1, keep - 1)) for i in range(keep)})
        chunks = [chunks[i] for i in picks]
    layers = sorted({layer for layer, _ in pairs})
    cols = {layer: torch.tensor([n for lay, n in pairs if lay == layer]) for layer in layers}
    names = {f"blocks.{layer}.mlp.hook_post": layer for layer in layers}
    dev = model_device(model)
    acts: list[torch.Tensor] = []  # per chunk: [len, len(pairs)] in ``pairs`` order
    for s in range(0, len(chunks), batch_size):
        group = chunks[s: s + batch_size]
        L = max(len(c) for _, _, c in group)
        toks = torch.zeros(len(group), L, dtype=torch.long)
        for i, (_, _, c) in enumerate(group):
            toks[i, : len(c)] = c  # right padding: causal attention never lets it reach real tokens
        _, cache = model.run_with_cache(toks.to(dev), names_filter=lambda nm: nm in names)
        per_layer = {layer: cache[nm][:, :, cols[layer].to(dev)].float().cpu() for nm, layer in names.items()}
        for i, (_, _, c) in enumerate(group):
            parts = {layer: per_layer[layer][i, : len(c)] for layer in layers}
            idx = {layer: 0 for layer in layers}
            row = []
            for layer, _ in pairs:
                row.append(parts[layer][:, idx[layer]])
                idx[layer] += 1
            acts.append(torch.stack(row, dim=1))
        del cache
    flat = torch.cat(acts)  # [tokens, len(pairs)]
    where = [(ci, p) for ci, (_, _, c) in enumerate(chunks) for p in range(len(c))]
    strs: dict[int, list[str]] = {}
    ex_rows, hist_rows, stat_rows = [], [], []
    for j, (layer, neuron) in enumerate(pairs):
        v = flat[:, j].double()
        top = v.topk(min(k, len(v)))
        for rank, gi in enumerate(top.indices.tolist(), 1):
            ci, p = where[gi]
            di, off, c = chunks[ci]
            if ci not in strs:
                strs[ci] = str_tokens(model, c)
            for q in range(max(0, p - window), min(len(c), p + after + 1)):
                ex_rows.append((layer, neuron, rank, di, off + p, q - p, int(c[q]), strs[ci][q],
                                float(acts[ci][q, j]), q == p))
        counts, edges = torch.histogram(v, bins=bins)
        for b in range(bins):
            hist_rows.append((layer, neuron, float(edges[b]), float(edges[b + 1]), int(counts[b])))
        stat_rows.append((layer, neuron, len(v), float(v.mean()), float(v.std()) if len(v) > 1 else 0.0,
                          float(v.min()), float(v.max()), float((v > 0).double().mean())))
    examples = pd.DataFrame(ex_rows, columns=["layer", "neuron", "rank", "doc", "position", "offset", "token_id",
                                              "token", "activation", "is_trigger"])
    histogram = pd.DataFrame(hist_rows, columns=["layer", "neuron", "bin_left", "bin_right", "count"])
    stats = pd.DataFrame(stat_rows, columns=["layer", "neuron", "n_tokens", "mean", "std", "min", "max",
                                             "frac_positive"])
    return NeuronProfiles(examples, histogram, stats)


@torch.no_grad()
def neuron_activations(model, tokens, layer: int, neuron: int) -> pd.DataFrame:
    """One neuron's activation (``mlp.hook_post``) at every position of one sequence.

    Columns: ``position, token_id, token, activation``.
    """
    toks = as_tokens(model, tokens)[:1]
    layer = check_index("layer", layer, int(model.cfg.n_layers))
    neuron = check_index("neuron", neuron, int(model.cfg.d_mlp))
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(toks, names_filter=lambda nm: nm == name)
    act = cache[name][0, :, neuron].double().cpu()
    ids = toks[0].tolist()
    return pd.DataFrame({"position": range(len(ids)), "token_id": ids, "token": str_tokens(model, ids),
                         "activation": act.numpy()})
