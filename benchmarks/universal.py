"""run_with_cache on one Llama-shaped model: interp's universal path vs its native path vs TransformerLens' bridge.

One randomly initialised `transformers` Llama (``--d-model``, ``--layers``, 4 heads of d_model/4, GQA 2 key/value
heads, ``--vocab``), the same weights for all three:

* ``native``    — interp.load(hf) (weights converted into the HookedDecoder; lazy patterns, the default);
* ``universal`` — interp.load(hf, path="universal") (the HF modules wrapped; every hooked layer's pattern eager);
* ``TL bridge`` — TransformerBridge.boot_transformers on a copy of the HF model (offline, local config folder).

For each: ``forward`` (logits) and ``cache`` (run_with_cache of every hook): median wall and process-CPU seconds of
``--repeats`` runs after a warm-up, and the extra resident memory at the cache call's peak (benchmarks/forward.py's
helpers). Ratios are against ``native``, measured in the same process and run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/universal.py                        # d_model 256, 4 layers, seq 256, CPU
    .venv/bin/python benchmarks/universal.py --seq 512 --repeats 5

Writes a NEW JSON file (``--out``; default benchmarks/results/universal-cpu-<UTC time>.json; ``--force`` to
replace one) and prints a table.
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
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from forward import _cpu_name, _loadavg, measure_peak_mib, time_call, word_level_tokenizer_dir


def _median(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    runs = [time_call(fn, torch.device("cpu")) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def build(args, workdir: Path) -> dict:
    import transformers

    import interp

    cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=4 * args.d_model,
                                   num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=max(args.seq, 128))
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.config.architectures = [type(hf).__name__]
    models = {"native": interp.load(copy.deepcopy(hf)), "universal": interp.load(copy.deepcopy(hf), path="universal")}
    try:
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        folder = workdir / "bridge"
        hf.config.save_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(word_level_tokenizer_dir(args.vocab, workdir / "tok"))
        models["TL bridge"] = TransformerBridge.boot_transformers(str(folder), hf_model=copy.deepcopy(hf),
                                                                  tokenizer=tok, device="cpu").eval()
    except Exception as e:  # noqa: BLE001 -- report why, and still benchmark interp
        models["TL bridge"] = f"{type(e).__name__}: {e}"[:200]
    return models


def run(args) -> dict:
    tokens = torch.randint(3, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        models = build(args, Path(tmp))
        reference = models["native"](tokens)
        for impl, model in models.items():
            if isinstance(model, str):
                rows += [{"impl": impl, "workload": w, "error": model} for w in ("forward", "cache")]
                continue
            err = float((model(tokens) - reference).abs().max())
            for workload, fn in (("forward", lambda m=model: m(tokens)), ("cache", lambda m=model: m.run_with_cache(tokens))):
                wall, cpu = _median(fn, args.repeats)
                peak = measure_peak_mib(fn, torch.device("cpu")) if workload == "cache" else None
                rows.append({"impl": impl, "workload": workload, "wall_s": wall, "cpu_s": cpu, "peak_mib": peak,
                             "max_abs_logit_diff_vs_native": err})
    base = {r["workload"]: r for r in rows if r["impl"] == "native"}
    for r in rows:
        if r.get("cpu_s") is not None:
            r["cpu_vs_native"] = r["cpu_s"] / base[r["workload"]]["cpu_s"]
            if r.get("peak_mib") and base[r["workload"]].get("peak_mib"):
                r["peak_vs_native"] = r["peak_mib"] / base[r["workload"]]["peak_mib"]
    return {"benchmark": "universal", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": _cpu_name(), "threads": torch.get_num_threads(), "loadavg": _loadavg(),
            "torch": torch.__version__, "args": vars(args), "rows": rows}


def print_table(result: dict) -> None:
    a = result["args"]
    print(f"run_with_cache, Llama-shaped d_model={a['d_model']} layers={a['layers']} vocab={a['vocab']} "
          f"batch={a['batch']} seq={a['seq']}; {result['device']}, {result['threads']} threads, "
          f"load average {result['loadavg']}; medians of {a['repeats']}")
    print(f"{'impl':<10} {'workload':<8} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'cpu/native':>10} {'peak/native':>11}")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['impl']:<10} {r['workload']:<8} error: {r['error']}")
            continue
        def f(x, spec):
            return "-" if x is None else format(x, spec)

        print(f"{r['impl']:<10} {r['workload']:<8} {f(r['wall_s'], '8.3f')} {f(r['cpu_s'], '8.3f')} "
              f"{f(r['peak_mib'], '9.1f')} {f(r.get('cpu_vs_native'), '10.2f')} {f(r.get('peak_vs_native'), '11.2f')}")


def markdown_table(result: dict) -> str:
    """RESULTS.md's table: each path's time and the cache call's peak memory, against native and the bridge."""
    a = result["args"]
    bridge = {r["workload"]: r for r in result["rows"] if r["impl"] == "TL bridge" and r.get("peak_mib")}
    lines = [(f"run_with_cache on one Llama-shaped model (d_model {a['d_model']}, {a['layers']} layers, vocab "
             f"{a['vocab']}, batch {a['batch']}, seq {a['seq']}); {result['device']}, {result['threads']} threads; "
             f"medians of {a['repeats']} after a warm-up; peak: extra resident memory of the cache call."), "",
             ("| path | workload | wall s | CPU s | CPU vs native | peak MiB | peak vs native | peak vs bridge | "
             "max abs logit diff vs native |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def f(x, spec):
        return "–" if x is None else format(x, spec)

    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['workload']} | {r['error']} | | | | | | |")
            continue
        b = bridge.get(r["workload"])
        vs_bridge = r["peak_mib"] / b["peak_mib"] if b and r.get("peak_mib") else None
        lines.append(f"| {r['impl']} | {r['workload']} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | "
                     f"{f(r.get('cpu_vs_native'), '.2f')} | {f(r['peak_mib'], '.1f')} | "
                     f"{f(r.get('peak_vs_native'), '.2f')} | {f(vs_bridge, '.2f')} | "
                     f"{r['max_abs_logit_diff_vs_native']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or ROOT / "benchmarks" / "results" / f"universal-cpu-{stamp}.json"
    if out.exists() and not args.force:
        print(f"--out: {out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    result = run(args)
    print_table(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(out)  # atomic: a reader never sees half a file
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
