"""Training an SAE: ``train_sae(source, d_sae, architecture=...)``.

The recipe, per architecture (x is the activation after the constant rescaling below, x̂ the reconstruction,
f the feature activations, MSE = ‖x - x̂‖² summed over d_in and averaged over the batch):

* ``relu``: MSE + λ₁ Σᵢ fᵢ ‖W_dec[i]‖ (Anthropic's April 2024 update; λ₁ warms up linearly over the first
  5 % of steps).
* ``topk``: MSE + α · AuxK, with AuxK (Gao et al. 2024, appendix A.2) the MSE of the ``k_aux = d_in / 2`` most
  active *dead* latents reconstructing the residual x - x̂, scaled down while few latents are dead, α = 1/32.
* ``jumprelu``: MSE + λ₀ Σᵢ 1[zᵢ > θᵢ] (an L0 penalty), trained through the straight-through pseudo-derivatives
  of Rajamanoharan et al. 2024 (``model._JumpReLU`` / ``model._Step``); λ₀ warms up like λ₁.

Shared: decoder rows are kept at unit norm (the gradient's component along each row is removed before the
step, the row renormalised after it); ``b_dec`` starts at the geometric median (Weiszfeld) or mean of a
sample; the input is multiplied by one constant so that E‖x‖² = d_in, which makes coefficients transfer
across models, and the constant is folded into the weights at the end (features come out in the
activation's own units; the decoder stays unit-norm). Adam, learning rate warmed up over 1 % and decayed
linearly to 0 over the last 20 % of the run. A latent is *dead* when it has not fired for ``dead_tokens``
tokens.

Dead-latent resampling (``relu`` only, off by default: ``resample_dead_every=N``), as in Anthropic's "Towards
Monosemanticity" (2023): every N steps before the learning-rate decay, each latent that has not fired in the
last N steps is re-initialised towards an input the SAE reconstructs badly — inputs drawn from
``resample_inputs`` rows with probability ∝ (squared reconstruction error)², the decoder row set to the unit
vector of ``x - b_dec``, the encoder column to the same vector times ``resample_scale`` (0.2) × the mean norm
of the live latents' encoder columns, ``b_enc`` to 0, and Adam's moments of those rows and columns to 0.
TopK does not need it (AuxK keeps its latents alive).

``checkpoint_dir`` makes the run resumable: every ``checkpoint_every`` steps (and at the end, and when the
``time_budget`` in seconds runs out) it holds a loadable SAE (SAELens' ``cfg.json`` + ``sae_weights
.safetensors``, folded) and the trainer's state (``trainer_state.safetensors`` + ``trainer_state.json``:
raw weights, Adam moments, dead-latent counters, step, history). Calling ``train_sae`` again with the same
options continues from there (with more ``steps`` it trains on); different options raise unless
``overwrite=True``. Batches are a pure function of the step (see ``source.ActivationSource``), so a resumed
run sees the data an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from interp.analysis.sae.model import SAE, TRAINABLE, _arch, _Step, load_sae, save_sae
from interp.analysis.sae.source import ActivationSource, as_source
from interp.errors import InterpError
from interp.io import atomic_path, atomic_write_text, check_output_folder

__all__ = ["DEFAULTS", "geometric_median", "train_sae"]

STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"

# Per-architecture defaults, chosen on the shipped model's residual stream (benchmarks/sae.py).
DEFAULTS = {
    "relu": {"lr": 3e-3, "l1_coefficient": 2.0},
    "topk": {"lr": 3e-3},
    "jumprelu": {"lr": 3e-3, "l0_coefficient": 0.2, "bandwidth": 0.05, "init_threshold": 1.0},
}


def _int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InterpError(f"{name}: must be an int >= {lo}; given {v!r}")
    return v


def _pos(name, v, allow_zero=False):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
        v >= 0 if allow_zero else v > 0)
    if not ok:
        raise InterpError(f"{name}: must be a number {'>= 0' if allow_zero else '> 0'}; given {v!r}")
    return float(v)


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """The point minimising the summed Euclidean distance to the rows of ``x`` (Weiszfeld's iteration).

    Robust to outliers, unlike the mean: SAELens and Anthropic start ``b_dec`` here.

    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    >>> bool(geometric_median(x).norm() < 1.0), bool(x.mean(0).norm() > 30)
    (True, True)
    """
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(1e-12)
        nxt = (w[:, None] * x).sum(0) / w.sum()
        if (nxt - y).norm() <= tol * max(1.0, float(y.norm())):
            y = nxt
            break
        y = nxt
    return y


def _b_enc_init(value, d_sae: int) -> torch.Tensor | None:
    """``b_enc_init``: None (zeros), a number, or ``d_sae`` numbers, in the activation's own units."""
    if value is None:
        return None
    try:
        t = torch.as_tensor(value, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or (t.numel() != 1 and t.numel() != d_sae) or not bool(torch.isfinite(t).all()):
        raise InterpError(f"b_enc_init: must be None, a finite number or {d_sae} (d_sae) finite numbers; given "
                          f"{value if t is None else f'{t.numel()} values'}")
    return t.expand(d_sae).clone()


# A ReLU SAE's encoder starts as its (unit-norm) decoder's transpose scaled down: at full scale about half the
# latents fire on the first batches and the L1 term spends the run switching them off. At 0.1 (SAELens starts its
# decoder rows at norm 0.1 with the encoder tied to them) the shipped model's blocks.0 SAE reached FVE 0.79 at L0 18
# in 2000 steps instead of 0.75 at L0 29, and 0.76 instead of 0.58 in 300 (benchmarks/sae_vs_saelens.py, sae.py).
RELU_ENCODER_INIT = 0.1


def _schedule(frac: float, warmup: float = 0.01, decay: float = 0.2) -> float:
    if frac < warmup:
        return (frac + 1e-9) / warmup
    if frac > 1 - decay:
        return max(0.0, (1 - frac) / decay)
    return 1.0


class _Trainer:
    """One SAE's (or transcoder's) optimiser state. ``scale`` multiplies the input, ``out_scale`` the target
    (a transcoder's; an SAE's target is its input, so the two are equal)."""

    def __init__(self, sae: SAE, opts: dict, scale: float, out_scale: float | None = None):
        self.sae, self.opts, self.scale = sae, opts, scale
        self.out_scale = scale if out_scale is None else out_scale
        self.opt = torch.optim.Adam(sae.parameters(), lr=opts["lr"], betas=(0.9, 0.999))
        dev = sae.W_dec.device
        self.since_fired = torch.zeros(sae.latent_shape, dtype=torch.long, device=dev)  # tokens since each fired
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.resamples: list[dict] = []  # {"step", "resampled"} per resampling event

    def loss(self, x: torch.Tensor, frac: float, y: torch.Tensor):
        sae, arch, o = self.sae, self.sae.cfg.architecture, self.opts
        pre = sae.pre_activations(x)
        f = sae.activate(pre)
        recon = sae.decode(f) + sae.skip(x)  # skip: a skip transcoder's affine term, 0 otherwise
        err = y.reshape(recon.shape) - recon  # a cross-layer transcoder's rows are [layer, d]: summed over both
        mse = err.pow(2).flatten(1).sum(-1).mean()
        warm = min(1.0, frac / 0.05)
        if arch == "relu":
            aux = o["l1_coefficient"] * warm * (f * sae._decoder_norms()).flatten(1).sum(-1).mean()
        elif arch == "jumprelu":
            l0 = _Step.apply(pre, sae.threshold, sae.cfg.jumprelu_bandwidth).flatten(1).sum(-1).mean()
            aux = o["l0_coefficient"] * warm * l0
        else:
            aux = self._auxk(pre, err.detach())
        return mse + aux, mse, f, err

    def _auxk(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        dead = self.since_fired > self.opts["dead_tokens"]
        n_dead = int(dead.sum())
        if n_dead == 0 or self.opts["aux_coefficient"] == 0:
            return pre.new_zeros(())
        k_aux = min(self.sae.d_in // 2 or 1, n_dead)
        masked = torch.where(dead[None], pre, torch.full_like(pre, -math.inf))
        vals, idx = masked.topk(k_aux, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        aux_recon = self.sae.decoder_sum(acts)  # no b_dec: it models the residual
        scale = min(n_dead / (self.sae.d_in // 2 or 1), 1.0)
        return self.opts["aux_coefficient"] * scale * (aux_recon - residual).pow(2).flatten(1).sum(-1).mean()

    def train_step(self, x: torch.Tensor, frac: float, want_stats: bool = True,
                   y: torch.Tensor | None = None) -> dict | None:
        """One Adam step on input ``x`` reconstructing ``y`` (default ``x``: an SAE; a transcoder's target)."""
        sae = self.sae
        y = x if y is None else y
        for g in self.opt.param_groups:
            g["lr"] = self.opts["lr"] * _schedule(frac)
        loss, mse, f, err = self.loss(x, frac, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        rows = sae.decoder_row_dims  # a latent's decoder row (a CLT's spans every layer it writes to)
        with torch.no_grad():
            w, g = sae.W_dec, sae.W_dec.grad
            if g is not None:  # only move decoder rows along the sphere
                g -= (g * w).sum(rows, keepdim=True) * w
        self.opt.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=rows, keepdim=True).clamp_min(1e-12))
            fired = (f > 0).any(0)
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
            if not want_stats:
                return None
            total = (y - y.mean(0)).pow(2).sum()
            return {"loss": float(loss), "mse": float(mse), "fve": float(1 - err.pow(2).sum() / total),
                    "l0": float((f > 0).float().sum(-1).mean()),  # a CLT's: per layer
                    "dead_frac": float((self.since_fired > self.opts["dead_tokens"]).float().mean()),
                    "lr": self.opt.param_groups[0]["lr"]}

    @torch.no_grad()
    def resample_dead(self, src: ActivationSource) -> int:
        """Anthropic's resampling of latents silent for the last ``resample_dead_every`` steps (module
        docstring); returns how many were resampled. Deterministic in (seed, step), so resumed runs agree."""
        sae, o = self.sae, self.opts
        dead = (self.since_fired >= o["resample_dead_every"] * o["batch_size"]).nonzero().flatten()
        if len(dead) == 0:
            return 0
        x = src.sample(min(src.n, o["resample_inputs"]), seed=o["seed"] * 1_000_003 + self.step)
        x = x.to(sae.W_dec.device) * self.scale
        loss = (x - sae.decode(sae.encode(x))).pow(2).sum(-1).double().cpu()
        weight = loss.pow(2)
        if not float(weight.sum()) > 0:
            weight = torch.ones_like(weight)
        gen = torch.Generator().manual_seed(o["seed"] * 1_000_003 + self.step)
        pick = torch.multinomial(weight, len(dead), replacement=len(dead) > int((weight > 0).sum()), generator=gen)
        v = x[pick.to(x.device)] - (sae.b_dec if sae.cfg.apply_b_dec_to_input else 0)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive = torch.ones(sae.d_sae, dtype=torch.bool, device=dead.device)
        alive[dead] = False
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else sae.W_enc.new_tensor(1.0)
        sae.W_dec[dead] = v.to(sae.W_dec.dtype)
        sae.W_enc[:, dead] = (v * o["resample_scale"] * enc_norm).T.to(sae.W_enc.dtype)
        sae.b_enc[dead] = 0.0
        for param, where in ((sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,))):
            state = self.opt.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][where] = 0.0
        self.since_fired[dead] = 0
        return len(dead)

    # --- checkpoints ------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"param.{k}": v.detach().cpu().contiguous() for k, v in self.sae.named_parameters()}
        names = dict(enumerate(n for n, _ in self.sae.named_parameters()))
        for i, st in self.opt.state_dict()["state"].items():
            for key, v in st.items():
                out[f"adam.{names[i]}.{key}"] = torch.as_tensor(v).detach().cpu().contiguous().reshape(
                    v.shape if isinstance(v, torch.Tensor) else ())
        out["since_fired"] = self.since_fired.cpu()
        return out

    def load_state_tensors(self, t: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, p in self.sae.named_parameters():
                p.copy_(t[f"param.{k}"])
        sd = self.opt.state_dict()
        for i, name in enumerate(n for n, _ in self.sae.named_parameters()):
            keys = [k.split(".")[-1] for k in t if k.startswith(f"adam.{name}.")]
            if keys:
                dev = self.sae.W_dec.device
                sd["state"][i] = {k: (t[f"adam.{name}.{k}"] if k == "step" else t[f"adam.{name}.{k}"].to(dev))
                                  for k in keys}
        self.opt.load_state_dict(sd)
        self.since_fired = t["since_fired"].to(self.sae.W_dec.device)


def _folded(trainer: _Trainer) -> SAE:
    """A copy of the trained SAE in the activation's own units (the input scale folded into the weights).

    Trained on ``(s·x, t·y)`` (an SAE: t = s, y = x), with r = s/t: W_enc' = r·W_enc, b_enc' = b_enc/t,
    θ' = θ/t, b_dec' = b_dec/t, W_skip' = r·W_skip, W_dec unchanged (unit rows). Then pre'(x) = pre(s·x)/t,
    so the features are f/t (every activation is positively homogeneous) and ŷ'(x) = ŷ(s·x)/t.
    """
    sae, s, t = trainer.sae, trainer.scale, trainer.out_scale
    out = type(sae)(dataclasses.replace(sae.cfg, metadata=dict(sae.cfg.metadata))).to(sae.W_dec.device)
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc * (s / t))
        out.W_dec.copy_(sae.W_dec)
        out.b_enc.copy_(sae.b_enc / t)
        out.b_dec.copy_(sae.b_dec / t)
        if getattr(sae, "W_skip", None) is not None:
            out.W_skip.copy_(sae.W_skip * (s / t))
        if sae.cfg.architecture == "jumprelu":
            out.log_threshold.copy_(sae.log_threshold - math.log(t))
    return out


def _options_key(opts: dict) -> str:
    keep = {k: v for k, v in opts.items() if k not in ("steps", "time_budget", "checkpoint_every")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_checkpoint(folder: Path, trainer: _Trainer, opts: dict, done: bool) -> None:
    save_sae(_folded(trainer), folder, overwrite=True)
    with atomic_path(folder / STATE_TENSORS) as tmp:
        save_file(trainer.state_tensors(), str(tmp))
    state = {"step": trainer.step, "elapsed_s": trainer.elapsed, "scale": trainer.scale,
             "out_scale": trainer.out_scale, "done": done,
             "options": opts, "options_key": _options_key(opts), "history": trainer.history,
             "resamples": trainer.resamples}
    atomic_write_text(folder / STATE_JSON, json.dumps(state, indent=1, default=str) + "\n")


def _damaged(folder: Path, what: str) -> InterpError:
    return InterpError(f"checkpoint_dir: the trainer state in {folder} is damaged ({what}); pass overwrite=True "
                       "(CLI: --force) to start over there, or restore the folder")


def _read_state(folder: Path, overwrite: bool) -> dict | None:
    """``trainer_state.json``, or None to start afresh (``overwrite``); a damaged file is one clear error."""
    try:
        state = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise TypeError(f"expected a JSON object, found {type(state).__name__}")
    except (OSError, ValueError, TypeError) as e:
        if overwrite:
            return None
        raise _damaged(folder, f"{STATE_JSON}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return state


def _resume(sae: SAE, opts: dict, state: dict, folder: Path, overwrite: bool) -> _Trainer | None:
    """A trainer restored from ``folder`` (None to start afresh when it is damaged and ``overwrite``)."""
    from safetensors import SafetensorError

    fresh = {k: v.clone() for k, v in sae.state_dict().items()}  # the seeded init, if we must start afresh
    try:
        trainer = _Trainer(sae, opts, float(state["scale"]), state.get("out_scale"))
        trainer.load_state_tensors(load_file(str(folder / STATE_TENSORS)))
        trainer.step, trainer.elapsed = int(state["step"]), float(state["elapsed_s"])
        trainer.history, trainer.resamples = list(state["history"]), list(state.get("resamples", []))
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, SafetensorError) as e:
        if overwrite:
            sae.load_state_dict(fresh)
            return None
        raise _damaged(folder, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return trainer


def train_sae(
    source,
    d_sae: int,
    architecture: str = "topk",
    *,
    k: int | None = None,
    steps: int | None = None,
    batch_size: int = 1024,
    lr: float | None = None,
    l1_coefficient: float | None = None,
    l0_coefficient: float | None = None,
    aux_coefficient: float = 1 / 32,
    jumprelu_bandwidth: float | None = None,
    jumprelu_init_threshold: float | None = None,
    b_dec_init: str = "geometric_median",
    b_enc_init=None,
    dead_tokens: int = 100_000,
    resample_dead_every: int | None = None,
    resample_scale: float = 0.2,
    resample_inputs: int = 16_384,
    time_budget: float | None = None,
    time_left: float | None = None,
    checkpoint_dir=None,
    checkpoint_every: int = 500,
    overwrite: bool = False,
    seed: int = 0,
    device=None,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    metadata: dict | None = None,
    log_every: int = 50,
    progress: bool = True,
    target=None,
    skip: bool = False,
    cross_layer: int | None = None,
) -> SAE:
    """Train a sparse autoencoder on activations and return it (an :class:`SAE`, features in the input's units).

    ``source``: activations ``[n, d_in]``; a ``.safetensors``/``.npy`` file or folder of shards; ``(model,
    hook_name, corpus)``; or an activation-dataset object (``interp.analysis.sae.source``). ``d_sae``: number
    of latents. ``architecture``: ``"topk"`` (default; ``k`` active latents, default ``d_in // 8``), ``"relu"``
    (L1 penalty ``l1_coefficient``) or ``"jumprelu"`` (L0 penalty ``l0_coefficient``). ``steps`` defaults to
    10 passes over the data (at least 1000 steps). ``time_budget`` (seconds of training, a resumed run's
    earlier ones included) stops early, still saving a final checkpoint; ``time_left`` bounds this call alone
    (the budget becomes the run's training so far plus it). ``resample_dead_every`` (ReLU only; default off) resamples latents that were silent for
    that many steps (Anthropic's recipe, module docstring); ``sae.resamples`` lists each event (``step,
    resampled``). The training log is ``sae.history`` (a DataFrame: ``step, tokens, elapsed_s, loss, mse,
    fve, l0, dead_frac, lr``); ``sae.steps_done`` counts the steps taken and ``sae.stopped_early`` says whether
    ``time_budget`` ended the run. See the module docstring for the recipe and checkpoint/resume rules.

    ``target``: a second source of the same form, row for row beside ``source`` (same shard sizes: batches
    are a pure function of the sizes and the step, so the rows stay paired): trains a *transcoder* that
    reads ``source`` and predicts ``target`` (with ``skip=True``, plus an affine skip term) and returns an
    ``interp.analysis.sae.transcoder.Transcoder``; ``train_transcoder`` there is the friendlier entry.
    ``cross_layer=L`` (with ``target``): each row of ``source`` and ``target`` is L layers' inputs and outputs
    side by side; trains a ``CrossLayerTranscoder`` with ``d_sae`` features (and ``k``) *per layer*, the loss
    summing every layer's error (``train_cross_layer_transcoder`` in ``interp.analysis.sae.cross_layer``).

    >>> x = torch.randn(512, 8)
    >>> sae = train_sae(x, 16, "topk", k=2, steps=20, batch_size=64, progress=False)
    >>> tuple(sae.W_enc.shape), tuple(sae.W_dec.shape), list(sae.history.columns[:3])
    ((8, 16), (16, 8), ['step', 'tokens', 'elapsed_s'])
    """
    arch = _arch(architecture)
    if arch not in TRAINABLE:
        raise InterpError(f"architecture: train one of {list(TRAINABLE)}; {arch!r} SAEs are loaded (from SAELens), "
                          "not trained here")
    d_sae = _int("d_sae", d_sae)
    batch_size = _int("batch_size", batch_size)
    checkpoint_every = _int("checkpoint_every", checkpoint_every)
    log_every = _int("log_every", log_every)
    dead_tokens = _int("dead_tokens", dead_tokens)
    if b_dec_init not in ("geometric_median", "mean", "zeros"):
        raise InterpError(f"b_dec_init: must be 'geometric_median', 'mean' or 'zeros'; given {b_dec_init!r}")
    if time_budget is not None:
        time_budget = _pos("time_budget", time_budget)
    if time_left is not None:
        time_left = _pos("time_left", time_left)
    b_enc0 = _b_enc_init(b_enc_init, d_sae)
    if resample_dead_every is not None and arch != "relu":
        raise InterpError(f"resample_dead_every: resampling is for ReLU SAEs (TopK has AuxK); given "
                          f"architecture {arch!r}")
    # an existing file there is refused before the activations are collected
    folder = check_output_folder(checkpoint_dir, "checkpoint_dir") if checkpoint_dir is not None else None
    src: ActivationSource = as_source(source, seq_len=seq_len, max_tokens=max_tokens, progress=progress)
    d_in = src.d_in
    tgt = None
    if target is not None:
        tgt = as_source(target, seq_len=seq_len, max_tokens=max_tokens, progress=progress)
        if tgt.sizes != src.sizes:
            raise InterpError(f"target: must hold the rows of source, shard for shard; given shard sizes "
                              f"{tgt.sizes[:4]} vs source {src.sizes[:4]}")
        if resample_dead_every is not None:
            raise InterpError("resample_dead_every: resampling is for SAEs; a transcoder (target=...) uses TopK's "
                              "AuxK or none")
    elif skip or cross_layer is not None:
        what = "skip: a skip term" if skip else "cross_layer: a cross-layer transcoder"
        raise InterpError(f"{what} belongs to a transcoder; give target=... (what it predicts)")
    n_layers = 1
    if cross_layer is not None:
        n_layers = _int("cross_layer", cross_layer)
        if skip:
            raise InterpError("skip: a cross-layer transcoder has no skip term here; give skip=False")
        if d_in % n_layers or tgt.d_in % n_layers:
            raise InterpError(f"cross_layer: source and target rows must be {n_layers} layers side by side; their "
                              f"widths {d_in} and {tgt.d_in} do not divide by {n_layers}")
        d_in = d_in // n_layers  # per layer from here on
    if arch == "topk":
        k = _int("k", k if k is not None else max(1, d_in // 8))
        if k > d_sae:
            raise InterpError(f"k: must be in [1, d_sae={d_sae}]; given {k}")
    d = DEFAULTS[arch]
    opts = {
        "architecture": arch, "d_in": d_in, "d_sae": d_sae, "k": k if arch == "topk" else None,
        "batch_size": batch_size, "lr": _pos("lr", lr if lr is not None else d["lr"]),
        "l1_coefficient": _pos("l1_coefficient", l1_coefficient if l1_coefficient is not None
                               else d.get("l1_coefficient", 0.0), allow_zero=True),
        "l0_coefficient": _pos("l0_coefficient", l0_coefficient if l0_coefficient is not None
                               else d.get("l0_coefficient", 0.0), allow_zero=True),
        "aux_coefficient": _pos("aux_coefficient", aux_coefficient, allow_zero=True),
        "bandwidth": _pos("jumprelu_bandwidth", jumprelu_bandwidth or DEFAULTS["jumprelu"]["bandwidth"]),
        "init_threshold": _pos("jumprelu_init_threshold",
                               jumprelu_init_threshold or DEFAULTS["jumprelu"]["init_threshold"]),
        "b_dec_init": b_dec_init, "dead_tokens": dead_tokens, "seed": int(seed), "n": src.n,
    }
    if b_enc0 is not None:  # only then in opts: older checkpoints keep their options key
        opts["b_enc_init"] = b_enc0.tolist()
    if tgt is not None:  # only then in opts: SAE checkpoints keep their options key
        opts.update(d_out=tgt.d_in // n_layers, skip=bool(skip))
    if cross_layer is not None:  # only then in opts: other checkpoints keep their options key
        opts["cross_layer"] = n_layers
    if resample_dead_every is not None:  # only then in opts: older checkpoints keep their options key
        opts.update(resample_dead_every=_int("resample_dead_every", resample_dead_every),
                    resample_scale=_pos("resample_scale", resample_scale),
                    resample_inputs=_int("resample_inputs", resample_inputs))
    steps = _int("steps", steps) if steps is not None else max(1000, math.ceil(10 * src.n / batch_size))
    opts.update(steps=steps, time_budget=time_budget, checkpoint_every=checkpoint_every)
    device = torch.device(device) if device is not None else torch.device("cpu")

    meta = {**src.metadata, **(metadata or {})}
    kind, cfg_kw = SAE, {}
    if tgt is not None:
        from interp.analysis.sae.transcoder import Transcoder

        kind, cfg_kw = Transcoder, {"d_out": tgt.d_in // n_layers, "skip": bool(skip)}
        if cross_layer is not None:
            from interp.analysis.sae.cross_layer import CrossLayerTranscoder

            kind, cfg_kw = CrossLayerTranscoder, {**cfg_kw, "n_layers": n_layers}
        meta.update(hook_name_out=tgt.metadata.get("hook_name"), **(metadata or {}))
    cfg = kind.config_class(d_in=d_in, d_sae=d_sae, architecture=arch, k=opts["k"],
                            jumprelu_bandwidth=opts["bandwidth"], metadata=meta, **cfg_kw)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        sae = kind(cfg).to(device)
        if arch == "relu":  # see RELU_ENCODER_INIT
            with torch.no_grad():
                sae.W_enc.mul_(RELU_ENCODER_INIT)
    state = None
    if folder is not None and (folder / STATE_JSON).is_file():
        state = _read_state(folder, overwrite)
        if state is not None and state.get("options_key") != _options_key(opts):
            if not overwrite:
                old = state.get("options", {})
                diff = sorted(k_ for k_ in set(old) | set(opts) if k_ not in ("steps", "time_budget",
                              "checkpoint_every") and old.get(k_) != opts.get(k_))
                raise InterpError(f"checkpoint_dir: {folder} holds a run with other options ({', '.join(diff)}); "
                                  "pass overwrite=True (CLI: --force) to start over there")
            state = None
    elif folder is not None and (folder / "sae_weights.safetensors").exists() and not overwrite:
        raise InterpError(f"checkpoint_dir: {folder} already holds an SAE that is not a resumable run; "
                          "pass overwrite=True (CLI: --force) to replace it")

    trainer = None
    if state is not None:
        trainer = _resume(sae, opts, state, folder, overwrite)
    if trainer is None:
        sample = src.sample(min(src.n, 16_384), seed=seed).to(device)
        scale = math.sqrt(src.d_in / float(sample.pow(2).sum(-1).mean().clamp_min(1e-30)))
        out_scale = None
        if tgt is not None:  # the target gets its own constant (E‖y‖² = d_out); b_dec lives in its space
            sample = tgt.sample(min(tgt.n, 16_384), seed=seed).to(device)
            out_scale = math.sqrt(tgt.d_in / float(sample.pow(2).sum(-1).mean().clamp_min(1e-30)))
        trainer = _Trainer(sae, opts, scale, out_scale)
        with torch.no_grad():
            if b_dec_init != "zeros":
                x0 = sample[:4096] * trainer.out_scale
                b = geometric_median(x0) if b_dec_init == "geometric_median" else x0.double().mean(0)
                sae.b_dec.copy_(b.reshape(sae.b_dec.shape).to(sae.b_dec.dtype))
            if arch == "jumprelu":
                sae.log_threshold.fill_(math.log(opts["init_threshold"]))
            if b_enc0 is not None:  # given in the activation's units; the trainer works in scaled ones
                sae.b_enc.copy_((b_enc0 * scale).to(sae.b_enc.dtype))

    from interp.progress import progress_bar

    if time_left is not None:  # known only now: how long a resumed run has already trained
        time_budget = min(time_budget or math.inf, trainer.elapsed + time_left)
    start = time.perf_counter() - trainer.elapsed
    batches = src.batches(batch_size, seed=seed, start_step=trainer.step)
    targets = tgt.batches(batch_size, seed=seed, start_step=trainer.step) if tgt is not None else None
    bar = progress_bar(total=steps, initial=min(trainer.step, steps), desc=f"training {arch} {kind.__name__}",
                       unit="step", enabled=progress)
    out_of_time = False
    sae.train()
    try:
        while trainer.step < steps:
            x = next(batches).to(device) * trainer.scale
            y = next(targets).to(device) * trainer.out_scale if targets is not None else None
            frac = trainer.step / steps
            if time_budget is not None:  # the schedule follows whichever runs out first, steps or time
                frac = max(frac, (time.perf_counter() - start) / time_budget)
            log = (trainer.step + 1) % log_every == 0 or trainer.step + 1 == steps
            stats = trainer.train_step(x, min(frac, 1.0), want_stats=log, y=y)
            trainer.step += 1
            trainer.elapsed = time.perf_counter() - start
            if log:
                trainer.history.append({"step": trainer.step, "tokens": trainer.step * batch_size,
                                        "elapsed_s": trainer.elapsed, **stats})
                bar.set_postfix(loss=f"{stats['loss']:.3g}", fve=f"{stats['fve']:.3f}", l0=f"{stats['l0']:.1f}",
                                dead=f"{stats['dead_frac']:.2f}")
            bar.update(1)
            every = opts.get("resample_dead_every")
            if every and trainer.step % every == 0 and frac < 0.8:  # not while the learning rate decays
                trainer.resamples.append({"step": trainer.step, "resampled": trainer.resample_dead(src)})
            if time_budget is not None and trainer.elapsed >= time_budget:
                out_of_time = True
                break
            if folder is not None and trainer.step % checkpoint_every == 0 and trainer.step < steps:
                _save_checkpoint(folder, trainer, opts, done=False)
    finally:
        bar.close()
        sae.eval()
    if folder is not None:
        _save_checkpoint(folder, trainer, opts, done=not out_of_time)
        result = load_sae(folder, device=device)
    else:
        result = _folded(trainer)
    result.history = pd.DataFrame(trainer.history, columns=["step", "tokens", "elapsed_s", "loss", "mse", "fve",
                                                             "l0", "dead_frac", "lr"])
    result.resamples = pd.DataFrame(trainer.resamples, columns=["step", "resampled"])
    result.stopped_early = out_of_time
    result.steps_done = trainer.step  # the history logs every log_every steps; this counts them all
    return result.eval()
