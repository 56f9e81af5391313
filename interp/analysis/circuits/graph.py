"""Attribution graphs on transcoders (Ameisen et al. 2025, "Circuit Tracing"): a prompt's computation as a
graph of linear effects between features, errors, tokens and logits.

**The local replacement model.** For one prompt, every MLP is replaced by its transcoder plus an *error*
(the real MLP output minus the transcoder's prediction, a constant), every attention pattern and every
norm's scale (LayerNorm/RMSNorm denominators, ``*.hook_scale``) is frozen at its value on the prompt, and
each feature's activation is frozen too. What is left is affine: the residual stream is a sum of token
embeddings (+ positional ones), feature decoder vectors ``a_f · W_dec[f]``, errors and constant biases, moved
between positions by the frozen patterns and rescaled by the frozen norms. Its forward values equal the
real model's exactly.

**Nodes**, in this order (the adjacency matrix's order; ``nodes.id``):

* ``feature``: each active transcoder feature at ``(layer, position, feature)`` (``activation`` = a_f);
* ``error``: one per ``(layer, position)``: that MLP output's error (``value`` = its norm);
* ``token``: one per position: the input embedding there (token + positional embedding);
* ``logit``: the top next-token logits at the last position — the fewest whose probabilities add up to
  ``logit_probability``, at most ``max_logits`` — as circuit-tracer: ``value`` is the *centred* logit
  ``logit_t − mean_v logit_v`` (a constant added to every logit changes no probability), taken before a final
  soft-cap (Gemma 2's ``c·tanh(z/c)`` is not linear; its argument is), ``probability`` the real model's.

**Edges.** ``adjacency[target, source]`` is the *direct* effect of ``source`` on ``target`` in the replacement
model: on a feature's pre-activation ``x·W_enc[:, f] + b_enc[f]``, or on a logit node's centred logit, along
paths through attention (frozen patterns), norms (frozen scales) and skip terms, but not through another
feature (features are nodes: their activations are frozen). Source contributions are linear, so the edge
is ``a_s · W_dec[s] · ∂target/∂(layer's MLP output)`` for features, ``error · ∂target/∂(MLP output)`` for errors
and ``embedding · ∂target/∂(embedding)`` for tokens; the gradients come from batched backward passes (one
per ``batch_size`` targets: the prompt runs ``batch_size`` times side by side and each copy carries one
target's gradient).

*Cross-layer transcoders* (``interp.analysis.sae.cross_layer``): a feature at layer ``l`` writes
``a_f · W_dec[l, f, l']`` into every MLP output ``l' >= l``; its edge to a target is the sum of those writes'
direct effects, ``Σ_l' a_f · W_dec[l, f, l'] · ∂target/∂(MLP l' output)`` (only ``l'`` before a feature target's
layer reach its pre-activation), and each MLP output's error is measured against the sum of every feature's write
to it. The code reads either kind through ``transcoder.TranscoderSet``; a CLT whose decoders to later layers are
zero gives the per-layer graph.

*Completeness.* Everything else in the replacement model is a constant, so for every target node
``value = Σ_sources adjacency[target, source] + bias``, with ``bias`` the target's value when every node's
contribution is zero (embeddings, feature activations and errors set to 0 under the same frozen patterns and
scales): the biases of attention, norms, transcoder ``b_dec`` and the unembedding. ``nodes.bias`` holds it.

**Pruning** (the paper's §"Graph pruning"): with |A| row-normalised to Â (each target's incoming weights sum
to 1), a node's *influence* on the logits is ``w (Â + Â² + Â³ + …)`` with ``w`` the logit nodes' probabilities
(Â is nilpotent: the graph has no cycles). Feature and error nodes are kept from the most influential down
until their influence adds up to ``node_threshold`` of the total; edges likewise by ``Â[t, s] · (influence +
w)[t]`` up to ``edge_threshold``; token and logit nodes always stay; nodes left without edges go.
*Scores* (the paper's, on the unpruned graph): **replacement score** — the share of the tokens' and errors'
influence on the logits that starts at tokens; **completeness score** — the share of incoming (normalised)
weight that comes from non-error nodes, averaged over the nodes that have inputs (features and logits; tokens
and errors have none) weighted by their influence + w.

**JSON** (``AttributionGraph.save`` / ``load_graph``; ``format`` ``"interp.attribution_graph"``, ``version`` 1)::

    {"format": "interp.attribution_graph", "version": 1,
     "model": {"name", "n_layers", "d_model", "d_vocab"},
     "transcoders": [{"layer", "hook_name", "hook_name_out", "d_sae", "architecture", "skip", "cross_layer"}],
     "prompt": str | null, "tokens": [int], "str_tokens": [str],
     "options": {"max_logits", "logit_probability", "node_threshold", "edge_threshold", "pruned", ...},
     "scores": {"replacement_score", "completeness_score", "n_nodes_full", "n_edges_full"},
     "nodes": [{"id", "kind", "layer", "position", "feature", "activation", "token_id", "token",
                "probability", "value", "bias", "influence", "top_logits": [[token, effect], ...]}],
     "edges": [{"source": id, "target": id, "weight": float}]}

``cross_layer`` is true for a cross-layer transcoder's layers (their features write to every later MLP).
``layer`` is −1 for token nodes and ``n_layers`` for logit nodes; fields that do not apply to a kind are null;
``top_logits`` (features only): the tokens the feature's decoder vector raises most through the final norm's
gain and the unembedding (centred), for presentation. ``edges`` lists the non-zero entries of ``adjacency``.

**Interventions**: ``intervene(model, transcoders, prompt, {(layer, position, feature): value})`` runs the
model with the transcoders spliced in (with their errors, so nothing changes unless a feature does) and the
features set (``mode="set"``) or multiplied (``mode="scale"``) — downstream features and attention respond —
and reports the next-token distribution before and after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import torch

from interp.analysis.sae.transcoder import TranscoderSet, splice_transcoders, transcoder_set
from interp.errors import InterpError

__all__ = ["GRAPH_FORMAT", "AttributionGraph", "Intervention", "attribution_graph", "graph_scores", "intervene",
           "load_graph", "node_influence", "prune_graph"]

GRAPH_FORMAT, GRAPH_VERSION = "interp.attribution_graph", 1
NODE_COLUMNS = ["id", "kind", "layer", "position", "feature", "activation", "token_id", "token", "probability",
                "value", "bias", "influence", "top_logits"]
KINDS = ("feature", "error", "token", "logit")


@dataclasses.dataclass
class AttributionGraph:
    """Nodes (a DataFrame, ``NODE_COLUMNS``, row ``i`` = node ``id`` ``i``) and ``adjacency [target, source]``
    (module docstring). ``info`` holds the JSON's ``model``, ``transcoders``, ``prompt``, ``tokens``,
    ``str_tokens``, ``options`` and ``scores``."""

    nodes: pd.DataFrame
    adjacency: torch.Tensor
    info: dict

    @property
    def scores(self) -> dict:
        return self.info.get("scores", {})

    def edges(self) -> pd.DataFrame:
        """The non-zero edges: ``source, target, weight`` (node ids), strongest first."""
        t, s = self.adjacency.nonzero(as_tuple=True)
        w = self.adjacency[t, s]
        order = w.abs().argsort(descending=True)
        return pd.DataFrame({"source": s[order].numpy(), "target": t[order].numpy(),
                             "weight": w[order].double().numpy()})

    def to_dict(self) -> dict:
        nodes = self.nodes.astype(object).where(self.nodes.notna(), None).to_dict(orient="records")
        for n in nodes:  # numpy scalars -> plain JSON numbers
            for k, v in n.items():
                if hasattr(v, "item"):
                    n[k] = v.item()
        edges = self.edges()
        return {"format": GRAPH_FORMAT, "version": GRAPH_VERSION, **self.info, "nodes": nodes,
                "edges": [{"source": int(s), "target": int(t), "weight": float(w)}
                          for s, t, w in zip(edges.source, edges.target, edges.weight)]}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the documented JSON (atomically; refuses to replace a file unless ``overwrite``)."""
        from interp.io import atomic_write_text

        path = Path(path)
        if path.exists() and not overwrite:
            raise InterpError(f"path: {path} already exists; pass overwrite=True (CLI: --force) to replace it")
        atomic_write_text(path, json.dumps(self.to_dict(), allow_nan=False) + "\n")
        return path


def load_graph(path: str | Path) -> AttributionGraph:
    """Read a graph written by ``AttributionGraph.save`` (the module docstring's JSON)."""
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"path: {path} is not a file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InterpError(f"path: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != GRAPH_FORMAT:
        raise InterpError(f"path: {path} is not an attribution graph (format must be {GRAPH_FORMAT!r})")
    if data.get("version") != GRAPH_VERSION:
        raise InterpError(f"path: {path} has graph version {data.get('version')!r}; this interp reads {GRAPH_VERSION}")
    nodes = _typed(pd.DataFrame(data["nodes"], columns=NODE_COLUMNS))
    n = len(nodes)
    if list(nodes["id"]) != list(range(n)):
        raise InterpError(f"path: {path}: node ids must be 0..{n - 1} in order")
    adj = torch.zeros(n, n, dtype=torch.float64)
    if data["edges"]:
        e = pd.DataFrame(data["edges"])
        adj[torch.tensor(e.target.values), torch.tensor(e.source.values)] = torch.tensor(e.weight.values,
                                                                                          dtype=torch.float64)
    info = {k: v for k, v in data.items() if k not in ("format", "version", "nodes", "edges")}
    return AttributionGraph(nodes=nodes, adjacency=adj, info=info)


def _typed(nodes: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as integers (``feature`` and ``token_id`` nullable: not every kind has one)."""
    nodes = nodes.astype({"id": "int64", "layer": "int64", "position": "int64", "feature": "Int64",
                          "token_id": "Int64"})
    nodes["top_logits"] = nodes["top_logits"].astype(object)
    return nodes


# ----------------------------------------------------------------------------------------------------
# influence, pruning and scores (module docstring)


def _normalized(adjacency: torch.Tensor) -> torch.Tensor:
    a = adjacency.abs().double()
    return a / a.sum(1, keepdim=True).clamp_min(1e-30)


def _influence(normalized: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``w (Â + Â² + …)``: the series ends because Â is nilpotent (no cycles)."""
    total = torch.zeros_like(weights)
    cur = weights @ normalized
    for _ in range(normalized.shape[0]):
        if not bool(cur.any()):
            return total
        total += cur
        cur = cur @ normalized
    raise InterpError("adjacency: the graph has a cycle (influence does not converge)")


def _logit_weights(graph: AttributionGraph) -> torch.Tensor:
    w = torch.zeros(len(graph.nodes), dtype=torch.float64)
    logits = (graph.nodes.kind == "logit").to_numpy()
    w[torch.tensor(logits)] = torch.tensor(graph.nodes.probability[logits].astype(float).to_numpy())
    return w


def node_influence(graph: AttributionGraph) -> torch.Tensor:
    """Each node's total (normalised) influence on the logit nodes, weighted by their probabilities."""
    return _influence(_normalized(graph.adjacency), _logit_weights(graph))


def _threshold(scores: torch.Tensor, fraction: float) -> float:
    """The smallest score among the top scores whose sum first reaches ``fraction`` of the total."""
    s = scores.flatten()
    s = s[s > 0].sort(descending=True).values  # zeros add nothing to the sum: leave them out of the sort
    if len(s) == 0:
        return math.inf
    total = float(s.sum())
    if total <= 0:
        return math.inf
    idx = int(torch.searchsorted(s.cumsum(0) / total, torch.tensor(fraction, dtype=s.dtype)))
    return float(s[min(idx, len(s) - 1)])


def _fraction(name, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise InterpError(f"{name}: must be a fraction in (0, 1]; given {v!r}")
    return float(v)


def graph_scores(graph: AttributionGraph) -> dict:
    """The paper's replacement and completeness scores of ``graph`` (module docstring)."""
    norm, w = _normalized(graph.adjacency), _logit_weights(graph)
    return _scores(graph, norm, w, _influence(norm, w))


def _scores(graph: AttributionGraph, norm: torch.Tensor, w: torch.Tensor, infl: torch.Tensor) -> dict:
    kinds = graph.nodes.kind.to_numpy()
    err, tok = torch.tensor(kinds == "error"), torch.tensor(kinds == "token")
    token_infl, error_infl = float(infl[tok].sum()), float(infl[err].sum())
    out_infl = infl + w
    non_error = 1.0 - norm[:, err].sum(1)
    targets = norm.sum(1) > 0  # nodes with no inputs (tokens, errors) have nothing to explain
    denom = float(out_infl[targets].sum())
    return {"replacement_score": token_infl / (token_infl + error_infl) if token_infl + error_infl > 0 else math.nan,
            "completeness_score": float((non_error * out_infl)[targets].sum()) / denom if denom > 0 else math.nan}


def prune_graph(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
                ) -> AttributionGraph:
    """The subgraph of the most influential nodes and edges (module docstring); ids are renumbered, the
    ``influence`` column holds each kept node's influence in the full graph."""
    node_threshold, edge_threshold = _fraction("node_threshold", node_threshold), _fraction("edge_threshold",
                                                                                             edge_threshold)
    kinds = graph.nodes.kind.to_numpy()
    always = torch.as_tensor((kinds == "token") | (kinds == "logit"))
    feature = torch.as_tensor(kinds == "feature")
    w = _logit_weights(graph)
    infl = _influence(_normalized(graph.adjacency), w)
    keep = always | (infl >= _threshold(infl[~always], node_threshold))
    for _ in range(len(kinds)):  # dropping nodes can strand others: repeat until nothing changes
        adj = graph.adjacency.double() * keep[:, None] * keep[None, :]
        norm = _normalized(adj)
        edge_scores = norm * (_influence(norm, w) + w)[:, None]
        edge_keep = edge_scores >= _threshold(edge_scores, edge_threshold)
        new = keep.clone()
        new[~always] &= edge_keep[:, ~always].any(0)  # features and errors must send an edge
        new[feature] &= edge_keep[feature].any(1)  # features must receive one
        if torch.equal(new, keep):
            break
        keep = new
    adj = torch.where(edge_keep & keep[:, None] & keep[None, :], graph.adjacency, 0.0)
    idx = keep.nonzero().flatten()
    nodes = graph.nodes.iloc[idx.numpy()].copy()
    nodes["influence"] = infl[idx].numpy()
    nodes["id"] = range(len(nodes))
    info = {**graph.info, "options": {**graph.info.get("options", {}), "pruned": True,
                                       "node_threshold": node_threshold, "edge_threshold": edge_threshold}}
    return AttributionGraph(nodes=nodes.reset_index(drop=True), adjacency=adj[idx][:, idx].contiguous(), info=info)


# ----------------------------------------------------------------------------------------------------
# building the graph


@contextlib.contextmanager
def _frozen_replacement(model, ts: TranscoderSet, record: dict):
    """Hooks that turn ``model`` into the local replacement model (module docstring) for a forward pass.

    Norm scales and attention patterns pass through detached (frozen at the values they have). The embedding
    and each layer's ``D_l = (MLP output − skip(x))`` (decoder sum + b_dec + error) become fresh leaves that
    require grad; each MLP output is returned as ``skip(x) + D_l``, equal to the real one. ``record`` receives
    ``inputs[l]`` (the transcoder's input, in the graph), ``D[l]``, ``acts[l]`` and ``embed``.
    """
    record.update(inputs={}, D={}, acts={})

    def detach(act, hook=None):
        return act.detach()

    def embed(act, hook=None):
        record["embed"] = act.detach().requires_grad_(True)
        return record["embed"]

    def read(layer):
        def hook(act, hook=None):
            record["inputs"][layer] = act
            with torch.no_grad():
                record["acts"][layer] = ts.encode(layer, act[0], clean=True).detach()  # every copy: the prompt
        return hook

    def write(layer):
        def hook(act, hook=None):
            skip = ts.skip(layer, record["inputs"][layer])
            d = (act - skip).detach().requires_grad_(True)
            record["D"][layer] = d
            return skip + d
        return hook

    names = model.hook_dict
    fwd = [(n, detach) for n in names if n.endswith((".hook_scale", "attn.hook_pattern"))]
    fwd.append(("hook_embed", embed))
    if "hook_pos_embed" in names:
        fwd.append(("hook_pos_embed", detach))
    for layer in ts.layers:
        fwd += [(ts.hook_in(layer), read(layer)), (ts.hook_out(layer), write(layer))]
    with model.hooks(fwd_hooks=fwd):
        yield


def _logit_directions(model, resid_last: torch.Tensor, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of each centred logit with respect to the final residual (final norm's scale frozen), and the
    centred logit values (before any final soft-cap)."""
    x = resid_last.detach().reshape(1, 1, -1).requires_grad_(True)
    freeze = [(n, lambda a, hook=None: a.detach()) for n in model.hook_dict if n.startswith("ln_final.hook_scale")]
    with model.hooks(fwd_hooks=freeze):
        y = model.ln_final(x) if model.cfg.final_norm else x
    logits = model.unembed(y)[0, 0] * model.cfg.logit_scale
    centred = logits - logits.mean()
    grads = [torch.autograd.grad(centred[t], x, retain_graph=True)[0].reshape(-1) for t in token_ids]
    return torch.stack(grads), centred[token_ids].detach()


def _top_logits(model, vectors: torch.Tensor, k: int) -> list[list]:
    """For each decoder vector: the ``k`` tokens it raises most (centred logit effect through the final
    norm's gain and the unembedding)."""
    from interp.analysis._inputs import str_tokens

    if len(vectors) == 0 or k == 0:
        return [[] for _ in range(len(vectors))]
    with torch.no_grad():
        gain = model.ln_final.gain(vectors.dtype) if model.cfg.final_norm else None
        v = vectors * gain if gain is not None else vectors
        out = []
        for chunk in v.split(256):
            eff = chunk @ model.W_U.to(chunk.dtype)
            eff = eff - eff.mean(-1, keepdim=True)
            vals, idx = eff.topk(min(k, eff.shape[-1]), dim=-1)
            for vs, ids in zip(vals.tolist(), idx.tolist()):
                out.append([[s, round(float(x), 4)] for s, x in zip(str_tokens(model, ids), vs)])
    return out


def _by_position(positions: torch.Tensor, vectors: torch.Tensor, n_pos: int):
    """``vectors [S, d]`` (sorted by position) laid out as ``[n_pos, K, d]`` (K: the most at one position, zero
    padded), with each vector's (position, slot), so edges to every source come from one batched matmul."""
    counts = torch.bincount(positions, minlength=n_pos)
    starts = counts.cumsum(0) - counts
    slot = torch.arange(len(positions), device=positions.device) - starts[positions]
    padded = vectors.new_zeros(n_pos, int(counts.max()) if len(positions) else 1, vectors.shape[-1])
    padded[positions, slot] = vectors
    return padded, positions, slot


def attribution_graph(model, transcoders, prompt, *, max_logits: int = 10, logit_probability: float = 0.95,
                      batch_size: int = 32, prune: bool = True, node_threshold: float = 0.8,
                      edge_threshold: float = 0.98, top_logits: int = 5) -> AttributionGraph:
    """The attribution graph of ``prompt`` (text or token ids; one sequence) through ``transcoders`` (one per
    layer of ``model``, a list or ``load_transcoders(folder)``), pruned unless ``prune=False``.

    See the module docstring for nodes, edges, pruning, scores and the JSON. ``batch_size`` targets share one
    backward pass (memory grows with it). Needs interp's native ``HookedDecoder``.
    """
    from interp.analysis._inputs import as_tokens, model_device, str_tokens

    if not (hasattr(model, "blocks") and hasattr(model, "ln_final") and hasattr(model, "unembed")):
        raise InterpError("model: attribution graphs need interp's native HookedDecoder (interp.load of a native "
                          f"family); given {type(model).__name__}")
    ts = transcoder_set(model, transcoders)
    missing = sorted(set(range(model.cfg.n_layers)) - set(ts.layers))
    if missing:
        raise InterpError(f"transcoders: the replacement model needs one for every layer; layers {missing} "
                          "have none")
    if isinstance(max_logits, bool) or not isinstance(max_logits, int) or max_logits < 1:
        raise InterpError(f"max_logits: must be an int >= 1; given {max_logits!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InterpError(f"batch_size: must be an int >= 1; given {batch_size!r}")
    logit_probability = _fraction("logit_probability", logit_probability)
    if isinstance(prompt, str) and not prompt.strip() or isinstance(prompt, torch.Tensor) and prompt.numel() == 0:
        raise InterpError(f"prompt: expected a non-empty text or token ids; given {prompt!r}")
    toks = as_tokens(model, prompt, name="prompt")
    if toks.shape[0] != 1:
        raise InterpError(f"prompt: one sequence at a time; given {toks.shape[0]}")
    n_pos, n_layers, dev = toks.shape[1], model.cfg.n_layers, model_device(model)
    toks = toks.to(dev)
    dtype = next(model.parameters()).dtype
    ts = ts.converted(dev, dtype)
    layers = ts.layers

    # the clean run: next-token probabilities (after any soft-cap: the model's real distribution)
    with torch.no_grad():
        probs = torch.softmax(model(toks)[0, -1].double(), -1)
    top = probs.sort(descending=True)
    n_logits = min(max_logits, int(torch.searchsorted(top.values.cumsum(0), logit_probability)) + 1)
    logit_ids, logit_probs = top.indices[:n_logits].tolist(), top.values[:n_logits]

    # one batched forward through the replacement model; the final norm and unembedding are applied per
    # logit node by _logit_directions instead (the batched logits would be [batch, pos, vocab])
    rec: dict = {}
    batch = toks.expand(batch_size, n_pos)
    with torch.enable_grad(), _frozen_replacement(model, ts, rec):
        resid = model(batch, stop_at_layer=n_layers)
    logit_grads, logit_values = _logit_directions(model, resid[0, -1], logit_ids)

    # nodes: features (by layer, position, feature), errors, tokens, logits
    acts = {layer: rec["acts"][layer] for layer in layers}
    feat_idx = {layer: acts[layer].nonzero() for layer in layers}  # [S_l, 2] (position, feature)
    # writes_into[l']: for each source layer whose features write MLP l''s output (its own layer only, for
    # per-layer transcoders; every l <= l' for a CLT), those writes a_f · W_dec[f -> l'] laid out by position
    errors, pre_acts = {}, {}
    writes_into: dict[int, list] = {layer: [] for layer in layers}
    with torch.no_grad():
        for layer in layers:
            p, f = feat_idx[layer].unbind(-1)
            outs, w_dec = ts.decoders(layer)
            vecs = acts[layer][p, f][:, None, None] * w_dec[f]  # [S, len(outs), d]
            for j, out in enumerate(outs):
                writes_into[out].append((layer, _by_position(p, vecs[:, j], n_pos)))
            errors[layer] = rec["D"][layer][0].detach() - ts.reconstruct(layer, acts, clean=True)
            pre_acts[layer] = ts.pre_activations(layer, rec["inputs"][layer][0])[p, f]
        embed_vecs = rec["embed"][0].detach()
        if "hook_pos_embed" in model.hook_dict and model.cfg.positional in ("learned", "sinusoidal"):
            embed_vecs = embed_vecs + model.pos_embed(torch.arange(n_pos, device=dev)).reshape(n_pos, -1)
    n_feat = {layer: len(feat_idx[layer]) for layer in layers}
    feat_offset, off = {}, 0
    for layer in layers:
        feat_offset[layer], off = off, off + n_feat[layer]
    n_features = off
    err_start = n_features
    tok_start = err_start + n_layers * n_pos
    logit_start = tok_start + n_pos
    n_nodes = logit_start + n_logits
    adj = torch.zeros(n_nodes, n_nodes, dtype=dtype, device=dev)

    # targets: every feature (its pre-activation's gradient is W_enc[:, f] at its input) and every logit node
    targets = [(layer, int(p), int(f)) for layer in layers for p, f in feat_idx[layer].tolist()]
    targets += [("logit", i, t) for i, t in enumerate(logit_ids)]
    leaves = [rec["D"][layer] for layer in layers] + [rec["embed"]]
    for start in range(0, len(targets), batch_size):
        chunk = targets[start : start + batch_size]
        seeds: dict = {}
        for i, (layer, p, f) in enumerate(chunk):
            key = "resid" if layer == "logit" else layer
            if key not in seeds:
                out = resid if layer == "logit" else rec["inputs"][layer]
                seeds[key] = (out, torch.zeros_like(out))
            seeds[key][1][i, -1 if layer == "logit" else p] = (
                logit_grads[p] if layer == "logit" else ts.encoder(layer)[:, f])
        outs, grads_out = zip(*seeds.values())
        grads = torch.autograd.grad(outs, leaves, grads_out, retain_graph=True, allow_unused=True,
                                    materialize_grads=True)
        rows = torch.arange(start, start + len(chunk), device=dev)
        rows = torch.where(rows < n_features, rows, rows - n_features + logit_start)
        with torch.no_grad():
            g_embed = grads[-1][: len(chunk)]
            adj[rows, tok_start:logit_start] = (g_embed * embed_vecs).sum(-1)
            top_layer = max(n_layers if layer == "logit" else layer for layer, _, _ in chunk)
            for li, layer in enumerate(layers):
                if layer >= top_layer:  # a layer's MLP output reaches only later layers and the logits
                    continue
                g = grads[li][: len(chunk)]
                adj[rows, err_start + layer * n_pos : err_start + (layer + 1) * n_pos] = (g * errors[layer]).sum(-1)
                for src, (padded, p, r) in writes_into[layer]:  # a source's edge sums its writes to every MLP
                    if n_feat[src]:  # per position, [batch, d] @ [d, features there]: one batched matmul
                        adj[rows, feat_offset[src] : feat_offset[src] + n_feat[src]] += torch.einsum(
                            "bnd,nkd->bnk", g, padded)[:, p, r]
    del rec, resid, leaves

    # the node table
    strs = str_tokens(model, toks[0])
    values = torch.cat([*(pre_acts[layer] for layer in layers),
                        torch.zeros(n_layers * n_pos + n_pos, dtype=dtype, device=dev),
                        logit_values.to(dtype)]).double().cpu()
    adj = adj.cpu()
    bias = values - adj.double().sum(1)
    rows = []
    for layer in layers:
        for p, f in feat_idx[layer].tolist():
            rows.append({"kind": "feature", "layer": layer, "position": p, "feature": f,
                         "activation": float(acts[layer][p, f])})
    for layer in range(n_layers):
        for p in range(n_pos):
            rows.append({"kind": "error", "layer": layer, "position": p, "value": float(errors[layer][p].norm())})
    for p in range(n_pos):
        rows.append({"kind": "token", "layer": -1, "position": p, "token_id": int(toks[0, p]), "token": strs[p]})
    for i, t in enumerate(logit_ids):
        rows.append({"kind": "logit", "layer": n_layers, "position": n_pos - 1, "token_id": t,
                     "token": str_tokens(model, [t])[0], "probability": float(logit_probs[i])})
    nodes = pd.DataFrame(rows, columns=NODE_COLUMNS)
    nodes["id"] = range(n_nodes)
    is_target = ((nodes.kind == "feature") | (nodes.kind == "logit")).to_numpy()
    nodes.loc[is_target, "value"] = values.numpy()[is_target]
    nodes.loc[is_target, "bias"] = bias.numpy()[is_target]
    nodes = _typed(nodes)
    info = {"model": {"name": getattr(model.cfg, "name", None), "n_layers": n_layers, "d_model": model.cfg.d_model,
                      "d_vocab": model.cfg.d_vocab},
            "transcoders": ts.describe(),
            "prompt": prompt if isinstance(prompt, str) else None, "tokens": toks[0].tolist(), "str_tokens": strs,
            "options": {"max_logits": max_logits, "logit_probability": logit_probability, "batch_size": batch_size,
                        "pruned": False}}
    graph = AttributionGraph(nodes=nodes, adjacency=adj, info=info)
    norm, w = _normalized(adj), _logit_weights(graph)
    infl = _influence(norm, w)
    graph.info["scores"] = {**_scores(graph, norm, w, infl), "n_nodes_full": n_nodes,
                            "n_edges_full": int((adj != 0).sum())}
    graph.nodes["influence"] = infl.numpy()
    del norm
    if prune:
        graph = prune_graph(graph, node_threshold, edge_threshold)
    feats = graph.nodes[graph.nodes.kind == "feature"]
    if len(feats) and top_logits:  # for presentation: what each kept feature writes, through the unembedding
        # everything a feature writes lands in the residual stream: its direct logit effect is their sum
        vecs = torch.stack([ts.decoders(int(r.layer))[1][int(r.feature)].sum(0) for r in feats.itertuples()]).detach()
        for i, tl in zip(feats.index, _top_logits(model, vecs, top_logits)):
            graph.nodes.at[i, "top_logits"] = tl
    return graph


# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Intervention:
    """``logits_before`` / ``logits_after`` ``[vocab]`` at the last position; ``table``: the tokens most likely
    before or after (``token_id, token, prob_before, prob_after, logit_before, logit_after``)."""

    logits_before: torch.Tensor
    logits_after: torch.Tensor
    table: pd.DataFrame


def intervene(model, transcoders, prompt, features: dict, mode: str = "set", top: int = 10) -> Intervention:
    """Set (``mode="set"``) or multiply (``"scale"``) features ``{(layer, position, feature): value}`` and see the
    next-token distribution change (module docstring)."""
    from interp.analysis._inputs import as_tokens, check_index, model_device, str_tokens

    ts = transcoder_set(model, transcoders)
    if mode not in ("set", "scale"):
        raise InterpError(f"mode: must be 'set' or 'scale'; given {mode!r}")
    if not isinstance(features, dict) or not features:
        raise InterpError("features: expected a non-empty dict {(layer, position, feature): value}")
    toks = as_tokens(model, prompt, name="prompt")[:1].to(model_device(model))
    edits: dict[int, list] = {}
    for key, value in features.items():
        if not (isinstance(key, tuple) and len(key) == 3):
            raise InterpError(f"features: keys must be (layer, position, feature); given {key!r}")
        layer = int(key[0])
        if layer not in ts.layers:
            raise InterpError(f"features: layer {key[0]!r} has no transcoder; layers with one: {ts.layers}")
        pos = check_index("features position", key[1], toks.shape[1])
        feat = check_index("features feature", key[2], ts.d_sae(layer), allow_negative=False)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise InterpError(f"features: value for {key} must be a finite number; given {value!r}")
        edits.setdefault(layer, []).append((pos, feat, float(value)))

    def edit(layer, acts):
        acts = acts.clone()
        for pos, feat, value in edits.get(layer, ()):
            acts[:, pos, feat] = value if mode == "set" else acts[:, pos, feat] * value
        return acts

    with torch.no_grad():
        before = model(toks)[0, -1].double()
        with splice_transcoders(model, ts, use_error_term=True, edit=edit):
            after = model(toks)[0, -1].double()
    pb, pa = torch.softmax(before, -1), torch.softmax(after, -1)
    ids = sorted(set(pb.topk(min(top, len(pb))).indices.tolist()) | set(pa.topk(min(top, len(pa))).indices.tolist()),
                 key=lambda i: -float(pa[i]))
    table = pd.DataFrame({"token_id": ids, "token": str_tokens(model, ids), "prob_before": pb[ids].numpy(),
                          "prob_after": pa[ids].numpy(), "logit_before": before[ids].numpy(),
                          "logit_after": after[ids].numpy()})
    return Intervention(logits_before=before, logits_after=after, table=table)
