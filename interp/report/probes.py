"""Probe scripts: one analysis per script, shared argument parsing and output.

``python probes/NAME.py "prompt" [options]`` and ``interp probe NAME "prompt" [options]`` both end in
:func:`main`. A probe is a small :class:`Probe`: its own options and a ``run`` that calls analyzers and
returns named tables (DataFrames). Everything else is shared here: the model and prompt arguments
(``--model``, ``--prompts FILE``), the terminal tables (rich), the ``--json``/``--csv``/``--html`` files
(written atomically, never over an existing file without ``--force``), progress bars and errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from interp.argtypes import OneLineParser, finite_float, nonnegative_float, positive_int, seed
from interp.errors import InterpError

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = [
    "PROBES",
    "Probe",
    "ProbeOutput",
    "build_parser",
    "main",
    "outputs_csv",
    "outputs_html",
    "outputs_json",
    "print_tables",
    "run_probe",
]


@dataclass
class ProbeOutput:
    """What a probe found for one prompt (or for the whole prompt set): named tables, in display order."""

    tables: dict[str, pd.DataFrame]
    notes: list[str] = field(default_factory=list)
    prompt: str | None = None
    terminal_only: tuple[str, ...] = ()  # wide views of a long table that the files already hold


@dataclass
class Probe:
    name: str
    summary: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable  # (model, tokens [1, pos] | None, prompt, args) -> ProbeOutput, or (model, prompts, args)
    needs_prompt: bool = True  # superposition reads weights only
    per_prompt: bool = True  # the linear probe fits one probe over all prompts together


# ----------------------------------------------------------------------------------------------------
# argument helpers


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,3,-1; given {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _token_or_id(model, value: str | None, name: str):
    """A CLI token argument: an integer id, or text that must be exactly one token."""
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    return value  # analyzers resolve single-token strings themselves (and say when it is not one token)


# ----------------------------------------------------------------------------------------------------
# the probes


def _attention_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", type=int, default=None, help="show the pattern of this layer's --head")
    p.add_argument("--head", type=int, default=None, help="head to show (with --layer)")
    p.add_argument("--top", type=positive_int, default=3, help="most attended keys per query (default 3)")
    p.add_argument("--window", type=int, default=4, help="local-window role width (default 4)")
    p.add_argument("--repeats", choices=("random", "tokens"), default="random",
                   help="measure duplicate/induction roles on a repeated random sequence (default) or the prompt")


def _attention_run(model, tokens, prompt, args) -> ProbeOutput:
    from interp.analysis.attention import head_scores, top_attended
    from interp.report.data import notable_heads

    scores = head_scores(model, tokens, window=args.window, repeats=args.repeats)
    wide = scores.pivot_table(index=["layer", "head"], columns="role", values="score", dropna=False)
    wide = wide[[r for r in dict.fromkeys(scores.role) if r in wide.columns]].reset_index()
    wide.columns.name = None
    tables = {"head_roles": wide}
    if (args.layer is None) != (args.head is None):
        raise InterpError("--layer and --head go together: give both to see one head's pattern, or neither.")
    if args.layer is not None:
        from interp.report.inputs import resolve_index

        heads = [(resolve_index(args.layer, int(model.cfg.n_layers), "--layer", "layers"),
                  resolve_index(args.head, int(model.cfg.n_heads), "--head", "heads per layer"))]
    else:
        notable = notable_heads(scores, 4)
        tables["notable_heads"] = notable
        heads = [(int(r.layer), int(r.head)) for r in notable.head(1).itertuples()]
    for layer, head in heads:
        tables[f"L{layer}H{head}_top_attended"] = top_attended(model, tokens, layers=layer, heads=head, k=args.top)[
            ["query_pos", "query_token", "rank", "key_pos", "key_token", "weight"]]
    return ProbeOutput(tables)


def _neurons_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=positive_int, default=10, help="neurons per ranking (default 10)")
    p.add_argument("--position", type=int, default=-1, help="prompt position to explain (default -1, the last)")
    p.add_argument("--target", default=None, help="token (text or id) whose logit to explain (default: the prediction)")
    p.add_argument("--answers", type=int, default=3, help="top contributors whose answer tokens are listed (default 3)")
    p.add_argument("--answer-k", type=positive_int, default=8, help="answer tokens per neuron and sign (default 8)")


def _neurons_run(model, tokens, prompt, args) -> ProbeOutput:
    import pandas as pd

    from interp.analysis.neurons import neuron_answers, top_neurons
    from interp.report.inputs import cap_count

    k = cap_count(args.k, int(model.cfg.n_layers * model.cfg.d_mlp), "--k", "MLP neurons")
    top = top_neurons(model, tokens, position=args.position, target=_token_or_id(model, args.target, "--target"),
                      k=k)
    cols = ["rank", "layer", "neuron", "activation", "contribution", "target_token"]
    tables = {"by_contribution": top[top.ranked_by == "contribution"][cols].reset_index(drop=True),
              "by_activation": top[top.ranked_by == "activation"][cols].reset_index(drop=True)}
    answers = []
    for r in tables["by_contribution"].head(max(0, args.answers)).itertuples():
        a = neuron_answers(model, int(r.layer), int(r.neuron), k=args.answer_k, center=True)
        a.insert(0, "neuron", int(r.neuron))
        a.insert(0, "layer", int(r.layer))
        answers.append(a)
    if answers:
        tables["answers"] = pd.concat(answers, ignore_index=True)[
            ["layer", "neuron", "direction", "rank", "token", "token_id", "logit"]]
    target = tables["by_contribution"].target_token.iloc[0] if len(top) else ""
    return ProbeOutput(tables, notes=[f"contributions are to the logit of {target!r}"])


def _superposition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sets", type=_str_list, default=["W_E", "W_U", "W_in", "W_out"],
                   help="direction sets, comma-separated (W_E,W_U,W_pos,W_in,W_gate,W_out,W_Q,W_K,W_V,W_O,OV,QK)")
    p.add_argument("--max-pairs", type=positive_int, default=20_000, help="pairs per set (exact below; default 20000)")
    p.add_argument("--tolerance", type=nonnegative_float, default=1.0, help="'near-orthogonal' = within 90°±this (default 1)")
    p.add_argument("--center", action="store_true", help="subtract each set's mean vector first")
    p.add_argument("--toy", action="store_true", help="also train a toy model of superposition")
    p.add_argument("--features", type=positive_int, default=20, help="toy model: features (default 20)")
    p.add_argument("--hidden", type=positive_int, default=5, help="toy model: hidden dimensions (default 5)")
    p.add_argument("--sparsity", type=finite_float, default=0.9, help="toy model: P(feature is zero) in [0, 1) (default 0.9)")
    p.add_argument("--steps", type=positive_int, default=2000, help="toy model: Adam steps (default 2000)")
    p.add_argument("--jl", type=finite_float, nargs=2, metavar=("N_VECTORS", "EPS"), default=None,
                   help="also print the Johnson-Lindenstrauss dimension for N vectors at distortion EPS")
    p.add_argument("--seed", type=seed, default=0)


def _superposition_run(model, tokens, prompt, args) -> ProbeOutput:
    import pandas as pd

    from interp.analysis import superposition as sp
    from interp.progress import progress_wanted

    stats = sp.direction_set_stats(model, sets=args.sets, max_pairs=args.max_pairs, seed=args.seed,
                                   tolerance_deg=args.tolerance, center=args.center)
    cols = ["set", "layer", "head", "count", "dim", "n_pairs", "exact", "mean_angle_deg", "std_angle_deg",
            "baseline_std_angle_deg", "max_abs_cos", "baseline_max_abs_cos", "frac_within_tol",
            "baseline_frac_within_tol"]
    tables = {"direction_sets": stats[[c for c in cols if c in stats.columns]]}
    d = int(model.cfg.d_model)
    notes = [(f"random unit vectors in {d} dims: {sp.near_orthogonal_fraction(d, args.tolerance):.4f} of pairs lie "
             f"within 90°±{args.tolerance:g}")]
    if args.jl is not None:
        n, eps = args.jl
        if n != int(n):
            raise InterpError(f"--jl: N_VECTORS must be a whole number; given {n}")
        dim = sp.jl_min_dim(int(n), eps)
        # directions with |cos| <= eps in d_model dims: at least d_model (a basis), more by the random-vector count;
        # the JL bound alone (its loose constants) says 1 for d=128, eps=0.1
        tables["jl"] = pd.DataFrame({"n_vectors": [int(n)], "eps": [eps], "min_dim": [dim],
                                     "directions_in_d_model": [max(d, sp.jl_max_vectors(d, eps, method="random"))],
                                     "jl_points_in_d_model": [sp.jl_max_vectors(d, eps)]})
    if args.toy:
        if not 0.0 <= args.sparsity < 1.0:
            raise InterpError(f"--sparsity: must be in [0, 1); given {args.sparsity}")
        if not args.quiet:  # seconds, more at large sizes: say what is running (stderr keeps piped tables clean)
            print(f"superposition: training a toy model ({args.features} features in {args.hidden} dims, "
                  f"{args.steps} Adam steps)...", file=sys.stderr, flush=True)
        toy = sp.train_toy_model(args.features, args.hidden, feature_probability=1.0 - args.sparsity,
                                 steps=args.steps, seed=args.seed, progress=not args.quiet and progress_wanted())
        tables["toy_features"] = toy.features
        notes.append(f"toy model: {toy.n_represented} of {toy.n_features} features represented in {toy.d_hidden} "
                     f"dims; dimensions per feature {toy.dimensions_per_feature:.3f}; final loss {toy.final_loss:.4g}")
    return ProbeOutput(tables, notes=notes)


def _lens_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=positive_int, default=3, help="top tokens per layer and position (default 3)")
    p.add_argument("--target", default="final",
                   help="token to track: 'final' (the model's prediction), 'next' (the true next token) or an id")
    p.add_argument("--positions", type=int, nargs="+", default=None, metavar="POS",
                   help="positions to show, e.g. --positions -3 -2 -1 (default all)")
    p.add_argument("--tuned", default=None, metavar="FOLDER", help="a trained tuned lens folder (TunedLens.save)")


def _lens_run(model, tokens, prompt, args) -> ProbeOutput:
    from interp.analysis.logit_lens import logit_lens, summarize_lens
    from interp.report.figures import show_token
    from interp.report.inputs import cap_count

    args.k = cap_count(args.k, int(model.cfg.d_vocab), "--k", "tokens in the vocabulary")
    target = args.target
    if target not in ("final", "next"):
        if not target.lstrip("-").isdigit():
            raise InterpError(f"--target: must be 'final', 'next' or a token id; given {target!r}")
        target = int(target)
    if args.tuned:
        from interp.analysis.tuned_lens import TunedLens, tuned_lens

        lens = tuned_lens(model, tokens, TunedLens.load(args.tuned, model=model), k=args.k, target=target,
                          positions=args.positions)
    else:
        lens = logit_lens(model, tokens, k=args.k, target=target, positions=args.positions)
    summary = summarize_lens(lens).drop(columns=["batch"])
    wide = summary.assign(cell=[f"{show_token(t)} {p:.2f}" for t, p in zip(summary.top_token, summary.top_prob)])
    wide = wide.pivot(index="layer", columns="position", values="cell")
    labels = summary.drop_duplicates("position").set_index("position").input_token
    wide.columns = [f"{c}:{show_token(labels[c])}" for c in wide.columns]
    names = summary.drop_duplicates("layer").set_index("layer").layer_name
    wide.insert(0, "layer", [names[i] for i in wide.index])
    last = summary[summary.position == summary.position.max()][
        ["layer_name", "target_token", "target_prob", "target_rank", "top_token", "top_prob", "entropy", "kl"]]
    return ProbeOutput({"grid": wide.reset_index(drop=True), "target_by_layer": last.reset_index(drop=True),
                        "cells": summary}, terminal_only=("grid",))


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=30, help="tokens to sample (default 30)")
    p.add_argument("--temperature", type=nonnegative_float, default=1.0, help="0 = greedy; >1 flattens (default 1)")
    p.add_argument("--top-k", type=positive_int, default=None, help="keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="keep the smallest set with probability >= p")
    p.add_argument("--min-p", type=float, default=None, help="keep tokens with prob >= min_p × the best")
    p.add_argument("--samples", type=positive_int, default=3, help="continuations, seeds seed..seed+n-1 (default 3)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--k", type=positive_int, default=10, help="next-token candidates listed (default 10)")


def next_token_table(model, tokens: torch.Tensor, k: int, temperature: float = 1.0, top_k=None, top_p=None,
                     min_p=None) -> pd.DataFrame:
    """The model's next-token distribution after ``tokens`` and what the sampling settings leave of it.

    ``prob`` is the plain softmax; ``sampled_prob`` the distribution ``interp.generate.sample_next`` draws
    from (temperature, then ``filter_logits``); 0 for filtered-out tokens. Greedy (T=0) puts 1 on the best.
    """
    import pandas as pd
    import torch

    from interp.analysis._inputs import token_str
    from interp.generate import _check_sampling, filter_logits

    _check_sampling(temperature, top_k, top_p, min_p)
    with torch.no_grad():
        logits = model(tokens)[0, -1].double()
    probs = torch.softmax(logits, -1)
    if temperature == 0:
        sampled = torch.zeros_like(probs)
        sampled[logits.argmax()] = 1.0
    else:
        sampled = torch.softmax(filter_logits(logits / temperature, top_k, top_p, min_p).double(), -1)
    k = min(k, probs.shape[0])
    p, ids = probs.topk(k)
    return pd.DataFrame({"rank": range(1, k + 1), "token_id": ids.tolist(),
                         "token": [token_str(model, i) for i in ids.tolist()], "logit": logits[ids].tolist(),
                         "prob": p.tolist(), "sampled_prob": sampled[ids].tolist()})


def _generate_run(model, tokens, prompt, args) -> ProbeOutput:
    import pandas as pd

    from interp.generate import generate

    if args.max_new_tokens < 0:
        raise InterpError(f"--max-new-tokens: must be >= 0; given {args.max_new_tokens}")
    room = int(model.cfg.n_ctx) - tokens.shape[1]
    if args.max_new_tokens > room:
        raise InterpError(f"--max-new-tokens: the prompt leaves room for {room} tokens in n_ctx={model.cfg.n_ctx}; "
                          f"given {args.max_new_tokens}")
    from interp.report.inputs import cap_count

    k = cap_count(args.k, int(model.cfg.d_vocab), "--k", "tokens in the vocabulary")
    table = next_token_table(model, tokens, k, args.temperature, args.top_k, args.top_p, args.min_p)
    rows = []
    for i in range(args.samples):
        out = generate(model, tokens, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed + i)
        new = out[0, tokens.shape[1]:]
        rows.append({"seed": args.seed + i, "new_tokens": int(new.numel()), "continuation": model.to_string(new)})
    return ProbeOutput({"next_token": table, "samples": pd.DataFrame(rows)})


def _linear_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="labelled prompts, one 'LABEL<TAB>text' per line; each prompt's --position is probed")
    p.add_argument("--task", default="space",
                   choices=("space", "capital", "digit", "punct", "vowel", "position"),
                   help="without --labels: the per-token property to probe over every token of the prompts "
                        "(space: token starts with a space; position: its index, a regression)")
    p.add_argument("--hooks", type=_str_list, default=["hook_embed", "resid_post"],
                   help="hooks or per-block suffixes, comma-separated (default hook_embed,resid_post)")
    p.add_argument("--position", type=int, default=-1, help="with --labels: position probed (default -1)")
    p.add_argument("--test-size", type=float, default=0.25, help="held-out fraction (default 0.25)")
    p.add_argument("--matches", type=int, default=5, help="model directions listed per kind (default 5; 0 = none)")
    p.add_argument("--seed", type=seed, default=0)


_TASKS = {
    "space": lambda s, i: s[:1].isspace(),
    "capital": lambda s, i: s.strip()[:1].isupper(),
    "digit": lambda s, i: any(c.isdigit() for c in s),
    "punct": lambda s, i: bool(s.strip()) and all(not c.isalnum() and not c.isspace() for c in s.strip()),
    "vowel": lambda s, i: s.strip()[:1].lower() in tuple("aeiou"),
    "position": lambda s, i: float(i),
}


def read_labelled(path: str) -> tuple[list[str], list[str]]:
    """``LABEL<TAB>text`` lines (``#`` comments and blank lines skipped) -> (labels, prompts)."""
    from interp.report.inputs import read_prompts

    labels, prompts = [], []
    for n, line in enumerate(read_prompts(path), 1):
        if "\t" not in line:
            raise InterpError(f"--labels: line {n} of {path!r} has no TAB; write 'LABEL<TAB>text'. Given {line[:60]!r}")
        label, text = line.split("\t", 1)
        labels.append(label.strip())
        prompts.append(text)
    return labels, prompts


def _linear_run(model, prompts: list[str], args) -> ProbeOutput:
    import numpy as np

    from interp.analysis.probing import collect_activations, direction_matches, fit_probes
    from interp.report.inputs import encode_prompt

    if args.labels:
        labels, prompts = read_labelled(args.labels)
        for i, p in enumerate(prompts):
            encode_prompt(model, p, name=f"--labels line {i + 1}")
        acts = collect_activations(model, prompts, args.hooks, positions=args.position)
        y = np.asarray(labels)
        try:  # numeric labels -> regression when they are not whole numbers
            y = y.astype(np.float64)
        except ValueError:
            pass
        what = f"labels from {args.labels}"
    else:
        if not prompts:
            raise InterpError("linear_probe: give a prompt, --prompts FILE, or --labels FILE.")
        for i, p in enumerate(prompts):
            encode_prompt(model, p, name=f"prompt {i + 1}")
        acts = collect_activations(model, prompts, args.hooks, positions="all")
        fn = _TASKS[args.task]
        y = np.asarray([fn(s, int(pos)) for s, pos in zip(acts.index.token, acts.index.position)])
        if args.task != "position":
            y = y.astype(int)
        what = f"task {args.task!r} over {len(y)} tokens"
    result = fit_probes(acts, y, test_size=args.test_size, seed=args.seed)
    scores = result.scores
    tables = {"scores": scores}
    best = scores.loc[scores.test.idxmax()]
    notes = [f"{what}; best held-out {best.metric} {best.test:.3f} at {best.hook} (baseline {best.baseline:.3f})"]
    direction = result.directions[best.hook]
    if args.matches > 0 and direction.ndim == 1 and direction.shape[0] == int(model.cfg.d_model):
        tables["direction_matches"] = direction_matches(model, direction, k=args.matches)
    return ProbeOutput(tables, notes=notes)


def _pair_args(p: argparse.ArgumentParser) -> None:
    """The clean/corrupted prompt pair arguments the patching and edges probes share."""
    p.add_argument("--clean", default=None, help="the prompt the model gets right (default: the positional prompt)")
    p.add_argument("--corrupted", default=None, help="the same prompt with the deciding detail changed (same token count)")
    p.add_argument("--answer", default=None, help="the clean prompt's answer: one token (text or id)")
    p.add_argument("--wrong", default=None, help="the corrupted prompt's answer: one token (text or id)")
    p.add_argument("--pairs", default=None, metavar="FILE",
                   help="several pairs, one 'clean<TAB>corrupted<TAB>answer<TAB>wrong' per line (bootstrap intervals)")


def _patching_args(p: argparse.ArgumentParser) -> None:
    _pair_args(p)
    p.add_argument("--where", default="resid_pre", choices=("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"),
                   help="activation of the layer x position sweep (default resid_pre)")
    p.add_argument("--top", type=positive_int, default=10, help="components listed by direct logit attribution (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="patched copies per forward pass (default: by memory)")


def read_pairs(path: str) -> list[list[str]]:
    """``clean<TAB>corrupted<TAB>answer<TAB>wrong`` lines (``#`` comments and blank lines skipped)."""
    from interp.report.inputs import read_prompts

    out = []
    for n, line in enumerate(read_prompts(path), 1):
        parts = line.split("\t")
        if len(parts) != 4:
            raise InterpError(f"--pairs: line {n} of {path!r} needs 4 TAB-separated fields "
                              f"(clean, corrupted, answer, wrong); given {len(parts)}")
        out.append(parts)
    return out


def _prompt_pairs(model, prompts: list[str], args, probe: str):
    """(clean, corrupted, answer, wrong) lists from --pairs FILE or --clean/--corrupted/--answer/--wrong."""
    if args.pairs:
        pairs = read_pairs(args.pairs)
    else:
        clean = args.clean or (prompts[0] if prompts else None)
        missing = [f for f, v in (("--clean", clean), ("--corrupted", args.corrupted), ("--answer", args.answer),
                                  ("--wrong", args.wrong)) if v is None]
        if missing:
            raise InterpError(f"{probe}: give {', '.join(missing)} (or --pairs FILE); e.g. --clean \"...\" "
                              "--corrupted \"...\" --answer \" X\" --wrong \" Y\"")
        pairs = [[clean, args.corrupted, args.answer, args.wrong]]
    clean, corrupted = [p[0] for p in pairs], [p[1] for p in pairs]
    answer = [_token_or_id(model, p[2], "--answer") for p in pairs]
    wrong = [_token_or_id(model, p[3], "--wrong") for p in pairs]
    lengths = {len(model.to_tokens(t)[0]) for t in clean + corrupted}
    if len(lengths) != 1:
        raise InterpError(f"--corrupted: every clean and corrupted prompt must have the same number of tokens, so "
                          f"positions line up; given lengths {sorted(lengths)}")
    return clean, corrupted, answer, wrong


def _patching_run(model, prompts: list[str], args) -> ProbeOutput:
    from interp.analysis.causal import activation_patching, attribution_patching, direct_logit_attribution

    clean, corrupted, answer, wrong = _prompt_pairs(model, prompts, args, "patching")
    kw = {"answer": answer, "wrong": wrong, "batch_size": args.batch_size}
    heads = activation_patching(model, clean, corrupted, where="z", by_position=False, **kw)
    grid = activation_patching(model, clean, corrupted, where=args.where, **kw)
    attr = attribution_patching(model, clean, corrupted, answer=answer, wrong=wrong, where="z", by_position=False)
    dla = direct_logit_attribution(model, clean, answer, wrong, k_neurons=args.top)
    top = dla.reindex(dla.contribution.abs().sort_values(ascending=False, kind="stable").index).head(args.top)
    wide = grid.pivot(index="layer", columns="position", values="normalised").round(2)
    wide.columns = [str(c) for c in wide.columns]
    heads = heads.assign(attribution=attr.attribution.to_numpy())
    r = heads.attribution.corr(heads.effect - heads.attrs["corrupted"])
    notes = [(f"logit difference: clean {heads.attrs['clean']:.3f}, corrupted {heads.attrs['corrupted']:.3f} "
              f"(normalised: 0 = corrupted, 1 = clean; {len(clean)} pair(s))"),
             f"attribution patching vs exact head patching: Pearson r = {r:.3f}",
             (f"DLA of the clean prompt: components sum to {dla.attrs['total']:.3f} (logit difference "
              f"{dla.attrs['logit']:.3f}); neuron rows split their MLP rows")]
    return ProbeOutput({"heads": heads, args.where: grid, "layer_by_position": wide.reset_index(),
                        "dla": top.reset_index(drop=True)}, notes=notes, terminal_only=("layer_by_position",))


def _edges_args(p: argparse.ArgumentParser) -> None:
    _pair_args(p)
    p.add_argument("--method", choices=("eap", "eap-ig"), default="eap-ig", help="edge scores (default eap-ig)")
    p.add_argument("--steps", type=positive_int, default=10, help="EAP-IG interpolation points (default 10)")
    p.add_argument("--top", type=positive_int, default=20, help="edges listed (default 20)")
    p.add_argument("--exact", action="store_true", help="also patch every edge exactly (one copy per edge)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="copies per pass (default: the analyzer's)")


def _edges_run(model, prompts: list[str], args) -> ProbeOutput:
    from interp.analysis.circuits.edges import edge_attribution, faithfulness_curve

    clean, corrupted, answer, wrong = _prompt_pairs(model, prompts, args, "edges")
    kw = {"answer": answer, "wrong": wrong}
    edges = edge_attribution(model, clean, corrupted, method=args.method, steps=args.steps, exact=args.exact,
                             batch_size=args.batch_size, **kw)
    curve = faithfulness_curve(model, edges, clean, corrupted, batch_size=args.batch_size, **kw)
    cols = ["sender", "receiver", "score"] + (["exact"] if args.exact else [])
    notes = [(f"logit difference: clean {edges.attrs['clean']:.3f}, corrupted {edges.attrs['corrupted']:.3f}; "
             f"{edges.attrs['n_edges']} edges scored by {args.method} (score = change when that edge alone carries "
             "the corrupted value)"),
             "faithfulness: the clean run with every edge outside the top n corrupted (1 = clean, 0 = corrupted)"]
    if args.exact:
        notes.append(f"{args.method} vs exact edge patching: Pearson r = {edges.attrs['pearson']:.3f}, "
                     f"Spearman = {edges.attrs['spearman']:.3f}")
    return ProbeOutput({"top_edges": edges[cols].head(args.top), "faithfulness": curve}, notes=notes)


def _steering_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--positive", action="append", default=None, help="a prompt for the + side (repeat the flag)")
    p.add_argument("--negative", action="append", default=None, help="a prompt for the - side (repeat the flag)")
    p.add_argument("--sae", default=None, metavar="FOLDER",
                   help="steer along an SAE feature instead: an SAE folder or 'default' (the model's own), with --feature")
    p.add_argument("--feature", type=int, default=None, help="the SAE feature whose decoder row is the direction")
    p.add_argument("--hook", default=None, help="hook point (default: the SAE's, else the middle layer's "
                                                 "blocks.{l}.hook_resid_pre)")
    p.add_argument("--scale", type=finite_float, action="append", default=None,
                   help="steering scale (repeat the flag; default 4; 0 is always shown)")
    p.add_argument("--position", choices=("last", "mean"), default="mean",
                   help="steering vector from each prompt's last token or its mean over tokens (default mean)")
    p.add_argument("--new-tokens", type=int, default=12, help="greedy continuation per scale (default 12)")
    p.add_argument("--k", type=positive_int, default=5, help="top next tokens shown (default 5)")


def _steering_direction(model, args):
    """(direction, hook, how it was made): a contrastive vector, or an SAE feature's decoder row."""
    from interp.analysis.steering import feature_direction, steering_vector

    if args.sae is not None:
        from interp.analysis.sae import load_sae
        from interp.report.sae_section import DEFAULT_SAE, default_sae_folder

        if args.feature is None or args.positive or args.negative:
            raise InterpError("--sae: give --feature N with it (and no --positive/--negative)")
        sae = load_sae(default_sae_folder(model) if args.sae == DEFAULT_SAE else args.sae, device=model.device)
        hook = args.hook or sae.cfg.hook_name
        return feature_direction(sae, args.feature), hook, f"SAE feature {args.feature}'s decoder row"
    if not args.positive or not args.negative:
        raise InterpError("steering: give --positive and --negative prompts (each flag repeatable), or --sae FOLDER "
                          "--feature N")
    hook = args.hook or f"blocks.{int(model.cfg.n_layers) // 2}.hook_resid_pre"
    vec = steering_vector(model, args.positive, args.negative, hook, position=args.position)
    return vec, hook, (f"mean over {len(args.positive)} positive minus {len(args.negative)} negative prompt(s) "
                       f"({args.position} position)")


def _steering_run(model, tokens, prompt, args) -> ProbeOutput:
    from interp.analysis.steering import steering_effect

    vec, hook, how = _steering_direction(model, args)
    scales = sorted({0.0, *(args.scale or [4.0])})
    df = steering_effect(model, tokens, vec, hook, scales, k=args.k, max_new_tokens=args.new_tokens)
    df = df.drop(columns="prompt").assign(top_tokens=[" | ".join(t) for t in df.top_tokens],
                                          top_probs=[" ".join(f"{p:.2f}" for p in ps) for ps in df.top_probs])
    notes = [(f"steering vector at {hook}: {how}, norm {float(vec.norm()):.3f}; "
             "kl = KL(unsteered || steered) of the next token, nats")]
    return ProbeOutput({"steering": df}, notes=notes)


PROBES: dict[str, Probe] = {
    p.name: p
    for p in [
        Probe("attention", "head roles (previous-token, induction, ...) and attention patterns",
              'python probes/attention.py "When Mary and John went to the store, John gave" --layer 0 --head 1',
              _attention_args, _attention_run),
        Probe("neurons", "MLP neurons behind the next-token prediction: activations, logit contributions, answers",
              'python probes/neurons.py "The capital of France is" --k 5 --answers 2', _neurons_args, _neurons_run),
        Probe("superposition", "angles between the model's directions vs random; toy models; JL dimension",
              "python probes/superposition.py --sets W_E,W_U --toy --sparsity 0.95 --jl 10000 0.1",
              _superposition_args, _superposition_run, needs_prompt=False),
        Probe("logit_lens", "the prediction read off every layer (logit lens; tuned lens with --tuned)",
              'python probes/logit_lens.py "The Eiffel Tower is in the city of" --k 3 --positions -3 -2 -1',
              _lens_args, _lens_run),
        Probe("generate", "sample continuations and show the next-token distribution the sampler sees",
              'python probes/generate.py "Once upon a time" --temperature 0.8 --top-p 0.9 --samples 2',
              _generate_args, _generate_run),
        Probe("linear_probe", "fit linear probes per layer (scikit-learn) and match the probe direction to weights",
              'python probes/linear_probe.py --prompts prompts.txt --task space --hooks resid_post',
              _linear_args, _linear_run, per_prompt=False),
        Probe("patching", "activation patching, attribution patching and direct logit attribution by component",
              'python probes/patching.py --clean "The letter from Jane was read aloud, and then the letter from" '
              '--corrupted "The letter from Moses was read aloud, and then the letter from" --answer " Jane" '
              '--wrong " Moses"', _patching_args, _patching_run, needs_prompt=False, per_prompt=False),
        Probe("edges", "edge attribution (EAP / EAP-IG) over heads' q/k/v, MLPs and logits; circuit faithfulness",
              'python probes/edges.py --clean "The letter from Jane was read aloud, and then the letter from" '
              '--corrupted "The letter from Moses was read aloud, and then the letter from" --answer " Jane" '
              '--wrong " Moses" --top 10', _edges_args, _edges_run, needs_prompt=False, per_prompt=False),
        Probe("steering", "add a contrastive steering vector at a hook; next-token KL, top tokens, continuations",
              'python probes/steering.py "The weather today is" --positive "I love this" --negative "I hate this" '
              '--scale 4 --scale 8', _steering_args, _steering_run),
    ]
}


# ----------------------------------------------------------------------------------------------------
# shared parsing, running and output


def build_parser(name: str, prog: str | None = None) -> argparse.ArgumentParser:
    probe = PROBES[name]
    parser = OneLineParser(
        prog=prog or f"probes/{name}.py",
        description=f"{probe.summary}.",
        epilog=f"Example:\n  {probe.example}\n  interp probe {name} ... (same options)\n\n"
               "Output files are written atomically and never replace an existing file unless --force is given.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nargs = "?"
    parser.add_argument("prompt", nargs=nargs, default=None,
                        help="the prompt to analyse" + ("" if probe.needs_prompt else " (not needed: weights only)"))
    io = parser.add_argument_group("input and output")
    io.add_argument("--prompts", metavar="FILE", default=None, help="analyse every line of FILE (# comments skipped)")
    io.add_argument("--model", default=None, help="zoo name or model folder (default: the shipped model)")
    io.add_argument("--device", default=None, help="torch device, e.g. cuda (default: where the model loads)")
    io.add_argument("--json", metavar="PATH", default=None, help="also write all tables as JSON")
    io.add_argument("--csv", metavar="PATH", default=None, help="also write all tables as one CSV (prompt, table columns)")
    io.add_argument("--html", metavar="PATH", default=None, help="also write an offline HTML page of the tables")
    io.add_argument("--force", action="store_true", help="overwrite existing output files")
    io.add_argument("--rows", type=positive_int, default=25, help="rows per terminal table (default 25)")
    io.add_argument("--quiet", action="store_true", help="no terminal tables (files only)")
    opts = parser.add_argument_group(f"{name} options")
    probe.add_arguments(opts)
    return parser


def _prompts(probe: Probe, args) -> list[str]:
    from interp.report.inputs import read_prompts

    prompts = []
    if args.prompt is not None:
        prompts.append(args.prompt)
    if args.prompts:
        prompts.extend(read_prompts(args.prompts))
    if not prompts and probe.needs_prompt and not (probe.name == "linear_probe" and getattr(args, "labels", None)):
        raise InterpError(f"{probe.name}: give a prompt (\"...\") or --prompts FILE.")
    return prompts


def run_probe(name: str, model, prompts: list[str], args, progress: Callable[[int], None] | None = None
              ) -> list[ProbeOutput]:
    """Run probe ``name`` on each prompt (or once, for the linear probe and weights-only probes)."""
    from interp.report.inputs import encode_prompt

    probe = PROBES[name]
    if not probe.per_prompt:
        return [probe.run(model, prompts, args)]
    if not probe.needs_prompt:  # reads weights only: one result, whatever prompts were given
        return [probe.run(model, None, None, args)]
    outs = []
    for i, prompt in enumerate(prompts):
        tokens = encode_prompt(model, prompt, name="prompt" if len(prompts) == 1 else f"prompt {i + 1}")
        out = probe.run(model, tokens, prompt, args)
        out.prompt = prompt
        outs.append(out)
        if progress:
            progress(i + 1)
    return outs


def _display(v) -> str:
    from interp.report.render import _fmt_number, _is_missing, _is_numeric

    if _is_numeric(v) or _is_missing(v):
        return _fmt_number(v)
    return printable(str(v))


def printable(text: str) -> str:
    """``text`` for a terminal: control bytes (ESC, CSI, BEL ...) that a terminal would execute shown escaped
    (``\\x1b``), newlines kept. Generated text and tokens can hold any of them."""
    return "".join(ch if ch.isprintable() or ch == "\n" else f"\\x{ord(ch):02x}" if ord(ch) < 256
                   else f"\\u{ord(ch):04x}" for ch in text)


# Columns that say what a row is about: repeated in every part of a table split to fit the terminal.
_KEY_COLUMNS = ("prompt", "set", "layer", "layer_name", "head", "neuron", "position", "query_pos", "rank")


def _column_groups(names: list[str], widths: list[int], keys: list[int], room: int) -> list[list[int]]:
    """Split column indices into groups whose widths (plus rich's 3 per column) fit ``room``; keys lead each group."""
    key_w = sum(widths[i] + 3 for i in keys)
    groups, cur, used = [], [], key_w + 1
    for i in range(len(names)):
        if i in keys:
            continue
        if cur and used + widths[i] + 3 > room:
            groups.append(cur)
            cur, used = [], key_w + 1
        cur.append(i)
        used += widths[i] + 3
    if cur or not groups:
        groups.append(cur)
    return [sorted(keys) + g for g in groups]


def print_tables(outputs: list[ProbeOutput], console=None, max_rows: int = 25) -> None:
    """Readable terminal tables (rich); token columns show spaces and newlines visibly.

    Numbers never wrap: a table wider than the terminal is printed in parts (its key columns, such as
    ``layer`` or ``neuron``, repeated in each), and headers wrap between words.
    """
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from interp.report.figures import show_token
    from interp.report.render import _TOKEN_COLUMNS, column_title

    console = console or Console()
    for out in outputs:
        if out.prompt is not None:
            console.rule(f"[bold]{out.prompt[:100]}")
        for name, df in out.tables.items():
            names = [str(c) for c in df.columns]
            numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
                       for c in df.columns]
            cells = [[show_token(v) if c in _TOKEN_COLUMNS and isinstance(v, str) else _display(v)
                      for c, v in zip(df.columns, rec)] for rec in df.head(max_rows).itertuples(index=False)]
            widths = []
            for j, c in enumerate(names):
                longest_word = max((len(w) for w in column_title(c).split()), default=1)
                values = [len(r[j]) for r in cells] or [0]
                widths.append(max(longest_word, max(values) if numeric[j] else min(max(values), 24)))
            keys = [j for j, c in enumerate(names) if c in _KEY_COLUMNS][:3]
            groups = _column_groups(names, widths, keys, console.width)
            for part, group in enumerate(groups, 1):
                title = name + (f" ({part}/{len(groups)})" if len(groups) > 1 else "")  # the --json key
                table = Table(title=title, title_justify="left", header_style="bold")
                for j in group:  # exactly as wide as the widest value or header word: numbers never wrap
                    table.add_column(column_title(names[j]), justify="right" if numeric[j] else "left",
                                     overflow="fold", min_width=widths[j], max_width=widths[j])
                for r in cells:
                    table.add_row(*[r[j] for j in group])
                console.print(table)
            if len(df) > max_rows:
                console.print(f"[dim]... {len(df) - max_rows} more rows (all rows go to --json/--csv/--html)[/dim]")
        for note in out.notes:
            console.print(f"[cyan]{note}[/cyan]")


def _records(df: pd.DataFrame) -> list[dict]:
    # pandas' JSON writer turns NaN/NA into null and numpy scalars into plain numbers.
    return json.loads(df.to_json(orient="records", force_ascii=False, double_precision=15))


def outputs_json(name: str, model_desc: dict, outputs: list[ProbeOutput], options: dict) -> str:
    doc = {"probe": name, "model": model_desc, "options": options,
           "results": [{"prompt": o.prompt, "notes": o.notes, "tables": {k: _records(v) for k, v in o.tables.items() if k not in o.terminal_only}}
                       for o in outputs]}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def outputs_csv(outputs: list[ProbeOutput]) -> str:
    import pandas as pd

    frames = []
    for o in outputs:
        for tname, df in o.tables.items():
            if tname in o.terminal_only:
                continue
            f = df.copy()
            f.columns = [str(c) for c in f.columns]
            f.insert(0, "table", tname)
            f.insert(0, "prompt", o.prompt if o.prompt is not None else "")
            frames.append(f)
    return pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""


def outputs_html(name: str, model_desc: dict, outputs: list[ProbeOutput]) -> str:
    import html

    from interp.report.render import html_page, html_table

    parts = [f"<h1>interp probe: {html.escape(name)}</h1><p>Model <b>{html.escape(str(model_desc['name']))}</b></p>"]
    for i, o in enumerate(outputs):
        parts.append(f'<section id="result-{i}">')
        if o.prompt is not None:
            parts.append(f'<div class="prompt">{html.escape(o.prompt)}</div>')
        for tname, df in o.tables.items():
            df = df.copy()
            df.columns = [str(c) for c in df.columns]
            title = tname.replace("_", " ")
            parts.append(f"<h3>{html.escape(title[:1].upper() + title[1:])}</h3>" + html_table(df, tname))
        parts.extend(f'<p class="note">{html.escape(n)}</p>' for n in o.notes)
        parts.append("</section>")
    return html_page(f"interp probe {name}", "".join(parts), with_plotly=False)


def main(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``probes/NAME.py`` and ``interp probe NAME``: returns the exit code.

    Errors in the input (:class:`InterpError`) print one line and return 2; Ctrl-C returns 130 and
    leaves no partial output file (files are written at the end, atomically).
    """
    if name not in PROBES:
        print(f"interp probe: error: unknown probe {name!r}; choose from {sorted(PROBES)}", file=sys.stderr)
        return 2
    parser = build_parser(name, prog)
    args = parser.parse_args(argv)  # --help and bad flags answer here, before torch is imported
    from interp.report.inputs import check_prompts_fit, load_model, model_summary
    from interp.report.output import check_writable, write_text

    try:
        probe = PROBES[name]
        for flag in ("json", "csv", "html"):
            if getattr(args, flag):
                check_writable(getattr(args, flag), args.force, f"--{flag}")
        prompts = _prompts(probe, args)
        check_prompts_fit(args.model, prompts)
        model = load_model(args.model, device=args.device)
        outputs = _run_with_progress(name, model, prompts, args)
        if not args.quiet:
            print_tables(outputs, max_rows=args.rows)
        desc = model_summary(model)
        options = {k: v for k, v in vars(args).items() if k not in ("prompt", "json", "csv", "html", "force", "quiet")}
        if args.json:
            write_text(args.json, outputs_json(name, desc, outputs, options), args.force, "--json")
        if args.csv:
            write_text(args.csv, outputs_csv(outputs), args.force, "--csv")
        if args.html:
            write_text(args.html, outputs_html(name, desc, outputs), args.force, "--html")
        for flag in ("json", "csv", "html"):
            if getattr(args, flag):
                print(f"wrote {getattr(args, flag)}", file=sys.stderr)
        return 0
    except InterpError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no output file was written.", file=sys.stderr)
        return 130


def _run_with_progress(name: str, model, prompts: list[str], args) -> list[ProbeOutput]:
    """Several prompts get a progress bar (on stderr, so piped stdout stays clean)."""
    if len(prompts) < 2 or not PROBES[name].per_prompt:
        return run_probe(name, model, prompts, args)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn(f"{name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(name, total=len(prompts))
        return run_probe(name, model, prompts, args, progress=lambda i: bar.update(task, completed=i))
