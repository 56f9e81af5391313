"""``interp sae train | eval | features``: sparse autoencoders from the command line.

Presentation only: each command parses its options, calls ``interp.analysis.sae`` and prints tables (rich,
through ``interp.report.probes.print_tables``) or writes ``--json``. The default corpus is the model
folder's ``heldout.txt`` (the shipped model has one): ``train`` uses its first 90 % (``--eval-fraction``)
and evaluates on the rest; ``eval`` and ``features`` read the same held-out tail.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from interp.argtypes import OneLineParser, nonnegative_float, positive_int, seed
from interp.errors import InterpError

__all__ = ["build_parser", "documents", "main", "read_corpus"]

_RAW = argparse.RawDescriptionHelpFormatter
DEFAULT_HOOK = "blocks.0.hook_resid_post"


def read_corpus(model, path: str | None, part: str, eval_fraction: float) -> str:
    """The text of ``path`` (default: the model folder's ``heldout.txt``): its ``train`` head or ``eval`` tail
    (split at the line break nearest ``1 - eval_fraction`` of the characters), or ``all`` of it."""
    if path is None:
        folder = (getattr(model.cfg, "source", None) or {}).get("path")
        cand = Path(folder) / "heldout.txt" if folder else None
        if cand is None or not cand.is_file():
            raise InterpError("--corpus: this model folder has no heldout.txt; give a text file with --corpus FILE")
        path = str(cand)
    from interp.data.corpus import read_text_file
    from interp.io import check_input_path

    text = read_text_file(check_input_path(path, "--corpus", folder=False), "--corpus")
    if not 0.0 <= eval_fraction < 1.0:
        raise InterpError(f"--eval-fraction: must be in [0, 1); given {eval_fraction}")
    if part == "all" or eval_fraction == 0.0:
        return text
    cut = int(len(text) * (1.0 - eval_fraction))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    out = text[:cut] if part == "train" else text[cut:]
    if not out.strip():
        raise InterpError(f"--corpus: the {part} part of {path!r} is empty; use a longer file or another "
                          "--eval-fraction")
    return out


def documents(model, text: str) -> list:
    """Paragraphs (the shipped corpus separates documents by blank lines) as token ids: ``model.to_tokens``
    also reads text for a model without a tokenizer (as bytes)."""
    return [model.to_tokens(d)[0].cpu() for d in text.split("\n\n") if d.strip()]


def _model_for(args, sae=None):
    from interp.report.inputs import load_model

    spec = args.model
    if spec is None and sae is not None:
        from interp.loading import zoo_models

        name = sae.cfg.metadata.get("model_name")
        spec = name if name in zoo_models() else None
    return load_model(spec, device=args.device)


def _out(tables: dict[str, pd.DataFrame], args, notes=()) -> None:
    from interp.report.output import write_text
    from interp.report.probes import ProbeOutput, print_tables

    if not args.quiet:
        print_tables([ProbeOutput(tables=tables, notes=list(notes))], max_rows=args.rows)
    if args.json:
        data = {name: json.loads(df.to_json(orient="records")) for name, df in tables.items()}
        write_text(args.json, json.dumps(data, indent=1) + "\n", args.force, "--json")
        print(f"wrote {args.json}", file=sys.stderr)


# --time-budget's shares of what is left after the model loads: collection may take this much of it, then
# evaluation (three forward passes a token, where collection needs one) this much of what remains, and the
# final checkpoint and tables this many seconds; training gets the rest.
COLLECT_SHARE, EVAL_SHARE, WRITE_RESERVE_S = 0.3, 0.25, 0.5


def _train(args) -> int:
    from interp.progress import PhaseClock, progress_wanted

    clock = PhaseClock("sae train", args.time_budget, quiet=args.quiet)
    bars = not args.quiet and progress_wanted()  # in a log file the clock's lines say each phase, once
    with clock.phase("load", "loading the model and the corpus"):  # torch's import (seconds) counts too
        from interp.analysis.sae import as_source, evaluate_sae, train_sae
        from interp.io import check_input_path, check_output_folder
        from interp.report.output import write_text

        out = check_output_folder(args.out)  # an existing file or an unwritable place: refused before any work
        if args.cross_layer and not args.transcoder:
            raise InterpError("--cross-layer: a cross-layer transcoder is a transcoder; add --transcoder")
        if args.cross_layer and (args.layers is not None or args.skip):
            raise InterpError(f"--cross-layer: spans every layer and has no skip term; drop "
                              f"{'--layers' if args.layers is not None else '--skip'}")
        if args.k is not None and args.d_sae is not None and args.k > args.d_sae:
            raise InterpError(f"--k: a TopK SAE keeps at most --d-sae={args.d_sae} latents active; given {args.k}")
        if args.corpus is not None:  # a missing or binary file: refused before the model loads
            from interp.data.corpus import check_text_file

            check_text_file(check_input_path(args.corpus, "--corpus", folder=False), "--corpus")
        model = _model_for(args)
        text = read_corpus(model, args.corpus, "train", args.eval_fraction)
    if args.transcoder:
        return _train_transcoders(args, model, text, out, clock)
    d_in = int(model.cfg.d_model) if "resid" in args.hook or args.hook.endswith("_out") else None
    d_sae = args.d_sae or (args.expansion * d_in if d_in else None)
    if d_sae is None:
        raise InterpError(f"--d-sae: give the number of latents for hook {args.hook!r}")
    if args.k is not None and args.k > d_sae:  # before the activations are collected, not after
        raise InterpError(f"--k: a TopK SAE keeps at most d_sae={d_sae} latents active (--d-sae, or --expansion "
                          f"{args.expansion} x d_model {d_in}); given {args.k}")
    left = clock.left()
    collect_s = None if left is None else COLLECT_SHARE * left
    with clock.phase("collect", f"collecting {args.hook} activations"
                     + (f" (at most {collect_s:.1f} s)" if collect_s is not None else "")) as row:
        src = as_source((model, args.hook, documents(model, text)), time_budget=collect_s, progress=bars)
        row["done"] = f"{src.n:,} tokens"
    left = clock.left()
    eval_s = None if left is None or args.eval_fraction == 0 else EVAL_SHARE * left
    train_s = None if left is None else max(left - (eval_s or 0.0) - WRITE_RESERVE_S, 1e-3)
    with clock.phase("train", f"training {args.architecture} SAE with {d_sae:,} latents"
                     + (f" (at most {train_s:.1f} s)" if train_s is not None else "")) as row:
        sae = train_sae(src, d_sae, args.architecture, k=args.k, steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr, l1_coefficient=args.l1, l0_coefficient=args.l0,
                        resample_dead_every=args.resample_every, time_left=train_s, checkpoint_dir=out,
                        overwrite=args.force, seed=args.seed, device=args.device, progress=bars)
        row["done"] = f"{sae.steps_done:,} steps"
    hist = sae.history
    tables = {"training": hist.tail(5)}
    notes = [f"SAE written to {out} (SAELens layout: cfg.json + sae_weights.safetensors)"
             + (" — stopped at the time budget" if getattr(sae, "stopped_early", False) else "")]
    if args.eval_fraction > 0:
        with clock.phase("evaluate", "evaluating on the held-out text"
                         + (f" (at most {eval_s:.1f} s)" if eval_s is not None else "")) as row:
            held = read_corpus(model, args.corpus, "eval", args.eval_fraction)
            ev = evaluate_sae(model, sae, documents(model, held), time_budget=eval_s, progress=bars)
            row["done"] = f"{int(ev.metrics['n_tokens']):,} tokens"
        tables["held-out evaluation"] = ev.table()
        write_text(out / "eval.json", json.dumps(ev.metrics, indent=1) + "\n", True)
    tables["time spent"] = clock.table()
    _out(tables, args, notes)
    return 0


def _train_transcoders(args, model, text: str, out: Path, clock) -> int:
    """``--transcoder``: one transcoder per layer (``--layers``), each in ``OUT/blocks.{l}.hook_mlp_out``; with
    ``--cross-layer`` one cross-layer transcoder in ``OUT``. ``--time-budget``: what is left after loading is
    shared equally by the layers' training (their collection and the evaluation are not bounded)."""
    from interp.analysis.sae import evaluate_transcoders, train_transcoder
    from interp.report.output import write_text

    n = model.cfg.n_layers
    layers = args.layers if args.layers is not None else list(range(n))
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise InterpError(f"--layers: must be in [0, {n}); given {bad}")
    d_sae = args.d_sae or args.expansion * int(model.cfg.d_model)
    docs = documents(model, text)
    tcs, rows = [], []
    if args.cross_layer:
        from interp.analysis.sae.cross_layer import train_cross_layer_transcoder

        left = clock.left()
        with clock.phase("cross-layer", "collecting and training the cross-layer transcoder") as row:
            clt = train_cross_layer_transcoder(
                model, docs, d_sae, args.architecture, input_hook=args.input_hook, k=args.k, steps=args.steps,
                batch_size=args.batch_size, lr=args.lr, l1_coefficient=args.l1, l0_coefficient=args.l0,
                time_left=None if left is None else max(left, 1e-3), checkpoint_dir=out, overwrite=args.force,
                seed=args.seed, device=args.device, progress=not args.quiet)
            row["done"] = f"{clt.steps_done:,} steps"
        tcs.append(clt)
        rows.append({"layer": "all", **clt.history.iloc[-1].to_dict(), "stopped_early": clt.stopped_early})
        layers = []
    for i, layer in enumerate(layers):
        folder = out / f"blocks.{layer}.hook_mlp_out"
        left = clock.left()
        budget = None if left is None else max(left / (len(layers) - i), 1e-3)
        with clock.phase(f"layer {layer}", f"collecting and training the layer-{layer} transcoder") as row:
            tc = train_transcoder(model, layer, docs, d_sae, args.architecture, input_hook=args.input_hook,
                                  skip=args.skip, k=args.k, steps=args.steps, batch_size=args.batch_size,
                                  lr=args.lr, l1_coefficient=args.l1, l0_coefficient=args.l0, time_left=budget,
                                  checkpoint_dir=folder, overwrite=args.force, seed=args.seed, device=args.device,
                                  progress=not args.quiet)
            row["done"] = f"{tc.steps_done:,} steps"
        tcs.append(tc)
        rows.append({"layer": layer, **tc.history.iloc[-1].to_dict(), "stopped_early": tc.stopped_early})
    tables = {"training (last step per layer)": pd.DataFrame(rows)}
    notes = [f"cross-layer transcoder written to {out} (cfg.json + sae_weights.safetensors)" if args.cross_layer else
             f"transcoders written to {out}/blocks.{{l}}.hook_mlp_out (cfg.json + sae_weights.safetensors)"]
    if args.eval_fraction > 0:
        with clock.phase("evaluate", "evaluating on the held-out text"):
            held = read_corpus(model, args.corpus, "eval", args.eval_fraction)
            ev = evaluate_transcoders(model, tcs, documents(model, held))
        tables["held-out: per layer"] = ev.layers
        tables["held-out: every MLP replaced"] = ev.table()
        data = {"layers": json.loads(ev.layers.to_json(orient="records")), "metrics": ev.metrics}
        write_text(out / "eval.json", json.dumps(data, indent=1) + "\n", True)
    tables["time spent"] = clock.table()
    _out(tables, args, notes)
    return 0


def _load(args):
    from interp.analysis.sae import load_sae
    from interp.report.sae_section import DEFAULT_SAE, default_sae_folder

    if args.sae == DEFAULT_SAE:  # the SAE shipped in the model folder's sae/
        model = _model_for(args)
        sae = load_sae(default_sae_folder(model), device=args.device)
    else:
        sae = load_sae(args.sae, device=args.device)
        model = _model_for(args, sae)
    if args.hook:
        sae.cfg.metadata["hook_name"] = args.hook
    return sae, model


def _eval(args) -> int:
    from interp.analysis.sae import decoder_orthogonality, evaluate_sae

    sae, model = _load(args)
    text = read_corpus(model, args.corpus, "eval" if args.corpus is None else "all", args.eval_fraction)
    from interp.analysis.sae import Transcoder, evaluate_transcoders

    if isinstance(sae, Transcoder):  # its MLP replaced, not its input rebuilt

        ev = evaluate_transcoders(model, [sae], documents(model, text), max_tokens=args.max_tokens)
        _out({"per layer": ev.layers, "with the MLP replaced": ev.table()}, args)
        return 0
    ev = evaluate_sae(model, sae, documents(model, text), max_tokens=args.max_tokens, progress=not args.quiet)
    orth = decoder_orthogonality(sae)
    cols = ["count", "dim", "mean_abs_cos", "baseline_mean_abs_cos", "max_abs_cos", "baseline_max_abs_cos",
            "frac_within_tol", "baseline_frac_within_tol"]
    lat = ev.latents.sort_values("frequency", ascending=False)
    _out({"evaluation": ev.table(), "decoder directions vs random": orth[cols],
          "most frequent latents": lat.head(args.rows)}, args)
    return 0


def _features(args) -> int:
    from interp.analysis.sae import evaluate_sae, feature_logit_effects, feature_top_contexts

    sae, model = _load(args)
    text = read_corpus(model, args.corpus, "eval" if args.corpus is None else "all", args.eval_fraction)
    docs = documents(model, text)
    feats = args.feature
    if not feats:  # the most frequently firing live latents
        lat = evaluate_sae(model, sae, docs, max_tokens=20_000).latents
        feats = lat[~lat.dead].sort_values("frequency", ascending=False).latent.head(args.top).tolist()
    ctx = feature_top_contexts(model, sae, docs, features=feats, k=args.k, progress=not args.quiet)
    tables = {"top contexts": ctx[["feature", "rank", "activation", "token", "context"]]}
    tables.update(_dashboard_tables(model, sae, docs, feats, args.k))
    frames = []
    for f in feats:
        try:
            eff = feature_logit_effects(model, sae, f, k=args.logits)
        except InterpError as e:
            tables.pop("logit effects", None)
            print(f"note: {e}", file=sys.stderr)
            break
        eff.insert(0, "feature", f)
        frames.append(eff)
    if frames:
        tables["logit effects"] = pd.concat(frames, ignore_index=True)
    _out(tables, args)
    return 0


def _dashboard_tables(model, sae, docs, feats, k: int) -> dict[str, pd.DataFrame]:
    """Correlated features, quantile bins (with one sampled context each) and the ablation effect on the top
    contexts (``interp.analysis.sae.cards``), as tables."""
    from interp.analysis.sae import feature_ablation_effects, feature_dashboard
    from interp.report.sae_cards import ablation_table

    dash = feature_dashboard(model, sae, docs, feats, n_bins=4, per_bin=1, k_top=k, window=8, after=3)
    from interp.report.figures import show_token

    s = dash.samples
    first = {key: "".join(f"«{show_token(t)}»" if on else show_token(t) for t, on in zip(g.token, g.is_trigger))
             for key, g in s[s["sample"] == 1].groupby(["feature", "bin"])}
    bins = dash.bins.assign(example=[first.get((f, b), "") for f, b in zip(dash.bins.feature, dash.bins.bin)])
    frames = []
    for f in feats:  # the feature zeroed where it fires in its top contexts
        top = s[(s.feature == f) & (s.bin == 0)]
        contexts = [g.token_id.tolist() for _, g in top.groupby("sample", sort=True)]
        if contexts:
            frames.append(ablation_table(feature_ablation_effects(model, sae, contexts, f)).assign(feature=f))
    out = {"correlated features": dash.correlated, "quantile bins (bin 0: the top contexts)": bins}
    if frames:
        abl = pd.concat(frames, ignore_index=True)
        out["ablation effect on the top contexts"] = abl[["feature", *abl.columns[:-1]]]
    return out


def build_parser(prog: str = "interp sae") -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog, formatter_class=_RAW,
        description="Sparse autoencoders: train one on a hook's activations, evaluate it, look at its features.",
        epilog="examples:\n  interp sae train --out runs/sae-resid0 --time-budget 540\n"
               "  interp sae train --transcoder --out runs/transcoders\n"
               "  interp sae eval --sae runs/sae-resid0\n  interp sae features --sae runs/sae-resid0 --feature 3 17\n"
               "  interp sae features --sae default")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def common(q, sae: bool):
        if sae:
            q.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae_weights.safetensors; SAELens' "
                                                        "layout), or 'default': the one shipped in the model folder")
        q.add_argument("--model", default=None, help="zoo name or model folder (default: the SAE's model, else "
                                                     "the shipped model)")
        q.add_argument("--hook", default=None if sae else DEFAULT_HOOK,
                       help=f"hook name (default: the SAE's own{'' if sae else '; train: ' + DEFAULT_HOOK})")
        q.add_argument("--corpus", default=None, help="text file (default: the model folder's heldout.txt)")
        q.add_argument("--eval-fraction", type=nonnegative_float, default=0.1,
                       help="tail of the default corpus held out for evaluation (default 0.1)")
        q.add_argument("--device", default=None, help="torch device, e.g. cuda")
        q.add_argument("--json", default=None, help="also write the tables to this JSON file")
        q.add_argument("--force", action="store_true", help="overwrite existing output")
        q.add_argument("--rows", type=positive_int, default=20, help="rows shown per table (default 20)")
        q.add_argument("--quiet", action="store_true", help="no progress bars or tables")

    t = sub.add_parser("train", help="train an SAE (checkpoints resume; stops at --time-budget)", formatter_class=_RAW)
    common(t, False)
    t.add_argument("--out", required=True, help="output folder: the SAE and its resumable checkpoints")
    t.add_argument("--architecture", choices=("topk", "relu", "jumprelu"), default="topk")
    t.add_argument("--d-sae", type=positive_int, default=None, help="latents (default: --expansion x d_model)")
    t.add_argument("--expansion", type=positive_int, default=8, help="latents per input dimension (default 8)")
    t.add_argument("--k", type=positive_int, default=None, help="TopK: active latents per token (default d_in/8)")
    t.add_argument("--l1", type=nonnegative_float, default=None, help="ReLU: L1 coefficient")
    t.add_argument("--l0", type=nonnegative_float, default=None, help="JumpReLU: L0 coefficient")
    t.add_argument("--resample-every", type=positive_int, default=None, metavar="N",
                   help="ReLU: every N steps, resample latents silent for N steps (Anthropic's recipe; default off)")
    t.add_argument("--steps", type=positive_int, default=None, help="training steps (default: 10 passes, >= 1000)")
    t.add_argument("--batch-size", type=positive_int, default=1024)
    t.add_argument("--lr", type=nonnegative_float, default=None)
    t.add_argument("--time-budget", type=nonnegative_float, default=None, metavar="S",
                   help="the whole command's seconds, counted from when it starts: after the model loads, "
                        "collecting activations may take 30%% of what is left, evaluation 25%% of the rest, "
                        "training (checkpointed; resumable) the remainder; "
                        "each phase stops after the batch or step that reaches its share. --transcoder: the "
                        "layers share it equally (their collection and evaluation are not bounded). The "
                        "'time spent' table lists each phase")
    t.add_argument("--seed", type=seed, default=0)
    t.add_argument("--transcoder", action="store_true",
                   help="train transcoders instead: per layer, read --input-hook and predict hook_mlp_out "
                        "(--hook is ignored); --out gets one folder per layer")
    t.add_argument("--layers", type=int, nargs="+", default=None, help="--transcoder: layers (default: all)")
    t.add_argument("--input-hook", choices=("ln2.hook_normalized", "hook_resid_mid"), default="ln2.hook_normalized",
                   help="--transcoder: what each transcoder reads (default ln2.hook_normalized)")
    t.add_argument("--skip", action="store_true", help="--transcoder: add the affine skip term (skip transcoder)")
    t.add_argument("--cross-layer", action="store_true",
                   help="--transcoder: one cross-layer transcoder instead (each layer's features write to every "
                        "later MLP output; --d-sae / --k per layer); --out gets cfg.json + sae_weights.safetensors")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="L0, variance explained, CE loss recovered, dead/dense latents", formatter_class=_RAW)
    common(e, True)
    e.add_argument("--max-tokens", type=positive_int, default=None, help="stop after this many tokens")
    e.set_defaults(func=_eval)

    f = sub.add_parser("features", help="features' top contexts and logit effects", formatter_class=_RAW)
    common(f, True)
    f.add_argument("--feature", type=int, nargs="+", default=None, help="feature indices (default: --top most frequent)")
    f.add_argument("--top", type=positive_int, default=5, help="how many features when --feature is not given (default 5)")
    f.add_argument("--k", type=positive_int, default=5, help="contexts per feature (default 5)")
    f.add_argument("--logits", type=positive_int, default=5, help="tokens raised and lowered per feature (default 5)")
    f.set_defaults(func=_features)
    return p


def main(argv: list[str] | None = None, prog: str = "interp sae") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.json:
        from interp.report.output import check_writable

        check_writable(args.json, args.force, "--json")
    return int(args.func(args) or 0)
