"""``interp circuit "prompt"``: an attribution graph as an offline HTML page (and its JSON).

Presentation only: ``graph_html`` draws an :class:`~interp.analysis.circuits.graph.AttributionGraph` it is
given (layers as rows — token embeddings at the bottom, logits at the top — prompt positions as columns, one
SVG line per edge, width by |weight|, blue positive, red negative) and never recomputes anything; hovering a
node shows its kind, place, activation, influence and, for a feature, the tokens its decoder vector raises
most (the graph's ``top_logits``) and, when a corpus was given, its top contexts (``graph_feature_contexts``:
the feature cards' analyzer, ``feature_profiles``, over a bounded number of corpus tokens). The page is one file
with no external scripts or styles.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

from interp.errors import InterpError

__all__ = ["DEFAULT_TRANSCODERS", "GRAPH_CSS", "HOVER_CONTEXTS", "HOVER_TOKENS", "default_transcoder_folder",
           "feature_table", "graph_feature_contexts", "graph_html", "graph_summary", "graph_svg",
           "load_graph_transcoders", "run"]

DEFAULT_TRANSCODERS = "default"
TRANSCODER_FOLDER = "transcoders"  # models/<name>/transcoders/blocks.{l}.hook_mlp_out/
CLT_TRANSCODERS = "clt"  # models/<name>/clt/: the shipped cross-layer transcoder (--transcoders clt)
_CELL_W, _ROW_H, _PAD = 110, 90, 40
HOVER_CONTEXTS = 3  # top contexts in a feature node's hover
HOVER_TOKENS = 4096  # corpus tokens scanned for them (windows spread over the corpus): seconds, not minutes


def default_transcoder_folder(model, name: str = TRANSCODER_FOLDER) -> Path:
    """The transcoders shipped with the model: its folder's ``transcoders/`` (per layer) or ``clt/`` (cross-layer)."""
    root = getattr(model, "_interp_folder", None)
    folder = Path(root) / name if root else None
    if folder is None or not folder.is_dir():
        spec = DEFAULT_TRANSCODERS if name == TRANSCODER_FOLDER else name
        raise InterpError(f"--transcoders {spec}: the model folder {str(root)!r} ships no transcoders (no "
                          f"{name}/); give a folder (interp sae train --transcoder --out FOLDER)")
    return folder


def _layout(graph) -> dict[int, tuple[float, float]]:
    """Node id -> (x, y): a column per position, a row per layer (tokens at the bottom, logits on top); nodes
    sharing a cell spread across it, logits across the whole top row."""
    nodes = graph.nodes
    n_layers = int(graph.info["model"]["n_layers"])
    n_pos = len(graph.info["tokens"])
    height = (n_layers + 2) * _ROW_H
    pos: dict[int, tuple[float, float]] = {}
    logits = nodes[nodes.kind == "logit"]
    width = n_pos * _CELL_W
    for i, r in enumerate(logits.itertuples()):
        pos[int(r.id)] = (_PAD + (i + 0.5) * width / max(len(logits), 1), _PAD / 2 + _ROW_H * 0.4)
    rest = nodes[nodes.kind != "logit"]
    for (layer, p), cell in rest.groupby(["layer", "position"]):
        row = int(layer) + 1  # tokens (layer -1) -> row 0
        y = _PAD / 2 + height - (row + 0.6) * _ROW_H
        order = cell.sort_values(["kind", "influence"], ascending=[False, False])  # error nodes last
        for j, r in enumerate(order.itertuples()):
            x = _PAD + int(p) * _CELL_W + (j + 1) * _CELL_W / (len(order) + 1)
            pos[int(r.id)] = (x, y + (j % 2) * 12 - 6)
    return pos


def _label(r) -> str:
    if r.kind == "feature":
        return f"L{int(r.layer)} F{int(r.feature)}"
    if r.kind == "error":
        return f"err L{int(r.layer)}"
    return str(r.token)


def graph_feature_contexts(model, transcoders, graph, corpus, *, k: int = HOVER_CONTEXTS,
                           max_tokens: int = HOVER_TOKENS, window: int = 8, after: int = 2):
    """The top contexts of ``graph``'s feature nodes over ``corpus``, as the feature cards find them
    (``interp.analysis.sae.feature_profiles``; per-layer transcoders or a cross-layer one, every layer in one pass
    over about ``max_tokens`` corpus tokens): ``layer, feature, rank, activation, context`` (the trigger «marked»;
    activations > 0 only)."""
    import pandas as pd

    from interp.analysis.sae.features import transcoder_feature_profiles
    from interp.report.figures import show_token

    feats = graph.nodes[graph.nodes.kind == "feature"]
    wanted = {int(layer): sorted({int(f) for f in g.feature}) for layer, g in feats.groupby("layer")}
    rows = []
    if wanted:
        ex = transcoder_feature_profiles(model, transcoders, wanted, corpus, k=k, window=window, after=after,
                                         max_tokens=max_tokens).examples
        for (layer, f, rank), g in ex.groupby(["layer", "feature", "rank"], sort=True):
            act = float(g[g.is_trigger].activation.iloc[0])
            if act > 0:
                rows.append((int(layer), int(f), int(rank), act, "".join(
                    f"«{show_token(t)}»" if on else show_token(t) for t, on in zip(g.token, g.is_trigger))))
    return pd.DataFrame(rows, columns=["layer", "feature", "rank", "activation", "context"])


def _context_lines(contexts) -> dict[tuple[int, int], list[str]]:
    """``(layer, feature)`` -> its contexts as hover lines (``activation: context``)."""
    out: dict[tuple[int, int], list[str]] = {}
    if contexts is None:
        return out
    for r in contexts.sort_values(["layer", "feature", "rank"]).itertuples():
        out.setdefault((int(r.layer), int(r.feature)), []).append(f"  {r.activation:.3g}: {r.context}")
    return out


def _tooltip(r, contexts: list[str] | None = None) -> str:
    lines = [f"{r.kind} · layer {int(r.layer)} · position {int(r.position)}"]
    if r.kind == "feature":
        lines.append(f"feature {int(r.feature)} · activation {float(r.activation):.3g}")
    if r.kind in ("token", "logit"):
        lines.append(f"token {r.token!r} (id {int(r.token_id)})")
    if r.kind == "logit":
        lines.append(f"probability {float(r.probability):.3f} · centred logit {float(r.value):.3g}")
    if r.kind == "error":
        lines.append(f"‖error‖ {float(r.value):.3g}")
    if r.influence is not None and r.influence == r.influence:
        lines.append(f"influence on the logits {float(r.influence):.3g}")
    if isinstance(r.top_logits, list) and r.top_logits:
        lines.append("raises: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in r.top_logits))
    if r.kind == "feature" and contexts is not None:
        lines += ["top contexts:", *contexts] if contexts else ["top contexts: none in the corpus scanned"]
    return "\n".join(lines)


GRAPH_CSS = """
.cg-row { font-size: 12px; fill: #555; } .cg-tok { font: 12px monospace; text-anchor: middle; fill: #111; }
.cg-lab { font-size: 9px; text-anchor: middle; fill: #333; pointer-events: none; }
.cg-node:hover circle, .cg-node:hover rect { stroke-width: 2.5; }
.cg-wrap { overflow-x: auto; border: 1px solid #ddd; }
"""
GRAPH_LEGEND = ("Rows: token embeddings (green), transcoder features (orange) and error nodes (grey squares) by "
                "layer, the top next-token logits (purple). Lines: direct effects in the local replacement model "
                "(blue positive, red negative, width by |weight|). Hover a node for details.")


def graph_svg(graph, contexts=None) -> str:
    """The drawing of ``graph`` (module docstring) as one ``<div class="cg-wrap"><svg>…</svg></div>``, styled by
    :data:`GRAPH_CSS`; ``contexts`` (``graph_feature_contexts``) adds each feature's top contexts to its hover."""
    nodes, info = graph.nodes, graph.info
    n_layers, toks = int(info["model"]["n_layers"]), info.get("str_tokens") or []
    width = 2 * _PAD + max(len(toks), 1) * _CELL_W
    height = (n_layers + 2) * _ROW_H + _PAD
    pos = _layout(graph)
    edges = graph.edges()
    wmax = float(edges.weight.abs().max()) if len(edges) else 1.0
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}">']
    for layer in range(-1, n_layers + 1):  # row labels and guides
        y = _PAD / 2 + (n_layers + 2) * _ROW_H - (layer + 1 + 0.6) * _ROW_H
        name = "tokens" if layer == -1 else ("logits" if layer == n_layers else f"layer {layer}")
        if layer == n_layers:
            y = _PAD / 2 + _ROW_H * 0.4
        svg.append(f'<text x="4" y="{y - 22:.0f}" class="cg-row">{name}</text>')
    for p, t in enumerate(toks):
        svg.append(f'<text x="{_PAD + (p + 0.5) * _CELL_W:.0f}" y="{height + 20}" class="cg-tok">{html.escape(t)}'
                   '</text>')
    for e in edges[::-1].itertuples():  # weakest first, so the strongest are drawn on top
        (x1, y1), (x2, y2) = pos[int(e.source)], pos[int(e.target)]
        w = abs(e.weight) / wmax
        color = "#2563eb" if e.weight > 0 else "#dc2626"
        svg.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                   f'stroke-width="{0.3 + 4 * w:.2f}" stroke-opacity="{0.15 + 0.7 * w:.2f}"/>')
    fill = {"feature": "#f59e0b", "error": "#9ca3af", "token": "#10b981", "logit": "#8b5cf6"}
    crowd = nodes.groupby(["layer", "position"]).id.transform("size")  # crowded cells: labels on hover only
    lines = _context_lines(contexts)
    for r, n_cell in zip(nodes.itertuples(), crowd):
        x, y = pos[int(r.id)]
        label = _label(r) if r.kind in ("token", "logit") or n_cell <= 4 else ""
        shape = (f'<rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12"' if r.kind == "error" else
                 f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{7 if r.kind != "feature" else 6}"')
        svg.append(f'<g class="cg-node">{shape} fill="{fill[r.kind]}" stroke="#111" stroke-width="0.6">'
                   f'<title>{html.escape(_tooltip(r, _node_contexts(r, lines, contexts)))}</title></{"rect" if r.kind == "error" else "circle"}>'
                   f'<text x="{x:.1f}" y="{y + 17:.1f}" class="cg-lab">{html.escape(label)}</text></g>')
    svg.append("</svg>")
    return f'<div class="cg-wrap">{"".join(svg)}</div>'


def _node_contexts(r, lines: dict, contexts) -> list[str] | None:
    if contexts is None or r.kind != "feature":
        return None
    return lines.get((int(r.layer), int(r.feature)), [])


def graph_summary(graph) -> str:
    """One plain-text sentence: the scores, and what pruning kept of the full graph (and by which thresholds)."""
    scores, opts = graph.info.get("scores", {}), graph.info.get("options", {})
    kept = (f"{len(graph.nodes)} nodes and {len(graph.edges())} edges kept of {scores.get('n_nodes_full', '?')} "
            f"and {scores.get('n_edges_full', '?')}")
    how = (f" (pruned to the features and errors carrying {opts.get('node_threshold'):.0%} of the influence on the "
           f"logits and the edges carrying {opts.get('edge_threshold'):.0%}; token and logit nodes always stay)"
           if opts.get("pruned") else " (not pruned)")
    return (f"replacement score {scores.get('replacement_score', float('nan')):.3f} · completeness score "
            f"{scores.get('completeness_score', float('nan')):.3f} · {kept}{how}")


def graph_html(graph, title: str = "Attribution graph", contexts=None) -> str:
    """A self-contained HTML page drawing ``graph`` (module docstring)."""
    prompt = graph.info.get("prompt") or " ".join(graph.info.get("str_tokens") or [])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #111; }}{GRAPH_CSS}</style></head><body>
<h2>{html.escape(title)}</h2>
<p><b>Prompt:</b> <code>{html.escape(prompt)}</code></p>
<p>{html.escape(graph_summary(graph))}. {GRAPH_LEGEND}</p>
{graph_svg(graph, contexts)}
</body></html>
"""


def feature_table(graph, contexts=None):
    """The graph's feature nodes, most influential first: ``layer, position, token, feature, activation,
    influence, raises`` (``raises``: the tokens its decoder vector raises most, as the hover shows them) and,
    with ``contexts`` (``graph_feature_contexts``), ``top_context``."""
    strs = graph.info.get("str_tokens") or []
    feats = graph.nodes[graph.nodes.kind == "feature"].sort_values("influence", ascending=False, kind="stable")
    table = feats[["layer", "position", "feature", "activation", "influence"]].reset_index(drop=True)
    table.insert(2, "token", [strs[int(p)] if int(p) < len(strs) else "" for p in table.position])
    table["raises"] = [", ".join(f"{t!r} {v:+.2f}" for t, v in tl) if isinstance(tl, list) else ""
                       for tl in feats.top_logits]
    if contexts is not None:
        first = {(int(r.layer), int(r.feature)): r.context for r in contexts[contexts["rank"] == 1].itertuples()}
        table["top_context"] = [first.get((int(la), int(f)), "") for la, f in zip(table.layer, table.feature)]
    return table


def load_graph_transcoders(model, spec: str | Path, flag: str = "--transcoders") -> list:
    """The transcoders ``spec`` names for ``model``: a folder (one transcoder, or one per subfolder), ``"default"``
    (the model folder's ``transcoders/``) or ``"clt"`` (its cross-layer transcoder, ``clt/``); they must fit the
    model (one :class:`InterpError` line naming ``flag`` otherwise)."""
    from interp.analysis._inputs import model_device
    from interp.analysis.sae.transcoder import check_transcoders, load_transcoders

    shipped = {DEFAULT_TRANSCODERS: TRANSCODER_FOLDER, CLT_TRANSCODERS: CLT_TRANSCODERS}
    folder = default_transcoder_folder(model, shipped[str(spec)]) if str(spec) in shipped else Path(spec).expanduser()
    if not folder.exists():
        raise InterpError(f"{flag}: {str(folder)!r} does not exist; give a transcoder folder or 'default'")
    try:
        tcs = load_transcoders(folder, device=model_device(model))
        check_transcoders(model, tcs)
    except InterpError as e:
        raise InterpError(f"{flag}: {str(e).removeprefix('transcoders: ')}") from None
    return tcs


def run(args) -> int:
    """``interp circuit``: build the graph, print a summary, write ``--out`` (HTML) and/or ``--json``."""
    from interp.analysis.circuits.graph import attribution_graph
    from interp.report.inputs import check_device, load_model
    from interp.report.output import check_writable, write_text

    for path in (args.out, args.json):
        if path:
            check_writable(path, args.force)
    check_device(args.device)
    from interp.progress import StepLine

    model = load_model(args.model, device=args.device)
    with StepLine("circuit: loading the transcoders"):
        tcs = load_graph_transcoders(model, args.transcoders)
    with StepLine("circuit: tracing the attribution graph"):  # seconds to minutes with the prompt's length
        graph = attribution_graph(model, tcs, args.prompt, max_logits=args.max_logits, batch_size=args.batch_size,
                                  node_threshold=args.node_threshold, edge_threshold=args.edge_threshold)
    if args.json:
        write_text(args.json, json.dumps(graph.to_dict(), allow_nan=False) + "\n", args.force, "--json")
    if args.out:
        from interp.report.inputs import read_corpus

        corpus = read_corpus(model, "default")  # the model folder's held-out text, when it ships one
        contexts = graph_feature_contexts(model, tcs, graph, corpus[1]) if corpus is not None else None
        write_text(args.out, graph_html(graph, title=f"Attribution graph: {args.prompt[:60]}", contexts=contexts),
                   args.force, "--out")
    if not args.quiet:
        s = graph.scores
        feats = graph.nodes[graph.nodes.kind == "feature"].sort_values("influence", ascending=False)
        print(f"replacement score {s['replacement_score']:.3f}, completeness score {s['completeness_score']:.3f}; "
              f"kept {len(graph.nodes)} of {s['n_nodes_full']} nodes")
        logits = graph.nodes[graph.nodes.kind == "logit"]
        print("top logits: " + ", ".join(f"{t!r} {p:.3f}" for t, p in zip(logits.token, logits.probability)))
        cols = ["layer", "position", "feature", "activation", "influence"]
        print(feats[cols].head(10).to_string(index=False))
        for path in (args.out, args.json):
            if path:
                print(f"wrote {path}", file=sys.stderr)
    return 0
