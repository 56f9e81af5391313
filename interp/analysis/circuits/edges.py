"""Edge attribution patching (EAP, EAP-IG) over the TransformerLens component graph, and circuit faithfulness.

The graph (pre-norm models, whose residual stream is a sum of what each component wrote):

* **senders** write into the residual stream: ``embed`` (token + position embeddings, all that enters
  ``blocks.0.hook_resid_pre``), each head ``L{l}H{h}`` (its ``hook_z @ W_O``) and each ``MLP{l}``
  (``hook_mlp_out``);
* **receivers** read it: each head's query, key and value input ``L{l}H{h}.q|k|v`` (TransformerLens'
  ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``; with grouped-query attention the key/value
  receivers are the ``n_kv_heads`` key/value heads, ``h < n_kv_heads``), each ``MLP{l}`` (``hook_mlp_in``)
  and the ``logits`` (the final residual stream, ``blocks.{L-1}.hook_resid_post``);
* an **edge** ``u -> v`` joins every sender to every receiver that reads the stream after it wrote (a
  head feeds its own layer's MLP unless the block is parallel, as in GPT-NeoX).

A receiver's input is the sum of its senders' outputs (plus constant biases), so "patching an edge" means
replacing one term of that sum. With the clean run as the baseline (Syed et al. 2023; Hanna et al. 2024):

* **EAP** scores ``u -> v`` by ``(a_u(corrupted) - a_u(clean)) · ∂metric/∂(input of v)`` with the gradient
  on the clean run: the first-order change of the metric when that one edge carries the corrupted value.
  One clean and one corrupted forward, one backward: every edge at once.
* **EAP-IG** replaces the gradient by its mean along the straight line from the corrupted to the clean
  *input embeddings* (``blocks.0.hook_resid_pre``, as in Hanna et al.'s paper; the midpoint rule with
  ``steps`` points ``α = (i + ½) / steps``), which follows the nonlinearities that a single gradient misses.
  The ``steps`` interpolated copies run as batches (``batch_size`` copies per backward pass).
* :func:`edge_patching` is the exact counterpart: the clean run with one edge's input replaced.

A **circuit** is a set of edges. :func:`circuit_faithfulness` runs the clean input with every edge *not* in
the circuit carrying its sender's corrupted output (each receiver's input = the circuit senders' outputs in
this run + the excluded senders' corrupted outputs) and reports ``(metric(circuit) - metric(corrupted)) /
(metric(clean) - metric(corrupted))``: 1 for the full graph, 0 for the empty one.

Metrics follow :mod:`interp.analysis.causal`: a name (``logit_diff`` with ``answer``/``wrong``,
``log_prob``, ``kl``) read at ``position``, or a callable of the logits ``[batch, pos, vocab]`` returning a
scalar or one value per prompt pair (scores are then means over the pairs).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch

from interp.analysis.causal import _metric_values, _pair, make_metric
from interp.errors import InterpError

__all__ = [
    "EdgeGraph",
    "Faithfulness",
    "circuit_faithfulness",
    "edge_attribution",
    "edge_graph",
    "edge_patching",
    "faithfulness_curve",
    "select_circuit",
]

METHODS = ("eap", "eap-ig")

# ----------------------------------------------------------------------------------------------------
# the graph


@dataclass(frozen=True)
class _Hook:
    """One hook point and the graph nodes it holds (several heads share a hook)."""

    name: str
    nodes: tuple[int, ...]  # sender or receiver indices
    per_head: bool  # the activation has a head axis (hook_z, hook_q_input, ...)


@dataclass
class EdgeGraph:
    """The component graph of one model: node tables, which edges exist, and the hooks that hold the nodes.

    ``senders`` / ``receivers``: DataFrames with ``name, kind, layer, head`` (receivers also ``input``:
    ``q``, ``k``, ``v``, ``mlp`` or ``logits``) and ``stage``, the order in which the residual stream is
    written and read. ``valid[u, v]`` is True when receiver ``v`` reads the stream after sender ``u`` wrote.
    """

    senders: pd.DataFrame
    receivers: pd.DataFrame
    valid: torch.Tensor  # [n_senders, n_receivers] bool
    sender_hooks: list[_Hook]
    receiver_hooks: list[_Hook]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edges(self) -> pd.DataFrame:
        """Every edge: ``sender, receiver`` with the nodes' ``layer``, ``head`` and the receiver's ``input``."""
        u, v = self.valid.nonzero(as_tuple=True)
        s, r = self.senders.iloc[u.numpy()], self.receivers.iloc[v.numpy()]
        return pd.DataFrame({
            "sender": s["name"].to_numpy(), "receiver": r["name"].to_numpy(),
            "sender_layer": s["layer"].to_numpy(), "sender_head": s["head"].to_numpy(),
            "receiver_layer": r["layer"].to_numpy(), "receiver_head": r["head"].to_numpy(),
            "receiver_input": r["input"].to_numpy(), "u": u.numpy(), "v": v.numpy(),
        }).astype({c: "Int64" for c in ("sender_layer", "sender_head", "receiver_layer", "receiver_head")})


def edge_graph(model) -> EdgeGraph:
    """The model's component graph (see the module docstring). Needs a pre-norm model."""
    cfg = model.cfg
    if getattr(cfg, "norm_placement", "pre") != "pre":
        raise InterpError("model: edge attribution needs a pre-norm model (the residual stream must be a sum of "
                          f"component outputs); given norm_placement={cfg.norm_placement!r}")
    L, H, K = int(cfg.n_layers), int(cfg.n_heads), int(cfg.n_kv_heads)
    parallel = bool(getattr(cfg, "parallel_residual", False))
    senders = [("embed", "embed", None, None, 0)]
    receivers = []
    s_hooks = [_Hook("blocks.0.hook_resid_pre", (0,), False)]
    r_hooks = []
    for lay in range(L):
        attn_stage = 2 * lay + 1
        mlp_stage = attn_stage if parallel else attn_stage + 1  # a parallel MLP reads what its attention reads
        for inp, n in (("q", H), ("k", K), ("v", K)):
            first = len(receivers)
            receivers += [(f"L{lay}H{h}.{inp}", "head", lay, h, inp, attn_stage) for h in range(n)]
            r_hooks.append(_Hook(f"blocks.{lay}.hook_{inp}_input", tuple(range(first, first + n)), True))
        r_hooks.append(_Hook(f"blocks.{lay}.hook_mlp_in", (len(receivers),), False))
        receivers.append((f"MLP{lay}", "mlp", lay, None, "mlp", mlp_stage))
        first = len(senders)
        senders += [(f"L{lay}H{h}", "head", lay, h, attn_stage) for h in range(H)]
        s_hooks.append(_Hook(f"blocks.{lay}.attn.hook_z", tuple(range(first, first + H)), True))
        s_hooks.append(_Hook(f"blocks.{lay}.hook_mlp_out", (len(senders),), False))
        senders.append((f"MLP{lay}", "mlp", lay, None, mlp_stage))
    r_hooks.append(_Hook(f"blocks.{L - 1}.hook_resid_post", (len(receivers),), False))
    receivers.append(("logits", "logits", None, None, "logits", 2 * L + 1))
    s = pd.DataFrame(senders, columns=["name", "kind", "layer", "head", "stage"])
    r = pd.DataFrame(receivers, columns=["name", "kind", "layer", "head", "input", "stage"])
    valid = torch.tensor(s.stage.to_numpy())[:, None] < torch.tensor(r.stage.to_numpy())[None, :]
    return EdgeGraph(s, r, valid, s_hooks, r_hooks)


@contextlib.contextmanager
def _edge_hooks(model):
    """Switch on the per-head q/k/v inputs and the MLP input for the duration; restore the switches after."""
    for setter in ("set_use_split_qkv_input", "set_use_hook_mlp_in", "set_use_attn_in"):
        if not hasattr(model, setter):
            raise InterpError(f"model: edge attribution needs the per-head input hooks ({setter}); "
                              f"given a {type(model).__name__} without them")
    cfg = model.cfg
    saved = {f: bool(getattr(cfg, f)) for f in ("use_attn_in", "use_split_qkv_input", "use_hook_mlp_in")}
    try:
        model.set_use_attn_in(False)
        model.set_use_split_qkv_input(True)
        model.set_use_hook_mlp_in(True)
        yield
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_attn_in(saved["use_attn_in"])
        model.set_use_split_qkv_input(saved["use_split_qkv_input"])
        model.set_use_hook_mlp_in(saved["use_hook_mlp_in"])


def _sender_out(model, hook: _Hook, act: torch.Tensor) -> torch.Tensor:
    """What the hook's senders write into the residual stream, ``[n_nodes, batch, pos, d_model]``."""
    if not hook.per_head:
        return act[None]
    lay = int(hook.name.split(".")[1])
    out = torch.einsum("bphe,hed->hbpd", act, model.blocks[lay].attn.W_O)
    m = model.cfg.residual_multiplier  # what joins the residual is the sublayer's output times it (Granite)
    return out if m == 1.0 else out * m


def _sender_outputs(model, graph: EdgeGraph, tokens: torch.Tensor):
    """Every sender's output on ``tokens`` ``[n_senders, batch, pos, d_model]``, the logits, and the cached
    ``hook_resid_pre`` of every layer (where :func:`edge_patching` starts its passes)."""
    names = {h.name for h in graph.sender_hooks} | {f"blocks.{lay}.hook_resid_pre" for lay in range(model.cfg.n_layers)}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        out = torch.cat([_sender_out(model, h, cache[h.name]) for h in graph.sender_hooks])
    resid = [cache[f"blocks.{lay}.hook_resid_pre"] for lay in range(model.cfg.n_layers)]
    return out, logits, resid


# ----------------------------------------------------------------------------------------------------
# scores


def _scalar_metric(metric, logits: torch.Tensor, batch: int) -> tuple[torch.Tensor, bool]:
    """The metric summed over copies of the batch (``logits`` holds ``n`` copies), and whether it is per pair."""
    values = [torch.as_tensor(metric(chunk)) for chunk in logits.split(batch)]
    return sum(v.sum() for v in values), values[0].ndim > 0


def _copies(batch_size, n: int, default: int) -> int:
    if batch_size is None:
        return max(1, min(n, default))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InterpError(f"batch_size: copies per pass must be an int >= 1; given {batch_size!r}")
    return min(batch_size, n)


def _edge_scores(model, graph: EdgeGraph, clean, start_clean, start_corr, diff, metric, alphas, batch_size):
    """``diff[u] · ∂metric/∂(input of v)`` for every sender ``u`` and receiver ``v`` ``[U, V]`` (float64),
    the gradient averaged over the runs whose input embedding is ``corrupted + α (clean - corrupted)`` for
    each ``α`` in ``alphas``; and whether the metric is per prompt pair. Each hook's gradient is contracted
    as soon as it is known, so memory holds the senders' differences, never every receiver's gradient."""
    B = clean.shape[0]
    scores = torch.zeros(diff.shape[0], len(graph.receivers), dtype=torch.float64, device=diff.device)
    per_pair = True
    k = _copies(batch_size, len(alphas), 8)
    for chunk in alphas.split(k):
        n = len(chunk)
        a = chunk.to(start_clean.dtype).view(n, 1, 1, 1).to(start_clean.device)
        # lerp returns the clean end exactly at α = 1 (plain EAP)
        x0 = torch.lerp(start_corr[None], start_clean[None], a).flatten(0, 1).detach().requires_grad_(True)
        acts = {}

        def start(act, hook, x0=x0):
            return x0

        def keep(act, hook, acts=acts):
            acts[hook.name] = act
            return act

        hooks = [("blocks.0.hook_resid_pre", start)] + [(h.name, keep) for h in graph.receiver_hooks]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(clean.repeat(n, 1))
            m, per_pair = _scalar_metric(metric, logits, B)
            got = torch.autograd.grad(m, [acts[h.name] for h in graph.receiver_hooks], allow_unused=True)
        for h, g in zip(graph.receiver_hooks, got):
            if g is None:  # the metric does not depend on this input
                continue
            g = g.detach().double().unflatten(0, (n, B)).sum(0)  # [B, P, (head,) d]
            g = g if h.per_head else g[:, :, None]
            scores[:, list(h.nodes)] += torch.einsum("ubpd,bpvd->uv", diff, g)
    return scores / len(alphas), per_pair


def _check_steps(method: str, steps) -> int:
    if method not in METHODS:
        raise InterpError(f"method: must be one of {list(METHODS)}; given {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InterpError(f"steps: integration points for EAP-IG must be an int >= 1; given {steps!r}")
    return 1 if method == "eap" else steps


def edge_attribution(model, clean, corrupted, metric="logit_diff", method: str = "eap", steps: int = 5, *,
                     answer=None, wrong=None, position: int = -1, exact: bool = False, batch_size: int | None = None
                     ) -> pd.DataFrame:
    """Score every edge of the component graph by EAP or EAP-IG (see the module docstring).

    ``clean`` / ``corrupted``: prompts or token ids of the same shape (rows are prompt pairs). ``metric``:
    ``"logit_diff"`` (with ``answer``, ``wrong``), ``"log_prob"`` (``answer``), ``"kl"``, or a callable of
    the logits. ``method="eap-ig"`` averages the gradient over ``steps`` inputs interpolated between the
    corrupted and clean embeddings (``batch_size`` copies per backward pass). ``exact=True`` also runs
    :func:`edge_patching` on every edge and adds ``exact`` and, in ``df.attrs``, the ``pearson`` and
    ``spearman`` correlations between the scores and it.

    Returns one row per edge, largest ``|score|`` first: ``sender, receiver, score`` (the estimated change of
    the metric when this edge alone carries the corrupted value: negative = the edge supports the clean
    answer), then ``sender_layer, sender_head, receiver_layer, receiver_head, receiver_input``.
    ``df.attrs``: ``clean``, ``corrupted`` (the metric on each run), ``method``, ``steps``, ``n_edges``.
    """
    n_steps = _check_steps(method, steps)
    graph = edge_graph(model)
    c, r = _pair(model, clean, corrupted)
    with _edge_hooks(model):
        run = _EdgeRunner(model, graph, c, r, metric, answer=answer, wrong=wrong, position=position)
        alphas = torch.ones(1) if method == "eap" else (torch.arange(n_steps, dtype=torch.float64) + 0.5) / n_steps
        diff = run.s_corr.double() - run.s_clean.double()  # [U, B, P, d]
        scores, per_pair = _edge_scores(model, graph, c, run.resid[0], run.corr_start, diff, run.metric, alphas,
                                        batch_size)
    scores = scores / (c.shape[0] if per_pair else 1)
    df = graph.edges()
    df.insert(2, "score", scores.cpu().numpy()[df.u.to_numpy(), df.v.to_numpy()])
    if exact:
        ex = edge_patching(model, c, r, run.metric, batch_size=batch_size)
        df = df.merge(ex[["sender", "receiver", "exact"]], on=["sender", "receiver"], how="left")
        df.attrs.update(pearson=float(df.score.corr(df.exact)),
                        spearman=float(df.score.corr(df.exact, method="spearman")))
    df = _by_magnitude(df.drop(columns=["u", "v"]), "score")
    df.attrs.update(clean=run.clean_value, corrupted=run.corrupted_value, method=method, steps=n_steps,
                    n_edges=graph.n_edges)
    return df


def _by_magnitude(df: pd.DataFrame, column: str) -> pd.DataFrame:
    attrs = dict(df.attrs)
    out = df.reindex(df[column].abs().sort_values(ascending=False, kind="stable").index).reset_index(drop=True)
    out.attrs.update(attrs)
    return out


# ----------------------------------------------------------------------------------------------------
# exact edge patching: the clean run with chosen edges carrying the corrupted value


class _EdgeRunner:
    """Runs ``k`` copies of the clean batch, copy ``c`` with the edges of ``masks[c]`` (``[n_senders,
    n_receivers]`` bool) carrying their sender's corrupted output.

    A receiver's input gets ``Σ_u mask[u, v] (a_u(corrupted) - a_u(this run))`` added, with ``a_u(this run)``
    captured when sender ``u`` writes, so an edge downstream of a patched one sees the patched sender. A
    pass whose masks touch no receiver before layer ``l0`` starts at the clean ``resid_pre`` of ``l0``
    (nothing earlier can change; senders before it are their clean selves).
    """

    def __init__(self, model, graph: EdgeGraph, clean, corrupted, metric, **metric_args):
        self.model, self.graph, self.clean = model, graph, clean
        self.s_clean, self.clean_logits, self.resid = _sender_outputs(model, graph, clean)
        self.s_corr, self.corr_logits, resid_corr = _sender_outputs(model, graph, corrupted)
        self.corr_start = resid_corr[0]  # the corrupted input embeddings (EAP-IG interpolates from them)
        self.batch = clean.shape[0]
        self.metric = make_metric(model, metric, clean_logits=self.clean_logits, batch=self.batch, **metric_args)
        self.clean_value = float(_metric_values(self.metric, self.clean_logits).mean())
        self.corrupted_value = float(_metric_values(self.metric, self.corr_logits).mean())
        self.first_layer = torch.tensor([0 if x is None or pd.isna(x) else int(x) for x in graph.receivers["layer"]])
        self.first_layer[-1] = model.cfg.n_layers - 1  # the logits read the last block's output

    @torch.no_grad()
    def run(self, masks: torch.Tensor) -> torch.Tensor:
        """Metric values ``[k, batch]`` (or ``[k]`` for a scalar metric)."""
        model, g, B = self.model, self.graph, self.batch
        k = masks.shape[0]
        masks = masks & g.valid
        touched = masks.any(0).any(0)
        l0 = int(self.first_layer[touched].min()) if bool(touched.any()) else model.cfg.n_layers - 1
        s_stage = torch.tensor(g.senders.stage.to_numpy())
        dtype = self.s_clean.dtype
        # senders written before block l0 are clean in every copy
        diffs = {u: (self.s_corr[u] - self.s_clean[u])[None].expand(k, -1, -1, -1)
                 for u in range(len(g.senders)) if s_stage[u] < 2 * l0 + 1}
        corr = self.s_corr

        def capture(hook_spec: _Hook):
            def hook(act, hook):
                out = _sender_out(model, hook_spec, act)
                for u, o in zip(hook_spec.nodes, out):
                    diffs[u] = corr[u][None] - o.unflatten(0, (k, B))
                return act
            return hook

        def receive(hook_spec: _Hook):
            cols = list(hook_spec.nodes)

            def hook(act, hook):
                us = sorted(diffs)
                m = masks[:, us][:, :, cols]  # [k, u, v]
                if not bool(m.any()):
                    return act
                d = torch.stack([diffs[u] for u in us])  # [u, k, B, P, d]
                delta = torch.einsum("ukbpd,kuv->kbpvd", d, m.to(dtype)).flatten(0, 1)
                return act + (delta if hook_spec.per_head else delta[:, :, 0]).to(act.dtype)
            return hook

        # every hook name is "blocks.{layer}....": a pass from block l0 needs the hooks of blocks l0.. only
        hooks = [(h.name, capture(h)) for h in g.sender_hooks if int(h.name.split(".")[1]) >= l0]
        hooks += [(h.name, receive(h)) for h in g.receiver_hooks if int(h.name.split(".")[1]) >= l0]
        with model.hooks(fwd_hooks=hooks):
            if l0 == 0:
                logits = model(self.clean.repeat(k, 1))
            else:
                logits = model(self.resid[l0].repeat(k, 1, 1), start_at_layer=l0)
        return torch.stack([_metric_values(self.metric, chunk) for chunk in logits.split(B)])


def edge_patching(model, clean, corrupted, metric="logit_diff", edges=None, *, answer=None, wrong=None,
                  position: int = -1, batch_size: int | None = None) -> pd.DataFrame:
    """The exact effect of each edge: the clean run with that one edge carrying its sender's corrupted output.

    ``edges``: a DataFrame with ``sender, receiver`` columns, ``(sender, receiver)`` pairs or
    ``"sender->receiver"`` strings (default: every edge). ``batch_size`` patched copies per forward pass;
    a pass starts at the first layer its edges reach. Returns ``sender, receiver, patched`` (the metric,
    mean over pairs) and ``exact = patched - clean``; ``df.attrs``: ``clean``, ``corrupted``.
    """
    graph = edge_graph(model)
    c, r = _pair(model, clean, corrupted)
    chosen = graph.edges() if edges is None else _edge_rows(graph, edges)
    with _edge_hooks(model):
        runner = _EdgeRunner(model, graph, c, r, metric, answer=answer, wrong=wrong, position=position)
        first = runner.first_layer[torch.as_tensor(chosen.v.to_list(), dtype=torch.long)]
        order = chosen.assign(_l=first.numpy()).sort_values("_l", kind="stable")
        k = _copies(batch_size, max(len(order), 1), 64)
        values = []
        for start in range(0, len(order), k):
            part = order.iloc[start:start + k]
            masks = torch.zeros(len(part), *graph.valid.shape, dtype=torch.bool)
            masks[torch.arange(len(part)), torch.as_tensor(part.u.to_list()), torch.as_tensor(part.v.to_list())] = True
            values.append(runner.run(masks))
    patched = torch.cat(values) if values else torch.zeros(0)
    out = order.drop(columns="_l").assign(patched=(patched.mean(-1) if patched.ndim == 2 else patched).cpu().numpy())
    out = out.sort_index().drop(columns=["u", "v"])
    out["exact"] = out.patched - runner.clean_value
    out.attrs.update(clean=runner.clean_value, corrupted=runner.corrupted_value)
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------
# circuits and their faithfulness


def _edge_rows(graph: EdgeGraph, edges) -> pd.DataFrame:
    """The graph's rows (with ``u``, ``v``) for the edges given as a DataFrame, pairs or ``"u->v"`` strings."""
    if isinstance(edges, pd.DataFrame):
        if not {"sender", "receiver"} <= set(edges.columns):
            raise InterpError(f"edges: a DataFrame needs 'sender' and 'receiver' columns; given {list(edges.columns)}")
        if "in_circuit" in edges:
            edges = edges[edges.in_circuit.astype(bool)]
        pairs = list(zip(edges.sender, edges.receiver))
    elif isinstance(edges, Iterable) and not isinstance(edges, (str, bytes)):
        pairs = []
        for e in edges:
            if isinstance(e, str) and "->" in e:
                pairs.append(tuple(p.strip() for p in e.split("->", 1)))
            elif isinstance(e, (tuple, list)) and len(e) == 2:
                pairs.append((str(e[0]), str(e[1])))
            else:
                raise InterpError(f"edges: expected (sender, receiver) pairs or 'sender->receiver' strings; given {e!r}")
    else:
        raise InterpError(f"edges: expected a DataFrame of edges, (sender, receiver) pairs or 'sender->receiver' "
                          f"strings; given {type(edges).__name__}")
    s_idx = {n: i for i, n in enumerate(graph.senders["name"])}
    r_idx = {n: i for i, n in enumerate(graph.receivers["name"])}
    all_edges = graph.edges()
    rows = []
    for s, r in pairs:
        if s not in s_idx:
            raise InterpError(f"edges: unknown sender {s!r}; senders are 'embed', 'L{{layer}}H{{head}}', "
                              f"'MLP{{layer}}' (this model: {len(s_idx)} of them)")
        if r not in r_idx:
            raise InterpError(f"edges: unknown receiver {r!r}; receivers are 'L{{layer}}H{{head}}.q|k|v', "
                              "'MLP{layer}', 'logits'")
        if not bool(graph.valid[s_idx[s], r_idx[r]]):
            raise InterpError(f"edges: {s}->{r} is not an edge ({r} reads the residual stream before {s} writes it)")
        rows.append((s_idx[s], r_idx[r]))
    if not rows:
        return all_edges.iloc[:0]
    key = pd.DataFrame(rows, columns=["u", "v"]).drop_duplicates()
    return key.merge(all_edges, on=["u", "v"], how="left")[all_edges.columns]  # in the order given


def select_circuit(edges: pd.DataFrame, top_n: int | None = None, threshold: float | None = None,
                   absolute: bool = True) -> pd.DataFrame:
    """The edges of a circuit: the ``top_n`` largest scores, or every score at least ``threshold``.

    ``absolute`` (default) ranks by ``|score|`` (EAP scores of either sign matter). Returns the chosen rows
    of ``edges`` (an :func:`edge_attribution` frame), largest first.
    """
    if not isinstance(edges, pd.DataFrame) or "score" not in edges:
        raise InterpError("edges: expected the DataFrame edge_attribution returns (with a 'score' column)")
    if (top_n is None) == (threshold is None):
        raise InterpError(f"select_circuit: give exactly one of top_n or threshold; given top_n={top_n!r}, "
                          f"threshold={threshold!r}")
    key = edges.score.abs() if absolute else edges.score
    ranked = edges.loc[key.sort_values(ascending=False, kind="stable").index]
    if top_n is not None:
        if isinstance(top_n, bool) or not isinstance(top_n, int) or not 0 <= top_n <= len(edges):
            raise InterpError(f"top_n: must be an int in [0, {len(edges)}] (the number of edges); given {top_n!r}")
        out = ranked.iloc[:top_n]
    else:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or math.isnan(threshold):
            raise InterpError(f"threshold: must be a number; given {threshold!r}")
        out = ranked[key.loc[ranked.index] >= threshold]
    out = out.reset_index(drop=True)
    out.attrs.update(edges.attrs)
    return out


@dataclass
class Faithfulness:
    """How much of the clean-vs-corrupted gap a circuit keeps: ``(circuit - corrupted) / (clean - corrupted)``."""

    faithfulness: float
    circuit: float  # the metric with only the circuit's edges clean
    clean: float
    corrupted: float
    n_edges: int
    n_total: int


def _circuit_masks(graph: EdgeGraph, circuits: list[pd.DataFrame]) -> torch.Tensor:
    """``[n_circuits, U, V]``: True on every valid edge NOT in the circuit (it carries the corrupted value)."""
    masks = graph.valid[None].repeat(len(circuits), 1, 1)
    for i, rows in enumerate(circuits):
        masks[i, torch.as_tensor(rows.u.to_list(), dtype=torch.long),
              torch.as_tensor(rows.v.to_list(), dtype=torch.long)] = False
    return masks


def _faithfulness_runs(model, circuits, clean, corrupted, metric, answer, wrong, position, batch_size):
    graph = edge_graph(model)
    c, r = _pair(model, clean, corrupted)
    rows = [_edge_rows(graph, e) for e in circuits]
    with _edge_hooks(model):
        runner = _EdgeRunner(model, graph, c, r, metric, answer=answer, wrong=wrong, position=position)
        k = _copies(batch_size, len(rows), 16)
        masks = _circuit_masks(graph, rows)
        values = torch.cat([runner.run(m) for m in masks.split(k)])
    values = values.mean(-1) if values.ndim == 2 else values
    clean_v, corr_v = runner.clean_value, runner.corrupted_value
    gap = clean_v - corr_v
    return [Faithfulness(float((v - corr_v) / gap) if gap != 0 else float("nan"), float(v), clean_v, corr_v,
                         len(e), graph.n_edges) for v, e in zip(values.tolist(), rows)]


def circuit_faithfulness(model, circuit, clean, corrupted, metric="logit_diff", *, answer=None, wrong=None,
                         position: int = -1) -> Faithfulness:
    """Run the clean input with every edge outside ``circuit`` carrying its sender's corrupted output.

    ``circuit``: a DataFrame of edges (``sender, receiver``; e.g. from :func:`select_circuit`, or with an
    ``in_circuit`` column), ``(sender, receiver)`` pairs or ``"sender->receiver"`` strings. Returns the
    metric on that run and the recovered fraction ``(circuit - corrupted) / (clean - corrupted)`` (NaN when
    clean and corrupted agree).
    """
    return _faithfulness_runs(model, [circuit], clean, corrupted, metric, answer, wrong, position, 1)[0]


def faithfulness_curve(model, edges: pd.DataFrame, clean, corrupted, metric="logit_diff", sizes=None, *,
                       answer=None, wrong=None, position: int = -1, batch_size: int | None = None) -> pd.DataFrame:
    """Faithfulness of the top-``n`` circuits by ``|score|`` for each ``n`` in ``sizes`` (default: 0, 1, 2, 4,
    ..., every edge), several circuits per forward pass. Returns ``n_edges, metric, faithfulness``."""
    n = len(edges)
    if sizes is None:
        sizes = sorted({0, n, *[2 ** i for i in range(n.bit_length()) if 2 ** i < n]})
    circuits = [select_circuit(edges, top_n=s) for s in sizes]
    runs = _faithfulness_runs(model, circuits, clean, corrupted, metric, answer, wrong, position, batch_size)
    df = pd.DataFrame({"n_edges": [f.n_edges for f in runs], "metric": [f.circuit for f in runs],
                       "faithfulness": [f.faithfulness for f in runs]})
    df.attrs.update(clean=runs[0].clean, corrupted=runs[0].corrupted, n_total=runs[0].n_total)
    return df

