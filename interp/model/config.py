"""One dataclass describing every decoder-only architecture interp supports.

The fields are the architecture choices discussed in the seeds (positional scheme, norm type and
placement, activation, gating, MHA/GQA/MQA, parallel residual, biases, tying). Properties with
TransformerLens' names (``normalization_type``, ``act_fn``, ``d_head`` ...) let TransformerLens'
``ActivationCache`` treat our model like one of its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError

POSITIONAL = ("learned", "sinusoidal", "rotary", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post", "deepnorm")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")
BACKENDS = ("auto", "eager", "sdpa", "triton")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise InterpError(f"DecoderConfig.{name} must be one of {list(allowed)}; got {value!r}.")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InterpError(f"DecoderConfig.{name} must be a positive integer; got {value!r}.")


@dataclass
class DecoderConfig:
    d_vocab: int
    n_ctx: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None -> n_heads (MHA); 1 -> MQA; in between -> GQA
    d_head: int | None = None  # None -> d_model // n_heads
    d_mlp: int | None = None  # None -> 4 * d_model
    positional: str = "learned"  # learned | sinusoidal | rotary | none
    rotary_fraction: float = 1.0  # share of each head's dims that rotate (GPT-NeoX's rotary_pct)
    rotary_base: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_placement: str = "pre"  # pre | post | deepnorm
    act: str = "gelu"  # gelu (exact erf) | gelu_new (tanh approximation) | relu | silu
    gated: bool = False  # SwiGLU-style: act(x W_gate) * (x W_in)
    parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)
    attn_bias: bool = True
    attn_out_bias: bool | None = None  # None -> attn_bias
    mlp_bias: bool = True
    final_norm: bool = True
    tie_embeddings: bool = False
    attn_backend: str = "auto"  # auto | eager | sdpa | triton
    use_attn_result: bool = False  # opt-in per-head output hook blocks.{l}.attn.hook_result
    init_std: float = 0.02
    deepnorm_alpha: float | None = None  # None -> (2 N)^(1/4) for deepnorm (DeepNet, decoder-only)
    deepnorm_beta: float | None = None  # None -> (8 N)^(-1/4)
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    dtype: str = "float32"
    name: str = "interp-model"
    source: dict = field(default_factory=dict)  # where the weights came from (HF class, path, ...)

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "n_layers", "n_heads"):
            _positive(name, getattr(self, name))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        _positive("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise InterpError(
                f"DecoderConfig.n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}): "
                f"each key/value head serves a whole group of query heads. Pick n_kv_heads from "
                f"{[d for d in range(1, self.n_heads + 1) if self.n_heads % d == 0]}."
            )
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise InterpError(
                    f"DecoderConfig.d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); "
                    f"set d_head explicitly or choose n_heads dividing d_model."
                )
            self.d_head = self.d_model // self.n_heads
        _positive("d_head", self.d_head)
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        _positive("d_mlp", self.d_mlp)
        _choice("positional", self.positional, POSITIONAL)
        _choice("norm", self.norm, NORMS)
        _choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        _choice("act", self.act, ACTIVATIONS)
        _choice("attn_backend", self.attn_backend, BACKENDS)
        _choice("dtype", self.dtype, tuple(DTYPES))
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise InterpError(f"DecoderConfig.rotary_fraction must be in (0, 1]; got {self.rotary_fraction}.")
        if self.positional == "rotary" and self.rotary_dim % 2:
            raise InterpError(
                f"rotary dims per head (d_head * rotary_fraction = {self.rotary_dim}) must be even; "
                f"adjust rotary_fraction ({self.rotary_fraction}) or d_head ({self.d_head})."
            )
        if self.parallel_residual and self.norm_placement != "pre":
            raise InterpError(
                "DecoderConfig.parallel_residual=True needs norm_placement='pre' (GPT-NeoX style); "
                f"got norm_placement={self.norm_placement!r}."
            )
        if self.attn_out_bias is None:
            self.attn_out_bias = self.attn_bias
        if self.norm_eps <= 0:
            raise InterpError(f"DecoderConfig.norm_eps must be > 0; got {self.norm_eps}.")

    # --- derived quantities -------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        return int(self.d_head * self.rotary_fraction) if self.positional == "rotary" else 0

    @property
    def alpha(self) -> float:
        """Residual multiplier: DeepNet's α for deepnorm, 1 otherwise."""
        if self.norm_placement != "deepnorm":
            return 1.0
        return self.deepnorm_alpha if self.deepnorm_alpha is not None else (2.0 * self.n_layers) ** 0.25

    @property
    def beta(self) -> float:
        """DeepNet's β: the gain on value/output/FFN weights at initialisation."""
        if self.norm_placement != "deepnorm":
            return 1.0
        return self.deepnorm_beta if self.deepnorm_beta is not None else (8.0 * self.n_layers) ** -0.25

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.d_head)

    # --- TransformerLens-compatible names (ActivationCache reads these) -------------------------
    @property
    def normalization_type(self) -> str | None:
        if self.norm_placement != "pre":
            return None  # apply_ln on a post-LN stream has no meaning; TL then skips folding
        return "LN" if self.norm == "layernorm" else "RMS"

    @property
    def final_rms(self) -> bool:
        return self.norm == "rmsnorm"

    @property
    def act_fn(self) -> str:
        return {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "silu": "silu"}[self.act]

    @property
    def gated_mlp(self) -> bool:
        return self.gated

    @property
    def n_key_value_heads(self) -> int:
        return self.n_kv_heads

    @property
    def positional_embedding_type(self) -> str:
        return {"learned": "standard", "sinusoidal": "sinusoidal", "rotary": "rotary", "none": "none"}[
            self.positional
        ]

    @property
    def attn_only(self) -> bool:
        return False

    @property
    def eps(self) -> float:
        return self.norm_eps

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def model_name(self) -> str:
        return self.name

    # --- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DecoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InterpError(
                f"config.json has fields DecoderConfig does not know: {unknown}. Known fields: {sorted(known)}."
            )
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise InterpError(f"config.json lacks the required fields {missing}; a complete config has "
                              f"{required} (write one with model.save(folder)).")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:  # a field of the wrong type deep inside __post_init__
            if isinstance(e, InterpError):
                raise
            raise InterpError(f"config.json has a field of the wrong type or value: {e}.") from None

    def save(self, path: str | Path) -> None:
        from interp.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "DecoderConfig":
        from interp.io import read_json

        data = read_json(path)
        try:
            return cls.from_dict(data)
        except InterpError as e:
            raise InterpError(f"{path}: {e}") from None
