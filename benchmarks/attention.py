"""Attention kernel throughput: eager vs PyTorch SDPA backends vs flash_attn vs ours (interp.kernels).

    python benchmarks/attention.py                 # full sweep on CUDA; small eager-vs-sdpa sweep on CPU
    python benchmarks/attention.py --quick         # a few shapes
    python benchmarks/attention.py --out my.json   # default: benchmarks/results/attention-{cuda,cpu}.json
    python benchmarks/attention.py --variants causal,window,softcap --dims 64,128 --seqs 1024,4096,16384
    python benchmarks/attention.py --dry-run       # CPU, tiny sizes, our kernel in Triton's interpreter

Variants: ``full`` (no mask), ``causal``, ``window`` (causal, sliding window of --window keys: Mistral/Gemma
local layers) and ``softcap`` (causal, Gemma 2's soft-cap 50). SDPA has no window or soft-cap: a window goes
to it as an explicit boolean mask, a soft-cap cannot (sdpa is skipped there). FlashAttention (if installed)
takes both natively. Windowed rows also report ``speedup_vs_full``: the same implementation's causal time over
its windowed time, next to ``keys_ratio``, how many fewer (query, key) pairs the window visits.

Reports TFLOP/s for the forward and for forward+backward, with the FlashAttention convention for counting:
forward = 4 * batch * heads * seq_q * seq_k * d_head (two matmuls), halved when causal; backward = 2.5x the
forward (five matmuls), so fwd+bwd = 3.5x. Every configuration keeps batch * seq = 16k tokens and
heads * d_head = 2048 (so runs are comparable across lengths), as FlashAttention's own benchmarks do.

On CUDA, times are medians of ``triton.testing.do_bench`` (CUDA events, warm-up excluded, inputs fresh
random normals). On the CPU there is no kernel of ours to run (it is CUDA-only; the interpreter is a
correctness tool), so only eager and sdpa are timed, at small sizes.

The bound: in the same process, on the same device and dtype, a plain square matmul's achieved FLOP/s
(``matmul_peak``: the best of a few sizes, 2·n³ FLOPs each, timed like the contenders). Attention is two matmuls
plus a softmax, so that is the most it can reach; each row's ``frac_of_matmul_peak`` says how close it gets.

Prints a table and writes JSON (device, dtype, shapes, TFLOP/s, ratios to the default SDPA, the matmul peak)
atomically; ``markdown_table(result)`` draws the table RESULTS.md shows (benchmarks/run_all.py).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from interp.io import write_benchmark_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.kernels import flash_attention, flash_attention_available

TOKENS = 16 * 1024
MODEL_WIDTH = 2048


# --- the contenders -----------------------------------------------------------------------------------------


SOFTCAP = 50.0  # Gemma 2's attn_logit_softcapping


def _window_mask(n, window, device):
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return (j <= i) & (j > i - window)


# Each contender: fn(q, k, v, causal, window, softcap) -> out, or None where it cannot express the variant.
def eager(q, k, v, causal, window=None, softcap=None):
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    n = q.shape[2]
    if window is not None:
        scores = scores.masked_fill(~_window_mask(n, window, q.device), float("-inf"))
    elif causal:
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def sdpa(backend=None):
    def run(q, k, v, causal, window=None, softcap=None):
        if softcap is not None:
            return None  # a soft-cap transforms the scores: no mask expresses it
        mask = None if window is None else _window_mask(q.shape[2], window, q.device)
        kwargs = {"is_causal": causal} if mask is None else {"attn_mask": mask}
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)

    return run


def ours(q, k, v, causal, window=None, softcap=None):
    return flash_attention(q, k, v, causal=causal, window=window, softcap=softcap)[0]


def flash_attn_2():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None

    def run(q, k, v, causal, window=None, softcap=None):  # flash_attn takes [batch, seq, heads, d]
        kwargs = {}
        if window is not None:
            kwargs["window_size"] = (window - 1, 0)
        if softcap is not None:
            kwargs["softcap"] = softcap
        try:
            out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal, **kwargs)
        except TypeError:  # an old flash_attn without window_size / softcap
            return None
        return out.transpose(1, 2)

    return run


def _interpreting() -> bool:
    from interp.kernels.flash import _interpreting as interpreting

    return interpreting()


def contenders(device: str, only=None) -> dict:
    out = _all_contenders(device)
    return out if not only else {k: v for k, v in out.items() if k in only}


def _all_contenders(device: str) -> dict:
    out = {"eager": eager, "sdpa": sdpa()}
    if device == "cuda":
        from torch.nn.attention import SDPBackend

        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            if hasattr(SDPBackend, name):
                out[f"sdpa[{name.lower()}]"] = sdpa(getattr(SDPBackend, name))
        fa = flash_attn_2()
        if fa is not None:
            out["flash_attn"] = fa
        if flash_attention_available():
            out["ours"] = ours
    elif _interpreting():  # dry run: our kernel in Triton's CPU interpreter (a correctness run, not a timing)
        out["ours"] = ours
    return out


# --- timing -------------------------------------------------------------------------------------------------


def visited_pairs(seq: int, causal: bool, window: int | None) -> int:
    """(query, key) pairs a kernel must visit: seq² (full), seq²/2 (causal, FA convention), or the window's."""
    if window is None:
        return seq * seq // 2 if causal else seq * seq
    w = min(window, seq)
    return w * (w + 1) // 2 + (seq - w) * w


def flops(batch, heads, seq, d, causal, mode, window=None):
    f = 4 * batch * heads * d * visited_pairs(seq, causal, window)
    return f if mode == "fwd" else 3.5 * f


def time_ms(fn, device: str, reps: int) -> float:
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def bench_one(impl, batch, heads, seq, d, causal, dtype, device, mode, reps, window=None, softcap=None):
    g = torch.Generator(device=device).manual_seed(seq + d)
    shape = (batch, heads, seq, d)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(mode == "fwd+bwd")
               for _ in range(3))
    dout = torch.randn(shape, generator=g, device=device, dtype=dtype)

    with torch.no_grad():
        if impl(q, k, v, causal, window, softcap) is None:
            return None, "cannot express this variant"

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                impl(q, k, v, causal, window, softcap)
    else:
        def fn():
            out = impl(q, k, v, causal, window, softcap)
            torch.autograd.grad(out, (q, k, v), dout)
    try:
        ms = time_ms(fn, device, reps)
    except RuntimeError as e:  # the backend refuses the shape, or no memory for it (OOM is a RuntimeError)
        if device == "cuda":
            torch.cuda.empty_cache()
        return None, str(e).splitlines()[0][:120]
    return ms, None


def matmul_peak(device: str, dtype: torch.dtype, reps: int, sizes=None) -> dict:
    """The best achieved TFLOP/s of a square ``a @ b`` over a few sizes: the ceiling attention's matmuls work under."""
    sizes = sizes or ((4096, 8192) if device == "cuda" else (256, 512, 1024))
    best = {"tflops": 0.0}
    for n in sizes:
        g = torch.Generator(device=device).manual_seed(n)
        a, b = (torch.randn(n, n, generator=g, device=device, dtype=dtype) for _ in range(2))
        ms = time_ms(lambda a=a, b=b: a @ b, device, reps)
        tflops = 2 * n ** 3 / (ms * 1e-3) / 1e12
        if tflops > best["tflops"]:
            best = {"n": n, "ms": ms, "tflops": tflops}
    return best


# --- sweep --------------------------------------------------------------------------------------------------


VARIANTS = ("full", "causal", "window", "softcap")


def configs(device: str, quick: bool, variants=("full", "causal"), dims=None, seqs=None, dry_run=False,
            dtypes=None):
    if dry_run:  # a CPU smoke run of every code path: tiny shapes, our kernel interpreted
        seqs, dtypes_default, dims = seqs or [48], [torch.float32], dims or [32]
    elif device == "cuda":
        seqs = seqs or ([512, 2048, 8192] if quick else [512, 1024, 2048, 4096, 8192, 16384])
        dtypes_default = [torch.bfloat16] if quick else [torch.bfloat16, torch.float16]
        dims = dims or ([128] if quick else [64, 128])
    else:
        seqs = seqs or ([256, 512] if quick else [256, 512, 1024])
        dtypes_default = [torch.float32]
        dims = dims or [64]
    for dtype in [getattr(torch, t) for t in dtypes] if dtypes else dtypes_default:
        for d in dims:
            for variant in variants:
                for seq in seqs:
                    batch = max(1, TOKENS // seq) if device == "cuda" else 1
                    heads = MODEL_WIDTH // d if device == "cuda" else (2 if dry_run else 4)
                    yield dtype, d, variant, seq, batch, heads


def run(device: str, quick: bool, modes, reps: int, variants=("full", "causal"), dims=None, seqs=None,
        window: int = 1024, dry_run: bool = False, only=None, dtypes=None, deadline: float | None = None) -> dict:
    impls = contenders(device, only)
    rows, peaks = [], {}
    for dtype, d, variant, seq, batch, heads in configs(device, quick, variants, dims, seqs, dry_run, dtypes):
        name = str(dtype).removeprefix("torch.")
        if name not in peaks:  # the bound, measured here and now, before this dtype's first row
            peaks[name] = matmul_peak(device, dtype, reps, (64, 128) if dry_run else None)
        causal = variant != "full"
        win = window if variant == "window" else None
        cap = SOFTCAP if variant == "softcap" else None
        for mode in modes:
            for impl_name, impl in impls.items():
                if impl_name in ("eager", "sdpa[math]") and seq > 8192:
                    continue  # materialises [heads, seq, seq] scores: tens of GB
                if deadline is not None and time.time() > deadline:
                    ms, err = None, "skipped: out of time (--deadline)"
                else:
                    ms, err = bench_one(impl, batch, heads, seq, d, causal, dtype, device, mode, reps, win, cap)
                work = flops(batch, heads, seq, d, causal, mode, win)
                tflops = None if ms is None else work / (ms * 1e-3) / 1e12
                rows.append({"impl": impl_name, "dtype": str(dtype).removeprefix("torch."), "d_head": d,
                             "variant": variant, "causal": causal, "window": win, "softcap": cap, "seq": seq,
                             "batch": batch, "heads": heads, "mode": mode, "ms": ms, "tflops": tflops,
                             "error": err})
    # the peak again after the sweep (the better of the two is the bound: load from elsewhere only ever lowers it)
    for name, before in peaks.items():
        after = matmul_peak(device, getattr(torch, name), reps, (64, 128) if dry_run else None)
        peaks[name] = {**max(before, after, key=lambda p: p["tflops"]), "tflops_before": before["tflops"],
                       "tflops_after": after["tflops"]}
    for r in rows:
        r["frac_of_matmul_peak"] = None if r["tflops"] is None else r["tflops"] / peaks[r["dtype"]]["tflops"]
    # ratio to the default SDPA dispatch at the same configuration, and window vs causal per implementation
    key = ("dtype", "d_head", "variant", "seq", "mode")
    base = {tuple(r[k] for k in key): r["ms"] for r in rows if r["impl"] == "sdpa"}
    causal_ms = {(r["impl"], r["dtype"], r["d_head"], r["seq"], r["mode"]): r["ms"] for r in rows
                 if r["variant"] == "causal"}
    for r in rows:
        b = base.get(tuple(r[k] for k in key))
        r["speedup_vs_sdpa"] = None if (b is None or r["ms"] is None) else b / r["ms"]
        if r["variant"] == "window":
            c = causal_ms.get((r["impl"], r["dtype"], r["d_head"], r["seq"], r["mode"]))
            r["speedup_vs_full"] = None if (c is None or r["ms"] is None) else c / r["ms"]
            r["keys_ratio"] = visited_pairs(r["seq"], True, None) / visited_pairs(r["seq"], True, r["window"])
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "tokens_per_config": TOKENS if device == "cuda" else None, "window": window, "softcap": SOFTCAP,
            "dry_run": dry_run, "flops_convention": "fwd = 4*b*h*d*pairs, pairs = s*s (full), s*s/2 (causal), "
            "the window's visited pairs (window); fwd+bwd = 3.5 x fwd", "matmul_peak": peaks, "reps": reps,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def table(result: dict) -> str:
    rows = result["rows"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    head = f"{'dtype':<9}{'d':>4} {'variant':<8}{'seq':>6} {'mode':<8}" + "".join(f"{i:>22}" for i in impls)
    lines = [f"device: {result['device']}  (TFLOP/s; x = speed vs default sdpa)", head, "-" * len(head)]
    groups = {}
    for r in rows:
        groups.setdefault((r["dtype"], r["d_head"], r["variant"], r["seq"], r["mode"]), {})[r["impl"]] = r
    for (dtype, d, variant, seq, mode), by_impl in groups.items():
        cells = []
        for i in impls:
            r = by_impl.get(i)
            if r is None or r["tflops"] is None:
                cells.append(f"{'-':>22}")
            else:
                ratio = "" if r["speedup_vs_sdpa"] is None else f" ({r['speedup_vs_sdpa']:.2f}x)"
                cells.append(f"{r['tflops']:.3g}{ratio}".rjust(22))
        lines.append(f"{dtype:<9}{d:>4} {variant:<8}{seq:>6} {mode:<8}" + "".join(cells))
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """One row per shape and mode; per contender its FLOP/s and the fraction of the matmul peak it reaches."""
    rows = result["rows"]
    peaks = result.get("matmul_peak") or {}
    # GFLOP/s on a CPU (tens of them), TFLOP/s on a GPU (hundreds)
    scale, unit = (1e3, "GFLOP/s") if max((p["tflops"] for p in peaks.values()), default=1) < 1 else (1, "TFLOP/s")
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    bound = "; ".join(f"{dt} {p['tflops'] * scale:.4g} {unit} (n = {p['n']})" for dt, p in peaks.items())
    caption = (f"{result['device']}, torch {result['torch']}, {result.get('date', '')}. Bound — a square matmul "
               f"measured in the same run: {bound or 'not measured'}. Cells: {unit} (% of that matmul peak; × = "
               "speed vs the default sdpa). FLOPs: QKᵀ and PV, 4·b·h·d·pairs, causal pairs halved; "
               "fwd+bwd = 3.5 × fwd.")
    lines = [caption, "",
             "| dtype | d | variant | seq | mode | " + " | ".join(impls) + " |",
             "|---|---:|---|---:|---|" + "---:|" * len(impls)]
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["dtype"], r["d_head"], r["variant"], r["seq"], r["mode"]), {})[r["impl"]] = r
    for key, by_impl in groups.items():
        cells = []
        for i in impls:
            r = by_impl.get(i)
            if r is None or r["tflops"] is None:
                cells.append("–")
                continue
            frac = "" if r.get("frac_of_matmul_peak") is None else f" ({100 * r['frac_of_matmul_peak']:.0f} %)"
            ratio = "" if r.get("speedup_vs_sdpa") is None or i == "sdpa" else f" {r['speedup_vs_sdpa']:.2f}×"
            cells.append(f"{r['tflops'] * scale:.3g}{frac}{ratio}")
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--variants", default="full,causal", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--dims", default=None, help="comma list of head dims (default: by device)")
    parser.add_argument("--seqs", default=None, help="comma list of sequence lengths (default: by device)")
    parser.add_argument("--window", type=int, default=1024, help="window width of the 'window' variant")
    parser.add_argument("--impls", default=None, help="comma list of contenders to run (default: all available)")
    parser.add_argument("--dtypes", default=None, help="comma list, e.g. bfloat16,float16 (default: by device)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="unix time after which the remaining rows are recorded as skipped (JSON still written)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes, our kernel in Triton's interpreter (set TRITON_INTERPRET=1)")
    parser.add_argument("--reps", type=int, default=10, help="CPU repetitions (CUDA uses do_bench)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: a new benchmarks/results/attention-<device>-<time>.json)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("fwd", "fwd+bwd") for m in modes):
        parser.error(f"--modes must be a comma list of fwd, fwd+bwd; got {args.modes!r}")
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in variants):
        parser.error(f"--variants must be a comma list of {', '.join(VARIANTS)}; got {args.variants!r}")
    dims = [int(x) for x in args.dims.split(",")] if args.dims else None
    seqs = [int(x) for x in args.seqs.split(",")] if args.seqs else None
    device = "cpu" if args.dry_run else args.device
    only = [x for x in args.impls.split(",") if x] if args.impls else None
    dtypes = [x for x in args.dtypes.split(",") if x] if args.dtypes else None
    result = run(device, args.quick, modes, args.reps, variants, dims, seqs, args.window, args.dry_run, only,
                 dtypes, args.deadline)
    kind = str(device).split(':')[0]
    out = write_benchmark_json(result, args.out, f"attention-{kind}", args.force)
    print(table(result))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

