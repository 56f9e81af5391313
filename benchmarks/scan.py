"""Neuron top-k scan throughput with 1 and N processes (torchrun), and the scaling efficiency.

    python benchmarks/scan.py                         # CPU: 1 and 2 processes, 1 thread each
    python benchmarks/scan.py --procs 1,2,4 --device cuda   # GPUs: one per process (NCCL)

The shipped model (models/docs-bible-austen-2l) scans its held-out text (models/.../heldout.txt, split into
documents at blank lines) for every neuron's top-10 contexts, exactly as ``interp scan neurons`` does:
``scan_top_contexts`` with windows of ``--seq-len`` tokens, ``--batch-size`` windows per forward pass and
``--shard-docs`` documents per shard. Each configuration runs as ``torchrun --nproc-per-node N`` in a fresh
process group; inside, every rank loads the model, waits at a barrier, scans, waits at a barrier again: the
time between the barriers is the scan (tokenization in the background thread, forward passes, top-k,
collectives), without interpreter start-up and model loading. Every run's merged result is checked against
the 1-process result (same rows, activations equal to 1e-5).

Reported per N: seconds, tokens/s, tokens/s per process, and the scaling efficiency
``tok/s(N) / (N * tok/s(1))``. Writes JSON (device, dtype, shapes, results, ratios) to a new file under
benchmarks/results/ (``--out`` to choose; an existing file is replaced only with ``--force``) and prints a
table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "docs-bible-austen-2l"
CORPUS = ROOT / "models" / MODEL / "heldout.txt"


def device_name(kind: str) -> str:
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def worker(args) -> None:
    """One rank of a torchrun run: scan between two barriers; rank 0 writes the timing and the result."""
    import torch

    import interp
    from interp.analysis.neurons import scan_top_contexts
    from interp.data import Corpus, init_from_env
    from interp.data.distributed import barrier, is_main

    init_from_env()
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if args.device == "cuda" else "cpu"
    model = interp.load(MODEL, device=device).eval()
    corpus = Corpus.from_path(args.corpus, doc_sep="\n\n")
    with torch.no_grad():
        barrier()
        t0 = time.perf_counter()
        df = scan_top_contexts(model, corpus, k=10, batch_size=args.batch_size, seq_len=args.seq_len,
                               overlap=args.overlap, shard_docs=args.shard_docs, progress=False)
        barrier()
        seconds = time.perf_counter() - t0
    if is_main():
        df.to_parquet(Path(args.worker) / "result.parquet")
        (Path(args.worker) / "timing.json").write_text(json.dumps({"seconds": seconds}))


def run(n: int, args, tmp: Path) -> dict:
    folder = tmp / f"n{n}"
    folder.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), __file__,
           "--worker", str(folder), "--device", args.device, "--corpus", str(args.corpus), "--seq-len",
           str(args.seq_len), "--overlap", str(args.overlap), "--batch-size", str(args.batch_size),
           "--shard-docs", str(args.shard_docs), "--threads", str(args.threads)]
    subprocess.run(cmd, env=env, check=True, cwd=ROOT)
    return json.loads((folder / "timing.json").read_text()) | {"result": folder / "result.parquet"}


def markdown_table(result: dict) -> str:
    """RESULTS.md's table: corpus-scan throughput per process count (outputs checked equal across counts)."""
    s = result["shapes"]
    lines = [(f"{result['model']['name']} on {result['device']}; {s['n_tokens']} tokens, windows of {s['seq_len']} "
             f"(overlap {s['overlap']}), {result['threads_per_proc']} thread(s) per process; {result['date']}."), "",
             "| processes | seconds | tokens/s | tokens/s per process | speed-up | efficiency |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        lines.append(f"| {r['procs']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s_per_proc']:.0f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="1,2", help="process counts to run (default 1,2); the first must be 1")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-docs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: a new file in benchmarks/results)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import pandas as pd

    import interp
    from interp.data import Corpus, tokenized
    from interp.io import atomic_write_text

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "results" / f"scan-{args.device}-{stamp}.json"
    if out.exists() and not args.force:
        print(f"{out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    procs = [int(x) for x in args.procs.split(",")]
    if procs[0] != 1:
        print("--procs: the first count must be 1 (the baseline)", file=sys.stderr)
        return 2
    model = interp.load(MODEL)
    n_tokens = sum(len(t) for _, t in tokenized(model, Corpus.from_path(args.corpus, doc_sep="\n\n")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for n in procs:
            r = run(n, args, Path(tmp))
            df = pd.read_parquet(r.pop("result"))
            if base is None:
                base = df
            pd.testing.assert_frame_equal(df, base, check_exact=False, rtol=1e-5, atol=1e-5)
            rows.append({"procs": n, "seconds": r["seconds"], "tokens_per_s": n_tokens / r["seconds"]})
    one = rows[0]["tokens_per_s"]
    for r in rows:
        r["tokens_per_s_per_proc"] = r["tokens_per_s"] / r["procs"]
        r["speedup"] = r["tokens_per_s"] / one
        r["efficiency"] = r["tokens_per_s"] / (r["procs"] * one)
    cfg = model.cfg
    result = {
        "benchmark": "scan", "date": time.strftime("%Y-%m-%d"), "device": device_name(args.device),
        "device_kind": args.device, "threads_per_proc": args.threads, "dtype": cfg.dtype,
        "model": {"name": MODEL, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp,
                  "n_ctx": cfg.n_ctx, "d_vocab": cfg.d_vocab},
        "shapes": {"n_tokens": n_tokens, "seq_len": args.seq_len, "overlap": args.overlap,
                   "batch_size": args.batch_size, "shard_docs": args.shard_docs, "k": 10},
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"{result['device']} ({args.device}), {n_tokens} tokens, {args.threads} thread(s) per process")
    print("| processes | seconds | tokens/s | tokens/s per process | speed-up | efficiency |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['procs']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {r['tokens_per_s_per_proc']:.0f} | "
              f"{r['speedup']:.2f} | {r['efficiency']:.2f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
