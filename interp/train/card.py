"""Measure a trained model and write its zoo folder's model card (README.md) and recipe.json.

    python -m interp.train.card models/<name> --run runs/<name> --manifest data/corpus/manifest.json \
        --tokens data/tokens --heldout-max-tokens 40000

What it measures, with the project's own analyzers (interp.analysis):

* held-out loss: mean next-token cross-entropy on ``heldout.txt`` (whole validation documents never
  trained on, each followed by ``<|endoftext|>``; the file *is* the token stream: encoding it with the
  shipped tokenizer gives the documents and their separators), scored in non-overlapping windows of
  ``n_ctx`` predictions (:func:`heldout_loss`; the test recomputes it independently);
* repeated random tokens: loss on the first vs the second copy (``repeated_sequence_loss``);
* head roles: induction and duplicate-token scores on repeated random tokens, previous-token scores
  on held-out text (``head_scores``);
* logit lens: mean KL(final ‖ layer) per layer on held-out text (``logit_lens``/``summarize_lens``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from interp.errors import InterpError
from interp.io import atomic_write_text

HELDOUT = "heldout.txt"


def heldout_tokens(tokenizer, text: str) -> np.ndarray:
    from interp.tokenize import encode

    return np.asarray(encode(tokenizer, text), dtype=np.int64)


@torch.no_grad()
def heldout_loss(model, text: str, batch_size: int = 16) -> tuple[float, int]:
    """(mean cross-entropy in nats, number of predicted tokens) over non-overlapping ``n_ctx`` windows."""
    from interp.train.data import Windows, eval_batches

    if model.tokenizer is None:
        raise InterpError("model has no tokenizer; heldout_loss needs one to encode the text.")
    tokens = heldout_tokens(model.tokenizer, text)
    n_ctx = int(model.cfg.n_ctx)
    windows = Windows(tokens, n_ctx, n_ctx)
    if len(windows) == 0:
        raise InterpError(f"held-out text has {len(tokens)} tokens; it needs at least n_ctx + 1 = {n_ctx + 1}.")
    total, count = 0.0, 0
    model.eval()
    for x, y in eval_batches(windows, batch_size):
        logits = model(x.to(model.device))
        total += float(F.cross_entropy(logits.double().flatten(0, 1), y.to(model.device).flatten(), reduction="sum"))
        count += y.numel()
    return total / count, count


def band_edges(n_ctx: int, base: int = 256) -> list[int]:
    """Position bands for :func:`position_losses`: [0, base), [base, 1024), [1024, n_ctx) (as far as n_ctx reaches):
    the default model's context, then the first and second halves-ish of a 2k context."""
    return sorted({e for e in (0, base, 1024, n_ctx) if 0 <= e <= n_ctx})


@contextlib.contextmanager
def reading_up_to(model, length: int):
    """Let a RoPE model read ``length`` tokens for the time of the block, past its n_ctx if need be (the forward's
    length check reads ``cfg.n_ctx``; plain RoPE frequencies do not depend on it)."""
    saved = model.cfg.n_ctx
    model.cfg.n_ctx = max(saved, length)
    try:
        yield model
    finally:
        model.cfg.n_ctx = saved


@torch.no_grad()
def long_repeat_losses(model, length: int, batch: int = 4, seed: int = 0) -> dict:
    """Induction at long range: loss on the first vs the second copy of a random sequence repeated to fill
    ``length`` tokens after ``<|endoftext|>`` (the second copy starts ~length/2 tokens after the first)."""
    from interp.analysis.attention import repeated_sequence_loss

    seq_len = (length - 1) // 2
    with reading_up_to(model, length):
        means = repeated_sequence_loss(model, seq_len=seq_len, batch=batch, seed=seed,
                                       prefix=model.cfg.eos_token_id).groupby("half").loss.mean()
    return {"seq_len": seq_len, "batch": batch, "loss_first_copy": float(means["first"]),
            "loss_second_copy": float(means["second"])}


@torch.no_grad()
def position_losses(model, text: str, length: int, edges: list[int], batch_size: int = 4) -> dict:
    """Mean next-token cross-entropy (nats) by query position band on ``text``, in non-overlapping windows of
    ``length`` predictions: ``{"0-255": loss, "256-1023": loss, ...}`` plus the windows used.

    ``length`` may exceed ``model.cfg.n_ctx`` for a RoPE model (no position table to run off): that is how the
    card shows what happens when a short-context model reads past its context. Position ``i`` predicts token
    ``i + 1`` from tokens ``0..i`` of its window."""
    from interp.train.data import Windows, eval_batches

    tokens = heldout_tokens(model.tokenizer, text)
    windows = Windows(tokens, length, length)
    if len(windows) == 0:
        raise InterpError(f"held-out text has {len(tokens)} tokens; it needs at least length + 1 = {length + 1}.")
    model.eval()
    nll = []
    with reading_up_to(model, length):
        for x, y in eval_batches(windows, batch_size):
            logits = model(x.to(model.device))
            nll.append(F.cross_entropy(logits.double().transpose(1, 2), y.to(model.device), reduction="none").cpu())
    per_pos = torch.cat(nll).mean(0)  # [length]
    bands = {f"{a}-{b - 1}": float(per_pos[a:b].mean()) for a, b in itertools.pairwise(edges) if b <= length}
    return {"length": length, "windows": len(windows), "bands": bands}


def write_heldout(token_dir: str | Path, dest: Path, max_tokens: int) -> dict:
    """Decode whole validation documents (up to ``max_tokens``) from a token folder into ``heldout.txt``."""
    from interp.tokenize import decode, load_tokenizer
    from interp.train.data import TokenData

    data = TokenData(token_dir)
    tok = load_tokenizer(Path(token_dir) / "tokenizer.json")
    val = np.asarray(data.split("val"), dtype=np.int64)
    ends = np.flatnonzero(val == data.eos_id)
    # keep whole documents: cut after the last EOS that fits
    keep = ends[ends < max_tokens]
    cut = int(keep[-1]) + 1 if len(keep) else int(ends[0]) + 1
    text = decode(tok, val[:cut].tolist())
    atomic_write_text(dest, text)
    n_docs = int((val[:cut] == data.eos_id).sum())
    return {"file": dest.name, "documents": n_docs, "tokens": cut, "bytes": len(text.encode("utf-8"))}


@torch.no_grad()
def measure(model, heldout_text: str, seed: int = 0) -> dict:
    """All the numbers the card reports (see the module docstring)."""
    from interp.analysis.attention import head_scores, repeated_sequence_loss
    from interp.analysis.logit_lens import logit_lens, summarize_lens

    model.eval()
    loss, n = heldout_loss(model, heldout_text)
    out: dict = {"heldout_loss": loss, "heldout_predicted_tokens": n}
    n_ctx = int(model.cfg.n_ctx)
    out["position_loss"] = position_losses(model, heldout_text, n_ctx, band_edges(n_ctx))
    if n_ctx > 256:  # a long model: does induction reach across its context?
        out["repeated_random_long"] = long_repeat_losses(model, n_ctx, seed=seed)

    eos = model.cfg.eos_token_id
    seq_len = min(100, (model.cfg.n_ctx - 1) // 2)
    rep = repeated_sequence_loss(model, seq_len=seq_len, batch=16, seed=seed, prefix=eos)
    means = rep.groupby("half").loss.mean()
    out["repeated_random"] = {"seq_len": seq_len, "batch": 16, "prefix": "<|endoftext|>",
                              "loss_first_copy": float(means["first"]), "loss_second_copy": float(means["second"]),
                              "uniform_loss": math.log(model.cfg.d_vocab)}

    tokens = torch.tensor(heldout_tokens(model.tokenizer, heldout_text)[: 4 * model.cfg.n_ctx]).view(4, -1)
    scores = head_scores(model, tokens, repeats="random", seq_len=seq_len, n_random=8, seed=seed, prefix=eos)
    table = scores.pivot_table(index=["layer", "head"], columns="role", values="score").reset_index()
    out["head_scores"] = table.round(4).to_dict(orient="records")

    def best(role):
        row = table.loc[table[role].idxmax()]
        return {"layer": int(row["layer"]), "head": int(row["head"]), "score": float(row[role])}

    out["best"] = {r: best(r) for r in ("induction", "previous_token", "duplicate_token")}
    out["heads_over_0.3"] = {r: [f"L{int(a)}H{int(b)}" for a, b, s in zip(table["layer"], table["head"], table[r]) if s > 0.3]
                             for r in ("induction", "previous_token")}

    lens_tokens = tokens[:2, : min(128, tokens.shape[1])]
    lens = summarize_lens(logit_lens(model, lens_tokens, k=1, target="next"))
    kl = lens.groupby(["layer", "layer_name"]).agg(kl=("kl", "mean"), target_prob=("target_prob", "mean"))
    out["logit_lens"] = [{"layer": int(l), "layer_name": name, "mean_kl_final_vs_layer": float(r.kl),
                          "mean_prob_of_true_next": float(r.target_prob)} for (l, name), r in kl.iterrows()]
    return out


def _fmt_heads(table: list[dict], role: str, k: int = 3) -> str:
    rows = sorted(table, key=lambda r: -r[role])[:k]
    return ", ".join(f"L{r['layer']}H{r['head']} {r[role]:.2f}" for r in rows)


def _position_section(cfg: dict, facts: dict) -> str:
    """The card's long-context table: loss by position band, for this model and (``position_loss_compare``)
    the model it was continued from, run past its own context on the same windows."""
    own = facts.get("position_loss")
    if not own or len(own["bands"]) < 2:
        return ""
    rows = [(f"this model (n_ctx {cfg['n_ctx']})", own["bands"])]
    other = facts.get("position_loss_compare")
    if other:
        rows.append((f"`{other['model']}` (n_ctx {other['n_ctx']}, run past it)", other["bands"]))
    bands = list(own["bands"])
    table = "\n".join(f"| {label} | " + " | ".join(f"{b[k]:.3f}" for k in bands) + " |" for label, b in rows)
    rep = facts.get("repeated_random_long")
    long_rep = "" if not rep else (
        f"\n\nInduction across the context: a random sequence of {rep['seq_len']} tokens shown twice after "
        f"`<|endoftext|>` ({rep['batch']} sequences; `long_repeat_losses`): this model's loss is "
        f"**{rep['loss_first_copy']:.2f} nats on the first copy and {rep['loss_second_copy']:.2f} on the second**"
        + (f"; `{other['model']}` run past its context: {other['repeated_random_long']['loss_first_copy']:.2f} and "
           f"{other['repeated_random_long']['loss_second_copy']:.2f}." if other and "repeated_random_long" in other
           else "."))
    return f"""
## Long context: loss by position

Mean next-token loss (nats) on `{HELDOUT}` in {own['windows']} non-overlapping windows of {own['length']} tokens,
by the position of the predicting token in its window (`position_losses` in `interp/train/card.py`; a window
may span several documents, separated by `<|endoftext|>`). A RoPE model has no position table, so the
shorter model can be run past its context on the same windows, which shows why this one exists:

| model | {' | '.join(f'positions {k}' for k in bands)} |
|---|{'---|' * len(bands)}
{table}{long_rep}
"""


def render_card(name: str, cfg: dict, facts: dict, train: dict, manifest: dict, heldout: dict,
                notes: str = "") -> str:
    rr = facts["repeated_random"]
    sources = "\n".join(
        f"| {s['description']} | `{s['package']}` {s['version']} | {s['license']} | {s['documents']} | "
        f"{s['characters'] / 1e6:.2f} M |" for s in manifest["sources"])
    lens = "\n".join(f"| {r['layer_name']} | {r['mean_kl_final_vs_layer']:.3f} | {r['mean_prob_of_true_next']:.3f} |"
                     for r in facts["logit_lens"])
    heads = "\n".join(
        f"| L{r['layer']}H{r['head']} | {r['previous_token']:.2f} | {r['induction']:.2f} | {r['duplicate_token']:.2f} | "
        f"{r['attention_sink']:.2f} | {r['entropy']:.2f} |" for r in facts["head_scores"])
    n_params = train["n_params"]
    tc = train["train_config"]
    frac = tc.get("repeat_random_frac", 0.0)
    random_note = (f"; in {frac:.0%} of those rows the span is first replaced by random tokens, so only copying "
                   f"can predict its second occurrence" if frac else "")
    notes = "\n".join(f"* {line.strip()}" for line in notes.split("\n") if line.strip())
    ind, prev = facts["best"]["induction"], facts["best"]["previous_token"]
    circuits = (f"its strongest previous-token head is L{prev['layer']}H{prev['head']} (score {prev['score']:.2f}) and "
                f"its strongest induction head L{ind['layer']}H{ind['head']} (score {ind['score']:.2f}); on a repeated "
                f"random sequence the loss falls from {rr['loss_first_copy']:.2f} to {rr['loss_second_copy']:.2f} nats "
                f"on the second copy. Details below.")
    init_from = tc.get("init_from")
    origin = (f"continued from `{Path(init_from).name}` (its weights, trained by this project) on windows of "
              f"{tc['context_length']} tokens" if init_from else "trained from scratch by this project")
    default_note = f"also reachable as `--model {name}`" if init_from else "also the default: interp.load()"
    if tc.get("lr_schedule") == "time":
        schedule = f"over a {tc['max_minutes']:.0f}-minute wall-clock budget (`--lr-schedule time`)"
        steps = f"{train['step']} (the time budget ended the run)"
    else:
        schedule = f"at step {tc['steps']}"
        steps = f"{train['step']} of {train['steps_planned']} planned (stopped by: {train['stop_reason']})"
    return f"""# {name}

A 2-layer, {cfg['n_heads']}-head, d_model {cfg['d_model']} decoder (RoPE, pre-LayerNorm, GELU MLP,
untied embeddings; {n_params / 1e6:.2f} M parameters, float32 weights, context {cfg['n_ctx']} tokens)
{origin}
on {manifest['characters'] / 1e6:.1f} M characters of openly licensed English: software documentation,
the World English Bible and Jane Austen's novels. It exists so the toolkit has a real model with real
interpretable structure, offline: `interp.load({'' if not init_from else repr(name)})` loads it.

It is a *small* model: its text is locally fluent and globally confused. What it is good for is
showing circuits: {circuits}

## Use

```python
import interp
model = interp.load("{name}")        # {default_note}
from interp.generate import generate
print(model.to_string(generate(model, "The Lord said to Moses,", max_new_tokens=30, temperature=0)[0]))
```

## Training data

| source | Debian package | licence | documents | characters |
|---|---|---|---|---|
{sources}

Built offline by `scripts/build_corpus.py` (`apt-get download` + `dpkg-deb -x`, HTML reduced to its
main text; the Bible via `pysword`, the novels via `rdata`). Licences are read from each package's
`debian/copyright` and recorded in `recipe.json`. Documents: one HTML page, one Bible chapter, one
novel chapter; 1 % of documents (by a hash of their name) are held out for validation.

Tokenizer: byte-level BPE (`tokenizers`), vocabulary {cfg['d_vocab']} including `<|endoftext|>`
(id {cfg['eos_token_id']}), which separates documents. Every UTF-8 string round-trips exactly.

## Training

* Teacher forcing, next-token cross-entropy, context {tc['context_length']}, stride {tc['stride']},
  batch {tc['batch_size']}; AdamW (β = {tc['beta1']}, {tc['beta2']}; weight decay {tc['weight_decay']} on matrices),
  learning rate {tc['lr']} with {tc['warmup_steps']} warm-up steps then cosine to {tc['min_lr']:.2g}
  {schedule},
  gradient clipping {tc['grad_clip']}, seed {tc['seed']}, bf16 autocast {'on' if tc['bf16'] else 'off'},
  torch.compile {'on' if tc['compile'] else 'off'}.
* **Curriculum (repeated spans):** in {tc['repeat_prob']:.0%} of the training rows, a random span of
  {tc['repeat_min_span']}–{tc['repeat_max_span'] or tc['context_length'] // 4} tokens of the row's own text is pasted again later in the same row
  (`interp/train/data.py: add_repeated_spans`){random_note}. Small models on plain text are slow to
  form induction heads; repeats make copying pay off early. The validation data has no such repeats.
{notes}
* **Steps:** {steps} —
  **{train['tokens'] / 1e6:.1f} M tokens seen** ({train['tokens'] / manifest['tokens_train']:.2f} passes over the
  {manifest['tokens_train'] / 1e6:.2f} M training tokens).
* **Time and device:** {train['elapsed_s'] / 60:.0f} min of training wall clock (compilation included) on
  {train['device']}.
* **Final losses:** train {train['final_train_loss']:.3f} nats (mean of the last logging interval, with the
  repeated-span rows), validation {train['final_val_loss']:.3f} nats (first {tc['eval_batches']} batches of the
  held-out split).
* **Held-out text in this folder:** `{HELDOUT}` ({heldout['documents']} whole validation documents,
  {heldout['tokens']} tokens, {heldout['bytes'] / 1024:.0f} KB). Loss on it, non-overlapping windows of {cfg['n_ctx']}:
  **{facts['heldout_loss']:.3f} nats** ({facts['heldout_predicted_tokens']} predicted tokens).
  The zoo's tests (`tests/test_shipped_model.py`, `tests/test_long_model.py`) recompute this number.

Loss curve: `loss.png`; full log: `log.csv`; exact configuration and commands: `recipe.json`, `recipe.md`.
{_position_section(cfg, facts)}
## Interpretability facts (measured with `interp.analysis`)

Measured by `python -m interp.train.card` (`interp/train/card.py`) on this checkpoint:

* **Induction behaviour:** on a random token sequence of {rr['seq_len']} tokens shown twice (after
  `<|endoftext|>`, {rr['batch']} sequences), the loss is **{rr['loss_first_copy']:.2f} nats on the first copy and
  {rr['loss_second_copy']:.2f} nats on the second** (uniform guessing: {rr['uniform_loss']:.2f}).
  (`repeated_sequence_loss`)
* **Best induction head:** L{facts['best']['induction']['layer']}H{facts['best']['induction']['head']},
  score **{facts['best']['induction']['score']:.2f}** (attention mass on the token after the previous occurrence of
  the current token; top three: {_fmt_heads(facts['head_scores'], 'induction')}). (`head_scores`)
* **Previous-token heads:** best L{facts['best']['previous_token']['layer']}H{facts['best']['previous_token']['head']}
  **{facts['best']['previous_token']['score']:.2f}** on held-out text (top three: {_fmt_heads(facts['head_scores'], 'previous_token')}).
* **Heads scoring > 0.3:** induction {', '.join(facts['heads_over_0.3']['induction']) or 'none'};
  previous-token {', '.join(facts['heads_over_0.3']['previous_token']) or 'none'}.

Logit lens on held-out text (2 × 128 tokens): mean KL(final ‖ layer) and the mean probability the
lens gives the true next token (`logit_lens` + `summarize_lens`):

| layer | KL (nats) | p(true next) |
|---|---|---|
{lens}

All head scores (previous-token and attention-sink/entropy on held-out text; induction and
duplicate-token on repeated random tokens):

| head | previous | induction | duplicate | sink | entropy |
|---|---|---|---|---|---|
{heads}

## Limitations

Trained for {train['elapsed_s'] / 60:.0f} minutes on two shared CPU cores: expect repetition and topic drift in samples. The
corpus is English documentation-heavy; other languages tokenize into byte pieces. No safety tuning.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m interp.train.card", description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", help="zoo folder (config.json, model.safetensors, tokenizer.json)")
    ap.add_argument("--run", required=True, help="the training run folder (summary.json, log.csv, loss.png)")
    ap.add_argument("--manifest", required=True, help="corpus manifest.json from scripts/build_corpus.py")
    ap.add_argument("--tokens", required=True, help="token folder (meta.json, val.bin, tokenizer.json)")
    ap.add_argument("--heldout-max-tokens", type=int, default=40000)
    ap.add_argument("--device-description", default=f"{platform.machine()} CPU")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--notes", default="", help="extra bullet points for the Training section (one per line)")
    ap.add_argument("--compare", default=None, metavar="MODEL_DIR",
                    help="a shorter-context RoPE model (e.g. the one --init-from started from) whose loss by position "
                         "is measured past its context on the same windows, for the card's long-context table")
    args = ap.parse_args(argv)

    import shutil

    from interp.loading import load_checkpoint
    from interp.train.data import TokenData

    torch.set_num_threads(args.threads)
    model_dir, run = Path(args.model_dir), Path(args.run)
    heldout = write_heldout(args.tokens, model_dir / HELDOUT, args.heldout_max_tokens)
    model = load_checkpoint(model_dir)
    facts = measure(model, (model_dir / HELDOUT).read_text(encoding="utf-8"))
    if args.compare:
        other = load_checkpoint(args.compare)
        n_ctx = int(model.cfg.n_ctx)
        facts["position_loss_compare"] = {
            "model": Path(args.compare).name, "n_ctx": int(other.cfg.n_ctx),
            **position_losses(other, (model_dir / HELDOUT).read_text(encoding="utf-8"), n_ctx, band_edges(n_ctx)),
            "repeated_random_long": long_repeat_losses(other, n_ctx)}
    from interp.train.trainer import latest_checkpoint

    ckpt = latest_checkpoint(run)
    state = json.loads((ckpt / "state.json").read_text())
    rows = state["log"]
    summary = {
        "checkpoint": str(ckpt), "step": state["step"], "steps_planned": state["train_config"]["steps"],
        "tokens": state["tokens"], "elapsed_s": round(state["elapsed_s"], 1),
        "stop_reason": json.loads((run / "summary.json").read_text())["stop_reason"]
        if (run / "summary.json").is_file() else "in progress",
        "final_train_loss": next((r["train_loss"] for r in reversed(rows) if "train_loss" in r), None),
        "final_val_loss": next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    train = {**summary, "train_config": state["train_config"], "device": args.device_description}
    manifest = json.loads(Path(args.manifest).read_text())
    meta = TokenData(args.tokens).meta
    manifest["tokens_train"] = meta["splits"]["train"]["tokens"]
    manifest["tokens_val"] = meta["splits"]["val"]["tokens"]
    cfg = json.loads((model_dir / "config.json").read_text())
    for name in ("loss.png", "log.csv"):
        if (run / name).is_file():
            shutil.copyfile(run / name, model_dir / name)
    recipe = {
        "name": model_dir.name,
        "model_config": cfg,
        "train_config": train["train_config"],
        "training": {k: v for k, v in summary.items() if k != "checkpoint"} | {"device": args.device_description},
        "corpus": manifest,
        "tokens": {k: v for k, v in meta.items() if k != "val_documents"},
        "heldout": heldout | {"loss_nats": facts["heldout_loss"],
                              "protocol": "encode heldout.txt with tokenizer.json; non-overlapping windows of "
                                          "n_ctx+1 tokens with stride n_ctx (interp.train.data.Windows); mean "
                                          "next-token cross-entropy over all predicted tokens"},
        "facts": facts,
        "notes": args.notes,
    }
    atomic_write_text(model_dir / "recipe.json", json.dumps(recipe, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(model_dir / "README.md", render_card(model_dir.name, cfg, facts, train, manifest, heldout,
                                                                 args.notes))
    print(json.dumps({"heldout_loss": facts["heldout_loss"], "repeated_random": facts["repeated_random"],
                      "best": facts["best"], "position_loss": facts["position_loss"],
                      "position_loss_compare": facts.get("position_loss_compare")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
