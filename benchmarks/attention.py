"""Attention kernel throughput: eager vs PyTorch SDPA backends vs flash_attn vs ours (interp.kernels).

    python benchmarks/attention.py                 # full sweep on CUDA; small eager-vs-sdpa sweep on CPU
    python benchmarks/attention.py --quick         # a few shapes
    python benchmarks/attention.py --out my.json   # default: benchmarks/results/attention-{cuda,cpu}.json

Reports TFLOP/s for the forward and for forward+backward, with the FlashAttention convention for counting:
forward = 4 * batch * heads * seq_q * seq_k * d_head (two matmuls), halved when causal; backward = 2.5x the
forward (five matmuls), so fwd+bwd = 3.5x. Every configuration keeps batch * seq = 16k tokens and
heads * d_head = 2048 (so runs are comparable across lengths), as FlashAttention's own benchmarks do.

On CUDA, times are medians of ``triton.testing.do_bench`` (CUDA events, warm-up excluded, inputs fresh
random normals). On the CPU there is no kernel of ours to run (it is CUDA-only; the interpreter is a
correctness tool), so only eager and sdpa are timed, at small sizes.

Prints a table and writes JSON (device, dtype, shapes, TFLOP/s, ratios to the default SDPA) atomically.
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


def eager(q, k, v, causal):
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        n = q.shape[2]
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def sdpa(backend=None):
    def run(q, k, v, causal):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def ours(q, k, v, causal):
    return flash_attention(q, k, v, causal=causal)[0]


def flash_attn_2():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None

    def run(q, k, v, causal):  # flash_attn takes [batch, seq, heads, d]
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
        return out.transpose(1, 2)

    return run


def contenders(device: str) -> dict:
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
    return out


# --- timing -------------------------------------------------------------------------------------------------


def flops(batch, heads, seq, d, causal, mode):
    f = 4 * batch * heads * seq * seq * d * (0.5 if causal else 1.0)
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


def bench_one(impl, batch, heads, seq, d, causal, dtype, device, mode, reps):
    g = torch.Generator(device=device).manual_seed(seq + d)
    shape = (batch, heads, seq, d)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(mode == "fwd+bwd")
               for _ in range(3))
    dout = torch.randn(shape, generator=g, device=device, dtype=dtype)

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                impl(q, k, v, causal)
    else:
        def fn():
            out = impl(q, k, v, causal)
            torch.autograd.grad(out, (q, k, v), dout)
    try:
        ms = time_ms(fn, device, reps)
    except RuntimeError as e:  # the backend refuses the shape, or no memory for it (OOM is a RuntimeError)
        if device == "cuda":
            torch.cuda.empty_cache()
        return None, str(e).splitlines()[0][:120]
    return ms, None


# --- sweep --------------------------------------------------------------------------------------------------


def configs(device: str, quick: bool):
    if device == "cuda":
        seqs = [512, 2048, 8192] if quick else [512, 1024, 2048, 4096, 8192, 16384]
        dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float16]
        dims = [128] if quick else [64, 128]
    else:
        seqs = [256, 512] if quick else [256, 512, 1024]
        dtypes = [torch.float32]
        dims = [64]
    for dtype in dtypes:
        for d in dims:
            for causal in (False, True):
                for seq in seqs:
                    batch = max(1, TOKENS // seq) if device == "cuda" else 1
                    heads = MODEL_WIDTH // d if device == "cuda" else 4
                    yield dtype, d, causal, seq, batch, heads


def run(device: str, quick: bool, modes, reps: int) -> dict:
    impls = contenders(device)
    rows = []
    for dtype, d, causal, seq, batch, heads in configs(device, quick):
        for mode in modes:
            for name, impl in impls.items():
                if name in ("eager", "sdpa[math]") and seq > 8192:
                    continue  # materialises [heads, seq, seq] scores: tens of GB
                ms, err = bench_one(impl, batch, heads, seq, d, causal, dtype, device, mode, reps)
                work = flops(batch, heads, seq, d, causal, mode)
                tflops = None if ms is None else work / (ms * 1e-3) / 1e12
                rows.append({"impl": name, "dtype": str(dtype).removeprefix("torch."), "d_head": d,
                             "causal": causal, "seq": seq, "batch": batch, "heads": heads, "mode": mode,
                             "ms": ms, "tflops": tflops, "error": err})
    # ratio to the default SDPA dispatch at the same configuration
    key = ("dtype", "d_head", "causal", "seq", "mode")
    base = {tuple(r[k] for k in key): r["ms"] for r in rows if r["impl"] == "sdpa"}
    for r in rows:
        b = base.get(tuple(r[k] for k in key))
        r["speedup_vs_sdpa"] = None if (b is None or r["ms"] is None) else b / r["ms"]
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "tokens_per_config": TOKENS if device == "cuda" else None, "flops_convention":
            "fwd = 4*b*h*s*s*d (x0.5 causal); fwd+bwd = 3.5 x fwd", "rows": rows}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def table(result: dict) -> str:
    rows = result["rows"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    head = f"{'dtype':<9}{'d':>4} {'causal':<7}{'seq':>6} {'mode':<8}" + "".join(f"{i:>22}" for i in impls)
    lines = [f"device: {result['device']}  (TFLOP/s; x = speed vs default sdpa)", head, "-" * len(head)]
    groups = {}
    for r in rows:
        groups.setdefault((r["dtype"], r["d_head"], r["causal"], r["seq"], r["mode"]), {})[r["impl"]] = r
    for (dtype, d, causal, seq, mode), by_impl in groups.items():
        cells = []
        for i in impls:
            r = by_impl.get(i)
            if r is None or r["tflops"] is None:
                cells.append(f"{'-':>22}")
            else:
                cells.append(f"{r['tflops']:.3g} ({r['speedup_vs_sdpa']:.2f}x)".rjust(22))
        lines.append(f"{dtype:<9}{d:>4} {causal!s:<7}{seq:>6} {mode:<8}" + "".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--reps", type=int, default=10, help="CPU repetitions (CUDA uses do_bench)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: a new benchmarks/results/attention-<device>-<time>.json)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("fwd", "fwd+bwd") for m in modes):
        parser.error(f"--modes must be a comma list of fwd, fwd+bwd; got {args.modes!r}")
    result = run(args.device, args.quick, modes, args.reps)
    kind = str(args.device).split(':')[0]
    out = write_benchmark_json(result, args.out, f"attention-{kind}", args.force)
    print(table(result))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

