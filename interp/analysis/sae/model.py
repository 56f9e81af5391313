"""The sparse autoencoder module and SAELens' on-disk format.

An SAE reads an activation ``x [..., d_in]`` and writes it as a sparse, non-negative combination of
``d_sae`` learned directions (the rows of ``W_dec``), plus a bias:

    f = σ((x - b_dec) @ W_enc + b_enc)         # [..., d_sae] feature activations
    x̂ = f @ W_dec + b_dec                      # [..., d_in] reconstruction

σ picks the architecture:

* ``"relu"`` (SAELens' ``"standard"``; Anthropic's "Towards Monosemanticity"): ReLU, trained with an L1
  penalty on ``f_i · ‖W_dec[i]‖`` so that shrinking the decoder cannot buy sparsity.
* ``"topk"`` (Gao et al. 2024): keep the ``k`` largest pre-activations of each row (then ReLU).
* ``"jumprelu"`` (Rajamanoharan et al. 2024): ``z · 1[z > θ_i]`` with a learned per-latent threshold θ.
  The step has zero gradient almost everywhere, so training uses the paper's straight-through
  pseudo-derivative: a rectangle kernel of width ``bandwidth`` around the threshold.
* ``"abstopk"`` (SAELens' AbsTopK; loaded, not trained here): the ``k`` pre-activations largest in magnitude, sign kept.
* ``"gated"`` (Rajamanoharan et al. 2024a; loaded from SAELens, not trained here): a gate
  ``1[x' @ W_enc + b_gate > 0]`` decides which latents fire, a magnitude path
  ``ReLU(x' @ (W_enc · exp(r_mag)) + b_mag)`` how strongly (``x' = x - b_dec``; no ``b_enc``).

SAELens' inference options are read and applied exactly as SAELens does: ``normalize_activations``
(``"constant_norm_rescale"``: x scaled to norm √d_in going in, the reconstruction scaled back;
``"layer_norm"``: x standardised going in, un-standardised coming out; ``"expected_average_only_in"``:
nothing at inference, its factor is folded into the saved weights), ``reshape_activations="hook_z"``
(``[..., n_heads, d_head]`` in and out, flat inside) and TopK's ``rescale_acts_by_decoder_norm``
(pre-activations times ``‖W_dec[i]‖`` before the top-k, activations divided by it before decoding).

Parameter names and shapes follow SAELens (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``,
``b_dec``, ``threshold``), and so do the hook points (``hook_sae_input``, ``hook_sae_acts_pre``,
``hook_sae_acts_post``, ``hook_sae_recons``, ``hook_sae_error``, ``hook_sae_output``): the SAE is a
TransformerLens ``HookedRootModule``, so ``sae.hooks(fwd_hooks=[("hook_sae_acts_post", fn)])`` patches or
ablates features while it is spliced into a model (see ``interp.analysis.sae.evaluate.splice_sae``).

``save_sae`` / ``load_sae`` read and write SAELens' layout: a folder with ``cfg.json`` (``d_in, d_sae, dtype,
device, apply_b_dec_to_input, normalize_activations, reshape_activations, architecture``, ``k`` for TopK,
and a ``metadata`` dict with ``hook_name``, ``model_name``, ...; SAELens < 6 kept those at the top level
and called the hook ``hook_point``) and ``sae_weights.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from interp.errors import InterpError
from interp.io import atomic_path, atomic_write_text
from interp.model.config import DTYPES

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "load_sae", "save_sae"]

ARCHITECTURES = ("relu", "topk", "jumprelu", "gated", "abstopk")
TRAINABLE = ("relu", "topk", "jumprelu")  # gated / abstopk SAEs are read from SAELens, not trained here
TOPK_LIKE = ("topk", "abstopk")  # k active latents per row; SAELens' rescale_acts_by_decoder_norm applies
# SAELens' names for our architectures (cfg.json "architecture"), and back
_TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated", "abstopk": "abstopk"}
_FROM_SAELENS = {"standard": "relu", **{a: a for a in ARCHITECTURES}}
# SAELens' normalize_activations at inference (see the module docstring); covariance_whitening must be folded first
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
RESHAPES = ("none", "hook_z")
# the tensors each architecture saves, SAELens' names
_WEIGHTS = {"relu": ("W_enc", "W_dec", "b_enc", "b_dec"), "topk": ("W_enc", "W_dec", "b_enc", "b_dec"),
            "abstopk": ("W_enc", "W_dec", "b_enc", "b_dec"),
            "jumprelu": ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"),
            "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag")}
SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME = "cfg.json", "sae_weights.safetensors"
# cfg.json keys that SAELens < 6 kept at the top level and 6.x keeps under "metadata"
_METADATA_KEYS = ("model_name", "hook_name", "hook_head_index", "prepend_bos", "context_size", "dataset_path",
                  "model_class_name", "neuronpedia_id", "exclude_special_tokens", "seqpos_slice",
                  "model_from_pretrained_kwargs")
SAELENS_VERSION = "6.18.0"  # the cfg.json layout we write (SAELens 6.x)


def _arch(name: Any) -> str:
    if name not in _FROM_SAELENS:
        raise InterpError(f"architecture: must be one of {list(ARCHITECTURES)} (or SAELens' 'standard'); "
                          f"given {name!r}")
    return _FROM_SAELENS[name]


@dataclasses.dataclass
class SAEConfig:
    """What an SAE is: sizes, architecture and where it reads (``metadata``: ``hook_name``, ``model_name``...)."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None  # TopK only: active latents per row
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    jumprelu_bandwidth: float = 0.05  # JumpReLU's pseudo-derivative kernel width (training only)
    metadata: dict = dataclasses.field(default_factory=dict)
    normalize_activations: str = "none"  # SAELens' inference normalisations: NORMALIZATIONS
    reshape_activations: str = "none"  # "hook_z": reads [..., n_heads, d_head]
    rescale_acts_by_decoder_norm: bool = False  # TopK: rank pre-activations times ‖W_dec[i]‖ (SAELens' training default)

    def __post_init__(self):
        self.architecture = _arch(self.architecture)
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InterpError(f"{name}: must be an int >= 1; given {v!r}")
        if self.architecture in TOPK_LIKE:
            if self.k is None:
                raise InterpError("k: a TopK SAE needs k, the number of active latents per row; given None")
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise InterpError(f"k: must be an int in [1, d_sae={self.d_sae}]; given {self.k!r}")
        if self.dtype not in DTYPES:
            raise InterpError(f"dtype: must be one of {list(DTYPES)}; given {self.dtype!r}")
        for name, allowed in (("normalize_activations", NORMALIZATIONS), ("reshape_activations", RESHAPES)):
            if getattr(self, name) not in allowed:
                raise InterpError(f"{name}: must be one of {list(allowed)}; given {getattr(self, name)!r}")
        if self.rescale_acts_by_decoder_norm and self.architecture not in TOPK_LIKE:
            raise InterpError(f"rescale_acts_by_decoder_norm: a TopK option; this SAE is {self.architecture!r}")
        if not (isinstance(self.jumprelu_bandwidth, (int, float)) and self.jumprelu_bandwidth > 0):
            raise InterpError(f"jumprelu_bandwidth: must be a number > 0; given {self.jumprelu_bandwidth!r}")
        self.metadata = dict(self.metadata or {})

    @property
    def hook_name(self) -> str | None:
        return self.metadata.get("hook_name")

    def to_saelens(self) -> dict:
        """cfg.json in SAELens 6.x's layout."""
        cfg = {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": self.device,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": self.reshape_activations,
            "metadata": {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION,
                         **self.metadata},
            "architecture": _TO_SAELENS[self.architecture],
        }
        if self.architecture in TOPK_LIKE:
            cfg["k"] = self.k
            cfg["rescale_acts_by_decoder_norm"] = self.rescale_acts_by_decoder_norm
        if self.architecture == "jumprelu":
            cfg["jumprelu_bandwidth"] = self.jumprelu_bandwidth  # extra key: SAELens ignores it
        return cfg

    @classmethod
    def from_saelens(cls, cfg: dict, source: str = "cfg.json") -> SAEConfig:
        """Read SAELens' cfg.json, 6.x (``metadata`` dict) or older (top-level ``hook_point`` ...)."""
        cfg = dict(cfg)
        meta = dict(cfg.pop("metadata", None) or {})
        if "hook_point" in cfg:  # SAELens < 6 names
            cfg.setdefault("hook_name", cfg.pop("hook_point"))
        if "hook_point_head_index" in cfg:
            cfg.setdefault("hook_head_index", cfg.pop("hook_point_head_index"))
        for key in _METADATA_KEYS:
            if key in cfg and key not in meta:
                meta[key] = cfg[key]
        act = cfg.get("activation_fn", cfg.get("activation_fn_str"))
        arch = cfg.get("architecture", "standard")
        k = cfg.get("k")
        if act == "topk" or arch == "topk":  # SAELens < 6 said activation_fn="topk", activation_fn_kwargs={"k":..}
            arch = "topk"
            k = k if k is not None else (cfg.get("activation_fn_kwargs") or {}).get("k")
        elif act not in (None, "relu"):
            raise InterpError(f"{source}: activation_fn {act!r} is not supported (relu, topk); this SAE cannot load")
        if arch not in _FROM_SAELENS:
            raise InterpError(f"{source}: architecture {arch!r} is not supported; "
                              f"supported: {sorted(_FROM_SAELENS)}")
        norm = cfg.get("normalize_activations") or "none"  # SAELens < 6 wrote False/None for none
        if norm not in NORMALIZATIONS:
            hint = " (fold the whitening into the weights first: SAELens' fold_activation_whitening)" \
                if norm == "covariance_whitening" else ""
            raise InterpError(f"{source}: normalize_activations={norm!r} is not supported; supported: "
                              f"{list(NORMALIZATIONS)}{hint}")
        reshape = cfg.get("reshape_activations") or "none"
        if reshape not in RESHAPES:
            raise InterpError(f"{source}: reshape_activations={reshape!r} is not supported; supported: {list(RESHAPES)}")
        for key in ("d_in", "d_sae"):
            if key not in cfg:
                raise InterpError(f"{source}: missing {key!r}; is this an SAELens cfg.json?")
        dtype = str(cfg.get("dtype", "float32")).removeprefix("torch.")
        return cls(d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), architecture=arch, k=k, dtype=dtype,
                   device="cpu", apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                   jumprelu_bandwidth=float(cfg.get("jumprelu_bandwidth", 0.05)), metadata=meta,
                   normalize_activations=norm, reshape_activations=reshape,
                   rescale_acts_by_decoder_norm=arch in TOPK_LIKE and bool(cfg.get("rescale_acts_by_decoder_norm")))


# ----------------------------------------------------------------------------------------------------
# JumpReLU and its pseudo-derivatives (Rajamanoharan et al. 2024, section 4 and appendix J)


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``z · 1[z > θ]``. Gradient to ``z`` is exact off the jump; to ``θ`` the straight-through estimate
    ``-(θ/ε) · K((z - θ)/ε)`` with the rectangle kernel K (summed over the batch)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = (z > threshold).to(grad.dtype) * grad
        # summed over the batch: every leading dimension the threshold does not have (a CLT's has a layer axis)
        grad_t = (-(threshold / eps) * _rectangle((z - threshold) / eps) * grad).reshape(-1, *threshold.shape).sum(0)
        return grad_z, grad_t, None


class _Step(torch.autograd.Function):
    """``1[z > θ]`` (the L0 count). Gradient only to ``θ``: ``-(1/ε) · K((z - θ)/ε)``."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_t = (-(1.0 / eps) * _rectangle((z - threshold) / eps) * grad).reshape(-1, *threshold.shape).sum(0)
        return None, grad_t, None


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's ``k`` largest entries (ReLU'd), zero the rest."""
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


# ----------------------------------------------------------------------------------------------------


class SAE(HookedRootModule):
    """A sparse autoencoder with SAELens' parameters and hook points (see the module docstring).

    ``forward(x)`` returns the reconstruction; with ``use_error_term=True`` it returns ``x`` itself, made of
    the (possibly hooked) reconstruction plus the error of the clean one, so the output is unchanged unless
    a hook on the SAE edits the features. JumpReLU keeps its threshold as ``log_threshold`` (positive by
    construction); ``threshold`` is its exponential, the name SAELens saves.

    >>> sae = SAE(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4))
    >>> f = sae.encode(torch.randn(5, 8))
    >>> tuple(f.shape), int((f != 0).sum(-1).max()) <= 4
    ((5, 32), True)
    """

    config_class = SAEConfig  # what ``train_sae`` builds this kind from (a transcoder has its own)
    decoder_row_dims: tuple[int, ...] = (-1,)  # the dims of W_dec holding one latent's decoder row

    def __init__(self, cfg: SAEConfig, use_error_term: bool = False):
        super().__init__()
        self.cfg = cfg
        self.use_error_term = use_error_term
        dtype = DTYPES[cfg.dtype]
        # Decoder rows: random unit vectors; the encoder starts as their transpose (Gao et al. 2024, 2.2). train_sae
        # scales a ReLU SAE's encoder down from there, for every kind at once (train.RELU_ENCODER_INIT)
        w_dec = torch.empty(cfg.d_sae, cfg.d_in, dtype=dtype)
        nn.init.kaiming_uniform_(w_dec)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())
        # a gated SAE has b_gate / b_mag in place of b_enc, and r_mag (the magnitude path's log-scale)
        for name in {"gated": ("b_gate", "r_mag", "b_mag")}.get(cfg.architecture, ("b_enc",)):
            setattr(self, name, nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype)))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        self._norm_state = None  # what SAELens' input normalisation kept from the last encode, for decode
        self._head_shape = None  # hook_z: (n_heads, d_head) of the last encode's input
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(0.01), dtype=dtype))
        for name in ("input", "acts_pre", "acts_post", "recons", "error", "output"):
            setattr(self, f"hook_sae_{name}", HookPoint())
        self._hooks_off = False
        self.setup()
        self.to(cfg.device)

    @property
    def threshold(self) -> torch.Tensor:
        if self.cfg.architecture != "jumprelu":
            raise InterpError(f"threshold: only a JumpReLU SAE has one; this SAE is {self.cfg.architecture!r}")
        return self.log_threshold.exp()

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one row's latents (a cross-layer transcoder's have a layer axis)."""
        return (self.cfg.d_sae,)

    def decoder_sum(self, f: torch.Tensor) -> torch.Tensor:
        """``f @ W_dec``: the latents' decoder rows summed, without ``b_dec`` (what AuxK fits to the residual)."""
        return f.to(self.W_dec.dtype) @ self.W_dec

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def _hook(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x if self._hooks_off else getattr(self, f"hook_sae_{name}")(x)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as [..., d_in] in the SAE's dtype; a hook_z SAE also takes [..., n_heads, d_head] (flattened)."""
        self._head_shape = None
        if isinstance(x, torch.Tensor) and self.cfg.reshape_activations == "hook_z" and x.ndim >= 2 \
                and x.shape[-1] != self.cfg.d_in and x.shape[-2] * x.shape[-1] == self.cfg.d_in:
            self._head_shape = tuple(x.shape[-2:])
            x = x.flatten(-2)
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.cfg.d_in:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InterpError(f"x: expected activations [..., d_in={self.cfg.d_in}]; given {shape}")
        return x.to(self.W_enc.dtype)

    def _sae_in(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: x hooked, normalised as configured (SAELens' order), minus b_dec."""
        x = self._hook("input", self._check_input(x))
        norm = self.cfg.normalize_activations
        if norm == "constant_norm_rescale":  # every row to norm √d_in; decode undoes it
            coeff = (self.cfg.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
            self._norm_state = coeff
            x = x * coeff
        elif norm == "layer_norm":  # standardised (unbiased std, eps 1e-5 as SAELens); decode undoes it
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            self._norm_state = (mu, std)
            x = x / (std + 1e-5)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _decoder_norms(self) -> torch.Tensor:
        return self.W_dec.norm(dim=-1)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` (``b_dec`` only when ``apply_b_dec_to_input``); TopK with
        ``rescale_acts_by_decoder_norm`` then times ‖W_dec[i]‖; gated: the magnitude path."""
        sae_in = self._sae_in(x)
        if self.cfg.architecture == "gated":
            return self._hook("acts_pre", sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
        pre = self._hook("acts_pre", sae_in @ self.W_enc + self.b_enc)
        return pre * self._decoder_norms() if self.cfg.rescale_acts_by_decoder_norm else pre

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The architecture's nonlinearity on pre-activations (differentiable for training)."""
        arch = self.cfg.architecture
        if arch in ("relu", "gated"):  # gated: the magnitudes (encode multiplies by the gate)
            return pre.relu()
        if arch == "topk":
            return topk_activation(pre, self.cfg.k)
        if arch == "abstopk":  # largest in magnitude, sign kept
            idx = pre.abs().topk(self.cfg.k, dim=-1, sorted=False).indices
            return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx))
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def skip(self, x: torch.Tensor) -> torch.Tensor | float:
        """A skip transcoder's affine term (``interp.analysis.sae.transcoder``); an SAE has none: 0."""
        return 0.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]``."""
        if self.cfg.architecture == "gated":
            sae_in = self._sae_in(x)
            gate = (sae_in @ self.W_enc + self.b_gate > 0).to(sae_in.dtype)
            magnitude = self._hook("acts_pre", sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            return self._hook("acts_post", gate * magnitude.relu())
        return self._hook("acts_post", self.activate(self.pre_activations(x)))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f @ W_dec + b_dec`` ``[..., d_in]`` (then the input normalisation undone, and
        ``[..., n_heads, d_head]`` for a hook_z SAE whose last encode read that shape)."""
        f = f.to(self.W_dec.dtype)
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f * (1 / self._decoder_norms())
        out = self._hook("recons", f @ self.W_dec + self.b_dec)
        norm = self.cfg.normalize_activations
        if norm in ("constant_norm_rescale", "layer_norm"):
            if self._norm_state is None:
                raise InterpError(f"decode: normalize_activations={norm!r} undoes the scale of the last encode; "
                                  "call encode (or the SAE itself) on the activations first")
            state, self._norm_state = self._norm_state, None
            out = out / state if norm == "constant_norm_rescale" else out * state[1] + state[0]
        if self._head_shape is not None:
            out = out.unflatten(-1, self._head_shape)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recon = self.decode(self.encode(x))
        if not self.use_error_term:
            return self._hook("output", recon)
        with torch.no_grad():  # the clean reconstruction: no hooks, so no edits
            self._hooks_off, was = True, self._hooks_off
            try:
                clean = self.decode(self.encode(x))
            finally:
                self._hooks_off = was
        x = self._check_input(x).detach()
        if self._head_shape is not None:
            x = x.unflatten(-1, self._head_shape)
        # Like SAELens, the error is a constant: gradients flow through the SAE's reconstruction only.
        if self._hooks_off or not self.hook_sae_error._forward_hooks:
            # recon + (x - clean) written as x + (recon - clean): an unedited pass returns x bit for bit
            return self._hook("output", x + (recon - clean))
        return self._hook("output", recon + self._hook("error", x - clean))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.cfg.architecture == "gated" or self.cfg.rescale_acts_by_decoder_norm:
            raise InterpError("normalize_decoder: for relu/topk/jumprelu SAEs (without rescale_acts_by_decoder_norm)")
        """Rescale decoder rows to unit norm, moving the scale into the encoder so ``x̂`` is unchanged."""
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms[None, :])
        self.b_enc.mul_(norms)
        if self.cfg.architecture == "jumprelu":
            self.log_threshold.add_(norms.log())

    def saelens_shapes(self) -> dict[str, tuple[int, ...]]:
        """The tensors of the saved file, by SAELens' name, and their shapes (a transcoder adds its own)."""
        d_out = self.W_dec.shape[1]  # d_in for an SAE; a transcoder's output width
        shapes = {"W_enc": (self.d_in, self.d_sae), "W_dec": (self.d_sae, d_out), "b_dec": (d_out,)}
        return {name: shapes.get(name, (self.d_sae,)) for name in _WEIGHTS[self.cfg.architecture]}

    def saelens_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under SAELens' names (``threshold`` instead of ``log_threshold``), contiguous on the CPU."""
        return {name: getattr(self, name).detach().to("cpu").contiguous() for name in self.saelens_shapes()}

    def load_saelens_state_dict(self, state: dict[str, torch.Tensor], source: str = "weights") -> SAE:
        want = self.saelens_shapes()
        missing = sorted(set(want) - set(state))
        if missing:
            raise InterpError(f"{source}: missing tensors {missing} for a {self.cfg.architecture} SAE "
                              f"(has {sorted(state)})")
        for name, shape in want.items():
            if tuple(state[name].shape) != shape:
                raise InterpError(f"{source}: {name} has shape {tuple(state[name].shape)}; cfg.json needs {shape}")
        with torch.no_grad():
            for name in want:
                if name != "threshold":
                    getattr(self, name).copy_(state[name])
            if self.cfg.architecture == "jumprelu":
                th = state["threshold"].double()
                if (th <= 0).any():  # SAELens allows 0 thresholds (plain ReLU latents); keep them tiny
                    th = th.clamp_min(1e-30)
                self.log_threshold.copy_(th.log())
        return self


def save_sae(sae: SAE, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``sae`` in SAELens' layout: ``folder/cfg.json`` + ``folder/sae_weights.safetensors`` (atomically).

    Refuses to replace an existing SAE unless ``overwrite=True``.
    """
    folder = Path(folder)
    if (folder / SAE_WEIGHTS_FILENAME).exists() and not overwrite:
        raise InterpError(f"folder: {folder / SAE_WEIGHTS_FILENAME} already exists; pass overwrite=True "
                          "(CLI: --force) to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / SAE_WEIGHTS_FILENAME) as tmp:
        save_file(sae.saelens_state_dict(), str(tmp), metadata={"format": "pt", "producer": "interp"})
    atomic_write_text(folder / SAE_CFG_FILENAME, json.dumps(sae.cfg.to_saelens(), indent=2) + "\n")
    return folder


def load_sae(folder: str | Path, device: str | torch.device | None = None, dtype: str | None = None) -> SAE:
    """Load an SAE saved by ``save_sae`` or by SAELens (``SAE.save_model`` / ``save_inference_model``).

    >>> import tempfile
    >>> sae = SAE(SAEConfig(d_in=4, d_sae=8, architecture="relu", metadata={"hook_name": "blocks.0.hook_resid_post"}))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     again = load_sae(save_sae(sae, d))
    >>> bool(torch.equal(again.W_dec, sae.W_dec)), again.cfg.hook_name
    (True, 'blocks.0.hook_resid_post')
    """
    folder = Path(folder)
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (folder / name).is_file():
            raise InterpError(f"folder: {folder} is not an SAE folder ({name} is missing); expected SAELens' "
                              f"{SAE_CFG_FILENAME} + {SAE_WEIGHTS_FILENAME}")
    try:
        raw = json.loads((folder / SAE_CFG_FILENAME).read_text())
    except json.JSONDecodeError as e:
        raise InterpError(f"folder: {folder / SAE_CFG_FILENAME} is not valid JSON ({e})") from None
    if "d_out" in raw or str(raw.get("architecture", "")).endswith("transcoder"):  # a transcoder's folder
        from interp.analysis.sae.transcoder import load_transcoder

        return load_transcoder(folder, device=device, dtype=dtype)
    cfg = SAEConfig.from_saelens(raw, source=str(folder / SAE_CFG_FILENAME))
    if dtype is not None:
        cfg.dtype = dtype
    weights = folder / SAE_WEIGHTS_FILENAME
    try:
        with safe_open(str(weights), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # noqa: BLE001 - safetensors' errors name neither the file nor the fix
        raise InterpError(f"folder: cannot read {weights} ({(str(e).strip().splitlines() or [type(e).__name__])[0]}); "
                          "the file is empty, truncated or not safetensors — copy or save it again") from None
    w_enc = state.get("W_enc")
    if w_enc is not None and tuple(w_enc.shape) != (cfg.d_in, cfg.d_sae):  # before building: a cfg.json saying
        # d_sae = 10^9 would otherwise allocate terabytes for weights that cannot match
        raise InterpError(f"{weights}: W_enc has shape {tuple(w_enc.shape)}; {SAE_CFG_FILENAME} needs "
                          f"{(cfg.d_in, cfg.d_sae)} (d_in, d_sae): they do not belong together")
    sae = SAE(cfg).load_saelens_state_dict(state, source=str(weights))
    return sae.to(device) if device is not None else sae
