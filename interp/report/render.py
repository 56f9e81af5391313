"""Render a :class:`~interp.report.data.ReportData` as one self-contained HTML file or as Markdown.

The HTML opens offline: plotly's JavaScript is embedded once, inline, in the page head, and every
figure reuses it. Every number in a table carries its exact value in a ``data-value`` attribute next
to the rounded text a reader sees, so tests (and scripts) can read the page back without rounding.
"""

from __future__ import annotations

import functools
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
from interp.report.markdown import md_code, md_fence, md_text
from interp.report.widgets import script_json

__all__ = [
    "FORMATS",
    "SECTIONS",
    "html_page",
    "html_table",
    "md_table",
    "neuron_anchor",
    "page_sections",
    "plotly_file_name",
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
    "neuron-pages": "Neuron pages",
    "superposition": "Superposition",
    "patching": "Causal: patching and direct logit attribution",
}
# The SAE section (``--sae``) comes after the neuron pages, only in a report made with an SAE.
SAE_SECTION = ("sae", "Sparse autoencoder features")
# The attribution-graph section (``--transcoders``) follows, only in a report made with transcoders.
CIRCUIT_SECTION = ("circuit", "Attribution graph")
_TITLES = {**SECTIONS, SAE_SECTION[0]: SAE_SECTION[1], CIRCUIT_SECTION[0]: CIRCUIT_SECTION[1]}
FORMATS = ("html", "md")
# How the HTML report carries plotly.js: inline (one self-contained file, ~4.6 MB) or shared (one copy of
# plotly-<version>.min.js beside the reports in their folder; each report is then a few hundred kB).
PLOTLY_MODES = ("inline", "shared")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em} .prompt{background:#f6f8fa;padding:.6em 1em;border-left:4px solid #4c78a8;white-space:pre-wrap}
table.data{border-collapse:collapse;margin:.8em 0;font-size:.9em} table.data th,table.data td{border:1px solid #ddd;
padding:.25em .6em;text-align:left} table.data th{background:#f3f3f3} td.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap} code{background:#f3f3f3;padding:0 .2em;white-space:pre}
.note{color:#555;font-size:.92em} .figure{margin:1em 0} footer{margin-top:3em;color:#777;font-size:.85em}
.scroll{overflow:auto;max-height:36em} .scroll thead th{position:sticky;top:0} .figure{overflow-x:auto}
.neuron-page{border-top:1px solid #eee;margin-top:1.5em} .neuron-page h3{margin-bottom:.3em}
.cols{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
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


def column_title(col) -> str:
    """A column name as a heading: words, not snake_case ("frac_within_tol" -> "frac within tol")."""
    return str(col).replace("_", " ")


def neuron_anchor(layer, neuron) -> str:
    """The id of a neuron's page in the report: every table that names the neuron links here."""
    return f"neuron-L{int(layer)}N{int(neuron)}"


def html_table(df: pd.DataFrame, name: str, columns: list[str] | None = None, max_rows: int | None = None,
               neuron_links: bool = False) -> str:
    """An HTML table with ``data-name``; every cell has its exact value in ``data-value``.

    Headers read as words and keep the column's name in ``data-col``. ``neuron_links``: the ``neuron``
    cells (with a ``layer`` column) link to the neuron's page.
    """
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    rows = df[cols] if max_rows is None else df[cols].head(max_rows)
    head = "".join(f'<th data-col="{html.escape(str(c))}">{html.escape(column_title(c))}</th>' for c in cols)
    link = neuron_links and "neuron" in cols and "layer" in df.columns
    layers = (df["layer"] if max_rows is None else df["layer"].head(max_rows)).tolist() if link else None
    body = []
    for i, rec in enumerate(rows.itertuples(index=False)):
        cells = []
        for c, v in zip(cols, rec):
            cell = _cell_html(c, v)
            if link and c == "neuron":
                href = "#" + neuron_anchor(layers[i], v)
                cell = cell.replace(f">{_fmt_number(v)}</td>", f'><a href="{href}">{_fmt_number(v)}</a></td>')
            cells.append(cell)
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="data" data-name="{html.escape(name)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _md_cell(col: str, v) -> str:
    if _is_numeric(v) or _is_missing(v):
        return _fmt_number(v)
    if col not in _TOKEN_COLUMNS:
        return md_text(str(v).replace("\n", " "))  # a model name or path is text, never markup
    s = show_token(v).replace("|", "\\|")
    return md_code(s) if s else s


def md_table(df: pd.DataFrame, columns: list[str] | None = None, max_rows: int | None = None) -> str:
    """A GitHub-flavoured Markdown table."""
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    rows = df[cols] if max_rows is None else df[cols].head(max_rows)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in rows.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(c, v) for c, v in zip(cols, rec)) + " |")
    return "\n".join(lines)


# Figures are drawn when they come near the viewport (IntersectionObserver), so a long report opens at
# once and draws the rest as the reader scrolls; window.interpDrawAll() draws every figure now. Each draw is a
# performance measure "draw:ID" (parsing its spec to plotly's promise resolving): benchmarks/report_load.py reads them.
_LAZY_JS = """
(function(){
  function start(){
    const tmpl = document.getElementById('plotly-template');
    const template = tmpl ? JSON.parse(tmpl.textContent) : null;
    function draw(el){
      if (el.dataset.drawn) return; el.dataset.drawn = '1';
      const begin = performance.now();
      const spec = JSON.parse(document.getElementById(el.id + '-spec').textContent);
      if (template && !spec.layout.template) spec.layout.template = template;
      return Plotly.newPlot(el, spec.data, spec.layout, spec.config)
        .then(() => performance.measure('draw:' + el.id, {start: begin}));
    }
    const els = [...document.querySelectorAll('.plotly-lazy')];
    window.interpDrawAll = () => els.forEach(draw);
    // each figure drawn again, alone and in turn: its measure is then its own cost (benchmarks/report_load.py)
    window.interpRedrawEach = async () => { for (const el of els) {
      if (el.dataset.drawn) { Plotly.purge(el); delete el.dataset.drawn; } await draw(el); } };
    if (!('IntersectionObserver' in window)) { els.forEach(draw); return; }
    const io = new IntersectionObserver(es => es.forEach(e => {
      if (e.isIntersecting) { io.unobserve(e.target); draw(e.target); } }), {rootMargin: '400px'});
    els.forEach(el => io.observe(el));
  }
  // the figures' placeholders are all in the document by DOMContentLoaded, wherever this script stands
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
"""


@functools.lru_cache(maxsize=1)
def _page_template() -> tuple[dict, str]:
    """The figures' plotly template (as a dict, and as JSON): about 7 kB that every figure would otherwise
    repeat. The page carries it once and the loader gives it to each figure that was written without one."""
    import plotly.io as pio
    from plotly.io.json import to_json_plotly

    from interp.report.figures import TEMPLATE

    plain = pio.templates[TEMPLATE].to_plotly_json()
    return plain, to_json_plotly(plain)


def _float32(obj):
    """Float64 arrays in a figure's traces as float32: half the bytes in the page, and 7 significant digits
    where hovers show 3 or 4. plotly has already written numpy arrays as typed-array specs (base64 ``bdata``)."""
    if isinstance(obj, np.ndarray) and obj.dtype == np.float64:
        return obj.astype(np.float32)
    if isinstance(obj, dict) and obj.get("dtype") == "f8" and isinstance(obj.get("bdata"), str):
        import base64

        values = np.frombuffer(base64.b64decode(obj["bdata"]), dtype="<f8").astype("<f4")
        return {**obj, "dtype": "f4", "bdata": base64.b64encode(values.tobytes()).decode("ascii")}
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_float32(v) for v in obj]
    return obj


def _figure(fig, div_id: str) -> str:
    """A figure placeholder of the figure's size and its spec as JSON; the page's loader draws it when seen.

    The plotly library is in the page head once; each figure carries only its data and layout. A
    figure with a fixed width (token axes: TOKEN_PX per token) scrolls sideways inside its div.
    """
    from plotly.io import to_json

    config = {"displaylogo": False, "responsive": fig.layout.width is None}
    plain = fig.to_plotly_json()
    plain["data"] = _float32(plain["data"])
    template = plain["layout"].get("template")
    if template is not None and template == _page_template()[0]:
        plain["layout"] = {k: v for k, v in plain["layout"].items() if k != "template"}  # the page's copy serves
    spec = script_json(to_json({"data": plain["data"], "layout": plain["layout"], "config": config}, validate=False))
    width = f"width:{int(fig.layout.width)}px;" if fig.layout.width else "width:100%;"
    height = f"height:{int(fig.layout.height or 450)}px"
    return (f'<div class="figure"><div id="{div_id}" class="plotly-lazy" style="{width}{height}"></div>'
            f'<script type="application/json" id="{div_id}-spec">{spec}</script></div>')


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


def page_sections(data: ReportData) -> dict:
    """This report's section ids and headings in page order: :data:`SECTIONS`, plus the SAE section if any."""
    out = {}
    for sid, title in SECTIONS.items():
        out[sid] = title
        if sid == "neuron-pages" and data.sae:
            out[SAE_SECTION[0]] = SAE_SECTION[1]
        if sid == "neuron-pages" and data.circuit:
            out[CIRCUIT_SECTION[0]] = CIRCUIT_SECTION[1]
    return out


def _section(sid: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_TITLES[sid]}</h2>{body}</section>'


def plotly_file_name() -> str:
    """The shared plotly.js file beside reports written with ``plotly="shared"`` (versioned: never stale)."""
    import plotly

    return f"plotly-{plotly.__version__}.min.js"


def html_page(title: str, body: str, with_plotly: bool, plotly_src: str | None = None) -> str:
    """A complete offline HTML page; with ``with_plotly`` the plotly library is inlined once in the head,
    or, given ``plotly_src``, loaded from that relative path (a file beside the page, never the network)."""
    from interp.report.widgets import WIDGET_CSS

    script, loader = "", ""
    if with_plotly:
        loader = (f'<script type="application/json" id="plotly-template">{script_json(_page_template()[1])}'
                  f"</script><script>{_LAZY_JS}</script>")
    if with_plotly and plotly_src:  # not deferred: measured slower to first figures (benchmarks/report_load.py)
        script = f'<script type="text/javascript" src="{html.escape(plotly_src)}"></script>'
    elif with_plotly:
        from plotly.offline import get_plotlyjs

        script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}{WIDGET_CSS}</style>{script}</head><body>{body}{loader}</body></html>\n")


NEURON_PROMPT_TOKENS = 256  # the prompt's tokens shaded on each neuron page (the last ones)


def _neuron_pages(data: ReportData) -> str:
    """One page per neuron the tables name: examples over the corpus, histogram, answers, the prompt."""
    from interp.report.widgets import neuron_examples, shading_scale, svg_histogram, token_shading

    esc = html.escape
    prof = data.neuron_profiles
    if prof is None:
        intro = ('<p class="note">No corpus to scan (the model folder has no heldout.txt): pass '
                 "<code>--corpus FILE</code> (a text, JSONL or Parquet file, a saved <code>datasets</code> folder "
                 "with <code>--corpus-split</code>) for top-activating examples.</p>")
    else:
        n_tok = int(prof.stats.n_tokens.iloc[0]) if len(prof.stats) else 0
        intro = (f'<p class="note">Top-activating examples over <b>{esc(data.corpus_name or "")}</b> '
                 f"({n_tok:,} tokens scanned); each token is shaded by the neuron's activation there (orange "
                 "positive, blue negative; the boxed token is the maximum). <i>Raises / lowers</i>: the centred "
                 "direct effect on each token's logit per unit activation (the mean over the vocabulary "
                 "subtracted: the softmax ignores a shared shift).</p>")
    pages = [intro]
    for layer, neuron in dict.fromkeys((int(r.layer), int(r.neuron)) for r in data.neurons.itertuples()):
        body = []
        mine = data.neurons[(data.neurons.layer == layer) & (data.neurons.neuron == neuron)].iloc[0]
        contrib = "" if _is_missing(mine.contribution) else (
            f", direct contribution <b>{mine.contribution:+.4f}</b> to the logit of "
            f"<code>{esc(show_token(mine.target_token))}</code>")
        on = data.neuron_prompt[(data.neuron_prompt.layer == layer) & (data.neuron_prompt.neuron == neuron)]
        st = None if prof is None else prof.stats[(prof.stats.layer == layer) & (prof.stats.neuron == neuron)].iloc[0]
        # the prompt is shaded on the same symmetric scale as the corpus examples below (±the neuron's largest
        # |activation|), so a small negative value stays pale instead of filling the prompt's own range
        scale = shading_scale(on.activation, () if st is None else (st["min"], st["max"]))
        shown = on.tail(NEURON_PROMPT_TOKENS)  # a long prompt: its last tokens (a page per neuron would repeat it all)
        cut = "" if len(shown) == len(on) else f" The last {len(shown)} of its {len(on)} tokens."
        body.append(f"<p>On this prompt: activation <b>{mine.activation:.4f}</b> at the last position{contrib}"
                    + f'. <span class="note">Full colour at ±{scale:.3g}.{cut}</span></p>'
                    + token_shading(shown.token.tolist(), shown.activation.tolist(), scale=scale,
                                    trigger=len(shown) - 1))
        if prof is not None:
            ex = prof.examples[(prof.examples.layer == layer) & (prof.examples.neuron == neuron)]
            h = prof.histogram[(prof.histogram.layer == layer) & (prof.histogram.neuron == neuron)]
            edges = [*h.bin_left.tolist(), float(h.bin_right.iloc[-1])]
            body.append('<div class="cols"><div>' + neuron_examples(ex, st) + "</div>"
                        + svg_histogram(h["count"].tolist(), edges,
                                        title=f"activation over {int(st.n_tokens):,} tokens: mean {st['mean']:.3f}, "
                                              f"{st.frac_positive:.1%} positive")
                        + "</div>")
        ans = data.neuron_answers[(data.neuron_answers.layer == layer) & (data.neuron_answers.neuron == neuron)]
        acols = ["rank", "token", "token_id", "logit"]
        body.append('<div class="cols"><div><b>Raises</b>'
                    + html_table(ans[ans.direction == "top"], f"neuron_raises_L{layer}N{neuron}", acols)
                    + "</div><div><b>Lowers</b>"
                    + html_table(ans[ans.direction == "bottom"], f"neuron_lowers_L{layer}N{neuron}", acols)
                    + "</div></div>")
        pages.append(f'<div class="neuron-page" id="{neuron_anchor(layer, neuron)}"><h3>Neuron L{layer}N{neuron}</h3>'
                     + "".join(body) + "</div>")
    return "".join(pages)


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
        return ('<p class="note">Not computed: the option <code>patching</code> is off, or the prompt is a single '
                "token (the task repeats the prompt's beginning).</p>")
    from interp.report.data import pair_excerpt

    esc = html.escape
    clean, corrupted, shown = pair_excerpt(p["pair"]["clean"], p["pair"]["corrupted"])
    notes = [*p.get("notes", ()), *([shown] if shown else [])]
    cut = "".join(f'<p class="note">Shortened: {esc(note)}.</p>' for note in notes)
    return (f'<p class="note">{esc(_patching_intro(p))}</p>' + cut
            + f'<div class="prompt">clean:     {esc(clean)}\ncorrupted: {esc(corrupted)}</div>'
            + _figure(head_patching_heatmap(p["heads"]), "fig-patching-heads")
            + html_table(p["heads"], "patching_heads", _HEAD_COLS)
            + _figure(patching_heatmap(p["grid"], p["tokens"], title="Patching resid_pre: layer × position"),
                      "fig-patching-grid")
            + _figure(dla_bar(p["dla"]), "fig-dla")
            + "<h3>Top components by direct logit attribution</h3>" + html_table(_top_dla(p["dla"]), "dla", _DLA_COLS)
            + "<details><summary>resid_pre patching, every layer and patched position</summary>"
            + html_table(p["grid"], "patching_grid", _GRID_COLS) + "</details>" + _edges_html(p))


_EDGE_COLS = ["sender", "receiver", "score"]


def _edges_intro(p: dict) -> str:
    return (f"Edge attribution (EAP) over all {p['edges'].attrs['n_edges']} edges between the embeddings, each head's "
            "query/key/value input, the MLPs and the logits: score = the estimated change of the metric when that "
            "edge alone carries the corrupted run's value. Faithfulness of the top-n edges: the clean run with every "
            "other edge corrupted (1 = clean, 0 = corrupted).")


def _edges_html(p: dict) -> str:
    if "edges" not in p:
        return ""
    from interp.report.edge_figure import edge_circuit_figure

    return (f'<h3>Edges</h3><p class="note">{html.escape(_edges_intro(p))}</p>'
            + _figure(edge_circuit_figure(p["edges"], top_n=20), "fig-edges")
            + html_table(p["edges"].head(20), "patching_edges", _EDGE_COLS)
            + html_table(p["faithfulness"], "patching_faithfulness", ["n_edges", "metric", "faithfulness"]))


def _lens_figure(data: ReportData) -> str:
    """The logit-lens grid, at most LENS_WINDOW positions wide (the last ones), saying what was left out."""
    from interp.report.figures import LENS_WINDOW, token_window

    n = len(data.str_tokens)
    window = token_window(n, LENS_WINDOW)
    cut = "" if window[0] == 0 else (
        f'<p class="note">The figure shows the last {LENS_WINDOW} of {n} positions (a cell per position and layer '
        "stays readable, and the figure draws quickly); every position is in the table below.</p>")
    return cut + _figure(lens_grid_heatmap(data.lens_grid, data.str_tokens, window=window), "fig-lens-grid")


def _pattern_figures(data: ReportData) -> str:
    """Each notable head's pattern: token by token when the prompt fits the window; otherwise the whole pattern
    pooled into blocks (:func:`pattern_overview`) and then the last window of positions token by token."""
    from interp.report.figures import block_edges, pattern_overview, token_window

    n = len(data.str_tokens)
    window = token_window(n, data.options["pattern_window"])
    long = window[1] - window[0] < n
    out = []
    if long:
        edges = block_edges(n)
        out.append(f'<p class="note">A {n}-token prompt: each head is drawn whole, its positions pooled into '
                   f"{len(edges) - 1} blocks (a cell is the share of a query block's attention that lands on a key "
                   f"block), then its last {window[1] - window[0]} positions token by token. The view above "
                   "shows every token.</p>")
    for r in data.notable_heads.itertuples():
        mat = pattern_matrix(data.patterns, int(r.layer), int(r.head), n)
        title = f"L{r.layer}H{r.head}: {r.role.replace('_', ' ')} (score {r.score:.3f})"
        if long:
            out.append(_figure(pattern_overview(mat, data.str_tokens, title), f"fig-pattern-all-{r.layer}-{r.head}"))
        out.append(_figure(pattern_heatmap(mat, data.str_tokens, title, window=window),
                           f"fig-pattern-{r.layer}-{r.head}"))
    return "".join(out)


def render_html(data: ReportData, plotly_src: str | None = None) -> str:
    """The report as one HTML document that opens offline.

    plotly.js is inlined once in the head, or with ``plotly_src`` loaded from that file beside the page.
    """
    m = data.model
    n_layers = m["n_layers"]
    esc = html.escape
    parts = [
        f"<header><h1>interp report</h1><p>Model <b>{esc(m['name'])}</b>, prompt:</p>"
        f'<div class="prompt" id="prompt">{esc(data.prompt)}</div><nav>'
        + "".join(f'<a href="#{sid}">{title}</a>' for sid, title in page_sections(data).items())
        + "</nav></header>"
    ]
    parts.append(_section("model", html_table(_kv_frame(m), "model")
                          + '<p class="note">Options: ' + esc(", ".join(f"{k}={v}" for k, v in data.options.items()))
                          + "</p>"))
    parts.append(_section(
        "tokenization",
        f'<p class="note">{len(data.token_ids)} tokens. <code>bytes</code> are the raw bytes each token stands for; '
        "a character cut across tokens shows in each piece with its piece number (今₀ 今₁ 今₂).</p>"
        + html_table(data.tokens, "tokens")))
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
        + _lens_figure(data)
        + _figure(final_prob_by_layer(data.final_by_layer), "fig-lens-final")
        + "<h3>Final prediction by layer (last position)</h3>" + html_table(data.final_by_layer, "final_by_layer")
        + "<details><summary>Full layer × position grid</summary>" + html_table(grid, "lens_grid") + "</details>"))
    from interp.report.widgets import attention_view

    first = [(int(r.layer), int(r.head)) for r in data.notable_heads.head(1).itertuples()]
    view = attention_view(data.str_tokens, data.patterns, data.view_heads, checked=first,
                          title="Where each token attends")
    n_all = n_layers * int(m["n_heads"])
    if len(data.view_heads) < n_all:  # a long prompt: say which heads the view left out, and why
        view = (f'<p class="note">The view holds {len(data.view_heads)} of the {n_all} heads, the most notable: at '
                f"{len(data.token_ids)} tokens every head would exceed its budget of "
                f"{data.options['view_bytes']:,} bytes (one per head and causal pair).</p>") + view
    parts.append(_section(
        "attention",
        '<p class="note">Role scores lie in [0, 1]. <code>duplicate_token</code> and <code>induction</code> are '
        "measured on a repeated random sequence, the others on the prompt (column <code>source</code>).</p>"
        + view + _figure(head_role_grid(data.head_scores), "fig-head-roles")
        + "<h3>Most notable heads</h3>" + html_table(data.notable_heads, "notable_heads")
        + _pattern_figures(data)
        + "<details><summary>All head scores</summary>" + html_table(_role_pivot(data.head_scores), "head_roles")
        + "</details>"))
    by_con = data.neurons[data.neurons.ranked_by == "contribution"]
    by_act = data.neurons[data.neurons.ranked_by == "activation"]
    ncols = ["rank", "layer", "neuron", "activation", "contribution", "target_token"]
    top_con = by_con.head(data.options["n_answer_neurons"])[["layer", "neuron"]]
    answers = data.neuron_answers.merge(top_con, on=["layer", "neuron"]) if len(data.neuron_answers) else \
        data.neuron_answers
    parts.append(_section(
        "neurons",
        f'<p class="note">MLP neurons at the last position. <b>Answer</b> neurons push the predicted token '
        f'<code>{esc(show_token(data.predicted_token))}</code> (direct logit contribution); <b>question</b> '
        "neurons fire most on this context (activation). Click a neuron for its page. For the top "
        "contributors, the tokens their output vector raises and lowers (centred logit per unit activation).</p>"
        + _figure(neuron_bar(data.neurons), "fig-neurons")
        + "<h3>Answer neurons (by contribution)</h3>" + html_table(by_con, "neurons_contribution", ncols, neuron_links=True)
        + "<h3>Question neurons (by activation)</h3>" + html_table(by_act, "neurons_activation", ncols, neuron_links=True)
        + "<h3>What the top contributors say</h3>"
        + html_table(answers, "neuron_answers", ["layer", "neuron", "direction", "rank", "token", "token_id", "logit"],
                     neuron_links=True)))
    parts.append(_section("neuron-pages", _neuron_pages(data)))
    if data.sae:
        from interp.report.sae_section import sae_html

        parts.append(_section("sae", sae_html(data.sae)))
    if data.circuit:
        from interp.report.circuit_section import circuit_html

        parts.append(_section("circuit", circuit_html(data.circuit)))
    hists = []
    for s in data.options["superposition_sets"]:
        sel = data.angle_samples[data.angle_samples.set == s]
        layers = sorted(int(x) for x in sel.layer.dropna().unique()) if "layer" in sel else []
        for layer in layers or [None]:  # per-layer sets (W_in, W_out, ...) get one histogram per layer
            if len(sel):
                fid = f"fig-angles-{s}" + ("" if layer is None else f"-{layer}")
                hists.append(_figure(angle_histogram(data.angle_samples, data.random_pdf, s, layer=layer), fid))
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
    return html_page(f"interp report: {data.prompt[:60]}", "".join(parts), with_plotly=True, plotly_src=plotly_src)


# ----------------------------------------------------------------------------------------------------
# Markdown


def render_markdown(data: ReportData) -> str:
    """The report as Markdown (tables only; the HTML report has the figures)."""
    m = data.model
    top = data.next_tokens.iloc[0]
    out = ["# interp report", "", f"Model **{md_text(m['name'])}**, prompt:", "", md_fence(data.prompt), ""]

    def sec(sid: str, *blocks: str) -> None:
        out.extend([f"## {_TITLES[sid]}", ""])
        for b in blocks:
            out.extend([b, ""])

    sec("model", md_table(_kv_frame(m)))
    sec("tokenization", f"{len(data.token_ids)} tokens.", md_table(data.tokens))
    sec("next-token", f"The model predicts {md_code(show_token(top['token']))} with probability {top['prob']:.4f}.",
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
    pages = []
    prof = data.neuron_profiles
    for layer, neuron in dict.fromkeys((int(r.layer), int(r.neuron)) for r in data.neurons.itertuples()):
        ans = data.neuron_answers[(data.neuron_answers.layer == layer) & (data.neuron_answers.neuron == neuron)]
        lines = [f"### Neuron L{layer}N{neuron}", "",
                 "Raises: " + ", ".join(f"{md_code(show_token(t))} {v:+.3f}" for t, v in
                                        zip(ans[ans.direction == "top"].token, ans[ans.direction == "top"].logit)),
                 "", "Lowers: " + ", ".join(f"{md_code(show_token(t))} {v:+.3f}" for t, v in
                                             zip(ans[ans.direction == "bottom"].token,
                                                 ans[ans.direction == "bottom"].logit))]
        if prof is not None:
            ex = prof.examples[(prof.examples.layer == layer) & (prof.examples.neuron == neuron)]
            for rank, g in ex.groupby("rank", sort=True):
                text = "".join(f"«{show_token(t)}»" if trig else show_token(t) for t, trig in zip(g.token, g.is_trigger))
                act = float(g[g.is_trigger].activation.iloc[0])
                lines += ["", f"{rank}. {act:.3f}: {md_code(text)}"]
        pages.append("\n".join(lines))
    corpus = f"Top-activating examples over {md_text(data.corpus_name)}." if prof is not None else "No corpus scanned."
    sec("neuron-pages", corpus, *pages)
    if data.sae:
        from interp.report.sae_section import sae_markdown

        sec("sae", *sae_markdown(data.sae))
    if data.circuit:
        from interp.report.circuit_section import circuit_markdown

        sec("circuit", *circuit_markdown(data.circuit))
    sec("superposition", md_table(data.superposition, ["set", "layer", "count", "dim", "mean_angle_deg",
                                                        "std_angle_deg", "baseline_std_angle_deg", "max_abs_cos",
                                                        "baseline_max_abs_cos", "frac_within_tol",
                                                        "baseline_frac_within_tol"]))
    p = data.patching
    if p:
        sec("patching", md_text(_patching_intro(p)), *(md_text(f"Shortened: {note}.") for note in p.get("notes", ())),
            md_fence(f"clean:     {p['pair']['clean']}\ncorrupted: {p['pair']['corrupted']}"),
            "Each head's output patched (all positions):",
            md_table(p["heads"], _HEAD_COLS), "Top components by direct logit attribution:",
            md_table(_top_dla(p["dla"]), _DLA_COLS),
            *((md_text(_edges_intro(p)), md_table(p["edges"].head(20), _EDGE_COLS),
               md_table(p["faithfulness"], ["n_edges", "metric", "faithfulness"])) if "edges" in p else ()))
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


def write_report(data: ReportData, path: str | Path, fmt: str | None = None, force: bool = False,
                 plotly: str = "inline") -> Path:
    """Render and write atomically; refuses to replace an existing file unless ``force``.

    ``plotly="inline"`` (default) writes one self-contained file that opens anywhere, alone.
    ``plotly="shared"`` writes ``plotly-<version>.min.js`` once into the report's folder (kept if it is
    already there) and a page that loads it: a folder of reports then holds one copy of the library.
    """
    from interp.report.output import write_text

    if plotly not in PLOTLY_MODES:
        raise InterpError(f"--plotly: must be one of {list(PLOTLY_MODES)}; given {plotly!r}.")
    fmt = format_for(path, fmt)
    if fmt == "md":
        return write_text(path, render_markdown(data), force=force)
    if plotly == "inline":
        return write_text(path, render_html(data), force=force)
    from interp.io import STDOUT, atomic_write_text, is_stream
    from interp.report.output import check_writable

    if str(path) == STDOUT or is_stream(path):
        raise InterpError("--plotly: 'shared' writes plotly.js beside the report; give --out a file, or use 'inline'.")
    target = check_writable(path, force)
    text = render_html(data, plotly_src=plotly_file_name())
    lib = target.parent / plotly_file_name()
    if not lib.is_file():  # same name = same version = same bytes: an existing copy is reused
        from plotly.offline import get_plotlyjs

        atomic_write_text(lib, get_plotlyjs())
    return write_text(path, text, force=force)
