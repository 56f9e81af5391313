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
import shutil
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
from interp.io import atomic_path, atomic_write_text, check_output_folder

__all__ = [
    "NeuronProfiles",
    "answer_agreement",
    "answer_frame",
    "final_norm_map",
    "neuron_activations",
    "neuron_answers",
    "neuron_contributions",
    "neuron_direction",
    "neuron_profiles",
    "residual_direction",
    "scan_top_contexts",
    "top_neurons",
]

_SCAN_VERSION = 2  # 2: streaming corpus (raw-content fingerprint), document-respecting windows


# ----------------------------------------------------------------------------------------------------
# weights and the final norm


def _refuse_moe(model, layers) -> None:
    """Neurons here are the units of one dense MLP; an MoE layer has E experts' worth, routed per token."""
    cfg = model.cfg
    moe = [layer for layer in layers if getattr(cfg, "is_moe", lambda _: False)(layer)]
    if moe:
        raise InterpError(
            f"layers {moe} are mixture-of-experts layers: neuron analyzers read one dense MLP per layer "
            f"(blocks.{{l}}.mlp.hook_post). Pass dense layers only, or study an expert through its own hooks "
            f"(blocks.{moe[0]}.mlp.experts.{{e}}.hook_post, rows = interp.model.mlp.routed_tokens).")


def _W_out(model, layer: int) -> torch.Tensor:
    """``[d_mlp, d_model]`` output (value) weights of one layer."""
    _refuse_moe(model, [layer])
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
    return residual_direction(model, w)


def residual_direction(model, w: torch.Tensor) -> torch.Tensor:
    """Residual-stream vector(s) ``w [..., d_model]`` as the final norm sees them (float64): centred over
    ``d_model`` for LayerNorm, times the norm's weight. ``residual_direction(model, w) @ W_U`` is the logit
    change per unit of ``w`` before the norm's positive ``1/scale``."""
    w = w.detach().double()
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
    logits = neuron_direction(model, layer, neuron) @ _W_U(model).detach().double()  # [d_vocab]
    if center:
        logits = logits - logits.mean()
    return answer_frame(model, logits, k, direction)


def answer_frame(model, logits: torch.Tensor, k: int = 10, direction: str = "both") -> pd.DataFrame:
    """The ``k`` largest (``top``) and most negative (``bottom``) entries of a ``[d_vocab]`` logit vector,
    as ``neuron_answers`` shows them: ``token, logit, token_id, direction, rank``."""
    if direction not in ("top", "bottom", "both"):
        raise InterpError(f"direction: must be 'top', 'bottom' or 'both'; given {direction!r}")
    k = _resolve_k(k)
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
    _refuse_moe(model, layer_list)
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


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _named_state(model):
    """(name, tensor) for every parameter and persistent buffer, module by module. A model placed with a
    device map (weights offloaded to CPU or disk) has each module's weights brought in only while it is
    read, so they never need to be in memory together."""
    from contextlib import nullcontext

    placed = getattr(model, "hf_device_map", None) is not None
    if placed:
        from accelerate.utils.modeling import align_module_device
    for prefix, module in model.named_modules():
        own = {**module._parameters, **{k: v for k, v in module._buffers.items()
                                         if k not in module._non_persistent_buffers_set}}
        own = {k: v for k, v in own.items() if v is not None}
        if not own:
            continue
        with align_module_device(module, "cpu") if placed else nullcontext():
            for name in own:
                t = getattr(module, name)  # re-read: the hook swaps in the onloaded tensor
                yield (f"{prefix}.{name}" if prefix else name), t


def model_fingerprint(model) -> str:
    """sha256 over the config, every parameter/buffer (names, dtypes, shapes and bytes) and the tokenizer."""
    h = hashlib.sha256()
    cfg = model.cfg
    try:
        cfg_repr = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    except TypeError:
        cfg_repr = repr(cfg)
    h.update(cfg_repr.encode())
    digests = {}
    for name, t in _named_state(model):
        d = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        d.update(_tensor_bytes(t))
        digests[name] = d.hexdigest()
    for name in sorted(digests):  # the same weights give the same fingerprint however they are placed
        h.update(f"{name}:{digests[name]}".encode())
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "to_str"):  # text corpora are hashed raw: the tokenizer decides the ids
        h.update(tok.to_str().encode())
    return h.hexdigest()


def _save_frame(df: pd.DataFrame, folder: Path) -> str:
    try:
        import pyarrow  # noqa: F401

        name = "top_contexts.parquet"
        with atomic_path(folder / name) as tmp:
            df.to_parquet(tmp, index=False)
    except ImportError:  # pandas' JSON writer needs nothing extra
        name = "top_contexts.jsonl"
        atomic_write_text(folder / name, df.to_json(orient="records", lines=True, force_ascii=False))
    return name


def _load_frame(folder: Path, name: str) -> pd.DataFrame:
    if name.endswith(".parquet"):
        return pd.read_parquet(folder / name)
    return pd.read_json(folder / name, orient="records", lines=True)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cached_scan(folder: Path, meta: dict) -> pd.DataFrame | None:
    """The scan saved in ``folder`` if it answers ``meta``, else None.

    ``meta.json`` is the commit record: it names the data file *and its sha256*, so a data file written by
    another scan (a crash between the two renames, a file copied by hand) never passes for this one's."""
    try:
        old = json.loads((folder / "meta.json").read_text())
        if not isinstance(old, dict) or {key: old.get(key) for key in meta} != meta:
            return None
        data = folder / str(old["data"])
        if Path(old["data"]).name != old["data"] or _file_sha256(data) != old.get("data_sha256"):
            return None
        df = _load_frame(folder, old["data"])
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or damaged: scan again
        return None
    df.attrs["meta"] = old
    return df


def _commit_scan(df: pd.DataFrame, folder: Path, meta: dict) -> None:
    """Write the frame, then ``meta.json`` naming its sha256 (see :func:`_cached_scan`). The old commit record
    goes first: a crash in between leaves a folder with no answer, which the next run recomputes."""
    (folder / "meta.json").unlink(missing_ok=True)
    meta["data"] = _save_frame(df, folder)
    meta["data_sha256"] = _file_sha256(folder / meta["data"])
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2))


def _check_nonneg(name: str, v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InterpError(f"{name}: must be an int >= 0 ({what}); given {v!r}")
    return v


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
    overlap: int = 0,
    shard_docs: int = 64,
    progress: bool = True,
    recompute: bool = False,
) -> pd.DataFrame:
    """The *question* each neuron asks: its ``k`` top-activating contexts over a corpus.

    The corpus is anything :func:`interp.data.as_corpus` takes: a string, a list of strings, a
    LongTensor ``[n, pos]`` (one document per row), an iterable of token batches / id lists, a
    ``pathlib.Path`` to a text / JSONL / Parquet file or a folder of them, a `datasets` dataset, or an
    :class:`interp.data.Corpus`. It is tokenized in a background thread and each document cut into
    windows of at most ``seq_len`` (default ``n_ctx``) tokens that never cross into another document;
    with ``overlap > 0`` a long document's later windows start ``overlap`` tokens early, so no trigger
    is scored with less than ``overlap`` tokens of its own document before it (the overlap itself is
    scored by the previous window; ``overlap=0``, the default, tiles documents like before). Windows
    stream through the model ``batch_size`` at a time (right-padded; padded positions never count)
    with a tqdm bar in tokens/s. Per layer, a running top-``k`` per neuron is merged with each batch's
    (ties broken by document then position), so memory stays ``O(k * d_mlp)`` whatever the corpus size.
    The activation is ``mlp.hook_post`` (``act(gate) * up`` for gated MLPs).

    Under ``torchrun`` (a ``torch.distributed`` group initialised) each rank scans every
    ``world_size``-th shard of ``shard_docs`` documents, the top-k lists are merged with collectives and
    every rank returns the same frame (identical to a one-process scan); rank 0 writes ``cache_path``.

    Returns one row per (layer, neuron, rank): ``layer, neuron, rank, activation, doc, position,
    token_id, token, next_token_id, next_token, context``. ``doc`` numbers the corpus's non-empty
    documents; ``position`` indexes the document; ``next_token_id`` is -1 at a document's end.
    ``context`` shows up to ``window`` tokens before the trigger (those the model saw in that window, so
    at most ``seq_len - 1``: a larger ``window`` shows the same),
    the trigger marked «like this», and up to ``after`` tokens of the document after it.

    ``cache_path`` (a folder): when it holds a scan with the same model fingerprint (config, weights and
    tokenizer), corpus fingerprint and options, that scan is loaded instead of recomputed; otherwise the
    result is written there (``top_contexts.parquet``, then ``meta.json`` naming that file's sha256: the
    pair commits as one unit, and a data file that does not match its record is never returned).
    ``recompute=True`` ignores a cached result (and a partial one) and scans again. While a scan runs, each
    rank checkpoints its top-k after every shard under ``cache_path/partial``: rerunning an interrupted
    scan resumes after its last completed shard.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> m = HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=16, n_layers=1, n_heads=2, d_mlp=32))
    >>> df = scan_top_contexts(m, torch.randint(20, (6, 8)), k=3, window=2, progress=False)
    >>> len(df) == 1 * 32 * 3, bool(df.context.str.contains("«").all())
    (True, True)
    """
    from interp.data.corpus import as_corpus
    from interp.data.distributed import barrier, rank_world
    from interp.data.scan import TopK, run_scan

    cfg = model.cfg
    k = _resolve_k(k)
    window = _check_nonneg("window", window, "tokens shown before the trigger")
    after = _check_nonneg("after", after, "tokens shown after the trigger")
    batch_size = _resolve_k(batch_size, "batch_size")
    if seq_len is None:
        seq_len = int(cfg.n_ctx)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= cfg.n_ctx:
        raise InterpError(f"seq_len: must be an int in [1, n_ctx={cfg.n_ctx}]; given {seq_len!r}")
    window = min(window, seq_len - 1)  # a window holds no more before its trigger: the same frame, bounded memory
    if after > seq_len:  # it sizes a [batch, window + seq_len + after] context table: a huge one cannot be built
        raise InterpError(f"after: must be an int in [0, seq_len={seq_len}] (tokens shown after the trigger); "
                          f"given {after}")
    layer_list = _layers("layers", layers, cfg.n_layers)
    _refuse_moe(model, layer_list)
    folder = check_output_folder(cache_path, "cache_path") if cache_path is not None else None
    try:
        corpus = as_corpus(texts_or_token_batches)
    except InterpError as e:
        raise InterpError(f"texts_or_token_batches: {e}") from None

    meta = {
        "version": _SCAN_VERSION,
        "model": model_fingerprint(model),
        "corpus": corpus.fingerprint(),
        "options": {"layers": layer_list, "k": k, "window": window, "after": after, "seq_len": seq_len,
                    "overlap": overlap},
    }
    if folder is not None and not recompute:
        cached = _cached_scan(folder, meta)
        if cached is not None:
            return cached
    if folder is not None and recompute and rank_world()[0] == 0:
        shutil.rmtree(folder / "partial", ignore_errors=True)
    barrier()

    names = {f"blocks.{layer}.mlp.hook_post": layer for layer in layer_list}
    top = TopK(names, k, before=window, after=after)
    try:
        run_scan(model, corpus, [top], seq_len=seq_len, overlap=overlap, batch_size=batch_size,
                 shard_docs=shard_docs, checkpoint_dir=None if folder is None else folder / "partial",
                 meta=meta, progress=progress, desc="scanning neurons")
    except InterpError as e:
        raise InterpError(f"texts_or_token_batches: {e}") from None
    df = _top_frame(model, top, names, window, after)
    if folder is not None and rank_world()[0] == 0:
        _commit_scan(df, folder, meta)
        shutil.rmtree(folder / "partial", ignore_errors=True)
    barrier()
    df.attrs["meta"] = meta
    return df


def _top_frame(model, top, names: dict[str, int], window: int, after: int) -> pd.DataFrame:
    """The merged top-k state as scan_top_contexts' frame (neuron-major, rank order)."""
    id_strs: dict[int, str] = {}

    def id_str(t: int) -> str:
        if t not in id_strs:
            id_strs[t] = token_str(model, t)
        return id_strs[t]

    sep = "" if getattr(model, "tokenizer", None) is not None else " "
    frames = []
    for name, layer in names.items():
        v, gi, ctx = top.values[name], top.gid[name], top.context[name]  # [kk, d], [kk, d], [kk, d, width]
        kk, d_mlp = v.shape
        neuron = torch.arange(d_mlp).expand(kk, d_mlp)
        rank = torch.arange(kk)[:, None].expand(kk, d_mlp)
        keep = torch.isfinite(v)  # fewer than k scored positions in the corpus leaves empty slots
        v, gi, neuron, rank = v.T[keep.T], gi.T[keep.T], neuron.T[keep.T], rank.T[keep.T]  # neuron-major
        ctx = ctx.transpose(0, 1)[keep.T].tolist()  # [rows, width]
        tok_id = [c[window] for c in ctx]
        nxt_id = [c[window + 1] for c in ctx]
        text = []
        for c in ctx:
            pre = [id_str(t) for t in c[:window] if t >= 0]
            post = [id_str(t) for t in c[window + 1:window + 1 + after] if t >= 0]
            trig = f"«{id_str(c[window])}»"
            text.append(sep.join(x for x in (sep.join(pre), trig, sep.join(post)) if x) if sep
                        else "".join(pre) + trig + "".join(post))
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": neuron.numpy(),
                    "rank": rank.numpy() + 1,
                    "activation": v.double().numpy(),
                    "doc": (gi >> 32).numpy(),
                    "position": (gi & 0xFFFFFFFF).numpy(),
                    "token_id": tok_id,
                    "token": [id_str(t) for t in tok_id],
                    "next_token_id": nxt_id,
                    "next_token": [id_str(t) if t >= 0 else "" for t in nxt_id],
                    "context": text,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


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


# A corpus longer than this many times ``max_tokens`` is read only that far (its beginning): windows are then spread
# over what was read. Without it a hub dataset streamed in full (or a huge split) would be tokenized to the end.
READ_FACTOR = 8


def _read_windows(model, corpus, seq_len: int, overlap: int, limit: int | None) -> list:
    """``(Window, document tokens)`` for the corpus's documents, cut as the scan engine cuts them
    (:func:`interp.data.corpus.document_windows`: never across a document), reading about ``limit`` tokens at most."""
    from interp.data.corpus import document_windows, tokenized

    windows, read = [], 0
    stream = tokenized(model, corpus)
    try:
        for di, toks in stream:
            toks = toks.detach().to("cpu", torch.long)
            windows += [(w, toks) for w in document_windows(int(di), toks, seq_len, overlap)]
            read += len(toks)
            if limit is not None and read >= limit:
                break
    finally:
        stream.close()  # stops the tokenizing thread when we leave early
    return windows


@torch.no_grad()
def neuron_profiles(model, corpus, neurons, k: int = 5, window: int = 12, after: int = 4, bins: int = 40,
                    seq_len: int | None = None, max_tokens: int | None = 200_000, batch_size: int = 8, *,
                    overlap: int = 0, text_field: str = "text", split: str = "train") -> NeuronProfiles:
    """Top-activating examples, with the activation at every token around the trigger, and histograms.

    ``corpus`` is anything :func:`interp.data.as_corpus` takes: a string (one document), a list of texts or
    token ids, a ``pathlib.Path`` to a text / JSONL / Parquet file, a folder of them or a saved `datasets`
    folder, a `datasets` ``Dataset`` / ``IterableDataset`` / ``DatasetDict`` (``split`` picks one;
    ``text_field`` names the text column), or an :class:`interp.data.Corpus`. Documents are cut into
    windows exactly as :func:`scan_top_contexts` cuts them (:func:`interp.data.document_windows` with
    ``seq_len``, default ``n_ctx``, and ``overlap``): a window never spans two documents, so neither does an
    example, and every token is scored once. When the corpus has more than ``max_tokens`` tokens
    (``None``: no limit), about that many are scored, in windows spread evenly over it (at most
    ``8 * max_tokens`` tokens of it are read). Each window runs through the model once, keeping
    ``mlp.hook_post`` of the chosen ``neurons`` ((layer, neuron) pairs) only, so memory is
    ``O(tokens * len(neurons))``. Ties rank by document, then position (as the scan engine's top-k does).
    """
    pairs = _neuron_list(model, neurons)
    layers = sorted({layer for layer, _ in pairs})
    _refuse_moe(model, layers)
    names = {f"blocks.{layer}.mlp.hook_post": layer for layer in layers}
    # column j of the result is pairs[j]: where it sits in its layer's activations
    cols = {layer: torch.tensor([n for lay, n in pairs if lay == layer]) for layer in layers}
    order = _pair_order(pairs, layers)

    def read(cache) -> torch.Tensor:  # [B, L, len(pairs)]: only the chosen columns leave the device
        per_layer = [cache[name][:, :, cols[layer].to(cache[name].device)].float().cpu()
                     for name, layer in names.items()]
        return torch.cat(per_layer, dim=-1)[..., order]  # layer-major, then back to ``pairs`` order

    return column_profiles(model, corpus, set(names), read, pairs, ("layer", "neuron"), k=k, window=window,
                           after=after, bins=bins, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size,
                           overlap=overlap, text_field=text_field, split=split)


def profile_windows(model, corpus, *, seq_len: int | None = None, overlap: int = 0, max_tokens: int | None = 200_000,
                    text_field: str = "text", split: str = "train") -> list:
    """The ``(Window, document tokens)`` pairs a profile scans: ``corpus`` cut as :func:`scan_top_contexts` cuts
    it and, when it scores more than ``max_tokens`` tokens, windows spread evenly over all of it (not just its
    beginning) scoring about ``max_tokens`` in all."""
    from interp.data.corpus import as_corpus

    cfg = model.cfg
    seq_len = int(cfg.n_ctx) if seq_len is None else seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= cfg.n_ctx:
        raise InterpError(f"seq_len: must be an int in [1, n_ctx={cfg.n_ctx}]; given {seq_len!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < seq_len:
        raise InterpError(f"overlap: must be an int in [0, seq_len={seq_len}); given {overlap!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise InterpError(f"max_tokens: must be an int >= 1 or None; given {max_tokens!r}")

    source = as_corpus(corpus, text_field=text_field, split=split)
    windows = _read_windows(model, source, seq_len, overlap, None if max_tokens is None else READ_FACTOR * max_tokens)
    scored = sum(len(w.tokens) - w.scored_from for w, _ in windows)
    if scored == 0:
        raise InterpError(f"corpus: no tokens to scan (every document is empty); given {source.description}")
    if max_tokens is not None and scored > max_tokens:
        keep = max(1, round(len(windows) * max_tokens / scored))
        picks = sorted({round(i * (len(windows) - 1) / max(1, keep - 1)) for i in range(keep)})
        windows = [windows[i] for i in picks]
    return windows


@torch.no_grad()
def column_profiles(model, corpus, names, read, labels, key_columns, *, k: int = 5, window: int = 12, after: int = 4,
                    bins: int = 40, seq_len: int | None = None, max_tokens: int | None = 200_000, batch_size: int = 8,
                    overlap: int = 0, text_field: str = "text", split: str = "train") -> NeuronProfiles:
    """The engine of :func:`neuron_profiles` for any per-token quantity: ``read(cache)`` turns a cache of the
    hooks ``names`` into ``[batch, pos, len(labels)]`` values (MLP neurons, SAE features, ...); column ``j``
    is profiled, its rows starting with ``key_columns`` that hold the tuple ``labels[j]``. The corpus, the
    windows, ``max_tokens`` and the ranking are :func:`neuron_profiles`' (see there)."""
    from interp.data.scan import forward_cache, window_batches

    k = _resolve_k(k)
    bins = _resolve_k(bins, "bins")
    batch_size = _resolve_k(batch_size, "batch_size")
    window = _check_nonneg("window", window, "tokens shown before the trigger")
    after = _check_nonneg("after", after, "tokens shown after the trigger")
    windows = profile_windows(model, corpus, seq_len=seq_len, overlap=overlap, max_tokens=max_tokens,
                              text_field=text_field, split=split)

    dev = model_device(model)
    acts: list[torch.Tensor] = []  # per window: [len, len(labels)]
    for batch in window_batches(windows, batch_size, 0, dev):
        cache = forward_cache(model, batch.tokens, set(names))
        values = read(cache).float().cpu()  # [B, L, len(labels)]
        del cache
        for i, w in enumerate(batch.windows):
            acts.append(values[i, : len(w.tokens)])
    # scored positions only (an overlap is context its window's predecessor scored), in document order
    flat = torch.cat([a[w.scored_from:] for a, (w, _) in zip(acts, windows)])  # [tokens, len(labels)]
    where = [(wi, p) for wi, (w, _) in enumerate(windows) for p in range(w.scored_from, len(w.tokens))]
    strs: dict[int, list[str]] = {}
    ex_rows, hist_rows, stat_rows = [], [], []
    for j, key in enumerate(labels):
        key = tuple(key)
        v = flat[:, j].double()
        top = torch.sort(v, descending=True, stable=True).indices[:k]  # stable: ties by document, then position
        for rank, gi in enumerate(top.tolist(), 1):
            wi, p = where[gi]
            w, _ = windows[wi]
            if wi not in strs:
                strs[wi] = str_tokens(model, w.tokens)
            for q in range(max(0, p - window), min(len(w.tokens), p + after + 1)):
                ex_rows.append((*key, rank, w.doc, w.offset + p, q - p, int(w.tokens[q]), strs[wi][q],
                                float(acts[wi][q, j]), q == p))
        counts, edges = torch.histogram(v, bins=bins)
        for b in range(bins):
            hist_rows.append((*key, float(edges[b]), float(edges[b + 1]), int(counts[b])))
        stat_rows.append((*key, len(v), float(v.mean()), float(v.std()) if len(v) > 1 else 0.0,
                          float(v.min()), float(v.max()), float((v > 0).double().mean())))
    keys = list(key_columns)
    examples = pd.DataFrame(ex_rows, columns=[*keys, "rank", "doc", "position", "offset", "token_id", "token",
                                              "activation", "is_trigger"])
    histogram = pd.DataFrame(hist_rows, columns=[*keys, "bin_left", "bin_right", "count"])
    stats = pd.DataFrame(stat_rows, columns=[*keys, "n_tokens", "mean", "std", "min", "max", "frac_positive"])
    return NeuronProfiles(examples, histogram, stats)


def _pair_order(pairs, layers) -> list[int]:
    """Index, in the layer-major concatenation of each layer's chosen neurons, of every pair in ``pairs`` order."""
    start, pos = 0, {}
    for layer in layers:
        mine = [p for p in pairs if p[0] == layer]
        pos.update({p: start + i for i, p in enumerate(mine)})
        start += len(mine)
    return [pos[p] for p in pairs]


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
