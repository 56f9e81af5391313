"""SAE training throughput: interp's trainer vs SAELens' trainer on the same cached activations (tokens/s).

    python benchmarks/sae_vs_saelens.py                                   # SAELens from this interpreter, if importable
    python benchmarks/sae_vs_saelens.py --saelens-python /tmp/venv/bin/python --steps 400 --repeats 3
    SAELENS_PYTHON=/tmp/venv/bin/python python benchmarks/run_all.py --only sae_vs_saelens

The activations of ``--hook`` on the shipped model's training text are gathered once (by interp) and cached to a
safetensors file; both trainers read that file. Each architecture (TopK, ReLU with the L1 penalty weighted by
decoder-row norms) is trained with the same d_in, d_sae (``--expansion`` x d_in), batch, learning rate and
schedule (Adam, warm-up over 1 %, linear decay to 0 over the last 20 %; L1 warm-up over 5 %), inputs rescaled so
that E‖x‖² = d_in, for ``--steps`` steps. Each library keeps its own initialisation and TopK auxiliary loss
(both AuxK, coefficient 1/32, dead after the same number of tokens). The time is the whole training call
(initialisation, the input-scale estimate and every step; loading the activations excluded), so tokens/s =
steps x batch / seconds. Repeats are interleaved (interp, SAELens, interp, SAELens, ...) and the median kept.
Final MSE (summed over d_in, mean over tokens), fraction of variance explained and L0 on the held-out last
10 % of the activations show the two runs reached comparable SAEs.

SAELens is not a dependency of interp (CI does not install it): its side runs in a subprocess with
``--saelens-python`` (default: ``$SAELENS_PYTHON``, else this interpreter where ``sae_lens`` imports; otherwise
its rows say why they were skipped). That subprocess runs this same file with ``--worker``, so nothing here may
import interp at module level.

A transcoder row (interp's per-layer transcoder: ``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out``,
TopK, same sizes) is timed too; SAELens trains no transcoders (it loads them), so that row has no peer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("topk", "relu")
LR = 3e-3  # interp's default for both architectures
L1 = 2.0  # interp's ReLU default (MSE summed over d_in of inputs with E‖x‖² = d_in)
AUX = 1 / 32


@torch.no_grad()
def quality(encode, decode, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """MSE (summed over features, mean over tokens), FVE and L0 of a trained SAE (or transcoder) on ``x``."""
    y = x if y is None else y
    f = encode(x)
    err = y - decode(f)
    return {"mse": float(err.pow(2).sum(-1).mean()), "fve": float(1 - err.pow(2).sum() / (y - y.mean(0)).pow(2).sum()),
            "l0": float((f != 0).float().sum(-1).mean())}


def shuffled_batches(acts: torch.Tensor, batch: int, seed: int):
    """An endless stream of ``batch`` rows: a fresh permutation per pass (what SAELens' store would feed)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(acts.shape[0], generator=g)
        for i in range(0, acts.shape[0] - batch + 1, batch):
            yield acts[perm[i:i + batch]]


# --- SAELens' side (runs in the interpreter that has sae_lens) ------------------------------------------------

def saelens_train(arch: str, acts: torch.Tensor, d_sae: int, k: int, steps: int, batch: int, seed: int):
    """Train with SAELens' own SAETrainer; return (seconds, trained SAE)."""
    from sae_lens import (
        SAETrainer,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig

    d_in = acts.shape[1]
    common = {"d_in": d_in, "d_sae": d_sae, "normalize_activations": "expected_average_only_in"}
    torch.manual_seed(seed)
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=k, aux_loss_coefficient=AUX, **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=L1, l1_warm_up_steps=max(1, steps // 20),
                                                            **common))
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=LR,
                           lr_warm_up_steps=max(1, steps // 100), lr_decay_steps=max(1, steps // 5), lr_end=LR,
                           dead_feature_window=math.ceil(100_000 / batch),  # interp's dead_tokens, in steps
                           n_batches_for_norm_estimate=16)  # interp estimates its scale on 16k rows too
    trainer = SAETrainer(cfg, sae, shuffled_batches(acts, batch, seed))
    t = time.perf_counter()
    sae = trainer.fit()
    return time.perf_counter() - t, sae


def worker(args) -> int:
    """``--worker``: train each architecture with SAELens and print one JSON line per run."""
    import sae_lens

    os.environ.setdefault("TQDM_DISABLE", "1")
    data = load_file(args.worker)
    train, held = data["train"], data["held"]
    for arch in args.archs.split(","):
        seconds, sae = saelens_train(arch, train, args.d_sae, args.k, args.steps, args.batch, args.seed)
        sae.eval()
        print(json.dumps({"arch": arch, "seconds": seconds, "sae_lens": sae_lens.__version__,
                          **quality(sae.encode, sae.decode, held)}), flush=True)
    return 0


def find_saelens(given: str | None) -> tuple[str | None, str]:
    """(the interpreter that imports sae_lens, or None; why / which)."""
    cand = given or os.environ.get("SAELENS_PYTHON") or sys.executable
    if not Path(cand).exists():
        return None, f"--saelens-python: {cand} does not exist"
    probe = subprocess.run([cand, "-c", "import sae_lens; print(sae_lens.__version__)"], capture_output=True,
                           text=True, check=False)
    if probe.returncode != 0:
        return None, (f"sae_lens does not import in {cand} (give --saelens-python PATH or set SAELENS_PYTHON to a "
                      "Python with sae-lens and torch installed)")
    return cand, probe.stdout.strip()


def run_saelens(python: str, cache: Path, args, d_sae: int, k: int) -> list[dict]:
    cmd = [python, str(Path(__file__).resolve()), "--worker", str(cache), "--archs", args.archs,
           "--d-sae", str(d_sae), "--k", str(k), "--steps", str(args.steps), "--batch", str(args.batch),
           "--seed", str(args.seed)]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    env.pop("PYTHONPATH", None)  # the other interpreter's own packages; this repository's interp is not needed
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"SAELens worker failed (exit {proc.returncode}): {tail[0]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


# --- interp's side ----------------------------------------------------------------------------------------------

def interp_train(arch: str, x: torch.Tensor, d_sae: int, k: int, steps: int, batch: int, seed: int,
                 y: torch.Tensor | None = None):
    from interp.analysis.sae import train_sae

    t = time.perf_counter()
    sae = train_sae(x, d_sae, arch, k=k if arch == "topk" else None, steps=steps, batch_size=batch, lr=LR,
                    l1_coefficient=L1 if arch == "relu" else None, aux_coefficient=AUX, seed=seed, progress=False,
                    target=y)
    return time.perf_counter() - t, sae


def gather(args) -> dict:
    """Activations of the SAE hook and of the transcoder's in/out hooks on the training text, split 90/10."""
    from interp.analysis.sae import model_activations
    from interp.report.inputs import load_model
    from interp.report.sae import documents, read_corpus

    model = load_model(args.model)
    docs = documents(model, read_corpus(model, None, "train", 0.1))
    layer = args.transcoder_layer
    hooks = {"sae": args.hook, "tc_in": f"blocks.{layer}.ln2.hook_normalized", "tc_out": f"blocks.{layer}.hook_mlp_out"}
    acts = {name: model_activations(model, hook, docs, max_tokens=args.max_tokens) for name, hook in hooks.items()
            if args.transcoder or name == "sae"}
    n_train = int(0.9 * acts["sae"].shape[0])
    return {"model": model.cfg.name, "hooks": hooks, "n_train": n_train, "n_held": acts["sae"].shape[0] - n_train,
            **{f"{name}_train": a[:n_train].contiguous() for name, a in acts.items()},
            **{f"{name}_held": a[n_train:].contiguous() for name, a in acts.items()}}


def run(args) -> dict:
    data = gather(args)
    d_in = data["sae_train"].shape[1]
    d_sae, k = args.expansion * d_in, args.k or max(1, d_in // 8)
    python, why = find_saelens(args.saelens_python)
    samples: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "activations.safetensors"
        save_file({"train": data["sae_train"], "held": data["sae_held"]}, str(cache))
        for _ in range(args.repeats):  # interleaved: interp, SAELens, interp, SAELens ...
            for arch in args.archs.split(","):
                seconds, sae = interp_train(arch, data["sae_train"], d_sae, k, args.steps, args.batch, args.seed)
                samples.setdefault(("interp", arch), []).append(
                    {"seconds": seconds, **quality(sae.encode, sae.decode, data["sae_held"])})
            if args.transcoder:
                seconds, tc = interp_train("topk", data["tc_in_train"], d_sae, k, args.steps, args.batch, args.seed,
                                           y=data["tc_out_train"])
                samples.setdefault(("interp", "transcoder topk"), []).append(
                    {"seconds": seconds, **quality(tc.encode, lambda f, tc=tc: tc.decode(f) + tc.skip(
                        data["tc_in_held"]), data["tc_in_held"], data["tc_out_held"])})
            if python:
                for r in run_saelens(python, cache, args, d_sae, k):
                    samples.setdefault(("SAELens", r.pop("arch")), []).append(r)
    rows = []
    tokens = args.steps * args.batch
    for arch in [*args.archs.split(","), *(["transcoder topk"] if args.transcoder else [])]:
        row = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "k": k if "topk" in arch else None,
               "batch": args.batch, "lr": LR, "steps": args.steps, "tokens": tokens}
        for lib in ("interp", "SAELens"):
            runs = samples.get((lib, arch))
            if not runs:
                row[f"{lib}_skipped"] = ("SAELens trains no transcoders" if "transcoder" in arch
                                         else why) if lib == "SAELens" else "not run"
                continue
            med = statistics.median(r["seconds"] for r in runs)
            last = runs[-1]
            row.update({f"{lib}_seconds": med, f"{lib}_tokens_per_s": tokens / med,
                        f"{lib}_seconds_all": [r["seconds"] for r in runs],
                        **{f"{lib}_{m}": last[m] for m in ("mse", "fve", "l0")}})
        if row.get("SAELens_seconds"):
            row["speedup"] = row["SAELens_seconds"] / row["interp_seconds"]
        rows.append(row)
    return {"benchmark": "sae_vs_saelens", "model": data["model"], "hooks": data["hooks"],
            "train_tokens": data["n_train"], "held_tokens": data["n_held"], "threads": torch.get_num_threads(),
            "torch": torch.__version__, "saelens": why if python else None, "saelens_python": python,
            "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}


def _f(v, spec):
    return "–" if v is None else format(v, spec)


def markdown_table(result: dict) -> str:
    tc = any("transcoder" in r["architecture"] for r in result["rows"])
    head = (f"{result['model']}, `{result['hooks']['sae']}`"
            + (f" (transcoder: `{result['hooks']['tc_in']}` → `{result['hooks']['tc_out']}`)" if tc else "")
            + f", {result['train_tokens']} training tokens cached once, "
            f"{result['threads']} torch threads, median of {result['repeats']} interleaved runs; "
            f"SAELens {result['saelens'] or '(not run)'}; {result['date']}.")
    lines = [head, "",
             ("| architecture | d_in → d_sae | k | batch | steps | interp tokens/s | SAELens tokens/s | "
              "interp / SAELens | interp MSE / FVE / L0 | SAELens MSE / FVE / L0 |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        def q(lib, r=r):
            if f"{lib}_mse" not in r:
                return r.get(f"{lib}_skipped") or "–"
            return f"{r[f'{lib}_mse']:.4g} / {r[f'{lib}_fve']:.3f} / {r[f'{lib}_l0']:.1f}"

        lines.append(f"| {r['architecture']} | {r['d_in']} → {r['d_sae']} | {r['k'] or '–'} | {r['batch']} | "
                     f"{r['steps']} | {_f(r.get('interp_tokens_per_s'), ',.0f')} | "
                     f"{_f(r.get('SAELens_tokens_per_s'), ',.0f')} | "
                     f"{_f(r.get('speedup'), '.2f') + ('×' if r.get('speedup') else '')} | {q('interp')} | "
                     f"{q('SAELens')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="zoo name or folder (default: the shipped model)")
    p.add_argument("--hook", default="blocks.0.hook_resid_post")
    p.add_argument("--transcoder-layer", type=int, default=0)
    p.add_argument("--no-transcoder", dest="transcoder", action="store_false", help="skip the transcoder row")
    p.add_argument("--archs", default=",".join(ARCHS), help="comma list of topk, relu")
    p.add_argument("--expansion", type=int, default=8, help="d_sae = expansion x d_in")
    p.add_argument("--k", type=int, default=None, help="TopK's k (default d_in / 8, interp's default)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=None, help="activations to gather (default: the whole text)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per trainer (median kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: torch's)")
    p.add_argument("--saelens-python", default=None, help="a Python with sae-lens (default: $SAELENS_PYTHON, "
                                                          "else this one if sae_lens imports)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--d-sae", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    bad = sorted(set(args.archs.split(",")) - set(ARCHS))
    if bad:
        p.error(f"--archs: choose from {list(ARCHS)}; given {bad}")
    for name in ("steps", "batch", "repeats", "expansion"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be at least 1; given {getattr(args, name)}")
    sys.path.insert(0, str(ROOT))
    from interp.io import write_benchmark_json

    if args.out is not None and args.out.exists() and not args.force:
        p.error(f"--out: {args.out} exists; pass --force to replace it")
    result = run(args)
    print(markdown_table(result))
    out = write_benchmark_json(result, args.out, "sae-vs-saelens-cpu", args.force)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
