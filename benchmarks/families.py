"""Load time, forward and run_with_cache time and peak memory per family: interp vs TransformerLens' bridge.

One mid-size config per family (the family's own `transformers` config class, as in tests/test_families.py,
scaled up: d_model ``--d-model``, ``--layers`` blocks, vocabulary ``--vocab``), random weights, the same
weights for both. For each family:

* ``load``    — interp.load(hf_model) (config + weight conversion) vs TransformerBridge.boot_transformers
  (wrapping the same HF model; offline, from a local config folder);
* ``forward`` — logits of a [batch, seq] batch: interp (default backend) vs the bridge;
* ``cache``   — run_with_cache() of every hook: interp (lazy patterns, the default) vs the bridge.

Time: median of ``--repeats`` runs after a warm-up (load: one run), wall and process CPU seconds (on a shared
CPU the CPU time is the steadier number). Peak memory of the cache call: extra resident memory at its peak
(helpers of benchmarks/forward.py). Ratios are bridge / interp, measured in the same process and run.
A family the bridge cannot load or run gets its error in the table; interp's numbers stand alone then.

Usage (from the repository root)::

    .venv/bin/python benchmarks/families.py                       # every family, CPU
    .venv/bin/python benchmarks/families.py --families llama3 gemma2 --repeats 5

Writes a NEW JSON file (``--out``; default benchmarks/results/families-<device>-<UTC time>.json) and refuses
to replace an existing one without ``--force``; prints a table (``--markdown`` for RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from forward import _cpu_name, measure_peak_mib, time_call, word_level_tokenizer_dir

# one case per family from the test matrix (the variants stay in the tests)
DEFAULT = ["gpt2", "gpt_neo", "gptj", "neox", "opt", "bloom", "llama3", "mistral", "mixtral", "qwen2", "qwen2_moe",
           "qwen3", "gemma", "gemma2", "gemma3", "phi", "phi3", "stablelm", "olmo", "olmo2", "falcon_40b", "codegen",
           "cohere", "granite", "smollm3",
           # issue 20's native families
           "ministral3", "seed_oss", "starcoder2", "olmo3", "exaone4", "cohere2", "glm4", "openai_gpt", "xglm", "nanochat",
           "olmoe", "granite_moe", "phimoe", "gpt_oss"]


def scaled_config(case: str, d_model: int, layers: int, vocab: int, n_ctx: int):
    """The test matrix's config of ``case``, scaled to a mid-size model (4 heads of d_model/4)."""
    import transformers
    from test_families import CASES

    cls, kwargs = CASES[case]
    grow = d_model / 32  # the test configs have d_model 32
    out = dict(kwargs)
    for key, value in kwargs.items():
        if key in ("hidden_size", "n_embd", "word_embed_proj_dim"):
            out[key] = d_model
        elif key == "d_model":  # MPT's and XGLM's spelling; MPT's case has 6 heads
            out[key] = d_model - d_model % kwargs.get("n_heads", kwargs.get("attention_heads", 1))
        elif key in ("intermediate_size", "ffn_dim", "moe_intermediate_size", "shared_expert_intermediate_size"):
            out[key] = int(value * grow)
        elif key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            out[key] = layers
        elif key == "vocab_size":
            out[key] = vocab
        elif key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
            out[key] = n_ctx
        elif key in ("head_dim", "rotary_dim", "query_pre_attn_scalar"):
            out[key] = int(value * grow)
    if "attention_types" in out:
        out["attention_types"] = [[["global", "local"], layers // 2]]
    for key in ("layer_types", "no_rope_layers"):
        if key in out:
            out[key] = (list(out[key]) * layers)[:layers]
    return getattr(transformers, cls)(**out)


def _median(fn, device, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    runs = [time_call(fn, device) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def bench_family(case: str, args, workdir: Path, tok_dir: Path) -> list[dict]:
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    import interp

    device = torch.device("cpu")
    config = scaled_config(case, args.d_model, args.layers, args.vocab, args.n_ctx)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.config.architectures = [type(hf).__name__]
    tokens = torch.randint(3, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    n_params = sum(p.numel() for p in hf.parameters())
    rows = []

    def row(workload, impl, wall, cpu, peak=None, error=None):
        rows.append({"family": case, "class": type(hf).__name__, "params_M": round(n_params / 1e6, 1),
                     "workload": workload, "impl": impl, "wall_s": wall, "cpu_s": cpu, "peak_mib": peak,
                     "error": error})

    with torch.inference_mode():
        wall, cpu = time.perf_counter(), time.process_time()
        ours = interp.load(hf)
        row("load", "interp", time.perf_counter() - wall, time.process_time() - cpu)
        folder = workdir / case
        hf.config.save_pretrained(folder)
        bridge, error = None, None
        try:
            tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
            wall, cpu = time.perf_counter(), time.process_time()
            bridge = TransformerBridge.boot_transformers(str(folder), hf_model=copy.deepcopy(hf), tokenizer=tok,
                                                         device="cpu")
            row("load", "TL bridge", time.perf_counter() - wall, time.process_time() - cpu)
        except Exception as e:  # noqa: BLE001 -- report why, and still benchmark interp
            error = f"{type(e).__name__}: {e}"[:160]
            row("load", "TL bridge", None, None, error=error)
        impls = [("interp", ours)] + ([("TL bridge", bridge)] if bridge is not None else [])
        for name, model in impls:
            for workload, fn in (("forward", lambda m=model: m(tokens)), ("cache", lambda m=model: m.run_with_cache(tokens))):
                try:
                    wall, cpu = _median(fn, device, args.repeats)
                    peak = measure_peak_mib(fn, device) if workload == "cache" else None
                    row(workload, name, wall, cpu, peak)
                except Exception as e:  # noqa: BLE001
                    row(workload, name, None, None, error=f"{type(e).__name__}: {e}"[:160])
        if bridge is None:
            for workload in ("forward", "cache"):
                row(workload, "TL bridge", None, None, error=error)
    base = {(r["workload"]): r for r in rows if r["impl"] == "interp"}
    for r in rows:
        b = base[r["workload"]]
        for key, ratio in (("cpu_s", "cpu_ratio"), ("peak_mib", "mem_ratio")):
            ok = r[key] is not None and b[key]
            r[ratio] = round(r[key] / b[key], 2) if ok else None
    return rows


COLUMNS = ("family", "params M", "workload", "implementation", "wall ms", "CPU ms", "CPU vs interp", "peak MiB",
           "memory vs interp")


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _cells(r: dict) -> list[str]:
    if r["error"]:
        return [r["family"], str(r["params_M"]), r["workload"], r["impl"], "error: " + r["error"][:60], "", "", "", ""]
    return [r["family"], str(r["params_M"]), r["workload"], r["impl"], _fmt(r["wall_s"] * 1e3, ".1f"),
            _fmt(r["cpu_s"] * 1e3, ".1f"), _fmt(r["cpu_ratio"], ".2f"), _fmt(r["peak_mib"], ".1f"),
            _fmt(r["mem_ratio"], ".2f")]


def markdown_table(result: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c in ("family", "workload", "implementation")
                                                           else "---:" for c in COLUMNS) + "|"]
    return "\n".join(lines + ["| " + " | ".join(_cells(r)) + " |" for r in result["results"]])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=DEFAULT, help=f"cases (default: {' '.join(DEFAULT)})")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row, after one warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, help="JSON path (default: a new file under benchmarks/results/)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = p.parse_args(argv)
    from test_families import CASES

    unknown = [f for f in args.families if f not in CASES]
    if unknown:
        p.error(f"--families: unknown {unknown}; choose from {sorted(CASES)}")
    for name in ("d_model", "layers", "vocab", "n_ctx", "seq", "batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.seq > args.n_ctx:
        p.error(f"--seq ({args.seq}) must be <= --n-ctx ({args.n_ctx})")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "benchmarks" / "results" / f"families-cpu-{stamp}.json"
    if out.exists() and not args.force:
        p.error(f"{out} exists; pass --force to replace it")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = word_level_tokenizer_dir(args.vocab, Path(tmp) / "tok")
        for case in args.families:
            print(f"{case} ...", flush=True)
            try:
                rows += bench_family(case, args, Path(tmp), tok_dir)
            except Exception as e:  # noqa: BLE001 -- one family's failure must not lose the others' numbers
                rows.append({"family": case, "class": "?", "params_M": None, "workload": "load", "impl": "interp",
                             "wall_s": None, "cpu_s": None, "peak_mib": None, "cpu_ratio": None, "mem_ratio": None,
                             "error": f"{type(e).__name__}: {e}"[:160]})
    result = {"benchmark": "families", "date": stamp, "device": "cpu", "device_name": _cpu_name(),
              "dtype": "float32", "threads": args.threads, "repeats": args.repeats,
              "shape": {"d_model": args.d_model, "n_layers": args.layers, "d_vocab": args.vocab, "batch": args.batch,
                        "seq": args.seq, "n_heads": 4},
              "torch": torch.__version__, "results": rows}
    from interp.io import atomic_write_text

    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(markdown_table(result) if args.markdown else "\n".join("  ".join(_cells(r)) for r in rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
