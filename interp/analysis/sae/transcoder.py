"""Transcoders: sparse stand-ins for a model's MLPs (Dunefsky et al. 2024; Ameisen et al. 2025).

An SAE rebuilds the activation it reads; a transcoder reads an MLP's *input* and predicts its *output*:

    f = σ(x @ W_enc + b_enc)                    # x: blocks.{l}.ln2.hook_normalized (or hook_resid_mid)
    ŷ = f @ W_dec + b_dec  (+ x @ W_skip.T)     # ŷ ≈ blocks.{l}.hook_mlp_out; W_skip: a *skip* transcoder

σ is one of the SAE activations (``relu``, ``topk``, ``jumprelu``, ``interp.analysis.sae.model``). Because
the MLP's nonlinearity is replaced by a sparse code whose decoder rows write straight into the residual
stream, a model with its MLPs replaced by transcoders is linear between features once attention patterns
and norm scales are frozen — which is what ``interp.analysis.circuits.graph`` builds attribution graphs on.

* :class:`Transcoder` is an :class:`~interp.analysis.sae.model.SAE` with an output width ``d_out``, an
  optional ``W_skip [d_out, d_in]`` and ``apply_b_dec_to_input=False`` (``b_dec`` lives in the output space).
* Training is ``train_sae``'s loop (same recipe, schedule, AuxK, checkpoints that resume) with a paired
  ``target`` source; ``train_transcoder(model, layer, corpus, d_sae)`` gathers the pair for one MLP.
* Files are SAELens-style: ``cfg.json`` + ``sae_weights.safetensors`` (``save_sae`` writes both kinds;
  ``load_sae`` and ``load_transcoder`` read them). ``cfg.json`` adds ``d_out`` and names the architecture
  as SAELens 6 does for transcoders — ``transcoder`` (ReLU), ``skip_transcoder``, ``jumprelu_transcoder`` —
  and, for the kinds SAELens lacks, ``topk_transcoder`` / ``skip_topk_transcoder`` /
  ``skip_jumprelu_transcoder`` (with ``k``); ``metadata`` holds ``hook_name`` (input) and ``hook_name_out``.
* ``splice_transcoders(model, transcoders)`` runs the model with every MLP replaced (optionally plus the
  transcoder's error, so the output is unchanged until a hook on a transcoder edits features), and
  ``evaluate_transcoders`` reports per layer L0 and the fraction of the MLP output's variance explained,
  and the CE loss recovered with every MLP replaced at once (against zero-ablating every MLP).
* Both, and attribution graphs, read the transcoders through a :class:`TranscoderSet` (``transcoder_set``):
  per layer, the hooks it reads and writes, the features' encoder and their decoders to *each* MLP output
  they write. Per-layer transcoders write only their own layer; a cross-layer transcoder
  (``interp.analysis.sae.cross_layer``) writes every later one, and satisfies the same interface.

>>> tc = Transcoder(TranscoderConfig(d_in=8, d_out=6, d_sae=32, architecture="topk", k=4, skip=True))
>>> tuple(tc(torch.randn(3, 8)).shape), tuple(tc.W_skip.shape)
((3, 6), (6, 8))
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from interp.analysis.sae.model import SAE, SAEConfig
from interp.analysis.sae.source import check_hook_name
from interp.errors import InterpError

__all__ = ["INPUT_HOOKS", "Transcoder", "TranscoderConfig", "TranscoderEval", "TranscoderSet", "check_transcoders",
           "evaluate_transcoders", "load_transcoder", "load_transcoders", "splice_transcoders", "train_transcoder",
           "transcoder_layer", "transcoder_set"]

INPUT_HOOKS = ("ln2.hook_normalized", "hook_resid_mid")  # what a layer's transcoder may read
_PREFIX = {"relu": "", "topk": "topk_", "jumprelu": "jumprelu_"}


@dataclasses.dataclass
class TranscoderConfig(SAEConfig):
    """An SAE config plus the output width ``d_out`` (default ``d_in``) and ``skip`` (the affine term)."""

    d_out: int | None = None
    skip: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.d_out = self.d_in if self.d_out is None else self.d_out
        if isinstance(self.d_out, bool) or not isinstance(self.d_out, int) or self.d_out < 1:
            raise InterpError(f"d_out: must be an int >= 1; given {self.d_out!r}")
        self.apply_b_dec_to_input = False  # b_dec is in the output space: it cannot be subtracted from the input
        self.skip = bool(self.skip)

    @property
    def hook_name_out(self) -> str | None:
        return self.metadata.get("hook_name_out")

    def to_saelens(self) -> dict:
        cfg = super().to_saelens()
        cfg["architecture"] = ("skip_" if self.skip else "") + _PREFIX[self.architecture] + "transcoder"
        cfg["d_out"] = self.d_out
        return cfg

    @classmethod
    def from_saelens(cls, cfg: dict, source: str = "cfg.json") -> TranscoderConfig:
        cfg = dict(cfg)
        name = str(cfg.get("architecture", "transcoder"))
        skip = name.startswith("skip_")
        act = name.removeprefix("skip_").removesuffix("transcoder").rstrip("_") or "standard"
        if not name.endswith("transcoder") or act not in ("standard", "topk", "jumprelu"):
            raise InterpError(f"{source}: architecture {name!r} is not a transcoder; expected one of "
                              "transcoder, skip_transcoder, jumprelu_transcoder, topk_transcoder (skip_ variants)")
        d_out = cfg.pop("d_out", cfg.get("d_in"))
        cfg["architecture"] = act
        base = SAEConfig.from_saelens(cfg, source)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(SAEConfig)}
        return cls(**fields, d_out=int(d_out), skip=skip)


class Transcoder(SAE):
    """An SAE that predicts another activation (module docstring): ``forward(x)`` is ``ŷ``; with a ``target``
    it is ``ŷ`` plus the clean prediction's error, so the output is ``target`` until a hook edits features."""

    config_class = TranscoderConfig

    def __init__(self, cfg: TranscoderConfig, use_error_term: bool = False):
        if not isinstance(cfg, TranscoderConfig):
            raise InterpError(f"cfg: a Transcoder needs a TranscoderConfig; given {type(cfg).__name__}")
        super().__init__(cfg, use_error_term)
        dtype = self.W_enc.dtype
        # decoder rows: random unit vectors of the output space (the encoder keeps the SAE's random init)
        w_dec = torch.empty(cfg.d_sae, cfg.d_out, dtype=dtype)
        nn.init.kaiming_uniform_(w_dec)
        self.W_dec = nn.Parameter(w_dec / w_dec.norm(dim=-1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype))
        # SAELens' SkipTranscoder layout; starting at zero, the skip term learns only what features cannot
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in, dtype=dtype)) if cfg.skip else None
        self.to(cfg.device)

    @property
    def d_out(self) -> int:
        return self.cfg.d_out

    def skip(self, x: torch.Tensor) -> torch.Tensor | float:
        """The affine skip term ``x @ W_skip.T`` (0 without one)."""
        return 0.0 if self.W_skip is None else x.to(self.W_skip.dtype) @ self.W_skip.T

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``ŷ = decode(encode(x)) + skip(x)`` (through the hook points, so feature edits take effect)."""
        x = self._check_input(x)
        return self.decode(self.encode(x)) + self.skip(x)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        pred = self.predict(x)
        if target is None:
            return self._hook("output", pred)
        with torch.no_grad():  # the clean prediction: no hooks, so no edits
            self._hooks_off, was = True, self._hooks_off
            try:
                clean = self.predict(x)
            finally:
                self._hooks_off = was
        return self._hook("output", pred + self._hook("error", target.to(pred.dtype).detach() - clean))

    def saelens_shapes(self) -> dict[str, tuple[int, ...]]:
        want = super().saelens_shapes()
        if self.W_skip is not None:
            want["W_skip"] = (self.cfg.d_out, self.cfg.d_in)
        return want


def load_transcoder(folder: str | Path, device=None, dtype: str | None = None) -> Transcoder:
    """Load a transcoder folder (``cfg.json`` + ``sae_weights.safetensors``; module docstring)."""
    import json

    from safetensors import safe_open

    from interp.analysis.sae.model import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

    folder = Path(folder)
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (folder / name).is_file():
            raise InterpError(f"folder: {folder} is not a transcoder folder ({name} is missing)")
    try:
        raw = json.loads((folder / SAE_CFG_FILENAME).read_text())
    except json.JSONDecodeError as e:
        raise InterpError(f"folder: {folder / SAE_CFG_FILENAME} is not valid JSON ({e})") from None
    kind = Transcoder
    if str(raw.get("architecture", "")).startswith("cross_layer_"):  # a cross-layer transcoder's folder
        from interp.analysis.sae.cross_layer import CrossLayerTranscoder

        kind = CrossLayerTranscoder
    cfg = kind.config_class.from_saelens(raw, source=str(folder / SAE_CFG_FILENAME))
    if dtype is not None:
        cfg.dtype = dtype
    with safe_open(str(folder / SAE_WEIGHTS_FILENAME), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    want = (cfg.d_in, cfg.d_sae) if kind is Transcoder else (cfg.n_layers, cfg.d_in, cfg.d_sae)
    if "W_enc" in state and tuple(state["W_enc"].shape) != want:  # before building: cfg.json's sizes could be huge
        raise InterpError(f"{folder / SAE_WEIGHTS_FILENAME}: W_enc has shape {tuple(state['W_enc'].shape)}; "
                          f"{SAE_CFG_FILENAME} needs {want}: they do not belong together")
    tc = kind(cfg).load_saelens_state_dict(state, source=str(folder / SAE_WEIGHTS_FILENAME))
    return tc.to(device) if device is not None else tc


def load_transcoders(folder: str | Path, device=None, dtype: str | None = None) -> list[Transcoder]:
    """Every transcoder in ``folder`` (itself one, or one per subfolder), ordered by the layer they replace; a
    folder in circuit-tracer's layout (``layer_{i}.safetensors``) is read too (``circuit_tracer_files``), and
    a cross-layer transcoder's (interp's, or circuit-tracer's ``W_enc_{i}``/``W_dec_{i}`` files) is a list of one."""
    from interp.analysis.sae.circuit_tracer_files import (
        is_circuit_tracer_folder,
        load_circuit_tracer_transcoders,
    )
    from interp.analysis.sae.cross_layer import is_circuit_tracer_clt_folder, load_circuit_tracer_clt

    folder = Path(folder)
    if is_circuit_tracer_clt_folder(folder):
        return [load_circuit_tracer_clt(folder, device, dtype)]
    if is_circuit_tracer_folder(folder):
        return load_circuit_tracer_transcoders(folder, device, dtype)
    if (folder / "cfg.json").is_file():
        return [load_transcoder(folder, device, dtype)]
    subs = sorted(p for p in folder.iterdir() if (p / "cfg.json").is_file()) if folder.is_dir() else []
    if not subs:
        raise InterpError(f"transcoders: {folder} holds no transcoder folders (cfg.json + sae_weights.safetensors)")
    return sorted((load_transcoder(p, device, dtype) for p in subs), key=transcoder_layer)


def transcoder_layer(tc: Transcoder) -> int:
    """The layer whose MLP ``tc`` replaces, from its ``hook_name_out`` (``blocks.{l}.hook_mlp_out``)."""
    out = tc.cfg.hook_name_out
    m = re.fullmatch(r"blocks\.(\d+)\.hook_mlp_out", str(out))
    if not isinstance(tc, Transcoder) or m is None:
        raise InterpError(f"transcoders: each must be a Transcoder predicting blocks.{{l}}.hook_mlp_out "
                          f"(metadata.hook_name_out); given {type(tc).__name__} with {out!r}")
    return int(m.group(1))


def check_transcoders(model, transcoders) -> dict[int, Transcoder]:
    """``{layer: transcoder}`` after checking each fits ``model``: one per layer, hooks the model has, widths
    equal to its ``d_model``, and (when both are known) the model name it was trained on. A cross-layer
    transcoder (given alone) is checked as a whole and stands at every layer."""
    return transcoder_set(model, transcoders).by_layer


class TranscoderSet:
    """The MLP replacements of a model, read layer by layer (module docstring). This class holds per-layer
    transcoders; ``cross_layer.CrossLayerSet`` a cross-layer one. Everything the users of a set need:

    * ``layers``; ``hook_in(l)`` / ``hook_out(l)``: the hooks layer ``l``'s features read and its MLP output;
    * ``encode(l, x)`` (through the module's hook points unless ``clean``) and ``pre_activations(l, x)``;
      ``encoder(l) [d_in, d_sae]``;
    * ``decoders(l)``: the MLP layers its features write to and ``W [d_sae, len(those), d_out]``;
    * ``reconstruct(l, acts)``: MLP ``l``'s prediction from ``acts {layer: features}`` (every layer up to ``l``)
      without the skip term; ``skip(l, x)``; ``b_dec(l)``.
    """

    def __init__(self, by_layer: dict[int, Transcoder]):
        self.by_layer = dict(sorted(by_layer.items()))

    @property
    def layers(self) -> list[int]:
        return list(self.by_layer)

    def hook_in(self, layer: int) -> str:
        return self.by_layer[layer].cfg.hook_name

    def hook_out(self, layer: int) -> str:
        return self.by_layer[layer].cfg.hook_name_out

    def modules(self) -> list:
        return list(self.by_layer.values())

    def d_sae(self, layer: int) -> int:
        return self.by_layer[layer].cfg.d_sae

    def encoder(self, layer: int) -> torch.Tensor:
        return self.by_layer[layer].W_enc

    def decoders(self, layer: int) -> tuple[list[int], torch.Tensor]:
        return [layer], self.by_layer[layer].W_dec[:, None]

    def b_dec(self, layer: int) -> torch.Tensor:
        return self.by_layer[layer].b_dec

    def encode(self, layer: int, x: torch.Tensor, clean: bool = False) -> torch.Tensor:
        tc = self.by_layer[layer]
        tc._hooks_off, was = clean or tc._hooks_off, tc._hooks_off
        try:
            return tc.encode(x)
        finally:
            tc._hooks_off = was

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.by_layer[layer].pre_activations(x)

    def skip(self, layer: int, x: torch.Tensor):
        return self.by_layer[layer].skip(x)

    def reconstruct(self, layer: int, acts: dict, clean: bool = False) -> torch.Tensor:
        tc = self.by_layer[layer]
        tc._hooks_off, was = clean or tc._hooks_off, tc._hooks_off
        try:
            return tc.decode(acts[layer])
        finally:
            tc._hooks_off = was

    def converted(self, device, dtype) -> TranscoderSet:
        """The set on ``device`` in ``dtype`` (copies only where they differ)."""
        import copy

        return TranscoderSet({layer: tc if (tc.W_enc.dtype, tc.W_enc.device) == (dtype, torch.device(device)) else
                              copy.deepcopy(tc).to(device=device, dtype=dtype) for layer, tc in self.by_layer.items()})

    def describe(self) -> list[dict]:
        """Per layer, what an attribution graph's JSON records about the transcoder there."""
        return [{"layer": layer, "hook_name": tc.cfg.hook_name, "hook_name_out": tc.cfg.hook_name_out,
                 "d_sae": tc.cfg.d_sae, "architecture": tc.cfg.architecture, "skip": tc.cfg.skip, "cross_layer": False}
                for layer, tc in self.by_layer.items()]


def transcoder_set(model, transcoders) -> TranscoderSet:
    """``transcoders`` (per-layer ones: a list, a dict or one; a cross-layer transcoder alone, or in a list of
    one; or a set) as a :class:`TranscoderSet`, after checking they fit ``model``."""
    from interp.analysis.sae.cross_layer import CrossLayerTranscoder, check_clt

    if isinstance(transcoders, TranscoderSet):
        transcoders = transcoders.modules()
    if isinstance(transcoders, Transcoder):
        transcoders = [transcoders]
    if isinstance(transcoders, dict):
        transcoders = list(transcoders.values())
    transcoders = list(dict.fromkeys(transcoders)) if isinstance(transcoders, (list, tuple)) else transcoders
    if not transcoders:
        raise InterpError("transcoders: give at least one Transcoder (or a folder: load_transcoders)")
    if any(isinstance(tc, CrossLayerTranscoder) for tc in transcoders):
        if len(transcoders) != 1:
            raise InterpError(f"transcoders: a cross-layer transcoder replaces every MLP by itself; give it alone "
                              f"(given {len(transcoders)} transcoders)")
        return check_clt(model, transcoders[0])
    by_layer: dict[int, Transcoder] = {}
    d_model, name = int(model.cfg.d_model), getattr(model.cfg, "name", None)
    for tc in transcoders:
        layer = transcoder_layer(tc)
        if layer in by_layer:
            raise InterpError(f"transcoders: two replace layer {layer}'s MLP; give one per layer")
        if not 0 <= layer < model.cfg.n_layers:
            raise InterpError(f"transcoders: layer {layer} is outside the model's [0, {model.cfg.n_layers})")
        check_hook_name(model, tc.cfg.hook_name)
        check_hook_name(model, tc.cfg.hook_name_out)
        if not str(tc.cfg.hook_name).startswith(f"blocks.{layer}."):
            raise InterpError(f"transcoders: layer {layer}'s transcoder reads {tc.cfg.hook_name!r}; it must read "
                              f"the same block (blocks.{layer}.{INPUT_HOOKS[0]} or blocks.{layer}.{INPUT_HOOKS[1]})")
        if (tc.cfg.d_in, tc.cfg.d_out) != (d_model, d_model):
            raise InterpError(f"transcoders: layer {layer}'s transcoder maps d_in={tc.cfg.d_in} -> d_out="
                              f"{tc.cfg.d_out}, but the model's d_model is {d_model}: it belongs to another model")
        trained_on = tc.cfg.metadata.get("model_name")
        if trained_on and name and trained_on != name:
            raise InterpError(f"transcoders: layer {layer}'s transcoder was trained on model {trained_on!r}; "
                              f"this model is {name!r}")
        by_layer[layer] = tc
    return TranscoderSet(by_layer)


@contextlib.contextmanager
def splice_transcoders(model, transcoders, use_error_term: bool = False, edit=None):
    """Run ``model`` with each given layer's MLP output replaced by its transcoders' prediction (per-layer ones,
    or a cross-layer transcoder: every feature so far writes into each MLP output).

    With ``use_error_term=True`` the replacement is the prediction plus its error against the real MLP
    output, so the model's output is unchanged until features are edited — by a hook on a per-layer
    transcoder (``tc.hooks(fwd_hooks=[("hook_sae_acts_post", fn)])``) or by ``edit(layer, acts) -> acts``
    (any set) — and then exactly the edit's effect goes downstream (to later layers too, for a CLT).
    """
    ts = transcoder_set(model, transcoders)
    inputs: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}  # features so far in this forward pass (a CLT's write to later MLPs)
    clean: dict[int, torch.Tensor] = {}

    def read(layer):
        def hook(act, hook=None):
            if layer == ts.layers[0]:  # a new forward pass
                acts.clear()
                clean.clear()
            inputs[layer] = act
        return hook

    def write(layer):
        def hook(act, hook=None):
            x = inputs.pop(layer)
            a = ts.encode(layer, x)
            acts[layer] = edit(layer, a) if edit is not None else a
            pred = ts.reconstruct(layer, acts) + ts.skip(layer, x)
            if use_error_term:  # the clean prediction's error: a constant, as a Transcoder's own error term
                with torch.no_grad():
                    clean[layer] = ts.encode(layer, x, clean=True)
                    error = act - (ts.reconstruct(layer, clean, clean=True) + ts.skip(layer, x))
                pred = pred + error.to(pred.dtype)
            return pred.to(act.dtype)
        return hook

    fwd = [h for layer in ts.layers for h in ((ts.hook_in(layer), read(layer)), (ts.hook_out(layer), write(layer)))]
    with model.hooks(fwd_hooks=fwd):
        yield model


def train_transcoder(model, layer: int, corpus, d_sae: int, architecture: str = "topk", *,
                     input_hook: str = INPUT_HOOKS[0], skip: bool = False, **train_kwargs) -> Transcoder:
    """Train a transcoder for layer ``layer``'s MLP of ``model`` over ``corpus`` (as ``train_sae`` reads it).

    It reads ``blocks.{layer}.{input_hook}`` (``ln2.hook_normalized``, the default, or ``hook_resid_mid``)
    and predicts ``blocks.{layer}.hook_mlp_out``; ``skip=True`` adds the affine skip term. The other keywords
    are ``train_sae``'s (``k``, ``steps``, ``batch_size``, ``checkpoint_dir``, ``time_budget``, ...).
    """
    from interp.analysis._inputs import check_index
    from interp.analysis.sae.source import as_source
    from interp.analysis.sae.train import train_sae

    layer = check_index("layer", layer, model.cfg.n_layers, allow_negative=False)
    if input_hook not in INPUT_HOOKS:
        raise InterpError(f"input_hook: must be one of {list(INPUT_HOOKS)}; given {input_hook!r}")
    hook_in, hook_out = f"blocks.{layer}.{input_hook}", f"blocks.{layer}.hook_mlp_out"
    check_hook_name(model, hook_in)
    opts = {k: train_kwargs.pop(k) for k in ("seq_len", "max_tokens") if k in train_kwargs}
    progress = train_kwargs.get("progress", True)
    src = as_source((model, hook_in, corpus), progress=progress, **opts)
    tgt = as_source((model, hook_out, corpus), progress=progress, **opts)
    return train_sae(src, d_sae, architecture, target=tgt, skip=skip, **train_kwargs)


@dataclasses.dataclass
class TranscoderEval:
    """``layers``: per layer ``layer, n_tokens, l0, fve, mse, cosine, dead_frac, dense_frac`` (FVE of the MLP
    output); ``metrics``: ``ce_clean``, ``ce_replaced`` (every given MLP replaced at once), ``ce_zero_ablation``
    (those MLPs' outputs zeroed) and ``ce_loss_recovered`` = (zero − replaced) / (zero − clean)."""

    layers: pd.DataFrame
    metrics: dict

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"metric": list(self.metrics), "value": list(self.metrics.values())})


@torch.no_grad()
def evaluate_transcoders(model, transcoders, corpus, *, seq_len: int | None = None, batch_size: int = 8,
                         max_tokens: int | None = None, dense_threshold: float = 0.1) -> TranscoderEval:
    """Per-layer sparsity and MLP-output reconstruction, and CE loss recovered with every MLP replaced."""
    from interp.analysis._inputs import model_device
    from interp.analysis.sae.evaluate import _ce_metrics, _check_threshold, _Stats, _token_ce, _zero_hook
    from interp.analysis.sae.source import token_batches

    dense_threshold = _check_threshold(dense_threshold)
    ts = transcoder_set(model, transcoders)
    stats = {layer: _Stats(ts.d_sae(layer)) for layer in ts.layers}
    names = {n for layer in ts.layers for n in (ts.hook_in(layer), ts.hook_out(layer))}
    sums, n_pred, n_tok = [0.0, 0.0, 0.0], 0, 0
    dev = model_device(model)
    zero = [(ts.hook_out(layer), _zero_hook) for layer in ts.layers]
    for toks in token_batches(model, corpus, seq_len, batch_size):
        toks = toks.to(dev)
        logits, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
        acts = {}  # each layer's prediction from the clean inputs (a CLT's: every layer so far writes to it)
        for layer in ts.layers:
            x = cache[ts.hook_in(layer)].flatten(0, 1)
            acts[layer] = ts.encode(layer, x)
            pred = ts.reconstruct(layer, acts) + ts.skip(layer, x)
            stats[layer].add_prediction(acts[layer], pred, cache[ts.hook_out(layer)].flatten(0, 1))
        n_tok += toks.numel()
        if toks.shape[1] >= 2:
            with splice_transcoders(model, ts):
                replaced = float(_token_ce(model, toks))
            with model.hooks(fwd_hooks=zero):
                zeroed = float(_token_ce(model, toks))
            clean = -torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, toks[:, 1:, None]).sum()
            for i, v in enumerate((float(clean), replaced, zeroed)):
                sums[i] += v
            n_pred += toks.shape[0] * (toks.shape[1] - 1)
        if max_tokens is not None and n_tok >= max_tokens:
            break
    if n_tok == 0:
        raise InterpError("corpus: holds no tokens to evaluate on")
    rows = [{"layer": layer, **s.metrics(dense_threshold)} for layer, s in stats.items()]
    metrics = _ce_metrics(sums, n_pred) if n_pred else {}
    if metrics:
        metrics["ce_replaced"] = metrics.pop("ce_sae")
    return TranscoderEval(layers=pd.DataFrame(rows), metrics=metrics)
