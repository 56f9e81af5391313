"""The circuit found by edge attribution, drawn: components as nodes by layer, the top edges as lines.

Reads an ``interp.analysis.circuits.edges.edge_attribution`` frame and nothing else. A node is a component
(``embed``, ``L{l}H{h}``, ``MLP{l}``, ``logits``); rows run from the embeddings at the bottom to the logits at
the top, each layer's heads below its MLP. An edge into a head's query, key or value input is dotted, dashed
or solid; its width is ``|score|`` over the largest shown and its colour the sign (blue: corrupting the edge
lowers the metric, so it carries the clean answer; red: it raises it).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from interp.report.figures import _LAYOUT

__all__ = ["edge_circuit_figure"]

_DASH = {"q": "dot", "k": "dash", "v": "solid"}


def _node(name: str) -> str:
    return name.split(".")[0]  # "L1H3.q" -> the head L1H3


def _position(node: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    """(x, y): heads at their index, everything else centred; y counts half-layers from the embeddings."""
    mid = (n_heads - 1) / 2
    if node == "embed":
        return mid, 0.0
    if node == "logits":
        return mid, 2.0 * n_layers + 1
    if node.startswith("MLP"):
        return mid, 2.0 * int(node[3:]) + 2
    layer, head = node[1:].split("H")
    return float(head), 2.0 * int(layer) + 1


def edge_circuit_figure(edges: pd.DataFrame, top_n: int = 30, title: str = "Edge attribution: top edges"
                        ) -> go.Figure:
    """The ``top_n`` edges by ``|score|`` of ``edges`` over every component of the model."""
    top = edges.reindex(edges.score.abs().sort_values(ascending=False, kind="stable").index).head(top_n)
    n_layers = int(pd.concat([edges.sender_layer, edges.receiver_layer]).max()) + 1
    n_heads = int(pd.concat([edges.sender_head, edges.receiver_head]).max()) + 1
    nodes = ["embed"] + [f"L{lay}H{h}" for lay in range(n_layers) for h in range(n_heads)] + \
        [f"MLP{lay}" for lay in range(n_layers)] + ["logits"]
    pos = {n: _position(n, n_layers, n_heads) for n in nodes}
    used = set(top.sender) | {_node(r) for r in top.receiver}
    scale = float(top.score.abs().max()) if len(top) else 1.0
    fig = go.Figure()
    for row in top.itertuples():
        (x0, y0), (x1, y1) = pos[row.sender], pos[_node(row.receiver)]
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="skip",
            line={"width": 1 + 7 * abs(row.score) / scale, "color": "#4c78a8" if row.score < 0 else "#e45756",
                  "dash": _DASH.get(row.receiver_input, "solid")}, opacity=0.75))
    mids = [((pos[s][0] + pos[_node(r)][0]) / 2, (pos[s][1] + pos[_node(r)][1]) / 2, f"{s} → {r}<br>score {v:.4f}")
            for s, r, v in zip(top.sender, top.receiver, top.score)]
    fig.add_trace(go.Scatter(x=[m[0] for m in mids], y=[m[1] for m in mids], mode="markers", showlegend=False,
                             marker={"size": 10, "opacity": 0}, text=[m[2] for m in mids],
                             hovertemplate="%{text}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text", text=nodes,
        textposition="middle right", showlegend=False, hovertemplate="%{text}<extra></extra>",
        marker={"size": [14 if n in used else 7 for n in nodes],
                "color": ["#222222" if n in used else "#bbbbbb" for n in nodes]}))
    fig.update_layout(title=f"{title} ({len(top)} of {len(edges)}; q dotted, k dashed, v solid)",
                      height=max(320, 70 * n_layers + 200), **_LAYOUT)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig
