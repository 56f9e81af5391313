"""Every benchmark, at its documented size, in one command; RESULTS.md's tables regenerated from the JSON.

    python benchmarks/run_all.py                      # every benchmark at its documented size (~20 min on a CPU)
    python benchmarks/run_all.py --only patching,generate
    python benchmarks/run_all.py --size toy           # seconds each: checks the machinery, not the machine
    python benchmarks/run_all.py --render-only        # rebuild RESULTS.md's tables from the JSON already there
    python benchmarks/run_all.py --size gpu           # the benchmarks with a CUDA path, at GPU sizes (gpu_check.sh)
    SAELENS_PYTHON=/path/to/venv/bin/python python benchmarks/run_all.py   # sae_vs_saelens with SAELens' side

Each benchmark runs as its own process (``python benchmarks/NAME.py ARGS --out DIR/NAME.json --force``), so
one that fails or is killed leaves the others' figures intact. Around each, this script records the load
averages and core count before and after and marks the JSON ``contended`` when the machine was busy
(``benchmarks/machine.py``). Then every table between the markers

    <!-- run_all:NAME -->  ...  <!-- /run_all:NAME -->

in RESULTS.md is replaced by the table the benchmark's own ``markdown_table(result)`` draws from its JSON (a
generic table of its rows where it has none), with the command, the machine and the verdict above it. A table
in RESULTS.md between markers is therefore always what the JSON beside it says (tests/test_bench_run_all.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from machine import SessionCPU, contention_note, contention_record, machine_state


@dataclass(frozen=True)
class Benchmark:
    name: str
    documented: tuple[str, ...]  # the size RESULTS.md quotes
    toy: tuple[str, ...]  # seconds on a CPU: exercises every code path of the script
    needs: str = "transformer_lens"  # a module or program without which the benchmark is skipped, with this said
    gpu: tuple[str, ...] | None = None  # its size on a lent GPU (benchmarks/gpu_check.sh); None: not run there


# Documented sizes: the minutes after each are its wall time through run_all on the quiet 2-core AMD EPYC of
# 2026-12-07 (each JSON's run_all.wall_seconds): about 15 min for everything but patching, 20 min in all.
BENCHMARKS = [
    # 5 min: full sweeps of both engines, 3 interleaved repeats, the per-cell bound
    Benchmark("patching", ("--layers", "12", "--tokens", "32", "--repeats", "3"),
              ("--layers", "2", "--tokens", "8", "--d-model", "64", "--heads", "4", "--vocab", "100",
               "--repeats", "2"),
              gpu=("--layers", "12", "--tokens", "64", "--repeats", "3")),
    # 1 min: GPT-2-small shape, 2 blocks, interp vs transformers vs the bridge, forward and run_with_cache
    Benchmark("forward", ("--layers", "2", "--seqs", "256", "512", "--repeats", "3"),
              ("--seqs", "16", "--layers", "1", "--repeats", "1", "--no-bridge"),
              gpu=("--layers", "12", "--seqs", "1024", "4096", "--repeats", "3")),
    # 0.5 min
    Benchmark("generate", (), ("--layers", "1", "--prompt", "8", "--new", "4", "--repeats", "1", "--no-bridge"),
              gpu=()),
    # 1.5 min: every family, d_model 256, 4 layers, seq 256, interp vs the bridge
    Benchmark("families", (), ("--families", "gpt2", "llama", "--d-model", "64", "--layers", "1", "--vocab", "128",
                               "--n-ctx", "64", "--seq", "16", "--repeats", "1")),
    # 2.5 min: native run_with_cache memory against the bridge, 12-layer GPT-2-small shape
    Benchmark("cache", ("--sizes", "512,1024", "--repeats", "3"),
              ("--sizes", "64", "--layers", "1", "--vocab", "128", "--repeats", "1")),
    # 0.1 min: eager vs sdpa FLOP/s against the matmul peak of the same run. On a GPU, gpu_check.py runs attention
    # and cache itself (their GPU sizes and deadlines are set there), then `run_all --size gpu` for the rest.
    Benchmark("attention", ("--quick",), ("--dry-run",), needs=""),
    # 2.5 min: TopK / ReLU / JumpReLU quality after 2000 steps (or 60 s) each, against PCA
    Benchmark("sae", ("--budget", "60", "--steps", "2000"), ("--archs", "topk", "--budget", "600", "--steps", "20")),
    # 2 min: training tokens/s against SAELens (set SAELENS_PYTHON to a Python with sae-lens; else its rows say so)
    Benchmark("sae_vs_saelens", ("--steps", "300", "--repeats", "3"),
              ("--steps", "4", "--repeats", "1", "--batch", "256", "--max-tokens", "4096")),
    # 1 min: attribution-graph time and memory vs prompt length; transcoder (per-layer, cross-layer) tokens/s
    Benchmark("circuits", ("--threads", "1", "--repeats", "3", "--train-steps", "100"),
              ("--lengths", "8", "--repeats", "1", "--train-steps", "5"),
              gpu=("--device", "cuda", "--repeats", "3", "--train-steps", "200")),
    # 0.5 min: corpus scan on 1 and 2 processes
    Benchmark("scan", (), ("--procs", "1", "--seq-len", "64", "--overlap", "16")),
    # 0.3 min: the SAE feature cards' dashboard parts and the attribution graph's hover contexts, shipped model
    Benchmark("feature_cards", ("--threads", "1"), ("--tokens", "512", "--cards", "2", "--repeats", "1")),
    # 0.2 min: universal-path run_with_cache time and memory against native and the bridge
    Benchmark("universal", (), ("--d-model", "32", "--layers", "1", "--vocab", "64", "--seq", "16", "--repeats", "1")),
    # 3 min: reports and every dashboard page at 10, 250, 500 and 2,000 tokens, each figure's draw time
    Benchmark("report_load", ("--lengths", "10,250,500,2000", "--repeats", "1"),
              ("--lengths", "10", "--repeats", "1", "--pages", "Overview"), needs="chromium"),
    # 0.1 min: EAP and EAP-IG against exact patching of every edge of the shipped model
    Benchmark("edges", ("--repeats", "3"), ("--model", "random", "--layers", "1", "--d-model", "32", "--heads", "2",
                                            "--vocab", "64", "--tokens", "4", "--steps", "2"),
              gpu=("--repeats", "3")),
]
BY_NAME = {b.name: b for b in BENCHMARKS}


def _missing(need: str) -> str | None:
    """Why a benchmark cannot run here, or None."""
    if not need:
        return None
    if need == "chromium":
        from shutil import which

        return None if which("chromium") or Path("/usr/bin/chromium").exists() else "needs chromium"
    import importlib.util

    try:  # interp's hook points are TransformerLens': a GPU image without it runs only the kernel benchmarks
        found = importlib.util.find_spec(need) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"needs {need}, not importable here"


def run_one(bench: Benchmark, size: str, out_dir: Path, timeout: float | None, deadline: float | None = None) -> dict:
    """Run one benchmark in its own process; add the machine record to its JSON; return a status row."""
    out = out_dir / f"{bench.name}.json"
    why = _missing(bench.needs)
    if why:
        return {"benchmark": bench.name, "status": f"skipped ({why})", "seconds": 0.0}
    if deadline is not None:  # a GPU lease ends at a fixed time: what cannot start by then is said, not half-run
        left = deadline - time.time()
        if left < 5:
            return {"benchmark": bench.name, "status": "skipped (out of time: --deadline)", "seconds": 0.0}
        timeout = left if timeout is None else min(timeout, left)
    args = {"toy": bench.toy, "documented": bench.documented, "gpu": bench.gpu}[size]
    if args is None:
        return {"benchmark": bench.name, "status": f"skipped (no {size} size)", "seconds": 0.0}
    # paths as a reader types them from the repository root (the command is printed with the table), not this
    # machine's absolute ones; the benchmark runs with the repository root as its working directory
    out_arg = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    cmd = [sys.executable, str(BENCH / f"{bench.name}.py"), *args, "--out", str(out_arg), "--force"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    before, t0 = machine_state(), time.perf_counter()
    # its own session, so the CPU of every process it starts (a browser's too) is counted as ours
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    with SessionCPU(proc.pid) as session:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"benchmark": bench.name, "status": f"timed out after {timeout:.0f} s", "seconds": timeout}
    after = machine_state()
    # what the session's processes used, where we saw more of it than getrusage did (unreaped browser processes)
    after["own_cpu_s"] = max(after["own_cpu_s"], before["own_cpu_s"] + session.seconds)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        return {"benchmark": bench.name, "status": f"failed (exit {proc.returncode}): {tail[0]}", "seconds": seconds}
    result = json.loads(out.read_text())
    result.setdefault("benchmark", bench.name)
    result["command"] = result.get("command") or " ".join(["python", f"benchmarks/{bench.name}.py", *args])
    # the script's own record (patching keeps one) is the more precise: it brackets only the timed part
    if "machine_before" not in result:
        result.update(contention_record(before, after))
    result["run_all"] = {"size": size, "wall_seconds": round(seconds, 2)}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    return {"benchmark": bench.name, "status": "ok" + (" (contended)" if result["contended"] else ""),
            "seconds": seconds}


def _scalar(v) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def generic_table(result: dict) -> str:
    """A Markdown table of a result's rows (``rows`` or ``results``): every scalar column, as recorded."""
    rows = result.get("rows") or result.get("results") or []
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return "(no rows)"
    cols = [c for c in rows[0] if all(_scalar(r.get(c)) for r in rows)]

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def table_for(name: str, result: dict) -> str:
    """The benchmark's own ``markdown_table`` (imported from its script) or the generic one."""
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001  a script that cannot be imported here (missing optional dependency) still has a table
        module = None
    draw = getattr(module, "markdown_table", None)
    text = draw(result) if draw else generic_table(result)
    if "machine_before" in result and contention_note(result) not in text:
        text = f"`{result.get('command', name)}` — {contention_note(result)}.\n\n{text}"
    return text


def marker(name: str) -> tuple[str, str]:
    return f"<!-- run_all:{name} -->", f"<!-- /run_all:{name} -->"


def render(results_md: Path, json_dir: Path) -> list[str]:
    """Replace each marked table in ``results_md`` by what ``json_dir/NAME.json`` says; return the names done.

    A benchmark with JSON but no markers yet gets a new section appended under the run_all heading."""
    text = results_md.read_text(encoding="utf-8") if results_md.exists() else "# Benchmark results\n"
    done = []
    for bench in BENCHMARKS:
        path = json_dir / f"{bench.name}.json"
        if not path.exists():
            continue
        body = table_for(bench.name, json.loads(path.read_text()))
        start, end = marker(bench.name)
        block = f"{start}\n{body}\n\nJSON: `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`\n{end}"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + f"\n\n### {bench.name} (regenerated by `benchmarks/run_all.py`)\n\n{block}\n"
        done.append(bench.name)
    tmp = results_md.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, results_md)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="benchmarks: " + ", ".join(BY_NAME))
    p.add_argument("--only", default=None, help="comma list of benchmarks (default: all)")
    p.add_argument("--size", choices=("documented", "toy", "gpu"), default="documented")
    p.add_argument("--json-dir", type=Path, default=BENCH / "results" / "run_all",
                   help="where each NAME.json goes (replaced on every run)")
    p.add_argument("--results-md", type=Path, default=BENCH / "RESULTS.md")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: none)")
    p.add_argument("--deadline", type=float, default=None,
                   help="unix time: benchmarks not started by then are skipped, a running one is stopped at it")
    p.add_argument("--render-only", action="store_true", help="only rebuild RESULTS.md's tables from the JSON")
    args = p.parse_args(argv)
    names = [n for n in (args.only or ",".join(BY_NAME)).split(",") if n]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        p.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(BY_NAME)}")
    args.json_dir.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        print(f"{'benchmark':<14} {'seconds':>8}  status", flush=True)
        total = {}
        for name in names:
            row = run_one(BY_NAME[name], args.size, args.json_dir, args.timeout, args.deadline)
            total[name] = row["seconds"]
            print(f"{row['benchmark']:<14} {row['seconds']:8.1f}  {row['status']}", flush=True)
        # the registry's minute estimates are checked against this line
        print(f"{'total':<14} {sum(total.values()):8.1f}  "
              f"({sum(v for k, v in total.items() if k != 'patching'):.1f} s without patching)", flush=True)
    done = render(args.results_md, args.json_dir)
    print(f"{args.results_md}: regenerated {', '.join(done) or 'nothing'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
