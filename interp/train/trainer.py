"""Teacher-forced training of a :class:`HookedDecoder` (nanoGPT-style loop, resumable bit for bit).

One step: take the batch for this step (a pure function of the step, see ``data.BatchSchedule``),
run the model on the inputs, score every position against the next token with cross-entropy, clip
the gradient norm, take an AdamW step at the learning rate of a linear warm-up then cosine decay.

Checkpoints are folders ``<out>/checkpoints/step-<n>/`` holding

    config.json, model.safetensors, tokenizer.json   (so ``interp.load(folder)`` works on them)
    optimizer.safetensors                             AdamW moments and step counters
    rng.safetensors                                   torch RNG states
    state.json                                        step, tokens seen, elapsed time, optimizer
                                                      hyper-parameters, the training log so far

written into a temporary folder and renamed into place, after which ``<out>/latest.json`` is
replaced atomically. Interrupting at any moment leaves the previous checkpoint intact; the first
Ctrl-C finishes the current step and saves, a second one stops at once. Resuming restores the model,
the optimizer and the RNG, and since the batches depend on the step alone, continuing gives the very
same parameters as a run that was never interrupted (without torch.compile/autocast, which may
reorder float operations).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from interp.errors import InterpError
from interp.io import atomic_write_text
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder
from interp.tokenize import backend_tokenizer
from interp.train.data import BatchSchedule, TokenData, Windows, eval_batches


@dataclass
class TrainConfig:
    data: str  # token folder from `prepare`
    out: str  # run folder: checkpoints, log.csv, loss.png
    steps: int = 1000
    batch_size: int = 8
    context_length: int = 256
    stride: int | None = None  # None -> context_length // 2
    lr: float = 2e-3
    min_lr: float | None = None  # None -> lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    repeat_prob: float = 0.0  # share of rows with a repeated span (induction curriculum)
    repeat_min_span: int = 8
    repeat_max_span: int | None = None
    repeat_random_frac: float = 0.0  # share of repeated spans made of random tokens (pure copying signal)
    bf16: bool = False  # bfloat16 autocast (CPU or CUDA)
    compile: bool = False  # torch.compile the forward pass
    threads: int | None = None  # torch.set_num_threads
    device: str = "cpu"
    max_minutes: float | None = None  # stop (and save) after this much wall time
    stop_after: int | None = None  # stop (and save) after this step; the schedule still spans `steps`
    # "steps": cosine over `steps` (exactly resumable). "time": cosine over the wall-clock budget
    # `max_minutes` (for a fixed time slot on a shared machine; the schedule then depends on timing).
    lr_schedule: str = "steps"
    progress: bool = True  # tqdm bar
    model: dict = field(default_factory=dict)  # DecoderConfig fields (d_vocab and n_ctx are filled in)
    # A model folder (e.g. models/docs-bible-austen-2l) whose architecture and weights start the run instead of a
    # random initialisation: continued training / fine-tuning, e.g. on longer windows. Its config is the base,
    # n_ctx becomes context_length, and `model` fields override the rest. Ignored when resuming a checkpoint.
    init_from: str | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "context_length", "eval_interval", "log_interval",
                     "checkpoint_interval", "keep_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InterpError(f"{name} must be an integer >= 1; got {v!r}.")
        if self.stride is None:
            self.stride = max(1, self.context_length // 2)
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if not self.lr > 0:
            raise InterpError(f"lr must be > 0; got {self.lr!r}.")
        if not 0 <= self.min_lr <= self.lr:
            raise InterpError(f"min_lr must be in [0, lr={self.lr}]; got {self.min_lr!r}.")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.steps:
            raise InterpError(f"warmup_steps must be an integer in [0, steps={self.steps}]; got {self.warmup_steps!r}.")
        if not 0.0 <= self.repeat_prob <= 1.0:
            raise InterpError(f"repeat_prob must be in [0, 1]; got {self.repeat_prob!r}.")
        if self.lr_schedule not in ("steps", "time"):
            raise InterpError(f"lr_schedule must be 'steps' or 'time'; got {self.lr_schedule!r}.")
        if self.lr_schedule == "time" and not self.max_minutes:
            raise InterpError("lr_schedule='time' needs max_minutes (the budget the cosine spans).")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise InterpError(f"grad_clip must be > 0 (or None to disable); got {self.grad_clip!r}.")


def lr_at(step: int, cfg: TrainConfig, time_fraction: float | None = None) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``steps``.

    With ``time_fraction`` (share of the post-warm-up time budget used, for ``lr_schedule="time"``) the
    cosine follows wall-clock time instead of the step count.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if time_fraction is not None:
        progress = min(1.0, max(0.0, time_fraction))
    else:
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors (norm gains, biases) do not (they set scales, not features)."""
    decay = [p for _, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach=False: the plain per-parameter loop, which is deterministic on every backend.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)


def _init_source(cfg: TrainConfig, data: TokenData, tokenizer) -> tuple[dict, dict | None, object]:
    """(base config fields, weights, tokenizer) of the run's starting point: nothing for a fresh model, else the
    ``init_from`` model's architecture and weights, after checking it speaks the data's vocabulary."""
    if not cfg.init_from:
        return {}, None, tokenizer
    from interp.loading.checkpoint import load_checkpoint
    from interp.zoo import is_interp_checkpoint

    if not is_interp_checkpoint(Path(cfg.init_from)):
        raise InterpError(f"init_from must be an interp model folder (config.json + model.safetensors, e.g. "
                          f"models/docs-bible-austen-2l); got {cfg.init_from!r}.")
    init = load_checkpoint(cfg.init_from)
    same_vocab = (tokenizer is None or init.tokenizer is None
                  or backend_tokenizer(init.tokenizer).get_vocab() == tokenizer.get_vocab())
    if not same_vocab:
        raise InterpError(f"init_from {cfg.init_from}: its tokenizer.json differs from the one of the token "
                          f"folder {cfg.data}; prepare the data with that model's tokenizer.json.")
    fields = {k: v for k, v in init.cfg.to_dict().items() if k not in ("source", "name")}
    fields["n_ctx"] = cfg.context_length  # the point of continued training on longer windows
    if fields["d_vocab"] < data.vocab_size:
        raise InterpError(f"init_from {cfg.init_from}: its d_vocab {fields['d_vocab']} is smaller than the data's "
                          f"vocab_size {data.vocab_size}.")
    state = {k: v.detach().clone() for k, v in init.state_dict().items()}
    return fields, state, tokenizer if tokenizer is not None else init.tokenizer


def build_model(cfg: TrainConfig, data: TokenData, tokenizer=None) -> HookedDecoder:
    """A fresh model of ``cfg.model``'s architecture, or the ``init_from`` model's weights in a config whose
    n_ctx is the training context (RoPE and no positional encoding carry over to any length; a learned
    position table of another length cannot, and is refused with the shapes)."""
    base, init_state, tokenizer = _init_source(cfg, data, tokenizer)
    fields = {**base, **cfg.model}
    fields.setdefault("n_ctx", cfg.context_length)
    fields.setdefault("eos_token_id", data.eos_id)
    fields["d_vocab"] = fields.get("d_vocab", data.vocab_size)
    if fields["d_vocab"] < data.vocab_size:
        raise InterpError(f"model d_vocab must be >= the data's vocab_size {data.vocab_size}; got {fields['d_vocab']}.")
    if fields["n_ctx"] < cfg.context_length:
        raise InterpError(f"model n_ctx must be >= context_length {cfg.context_length}; got {fields['n_ctx']}.")
    for key, default in (("d_model", 128), ("n_layers", 2), ("n_heads", 4)):
        fields.setdefault(key, default)
    model_cfg = DecoderConfig(**fields)
    torch.manual_seed(cfg.seed)
    model = HookedDecoder(model_cfg, tokenizer=tokenizer)
    if init_state is not None:
        from interp.loading.checkpoint import load_state

        load_state(model, init_state, f"init_from {cfg.init_from}")
    return model


# --------------------------------------------------------------------------------------------
# Checkpoints


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_checkpoint(out: Path, model: HookedDecoder, opt: torch.optim.Optimizer, state: dict,
                             keep: int = 2) -> Path:
    """Write ``checkpoints/step-<n>/`` via a temporary folder, then point ``latest.json`` at it."""
    step = state["step"]
    ckpt_root = out / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "producer": "interp.train"})
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
        if model.tokenizer is not None:
            (tmp / "tokenizer.json").write_text(backend_tokenizer(model.tokenizer).to_str(pretty=True))
        opt_tensors, opt_meta = _optimizer_tensors(opt)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    atomic_write_text(out / "latest.json", json.dumps({"step": step, "path": str(final.relative_to(out))}) + "\n")
    steps = sorted(ckpt_root.glob("step-*"))
    for old in steps[:-keep] if keep else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: str | Path) -> Path | None:
    out = Path(out)
    if not (out / "latest.json").is_file():
        return None
    return out / json.loads((out / "latest.json").read_text())["path"]


def load_training_checkpoint(folder: Path, model: HookedDecoder, opt: torch.optim.Optimizer) -> dict:
    from interp.loading.checkpoint import load_state

    load_state(model, load_file(str(folder / "model.safetensors")), str(folder / "model.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    _load_optimizer(opt, load_file(str(folder / "optimizer.safetensors")), state.pop("optimizer"))
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return state


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model: HookedDecoder, windows: Windows, batch_size: int, max_batches: int | None,
             device: str, autocast_ctx) -> float:
    """Mean next-token cross-entropy (nats) over the first ``max_batches`` validation batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in eval_batches(windows, batch_size, max_batches):
        with autocast_ctx():
            logits = model(x.to(device))
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum")
        total += float(nll)
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def repeated_random_tokens_loss(model: HookedDecoder, seq_len: int, batch: int = 8, seed: int = 0,
                                vocab_low: int = 1) -> tuple[float, float]:
    """Mean loss on the first vs the second copy of a repeated random-token sequence.

    A model with induction heads predicts the second copy far better than chance; the gap is the
    standard behavioural signature (Olsson et al., 2022). The very first token is never predicted.
    """
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(vocab_low, model.cfg.d_vocab, (batch, seq_len), generator=g)
    tokens = torch.cat([half, half], dim=1).to(model.device)
    was_training = model.training
    model.eval()
    nll = model.loss(model(tokens), tokens, per_token=True)  # [batch, 2*seq_len - 1]
    model.train(was_training)
    return float(nll[:, : seq_len - 1].mean()), float(nll[:, seq_len - 1:].mean())


# --------------------------------------------------------------------------------------------
# Logging


LOG_FIELDS = ["step", "tokens", "epoch", "lr", "train_loss", "val_loss", "rep_first", "rep_second", "elapsed_s",
              "tokens_per_s"]


def write_log(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in LOG_FIELDS})
    atomic_write_text(out / "log.csv", buf.getvalue())
    atomic_write_text(out / "log.json", json.dumps(rows) + "\n")


def plot_losses(out: Path, rows: list[dict]) -> None:
    """loss.png: training loss (smoothed), validation loss, and the repeated-sequence losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interp.io import atomic_path

    train = [(r["tokens"], r["train_loss"]) for r in rows if r.get("train_loss") not in (None, "")]
    val = [(r["tokens"], r["val_loss"]) for r in rows if r.get("val_loss") not in (None, "")]
    rep = [(r["tokens"], r["rep_first"], r["rep_second"]) for r in rows if r.get("rep_second") not in (None, "")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.8, label="train (log interval mean)")
    if val:
        ax.plot(*zip(*val), "o-", ms=3, label="validation")
    if rep:
        t, a, b = zip(*rep)
        ax.plot(t, a, ":", label="random tokens, 1st copy")
        ax.plot(t, b, "--", label="random tokens, 2nd copy")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "loss.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The loop


class _GracefulStop:
    """First SIGINT: finish the step, save, stop. Second: raise KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(cfg: TrainConfig, resume: bool = True) -> dict:
    """Train (or resume) according to ``cfg``. Returns a summary dict (also written to summary.json)."""
    import contextlib

    out = Path(cfg.out)
    data = TokenData(cfg.data)  # before the run folder exists: bad data leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = None
    if (Path(cfg.data) / "tokenizer.json").is_file():  # `prepare` keeps a copy beside the tokens
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(cfg.data) / "tokenizer.json"))

    train_windows = Windows(data.split("train"), cfg.context_length, cfg.stride)
    val_windows = Windows(data.split("val"), cfg.context_length, cfg.context_length)
    # random span tokens avoid id 0..eos so a random span never fakes a document boundary
    schedule = BatchSchedule(train_windows, cfg.batch_size, cfg.seed, cfg.repeat_prob, cfg.repeat_min_span,
                             cfg.repeat_max_span, cfg.repeat_random_frac, (data.eos_id + 1, data.vocab_size))

    model = build_model(cfg, data, tokenizer).to(cfg.device)
    model.train()
    opt = make_optimizer(model, cfg)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "log": [], "train_config": asdict(cfg)}
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        saved_cfg = json.loads((ckpt / "config.json").read_text())
        if saved_cfg != model.cfg.to_dict():
            raise InterpError(f"cannot resume from {ckpt}: its model config differs from the requested one. "
                              f"Use a new --out folder or the same model flags.")
        state = load_training_checkpoint(ckpt, model, opt)
        state["train_config"] = asdict(cfg)
    atomic_write_text(out / "train_config.json", json.dumps(asdict(cfg), indent=2) + "\n")

    fwd = torch.compile(model) if cfg.compile else model
    device_type = "cuda" if str(cfg.device).startswith("cuda") else "cpu"

    def autocast_ctx():
        if cfg.bf16:
            return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    rows: list[dict] = state["log"]
    tokens_per_step = cfg.batch_size * cfg.context_length
    step = state["step"]
    t_start, elapsed0 = time.time(), state["elapsed_s"]
    window_losses: list[float] = []
    window_t0, window_tokens = time.time(), 0

    bar = None
    if cfg.progress:
        from interp.progress import progress_bar

        bar = progress_bar(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    def snapshot() -> dict:
        snap = {"step": step, "tokens": state["tokens"], "elapsed_s": elapsed0 + time.time() - t_start,
                "log": rows, "train_config": asdict(cfg)}
        if "warmup_end_s" in state:
            snap["warmup_end_s"] = state["warmup_end_s"]
        return snap

    stop_reason = "steps"
    with _GracefulStop() as stopper:
        while step < cfg.steps:
            frac = None
            if cfg.lr_schedule == "time":
                now_elapsed = elapsed0 + time.time() - t_start
                if step == cfg.warmup_steps and "warmup_end_s" not in state:
                    state["warmup_end_s"] = now_elapsed
                w_end = state.get("warmup_end_s", now_elapsed)
                frac = (now_elapsed - w_end) / max(1e-9, cfg.max_minutes * 60 - w_end)
            lr = lr_at(step, cfg, frac)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = schedule.batch(step)
            x, y = x.to(cfg.device), y.to(cfg.device)
            with autocast_ctx():
                logits = fwd(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            state["tokens"] += tokens_per_step
            window_losses.append(float(loss.detach()))
            window_tokens += tokens_per_step
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{window_losses[-1]:.3f}", lr=f"{lr:.2e}")

            last = step == cfg.steps
            elapsed = elapsed0 + time.time() - t_start
            over_time = cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60
            stop_here = cfg.stop_after is not None and step >= cfg.stop_after
            if stopper.requested or over_time or stop_here:
                last = True
                stop_reason = "interrupted" if stopper.requested else "max_minutes" if over_time else "stop_after"
            if step % cfg.log_interval == 0 or step % cfg.eval_interval == 0 or last:
                now = time.time()
                row = {"step": step, "tokens": state["tokens"], "epoch": round(schedule.epoch(step), 4), "lr": lr,
                       "train_loss": float(np.mean(window_losses)), "elapsed_s": round(elapsed, 2),
                       "tokens_per_s": round(window_tokens / max(now - window_t0, 1e-9), 1)}
                window_losses, window_t0, window_tokens = [], now, 0
                if step % cfg.eval_interval == 0 or last:
                    if len(val_windows):
                        row["val_loss"] = evaluate(model, val_windows, cfg.batch_size, cfg.eval_batches,
                                                   cfg.device, autocast_ctx)
                    rep_len = min(50, cfg.context_length // 2)
                    if rep_len >= 4:
                        row["rep_first"], row["rep_second"] = repeated_random_tokens_loss(
                            model, rep_len, seed=cfg.seed, vocab_low=1)
                    if bar is not None and "val_loss" in row:
                        bar.write(f"step {step}: train {row['train_loss']:.3f} val {row['val_loss']:.3f} "
                                  f"rep {row.get('rep_first', float('nan')):.2f}->{row.get('rep_second', float('nan')):.2f}")
                rows.append(row)
                write_log(out, rows)
                if step % cfg.eval_interval == 0 or last:
                    plot_losses(out, rows)
            if step % cfg.checkpoint_interval == 0 or last:
                save_training_checkpoint(out, model, opt, snapshot(), keep=cfg.keep_checkpoints)
            if last:
                break
    if bar is not None:
        bar.close()
    summary = {
        "step": step, "steps_planned": cfg.steps, "stop_reason": stop_reason, "tokens": state["tokens"],
        "elapsed_s": round(elapsed0 + time.time() - t_start, 1),
        "final_train_loss": next((r["train_loss"] for r in reversed(rows) if "train_loss" in r), None),
        "final_val_loss": next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None),
        "checkpoint": str(latest_checkpoint(out)),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def export_model(checkpoint: str | Path, dest: str | Path, name: str | None = None,
                 max_bytes: int = 20 * 2**20) -> Path:
    """Copy a training checkpoint's model to a zoo folder (config.json, model.safetensors, tokenizer.json).

    Weights stay float32 when they fit in ``max_bytes``, else they are stored as float16 (the config
    keeps ``dtype="float32"``, so loading upcasts and analysis runs in full precision).
    """
    from interp.io import atomic_path
    from interp.loading.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if size > max_bytes:
        tensors = {k: v.to(torch.float16) for k, v in tensors.items()}
    with atomic_path(dest / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "interp.train.export"})
    cfg = model.cfg.to_dict()
    if name:
        cfg["name"] = name
    atomic_write_text(dest / "config.json", json.dumps(cfg, indent=2) + "\n")
    if model.tokenizer is not None:
        atomic_write_text(dest / "tokenizer.json", backend_tokenizer(model.tokenizer).to_str(pretty=True))
    return dest
