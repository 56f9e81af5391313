"""Every benchmark, at its documented size, in one command; RESULTS.md's tables regenerated from the JSON.

    python benchmarks/run_all.py                      # every benchmark at its documented size (hours on a CPU)
    python benchmarks/run_all.py --only patching,generate
    python benchmarks/run_all.py --size toy           # seconds each: checks the machinery, not the machine
    python benchmarks/run_all.py --render-only        # rebuild RESULTS.md's tables from the JSON already there

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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from machine import contention_note, contention_record, machine_state


@dataclass(frozen=True)
class Benchmark:
    name: str
    documented: tuple[str, ...]  # the size RESULTS.md quotes
    toy: tuple[str, ...]  # seconds on a CPU: exercises every code path of the script
    needs: str = ""  # a module or program without which the benchmark is skipped, with this said


BENCHMARKS = [
    Benchmark("patching", ("--layers", "12", "--tokens", "32", "--repeats", "3"),
              ("--layers", "2", "--tokens", "8", "--d-model", "64", "--heads", "4", "--vocab", "100",
               "--repeats", "2")),
    Benchmark("forward", (), ("--seqs", "16", "--layers", "1", "--repeats", "1", "--no-bridge")),
    Benchmark("generate", (), ("--layers", "1", "--prompt", "8", "--new", "4", "--repeats", "1", "--no-bridge")),
    Benchmark("families", (), ("--families", "gpt2", "llama", "--d-model", "64", "--layers", "1", "--vocab", "128",
                               "--n-ctx", "64", "--seq", "16", "--repeats", "1")),
    Benchmark("cache", (), ("--sizes", "64", "--layers", "1", "--vocab", "128", "--repeats", "1")),
    Benchmark("attention", ("--quick",), ("--dry-run",)),
    Benchmark("sae", (), ("--archs", "topk", "--budget", "5", "--steps", "20")),
    Benchmark("circuits", ("--threads", "1", "--repeats", "3", "--train-steps", "100"),
              ("--lengths", "8", "--repeats", "1", "--train-steps", "5")),
    Benchmark("scan", (), ("--procs", "1", "--seq-len", "64", "--overlap", "16")),
    Benchmark("universal", (), ("--d-model", "32", "--layers", "1", "--vocab", "64", "--seq", "16", "--repeats", "1")),
    Benchmark("report_load", (), ("--lengths", "10", "--repeats", "1", "--pages", "Overview"), needs="chromium"),
    Benchmark("edges", ("--repeats", "3"), ("--model", "random", "--layers", "1", "--d-model", "32", "--heads", "2",
                                            "--vocab", "64", "--tokens", "4", "--steps", "2")),
]
BY_NAME = {b.name: b for b in BENCHMARKS}


def _missing(need: str) -> str | None:
    """Why a benchmark cannot run here, or None."""
    if need == "chromium":
        from shutil import which

        return None if which("chromium") or Path("/usr/bin/chromium").exists() else "needs chromium"
    return None


def run_one(bench: Benchmark, size: str, out_dir: Path, timeout: float | None) -> dict:
    """Run one benchmark in its own process; add the machine record to its JSON; return a status row."""
    out = out_dir / f"{bench.name}.json"
    why = _missing(bench.needs)
    if why:
        return {"benchmark": bench.name, "status": f"skipped ({why})", "seconds": 0.0}
    args = bench.toy if size == "toy" else bench.documented
    # paths as a reader types them from the repository root (the command is printed with the table), not this
    # machine's absolute ones; the benchmark runs with the repository root as its working directory
    out_arg = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    cmd = [sys.executable, str(BENCH / f"{bench.name}.py"), *args, "--out", str(out_arg), "--force"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    before, t0 = machine_state(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"benchmark": bench.name, "status": f"timed out after {timeout:.0f} s", "seconds": timeout}
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"benchmark": bench.name, "status": f"failed (exit {proc.returncode}): {tail[0]}", "seconds": seconds}
    result = json.loads(out.read_text())
    result.setdefault("benchmark", bench.name)
    result["command"] = result.get("command") or "python benchmarks/{}.py {}".format(bench.name, " ".join(args))
    # the script's own record (patching keeps one) is the more precise: it brackets only the timed part
    if "machine_before" not in result:
        result.update(contention_record(before, machine_state()))
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
    p.add_argument("--size", choices=("documented", "toy"), default="documented")
    p.add_argument("--json-dir", type=Path, default=BENCH / "results" / "run_all",
                   help="where each NAME.json goes (replaced on every run)")
    p.add_argument("--results-md", type=Path, default=BENCH / "RESULTS.md")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: none)")
    p.add_argument("--render-only", action="store_true", help="only rebuild RESULTS.md's tables from the JSON")
    args = p.parse_args(argv)
    names = [n for n in (args.only or ",".join(BY_NAME)).split(",") if n]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        p.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(BY_NAME)}")
    args.json_dir.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        print(f"{'benchmark':<12} {'seconds':>8}  status", flush=True)
        for name in names:
            row = run_one(BY_NAME[name], args.size, args.json_dir, args.timeout)
            print(f"{row['benchmark']:<12} {row['seconds']:8.1f}  {row['status']}", flush=True)
    done = render(args.results_md, args.json_dir)
    print(f"{args.results_md}: regenerated {', '.join(done) or 'nothing'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
