"""Greedy generation: interp's KV-cached ``model.generate`` vs `transformers`' ``generate`` vs TransformerLens' bridge.

The same randomly initialised GPT-2-small-shaped weights (``--layers`` blocks; built offline by
``benchmarks/forward.py``'s ``build_models``) continue the same random prompt greedily for ``--new`` tokens
(``stop_at_eos`` off, so every implementation does the same number of steps). For each implementation it reports
the median wall and CPU time, new tokens per second, and how many of the new tokens equal `transformers`' own
greedy output (the reference: ``agree`` = leading tokens in agreement, for every row of the batch).

Usage (from the repository root)::

    .venv/bin/python benchmarks/generate.py                        # CPU: 2 layers, prompt 32, 32 new tokens
    .venv/bin/python benchmarks/generate.py --layers 12 --device cuda --prompt 128 --new 128

Writes a new JSON file (``--out``; default ``benchmarks/results/generate-<device>-<UTC time>.json``; an existing
file is replaced only with ``--force``) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward import ROOT, _cpu_name, _loadavg, build_models, time_call

from interp.io import atomic_write_text


def agreement(out: torch.Tensor, ref: torch.Tensor, n_prompt: int) -> int:
    """Leading new tokens on which ``out`` equals ``ref`` in every row."""
    same = (out[:, n_prompt:] == ref[:, n_prompt:]).all(0).long()
    return int(same.cumprod(0).sum())


def run(args) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        m = build_models(args.layers, args.prompt + args.new, device, torch.float32, not args.no_bridge, Path(tmp))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, m.ours.cfg.d_vocab, (args.batch, args.prompt), generator=gen).to(device)
    n = args.new
    common = {"max_new_tokens": n, "do_sample": False, "stop_at_eos": False, "verbose": False}
    impls = [
        ("transformers generate (sdpa, KV cache)", lambda: m.hf_sdpa.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=0)),
        ("interp model.generate (KV cache)", lambda: m.ours.generate(prompt, **common)),
        ("interp model.generate (no cache)", lambda: m.ours.generate(prompt, use_past_kv_cache=False, **common)),
    ]
    if m.bridge is not None:
        impls.append(("TL bridge generate (KV cache)", lambda: m.bridge.generate(prompt, return_type="tokens", **common)))
    rows, ref = [], None
    with torch.inference_mode():
        for name, fn in impls:
            out = fn()  # warm-up, and the tokens compared
            ref = out if ref is None else ref
            times = [time_call(fn, device) for _ in range(args.repeats)]
            wall = statistics.median(t[0] for t in times)
            rows.append({"impl": name, "median_s": wall, "min_s": min(t[0] for t in times),
                         "median_cpu_s": statistics.median(t[1] for t in times),
                         "new_tokens_per_s": args.batch * n / wall, "agree": agreement(out, ref, args.prompt)})
    base = rows[0]["median_s"]
    for r in rows:
        r["time_vs_transformers"] = r["median_s"] / base
    return {
        "benchmark": "generate", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "dtype": "float32", "threads": args.threads, "loadavg": _loadavg(), "repeats": args.repeats,
        "shape": {"n_layers": args.layers, "d_model": m.ours.cfg.d_model, "d_vocab": m.ours.cfg.d_vocab,
                  "batch": args.batch, "prompt": args.prompt, "new_tokens": n},
        "bridge_error": m.bridge_error, "results": rows,
    }


def markdown_table(result: dict) -> str:
    lines = ["| implementation | wall s (median) | CPU s | new tok/s | time vs transformers | tokens equal to transformers |",
             "|---|---:|---:|---:|---:|---:|"]
    n = result["shape"]["new_tokens"]
    lines += [f"| {r['impl']} | {r['median_s']:.3f} | {r['median_cpu_s']:.3f} | {r['new_tokens_per_s']:.1f} | "
              f"{r['time_vs_transformers']:.2f} | {r['agree']}/{n} |" for r in result["results"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    p.add_argument("--new", type=int, default=32, help="new tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bridge", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    for name in ("layers", "batch", "prompt", "new", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "benchmarks" / "results" / f"generate-{args.device}-{stamp}.json"
    if out.exists() and not args.force:
        p.error(f"{out} exists; pass --force to replace it, or choose another --out")
    result = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"generate — {result['device_name']}, {result['shape']}, median of {result['repeats']} -> {out}")
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
