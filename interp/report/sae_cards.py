"""The parts of a feature card that SAE dashboards have beyond top examples, as HTML and text.

Presentation only: each function formats what ``interp.analysis.sae.cards`` returned (``feature_dashboard``'s
bins, samples and correlated features; ``feature_ablation_effects``' per-token rows) for one feature. The
report's SAE section (``sae_section``) and the dashboard's SAE page both call them.
"""

from __future__ import annotations

import html

import pandas as pd

__all__ = ["ABLATION_NOTE", "QUANTILE_NOTE", "ablation_html", "ablation_table", "bin_label", "correlated_html",
           "correlated_text", "quantile_html", "token_list"]

QUANTILE_NOTE = ("Quantile samples, as SAE dashboards show them: the top activations, then contexts sampled at random "
                 "from intervals of the feature's nonzero activations, from its maximum down (each with its range "
                 "and its share of the nonzero activations). Do the weak activations mean what the strong ones do?")
ABLATION_NOTE = ("Ablation on the top contexts: at each token where the feature fires it is set to 0 there (the SAE "
                 "spliced in with its error term, so only the feature changes) and the log-probability of the actual "
                 "next token is read again. Shading: that change (blue: the feature helped predict the next token; "
                 "orange: it hurt); hover a token for its activation and the logits the feature raises and lowers "
                 "there.")


def token_list(pairs) -> str:
    """``[(token, value), ...]`` as ``'tok' +0.12, ...``."""
    from interp.report.figures import show_token

    return ", ".join(f"{show_token(t)!r} {v:+.2f}" for t, v in pairs) if isinstance(pairs, list) else ""


def bin_label(row) -> str:
    """A bin's heading: which one, its activation range and share of the nonzero activations."""
    what = f"Top {int(row['count'])}" if int(row["bin"]) == 0 else f"Interval {int(row['bin'])}"
    return f"{what} · activation {row['low']:.3g}–{row['high']:.3g} · {row['share']:.1%} of nonzero activations"


def quantile_html(bins: pd.DataFrame, samples: pd.DataFrame, feature: int) -> str:
    """One feature's bins, each with its sampled contexts shaded on one scale (the feature's maximum)."""
    from interp.report.widgets import token_shading

    mine, ex = bins[bins.feature == feature], samples[samples.feature == feature]
    if mine.empty:
        return '<p class="note">It does not fire on the corpus scanned.</p>'
    scale = float(mine.high.max()) or 1.0
    parts = []
    for _, b in mine.sort_values("bin").iterrows():
        parts.append(f'<div class="note"><b>{html.escape(bin_label(b))}</b></div>')
        for _, g in ex[ex.bin == b["bin"]].groupby("sample", sort=True):
            parts.append(token_shading(g.token.tolist(), g.activation.tolist(), scale=scale,
                                       trigger=int(g.is_trigger.to_numpy().argmax())))
        if int(b["count"]) == 0:
            parts.append('<div class="note">(no activations in this interval)</div>')
    return '<div class="quantiles">' + "".join(parts) + "</div>"


def ablation_table(effects: pd.DataFrame) -> pd.DataFrame:
    """The tokens where the feature fires: ``context, position, token, next_token, activation, logprob_change,
    raises, lowers`` (the lists as text)."""
    on = effects[effects.activation > 0]
    out = on[["context", "position", "token", "next_token", "activation", "logprob_change"]].copy()
    out["raises"] = [token_list(v) for v in on.raises]
    out["lowers"] = [token_list(v) for v in on.lowers]
    return out.reset_index(drop=True)


def ablation_html(effects: pd.DataFrame) -> str:
    """One shaded line per context of ``feature_ablation_effects``' rows: the next-token log-prob change."""
    from interp.report.figures import show_token
    from interp.report.widgets import shading_scale, token_shading

    scale = shading_scale(effects.logprob_change.fillna(0.0))
    lines = []
    for c, g in effects.groupby("context", sort=True):
        titles = []
        for r in g.itertuples():
            t = f"activation {r.activation:.3f}"
            if r.activation > 0:
                nxt = "" if r.next_token is None else f" · Δ log p({show_token(r.next_token)!r}) {r.logprob_change:+.3f}"
                t += nxt + f"\nraises: {token_list(r.raises)}\nlowers: {token_list(r.lowers)}"
            titles.append(t)
        peak = int(g.activation.to_numpy().argmax())
        lines.append(f'<div class="note">context {int(c) + 1}</div>'
                     + token_shading(g.token.tolist(), g.logprob_change.fillna(0.0).tolist(), scale=scale,
                                     trigger=peak, titles=titles))
    return '<div class="ablation">' + "".join(lines) + "</div>"


def correlated_text(correlated: pd.DataFrame, feature: int) -> list[str]:
    """``other (+0.71, co-fires 21%)`` per correlated feature of ``feature``."""
    mine = correlated[correlated.feature == feature]
    return [f"{int(g)} ({c:+.2f}, co-fires {cf:.0%})" for g, c, cf in zip(mine.other, mine.correlation, mine.co_fire)]


def correlated_html(correlated: pd.DataFrame, feature: int, link=None) -> str:
    """The correlated features as one line; ``link(other)`` gives an anchor for those that have a card."""
    mine = correlated[correlated.feature == feature]
    if mine.empty:
        return ""
    items = []
    for g, text in zip(mine.other, correlated_text(correlated, feature)):
        href = link(int(g)) if link is not None else None
        rest = html.escape(text[len(str(int(g))):])
        items.append((f'<a href="#{href}">{int(g)}</a>' if href else str(int(g))) + rest)
    return ("<p><b>Correlated features</b> (Pearson correlation of the activations over the corpus's tokens; "
            "co-fires: share of this feature's firing tokens where the other fires too): " + ", ".join(items) + "</p>")
