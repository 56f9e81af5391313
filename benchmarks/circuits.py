"""Attribution graphs and transcoder training on the shipped model: time and memory.

    python benchmarks/circuits.py                          # lengths 16,32,64,100; writes a NEW file in results/
    python benchmarks/circuits.py --lengths 16,100 --repeats 1 --train-steps 100 --out /tmp/circuits.json

**Graphs**: ``attribution_graph`` of the shipped model with its shipped transcoders (``models/<name>/
transcoders/``, or with ``--transcoders clt`` its cross-layer transcoder ``clt/``) on the first N tokens of ``heldout.txt``, for each N: median wall time over ``--repeats``
runs, and the peak resident memory the graph adds (each length runs in a fresh process: ru_maxrss after the
graph minus after loading; on CUDA, ``max_memory_allocated``), with the node, edge and backward-pass counts.

**Training**: tokens/s of ``train_sae``'s loop on pre-gathered activations of layer 0 (``ln2.hook_normalized``
→ ``hook_mlp_out``), d_sae = 8 × d_model, TopK, batch 1024: a transcoder, a skip transcoder and, in the same
run as the peer, an SAE on the MLP output (the loop without the target). Then every MLP at once: one per-layer
transcoder per layer trained one after the other (tokens/s = tokens / the summed time), against one cross-layer
transcoder over all layers (d_sae and k per layer the same). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forward import _cpu_name, _loadavg  # benchmarks/ is this script's folder

from interp.io import write_benchmark_json


def _setup(model_name, device, transcoders="default"):
    from interp.report.circuit import load_graph_transcoders
    from interp.report.inputs import load_model

    model = load_model(model_name, device=device)
    tcs = load_graph_transcoders(model, transcoders)  # "default" (per layer) or "clt" (the cross-layer one)
    text = (Path(model._interp_folder) / "heldout.txt").read_text()
    return model, tcs, model.to_tokens(text[:20_000])


def _graph_run(args) -> dict:
    model_name, device, n, repeats, batch_size, threads, transcoders = args
    from interp.analysis.circuits.graph import attribution_graph

    if threads:
        torch.set_num_threads(threads)
    model, tcs, toks = _setup(model_name, device, transcoders)
    prompt = toks[:, :n]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = attribution_graph(model, tcs, prompt, batch_size=batch_size)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    n_full = g.scores["n_nodes_full"]
    n_targets = int(n_full - (model.cfg.n_layers + 1) * n)  # features + logits
    return {"tokens": n, "median_s": statistics.median(times), "times_s": times, "peak_mib": round(peak, 1),
            "nodes_full": n_full, "edges_full": g.scores["n_edges_full"], "nodes_kept": len(g.nodes),
            "backward_passes": -(-n_targets // batch_size), "replacement_score": g.scores["replacement_score"],
            "completeness_score": g.scores["completeness_score"]}


def _train_rates(model_name, device, steps: int) -> list[dict]:
    from interp.analysis.sae import train_sae
    from interp.analysis.sae.source import model_activations

    model, _, toks = _setup(model_name, device)
    docs = [toks[0, i : i + 256] for i in range(0, toks.shape[1] - 256, 256)]
    x = model_activations(model, "blocks.0.ln2.hook_normalized", docs)
    y = model_activations(model, "blocks.0.hook_mlp_out", docs)
    d_sae = 8 * model.cfg.d_model
    rows = []
    for kind, kw in (("sae (on mlp_out)", {}), ("transcoder", {"target": y}),
                     ("skip transcoder", {"target": y, "skip": True})):
        src = y if kind.startswith("sae") else x
        sae = train_sae(src, d_sae, "topk", steps=steps, batch_size=1024, progress=False, device=device,
                        log_every=steps, **kw)
        elapsed = float(sae.history.elapsed_s.iloc[-1])
        rows.append({"kind": kind, "steps": steps, "seconds": elapsed, "tokens_per_s": steps * 1024 / elapsed,
                     "fve_train": float(sae.history.fve.iloc[-1])})
    # every MLP replaced: per-layer transcoders (one after another) vs one cross-layer transcoder
    n, d = model.cfg.n_layers, model.cfg.d_model
    ins = [f"blocks.{i}.ln2.hook_normalized" for i in range(n)]
    both = model_activations(model, ins + [f"blocks.{i}.hook_mlp_out" for i in range(n)], docs)
    xs, ys = both[:, : n * d], both[:, n * d :]
    elapsed, fves = 0.0, []
    for i in range(n):
        tc = train_sae(xs[:, i * d : (i + 1) * d], d_sae, "topk", target=ys[:, i * d : (i + 1) * d], steps=steps,
                       batch_size=1024, progress=False, device=device, log_every=steps)
        elapsed += float(tc.history.elapsed_s.iloc[-1])
        fves.append(float(tc.history.fve.iloc[-1]))
    rows.append({"kind": f"per-layer x{n}", "steps": steps, "seconds": elapsed,
                 "tokens_per_s": steps * 1024 / elapsed, "fve_train": statistics.mean(fves)})
    clt = train_sae(xs, d_sae, "topk", target=ys, cross_layer=n, steps=steps, batch_size=1024, progress=False,
                    device=device, log_every=steps)
    elapsed = float(clt.history.elapsed_s.iloc[-1])
    rows.append({"kind": f"cross-layer ({n} layers)", "steps": steps, "seconds": elapsed,
                 "tokens_per_s": steps * 1024 / elapsed, "fve_train": float(clt.history.fve.iloc[-1])})
    return rows


def markdown_table(result: dict) -> str:
    """RESULTS.md's tables (benchmarks/run_all.py): graph time and memory per prompt length, then training rates."""
    lines = [(f"{result['model']} on {result['cpu'] if result['device'] == 'cpu' else result['device']}, "
             f"{result['threads']} threads, {result['batch_size']} targets per backward pass; {result['date']}."), "",
             ("| tokens | seconds (median) | peak MiB | nodes | edges | kept | backward passes | replacement | "
             "completeness |"), "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in result["graphs"]:
        lines.append(f"| {g['tokens']} | {g['median_s']:.2f} | {g['peak_mib']:.0f} | {g['nodes_full']} | "
                     f"{g['edges_full']} | {g['nodes_kept']} | {g['backward_passes']} | "
                     f"{g['replacement_score']:.3f} | {g['completeness_score']:.3f} |")
    train = result.get("training") or []
    cols = [c for c in (train[0] if train else {}) if all(isinstance(t.get(c), (int, float, str)) for t in train)]
    lines += ["", "| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for t in train:
        lines.append("| " + " | ".join(f"{t[c]:.4g}" if isinstance(t[c], float) else str(t[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="docs-bible-austen-2l")
    p.add_argument("--device", default="cpu")
    p.add_argument("--lengths", default="16,32,64,100", help="prompt lengths ('' for training rates only)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="targets per backward pass")
    p.add_argument("--transcoders", default="default",
                   help="graphs through the model folder's per-layer transcoders ('default') or its CLT ('clt')")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(v) for v in args.lengths.split(",") if v]
    ctx = mp.get_context("spawn")  # a fresh process per length: its peak memory is its own
    graphs = []
    for n in lengths:
        with ctx.Pool(1) as pool:
            r = pool.map(_graph_run, [(args.model, args.device, n, args.repeats, args.batch_size, args.threads,
                                       args.transcoders)])[0]
        graphs.append(r)
        print(f"graph {n:4d} tokens: {r['median_s']:7.2f} s (median of {args.repeats})  peak +{r['peak_mib']:7.1f} MiB  "
              f"{r['nodes_full']:5d} nodes / {r['edges_full']:8d} edges -> {r['nodes_kept']:4d} kept  "
              f"{r['backward_passes']:3d} backward passes  replacement {r['replacement_score']:.3f} "
              f"completeness {r['completeness_score']:.3f}", flush=True)
    train = _train_rates(args.model, args.device, args.train_steps) if args.train_steps else []  # 0: graphs only
    for r in train:
        print(f"train {r['kind']:24s} {r['tokens_per_s']:10.0f} tokens/s  ({r['steps']} steps, {r['seconds']:.1f} s, "
              f"train FVE {r['fve_train']:.3f})")
    result = {"benchmark": "circuits", "device": args.device, "cpu": _cpu_name(), "threads": torch.get_num_threads(),
              "model": args.model, "batch_size": args.batch_size, "transcoders": args.transcoders, "graphs": graphs,
              "training": train,
              "loadavg": _loadavg(), "date": time.strftime("%Y-%m-%d")}
    out = write_benchmark_json(result, args.out, f"circuits-{args.device.split(':')[0]}", args.force)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
