"""Every GPU figure in one run: kernel correctness for every attention option, the attention benchmark and the
cache benchmark, as JSON in a folder. Driven by benchmarks/gpu_check.sh; budgeted to finish in < 8 minutes.

    benchmarks/gpu_check.sh OUT_DIR            # on a CUDA machine
    benchmarks/gpu_check.sh OUT_DIR --dry-run  # on a CPU: tiny sizes, our kernel in Triton's interpreter

It needs only Python, PyTorch and Triton (a plain CUDA image's own, any recent version): it imports torch,
triton and ``interp.kernels`` / ``interp.io`` (which import nothing else), never transformer_lens,
transformers, pytest or hypothesis. The cache benchmark needs transformers and transformer_lens; where they
are missing it is skipped and the reason recorded. Steps (each with a time limit; a step that runs out is
recorded as such and the rest still run):

1. ``environment.json``   device, torch / triton / CUDA versions, which optional packages exist.
2. ``kernel_checks.json`` our kernel against the float64 reference (interp.kernels.reference_attention),
   forward and backward, for every option (full, causal, sliding window, soft-cap, ALiBi, all at once) in
   bf16 (d 64, 128) and fp16 (d 128), two in fp32; MHA/GQA/MQA at 1000/300/17 tokens (dry run: a few tiny
   ones). One autotune candidate per kernel (INTERP_FLASH_CONFIGS=1): correctness needs no tuning.
3. ``attention.json``     benchmarks/attention.py: ours vs SDPA (default dispatch, flash, cuDNN) vs
   FlashAttention if installed; variants causal / full / window / soft-cap; d 64 / 128; 1k–16k; fwd and
   fwd+bwd; TFLOP/s. Autotuning over the first 3 candidates per kernel (INTERP_FLASH_CONFIGS=3); rows
   not started by its deadline are recorded as skipped.
4. ``cache.json``         benchmarks/cache.py (run_with_cache with lazy patterns vs TransformerLens' bridge).
5. ``run_all/``           the rest of benchmarks/run_all.py's set that has a CUDA path (patching, forward,
   generate, circuits, edges) at their GPU sizes (``run_all.py --size gpu``), with ``run_all/RESULTS.md``
   drawn from their JSON. They need transformer_lens (interp's hook points are TransformerLens'): where it
   is not importable each is skipped with that line (carry wheels with ``WHEELS=DIR``, gpu_check.sh).
6. ``summary.json``       pass/fail counts and the figures to report against the targets (≥ 1.0x SDPA and
   ≥ 450 TFLOP/s forward at bf16, d128, causal, 8k–16k; windowed faster than causal by the keys ratio).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 470  # the whole run, under the 8 minutes a GPU session grants it


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _write(out: Path, name: str, data: dict) -> None:
    from interp.io import atomic_write_text

    atomic_write_text(out / name, json.dumps(data, indent=1) + "\n")


def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine(),
            "triton_interpret": os.environ.get("TRITON_INTERPRET")}
    for mod in ("triton", "flash_attn", "transformers", "transformer_lens", "pytest"):
        info[mod] = None
        if _has(mod):
            try:
                info[mod] = getattr(__import__(mod), "__version__", "present")
            except Exception as e:  # noqa: BLE001 - a broken optional install is worth recording, not fatal
                info[mod] = f"import failed: {type(e).__name__}: {e}"[:200]
    return info


# --- kernel correctness --------------------------------------------------------------------------------------

OPTIONS = {
    "full": {"causal": False},
    "causal": {"causal": True},
    "window": {"causal": True, "window": 64},
    "softcap": {"causal": True, "softcap": 20.0},
    "alibi": {"causal": True, "alibi": True},
    "all": {"causal": True, "window": 100, "softcap": 30.0, "alibi": True},
}


def kernel_cases(dry_run: bool):
    if dry_run:
        yield from [("causal", "float32", 32, 2, 40), ("all", "float32", 32, 1, 40), ("window", "bfloat16", 32, 2, 37),
                    ("softcap", "float16", 32, 2, 20)]
        return
    # Every option in bf16 (d 64 and 128) and fp16 (d 128), fp32 on two; lengths and GQA vary per case but not
    # the compiled variant, so each (dtype, d, option) compiles once (compilation is what bounds the time).
    variants = [(o, "bfloat16", d) for d in (128, 64) for o in OPTIONS] + [(o, "float16", 128) for o in OPTIONS]
    variants += [("causal", "float32", 64), ("all", "float32", 64)]
    for option, dtype, d in variants:
        for hk, n in ((4, 1000), (1, 300), (2, 17)):
            yield option, dtype, d, hk, n


def _errors(got, ref):
    got, ref = got.double().cpu(), ref.double().cpu()
    worst = ((got - ref).abs().max() / ref.abs().max().clamp_min(0.1)).item()
    norm = ((got - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    return worst, norm


def check_case(option, dtype_name, d, hk, n, device) -> dict:
    """Our kernel vs the float64 reference, forward (out, lse) and backward (dq, dk, dv)."""
    import torch

    from interp.kernels import flash_attention, reference_attention
    from interp.kernels.reference import alibi_slopes

    dtype = getattr(torch, dtype_name)
    spec = dict(OPTIONS[option])
    causal = spec.pop("causal")
    h = 4
    if spec.pop("alibi", False):
        spec["alibi"] = alibi_slopes(h).to(device)
    g = torch.Generator().manual_seed(n + d + hk)
    q = torch.randn(2, h, n, d, generator=g).to(device, dtype).requires_grad_()
    k = torch.randn(2, hk, n, d, generator=g).to(device, dtype).requires_grad_()
    v = torch.randn(2, hk, n, d, generator=g).to(device, dtype).requires_grad_()
    dout = torch.randn(2, h, n, d, generator=g).to(device, dtype)
    out, lse = flash_attention(q, k, v, causal=causal, **spec)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, ref_lse = reference_attention(q, k, v, causal=causal, **spec)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dout.double())
    row = {"option": option, "dtype": dtype_name, "d_head": d, "n_heads": h, "n_kv_heads": hk, "seq": n}
    ok = not any(bool(torch.isnan(t).any()) for t in (out, *grads))
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
        worst, norm = _errors(got, ref)
        row[f"{name}_max_rel"], row[f"{name}_norm_rel"] = worst, norm
        # fp32: exact products (1e-5 of the scale); fp16/bf16 round P and dS to the input dtype like every FA2
        ok &= worst <= 1e-5 if dtype_name == "float32" else (norm <= 1e-2 and worst <= 2e-2)
    row["lse_max_abs"] = (lse.double() - ref_lse).abs().max().item()
    ok &= row["lse_max_abs"] <= 1e-4
    row["passed"] = bool(ok)
    return row


def kernel_checks(dry_run: bool, deadline: float) -> dict:
    import torch

    device = "cpu" if dry_run else "cuda"
    rows, skipped = [], 0
    for case in kernel_cases(dry_run):
        if time.time() > deadline:
            skipped += 1
            continue
        try:
            rows.append(check_case(*case, device))
        except Exception as e:  # noqa: BLE001 - one failing case must not hide the others
            rows.append({"case": list(case), "passed": False, "error": f"{type(e).__name__}: {e}"[:300]})
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"device": device, "rows": rows, "passed": sum(r["passed"] for r in rows),
            "failed": sum(not r["passed"] for r in rows), "skipped_for_time": skipped}


# --- benchmarks (subprocesses, so a crash or a hang in one cannot take the run down) -------------------------

def _run(cmd: list[str], timeout: float, env: dict) -> dict:
    t = time.time()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout), env=env, cwd=ROOT,
                             check=False)
        return {"cmd": cmd, "returncode": res.returncode, "seconds": time.time() - t,
                "stdout_tail": res.stdout[-6000:], "stderr_tail": res.stderr[-3000:]}
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"cmd": cmd, "returncode": None, "seconds": time.time() - t, "timed_out": True,
                "stdout_tail": out[-6000:]}


def attention_cmd(out: Path, dry_run: bool) -> list[str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "attention.py"), "--out", str(out / "attention.json"),
           "--force", "--variants", "causal,window,softcap,full"]
    if dry_run:
        return cmd + ["--dry-run", "--reps", "1", "--window", "16", "--modes", "fwd+bwd"]
    # most important first (the targets: d 128, causal, 8k-16k), so running out of time drops the least
    return cmd + ["--dims", "128,64", "--seqs", "8192,16384,4096,1024", "--dtypes", "bfloat16",
                  "--impls", "sdpa,sdpa[flash_attention],sdpa[cudnn_attention],flash_attn,ours"]


def cache_cmd(out: Path, dry_run: bool) -> list[str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cache.py"), "--out", str(out / "cache.json"), "--force"]
    if dry_run:
        return cmd + ["--sizes", "64", "--layers", "1", "--vocab", "128", "--repeats", "1", "--device", "cpu"]
    return cmd + ["--sizes", "1024,4096,8192"]


# what benchmarks/run_all.py runs here (attention and cache are steps of their own above)
RUN_ALL_GPU = ("patching", "forward", "generate", "circuits", "edges")


def run_all_cmd(out: Path, dry_run: bool, deadline: float) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only", ",".join(RUN_ALL_GPU),
            "--size", "toy" if dry_run else "gpu", "--json-dir", str(out / "run_all"),
            "--results-md", str(out / "run_all" / "RESULTS.md"), "--deadline", str(deadline)]


def summary(out: Path, checks: dict, steps: dict) -> dict:
    result = {"kernel_checks": {k: checks.get(k) for k in ("passed", "failed", "skipped_for_time")},
              "steps": {name: {k: v for k, v in step.items() if k in ("returncode", "seconds", "timed_out",
                                                                      "skipped")} for name, step in steps.items()}}
    att = out / "attention.json"
    if att.exists():
        rows = json.loads(att.read_text())["rows"]
        result["targets"] = [
            {k: r.get(k) for k in ("impl", "variant", "d_head", "seq", "mode", "tflops", "frac_of_matmul_peak",
                                   "speedup_vs_sdpa", "speedup_vs_full", "keys_ratio")}
            for r in rows if r["impl"] == "ours" and r["d_head"] == 128 and r["seq"] >= 8192
            and r["variant"] in ("causal", "window")]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the JSON files (created; must be empty unless --force)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton's interpreter")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds files")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run")
    args = parser.parse_args(argv)
    start = time.time()
    deadline = start + args.budget
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    out = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"gpu_check: {out} already holds files; give an empty folder or --force", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # a short autotune list: compiling all ~23 candidates per kernel variant would not fit the 8 minutes
    os.environ.setdefault("INTERP_FLASH_CONFIGS", "1")  # kernel checks: one tile per kernel, no timing needed
    env.setdefault("INTERP_FLASH_CONFIGS", "3")  # benchmark: the three front-runners of each list
    _write(out, "environment.json", environment())
    print("1/5 environment written", flush=True)

    checks = kernel_checks(args.dry_run, start + 0.25 * args.budget)
    _write(out, "kernel_checks.json", checks)
    print(f"2/5 kernel checks: {checks['passed']} passed, {checks['failed']} failed, "
          f"{checks['skipped_for_time']} skipped for time", flush=True)

    # attention.py stops starting rows at its deadline and still writes its JSON; the timeout is the backstop
    att_deadline = start + 0.55 * args.budget
    steps = {"attention": _run(attention_cmd(out, args.dry_run) + ["--deadline", str(att_deadline)],
                               att_deadline + 30 - time.time(), env)}
    print(f"3/5 attention benchmark: rc={steps['attention']['returncode']}", flush=True)
    if _has("transformer_lens") and _has("transformers"):
        steps["cache"] = _run(cache_cmd(out, args.dry_run), start + 0.7 * args.budget - time.time(), env)
    else:
        steps["cache"] = {"skipped": "transformers / transformer_lens are not installed here"}
    print(f"4/5 cache benchmark: {steps['cache'].get('returncode', steps['cache'].get('skipped'))}", flush=True)
    steps["run_all"] = _run(run_all_cmd(out, args.dry_run, deadline - 10), deadline - time.time(), env)
    run_all_step = steps["run_all"]
    print(f"5/5 run_all set: rc={run_all_step['returncode']}\n{run_all_step.get('stdout_tail', '')}", flush=True)
    _write(out, "steps.json", steps)
    result = summary(out, checks, steps)
    result["seconds"] = time.time() - start
    _write(out, "summary.json", result)
    print(json.dumps(result, indent=1))
    ok = checks["failed"] == 0 and steps["attention"].get("returncode") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
