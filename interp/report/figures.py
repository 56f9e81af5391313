"""Plotly figures shared by the HTML report and the dashboard.

Each builder takes analyzer output (a DataFrame) and returns a ``plotly.graph_objects.Figure``; none
computes anything an analyzer computes. Token axes use integer positions with token labels as tick
text, because a categorical axis would merge repeated tokens ("the" ... "the") into one column.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "angle_histogram",
    "block_edges",
    "dla_bar",
    "final_prob_by_layer",
    "head_patching_heatmap",
    "head_role_grid",
    "lens_grid_heatmap",
    "neuron_bar",
    "next_token_bar",
    "patching_heatmap",
    "pattern_grid",
    "pattern_heatmap",
    "pattern_overview",
    "pooled_pattern",
    "show_token",
    "token_window",
    "toy_model_figure",
]

TEMPLATE = "plotly_white"  # every figure's; an HTML report carries it once for all of them
_LAYOUT = {"template": TEMPLATE, "margin": {"l": 60, "r": 20, "t": 50, "b": 60}, "font": {"size": 12}}


def show_token(s: str) -> str:
    """A token as people can see it: newlines, tabs and edge spaces made visible."""
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    s = "".join(named.get(ch, ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256
                          else f"\\u{ord(ch):04x}") for ch in str(s))
    if s != s.strip(" "):
        s = s.replace(" ", "␣")
    return s if s else "∅"


def _esc(token: str) -> str:
    """A token for plotly text, which reads a little HTML: escape it so "<b>" stays text."""
    return html.escape(show_token(token), quote=False)


# A token axis gives every token TOKEN_PX pixels: one line of TICK_FONT-px text fits, so tick labels never
# overlap, whatever the prompt's length. Long prompts make wide figures (the report scrolls them sideways)
# or are shown through a window of positions (token_window).
TOKEN_PX = 18
TICK_FONT = 11
DLA_ROW_PX = 24  # one bar of the direct-logit-attribution chart, its label beside it
LENS_CELL_PX = 44  # a logit-lens cell holds a short token written in it
LENS_WINDOW = 48  # positions a logit-lens figure draws (the last ones; its table holds every position)
_AXIS_ROOM = 200  # margins, axis titles and colour bar around a token axis, in pixels


def token_window(n: int, size: int = 40, end: int | None = None) -> tuple[int, int]:
    """Positions ``[start, stop)``: at most ``size`` of ``n``, ending at ``end`` (default: the last token)."""
    stop = n if end is None else max(1, min(n, int(end)))
    return max(0, stop - max(1, int(size))), stop


_PIECE_DIGITS = set("₀₁₂₃₄₅₆₇₈₉")


def tick_label(token: str, position: int) -> str:
    """"token<sub>position</sub>"; after a piece of a split character ("我₁", interp.tokenize.token_labels) the
    position is set off by a dot, "我₁<sub>·11</sub>", so piece 1 at position 11 never reads as piece 11."""
    shown = _esc(token)
    dot = "·" if shown[-1:] in _PIECE_DIGITS else ""
    return f"{shown}<sub>{dot}{position}</sub>"


def _token_ticks(tokens: list[str], start: int = 0, rotate: bool = False) -> dict:
    """Tick labels (:func:`tick_label`) for positions ``start .. start + len(tokens) - 1``."""
    ticks = {"tickmode": "array", "tickvals": list(range(start, start + len(tokens))),
             "ticktext": [tick_label(t, start + i) for i, t in enumerate(tokens)],
             "tickfont": {"size": TICK_FONT}, "automargin": True}
    if rotate:
        ticks["tickangle"] = -90
    return ticks


def _short(token: str, n: int = 6) -> str:
    s = show_token(token)
    return html.escape(s if len(s) <= n else s[: n - 1] + "…", quote=False)


def next_token_bar(next_tokens: pd.DataFrame, title: str = "Next-token probabilities") -> go.Figure:
    """Horizontal bars of ``token``/``prob`` (best on top)."""
    df = next_tokens.iloc[::-1]
    labels = [f"{_esc(t)} ({i})" for t, i in zip(df.token, df.token_id)]
    fig = go.Figure(go.Bar(x=df.prob, y=labels, orientation="h", text=[f"{p:.3f}" for p in df.prob],
                           textposition="auto", marker_color="#4c78a8"))
    fig.update_layout(title=title, xaxis_title="probability", height=max(220, 28 * len(df) + 90), **_LAYOUT)
    return fig


def lens_grid_heatmap(grid: pd.DataFrame, tokens: list[str], value: str = "top_prob",
                      title: str = "Logit lens: top prediction at every layer and position",
                      window: tuple[int, int] | None = None) -> go.Figure:
    """Layer × position grid from ``summarize_lens``: colour = ``value``, text = the top token.

    Every position gets ``LENS_CELL_PX`` pixels (the figure is as wide as the prompt needs); ``window``
    ``(start, stop)`` draws only those positions.
    """
    start, stop = window or (0, len(tokens))
    layers = sorted(grid.layer.unique())
    names = grid.drop_duplicates("layer").set_index("layer").layer_name.reindex(layers).tolist()
    n = stop - start
    z = np.full((len(layers), n), np.nan)
    text = np.full((len(layers), n), "", dtype=object)
    full = np.full((len(layers), n), "", dtype=object)
    row = {layer: i for i, layer in enumerate(layers)}
    for r in grid[(grid.position >= start) & (grid.position < stop)].itertuples():
        z[row[r.layer], r.position - start] = getattr(r, value)
        text[row[r.layer], r.position - start] = _short(r.top_token)
        full[row[r.layer], r.position - start] = _esc(r.top_token)
    hover = "layer %{y}<br>position %{x}<br>top token %{customdata}<br>" + value + " %{z:.3f}<extra></extra>"
    fig = go.Figure(go.Heatmap(z=z, x=list(range(start, stop)), text=text, customdata=full,
                               texttemplate="%{text}", textfont={"size": 10}, hovertemplate=hover,
                               colorscale="Blues", zmin=0, zmax=1 if value.endswith("prob") else None,
                               colorbar={"title": value}))
    fig.update_layout(title=title, height=max(300, 40 * len(layers) + 240), width=_AXIS_ROOM + LENS_CELL_PX * n,
                      **_LAYOUT)
    fig.update_xaxes(title="input position (token)", **_token_ticks(tokens[start:stop], start, rotate=True))
    fig.update_yaxes(title="layer", tickmode="array", tickvals=list(range(len(layers))), ticktext=names)
    return fig


def final_prob_by_layer(final_by_layer: pd.DataFrame, token: str | None = None) -> go.Figure:
    """Probability of the model's final prediction read off each layer (logit lens, last position)."""
    token = token if token is not None else str(final_by_layer.target_token.iloc[-1])
    fig = go.Figure(go.Scatter(x=final_by_layer.layer_name, y=final_by_layer.target_prob, mode="lines+markers",
                               text=[f"rank {r}" for r in final_by_layer.target_rank], name="p(final token)"))
    fig.update_layout(title=f"Probability of the final prediction “{_esc(token)}” by layer",
                      yaxis_title="probability", xaxis_title="layer", height=320, **_LAYOUT)
    return fig


def head_role_grid(scores: pd.DataFrame, roles: list[str] | None = None) -> go.Figure:
    """One layer × head heatmap per role from ``head_scores`` (scores in [0, 1])."""
    roles = roles or list(dict.fromkeys(scores.role))
    n_layers = int(scores.layer.max()) + 1
    n_heads = int(scores["head"].max()) + 1
    fig = make_subplots(rows=1, cols=len(roles), subplot_titles=[r.replace("_", " ") for r in roles],
                        horizontal_spacing=0.03, shared_yaxes=True)
    for i, role in enumerate(roles):
        s = scores[scores.role == role]
        z = np.full((n_layers, n_heads), np.nan)
        z[s.layer.to_numpy(), s["head"].to_numpy()] = s.score.to_numpy()
        fig.add_trace(go.Heatmap(z=z, zmin=0, zmax=1, colorscale="Viridis", showscale=i == len(roles) - 1,
                                 hovertemplate=f"{role}<br>layer %{{y}} head %{{x}}<br>score %{{z:.3f}}<extra></extra>"),
                      row=1, col=i + 1)
        fig.update_xaxes(title_text="head", row=1, col=i + 1, dtick=1)
    fig.update_yaxes(title_text="layer", row=1, col=1, dtick=1, autorange="reversed")
    for i in range(2, len(roles) + 1):
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_layout(title="Head roles (score per layer and head)", height=max(260, 30 * n_layers + 160), **_LAYOUT)
    return fig


def pattern_heatmap(matrix: np.ndarray, tokens: list[str], title: str,
                    window: tuple[int, int] | None = None) -> go.Figure:
    """A ``[query, key]`` attention pattern with token labels on both axes (``window``: those positions only)."""
    start, stop = window or (0, len(tokens))
    n = stop - start
    sub = matrix[start:stop, start:stop]
    fig = go.Figure(go.Heatmap(z=sub, x=list(range(start, stop)), y=list(range(start, stop)), zmin=0, zmax=1,
                               colorscale="Reds",
                               hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>"))
    side = TOKEN_PX * n
    if window is not None and n < len(tokens):
        title = f"{title} (positions {start}–{stop - 1} of {len(tokens)})"
    fig.update_layout(title=title, width=max(420, side + _AXIS_ROOM + 60), height=max(380, side + _AXIS_ROOM),
                      **_LAYOUT)
    fig.update_xaxes(title="key", **_token_ticks(tokens[start:stop], start, rotate=True))
    fig.update_yaxes(title="query", autorange="reversed", **_token_ticks(tokens[start:stop], start))
    return fig


# A pattern longer than the report's token-by-token window is also drawn whole, pooled into at most
# OVERVIEW_BLOCKS blocks per axis in an OVERVIEW_PX square: the figure's cost and size stay bounded at any length.
OVERVIEW_BLOCKS = 128
OVERVIEW_PX = 640


def block_edges(n: int, blocks: int = OVERVIEW_BLOCKS) -> np.ndarray:
    """``min(n, blocks)`` near-equal blocks of positions ``0 .. n-1``: block ``i`` is ``edges[i] .. edges[i+1]-1``."""
    return np.unique(np.linspace(0, n, min(n, blocks) + 1).round().astype(int))


def pooled_pattern(matrix: np.ndarray, blocks: int = OVERVIEW_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """A ``[query, key]`` pattern pooled into position blocks: ``(pooled, edges)``.

    ``pooled[i, j]`` is the share of the attention of query block ``i`` (its queries' mean) that lands on key
    block ``j``, so each row still sums to 1 and a head's mass is never lost between pixels: an induction
    head's stripe stays a stripe. Blocks lying wholly above the diagonal (keys after every query) are NaN, as
    the masked cells of a pattern are. ``edges``: block ``i`` is positions ``edges[i] .. edges[i + 1] - 1``.
    """
    edges = block_edges(matrix.shape[0], blocks)
    weights = np.nan_to_num(np.asarray(matrix, dtype=float), nan=0.0)
    to_key_blocks = np.add.reduceat(weights, edges[:-1], axis=1)  # [query, key block]
    pooled = np.add.reduceat(to_key_blocks, edges[:-1], axis=0) / np.diff(edges)[:, None]
    future = edges[:-1][None, :] > (edges[1:] - 1)[:, None]  # key block starts after the query block's last query
    pooled[future] = np.nan
    return pooled, edges


def pattern_overview(matrix: np.ndarray, tokens: list[str], title: str,
                     blocks: int = OVERVIEW_BLOCKS) -> go.Figure:
    """The whole ``[query, key]`` pattern of a long prompt in a bounded square (:func:`pooled_pattern`).

    Ticks name each labelled block by its first token and position, no closer than ``TOKEN_PX``."""
    pooled, edges = pooled_pattern(matrix, blocks)
    k = len(edges) - 1
    width = int(np.diff(edges).max())
    every = max(1, -(-TOKEN_PX * k // OVERVIEW_PX))  # label every `every`-th block: ticks TOKEN_PX apart or more
    shown = list(range(0, k, every))
    spans = [f"{edges[i]}–{edges[i + 1] - 1}" for i in range(k)]  # key blocks are named by their span: hover
    ticks = {"tickmode": "array", "ticktext": [tick_label(tokens[edges[i]], int(edges[i])) for i in shown],
             "tickfont": {"size": TICK_FONT}, "automargin": True}  # reads it from x, not a k x k customdata
    fig = go.Figure(go.Heatmap(z=pooled, x=spans, zmin=0, zmax=1, colorscale="Reds", colorbar={"title": "share"},
                               hovertemplate="query block %{y}<br>keys %{x}<br>share %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"{title}: all {len(tokens)} positions, blocks of ≤{width}",
                      width=OVERVIEW_PX + _AXIS_ROOM, height=OVERVIEW_PX + _AXIS_ROOM, **_LAYOUT)
    fig.update_xaxes(title="key block", tickangle=-90, type="category", tickvals=[spans[i] for i in shown], **ticks)
    fig.update_yaxes(title="query block", autorange="reversed", tickvals=shown, **ticks)
    return fig


def pattern_grid(matrices: list[np.ndarray], titles: list[str], tokens: list[str],
                 window: tuple[int, int] | None = None, cols: int = 2) -> go.Figure:
    """Several heads' patterns as one figure: square panels, one shared colour bar, titles clear of the toolbar.

    Tick labels sit on the outer panels only (left column and bottom row), ``TOKEN_PX`` per token.
    """
    start, stop = window or (0, len(tokens))
    n, k = stop - start, len(matrices)
    cols = max(1, min(cols, k))
    rows = -(-k // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=min(0.12, 0.6 / rows))
    pos = list(range(start, stop))
    for i, m in enumerate(matrices):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Heatmap(z=m[start:stop, start:stop], x=pos, y=pos, zmin=0, zmax=1, colorscale="Reds",
                                 showscale=i == 0, colorbar={"title": "weight", "len": 0.5},
                                 hovertemplate=f"{titles[i]}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.3f}}"
                                               "<extra></extra>"), row=r, col=c)
        bottom = i + cols >= k
        fig.update_xaxes(row=r, col=c, **(_token_ticks(tokens[start:stop], start, rotate=True) if bottom
                                          else {"showticklabels": False}))
        fig.update_yaxes(row=r, col=c, autorange="reversed",
                         **(_token_ticks(tokens[start:stop], start) if c == 1 else {"showticklabels": False}))
    side = TOKEN_PX * n
    fig.update_layout(width=cols * (side + 60) + _AXIS_ROOM, height=rows * (side + 70) + _AXIS_ROOM,
                      **{**_LAYOUT, "margin": {"l": 60, "r": 20, "t": 90, "b": 60}})
    return fig


def neuron_bar(top: pd.DataFrame, ranked_by: str = "contribution") -> go.Figure:
    """Bars of the top neurons (``top_neurons`` rows of one ``ranked_by``)."""
    df = top[top.ranked_by == ranked_by]
    labels = [f"L{r.layer}N{r.neuron}" for r in df.itertuples()]
    colors = ["#54a24b" if v >= 0 else "#e45756" for v in df[ranked_by]]
    fig = go.Figure(go.Bar(x=labels, y=df[ranked_by], marker_color=colors))
    target = _esc(df.target_token.iloc[0]) if len(df) else ""
    what = f"direct logit contribution to “{target}”" if ranked_by == "contribution" else "activation"
    fig.update_layout(title=f"Top neurons by {what}", yaxis_title=ranked_by, height=320, **_LAYOUT)
    return fig


def patching_heatmap(grid: pd.DataFrame, tokens: list[str], value: str = "normalised",
                     title: str = "Activation patching: layer × position") -> go.Figure:
    """Layer × position grid from ``activation_patching`` (colour: ``value``, 0 = corrupted, 1 = clean).

    The grid may hold only some positions (a long prompt's patched positions): one column each, in order."""
    layers = sorted(grid.layer.unique())
    positions = sorted(int(p) for p in grid.position.unique())
    col = {p: i for i, p in enumerate(positions)}
    z = np.full((len(layers), len(positions)), np.nan)
    row = {layer: i for i, layer in enumerate(layers)}
    z[[row[v] for v in grid.layer], [col[int(p)] for p in grid.position]] = grid[value].to_numpy()
    fig = go.Figure(go.Heatmap(z=z, zmid=0, colorscale="RdBu", colorbar={"title": value},
                               customdata=np.array([positions] * len(layers)),
                               hovertemplate="layer %{y}<br>position %{customdata}<br>" + value
                                             + " %{z:.3f}<extra></extra>"))
    # TOKEN_PX per position and rotated labels, as every token axis: labels never overlap (the report scrolls)
    fig.update_layout(title=title, height=max(300, 40 * len(layers) + 240),
                      width=max(500, _AXIS_ROOM + TOKEN_PX * len(positions)), **_LAYOUT)
    fig.update_xaxes(title="patched position (token)", tickmode="array", tickvals=list(range(len(positions))),
                     ticktext=[tick_label(tokens[p], p) for p in positions], tickfont={"size": TICK_FONT},
                     automargin=True, tickangle=-90)
    fig.update_yaxes(title="layer", tickmode="array", tickvals=list(range(len(layers))), ticktext=layers,
                     autorange="reversed")
    return fig


def head_patching_heatmap(heads: pd.DataFrame, value: str = "normalised",
                          title: str = "Activation patching: each head's output (all positions)") -> go.Figure:
    """Layer × head grid from ``activation_patching(where="z", by_position=False)``."""
    n_layers, n_heads = int(heads.layer.max()) + 1, int(heads["head"].max()) + 1
    z = np.full((n_layers, n_heads), np.nan)
    z[heads.layer.to_numpy(), heads["head"].to_numpy()] = heads[value].to_numpy()
    fig = go.Figure(go.Heatmap(z=z, zmid=0, colorscale="RdBu", colorbar={"title": value}, texttemplate="%{z:.2f}",
                               hovertemplate="layer %{y} head %{x}<br>" + value + " %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=max(240, 40 * n_layers + 140), **_LAYOUT)
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(title="layer", dtick=1, autorange="reversed")
    return fig


def dla_bar(dla: pd.DataFrame, k: int = 12, title: str = "Direct logit attribution: top components") -> go.Figure:
    """Bars of the ``k`` components with the largest ``|contribution|`` (``direct_logit_attribution`` rows)."""
    df = dla.reindex(dla.contribution.abs().sort_values(ascending=False, kind="stable").index).head(k)
    colors = ["#54a24b" if v >= 0 else "#e45756" for v in df.contribution]
    # Horizontal bars: each component's name is a tick label on its own TOKEN_PX-high row, and nothing is written
    # on the bars (the kind is in the hover), so no label can run into another or into a bar, whatever the signs.
    fig = go.Figure(go.Bar(y=df.component.astype(str), x=df.contribution, orientation="h", marker_color=colors,
                           customdata=df.kind, textposition="none",
                           hovertemplate="%{y} (%{customdata})<br>contribution %{x:.3f}<extra></extra>"))
    fig.update_yaxes(type="category", autorange="reversed", tickfont={"size": TICK_FONT}, automargin=True)
    fig.update_layout(title=title, xaxis_title="logit (difference) contribution",
                      height=120 + DLA_ROW_PX * len(df), **_LAYOUT)
    return fig


def angle_histogram(samples: pd.DataFrame, pdf: pd.DataFrame | None, set_name: str, layer=None,
                    bins: int = 90) -> go.Figure:
    """Histogram of pairwise angles of one direction set, model vs random, with the exact random density."""
    sel = samples[samples.set == set_name]
    if layer is not None and sel.layer.notna().any():
        sel = sel[sel.layer == layer]
    edges = np.linspace(0, 180, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for source, color in (("model", "#4c78a8"), ("random", "#bbbbbb")):
        a = sel[sel.source == source].angle_deg.to_numpy()
        if len(a):
            # Binning here is drawing, not analysis: the samples come from direction_angle_samples.
            dens, _ = np.histogram(a, bins=edges, density=True)
            fig.add_trace(go.Bar(x=centers, y=dens, name=f"{source} pairs", marker_color=color,
                                 opacity=0.75 if source == "model" else 0.6))
    if pdf is not None:
        fig.add_trace(go.Scatter(x=pdf.angle_deg, y=pdf.pdf_per_deg, mode="lines", name="random (exact)",
                                 line={"color": "black", "width": 1.5}))
    where = f" layer {layer}" if layer is not None else ""
    fig.update_layout(title=f"Pairwise angles: {set_name}{where}", barmode="overlay", bargap=0,
                      xaxis_title="angle (degrees)", yaxis_title="density per degree", height=330, **_LAYOUT)
    return fig


def toy_model_figure(result) -> go.Figure:
    """A toy model of superposition: WᵀW (feature interference) and per-feature norms."""
    w = np.asarray(result.W)
    gram = w.T @ w  # drawing the Gram matrix of the learned W; the measures come from the analyzer
    fig = make_subplots(rows=1, cols=2, subplot_titles=["WᵀW", "‖W_i‖ (colour: dimensionality)"],
                        column_widths=[0.5, 0.5])
    lim = float(np.abs(gram).max()) or 1.0
    fig.add_trace(go.Heatmap(z=gram, zmin=-lim, zmax=lim, colorscale="RdBu", reversescale=True, showscale=False),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=list(range(w.shape[1])), y=result.feature_norms,
                         marker={"color": result.dimensionality, "cmin": 0, "cmax": 1, "colorscale": "Viridis",
                                     "colorbar": {"title": "D_i"}}), row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="feature", row=1, col=2)
    fig.update_layout(title=f"Toy model: {result.n_features} features in {result.d_hidden} dims, "
                            f"p = {result.feature_probability:g}", height=360, showlegend=False, **_LAYOUT)
    return fig
