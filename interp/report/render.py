"""Render a :class:`~interp.report.data.ReportData` as one self-contained HTML file or as Markdown.

The HTML opens offline: plotly's JavaScript is embedded once, inline, in the page head, and every
figure reuses it. Every number in a table carries its exact value in a ``data-value`` attribute next
to the rounded text a reader sees, so tests (and scripts) can read the page back without rounding.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from interp.errors import InterpError
from interp.report.data import ReportData, pattern_matrix
from interp.report.figures import (
    angle_histogram,
    dla_bar,
    final_prob_by_layer,
    head_patching_heatmap,
    head_role_grid,
    lens_grid_heatmap,
    neuron_bar,
    next_token_bar,
    patching_heatmap,
    pattern_heatmap,
    show_token,
)

__all__ = [
    "FORMATS",
    "SECTIONS",
    "html_page",
    "html_table",
    "md_table",
    "render_html",
    "render_markdown",
    "write_report",
]

# Section ids, in page order, with their headings.
SECTIONS = {
    "model": "Model",
    "tokenization": "Tokenization",
    "next-token": "Next-token distribution",
    "logit-lens": "Logit lens",
    "attention": "Attention",
    "neurons": "Neurons",
    "superposition": "Superposition",
    "patching": "Causal: patching and direct logit attribution",
}
FORMATS = ("html", "md")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em} .prompt{background:#f6f8fa;padding:.6em 1em;border-left:4px solid #4c78a8;white-space:pre-wrap}
table.data{border-collapse:collapse;margin:.8em 0;font-size:.9em} table.data th,table.data td{border:1px solid #ddd;
padding:.25em .6em;text-align:left} table.data th{background:#f3f3f3} td.num{text-align:right;
font-variant-numeric:tabular-nums} code{background:#f3f3f3;padding:0 .2em;white-space:pre}
.note{color:#555;font-size:.92em} .figure{margin:1em 0} footer{margin-top:3em;color:#777;font-size:.85em}
.scroll{overflow-x:auto}
"""


# ----------------------------------------------------------------------------------------------------
# cell formatting


def _is_missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def _fmt_number(v) -> str:
    if _is_missing(v):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10_000 else str(int(v))
    x = float(v)
    if x == 0:
        return "0"
    if abs(x) >= 1000 or abs(x) < 1e-3:
        return f"{x:.3e}"
    return f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"


def _exact(v) -> str:
    """The exact value for a ``data-value`` attribute (repr round-trips a float)."""
    if _is_missing(v):
        return "nan"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


_TOKEN_COLUMNS = {"token", "top_token", "target_token", "input_token", "query_token", "key_token", "text_span",
                  "predicted"}


def _is_numeric(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating, np.bool_, bool)) and not isinstance(v, str)


def _cell_html(col: str, v) -> str:
    if _is_numeric(v) or _is_missing(v):
        return f'<td class="num" data-value="{html.escape(_exact(v))}">{_fmt_number(v)}</td>'
    s = str(v)
    if col in _TOKEN_COLUMNS:
        return f'<td class="tok" data-value="{html.escape(s)}"><code>{html.escape(show_token(s))}</code></td>'
    return f'<td data-value="{html.escape(s)}">{html.escape(s)}</td>'


def html_table(df: pd.DataFrame, name: str, columns: list[str] | None = None, max_rows: int | None = None) -> str:
    """An HTML table with ``data-name``; every cell has its exact value in ``data-value``."""
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    rows = df[cols] if max_rows is None else df[cols].head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for rec in rows.itertuples(index=False):
        body.append("<tr>" + "".join(_cell_html(c, v) for c, v in zip(cols, rec)) + "</tr>")
    return (f'<div class="scroll"><table class="data" data-name="{html.escape(name)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _md_cell(col: str, v) -> str:
    if _is_numeric(v) or _is_missing(v):
        return _fmt_number(v)
    s = show_token(v) if col in _TOKEN_COLUMNS else str(v)
    s = s.replace("|", "\\|").replace("\n", " ")
    if col in _TOKEN_COLUMNS and s:
        return f"`` {s} ``" if "`" in s else f"`{s}`"
    return s


def md_table(df: pd.DataFrame, columns: list[str] | None = None, max_rows: int | None = None) -> str:
    """A GitHub-flavoured Markdown table."""
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    rows = df[cols] if max_rows is None else df[cols].head(max_rows)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in rows.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(c, v) for c, v in zip(cols, rec)) + " |")
    return "\n".join(lines)


def _figure(fig, div_id: str) -> str:
    # The plotly library is in the page head once; each figure only carries its data and layout.
    return '<div class="figure">' + fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                                                 config={"displaylogo": False, "responsive": True}) + "</div>"


def _kv_frame(d: dict) -> pd.DataFrame:
    return pd.DataFrame({"field": list(d.keys()), "value": list(d.values())})


def _lens_wide(data: ReportData) -> pd.DataFrame:
    """Layer × position grid of top tokens (with probabilities) for the Markdown report."""
    g = data.lens_grid
    cells = g.assign(cell=[f"{show_token(t)} ({p:.2f})" for t, p in zip(g.top_token, g.top_prob)])
    wide = cells.pivot(index="layer_name", columns="position", values="cell")
    order = g.drop_duplicates("layer").sort_values("layer").layer_name
    wide = wide.reindex(order)
    wide.columns = [f"{i}:{show_token(t)}" for i, t in zip(wide.columns, data.str_tokens)]
    return wide.reset_index().rename(columns={"layer_name": "layer"})


def _role_pivot(scores: pd.DataFrame) -> pd.DataFrame:
    p = scores.pivot_table(index=["layer", "head"], columns="role", values="score", dropna=False)
    roles = [r for r in dict.fromkeys(scores.role) if r in p.columns]
    return p[roles].reset_index()


# ----------------------------------------------------------------------------------------------------
# HTML


def _section(sid: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{SECTIONS[sid]}</h2>{body}</section>'


def html_page(title: str, body: str, with_plotly: bool) -> str:
    """A complete offline HTML page; with ``with_plotly`` the plotly library is inlined once in the head."""
    script = ""
    if with_plotly:
        from plotly.offline import get_plotlyjs

        script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style>{script}</head><body>{body}</body></html>\n")


_HEAD_COLS = ["layer", "head", "effect", "normalised", "attribution"]
_GRID_COLS = ["layer", "position", "token", "effect", "normalised"]
_DLA_COLS = ["component", "kind", "layer", "head", "neuron", "contribution"]


def _patching_intro(p: dict) -> str:
    pair = p["pair"]
    return (f"An induction task built from the prompt: the prompt followed by its first {pair['position']}"
            f" tokens again should continue with {show_token(pair['answer'])!r} (what followed the last token the first "
            f"time); the corrupted run replaces that token at position {pair['position']} of the first copy by "
            f"{show_token(pair['wrong'])!r}. Metric: logit difference {show_token(pair['answer'])!r} − "
            f"{show_token(pair['wrong'])!r} at the last position, clean {pair['clean_logit_diff']:.3f}, corrupted "
            f"{pair['corrupted_logit_diff']:.3f}; normalised 0 = corrupted, 1 = clean. Attribution patching "
            f"(one forward + backward) vs exact head patching: Pearson r = {p['attribution_r']:.3f}. DLA splits "
            "the clean logit difference into what each component wrote (neuron rows split their MLP row).")


def _top_dla(dla: pd.DataFrame, k: int = 12) -> pd.DataFrame:
    return dla.reindex(dla.contribution.abs().sort_values(ascending=False, kind="stable").index).head(k)


def _patching_html(data: ReportData) -> str:
    p = data.patching
    if not p:
        return '<p class="note">Not computed (option <code>patching</code> off, or the prompt is too short or too ' \
               "long to repeat within n_ctx).</p>"
    esc = html.escape
    return (f'<p class="note">{esc(_patching_intro(p))}</p>'
            f'<div class="prompt">clean:     {esc(p["pair"]["clean"])}\ncorrupted: {esc(p["pair"]["corrupted"])}</div>'
            + _figure(head_patching_heatmap(p["heads"]), "fig-patching-heads")
            + html_table(p["heads"], "patching_heads", _HEAD_COLS)
            + _figure(patching_heatmap(p["grid"], p["tokens"], title="Patching resid_pre: layer × position"),
                      "fig-patching-grid")
            + _figure(dla_bar(p["dla"]), "fig-dla")
            + "<h3>Top components by direct logit attribution</h3>" + html_table(_top_dla(p["dla"]), "dla", _DLA_COLS)
            + "<details><summary>resid_pre patching, every layer and position</summary>"
            + html_table(p["grid"], "patching_grid", _GRID_COLS) + "</details>")


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document (plotly inlined once; no network needed)."""
    m = data.model
    n_layers = m["n_layers"]
    esc = html.escape
    parts = [
        f"<header><h1>interp report</h1><p>Model <b>{esc(m['name'])}</b>, prompt:</p>"
        f'<div class="prompt" id="prompt">{esc(data.prompt)}</div><nav>'
        + "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS.items())
        + "</nav></header>"
    ]
    parts.append(_section("model", html_table(_kv_frame(m), "model")
                          + '<p class="note">Options: ' + esc(", ".join(f"{k}={v}" for k, v in data.options.items()))
                          + "</p>"))
    parts.append(_section(
        "tokenization",
        f'<p class="note">{len(data.token_ids)} tokens. <code>bytes</code> are the raw bytes each token stands for; '
        "a character split across tokens shows as &lt;0x..&gt; pieces.</p>" + html_table(data.tokens, "tokens")))
    top = data.next_tokens.iloc[0]
    parts.append(_section(
        "next-token",
        f'<p>The model predicts <code>{esc(show_token(top["token"]))}</code> with probability '
        f'{top["prob"]:.4f} after the last token.</p>'
        + _figure(next_token_bar(data.next_tokens), "fig-next-token")
        + html_table(data.next_tokens, "next_tokens")))
    grid = data.lens_grid[["layer", "layer_name", "position", "input_token", "top_token", "top_prob", "target_token",
                           "target_prob", "target_rank", "entropy", "kl"]]
    parts.append(_section(
        "logit-lens",
        '<p class="note">Each layer\'s residual stream decoded with the final norm and unembedding (nostalgebraist\'s '
        f"logit lens). Layer 0 is the embedding, layer {n_layers} the model's output. Colour: probability of the "
        "top token; <code>target</code> is the model's final prediction at that position.</p>"
        + _figure(lens_grid_heatmap(data.lens_grid, data.str_tokens), "fig-lens-grid")
        + _figure(final_prob_by_layer(data.final_by_layer), "fig-lens-final")
        + "<h3>Final prediction by layer (last position)</h3>" + html_table(data.final_by_layer, "final_by_layer")
        + "<details><summary>Full layer × position grid</summary>" + html_table(grid, "lens_grid") + "</details>"))
    pats = []
    for r in data.notable_heads.itertuples():
        mat = pattern_matrix(data.patterns, int(r.layer), int(r.head), len(data.str_tokens))
        title = f"L{r.layer}H{r.head}: {r.role.replace('_', ' ')} (score {r.score:.3f})"
        pats.append(_figure(pattern_heatmap(mat, data.str_tokens, title), f"fig-pattern-{r.layer}-{r.head}"))
    parts.append(_section(
        "attention",
        '<p class="note">Role scores lie in [0, 1]. <code>duplicate_token</code> and <code>induction</code> are '
        "measured on a repeated random sequence, the others on the prompt (column <code>source</code>).</p>"
        + _figure(head_role_grid(data.head_scores), "fig-head-roles")
        + "<h3>Most notable heads</h3>" + html_table(data.notable_heads, "notable_heads") + "".join(pats)
        + "<details><summary>All head scores</summary>" + html_table(_role_pivot(data.head_scores), "head_roles")
        + "</details>"))
    by_con = data.neurons[data.neurons.ranked_by == "contribution"]
    by_act = data.neurons[data.neurons.ranked_by == "activation"]
    ncols = ["rank", "layer", "neuron", "activation", "contribution", "target_token"]
    parts.append(_section(
        "neurons",
        f'<p class="note">MLP neurons at the last position. <b>Answer</b> neurons push the predicted token '
        f'<code>{esc(show_token(data.predicted_token))}</code> (direct logit contribution); <b>question</b> '
        "neurons fire most on this context (activation). For the top contributors, the tokens their output "
        "vector raises and lowers (logit per unit activation).</p>"
        + _figure(neuron_bar(data.neurons), "fig-neurons")
        + "<h3>Answer neurons (by contribution)</h3>" + html_table(by_con, "neurons_contribution", ncols)
        + "<h3>Question neurons (by activation)</h3>" + html_table(by_act, "neurons_activation", ncols)
        + "<h3>What the top contributors say</h3>"
        + html_table(data.neuron_answers, "neuron_answers",
                     ["layer", "neuron", "direction", "rank", "token", "token_id", "logit"])))
    hists = []
    for s in data.options["superposition_sets"]:
        layer = 0 if s in ("W_in", "W_out", "W_gate") else None
        if (data.angle_samples.set == s).any():
            hists.append(_figure(angle_histogram(data.angle_samples, data.random_pdf, s, layer=layer), f"fig-angles-{s}"))
    scols = ["set", "layer", "count", "dim", "n_pairs", "exact", "mean_angle_deg", "std_angle_deg",
             "baseline_std_angle_deg", "mean_abs_cos", "baseline_mean_abs_cos", "max_abs_cos", "baseline_max_abs_cos",
             "frac_within_tol", "baseline_frac_within_tol"]
    parts.append(_section(
        "superposition",
        f'<p class="note">Pairwise angles between the model\'s directions (embedding rows, unembedding columns, '
        f"neuron read/write vectors) beside random unit vectors in the same {m['d_model']} dimensions. "
        "<code>frac_within_tol</code> is the fraction of pairs within 90°±1°.</p>"
        + html_table(data.superposition, "superposition", scols) + "".join(hists)))
    parts.append(_section("patching", _patching_html(data)))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import interp

    parts.append(f"<footer>Generated by interp {interp.__version__} on {stamp}.</footer>")
    return html_page(f"interp report: {data.prompt[:60]}", "".join(parts), with_plotly=True)


# ----------------------------------------------------------------------------------------------------
# Markdown


def render_markdown(data: ReportData) -> str:
    """The report as Markdown (tables only; the HTML report has the figures)."""
    m = data.model
    top = data.next_tokens.iloc[0]
    out = ["# interp report", "", f"Model **{m['name']}**, prompt:", "", "```text", data.prompt, "```", ""]

    def sec(sid: str, *blocks: str) -> None:
        out.extend([f"## {SECTIONS[sid]}", ""])
        for b in blocks:
            out.extend([b, ""])

    sec("model", md_table(_kv_frame(m)))
    sec("tokenization", f"{len(data.token_ids)} tokens.", md_table(data.tokens))
    sec("next-token", f"The model predicts `{show_token(top['token'])}` with probability {top['prob']:.4f}.",
        md_table(data.next_tokens))
    sec("logit-lens", "Top token (probability) at every layer and position:", md_table(_lens_wide(data)),
        "Probability of the final prediction by layer (last position):", md_table(data.final_by_layer))
    sec("attention", "Most notable heads:", md_table(data.notable_heads), "All head scores:",
        md_table(_role_pivot(data.head_scores)))
    ncols = ["rank", "layer", "neuron", "activation", "contribution", "target_token"]
    sec("neurons", "Answer neurons (by direct logit contribution):",
        md_table(data.neurons[data.neurons.ranked_by == "contribution"], ncols),
        "Question neurons (by activation):", md_table(data.neurons[data.neurons.ranked_by == "activation"], ncols),
        "What the top contributors say:",
        md_table(data.neuron_answers, ["layer", "neuron", "direction", "rank", "token", "token_id", "logit"]))
    sec("superposition", md_table(data.superposition, ["set", "layer", "count", "dim", "mean_angle_deg",
                                                        "std_angle_deg", "baseline_std_angle_deg", "max_abs_cos",
                                                        "baseline_max_abs_cos", "frac_within_tol",
                                                        "baseline_frac_within_tol"]))
    p = data.patching
    if p:
        sec("patching", _patching_intro(p),
            f"```text\nclean:     {p['pair']['clean']}\ncorrupted: {p['pair']['corrupted']}\n```", "Each head's output patched (all positions):",
            md_table(p["heads"], _HEAD_COLS), "Top components by direct logit attribution:",
            md_table(_top_dla(p["dla"]), _DLA_COLS))
    else:
        sec("patching", "Not computed.")
    return "\n".join(out)


_SUFFIX_FORMATS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}


def format_for(path: str | Path, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else from the file suffix (``.md`` -> md, otherwise html)."""
    named = _SUFFIX_FORMATS.get(Path(str(path)).suffix.lower()) if path is not None else None
    if fmt is None:
        fmt = named or "html"
    if fmt not in FORMATS:
        raise InterpError(f"--format: must be one of {list(FORMATS)}; given {fmt!r}.")
    if named is not None and named != fmt:
        raise InterpError(f"--format {fmt} does not match --out {str(path)!r} (a {named} name): "
                          f"use --format {named}, or an output name ending in .{'md' if fmt == 'md' else 'html'}.")
    return fmt


def write_report(data: ReportData, path: str | Path, fmt: str | None = None, force: bool = False) -> Path:
    """Render and write atomically; refuses to replace an existing file unless ``force``."""
    from interp.report.output import write_text

    fmt = format_for(path, fmt)
    text = render_html(data) if fmt == "html" else render_markdown(data)
    return write_text(path, text, force=force)
