"""Activation patching sweeps: interp's batched engine vs transformer_lens.patching on the same model.

    python benchmarks/patching.py                  # 12-layer GPT-2-small shape, 64 tokens, CPU
    python benchmarks/patching.py --tokens 32 --layers 4 --out /tmp/p.json

One GPT-2-small-shaped ``HookedDecoder`` (d_model 768, 12 heads, d_mlp 3072, vocab 50257, learned positions,
gelu_new) with random weights; a random clean prompt and a corrupted copy with a few tokens changed; the
metric is the logit difference of two tokens at the last position. Two sweeps, each run by both:

* ``resid_pre``: every layer × position (``get_act_patch_resid_pre``: one forward per cell);
* ``heads``: every layer × head, ``hook_z`` at all positions (``get_act_patch_attn_head_out_all_pos``).

``interp`` is ``interp.analysis.causal.activation_patching``: k patched copies per forward pass, each pass
started at its lowest patched layer and position from the corrupted run's residual stream and KV cache,
unembedding only the metric's position. Reported: wall seconds (fastest of ``--repeats``), the speed-up,
and the largest |difference| between the two tables. Writes JSON to a new timestamped file in
benchmarks/results/ (``--out`` is never overwritten without ``--force``) and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def build(layers: int, tokens: int, vocab: int, device: str) -> HookedDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(d_vocab=vocab, n_ctx=max(tokens, 64), d_model=768, n_layers=layers, n_heads=12,
                        positional="learned", act="gelu_new")
    return HookedDecoder(cfg).to(device).eval()


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--sweeps", default="resid_pre,heads")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--repeats", type=int, default=1, help="runs per contender (fastest is kept)")
    p.add_argument("--batch-size", type=int, default=None, help="interp: patched copies per pass (default: budget)")
    p.add_argument("--tl-cells", type=int, default=None,
                   help="run TransformerLens on this many randomly chosen cells only (its cost is one forward per "
                        "cell, so its full-sweep time is extrapolated linearly); equality is checked on them")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: a new benchmarks/results/patching-<device>-<time>.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    if args.out is not None and args.out.exists() and not args.force:  # refuse before the long run, not after
        p.error(f"--out: {str(args.out)!r} already exists; pass --force to overwrite it.")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sweeps = [s for s in args.sweeps.split(",") if s]
    if set(sweeps) - set(SWEEPS):
        p.error(f"--sweeps must be a comma list of {list(SWEEPS)}; given {args.sweeps!r}")

    from transformer_lens import patching

    model = build(args.layers, args.tokens, args.vocab, args.device)
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
    import transformer_lens.tools.analysis._model_state  # noqa: F401  (TL imports it on its first sweep: ~10 s)
    rows = []
    for name in sweeps:
        where, opts, tl_name, setter, act, order = SWEEPS[name]
        t_ours, df = timed(partial(activation_patching, model, clean, corrupted, answer=answer, wrong=wrong,
                                   where=where, batch_size=args.batch_size, bootstrap=0, **opts), args.repeats)
        df = df.sort_values(order).reset_index(drop=True)
        n_cells = len(df)
        if args.tl_cells is None or args.tl_cells >= n_cells:
            rows_tl = df
            t_tl, ref = timed(partial(getattr(patching, tl_name), model, corrupted, clean_cache, metric), args.repeats)
        else:  # TL's generic sweep over an index_df of sampled cells (one forward each, as in the full sweep)
            rows_tl = df.sample(args.tl_cells, random_state=0).sort_index()
            index_df = rows_tl[order].rename(columns={"position": "pos"}).reset_index(drop=True)
            t_tl, ref = timed(partial(patching.generic_activation_patch, model, corrupted, clean_cache, metric,
                                      getattr(patching, setter), act, index_df=index_df), args.repeats)
        ref = ref.double().cpu().reshape(-1)
        diff = float((torch.tensor(rows_tl.effect.to_numpy()) - ref).abs().max())
        t_tl_full = t_tl * n_cells / len(rows_tl)
        rows.append({"sweep": name, "cells": n_cells, "tl_cells_run": len(rows_tl), "tl_seconds": t_tl,
                     "tl_seconds_full_sweep": t_tl_full, "interp_seconds": t_ours, "speedup": t_tl_full / t_ours,
                     "max_abs_diff": diff, "metric_scale": float(ref.abs().max()),
                     "copies_per_pass": int(df.attrs["copies_per_pass"])})
        r = rows[-1]
        print(f"{name:<10} cells {n_cells:>5}  TL {t_tl_full:8.2f}s ({len(rows_tl)} cells run)  interp "
              f"{t_ours:7.2f}s  x{r['speedup']:5.1f}  max|diff| {diff:.1e}  (k={r['copies_per_pass']})", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    result = {"device": device, "dtype": "float32", "torch": torch.__version__, "layers": args.layers,
              "d_model": 768, "heads": 12, "vocab": args.vocab, "tokens": args.tokens, "batch": 1,
              "date": stamp, "rows": rows}
    out = write_benchmark_json(result, args.out, f"patching-{str(args.device).split(':')[0]}", args.force)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
