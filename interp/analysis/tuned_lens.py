"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens").

The logit lens decodes every layer with the final head, but early residuals live in a different basis
than the last one, so it is often badly calibrated there. The tuned lens learns, per layer ``l``, an
affine *translator* ``A_l x + b_l`` (initialised to the identity, so before training it *is* the logit
lens) applied to the residual before the final norm and unembedding, trained to minimise
``KL(final ‖ translated layer l)`` on a corpus. The model itself stays frozen. Layer ``n_layers`` (the
final residual) needs no translator: it already is the model's output.

Typical use::

    lens = train_tuned_lens(model, token_batches, steps=250)
    lens.save("models/my-model")                  # tuned_lens.safetensors + tuned_lens.json
    lens = TunedLens.load("models/my-model", model)
    df = tuned_lens(model, tokens, lens, k=5)     # same columns as logit_lens()
    table = evaluate_lenses(model, held_out_batches, lens)

>>> import torch
>>> from interp.model.config import DecoderConfig
>>> from interp.model.transformer import HookedDecoder
>>> _ = torch.manual_seed(0)
>>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
>>> batches = [torch.randint(0, 50, (4, 8)) for _ in range(3)]
>>> lens = train_tuned_lens(model, batches, steps=3, progress=False)
>>> df = tuned_lens(model, batches[0][:2], lens, k=2)
>>> sorted(df.layer.unique().tolist())
[0, 1, 2]
>>> evaluate_lenses(model, batches, lens).columns.tolist()
['layer', 'layer_name', 'lens', 'kl', 'ce']
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from interp.analysis._inputs import as_tokens, model_device
from interp.analysis.logit_lens import _lens_frame, _resid_hook, layer_names, lens_logits, residual_stack
from interp.data.distributed import all_reduce, broadcast_, rank_world
from interp.errors import InterpError
from interp.io import atomic_path, atomic_write_text
from interp.progress import progress_bar

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "TunedLens", "evaluate_lenses", "train_tuned_lens", "tuned_lens"]

WEIGHTS_FILE = "tuned_lens.safetensors"
CONFIG_FILE = "tuned_lens.json"
_FORMAT = "interp-tuned-lens"
_VERSION = 1


class TunedLens(nn.Module):
    """Per-layer affine translators ``x -> x @ W_l.T + b_l`` for layers ``0..n_layers-1``.

    Each translator starts as the identity (``W = I``, ``b = 0``), so an untrained lens equals the
    logit lens. ``lens(resid, layer)`` translates a residual ``[..., d_model]``; layer ``n_layers`` is
    passed through unchanged.

    >>> import torch
    >>> lens = TunedLens(d_model=8, n_layers=3)
    >>> x = torch.randn(2, 5, 8)
    >>> torch.equal(lens(x, 0), x), torch.equal(lens(x, 3), x)
    (True, True)
    """

    def __init__(self, d_model: int, n_layers: int, d_vocab: int | None = None):
        super().__init__()
        for name, v in (("d_model", d_model), ("n_layers", n_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InterpError(f"TunedLens: {name} must be a positive integer; given {v!r}")
        self.d_model, self.n_layers, self.d_vocab = d_model, n_layers, d_vocab
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        with torch.no_grad():
            for t in self.translators:
                t.weight.copy_(torch.eye(d_model))
                t.bias.zero_()
        # What the lens was trained with; saved to the JSON so a lens file explains itself.
        self.info: dict = {}

    @classmethod
    def for_model(cls, model) -> TunedLens:
        """An identity-initialised lens shaped for ``model``, on the model's device.

        >>> from interp.model.config import DecoderConfig
        >>> from interp.model.transformer import HookedDecoder
        >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=3, n_heads=4))
        >>> len(TunedLens.for_model(model).translators)
        3
        """
        cfg = model.cfg
        # float32 at least (half-precision translators cannot learn small corrections); float64 for
        # float64 models so that an untrained lens reproduces the logit lens exactly.
        dtype = torch.promote_types(model.W_U.dtype, torch.float32)
        return cls(int(cfg.d_model), int(cfg.n_layers), int(cfg.d_vocab)).to(model_device(model), dtype)

    def forward(self, resid: torch.Tensor, layer: int) -> torch.Tensor:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= self.n_layers:
            raise InterpError(f"layer: must be an integer in [0, {self.n_layers}]; given {layer!r}")
        if resid.shape[-1] != self.d_model:
            raise InterpError(
                f"resid: last dimension must be d_model={self.d_model}; given shape {list(resid.shape)}"
            )
        if layer == self.n_layers:
            return resid
        t = self.translators[layer]
        # Translate in the lens's dtype (at least float32): half-precision residuals would lose the
        # small corrections the translator learned.
        return t(resid.to(t.weight.dtype))

    def check_model(self, model) -> None:
        """Raise :class:`InterpError` unless this lens's shapes match ``model``.

        >>> from interp.model.config import DecoderConfig
        >>> from interp.model.transformer import HookedDecoder
        >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=3, n_heads=4))
        >>> try:
        ...     TunedLens(d_model=32, n_layers=2).check_model(model)
        ... except InterpError as e:
        ...     print("refused:", str(e).split(", but")[0])
        refused: lens: was built for a model with {'d_model': 32, 'n_layers': 2}
        """
        cfg = model.cfg
        want = {"d_model": int(cfg.d_model), "n_layers": int(cfg.n_layers)}
        have = {"d_model": self.d_model, "n_layers": self.n_layers}
        if self.d_vocab is not None:
            want["d_vocab"], have["d_vocab"] = int(cfg.d_vocab), self.d_vocab
        if want != have:
            raise InterpError(f"lens: was built for a model with {have}, but the model has {want}")

    # -- persistence: safetensors for the weights, JSON for the description ----------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``tuned_lens.safetensors`` and ``tuned_lens.json`` into ``folder`` (each atomically).

        The JSON records the SHA-256 of the weights file, so :meth:`load` notices a mismatched pair.
        Returns the folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": _FORMAT})
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "d_vocab": self.d_vocab,
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": digest,
            "info": self.info,
        }
        atomic_write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, model=None) -> TunedLens:
        """Load a lens written by :meth:`save`; with ``model``, check shapes and move to its device.

        >>> import tempfile, torch
        >>> lens = TunedLens(d_model=8, n_layers=2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = TunedLens.load(lens.save(d))
        >>> all(torch.equal(a, b) for a, b in zip(lens.state_dict().values(), back.state_dict().values()))
        True
        """
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise InterpError(
                f"folder: expected {CONFIG_FILE} and {WEIGHTS_FILE} in {str(folder)!r} "
                f"(written by TunedLens.save); "
                f"found {sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'no such folder'}"
            )
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise InterpError(
                f"folder: {str(cfg_path)!r} is not a version-{_VERSION} {_FORMAT} file; "
                f"given format={meta.get('format')!r}, version={meta.get('version')!r}"
            )
        digest = hashlib.sha256(w_path.read_bytes()).hexdigest()
        if digest != meta.get("weights_sha256"):
            raise InterpError(
                f"folder: {WEIGHTS_FILE} does not match {CONFIG_FILE} in {str(folder)!r} "
                f"(sha256 {digest[:12]}... != recorded {str(meta.get('weights_sha256'))[:12]}...); "
                f"save the lens again"
            )
        state = load_file(str(w_path))
        lens = cls(int(meta["d_model"]), int(meta["n_layers"]), meta.get("d_vocab"))
        lens.to(next(iter(state.values())).dtype).load_state_dict(state)
        lens.info = meta.get("info", {})
        if model is not None:
            lens.check_model(model)
            lens.to(model_device(model))
        return lens


class _DatasetBatches:
    """An activation dataset as training batches: rows ``[i*n, (i+1)*n)`` of every residual the lens reads."""

    def __init__(self, model, ds, batch_rows: int):
        n_layers = int(model.cfg.n_layers)
        self.names = [_resid_hook(n_layers, layer) for layer in range(n_layers + 1)]
        missing = [n for n in self.names if n not in ds.hooks]
        if missing:
            raise InterpError(
                f"token_batches: the activation dataset lacks {missing[:3]}; a tuned lens reads "
                "blocks.{l}.hook_resid_pre of every layer and the last hook_resid_post (write it with "
                "hooks=['resid_pre', 'blocks.%d.hook_resid_post'])" % (n_layers - 1))
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise InterpError(f"batch_rows: must be an int >= 1; given {batch_rows!r}")
        self.model, self.ds, self.n = model, ds, batch_rows

    def __len__(self) -> int:
        return math.ceil(len(self.ds) / self.n)

    def stack(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev, dtype = model_device(self.model), self.model.W_U.dtype
        rows = slice(i * self.n, min(len(self.ds), (i + 1) * self.n))
        stack = torch.stack([self.ds.rows(name, rows).to(dev, dtype) for name in self.names])
        with torch.no_grad():
            return stack, lens_logits(self.model, stack[-1])  # the model's own head on its last residual


def _stacks(model, token_batches, batch_rows: int):
    """``(n, get)``: how many batches, and ``get(i) -> (stack [n_layers+1, ..., d_model], final logits)``."""
    from interp.data.activations import ActivationDataset

    if isinstance(token_batches, ActivationDataset):
        src = _DatasetBatches(model, token_batches, batch_rows)
        return len(src), src.stack, int(len(token_batches) / len(src))
    batches = _batches(model, token_batches)
    return len(batches), lambda i: residual_stack(model, batches[i]), int(sum(b.numel() for b in batches) / len(batches))


def _batches(model, token_batches) -> list[torch.Tensor]:
    """Normalise a corpus: one LongTensor [n, pos] or an iterable of token batches (any as_tokens form)."""
    if isinstance(token_batches, (torch.Tensor, str)):
        out = [as_tokens(model, token_batches, name="token_batches")]
    elif isinstance(token_batches, Iterable):
        out = [as_tokens(model, b, name=f"token_batches[{i}]") for i, b in enumerate(token_batches)]
    else:
        raise InterpError(
            f"token_batches: expected a LongTensor [batch, pos] or an iterable of token batches; "
            f"given {type(token_batches).__name__}"
        )
    if not out:
        raise InterpError("token_batches: expected at least one batch of tokens; given none")
    return out


@contextmanager
def _frozen(model):
    """Temporarily stop gradients into the model's weights (the lens trains *through* ln_final/W_U)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _kl_per_token(final_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return (final_logp.exp() * (final_logp - logp)).sum(-1)


def train_tuned_lens(
    model,
    token_batches,
    *,
    steps: int | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lens: TunedLens | None = None,
    seed: int = 0,
    progress: bool = True,
    batch_rows: int = 512,
) -> TunedLens:
    """Train per-layer translators to minimise ``KL(final ‖ translated layer)``; the model stays frozen.

    Args:
        model: a ``HookedDecoder``.
        token_batches: the corpus: an iterable of token batches (each a LongTensor ``[batch, pos]``,
            text or list of texts) or a single LongTensor (used as one batch); or an
            :class:`~interp.data.ActivationDataset` holding ``resid_pre`` of every layer and the last
            ``hook_resid_post`` (``interp scan activations ... --hooks resid_pre blocks.{L-1}.hook_resid_post``):
            then the model is not run, only its final norm and unembedding, on ``batch_rows`` rows a step.
        steps: optimisation steps (one per batch, cycling through the corpus); default
            ``epochs * len(batches)``. Under ``torchrun`` each step takes one batch per rank and
            averages the gradients (data parallel; pass every rank the same ``token_batches``).
        epochs: passes over the corpus when ``steps`` is not given.
        lr, weight_decay: AdamW settings. Weight decay pulls ``W`` towards zero, not the identity, so
            it defaults to off.
        lens: continue training this lens instead of a fresh identity-initialised one.
        seed: seeds the batch order (the result is deterministic given the seed).
        progress: show a tqdm progress bar (with the running loss).

    Returns:
        The trained :class:`TunedLens` (on the model's device). ``lens.info`` records the settings and
        the mean KL over the last steps.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> neox = dict(parallel_residual=True, positional="rotary", rotary_fraction=0.25)
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4, **neox))
    >>> lens = train_tuned_lens(model, torch.randint(0, 50, (4, 8)), steps=2, progress=False)
    >>> lens.info["steps"]
    2
    """
    n_batches, get_stack, tokens_per_batch = _stacks(model, token_batches, batch_rows)
    for name, v in (("epochs", epochs),) + ((("steps", steps),) if steps is not None else ()):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InterpError(f"{name}: must be a positive integer; given {v!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InterpError(f"lr: must be a positive finite number; given {lr!r}")
    n_steps = steps if steps is not None else epochs * n_batches

    if lens is None:
        lens = TunedLens.for_model(model)
    else:
        lens.check_model(model)
        lens.to(model_device(model))
    n_layers = lens.n_layers
    params = list(lens.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)

    order: list[int] = []
    recent: list[float] = []
    was_training = lens.training
    lens.train()
    # Under torchrun this is data parallel: every step draws world_size batches from the same seeded
    # order, rank r trains on the r-th, and the gradients are averaged (all_reduce) before the step, so
    # a step sees world_size batches and every rank keeps the same lens.
    rank, world = rank_world()
    for p in params:
        broadcast_(p)
    bar = progress_bar(range(n_steps), desc="tuned lens", enabled=progress and rank == 0, leave=False)
    with _frozen(model):
        for _ in bar:
            drawn = []
            for _ in range(world):
                if not order:  # a fresh shuffled pass over the corpus
                    order = torch.randperm(n_batches, generator=gen).tolist()
                drawn.append(order.pop())
            stack, final_logits = get_stack(drawn[rank])
            final_logp = torch.log_softmax(
                final_logits.to(torch.promote_types(final_logits.dtype, torch.float32)), dim=-1
            )
            opt.zero_grad(set_to_none=True)
            total = 0.0
            # One backward per layer keeps only one [batch, pos, vocab] graph alive at a time.
            for layer in range(n_layers):
                logp = torch.log_softmax(lens_logits(model, lens(stack[layer], layer)), dim=-1)
                loss = _kl_per_token(final_logp, logp).mean()
                loss.backward()
                total += float(loss.detach())
            if world > 1:
                flat = all_reduce(torch.cat([p.grad.reshape(-1) for p in params])) / world
                for p, g in zip(params, flat.split([p.numel() for p in params])):
                    p.grad.copy_(g.view_as(p))
                total = float(all_reduce(torch.tensor(total, dtype=torch.float64))) / world
            opt.step()
            recent = (recent + [total / n_layers])[-10:]
            bar.set_postfix(kl=f"{recent[-1]:.4f}")
    lens.train(was_training)
    lens.info = {
        "steps": n_steps + int(lens.info.get("steps", 0)),
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "n_batches": n_batches,
        "tokens_per_step": world * tokens_per_batch,
        "final_mean_kl": sum(recent) / len(recent),
    }
    return lens


def tuned_lens(model, tokens, lens: TunedLens, k: int = 5, *, target="final", positions=None) -> pd.DataFrame:
    """The tuned-lens twin of :func:`~interp.analysis.logit_lens.logit_lens`: same arguments, same columns.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
    >>> df = tuned_lens(model, torch.zeros(2, 4, dtype=torch.long), TunedLens.for_model(model), k=3)
    >>> len(df) == 3 * 2 * 4 * 3
    True
    """
    if not isinstance(lens, TunedLens):
        raise InterpError(
            f"lens: expected a TunedLens (train_tuned_lens or TunedLens.load); given {type(lens).__name__}"
        )
    lens.check_model(model)
    return _lens_frame(model, tokens, k, target, positions, translate=lens)


@torch.no_grad()
def evaluate_lenses(model, token_batches, lens: TunedLens | None = None) -> pd.DataFrame:
    """Compare the logit lens and the tuned lens layer by layer on held-out tokens.

    For each layer and lens: ``kl`` = mean over tokens of KL(final ‖ lens) in nats, and ``ce`` = mean
    cross-entropy of the lens's prediction against the true next token (the last position of each
    sequence has none and is skipped). At the last layer both lenses are the model itself, so ``ce``
    there is the model's loss. Without ``lens`` only the logit-lens rows are returned.

    Returns a DataFrame with columns ``layer, layer_name, lens ("logit" | "tuned"), kl, ce``.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
    >>> t = evaluate_lenses(model, [torch.randint(0, 50, (3, 6))], TunedLens.for_model(model))
    >>> t.lens.unique().tolist(), len(t)
    (['logit', 'tuned'], 6)
    """
    batches = _batches(model, token_batches)
    lenses: dict[str, TunedLens | None] = {"logit": None}
    if lens is not None:
        if not isinstance(lens, TunedLens):
            raise InterpError(f"lens: expected a TunedLens or None; given {type(lens).__name__}")
        lens.check_model(model)
        lenses["tuned"] = lens
    n_layers = int(model.cfg.n_layers)
    sums = {(name, l): [0.0, 0.0] for name in lenses for l in range(n_layers + 1)}
    n_kl = n_ce = 0
    for tokens in batches:
        stack, final_logits = residual_stack(model, tokens)
        final_logp = torch.log_softmax(
            final_logits.to(torch.promote_types(final_logits.dtype, torch.float32)), dim=-1
        )
        nxt = tokens[:, 1:]
        n_kl += tokens.numel()
        n_ce += nxt.numel()
        for name, ls in lenses.items():
            for layer in range(n_layers + 1):
                resid = stack[layer] if ls is None else ls(stack[layer], layer)
                logp = torch.log_softmax(lens_logits(model, resid), dim=-1)
                s = sums[(name, layer)]
                s[0] += float(_kl_per_token(final_logp, logp).sum())
                if nxt.numel():
                    s[1] -= float(logp[:, :-1].gather(-1, nxt.unsqueeze(-1)).sum())
    names = layer_names(n_layers)
    rows = [
        {
            "layer": layer,
            "layer_name": names[layer],
            "lens": name,
            "kl": s[0] / n_kl,
            "ce": s[1] / n_ce if n_ce else float("nan"),
        }
        for (name, layer), s in sums.items()
    ]
    return pd.DataFrame(rows).sort_values(["layer", "lens"]).reset_index(drop=True)
