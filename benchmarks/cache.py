"""run_with_cache with every hook: interp (lazy patterns) vs TransformerLens' TransformerBridge.

    python benchmarks/cache.py                       # sizes 1k/2k/4k/8k, capped on the CPU (see --max-*)
    python benchmarks/cache.py --sizes 1024,2048  # writes benchmarks/results/cache-{cuda,cpu}.json

One 12-layer GPT-2-small-shaped model (d_model 768, 12 heads, d_mlp 3072, vocab 50257) with random weights,
built from a `transformers` GPT2Config: the bridge is booted offline from a save_pretrained folder with
``hf_model=``, and ours is loaded from the same object (``interp.load(hf_model)``), so both run the same
weights. Contenders, all caching every hook point under ``torch.no_grad()``:

* ``interp``        — ``run_with_lazy_cache`` (what ``HookedDecoder.run_with_cache`` runs): attention fused,
                      patterns and scores kept as q/k/lse and built when read.
* ``interp+read``   — the same, then every layer's pattern and scores read (materialised).
* ``interp-eager``  — TransformerLens' plain ``run_with_cache`` on our model: every layer eager.
* ``bridge``        — ``TransformerBridge.run_with_cache`` (HF eager attention, as the bridge forces).

Each measurement runs in a fresh process. Reported: wall time of the call, peak memory above the
pre-call baseline (CPU: resident set sampled every 2 ms from /proc; CUDA: torch's peak allocated), and the
bytes the cache holds (unique storages). Before timing, a 128-token check asserts that interp's lazy
patterns equal the bridge's (max abs diff printed). Writes JSON atomically and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from interp.io import write_benchmark_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMPLS = ("interp", "interp+read", "interp-eager", "bridge")


# --- model construction -----------------------------------------------------------------------------------


def hf_gpt2(n_ctx: int, layers: int, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_embd=768, n_head=12, n_positions=n_ctx, vocab_size=vocab)
    return GPT2LMHeadModel(cfg).eval()


def build(impl: str, n_ctx: int, layers: int, vocab: int, device: str):
    hf = hf_gpt2(n_ctx, layers, vocab)
    if impl == "bridge":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformer_lens.model_bridge import TransformerBridge

        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder)
            return TransformerBridge.boot_transformers(folder, hf_model=hf.to(device), device=device)
    import interp

    model = interp.load(hf).to(device)
    del hf
    return model


def run_cache(impl: str, model, toks):
    if impl == "bridge":
        return model.run_with_cache(toks)
    if impl == "interp-eager":
        from transformer_lens.HookedRootModule import HookedRootModule

        return HookedRootModule.run_with_cache(model, toks, attn_backend="eager")
    from interp.model.lazy_pattern import run_with_lazy_cache

    out, cache = run_with_lazy_cache(model, toks)
    if impl == "interp+read":
        for name in list(cache.keys()):
            if name.endswith(("hook_pattern", "hook_attn_scores")):
                cache[name]
    return out, cache


def cache_tensors(cache) -> list[torch.Tensor]:
    mapping = getattr(cache, "cache_dict", cache)
    if hasattr(mapping, "stored_tensors"):  # lazy: what it holds, without building patterns
        return mapping.stored_tensors()
    return [v for v in mapping.values() if isinstance(v, torch.Tensor)]


def unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


# --- memory measurement -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set every 2 ms while active (ru_maxrss would also count model construction)."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return False


def worker(impl: str, n: int, layers: int, vocab: int, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build(impl, n, layers, vocab, device)
    toks = torch.randint(0, vocab, (1, n), device=device)
    with torch.no_grad():
        run_cache(impl, model, toks[:, :64])  # warm-up: first-call allocations, kernel selection
    times, peaks = [], []
    for _ in range(repeats):
        cache = None
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with torch.no_grad(), PeakRSS() as rss:
            t = time.perf_counter()
            _, cache = run_cache(impl, model, toks)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        if device == "cuda":
            peaks.append(torch.cuda.max_memory_allocated() - base)
        else:
            peaks.append(rss.peak - rss.base)
        stored = unique_bytes(cache_tensors(cache))
    # median call (issue 25: medians, with the machine's load recorded beside them), largest peak
    return {"impl": impl, "tokens": n, "seconds": statistics.median(times), "peak_mb": max(peaks) / 2**20,
            "cache_mb": stored / 2**20, "entries": len(cache), "repeats": repeats}


def check_patterns_agree(layers: int, vocab: int, device: str) -> float:
    """interp's lazy patterns vs the bridge's eager ones on the same weights (128 tokens)."""
    from interp.model.lazy_pattern import run_with_lazy_cache

    n = 128
    ours = build("interp", n, layers, vocab, device)
    bridge = build("bridge", n, layers, vocab, device)
    toks = torch.randint(0, vocab, (1, n), device=device, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, a = run_with_lazy_cache(ours, toks, names_filter=lambda name: name.endswith("hook_pattern"))
        _, b = bridge.run_with_cache(toks, names_filter=lambda name: name.endswith("attn.hook_pattern"))
    return max((a[f"blocks.{i}.attn.hook_pattern"] - b[f"blocks.{i}.attn.hook_pattern"]).abs().max().item()
               for i in range(layers))


# --- driver -------------------------------------------------------------------------------------------------


def spawn(impl, n, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, str(n), "--layers", str(args.layers),
           "--vocab", str(args.vocab), "--device", args.device, "--repeats", str(args.repeats)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    if res.returncode != 0:
        return {"impl": impl, "tokens": n, "error": (res.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(result: dict) -> str:
    diff = result["pattern_check_max_abs_diff"]
    lines = [(f"device: {result['device']}; {result['layers']}-layer GPT-2-small shape; "
              f"lazy-vs-bridge pattern max |diff| at 128 tokens: {diff:.2e}"),
             f"{'impl':<14}{'tokens':>7}{'seconds':>10}{'peak MB':>11}{'cache MB':>11}  note"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['impl']:<14}{r['tokens']:>7}{'-':>10}{'-':>11}{'-':>11}  {r['error']}")
        elif r.get("skipped"):
            lines.append(f"{r['impl']:<14}{r['tokens']:>7}{'-':>10}{'-':>11}{'-':>11}  {r['skipped']}")
        else:
            lines.append(f"{r['impl']:<14}{r['tokens']:>7}{r['seconds']:>10.2f}{r['peak_mb']:>11.0f}"
                         f"{r['cache_mb']:>11.0f}")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """RESULTS.md's table: per length, each contender's time, peak memory and cache size, memory vs the bridge."""
    bridge = {r["tokens"]: r for r in result["rows"] if r["impl"] == "bridge" and "peak_mb" in r}
    lines = [(f"{result['device']}, torch {result['torch']}; {result['layers']}-layer GPT-2-small shape (vocab "
             f"{result['vocab']}); every hook cached; lazy-vs-bridge pattern max |diff| at 128 tokens "
             f"{result['pattern_check_max_abs_diff']:.1e}. Time: median call; peak: memory above the pre-call "
             "baseline."), "",
             "| tokens | contender | seconds | peak MiB | cache MiB | peak vs bridge | note |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        if "peak_mb" not in r:
            why = r.get("skipped") or r.get("error")
            lines.append(f"| {r['tokens']} | {r['impl']} | – | – | – | – | {why} |")
            continue
        b = bridge.get(r["tokens"])
        vs = f"{r['peak_mb'] / b['peak_mb']:.2f}" if b and b["peak_mb"] > 0 else "–"
        lines.append(f"| {r['tokens']} | {r['impl']} | {r['seconds']:.2f} | {r['peak_mb']:.1f} | {r['cache_mb']:.1f} | "
                     f"{vs} | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,2048,4096,8192")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    # CPU caps: materialised patterns need layers*heads*n^2*4 bytes twice (scores and pattern): ~19 GB at 4k.
    p.add_argument("--max-eager-tokens", type=int, default=8192 if cuda else 2048,
                   help="largest size for bridge, interp-eager, interp+read (they hold every n x n pattern)")
    p.add_argument("--max-tokens", type=int, default=8192 if cuda else 4096, help="largest size for interp")
    p.add_argument("--repeats", type=int, default=2, help="calls per measurement (the median time is kept)")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: a new benchmarks/results/cache-<device>-<time>.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "TOKENS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        impl, n = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(impl, n, args.layers, args.vocab, args.device, args.repeats)))
        return 0

    impls = [i for i in args.impls.split(",") if i]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        p.error(f"--impls must be a comma list of {list(IMPLS)}; got {unknown}")
    diff = check_patterns_agree(args.layers, args.vocab, args.device)
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        for impl in impls:
            cap = args.max_tokens if impl == "interp" else args.max_eager_tokens
            if n > cap:
                rows.append({"impl": impl, "tokens": n, "skipped": f"> cap {cap} on {args.device}"})
                continue
            rows.append(spawn(impl, n, args))
            print(table({"device": args.device, "layers": args.layers, "pattern_check_max_abs_diff": diff,
                         "rows": rows[-1:]}).splitlines()[-1], flush=True)
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else
              f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
              "torch": torch.__version__, "layers": args.layers, "vocab": args.vocab,
              "pattern_check_max_abs_diff": diff, "rows": rows}
    out = write_benchmark_json(result, args.out, f"cache-{str(args.device).split(':')[0]}", args.force)
    print(table(result))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
