"""Forward pass and run_with_cache: interp vs transformers (sdpa, eager) vs TransformerLens' TransformerBridge.

All three run the *same* randomly initialised GPT-2-small-shaped weights (d_model 768, 12 heads, vocab 50257;
``--layers`` blocks), built offline from a config. For each sequence length it measures:

* ``forward``  — logits only: interp (sdpa, eager, and triton on CUDA), transformers (sdpa, eager), the bridge;
* ``cache``    — every activation: interp ``run_with_cache()`` (all hooks, so every layer builds its pattern on
  the eager path), interp ``run_with_lazy_cache()`` (fused attention, patterns rebuilt only when read — not
  read here), the bridge's ``run_with_cache()``, and, as the nearest transformers analogue,
  ``output_hidden_states + output_attentions`` with eager attention (residual stream + patterns only).

Time: median (and min) of ``--repeats`` runs after one warm-up, under ``torch.inference_mode``; CUDA work is
synchronised. Threads are fixed with ``torch.set_num_threads`` (default 2). Ratios are to interp's row of the
same workload and length, measured in the same process and run.

Peak memory, honestly: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
On the CPU, torch's allocations are invisible to tracemalloc, so we use the kernel's resident-set high-water
mark: before each measured call we ``gc.collect()``, return freed heap to the OS (``malloc_trim``), reset the
high-water mark (``echo 5 > /proc/self/clear_refs``), run the call once, and report ``VmHWM - VmRSS(before)``.
That is the extra resident memory the call needed at its peak, outputs (logits, cache) included. It can
under-count memory the allocator had kept resident from earlier calls and reused; malloc_trim makes that
small. Memory is measured on a separate run from the timed ones.

Usage (from the repository root)::

    .venv/bin/python benchmarks/forward.py                       # CPU: seq 256 512 1024, 4 layers
    .venv/bin/python benchmarks/forward.py --device cuda         # GPU: seq 1024 .. 8192, 12 layers
    .venv/bin/python benchmarks/forward.py --seqs 256 --repeats 2 --only forward

Writes a JSON file (``--out``; default ``benchmarks/results/forward-<device>.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime as dt
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing

GPT2_SMALL = {"n_embd": 768, "n_head": 12, "vocab_size": 50257}


# --- memory --------------------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Extra memory at the peak of one call of ``fn`` (its outputs included), in MiB; None if unmeasurable."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak / 2**20
    _malloc_trim()
    base = _status_kib("VmRSS")
    if base is None or not _reset_rss_peak():
        return None
    out = fn()
    peak = _status_kib("VmHWM")
    del out
    gc.collect()
    return (peak - base) / 1024


def time_call(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call. On a shared CPU the CPU time is the steadier
    number: it does not count time spent waiting for a core."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del out
    return wall, cpu


# --- the models ----------------------------------------------------------------------------------------
def word_level_tokenizer_dir(vocab: int, folder: Path) -> Path:
    """A transformers fast tokenizer over words 't0'..'t{vocab-1}', saved where the bridge can re-open it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = f"t{vocab - 1}"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token=eos, bos_token=eos,
                            pad_token=eos).save_pretrained(folder)
    return folder


@dataclass
class Models:
    ours: object
    hf_sdpa: object
    hf_eager: object
    bridge: object | None
    bridge_error: str | None = None


def build_models(n_layers: int, n_ctx: int, device: torch.device, dtype: torch.dtype, with_bridge: bool,
                 workdir: Path) -> Models:
    import transformers

    import interp

    cfg = transformers.GPT2Config(n_layer=n_layers, n_positions=n_ctx, **GPT2_SMALL)
    torch.manual_seed(0)
    hf_sdpa = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    hf_sdpa = hf_sdpa.to(device=device, dtype=dtype).eval()
    hf_eager = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    hf_eager.load_state_dict(hf_sdpa.state_dict())
    hf_eager = hf_eager.to(device=device, dtype=dtype).eval()
    ours = interp.load(hf_sdpa)  # its own copy of the weights, in TransformerLens layout
    bridge, error = None, None
    if with_bridge:
        try:
            from transformer_lens.model_bridge import TransformerBridge
            from transformers import AutoTokenizer

            folder = workdir / "bridge"
            hf_sdpa.config.save_pretrained(folder)
            tok = AutoTokenizer.from_pretrained(word_level_tokenizer_dir(cfg.vocab_size, workdir / "tok"))
            # The bridge switches its HF model to eager attention in place: give it a copy.
            bridge = TransformerBridge.boot_transformers(
                str(folder), hf_model=copy.deepcopy(hf_sdpa), tokenizer=tok, device=str(device), dtype=dtype
            )
            bridge.eval()
        except Exception as e:  # noqa: BLE001 -- report why, and still benchmark the rest
            error = f"{type(e).__name__}: {e}"[:300]
    return Models(ours=ours, hf_sdpa=hf_sdpa, hf_eager=hf_eager, bridge=bridge, bridge_error=error)


def workloads(m: Models, tokens: torch.Tensor, device: torch.device) -> list[tuple[str, str, Callable]]:
    """(workload, implementation, zero-argument callable). The first row of each workload is the baseline."""
    rows: list[tuple[str, str, Callable]] = []
    ours = m.ours
    fused = "triton" if device.type == "cuda" and _triton_ok() else "sdpa"
    rows.append(("forward", f"interp ({fused})", lambda: ours(tokens, attn_backend=fused)))
    if fused == "triton":
        rows.append(("forward", "interp (sdpa)", lambda: ours(tokens, attn_backend="sdpa")))
    rows.append(("forward", "interp (eager)", lambda: ours(tokens, attn_backend="eager")))
    rows.append(("forward", "transformers (sdpa)", lambda: m.hf_sdpa(tokens).logits))
    rows.append(("forward", "transformers (eager)", lambda: m.hf_eager(tokens).logits))
    if m.bridge is not None:
        rows.append(("forward", "TL bridge", lambda: m.bridge(tokens)))

    rows.append(("cache", "interp run_with_cache (all hooks)", lambda: ours.run_with_cache(tokens)))
    lazy = _lazy_cache_fn()
    if lazy is not None:
        rows.append(("cache", f"interp run_with_lazy_cache ({fused}, patterns unread)",
                     lambda: lazy(ours, tokens, attn_backend=fused)))
    if m.bridge is not None:
        rows.append(("cache", "TL bridge run_with_cache (all hooks)", lambda: m.bridge.run_with_cache(tokens)))
    rows.append(("cache", "transformers eager (hidden_states+attentions)",
                 lambda: m.hf_eager(tokens, output_hidden_states=True, output_attentions=True)))
    return rows


def _triton_ok() -> bool:
    try:
        from interp.kernels import flash_attention_available

        return bool(flash_attention_available())
    except ImportError:
        return False


def _lazy_cache_fn():
    try:
        from interp.model.lazy_pattern import run_with_lazy_cache
    except ImportError:
        return None
    return run_with_lazy_cache


# --- the run ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    seq: int
    workload: str
    impl: str
    median_s: float | None = None
    min_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # process CPU time per call (all threads)
    median_cpu_s: float | None = None
    peak_mib: float | None = None
    time_ratio: float | None = None  # median / baseline median (same workload, same seq)
    cpu_ratio: float | None = None
    mem_ratio: float | None = None
    error: str | None = None


def run(args) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here.")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    seqs = args.seqs or ([1024, 2048, 4096, 8192] if device.type == "cuda" else [256, 512, 1024])
    n_layers = args.layers or (12 if device.type == "cuda" else 4)
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(n_layers, max(seqs), device, dtype, not args.no_bridge, Path(tmp))
    gen = torch.Generator().manual_seed(0)
    load_before = _loadavg()
    rows: list[Row] = []
    with torch.inference_mode():
        for seq in seqs:
            tokens = torch.randint(0, GPT2_SMALL["vocab_size"], (args.batch, seq), generator=gen).to(device)
            jobs = [(Row(seq=seq, workload=w, impl=i), fn) for w, i, fn in workloads(models, tokens, device)
                    if not args.only or w == args.only]
            # Pass 1, per implementation: a warm-up call (and a check that it runs), then the memory call.
            for row, fn in jobs:
                try:
                    out = fn()
                    del out
                    row.peak_mib = measure_peak_mib(fn, device)
                except torch.cuda.OutOfMemoryError:
                    row.error = "out of memory"
                    torch.cuda.empty_cache()
                except Exception as e:  # noqa: BLE001 -- one failing implementation must not end the run
                    row.error = f"{type(e).__name__}: {e}"[:200]
            # Pass 2: timed calls, interleaved (repeat r of every implementation, then repeat r + 1), so that
            # load from other processes on a shared machine falls on all implementations alike.
            live = [(row, fn) for row, fn in jobs if row.error is None]
            for _ in range(args.repeats):
                for row, fn in live:
                    wall, cpu = time_call(fn, device)
                    row.times_s.append(wall)
                    row.cpu_s.append(cpu)
            baselines: dict[str, Row] = {}
            for row, _ in jobs:
                if row.times_s:
                    row.median_s, row.min_s = statistics.median(row.times_s), min(row.times_s)
                    row.median_cpu_s = statistics.median(row.cpu_s)
                base = baselines.setdefault(row.workload, row)
                if row.median_s and base.median_s:
                    row.time_ratio = row.median_s / base.median_s
                if row.median_cpu_s and base.median_cpu_s:
                    row.cpu_ratio = row.median_cpu_s / base.median_cpu_s
                if row.peak_mib is not None and base.peak_mib:
                    row.mem_ratio = row.peak_mib / base.peak_mib
                rows.append(row)
                print(_fmt_row(row), flush=True)
    from importlib.metadata import version

    import transformers

    return {
        "benchmark": "forward",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "shape": {"n_layers": n_layers, "d_model": GPT2_SMALL["n_embd"], "n_heads": GPT2_SMALL["n_head"],
                  "d_vocab": GPT2_SMALL["vocab_size"], "batch": args.batch, "seqs": seqs},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "transformer_lens": version("transformer-lens"),
                     "python": platform.python_version()},
        "memory_method": "cuda max_memory_allocated delta" if device.type == "cuda"
        else "VmHWM - VmRSS after malloc_trim and clear_refs reset (Linux)",
        "bridge_error": models.bridge_error,
        "loadavg_1min": {"before": load_before, "after": _loadavg()},  # a shared machine makes times noisy
        "results": [asdict(r) for r in rows],
    }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _fmt_row(r: Row) -> str:
    if r.error:
        return f"seq {r.seq:5d}  {r.workload:8s} {r.impl:55s} ERROR {r.error}"
    return (f"seq {r.seq:5d}  {r.workload:8s} {r.impl:55s} {r.median_s * 1e3:9.1f} ms wall "
            f"(x{_fmt(r.time_ratio, '.2f')})  {r.median_cpu_s * 1e3:9.1f} ms cpu (x{_fmt(r.cpu_ratio, '.2f')})  "
            f"peak {_fmt(r.peak_mib, '8.1f')} MiB (x{_fmt(r.mem_ratio, '.2f')})")


COLUMNS = ("seq", "workload", "implementation", "wall ms (median)", "wall ms (min)", "wall vs interp",
           "CPU ms (median)", "CPU vs interp", "peak MiB", "memory vs interp")


def _cells(r: dict) -> list[str]:
    if r["error"]:
        return [str(r["seq"]), r["workload"], r["impl"], r["error"]] + [""] * (len(COLUMNS) - 4)
    ms = lambda x: _fmt(x and x * 1e3, ".1f")
    return [str(r["seq"]), r["workload"], r["impl"], ms(r["median_s"]), ms(r["min_s"]), _fmt(r["time_ratio"], ".2f"),
            ms(r["median_cpu_s"]), _fmt(r["cpu_ratio"], ".2f"), _fmt(r["peak_mib"], ".1f"),
            _fmt(r["mem_ratio"], ".2f")]


def markdown_table(result: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c in ("workload", "implementation") else "---:"
                                                           for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["results"]]
    return "\n".join(lines)


def print_table(result: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown_table(result))
        return
    s = result["shape"]
    table = Table(title=f"forward — {result['device_name']} ({result['device']}), {result['dtype']}, "
                        f"{result['threads']} threads, {s['n_layers']} layers x d_model {s['d_model']}, "
                        f"batch {s['batch']}, median of {result['repeats']}")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("workload", "implementation") else "right")
    for r in result["results"]:
        table.add_row(*_cells(r))
    Console(width=200).print(table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seqs", type=int, nargs="+", help="sequence lengths (default: CPU 256 512 1024; "
                                                        "CUDA 1024 2048 4096 8192)")
    p.add_argument("--layers", type=int, help="blocks (default: CPU 4, CUDA 12 = GPT-2 small)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row, after one warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--only", choices=["forward", "cache"], help="run one workload only")
    p.add_argument("--no-bridge", action="store_true", help="skip TransformerLens' bridge")
    p.add_argument("--out", type=Path, help="JSON path (default: a new benchmarks/results/forward-<device>-<time>.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = p.parse_args(argv)
    for name in ("batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.seqs and min(args.seqs) < 1:
        p.error(f"--seqs must be positive; got {args.seqs}")
    result = run(args)
    from interp.io import write_benchmark_json

    out = write_benchmark_json(result, args.out, f"forward-{result['device'].split(':')[0]}", args.force)
    print_table(result)
    if args.markdown:
        print(markdown_table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
