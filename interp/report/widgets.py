"""Small self-contained HTML components shared by the report and the dashboard (no plotly, no network).

* :func:`attention_view` — CircuitsVis-style: the prompt as text; hover (or click, to pin) a token and
  every earlier token is shaded by how much the chosen heads attend to it from there. The patterns
  travel inside the page as one byte per causal entry (weight × 255, base64), so a 160-token prompt
  on a 2-layer, 4-head model adds ~140 kB and the view stays usable at 500 tokens: the text wraps,
  there is no n × n grid to draw.
* :func:`token_shading` — tokens of one text with their activation as a background colour.
* :func:`svg_histogram` — a histogram as a few SVG rectangles (dozens of these cost nothing to load).

Everything here formats numbers computed by analyzers; nothing is computed that an analyzer computes.
"""

from __future__ import annotations

import base64
import html
import json
from itertools import count

import numpy as np
import pandas as pd

from interp.report.figures import show_token

__all__ = ["WIDGET_CSS", "attention_view", "decode_attention_data", "encode_patterns", "head_colors",
           "neuron_examples", "script_json", "shading_scale", "svg_histogram", "token_shading"]

_ids = count()

# JSON text inside <script>: the HTML parser ends the element at "</script", and "<!--" starts an escape state
# that can swallow the rest of the page; U+2028/2029 end a line in older JavaScript. As \u escapes every
# JSON parser reads the same string, and the HTML parser sees none of them.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(text: str) -> str:
    """JSON text made safe to embed in a ``<script>`` element (``<``, ``>``, ``&``, U+2028/9 as \\u escapes).

    Those characters can appear in JSON only inside strings, where the escape means the same character."""
    return text.translate(str.maketrans(_SCRIPT_ESCAPES))


WIDGET_CSS = """
.attn-view{border:1px solid #ddd;border-radius:6px;padding:.6em .8em;margin:1em 0;font-size:14px}
.attn-heads{display:flex;flex-wrap:wrap;gap:.2em .9em;margin-bottom:.5em;font-size:13px}
.attn-heads label{white-space:nowrap;cursor:pointer}
.attn-swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.2em;vertical-align:-1px}
.attn-thumbs{display:flex;flex-wrap:wrap;gap:.5em;margin:.2em 0 .6em;max-height:15em;overflow-y:auto}
.attn-thumbs figure{margin:0;text-align:center;font-size:11px;cursor:pointer}
.attn-thumb{width:72px;height:72px;image-rendering:pixelated;border:1px solid #ccc;display:block}
.attn-text{line-height:1.9;max-height:32em;overflow-y:auto}
.attn-tok,.act-tok{display:inline-block;font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;
padding:0 1px;line-height:1.5;border-radius:3px;cursor:pointer;border:1px solid transparent}
.attn-tok.attn-q{border-color:#111;font-weight:bold}
.attn-info{margin-top:.5em;color:#333;font-size:13px;min-height:1.4em}
.act-line{line-height:1.9;margin:.15em 0}
.act-tok{cursor:default}
.act-tok.trigger{border-color:#333}
svg.hist rect{fill:#4c78a8} svg.hist text{font-size:10px;fill:#555}
"""

# The attention view's behaviour: decode the bytes, shade keys of the hovered/pinned query.
_ATTN_JS = r"""
(function(){
  const root = document.getElementById(%(id)s);
  const data = JSON.parse(root.querySelector('script.attn-data').textContent);
  const raw = atob(data.weights), n = data.n, tri = n * (n + 1) / 2;
  const w = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) w[i] = raw.charCodeAt(i);
  const toks = [...root.querySelectorAll('.attn-tok')];
  const boxes = [...root.querySelectorAll('.attn-heads input')];
  const info = root.querySelector('.attn-info');
  let pinned = null;
  function chosen(){ return boxes.filter(b => b.checked).map(b => +b.dataset.index); }
  function show(q){
    const heads = chosen();
    toks.forEach(t => { t.style.background = ''; t.classList.remove('attn-q'); });
    if (q === null) { info.textContent = 'Hover a token to see where it attends; click to pin it.'; return; }
    toks[q].classList.add('attn-q');
    if (!heads.length) { info.textContent = 'Choose at least one head.'; return; }
    const row = q * (q + 1) / 2, vals = [];
    for (let k = 0; k <= q; k++) {
      // each head in its own colour: the colours mixed by each head's weight, the strongest weight as opacity
      let s = 0, top = 0, r = 0, g = 0, b = 0;
      for (const h of heads) {
        const x = w[h * tri + row + k] / 255, c = data.colors[h];
        s += x; top = Math.max(top, x); r += x * c[0]; g += x * c[1]; b += x * c[2];
      }
      const v = s / heads.length;
      vals.push([v, k]);
      // every key the query can see gets a colour, a transparent one where the weight rounds to 0 (so the
      // shaded span is exactly the causal window, whatever the weights)
      const mix = s > 0 ? [r / s, g / s, b / s].map(Math.round) : data.colors[heads[0]];
      toks[k].style.background = 'rgba(' + mix.join(',') + ',' + Math.min(1, top).toFixed(3) + ')';
    }
    vals.sort((a, b) => b[0] - a[0]);
    const names = heads.map(h => data.heads[h]).join(', ');
    info.textContent = 'query ' + q + ' ' + JSON.stringify(data.tokens[q]) + ' (' + names + '): ' +
      vals.slice(0, 3).map(([v, k]) => k + ' ' + JSON.stringify(data.tokens[k]) + ' ' + v.toFixed(2)).join(' · ');
    root.dataset.query = q;
  }
  toks.forEach((t, i) => {
    t.addEventListener('mouseenter', () => { if (pinned === null) show(i); });
    t.addEventListener('click', () => { pinned = pinned === i ? null : i; show(pinned === null ? i : pinned); });
  });
  root.querySelector('.attn-text').addEventListener('mouseleave', () => { if (pinned === null) show(null); });
  boxes.forEach(b => b.addEventListener('change', () => show(pinned !== null ? pinned : (toks.length - 1))));
  // one thumbnail per head: its whole pattern at any length, each pixel the largest weight in its block
  root.querySelectorAll('canvas.attn-thumb').forEach(cv => {
    const h = +cv.dataset.index, side = cv.width, c = data.colors[h], step = n / side;
    const ctx = cv.getContext('2d'), img = ctx.createImageData(side, side);
    for (let by = 0; by < side; by++) {
      const q0 = Math.floor(by * step), q1 = Math.max(q0 + 1, Math.floor((by + 1) * step));
      for (let bx = 0; bx <= by; bx++) {
        const k0 = Math.floor(bx * step), k1 = Math.max(k0 + 1, Math.floor((bx + 1) * step));
        let m = 0;
        for (let q = q0; q < q1; q++) {
          const at = h * tri + q * (q + 1) / 2;
          for (let k = k0; k < Math.min(k1, q + 1); k++) if (w[at + k] > m) m = w[at + k];
        }
        const o = 4 * (by * side + bx);
        img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = m;
      }
    }
    ctx.putImageData(img, 0, 0);
    cv.parentNode.addEventListener('click', () => { boxes[h].checked = !boxes[h].checked;
      boxes[h].dispatchEvent(new Event('change')); });
  });
  show(null);
})();
"""


THUMB_PX = 96  # a head's thumbnail: its whole pattern pooled to at most this many pixels a side


def head_colors(n: int) -> list[list[int]]:
    """``n`` distinct RGB colours, one per head (hues a golden angle apart, as CircuitsVis gives each head its own)."""
    import colorsys

    return [[round(255 * x) for x in colorsys.hls_to_rgb((i * 0.381966) % 1.0, 0.45, 0.75)] for i in range(n)]


def encode_patterns(patterns: pd.DataFrame, heads: list[tuple[int, int]], n: int) -> str:
    """Base64 of one byte per causal (query, key) entry and head: ``round(weight * 255)``, query-major.

    ``patterns`` is ``interp.analysis.attention.attention_patterns`` output (rows in causal,
    query-major order per head); heads appear in ``heads`` order.
    """
    tri = n * (n + 1) // 2
    out = np.zeros(len(heads) * tri, dtype=np.uint8)
    for i, (layer, head) in enumerate(heads):
        sel = patterns[(patterns.layer == layer) & (patterns["head"] == head)]
        q, k = sel.query_pos.to_numpy(), sel.key_pos.to_numpy()
        idx = i * tri + q * (q + 1) // 2 + k
        out[idx] = np.clip(np.rint(sel.weight.to_numpy() * 255), 0, 255).astype(np.uint8)
    return base64.b64encode(out.tobytes()).decode("ascii")


def decode_attention_data(data: dict) -> np.ndarray:
    """The inverse of :func:`encode_patterns` for a view's JSON: ``[head, query, key]`` weights (0 above the diagonal)."""
    n, raw = int(data["n"]), np.frombuffer(base64.b64decode(data["weights"]), dtype=np.uint8)
    tri = n * (n + 1) // 2
    qi, ki = np.tril_indices(n)
    out = np.zeros((len(data["heads"]), n, n))
    for h in range(len(data["heads"])):
        out[h, qi, ki] = raw[h * tri:(h + 1) * tri] / 255.0
    return out


def _as_text(token: str) -> str:
    """A token as running text: spaces kept (the prompt reads as prose), line breaks and tabs made visible."""
    shown = "".join("↵" if ch == "\n" else "→" if ch == "\t" else ch if ch.isprintable() or ch == " "
                    else f"\\x{ord(ch):02x}" for ch in token)
    return html.escape(shown or "∅")


def attention_view(tokens: list[str], patterns: pd.DataFrame, heads: list[tuple[int, int]],
                   checked: list[tuple[int, int]] | None = None, title: str = "") -> str:
    """An interactive attention view (HTML + inline script) over ``tokens`` for ``heads`` (layer, head)."""
    vid = f"attn-view-{next(_ids)}"
    n = len(tokens)
    checked = set(checked or heads[:1])
    labels = [f"L{layer}H{head}" for layer, head in heads]
    colors = head_colors(len(heads))
    data = {"n": n, "heads": labels, "tokens": [show_token(t) for t in tokens], "colors": colors,
            "weights": encode_patterns(patterns, heads, n)}
    boxes = "".join(
        f'<label><input type="checkbox" data-index="{i}"{" checked" if h in checked else ""}> '
        f'<span class="attn-swatch" style="background:rgb({",".join(map(str, c))})"></span>{lab}</label>'
        for i, (h, lab, c) in enumerate(zip(heads, labels, colors)))
    side = min(n, THUMB_PX)
    thumbs = "".join(f'<figure title="{lab}: the whole pattern (click to tick)"><canvas class="attn-thumb" '
                     f'data-index="{i}" width="{side}" height="{side}"></canvas>{lab}</figure>'
                     for i, lab in enumerate(labels))
    toks = "".join(f'<span class="attn-tok" data-pos="{i}" title="{i}">{_as_text(t)}</span>'
                   + ("<br>" if "\n" in t else "") for i, t in enumerate(tokens))
    payload = script_json(json.dumps(data))
    head = f"<b>{html.escape(title)}</b> " if title else ""
    return (f'<div class="attn-view" id="{vid}">{head}<div class="attn-heads">heads: {boxes}</div>'
            f'<div class="attn-thumbs">{thumbs}</div>'
            f'<div class="attn-text">{toks}</div><div class="attn-info"></div>'
            f'<script type="application/json" class="attn-data">{payload}</script>'
            f"<script>{_ATTN_JS % {'id': json.dumps(vid)}}</script></div>")


def _shade(v: float, scale: float) -> str:
    a = 0.0 if scale <= 0 else max(-1.0, min(1.0, v / scale))
    rgb = "255,127,14" if a >= 0 else "31,119,180"
    return f"rgba({rgb},{abs(a):.3f})"


def shading_scale(values, reference=()) -> float:
    """The value shaded at full colour, the same for both signs: the largest ``|value|`` among ``values`` and the
    ``reference`` extremes (a neuron's min and max over a corpus), so 0 is always white and the colours of one page
    compare."""
    mags = [abs(float(v)) for v in [*values, *reference] if np.isfinite(float(v))]
    return max(mags, default=0.0) or 1.0


def token_shading(tokens: list[str], values, scale: float | None = None, trigger: int | None = None,
                  titles: list[str] | None = None) -> str:
    """One line of tokens, each shaded by its value (orange positive, blue negative; ``scale`` = full colour);
    ``titles``: each token's hover text (default its value)."""
    values = [float(v) for v in values]
    scale = scale if scale is not None else shading_scale(values)
    spans = []
    for i, (t, v) in enumerate(zip(tokens, values)):
        cls = "act-tok trigger" if i == trigger else "act-tok"
        title = html.escape(titles[i], quote=True) if titles is not None else f"{v:.3f}"
        spans.append(f'<span class="{cls}" data-value="{v!r}" title="{title}" style="background:{_shade(v, scale)}">'
                     f"{html.escape(show_token(t))}</span>")
    return f'<div class="act-line">{"".join(spans)}</div>'


def neuron_examples(examples: pd.DataFrame, stats) -> str:
    """A neuron's top examples (``NeuronProfiles.examples`` rows of one neuron), one shaded line per rank.

    ``stats`` is the neuron's ``NeuronProfiles.stats`` row: its largest |activation| is full colour.
    """
    scale = shading_scale((), (stats["max"], stats["min"]))
    lines = []
    for rank, g in examples.groupby("rank", sort=True):
        trig = g[g.is_trigger].iloc[0]
        lines.append(f'<div class="note">#{rank} · activation {trig.activation:.3f} · doc {trig.doc}, '
                     f"position {trig.position}</div>"
                     + token_shading(g.token.tolist(), g.activation.tolist(), scale=scale,
                                     trigger=int(g.is_trigger.to_numpy().argmax())))
    return "".join(lines)


def svg_histogram(counts, edges, width: int = 320, height: int = 90, title: str = "") -> str:
    """Bars of ``counts`` between ``edges`` as inline SVG, with the x range written under it."""
    counts = np.asarray(counts, dtype=float)
    top = counts.max() if len(counts) and counts.max() > 0 else 1.0
    bw = width / max(1, len(counts))
    plot_h = height - 14
    rects = "".join(
        f'<rect x="{i * bw:.2f}" y="{plot_h - c / top * plot_h:.2f}" width="{max(bw - 0.5, 0.5):.2f}" '
        f'height="{c / top * plot_h:.2f}"><title>[{edges[i]:.3g}, {edges[i + 1]:.3g}): {int(c)}</title></rect>'
        for i, c in enumerate(counts))
    labels = (f'<text x="0" y="{height - 2}">{edges[0]:.3g}</text>'
              f'<text x="{width}" y="{height - 2}" text-anchor="end">{edges[-1]:.3g}</text>')
    if len(edges) > 2 and edges[0] < 0 < edges[-1]:
        x0 = (0 - edges[0]) / (edges[-1] - edges[0]) * width
        labels += f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="0" y2="{plot_h}" stroke="#999" stroke-dasharray="2,2"/>'
    cap = f'<div class="note">{html.escape(title)}</div>' if title else ""
    return (f'<div class="hist">{cap}<svg class="hist" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">{rects}{labels}</svg></div>')
