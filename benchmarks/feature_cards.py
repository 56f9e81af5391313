"""What the SAE feature cards' dashboard parts cost, on the shipped model, its SAE and its transcoders.

    python benchmarks/feature_cards.py                        # 5 cards, 16 384 corpus tokens; a NEW file in results/
    python benchmarks/feature_cards.py --tokens 4096 --repeats 1 --out /tmp/cards.json

Median wall time over ``--repeats`` of, over the first ``--tokens`` scored tokens of ``heldout.txt`` spread as the
report spreads them: ``feature_profiles`` (the cards' top examples and histogram, what the report already ran),
``feature_dashboard`` (quantile samples and correlated features, one pass), ``feature_ablation_effects`` on each
card's top examples, and the attribution graph's hover contexts (``graph_feature_contexts``, per-layer
transcoders, ``HOVER_TOKENS``) beside the graph itself. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forward import _cpu_name, _loadavg  # benchmarks/ is this script's folder

from interp.io import write_benchmark_json


def _median(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def markdown_table(result: dict) -> str:
    """RESULTS.md's table: each step's median seconds."""
    lines = [(f"Shipped model, its SAE and per-layer transcoders on {result['device']}, {result['threads']} torch "
              f"thread(s); {result['tokens']} corpus tokens, cards {result['cards']}, median of {result['repeats']}; "
              f"{result['date']}."), "", "| step | median s |", "|---|---:|"]
    lines += [f"| {r['step']} | {r['median_s']:.2f} |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16_384, help="corpus tokens scanned (the report's default)")
    p.add_argument("--cards", type=int, default=5, help="features profiled (the report's --sae-cards default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from interp.analysis.circuits.graph import attribution_graph
    from interp.analysis.sae import feature_ablation_effects, feature_dashboard, feature_profiles, load_sae
    from interp.report.circuit import HOVER_TOKENS, graph_feature_contexts, load_graph_transcoders
    from interp.report.inputs import load_model, read_corpus
    from interp.report.sae_section import default_sae_folder

    model = load_model()
    corpus = read_corpus(model, "default")[1]
    sae = load_sae(default_sae_folder(model))
    tcs = load_graph_transcoders(model, "default")
    prompt = "And God said, Let there be light: and there was light."
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(prompt), names_filter=sae.cfg.hook_name)
        peak = sae.encode(cache[sae.cfg.hook_name][0]).max(0).values
    cards = peak.topk(args.cards).indices.tolist()  # as the report picks them: most active on the prompt

    rows = []
    t, prof = _median(lambda: feature_profiles(model, sae, corpus, cards, k=5, max_tokens=args.tokens), args.repeats)
    rows.append(("feature_profiles (top examples, histogram)", t))
    t, _ = _median(lambda: feature_dashboard(model, sae, corpus, cards, n_bins=4, per_bin=2, k_top=2,
                                             k_correlated=5, max_tokens=args.tokens), args.repeats)
    rows.append(("feature_dashboard (quantile samples, correlations)", t))
    contexts = {f: [g.token_id.tolist() for _, g in prof.examples[prof.examples.feature == f].groupby("rank")]
                for f in cards}
    t, _ = _median(lambda: [feature_ablation_effects(model, sae, contexts[f], f) for f in cards], args.repeats)
    rows.append((f"feature_ablation_effects ({args.cards} cards x 5 top examples)", t))
    t, graph = _median(lambda: attribution_graph(model, tcs, prompt), args.repeats)
    rows.append(("attribution_graph (the prompt, per-layer transcoders)", t))
    t, _ = _median(lambda: graph_feature_contexts(model, tcs, graph, corpus), args.repeats)
    n_feats = int((graph.nodes.kind == "feature").sum())
    rows.append((f"graph_feature_contexts ({n_feats} feature nodes, {HOVER_TOKENS} tokens)", t))

    print(f"{'step':<66} {'median s':>9}")
    for name, t in rows:
        print(f"{name:<66} {t:>9.2f}")
    result = {"benchmark": "feature_cards", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": f"cpu ({_cpu_name()})", "threads": torch.get_num_threads(),
              "loadavg": _loadavg(), "tokens": args.tokens, "cards": cards, "repeats": args.repeats,
              "rows": [{"step": name, "median_s": round(t, 4)} for name, t in rows]}
    out = write_benchmark_json(result, args.out, "feature_cards", args.force)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
