"""The report's attribution-graph section (``interp report "..." --transcoders FOLDER|default``).

``collect_circuit_section`` calls the analyzer (``interp.analysis.circuits.attribution_graph``) once on the
prompt's last ``max_tokens`` tokens; ``circuit_html`` / ``circuit_markdown`` only format the graph object it
returns, with ``interp circuit``'s drawing (``interp.report.circuit``); a feature node's hover adds its top
contexts over the report's corpus (``graph_feature_contexts``, a bounded scan). Off by default: a report without
``--transcoders`` has no such section. The section says what pruning removed and what was cut from the prompt.
"""

from __future__ import annotations

import html

__all__ = ["circuit_html", "circuit_markdown", "collect_circuit_section"]

_INTRO = ("Every MLP is replaced by its transcoder (plus an error node: what it misses), attention patterns and "
          "norm scales are frozen on this prompt, and the next-token logits are traced back to features, errors "
          "and token embeddings through direct linear effects (Ameisen et al. 2025).")


def collect_circuit_section(model, tokens, transcoders, folder: str, *, max_tokens: int, node_threshold: float,
                            edge_threshold: float, corpus=None) -> dict:
    """``{"graph", "folder", "note", "contexts"}``: the attribution graph of the last ``max_tokens`` of ``tokens``
    (``[1, pos]``), when the prompt was longer a note saying so, and the feature nodes' top contexts over
    ``corpus`` (``(name, corpus)`` as ``interp.report.inputs.read_corpus`` gives it; None: no contexts)."""
    from interp.analysis.circuits.graph import attribution_graph
    from interp.report.circuit import graph_feature_contexts

    n = int(tokens.shape[1])
    note = None
    if n > max_tokens:
        tokens = tokens[:, -max_tokens:]
        note = f"the graph traces the last {max_tokens} of the prompt's {n} tokens (--max-graph-tokens)"
    graph = attribution_graph(model, transcoders, tokens, node_threshold=node_threshold,
                              edge_threshold=edge_threshold)
    contexts = graph_feature_contexts(model, transcoders, graph, corpus[1]) if corpus is not None else None
    return {"graph": graph, "folder": str(folder), "note": note, "contexts": contexts}


def _logits(graph):
    return graph.nodes[graph.nodes.kind == "logit"][["token", "token_id", "probability", "value", "influence"]]


def circuit_html(s: dict) -> str:
    """The section's HTML body: the summary (scores, what was pruned), the drawing, the feature and logit tables."""
    from interp.report.circuit import GRAPH_CSS, GRAPH_LEGEND, feature_table, graph_summary, graph_svg
    from interp.report.render import html_table

    g, esc = s["graph"], html.escape
    return (f"<style>{GRAPH_CSS}</style>"
            f'<p class="note">{esc(_INTRO)} Transcoders: <code>{esc(s["folder"])}</code>.</p>'
            + (f'<p class="note">Shortened: {esc(s["note"])}.</p>' if s["note"] else "")
            + f'<p class="note">{esc(graph_summary(g))}. {esc(GRAPH_LEGEND)}</p>' + graph_svg(g, s.get("contexts"))
            + "<h3>Features kept, by influence on the logits</h3>"
            + html_table(feature_table(g, s.get("contexts")), "circuit_features")
            + "<h3>Logit nodes</h3>" + html_table(_logits(g), "circuit_logits"))


def circuit_markdown(s: dict) -> list[str]:
    """The section as Markdown blocks (no drawing: the HTML report has it)."""
    from interp.report.circuit import feature_table, graph_summary
    from interp.report.markdown import md_code, md_text
    from interp.report.render import md_table

    g = s["graph"]
    blocks = [md_text(_INTRO) + f" Transcoders: {md_code(s['folder'])}."]
    if s["note"]:
        blocks.append(md_text(f"Shortened: {s['note']}."))
    blocks += [md_text(graph_summary(g)) + ".", "Features kept, by influence on the logits:",
               md_table(feature_table(g, s.get("contexts"))), "Logit nodes:", md_table(_logits(g))]
    return blocks
