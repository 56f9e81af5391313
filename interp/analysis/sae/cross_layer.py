"""Cross-layer transcoders (Ameisen et al. 2025, "Circuit Tracing", §"Building an interpretable replacement").

A per-layer transcoder's features read MLP ``l``'s input and write MLP ``l``'s output. A cross-layer
transcoder (CLT) has ``d_sae`` features at every layer ``l``; each reads layer ``l``'s MLP input and writes to
the output of *every* MLP ``l' >= l``:

    f_l  = σ(x_l @ W_enc[l] + b_enc[l])                       # x_l: blocks.{l}.ln2.hook_normalized (or hook_resid_mid)
    ŷ_l' = Σ_{l <= l'} f_l @ W_dec[l, :, l'] + b_dec[l']      # ŷ_l' ≈ blocks.{l'}.hook_mlp_out

so one feature can stand for computation that several MLPs share ("cross-layer superposition"), and paths in
an attribution graph get shorter. σ is one of the SAE activations (``relu``, ``topk`` (k per layer and token),
``jumprelu`` with a threshold per layer and feature), applied by the SAE's own code.

* :class:`CrossLayerTranscoder` is a :class:`~interp.analysis.sae.transcoder.Transcoder` whose tensors gain a
  layer axis: ``W_enc [L, d_in, d_sae]``, ``b_enc [L, d_sae]``, ``W_dec [L, d_sae, L, d_out]`` (source layer,
  feature, target layer; entries with target < source are zero and stay zero), ``b_dec [L, d_out]``,
  ``threshold [L, d_sae]``. Called on ``x [..., L, d_in]`` (or the layers concatenated, ``[..., L·d_in]``) it
  returns ``ŷ [..., L, d_out]``. A feature's decoder norm is taken over all the layers it writes to.
* Training is ``train_sae``'s loop with ``target=`` and ``cross_layer=L`` (sources: the layers' inputs and
  outputs concatenated; the loss sums every layer's squared error, plus the architecture's sparsity term);
  ``train_cross_layer_transcoder(model, corpus, d_sae)`` gathers both in one pass over the corpus.
* Files are SAELens-style, like the per-layer kinds: ``cfg.json`` (``architecture``
  ``cross_layer_transcoder`` / ``cross_layer_topk_transcoder`` / ``cross_layer_jumprelu_transcoder``,
  ``n_layers``, per-layer ``d_in``/``d_sae``/``d_out``; ``metadata.hook_name`` and ``hook_name_out`` are the
  lists of the L input and output hooks) + ``sae_weights.safetensors`` with the tensors above.
  circuit-tracer's CLT folders (``W_enc_{i}.safetensors`` with ``W_enc_{i} [d_sae, d_model]``, ``b_enc_{i}``,
  ``b_dec_{i}``, optional ``threshold_{i}`` (JumpReLU); ``W_dec_{i}.safetensors`` with ``W_dec_{i} [d_sae,
  L - i, d_model]``) are read by :func:`load_circuit_tracer_clt`.
* :class:`CrossLayerSet` is the CLT seen as a *transcoder set* (``transcoder.TranscoderSet``): what
  ``splice_transcoders``, ``evaluate_transcoders`` and attribution graphs use, so they take per-layer
  transcoders and a CLT alike.

>>> cfg = CrossLayerTranscoderConfig(d_in=8, d_sae=16, n_layers=3, architecture="topk", k=2)
>>> clt = CrossLayerTranscoder(cfg)
>>> tuple(clt(torch.randn(5, 3, 8)).shape), tuple(clt.W_dec.shape)
((5, 3, 8), (3, 16, 3, 8))
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from torch import nn

from interp.analysis.sae.model import _JumpReLU
from interp.analysis.sae.transcoder import INPUT_HOOKS, Transcoder, TranscoderConfig, TranscoderSet
from interp.errors import InterpError

__all__ = ["CrossLayerSet", "CrossLayerTranscoder", "CrossLayerTranscoderConfig", "is_circuit_tracer_clt_folder",
           "load_circuit_tracer_clt", "train_cross_layer_transcoder"]

CLT_PREFIX = "cross_layer_"


@dataclasses.dataclass
class CrossLayerTranscoderConfig(TranscoderConfig):
    """A transcoder config (sizes *per layer*) plus ``n_layers``, the MLPs it replaces (0 … n_layers − 1)."""

    n_layers: int = 1

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers < 1:
            raise InterpError(f"n_layers: must be an int >= 1; given {self.n_layers!r}")
        if self.skip:
            raise InterpError("skip: a cross-layer transcoder has no affine skip term here; give skip=False")
        if self.normalize_activations != "none" or self.reshape_activations != "none" or \
                self.rescale_acts_by_decoder_norm:
            raise InterpError("a cross-layer transcoder reads activations as they are (normalize_activations, "
                              "reshape_activations and rescale_acts_by_decoder_norm must be off)")

    def to_saelens(self) -> dict:
        cfg = super().to_saelens()
        cfg["architecture"] = CLT_PREFIX + cfg["architecture"]
        cfg["n_layers"] = self.n_layers
        return cfg

    @classmethod
    def from_saelens(cls, cfg: dict, source: str = "cfg.json") -> CrossLayerTranscoderConfig:
        cfg = dict(cfg)
        name = str(cfg.get("architecture", ""))
        if not name.startswith(CLT_PREFIX) or "n_layers" not in cfg:
            raise InterpError(f"{source}: architecture {name!r} (with n_layers) is not a cross-layer transcoder; "
                              f"expected {CLT_PREFIX}transcoder, {CLT_PREFIX}topk_transcoder or "
                              f"{CLT_PREFIX}jumprelu_transcoder")
        n_layers = cfg.pop("n_layers")
        cfg["architecture"] = name.removeprefix(CLT_PREFIX)
        base = TranscoderConfig.from_saelens(cfg, source)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(TranscoderConfig)}
        return cls(**fields, n_layers=int(n_layers))


class CrossLayerTranscoder(Transcoder):
    """Features per layer that write to every later MLP output (module docstring).

    ``forward(x)`` is ``ŷ [..., L, d_out]``; with a ``target [..., L, d_out]`` it is ``ŷ`` plus the clean
    prediction's error (so the output is ``target`` until a hook edits features), as a Transcoder's.
    """

    config_class = CrossLayerTranscoderConfig
    decoder_row_dims = (-2, -1)  # a feature's decoder row: everything it writes, to every target layer

    def __init__(self, cfg: CrossLayerTranscoderConfig, use_error_term: bool = False):
        if not isinstance(cfg, CrossLayerTranscoderConfig):
            raise InterpError(f"cfg: a CrossLayerTranscoder needs a CrossLayerTranscoderConfig; given "
                              f"{type(cfg).__name__}")
        super().__init__(cfg, use_error_term)
        n, d_in, d_sae, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.d_out
        dtype = self.W_enc.dtype
        # writes to earlier layers are structurally zero: decode multiplies by this mask, so they get no gradient
        self.register_buffer("decoder_mask", torch.ones(n, n, dtype=dtype).triu()[:, None, :, None],
                             persistent=False)
        w_dec = torch.empty(n, d_sae, n, d_out, dtype=dtype)
        nn.init.kaiming_uniform_(w_dec)
        w_dec = w_dec * self.decoder_mask
        w_dec = w_dec / w_dec.norm(dim=(-2, -1), keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        # each encoder starts as its features' own-layer decoder direction, transposed (as an SAE's)
        own = w_dec[torch.arange(n), :, torch.arange(n)]  # [L, d_sae, d_out]
        w_enc = torch.randn(n, d_in, d_sae, dtype=dtype) / d_in ** 0.5 if d_in != d_out else own.transpose(1, 2)
        self.W_enc = nn.Parameter(w_enc.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(n, d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(n, d_out, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((n, d_sae), self.log_threshold[0].item(), dtype=dtype))
        self.to(cfg.device)

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.cfg.n_layers, self.cfg.d_sae)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as ``[..., L, d_in]`` in the CLT's dtype (the layers concatenated, ``[..., L·d_in]``, too)."""
        n, d = self.cfg.n_layers, self.cfg.d_in
        if isinstance(x, torch.Tensor) and x.ndim >= 1 and not (x.ndim >= 2 and x.shape[-2:] == (n, d)) \
                and x.shape[-1] == n * d:
            x = x.unflatten(-1, (n, d))
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or tuple(x.shape[-2:]) != (n, d):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InterpError(f"x: expected every layer's input [..., n_layers={n}, d_in={d}]; given {shape}")
        return x.to(self.W_enc.dtype)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``x_l @ W_enc[l] + b_enc[l]`` for every layer: ``[..., L, d_sae]``."""
        sae_in = self._sae_in(x)
        return self._hook("acts_pre", torch.einsum("...li,lis->...ls", sae_in, self.W_enc) + self.b_enc)

    def _decoder_norms(self) -> torch.Tensor:
        return self.W_dec.norm(dim=(-2, -1))  # [L, d_sae]

    def decoder_sum(self, f: torch.Tensor) -> torch.Tensor:
        """``Σ_l f_l @ W_dec[l, :, l']`` for every target layer l' (no bias): ``[..., L, d_out]``."""
        return torch.einsum("...ls,lsmd->...md", f.to(self.W_dec.dtype), self.W_dec * self.decoder_mask)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self._hook("recons", self.decoder_sum(f) + self.b_dec)

    def encode_layer(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s features from its input ``x [..., d_in]`` alone (a forward pass meets the layers one
        by one); the same activation as :meth:`encode`, without the hook points."""
        pre = self.layer_pre_activations(x, layer)
        if self.cfg.architecture == "jumprelu":
            return _JumpReLU.apply(pre, self.threshold[layer], self.cfg.jumprelu_bandwidth)
        return self.activate(pre)

    def layer_pre_activations(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        return x.to(self.W_enc.dtype) @ self.W_enc[layer] + self.b_enc[layer]

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each feature's decoder (all its target layers) to unit norm; the encoder takes the scale."""
        norms = self._decoder_norms().clamp_min(1e-12)  # [L, d_sae]
        self.W_dec.div_(norms[:, :, None, None])
        self.W_enc.mul_(norms[:, None, :])
        self.b_enc.mul_(norms)
        if self.cfg.architecture == "jumprelu":
            self.log_threshold.add_(norms.log())

    def saelens_shapes(self) -> dict[str, tuple[int, ...]]:
        n, d_in, d_sae, d_out = self.cfg.n_layers, self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out
        want = {"W_enc": (n, d_in, d_sae), "W_dec": (n, d_sae, n, d_out), "b_enc": (n, d_sae), "b_dec": (n, d_out)}
        if self.cfg.architecture == "jumprelu":
            want["threshold"] = (n, d_sae)
        return want

    def load_saelens_state_dict(self, state: dict[str, torch.Tensor], source: str = "weights") -> CrossLayerTranscoder:
        w_dec = state.get("W_dec")
        if w_dec is not None and tuple(w_dec.shape) == self.saelens_shapes()["W_dec"] and \
                bool((w_dec * (1 - self.decoder_mask.to(w_dec.dtype))).any()):
            raise InterpError(f"{source}: W_dec writes from a layer to an earlier one (W_dec[l, :, l'] with l' < l "
                              "must be zero): not a cross-layer transcoder's decoder")
        return super().load_saelens_state_dict(state, source)


# ----------------------------------------------------------------------------------------------------
# the CLT as a transcoder set (what splicing, evaluation and attribution graphs read)


class CrossLayerSet(TranscoderSet):
    """A :class:`CrossLayerTranscoder` seen layer by layer: layer ``l``'s features write to every ``l' >= l``."""

    def __init__(self, clt: CrossLayerTranscoder):
        self.clt = clt
        super().__init__({layer: clt for layer in range(clt.n_layers)})

    def hook_in(self, layer: int) -> str:
        return self.clt.cfg.hook_name[layer]

    def hook_out(self, layer: int) -> str:
        return self.clt.cfg.hook_name_out[layer]

    def modules(self) -> list:
        return [self.clt]

    def encoder(self, layer: int) -> torch.Tensor:
        return self.clt.W_enc[layer]

    def decoders(self, layer: int) -> tuple[list[int], torch.Tensor]:
        return list(range(layer, self.clt.n_layers)), self.clt.W_dec[layer, :, layer:]

    def b_dec(self, layer: int) -> torch.Tensor:
        return self.clt.b_dec[layer]

    def encode(self, layer: int, x: torch.Tensor, clean: bool = False) -> torch.Tensor:
        return self.clt.encode_layer(x, layer)

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.clt.layer_pre_activations(x, layer)

    def skip(self, layer: int, x: torch.Tensor):
        return 0.0

    def reconstruct(self, layer: int, acts: dict, clean: bool = False) -> torch.Tensor:
        """``Σ_{l <= layer} acts[l] @ W_dec[l, :, layer] + b_dec[layer]``."""
        clt = self.clt
        out = clt.b_dec[layer]
        for src in range(layer + 1):
            out = out + acts[src].to(clt.W_dec.dtype) @ clt.W_dec[src, :, layer]
        return out

    def converted(self, device, dtype) -> CrossLayerSet:
        import copy

        clt = self.clt
        if (clt.W_enc.dtype, clt.W_enc.device) != (dtype, torch.device(device)):
            clt = copy.deepcopy(clt).to(device=device, dtype=dtype)
        return CrossLayerSet(clt)

    def describe(self) -> list[dict]:
        c = self.clt.cfg
        return [{"layer": layer, "hook_name": c.hook_name[layer], "hook_name_out": c.hook_name_out[layer],
                 "d_sae": c.d_sae, "architecture": c.architecture, "skip": False, "cross_layer": True}
                for layer in self.layers]


def check_clt(model, clt: CrossLayerTranscoder) -> CrossLayerSet:
    """The CLT as a set after checking it fits ``model``: one input and output hook per layer, the model's
    layers and ``d_model``, and (when both are known) the model name it was trained on."""
    from interp.analysis.sae.source import check_hook_name

    c, n = clt.cfg, clt.n_layers
    if n != model.cfg.n_layers:
        raise InterpError(f"transcoders: the cross-layer transcoder spans {n} layers; the model has "
                          f"{model.cfg.n_layers}: it belongs to another model")
    ins, outs = c.hook_name, c.hook_name_out
    if not (isinstance(ins, list) and isinstance(outs, list) and len(ins) == len(outs) == n):
        raise InterpError(f"transcoders: a cross-layer transcoder's metadata.hook_name and hook_name_out must list "
                          f"{n} hooks (one per layer); given {ins!r} and {outs!r}")
    for layer, (i, o) in enumerate(zip(ins, outs)):
        if i not in [f"blocks.{layer}.{h}" for h in INPUT_HOOKS] or o != f"blocks.{layer}.hook_mlp_out":
            raise InterpError(f"transcoders: layer {layer} of the cross-layer transcoder reads {i!r} and writes "
                              f"{o!r}; expected blocks.{layer}.{INPUT_HOOKS[0]} (or {INPUT_HOOKS[1]}) and "
                              f"blocks.{layer}.hook_mlp_out")
        check_hook_name(model, i)
        check_hook_name(model, o)
    d_model = int(model.cfg.d_model)
    if (c.d_in, c.d_out) != (d_model, d_model):
        raise InterpError(f"transcoders: the cross-layer transcoder maps d_in={c.d_in} -> d_out={c.d_out}, but the "
                          f"model's d_model is {d_model}: it belongs to another model")
    trained_on, name = c.metadata.get("model_name"), getattr(model.cfg, "name", None)
    if trained_on and name and trained_on != name:
        raise InterpError(f"transcoders: the cross-layer transcoder was trained on model {trained_on!r}; this "
                          f"model is {name!r}")
    return CrossLayerSet(clt)


# ----------------------------------------------------------------------------------------------------
# training


def train_cross_layer_transcoder(model, corpus, d_sae: int, architecture: str = "topk", *,
                                 input_hook: str = INPUT_HOOKS[0], **train_kwargs) -> CrossLayerTranscoder:
    """Train a CLT replacing every MLP of ``model`` over ``corpus`` (as ``train_sae`` reads it): ``d_sae``
    features per layer, reading ``blocks.{l}.{input_hook}`` and predicting every ``blocks.{l'}.hook_mlp_out``.
    The other keywords are ``train_sae``'s (``k`` per layer, ``steps``, ``batch_size``, ``checkpoint_dir``, ...).
    """
    from interp.analysis.sae.source import as_source
    from interp.analysis.sae.train import train_sae

    if input_hook not in INPUT_HOOKS:
        raise InterpError(f"input_hook: must be one of {list(INPUT_HOOKS)}; given {input_hook!r}")
    n = model.cfg.n_layers
    ins = [f"blocks.{layer}.{input_hook}" for layer in range(n)]
    outs = [f"blocks.{layer}.hook_mlp_out" for layer in range(n)]
    opts = {k: train_kwargs.pop(k) for k in ("seq_len", "max_tokens") if k in train_kwargs}
    progress = train_kwargs.get("progress", True)
    # one pass over the corpus gathers every layer's input and output, side by side in each row
    both = as_source((model, ins + outs, corpus), progress=progress, **opts)
    x_all = both.shard(0)
    d = int(model.cfg.d_model)
    meta = {k: v for k, v in both.metadata.items() if k != "hook_name"}
    src = as_source(x_all[:, : n * d])
    tgt = as_source(x_all[:, n * d :])
    src.metadata, tgt.metadata = {**meta, "hook_name": ins}, {"hook_name": outs}
    return train_sae(src, d_sae, architecture, target=tgt, cross_layer=n, **train_kwargs)


# ----------------------------------------------------------------------------------------------------
# circuit-tracer's CLT folders

_ENC = re.compile(r"W_enc_(\d+)\.safetensors")


def is_circuit_tracer_clt_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds circuit-tracer CLT files (``W_enc_{i}.safetensors``) and no ``cfg.json``."""
    folder = Path(folder)
    return folder.is_dir() and not (folder / "cfg.json").is_file() and \
        any(_ENC.fullmatch(p.name) for p in folder.iterdir())


def load_circuit_tracer_clt(folder: str | Path, device=None, dtype: str | None = None) -> CrossLayerTranscoder:
    """A circuit-tracer CLT folder (module docstring; hooks from ``config.yaml`` as for its per-layer sets,
    default ``hook_resid_mid`` → ``hook_mlp_out``) as a :class:`CrossLayerTranscoder` (float32 or ``dtype``)."""
    from safetensors import safe_open

    from interp.analysis.sae.circuit_tracer_files import _config, _hook

    folder = Path(folder)
    enc = {int(m.group(1)): p for p in folder.iterdir() if (m := _ENC.fullmatch(p.name))} if folder.is_dir() else {}
    if not enc:
        raise InterpError(f"transcoders: {folder} holds no circuit-tracer CLT files (W_enc_0.safetensors, ...)")
    n = len(enc)
    missing = [f"{kind}_{i}.safetensors" for i in range(n) for kind in ("W_enc", "W_dec")
               if not (folder / f"{kind}_{i}.safetensors").is_file()]
    if sorted(enc) != list(range(n)) or missing:
        raise InterpError(f"transcoders: {folder} must hold W_enc_i and W_dec_i.safetensors for i = 0 … {n - 1}; "
                          f"missing {missing or sorted(set(range(max(enc) + 1)) - set(enc))}")
    cfg = _config(folder)
    hook_in = _hook(cfg, "feature_input_hook", "hook_resid_mid", folder / "config.yaml")
    if _hook(cfg, "feature_output_hook", "hook_mlp_out", folder / "config.yaml") != "hook_mlp_out":
        raise InterpError(f"transcoders: {folder / 'config.yaml'} feature_output_hook must be hook_mlp_out")
    raw: dict[str, torch.Tensor] = {}
    for i in range(n):
        for kind in ("W_enc", "W_dec"):
            with safe_open(str(folder / f"{kind}_{i}.safetensors"), framework="pt") as f:
                raw.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - safe_open has no __iter__
    want = {f"{k}_{i}" for i in range(n) for k in ("W_enc", "b_enc", "b_dec", "W_dec")}
    if sorted(want - set(raw)):
        raise InterpError(f"transcoders: {folder} is not a circuit-tracer CLT (missing {sorted(want - set(raw))})")
    d_sae, d_model = (int(s) for s in raw["W_enc_0"].shape)
    jump = "threshold_0" in raw
    for i in range(n):
        shapes = {f"W_enc_{i}": (d_sae, d_model), f"b_enc_{i}": (d_sae,), f"b_dec_{i}": (d_model,),
                  f"W_dec_{i}": (d_sae, n - i, d_model), **({f"threshold_{i}": (d_sae,)} if jump else {})}
        for k, s in shapes.items():
            if k not in raw or tuple(raw[k].shape) != s:
                raise InterpError(f"transcoders: {folder}: {k} has shape "
                                  f"{tuple(raw[k].shape) if k in raw else None}; expected {s}")
    if jump and any(bool((raw[f"threshold_{i}"].double() <= 0).any()) for i in range(n)):
        raise InterpError(f"transcoders: {folder} has JumpReLU thresholds <= 0; interp reads positive thresholds only")
    w_dec = torch.zeros(n, d_sae, n, d_model, dtype=torch.float64)
    for i in range(n):
        w_dec[i, :, i:] = raw[f"W_dec_{i}"].double()
    state = {"W_enc": torch.stack([raw[f"W_enc_{i}"].T for i in range(n)]),
             "b_enc": torch.stack([raw[f"b_enc_{i}"] for i in range(n)]),
             "b_dec": torch.stack([raw[f"b_dec_{i}"] for i in range(n)]), "W_dec": w_dec}
    if jump:
        state["threshold"] = torch.stack([raw[f"threshold_{i}"] for i in range(n)])
    clt_cfg = CrossLayerTranscoderConfig(
        d_in=d_model, d_sae=d_sae, n_layers=n, architecture="jumprelu" if jump else "relu",
        dtype=dtype or "float32", metadata={"hook_name": [f"blocks.{i}.{hook_in}" for i in range(n)],
                                            "hook_name_out": [f"blocks.{i}.hook_mlp_out" for i in range(n)],
                                            "circuit_tracer_model_name": cfg.get("model_name")})
    with torch.no_grad():
        clt = CrossLayerTranscoder(clt_cfg).load_saelens_state_dict(state, source=str(folder))
    return clt.to(device) if device is not None else clt
