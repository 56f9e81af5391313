"""The report's sparse-autoencoder section (``interp report "..." --sae PATH``): gathered and rendered.

``collect_sae_section`` only calls the SAE analyzers (``interp.analysis.sae``: ``feature_activations``,
``evaluate_sae``, ``token_reconstruction``, ``feature_logit_effects``, ``feature_profiles``, ``similar_features``,
``feature_dashboard`` for correlated features and quantile samples, ``feature_ablation_effects`` on each card's
top examples) and selects rows; ``sae_html`` / ``sae_markdown`` only format what it gathered (the dashboard parts
through ``interp.report.sae_cards``). ``load_report_sae`` turns the ``--sae`` option
into an SAE that fits the model, or one :class:`InterpError` line naming ``--sae``.

Which features get a card: the ``n_sae_cards`` features with the largest activation anywhere on the prompt.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import torch

from interp.errors import InterpError

__all__ = ["DEFAULT_SAE", "card_anchor", "collect_sae_section", "default_sae_folder", "load_report_sae", "sae_html",
           "sae_markdown"]

DEFAULT_SAE = "default"  # --sae default: the SAE shipped in the model folder's sae/<hook>/
SAE_FOLDER = "sae"


def card_anchor(feature) -> str:
    """The id of a feature's card: every table that names the feature links here."""
    return f"sae-feature-{int(feature)}"


def default_sae_folder(model) -> Path:
    """The SAE shipped with the model: the first ``sae/<hook>/`` of its folder holding a ``cfg.json``."""
    root = getattr(model, "_interp_folder", None)
    found = sorted(p for p in (Path(root) / SAE_FOLDER).glob("*") if (p / "cfg.json").is_file()) if root else []
    if not found:
        raise InterpError(f"--sae default: the model folder {str(root)!r} ships no SAE (no {SAE_FOLDER}/<hook>/cfg.json);"
                          " give an SAE folder (interp sae train --out FOLDER)")
    return found[0]


def load_report_sae(model, spec: str | Path):
    """``(sae, folder)`` for ``--sae``: a folder in SAELens' layout (``interp sae train`` writes one; a training
    checkpoint folder works too) or ``"default"``. It must read a hook this model has, with that hook's width."""
    from interp.analysis._inputs import model_device
    from interp.analysis.sae import load_sae
    from interp.analysis.sae.source import check_hook_name

    folder = default_sae_folder(model) if str(spec) == DEFAULT_SAE else Path(spec).expanduser()
    if not folder.is_dir():
        raise InterpError(f"--sae: no SAE folder {str(spec)!r}; give a folder with cfg.json + sae_weights.safetensors "
                          f"(interp sae train --out FOLDER, or SAELens) or '{DEFAULT_SAE}'")
    try:
        sae = load_sae(folder, device=model_device(model))
    except InterpError as e:
        raise InterpError(f"--sae: {e}") from None
    if getattr(sae.cfg, "d_out", None) is not None:  # refused before any analysis runs, not after
        raise InterpError(f"--sae: {folder} holds a transcoder (it predicts {sae.cfg.hook_name_out!r}); give its "
                          f"folder to --transcoders for the attribution graph, or see its feature cards with "
                          f"interp sae features --sae {folder} --feature N")
    hook = sae.cfg.hook_name
    if not hook:
        raise InterpError(f"--sae: {folder / 'cfg.json'} names no hook (metadata.hook_name); the report needs one")
    try:
        check_hook_name(model, hook)
    except InterpError as e:
        raise InterpError(f"--sae: the SAE reads hook {hook!r}, which model {model.cfg.name!r} does not have "
                          f"({str(e).split('; ', 1)[1] if '; ' in str(e) else 'no such hook'})") from None
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.zeros(1, 1, dtype=torch.long, device=model_device(model)),
                                        names_filter=lambda n: n == hook)
    width = int(cache[hook][0, 0].numel())
    if width != sae.cfg.d_in:
        raise InterpError(f"--sae: the SAE reads d_in={sae.cfg.d_in} values per token, but hook {hook!r} of model "
                          f"{model.cfg.name!r} gives {width}")
    return sae.eval(), folder


def collect_sae_section(model, tokens: torch.Tensor, sae, folder, corpus: tuple[str, str] | None, *,
                        k_features: int, n_cards: int, k_answers: int, k_examples: int, max_tokens: int) -> dict:
    """Everything the section shows, from the analyzers (see the module docstring); ``corpus`` is what the
    neuron pages scan (``interp.report.inputs.read_corpus``), or None."""
    from interp.analysis.sae import (
        evaluate_sae,
        feature_ablation_effects,
        feature_activations,
        feature_dashboard,
        feature_logit_effects,
        feature_profiles,
        similar_features,
        token_reconstruction,
    )
    from interp.report.inputs import str_tokens

    cfg = sae.cfg
    acts = feature_activations(model, sae, tokens)  # every active feature at every position, strongest first
    per_token = acts.groupby("position", sort=True).head(k_features).reset_index(drop=True)
    metrics = evaluate_sae(model, sae, tokens).metrics
    peak = acts.groupby("feature").activation.max().reset_index()
    cards = peak.sort_values(["activation", "feature"], ascending=[False, True]).feature.head(n_cards).tolist()
    strs = str_tokens(model, tokens)
    shading = []
    for f in cards:  # the feature at every position of the prompt (0 where it is silent)
        on = acts[acts.feature == f].set_index("position").activation
        shading.append(pd.DataFrame({"feature": f, "position": range(len(strs)), "token": strs,
                                     "activation": [float(on.get(p, 0.0)) for p in range(len(strs))]}))
    effects, note_eff = [], None
    for f in cards:
        try:
            eff = feature_logit_effects(model, sae, f, k=k_answers)
        except InterpError as e:  # a hook that does not write to the residual stream
            note_eff = str(e)
            break
        eff.insert(0, "feature", f)
        effects.append(eff)
    profiles = dashboard = None
    ablation = pd.DataFrame()
    if corpus is not None and cards:
        profiles = feature_profiles(model, sae, corpus[1], cards, k=k_examples, max_tokens=max_tokens)
        dashboard = feature_dashboard(model, sae, corpus[1], cards, n_bins=QUANTILE_BINS, per_bin=PER_BIN,
                                      k_top=PER_BIN, k_correlated=k_answers, max_tokens=max_tokens)
        frames = []
        for f in cards:  # the feature ablated where it fires in its top examples (their windows as contexts)
            ex = profiles.examples[profiles.examples.feature == f]
            contexts = [g.token_id.tolist() for _, g in ex.groupby("rank", sort=True)]
            if contexts:
                frames.append(feature_ablation_effects(model, sae, contexts, f, k_logits=3).assign(feature=f))
        ablation = pd.concat(frames, ignore_index=True) if frames else ablation
    info = {"folder": str(folder), "hook": cfg.hook_name, "architecture": cfg.architecture, "d_in": cfg.d_in,
            "d_sae": cfg.d_sae}
    if cfg.k is not None:
        info["k"] = cfg.k
    note = None
    if cfg.metadata.get("model_name"):
        info["trained on model"] = cfg.metadata["model_name"]
        if str(cfg.metadata["model_name"]) != str(model.cfg.name):  # allowed (same model, other name), but said
            note = (f"this SAE's cfg.json names model {cfg.metadata['model_name']!r}; the report's model is "
                    f"{model.cfg.name!r}. Its features mean something only if that is the same network.")
    return {"info": info, "metrics": metrics, "per_token": per_token, "reconstruction": token_reconstruction(
        model, sae, tokens), "cards": [int(f) for f in cards],
        "shading": pd.concat(shading, ignore_index=True) if shading else pd.DataFrame(),
        "logit_effects": pd.concat(effects, ignore_index=True) if effects else pd.DataFrame(), "logit_note": note_eff,
        "profiles": profiles, "dashboard": dashboard, "ablation": ablation, "corpus_name": corpus[0] if corpus else None, "model_note": note,
        "similar": pd.concat([similar_features(sae, f, k=k_answers).assign(of=f) for f in cards], ignore_index=True)
        if cards else pd.DataFrame()}


QUANTILE_BINS, PER_BIN = 4, 2  # quantile samples: intervals below the top examples, contexts shown per bin


# ----------------------------------------------------------------------------------------------------
# rendering

PROMPT_METRICS = ("n_tokens", "l0", "fve", "cosine", "ce_clean", "ce_sae", "ce_zero_ablation", "ce_loss_recovered")
_TOKEN_COLS = ["position", "token", "l0", "rel_error", "cosine", "next_token", "ce_clean", "ce_sae"]
_EXAMPLE_COLS = ["rank", "activation", "doc", "position", "token"]
_INTRO = ("The SAE reads <code>{hook}</code> and writes it as a sparse sum of {d_sae:,} learned directions "
          "(features). <b>Reconstruction on this prompt</b>: L0 is the number of active features per token, FVE the "
          "fraction of the activation's variance over the prompt's tokens that the reconstruction explains, CE the "
          "next-token loss (nats) of the clean model, with the SAE's reconstruction spliced in, and with the hook "
          "zero-ablated; <i>CE loss recovered</i> = (zero − SAE) / (zero − clean).")


def _kv(d: dict, key: str = "field") -> pd.DataFrame:
    return pd.DataFrame({key: list(d), "value": pd.Series(list(d.values()), dtype=object)})  # ints stay ints


def _prompt_metrics(metrics: dict) -> pd.DataFrame:
    return _kv({k: metrics[k] for k in PROMPT_METRICS if k in metrics}, "metric")


def _examples(prof, f: int) -> tuple[pd.DataFrame, pd.Series]:
    ex = prof.examples[prof.examples.feature == f]
    return ex, prof.stats[prof.stats.feature == f].iloc[0]


def _chips(s: dict, fmt) -> str:
    """One line per token: its top features as small shaded labels (feature id, activation)."""
    from interp.report.figures import show_token
    from interp.report.widgets import _shade

    esc = html.escape
    per, cards = s["per_token"], set(s["cards"])
    scale = float(per.activation.max()) if len(per) else 1.0
    rows = []
    for p, tok in zip(s["reconstruction"].position, s["reconstruction"].token):
        chips = []
        for f, a in zip(per[per.position == p].feature, per[per.position == p].activation):
            fid = f'<a href="#{card_anchor(f)}">{fmt(int(f))}</a>' if int(f) in cards else fmt(int(f))
            chips.append(f'<span class="act-tok" title="feature {int(f)}: {a:.4f}" style="background:{_shade(a, scale)}">'
                         f"{fid} <small>{a:.3f}</small></span>")
        rows.append(f'<tr><td class="num">{p}</td><td class="tok"><code>{esc(show_token(tok))}</code></td>'
                    f"<td>{' '.join(chips)}</td></tr>")
    return ('<div class="scroll"><table class="data"><thead><tr><th>position</th><th>token</th><th>top features '
            f"(activation)</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def sae_html(s: dict) -> str:
    """The section's HTML body (tables through the report's ``html_table``: exact values in ``data-value``)."""
    from interp.report.figures import show_token
    from interp.report.render import _fmt_number, html_table
    from interp.report.widgets import neuron_examples, svg_histogram, token_shading

    esc = html.escape
    info = s["info"]
    cards = set(s["cards"])
    parts = [f'<p class="note"><b>Note:</b> {esc(s["model_note"])}</p>' if s.get("model_note") else "",
             f'<p class="note">{_INTRO.format(hook=esc(str(info["hook"])), d_sae=int(info["d_sae"]))}</p>',
             '<div class="cols"><div>' + html_table(_kv(info), "sae_config") + "</div><div>"
             + html_table(_prompt_metrics(s["metrics"]), "sae_metrics") + "</div></div>"]
    per = s["per_token"]
    feat_table = html_table(per, "sae_features", ["position", "token", "feature", "activation"])
    for f in cards:  # link the features that have a card
        feat_table = feat_table.replace(f'data-value="{f}">{_fmt_number(f)}</td>',
                                        f'data-value="{f}"><a href="#{card_anchor(f)}">{_fmt_number(f)}</a></td>')
    parts.append(f"<h3>Top features at each token</h3><p class=\"note\">The {int(per.groupby('position').size().max()) if len(per) else 0} "
                 "strongest active features per position: feature id and activation (in the hook's units), shaded "
                 "by activation; a linked id has a card below.</p>" + _chips(s, _fmt_number)
                 + "<details><summary>as a table</summary>" + feat_table + "</details>")
    parts.append("<details><summary>Reconstruction token by token (relative error ‖x − x̂‖²/‖x‖², next-token "
                 "loss clean vs spliced)</summary>" + html_table(s["reconstruction"], "sae_tokens", _TOKEN_COLS)
                 + "</details>")
    prof = s["profiles"]
    where = (f"over <b>{esc(s['corpus_name'])}</b>" if prof is not None else
             "(no corpus: the model folder has no heldout.txt; pass <code>--corpus FILE</code>)")
    parts.append(f'<h3>Feature cards</h3><p class="note">The {len(s["cards"])} features with the largest activation '
                 f"on the prompt. Each: its activation over the prompt (orange; the boxed token is its maximum), its "
                 f"top-activating examples {where}, and the centred logit effect of its decoder direction per unit "
                 "activation (<i>raises / lowers</i>).</p>")
    if s["logit_note"]:
        parts.append(f'<p class="note">No logit effects: {esc(s["logit_note"])}</p>')
    eff = s["logit_effects"]
    for f in s["cards"]:
        sh = s["shading"][s["shading"].feature == f]
        vals = sh.activation.tolist()
        body = [f"<p>Max on the prompt <b>{max(vals):.4f}</b> at position {vals.index(max(vals))} "
                f"(<code>{esc(show_token(sh.token.iloc[vals.index(max(vals))]))}</code>).</p>"
                + token_shading(sh.token.tolist(), vals, trigger=vals.index(max(vals)))]
        if prof is not None:
            ex, st = _examples(prof, f)
            h = prof.histogram[prof.histogram.feature == f]
            hist = "" if not len(h) else svg_histogram(  # the activation distribution, as a neuron page shows it
                h["count"].tolist(), [*h.bin_left.tolist(), float(h.bin_right.iloc[-1])],
                title=f"activation over {int(st.n_tokens):,} tokens: mean {st['mean']:.3f}")
            body.append(f'<p class="note">Fires on {st.frac_positive:.2%} of {int(st.n_tokens):,} tokens scanned; '
                        f"max {st['max']:.4f}.</p>" + '<div class="cols"><div>' + neuron_examples(ex, st)
                        + "</div>" + hist + "</div>"
                        + "<details><summary>examples as a table</summary>"
                        + html_table(ex[ex.is_trigger], f"sae_examples_F{f}", _EXAMPLE_COLS) + "</details>")
        if len(eff):
            mine = eff[eff.feature == f]
            acols = ["rank", "token", "token_id", "logit"]
            body.append('<div class="cols"><div><b>Raises</b>'
                        + html_table(mine[mine.direction == "top"], f"sae_raises_F{f}", acols)
                        + "</div><div><b>Lowers</b>"
                        + html_table(mine[mine.direction == "bottom"], f"sae_lowers_F{f}", acols) + "</div></div>")
        near = s.get("similar", pd.DataFrame())
        near = near[near["of"] == f] if len(near) else near
        if len(near):  # as SAE dashboards list them: features whose decoder directions are nearest this one's
            body.append("<p><b>Nearest features</b> (cosine of decoder directions): " + ", ".join(
                (f'<a href="#{card_anchor(int(g))}">{int(g)}</a>' if int(g) in s["cards"] else str(int(g)))
                + f" ({c:+.2f})" for g, c in zip(near.feature, near.cosine)) + "</p>")
        body += _dashboard_parts(s, f)
        parts.append(f'<div class="neuron-page" id="{card_anchor(f)}"><h3>Feature {f}</h3>' + "".join(body) + "</div>")
    return "".join(parts)


def _dashboard_parts(s: dict, f: int) -> list[str]:
    """Correlated features, quantile samples and the ablation effect (``interp.report.sae_cards``) of card ``f``."""
    from interp.report.render import html_table
    from interp.report.sae_cards import (
        ABLATION_NOTE,
        QUANTILE_NOTE,
        ablation_html,
        ablation_table,
        correlated_html,
        quantile_html,
    )

    dash, abl = s.get("dashboard"), s.get("ablation")
    out = []
    if dash is not None:
        out.append(correlated_html(dash.correlated, f, lambda g: card_anchor(g) if g in s["cards"] else None))
        out.append(f'<details open><summary><b>Quantile samples</b></summary><p class="note">{QUANTILE_NOTE}</p>'
                   + quantile_html(dash.bins, dash.samples, f) + "</details>")
    mine = abl[abl.feature == f] if abl is not None and len(abl) else None
    if mine is not None and len(mine):
        out.append(f'<details open><summary><b>Ablation effect</b> (per token)</summary><p class="note">{ABLATION_NOTE}'
                   "</p>" + ablation_html(mine) + "<details><summary>as a table</summary>"
                   + html_table(ablation_table(mine), f"sae_ablation_F{f}") + "</details></details>")
    return out


def sae_markdown(s: dict) -> list[str]:
    """The section as Markdown blocks (the report's ``md_table``)."""
    from interp.report.figures import show_token
    from interp.report.markdown import md_code, md_text
    from interp.report.render import md_table

    rec = s["reconstruction"]
    wide = pd.DataFrame({"position": rec.position, "token": rec.token, "features (activation)": [
        ", ".join(f"{int(f)} ({a:.3f})" for f, a in zip(g.feature, g.activation)) for g in
        (s["per_token"][s["per_token"].position == p] for p in rec.position)]})
    blocks = [f"**Note:** {md_text(s['model_note'])}"] if s.get("model_note") else []
    blocks += [f"SAE on {md_code(s['info']['hook'])}:", md_table(_kv(s["info"])),
              "Reconstruction on this prompt (CE in nats; recovered = (zero − SAE) / (zero − clean)):",
              md_table(_prompt_metrics(s["metrics"])), "Top features at each token:", md_table(wide)]
    prof, eff = s["profiles"], s["logit_effects"]
    if s["logit_note"]:
        blocks.append(f"No logit effects: {md_text(s['logit_note'])}")
    blocks.append(f"Feature cards (the features most active on the prompt); top examples over {md_text(s['corpus_name'])}."
                  if prof is not None else "Feature cards (the features most active on the prompt); no corpus scanned.")
    for f in s["cards"]:
        card = [f"### Feature {f}", ""]
        if len(eff):
            mine = eff[eff.feature == f]
            for label, d in (("Raises", "top"), ("Lowers", "bottom")):
                sel = mine[mine.direction == d]
                card += [f"{label}: " + ", ".join(f"{md_code(show_token(t))} {v:+.3f}" for t, v in zip(sel.token, sel.logit)), ""]
        if prof is not None:
            ex, _ = _examples(prof, f)
            for rank, g in ex.groupby("rank", sort=True):
                card.append(f"{rank}. {float(g[g.is_trigger].activation.iloc[0]):.3f}: {md_code(_marked(g))}")
        card += _dashboard_markdown(s, f)
        blocks.append("\n".join(card))
    return blocks


def _marked(g) -> str:
    """A context's tokens with the trigger marked «like this»."""
    from interp.report.figures import show_token

    return "".join(f"«{show_token(t)}»" if trig else show_token(t) for t, trig in zip(g.token, g.is_trigger))


def _dashboard_markdown(s: dict, f: int) -> list[str]:
    from interp.report.figures import show_token
    from interp.report.markdown import md_code, md_text
    from interp.report.sae_cards import bin_label, correlated_text

    dash, abl, out = s.get("dashboard"), s.get("ablation"), []
    if dash is not None:
        out += ["", "Correlated features: " + (", ".join(correlated_text(dash.correlated, f)) or "none"), "",
                "Quantile samples:"]
        for _, b in dash.bins[dash.bins.feature == f].sort_values("bin").iterrows():
            ex = dash.samples[(dash.samples.feature == f) & (dash.samples.bin == b["bin"])]
            out.append(f"- {md_text(bin_label(b))}: " + "; ".join(md_code(_marked(g)) for _, g in
                                                                   ex.groupby("sample", sort=True)))
    mine = abl[(abl.feature == f) & (abl.activation > 0)] if abl is not None and len(abl) else None
    if mine is not None and len(mine):
        top = mine.dropna(subset=["logprob_change"]).sort_values("logprob_change", key=abs, ascending=False).head(3)
        out += ["", "Ablation (largest next-token log-prob changes on the top contexts): " + "; ".join(
            f"{md_code(show_token(t))} → {md_code(show_token(n))} {c:+.3f}" for t, n, c in
            zip(top.token, top.next_token, top.logprob_change))]
    return out
