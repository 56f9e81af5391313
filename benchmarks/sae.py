"""Sparse autoencoders on the shipped model: what each architecture reaches within a time budget.

    python benchmarks/sae.py                               # topk, relu, jumprelu; 540 s each; writes a NEW file
    python benchmarks/sae.py --archs topk --budget 120 --out benchmarks/results/sae-quick.json
    python benchmarks/sae.py --archs relu,relu+resample --budget 150 --steps 1000   # resampling on and off

For each architecture, ``train_sae`` runs with its defaults (d_sae = 8 x d_model, batch 1024) on the
activations of ``--hook`` over the first 90 % of the model folder's ``heldout.txt`` for ``--steps`` steps or
``--budget`` seconds of training, whichever comes first (activation gathering not included; the learning-rate
schedule follows whichever runs out first), and is evaluated on the last 10 %: L0, fraction of
variance explained, CE loss recovered (zero-ablation baseline), dead and dense latents. ``relu+resample`` is
ReLU with Anthropic's dead-latent resampling every ``--resample-every`` steps (same seed and data as ``relu``).

The peer, measured in the same run on the same held-out activations: the dense rank-L reconstruction by
the top-L principal components of the training activations (L = the SAE's mean L0, rounded up), which
uses as many numbers per token as the SAE's active latents but not a sparse code. ``fve_vs_pca`` and
``ce_rec_vs_pca`` are the SAE's value divided by the peer's. Prints a table and writes JSON (device, dtype,
shapes, threads, timings) atomically to a new file (``--force`` to overwrite).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forward import _cpu_name, _loadavg  # benchmarks/ is this script's folder

from interp.io import write_benchmark_json

BATCH = 1024  # activations a training step (train_sae's default)


@torch.no_grad()
def pca_peer(model, hook: str, train_acts: torch.Tensor, held_docs, rank: int) -> dict:
    """FVE and CE recovered of projecting the hook onto the top-``rank`` principal components (plus mean)."""
    from interp.analysis.sae.source import token_batches

    mean = train_acts.double().mean(0)
    _, _, v = torch.linalg.svd(train_acts.double() - mean, full_matrices=False)
    basis = v[:rank]  # [rank, d]

    def project(act, hook=None):
        x = act.double() - mean
        return ((x @ basis.T) @ basis + mean).to(act.dtype)

    resid = total = 0.0
    ce = [0.0, 0.0, 0.0]
    n_pred = 0
    for toks in token_batches(model, held_docs, None, 8):
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n == hook)
        x = cache[hook].reshape(-1, cache[hook].shape[-1]).double()
        resid += float((x - project(x)).pow(2).sum())
        total += float((x - mean).pow(2).sum())  # centred on the training mean; the SAE's FVE uses the eval mean
        for i, fn in enumerate((None, project, lambda a, hook=None: torch.zeros_like(a))):
            logits = model.run_with_hooks(toks, fwd_hooks=[(hook, fn)] if fn else []).double()
            logp = torch.log_softmax(logits[:, :-1], -1)
            ce[i] += float(-logp.gather(-1, toks[:, 1:, None]).sum())
        n_pred += toks.shape[0] * (toks.shape[1] - 1)
    clean, proj, zero = (c / n_pred for c in ce)
    return {"rank": rank, "fve": 1 - resid / total, "ce": proj, "ce_loss_recovered": (zero - proj) / (zero - clean)}


def markdown_table(result: dict) -> str:
    """RESULTS.md's table (benchmarks/run_all.py): quality per architecture within the budget, against PCA."""
    lines = [(f"{result['model']}, `{result['hook']}`, d_in {result['d_in']} → d_sae {result['d_sae']}, "
             f"{result['train_tokens']} training tokens; {result['device']}, {result['threads']} threads; "
             f"{result['planned_steps']} steps or {result['budget_s']:.0f} s; {result['date']}."), "",
             "| architecture | train s | steps | L0 | FVE (PCA) | CE loss recovered (PCA) | dead | dense |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['architecture']} | {r['train_s']:.1f} | {r['steps']} | {r['l0']:.1f} | "
                     f"{r['fve']:.3f} ({r['pca_fve']:.3f}) | {r['ce_loss_recovered']:.3f} "
                     f"({r['pca_ce_loss_recovered']:.3f}) | {r['dead_frac']:.3f} | {r['dense_frac']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="zoo name or folder (default: the shipped model)")
    p.add_argument("--hook", default="blocks.0.hook_resid_post")
    p.add_argument("--archs", default="topk,relu,jumprelu", help="comma-separated; relu+resample: ReLU with "
                                                                   "dead-latent resampling")
    p.add_argument("--resample-every", type=int, default=250, help="relu+resample: steps between resamplings")
    p.add_argument("--budget", type=float, default=540.0, help="training seconds per architecture (default 540)")
    p.add_argument("--steps", type=int, default=3000, help="planned steps per architecture (default 3000; the "
                                                           "schedule ends at --budget if that comes first)")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON path (default: a new benchmarks/results/sae-DEVICE-*.json)")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from interp.analysis.sae import evaluate_sae, model_activations, train_sae
    from interp.report.inputs import load_model
    from interp.report.sae import documents, read_corpus

    model = load_model(args.model, device=args.device)
    train_docs = documents(model, read_corpus(model, None, "train", 0.1))
    held_docs = documents(model, read_corpus(model, None, "eval", 0.1))
    t0 = time.perf_counter()
    acts = model_activations(model, args.hook, train_docs)
    gather_s = time.perf_counter() - t0
    d_sae = args.expansion * acts.shape[-1]
    rows = []
    for arch in args.archs.split(","):
        base, _, variant = arch.partition("+")
        extra = {"resample_dead_every": args.resample_every} if variant == "resample" else {}
        t0 = time.perf_counter()
        sae = train_sae(acts.to(args.device), d_sae, base, steps=args.steps, time_budget=args.budget, device=args.device,
                        batch_size=BATCH, metadata={"hook_name": args.hook}, progress=False, **extra)
        train_s = time.perf_counter() - t0
        ev = evaluate_sae(model, sae, held_docs)
        peer = pca_peer(model, args.hook, acts.cpu(), held_docs, max(1, math.ceil(ev.metrics["l0"])))
        m = ev.metrics
        rows.append({"architecture": arch, "train_s": train_s, "steps": int(sae.steps_done),
                     # every step, not the last logged one: a budget can end the run before the first log
                     "tokens_seen": int(sae.steps_done * BATCH), "stopped_at_budget": bool(sae.stopped_early),
                     "resampled": int(sae.resamples.resampled.sum()),
                     **{k: m[k] for k in ("l0", "fve", "cosine", "ce_clean", "ce_sae", "ce_zero_ablation",
                                          "ce_loss_recovered", "dead_frac", "dense_frac")},
                     "pca_rank": peer["rank"], "pca_fve": peer["fve"], "pca_ce_loss_recovered": peer["ce_loss_recovered"],
                     "fve_vs_pca": m["fve"] / peer["fve"],
                     "ce_rec_vs_pca": m["ce_loss_recovered"] / peer["ce_loss_recovered"]})
        r = rows[-1]
        print(f"{arch:9s} {r['train_s']:6.0f}s {r['steps']:6d} steps  L0 {r['l0']:6.1f}  FVE {r['fve']:.3f} "
              f"(PCA-{r['pca_rank']} {r['pca_fve']:.3f})  CE rec {r['ce_loss_recovered']:.3f} "
              f"(PCA {r['pca_ce_loss_recovered']:.3f})  dead {r['dead_frac']:.3f}  dense {r['dense_frac']:.3f}",
              flush=True)
    result = {"benchmark": "sae", "device": args.device, "cpu": _cpu_name(),
              "threads": torch.get_num_threads(), "dtype": "float32", "model": model.cfg.name, "hook": args.hook,
              "d_in": int(acts.shape[-1]), "d_sae": d_sae, "train_tokens": int(acts.shape[0]),
              "gather_activations_s": gather_s, "budget_s": args.budget, "planned_steps": args.steps, "rows": rows,
              "loadavg": _loadavg(), "date": time.strftime("%Y-%m-%d")}
    out = write_benchmark_json(result, args.out, f"sae-{args.device.split(':')[0]}", args.force)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
