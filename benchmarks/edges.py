"""Edge attribution (EAP, EAP-IG) over every edge vs exact edge patching, on the same model and prompt pair.

    python benchmarks/edges.py                            # the shipped model (2 layers), an induction pair
    python benchmarks/edges.py --model random --layers 4  # a random GPT-2-shaped model (d_model 256, 8 heads)
    python benchmarks/edges.py --exact-edges 200          # exact patching on 200 sampled edges, extrapolated

The pair is ``interp.analysis.causal.repeated_text_pair``: a prompt followed by its own first half, and the
same with one token of the first copy replaced, so an induction circuit decides the logit difference at the
last position. Contenders:

* ``eap``: ``edge_attribution(method="eap")`` — two forwards and one backward for every edge at once;
* ``eap-ig``: ``method="eap-ig"`` with ``--steps`` interpolation points (one batched backward per
  ``--batch-size`` points);
* ``exact``: ``edge_patching`` — one patched copy of the clean run per edge, ``--batch-size`` copies per
  forward pass, each pass started at the first layer its edges reach (all edges, or ``--exact-edges``
  sampled ones, its time extrapolated linearly to every edge).

Reported: wall seconds (median of ``--repeats`` runs, the contenders interleaved: eap, eap-ig, exact, eap, ...;
``benchmarks/machine.py``), the speed-up over exact patching, and the Pearson and
Spearman correlations of each estimate with the exact per-edge change. JSON goes to a new timestamped file in
benchmarks/results/ (``--out`` is never overwritten without ``--force``).
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from machine import interleaved  # benchmarks/ is this script's folder

from interp.analysis.causal import repeated_text_pair
from interp.analysis.circuits.edges import edge_attribution, edge_graph, edge_patching
from interp.io import write_benchmark_json


def build(args):
    if args.model == "random":
        from interp.model.config import DecoderConfig
        from interp.model.transformer import HookedDecoder

        torch.manual_seed(0)
        cfg = DecoderConfig(d_vocab=args.vocab, n_ctx=128, d_model=args.d_model, n_layers=args.layers,
                            n_heads=args.heads, positional="learned", act="gelu_new", init_std=0.05)
        return HookedDecoder(cfg).to(args.device).eval()
    import interp

    return interp.load(args.model, device=args.device).eval()


def markdown_table(result: dict) -> str:
    """RESULTS.md's table: each method's time, speed-up over exact edge patching, and agreement with it."""
    extrapolated = result["exact_edges_run"] < result["edges"]
    lines = [f"{result['model']} ({result['layers']} layers, d_model {result['d_model']}, {result['heads']} heads), "
             f"{result['positions']} positions, {result['edges']} edges; exact patching on "
             f"{result['exact_edges_run']} edges" + (" (its time extrapolated to all)" if extrapolated else
                                                      " (all of them, nothing extrapolated)")
             + f"; EAP-IG {result['steps']} steps; {result['device']}; {result['date']}.", "",
             "| method | seconds | speed-up vs exact | Pearson vs exact | Spearman vs exact |",
             "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['seconds']:.3g} | {r['speedup_vs_exact']:.1f}× | {r['pearson']:.3f} | "
                     f"{r['spearman']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="docs-bible-austen-2l", help="a shipped model name, a folder, or 'random'")
    p.add_argument("--layers", type=int, default=4, help="random model: layers")
    p.add_argument("--d-model", type=int, default=256, help="random model: width")
    p.add_argument("--heads", type=int, default=8, help="random model: heads")
    p.add_argument("--vocab", type=int, default=4096, help="random model: vocabulary")
    p.add_argument("--tokens", type=int, default=16, help="prompt length before the repeat")
    p.add_argument("--steps", type=int, default=16, help="EAP-IG interpolation points")
    p.add_argument("--exact-edges", type=int, default=None, help="exact patching on this many sampled edges")
    p.add_argument("--batch-size", type=int, default=None, help="copies per pass (default: the analyzer's)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--repeats", type=int, default=1, help="interleaved runs per contender (median is kept)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: a new benchmarks/results/edges-<device>-<time>.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    if args.out is not None and args.out.exists() and not args.force:  # refuse before the long run, not after
        p.error(f"--out: {str(args.out)!r} already exists; pass --force to overwrite it.")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    model = build(args)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, model.cfg.d_vocab, (args.tokens,), generator=g)
    pair = repeated_text_pair(model, prompt)
    clean, corrupted = pair.clean.to(args.device), pair.corrupted.to(args.device)
    kw = {"answer": pair.answer, "wrong": pair.wrong, "batch_size": args.batch_size}
    graph = edge_graph(model)
    n_edges = graph.n_edges
    with torch.no_grad():
        model(clean)  # warm-up

    edges = graph.edges()
    if args.exact_edges is not None and args.exact_edges < n_edges:
        edges = edges.sample(args.exact_edges, random_state=0)
    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else None
    medians, _, outputs = interleaved({
        "eap": lambda: edge_attribution(model, clean, corrupted, method="eap", **kw),
        "eap-ig": lambda: edge_attribution(model, clean, corrupted, method="eap-ig", steps=args.steps, **kw),
        "exact": lambda: edge_patching(model, clean, corrupted, edges=edges, **kw)}, args.repeats, sync)
    (t_eap, t_ig, t_exact), (eap, ig, exact) = medians.values(), outputs.values()
    t_exact_full = t_exact * n_edges / max(len(edges), 1)

    key = ["sender", "receiver"]
    rows = []
    for name, t, df in (("eap", t_eap, eap), ("eap-ig", t_ig, ig), ("exact", t_exact_full, exact)):
        both = exact[key + ["exact"]].merge(df[key + (["score"] if "score" in df else [])], on=key)
        est = both.score if "score" in both else both.exact
        rows.append({"method": name, "seconds": t, "speedup_vs_exact": t_exact_full / t,
                     "pearson": float(est.corr(both.exact)),
                     "spearman": float(est.corr(both.exact, method="spearman"))})
        r = rows[-1]
        print(f"{name:<7} {t:9.3f}s  x{r['speedup_vs_exact']:8.1f}  pearson {r['pearson']:.3f}  "
              f"spearman {r['spearman']:.3f}", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    cfg = model.cfg
    result = {"device": device, "dtype": str(cfg.dtype), "torch": torch.__version__, "model": args.model,
              "layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads, "positions": clean.shape[1],
              "edges": n_edges, "exact_edges_run": len(edges), "steps": args.steps, "date": stamp,
              "clean_metric": eap.attrs["clean"], "corrupted_metric": eap.attrs["corrupted"], "rows": rows}
    print(f"{cfg.n_layers} layers x {cfg.n_heads} heads, {clean.shape[1]} positions, {n_edges} edges "
          f"(exact on {len(edges)}); clean {eap.attrs['clean']:.3f}, corrupted {eap.attrs['corrupted']:.3f}")
    out = write_benchmark_json(result, args.out, f"edges-{str(args.device).split(':')[0]}", args.force)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
