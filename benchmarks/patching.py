"""Activation patching sweeps: interp's batched engine vs transformer_lens.patching on the same model.

    python benchmarks/patching.py                  # 12-layer GPT-2-small shape, 64 tokens, CPU
    python benchmarks/patching.py --tokens 32 --layers 4 --out /tmp/p.json
    python benchmarks/patching.py --layers 2 --tokens 8 --d-model 64 --heads 4 --vocab 100   # toy size

One GPT-2-small-shaped ``HookedDecoder`` (d_model 768, 12 heads, d_mlp 3072, vocab 50257, learned positions,
gelu_new) with random weights; a random clean prompt and a corrupted copy with a few tokens changed; the
metric is the logit difference of two tokens at the last position. Two sweeps, each run by both:

* ``resid_pre``: every layer × position (``get_act_patch_resid_pre``: one forward per cell);
* ``heads``: every layer × head, ``hook_z`` at all positions (``get_act_patch_attn_head_out_all_pos``).

``interp`` is ``interp.analysis.causal.activation_patching``: k patched copies per forward pass, each pass
started at its lowest patched layer and position from the corrupted run's residual stream and KV cache,
unembedding only the metric's position. Reported: wall seconds (median of ``--repeats`` runs, the two
contenders interleaved), the speed-up, the largest |difference| between the two tables, and the **bound**: the
least work any exact patching engine must redo. A cell patched at layer l and position p must recompute layers
l..L-1 at positions p..n-1 (per-head cells: every position), so with T the time of one forward through the
blocks (no unembedding), an engine that recomputes exactly that and nothing more takes
T * sum over cells of (L-l)/L * (n-p)/n, one cell at a time. "of bound" is interp's time over that figure
(below 1.0: batching the patched copies beats even recomputing exactly the necessary part cell by cell);
the cost model is linear in layers x positions, so it slightly flatters late positions, whose queries attend
to more keys. Load averages before and after are recorded and a busy machine marks the result contended. Writes JSON to a new timestamped file in
benchmarks/results/ (``--out`` is never overwritten without ``--force``) and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import contention_note, contention_record, interleaved, machine_state

from interp.analysis.causal import activation_patching, logit_diff
from interp.io import write_benchmark_json
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

# name -> (our where, our options, TL sweep, TL patch setter, TL activation, our columns in TL's axis order)
SWEEPS = {
    "resid_pre": ("resid_pre", {}, "get_act_patch_resid_pre", "layer_pos_patch_setter", "resid_pre",
                  ["layer", "position"]),
    "heads": ("z", {"by_position": False}, "get_act_patch_attn_head_out_all_pos", "layer_head_vector_patch_setter",
              "z", ["layer", "head"]),
}


def build(layers: int, tokens: int, vocab: int, device: str, d_model: int = 768, heads: int = 12) -> HookedDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(d_vocab=vocab, n_ctx=max(tokens, 64), d_model=d_model, n_layers=layers, n_heads=heads,
                        positional="learned", act="gelu_new")
    return HookedDecoder(cfg).to(device).eval()


def cell_fractions(df, layers: int, tokens: int):
    """Each cell's share of one forward through the blocks that exact patching must redo (see the docstring)."""
    later_layers = (layers - df["layer"].to_numpy()) / layers
    if "position" not in df:
        return later_layers
    return later_layers * (tokens - df["position"].to_numpy()) / tokens


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def markdown_table(result: dict) -> str:
    """The RESULTS.md table for one run (``run_all.py`` regenerates it from the JSON)."""
    caption = (f"`{result['command']}` — {result['device']}, {result['dtype']}, {result['layers']} layers, "
               f"d_model {result['d_model']}, {result['heads']} heads, vocab {result['vocab']}, {result['tokens']} "
               f"tokens, median of {result['repeats']} interleaved runs, {result['date']}. "
               f"{contention_note(result)}.")
    header = ("| sweep | cells | TL (s) | interp (s) | speed-up | bound (s) | interp of bound | TL of bound "
              "| max abs diff (metric scale) |")
    lines = [caption, "", header, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        tl = f"{r['tl_seconds_full_sweep']:.3g}"
        if r["tl_cells_run"] < r["cells"]:
            tl += f" (extrapolated from {r['tl_cells_run']} cells)"
        lines.append(f"| {r['sweep']} | {r['cells']} | {tl} | {r['interp_seconds']:.3g} | {r['speedup']:.1f}× | "
                     f"{r['bound_seconds']:.3g} | {r['interp_of_bound']:.2f}× | {r['tl_of_bound']:.1f}× | "
                     f"{r['max_abs_diff']:.1e} ({r['metric_scale']:.2g}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--sweeps", default="resid_pre,heads")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per contender (the median is kept)")
    p.add_argument("--batch-size", type=int, default=None, help="interp: patched copies per pass (default: budget)")
    p.add_argument("--tl-cells", type=int, default=None,
                   help="run TransformerLens on this many randomly chosen cells only and extrapolate its full-sweep "
                        "time linearly (the table says so on that row); default: TL runs the full sweep")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: a new benchmarks/results/patching-<device>-<time>.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    if args.out is not None and args.out.exists() and not args.force:  # refuse before the long run, not after
        p.error(f"--out: {str(args.out)!r} already exists; pass --force to overwrite it.")
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1; given {args.repeats}")
    if args.d_model % args.heads:
        p.error(f"--d-model ({args.d_model}) must be a multiple of --heads ({args.heads})")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sweeps = [s for s in args.sweeps.split(",") if s]
    if set(sweeps) - set(SWEEPS):
        p.error(f"--sweeps must be a comma list of {list(SWEEPS)}; given {args.sweeps!r}")

    from transformer_lens import patching

    before = machine_state()
    model = build(args.layers, args.tokens, args.vocab, args.device, args.d_model, args.heads)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, args.vocab, (1, args.tokens), generator=g).to(args.device)
    corrupted = clean.clone()
    corrupted[0, [1, args.tokens // 2]] = torch.randint(0, args.vocab, (2,), generator=g).to(args.device)
    answer, wrong = 11, 22

    def metric(logits):
        return logit_diff(logits, torch.tensor([answer]), torch.tensor([wrong])).mean()

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        model(clean[:, :8])  # warm-up
        # one forward through the blocks only: the unit of the bound (patching never needs the full unembedding)
        t_blocks = interleaved({"blocks": lambda: model(corrupted, stop_at_layer=args.layers)},
                               args.repeats, _sync)[0]["blocks"]
    import transformer_lens.tools.analysis._model_state  # noqa: F401  (TL imports it on its first sweep: ~10 s)
    rows = []
    for name in sweeps:
        where, opts, tl_name, setter, act, order = SWEEPS[name]
        ours = partial(activation_patching, model, clean, corrupted, answer=answer, wrong=wrong, where=where,
                       batch_size=args.batch_size, bootstrap=0, **opts)
        n_cells = args.layers * (args.tokens if name == "resid_pre" else args.heads)
        if args.tl_cells is None or args.tl_cells >= n_cells:
            tl_run = partial(getattr(patching, tl_name), model, corrupted, clean_cache, metric)
            tl_cells = None
        else:  # TL's generic sweep over an index_df of sampled cells (one forward each, as in the full sweep)
            tl_cells = ours().sort_values(order).reset_index(drop=True).sample(args.tl_cells, random_state=0)
            index_df = tl_cells.sort_index()[order].rename(columns={"position": "pos"}).reset_index(drop=True)
            tl_run = partial(patching.generic_activation_patch, model, corrupted, clean_cache, metric,
                             getattr(patching, setter), act, index_df=index_df)
        medians, samples, outputs = interleaved({"tl": tl_run, "interp": ours}, args.repeats, _sync)
        df = outputs["interp"].sort_values(order).reset_index(drop=True)
        rows_tl = df if tl_cells is None else df.loc[tl_cells.sort_index().index]
        ref = outputs["tl"].double().cpu().reshape(-1)
        diff = float((torch.tensor(rows_tl.effect.to_numpy()) - ref).abs().max())
        t_tl, t_ours = medians["tl"], medians["interp"]
        t_tl_full = t_tl * n_cells / len(rows_tl)
        bound = t_blocks * float(cell_fractions(df, args.layers, args.tokens).sum())
        rows.append({"sweep": name, "cells": n_cells, "tl_cells_run": len(rows_tl), "tl_seconds": t_tl,
                     "tl_seconds_full_sweep": t_tl_full, "interp_seconds": t_ours, "speedup": t_tl_full / t_ours,
                     "tl_samples": samples["tl"], "interp_samples": samples["interp"],
                     "forward_blocks_seconds": t_blocks, "bound_seconds": bound,
                     "interp_of_bound": t_ours / bound, "tl_of_bound": t_tl_full / bound,
                     "max_abs_diff": diff, "metric_scale": float(ref.abs().max()),
                     "copies_per_pass": int(df.attrs["copies_per_pass"])})
        r = rows[-1]
        print(f"{name:<10} cells {n_cells:>5}  TL {t_tl_full:8.2f}s ({len(rows_tl)} cells run)  interp "
              f"{t_ours:7.2f}s  x{r['speedup']:5.1f}  bound {bound:7.2f}s (interp {r['interp_of_bound']:.2f}x of it)"
              f"  max|diff| {diff:.1e}  (k={r['copies_per_pass']})", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    result = {"benchmark": "patching", "device": device, "dtype": "float32", "torch": torch.__version__,
              "layers": args.layers, "d_model": args.d_model, "heads": args.heads, "vocab": args.vocab,
              "tokens": args.tokens, "batch": 1, "repeats": args.repeats, "date": stamp,
              "command": "python benchmarks/patching.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **contention_record(before, machine_state()), "rows": rows}
    out = write_benchmark_json(result, args.out, f"patching-{str(args.device).split(':')[0]}", args.force)
    print(markdown_table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
