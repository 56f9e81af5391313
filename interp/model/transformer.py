"""The HookedDecoder: embed → blocks → final norm → unembed, with TransformerLens hook points.

Read top to bottom like nanoGPT's model.py: norms, MLP, block, embeddings, then the model. Every
intermediate a researcher may want passes through a ``HookPoint`` named exactly as in TransformerLens, so
``run_with_hooks``, ``run_with_cache`` and TransformerLens' ``ActivationCache`` methods work unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.HookedRootModule import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.errors import InterpError
from interp.model.attention import Attention, KVCache
from interp.model.config import DecoderConfig


# --- norms --------------------------------------------------------------------------------------
class Norm(nn.Module):
    """LayerNorm or RMSNorm with TransformerLens' hooks.

    ``hook_scale`` is the divisor sqrt(mean(x²) + eps) (after centering for LayerNorm) and
    ``hook_normalized`` the unit-scale vector before the learned gain ``w`` and bias ``b``; caching the
    scale is what lets ``ActivationCache.apply_ln_to_stack`` treat the norm as linear per position.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.rms = cfg.norm == "rmsnorm"
        self.eps = cfg.norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = None if self.rms else nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32, as HF does
        if not (self.hook_scale.has_hooks() or self.hook_normalized.has_hooks()):
            # nothing observes the intermediates: one fused call (what HF itself runs for LayerNorm)
            if self.rms:
                return F.rms_norm(x, x.shape[-1:], self.w.to(x.dtype), self.eps).to(dtype)
            return F.layer_norm(x, x.shape[-1:], self.w.to(x.dtype), self.b.to(x.dtype), self.eps).to(dtype)
        if not self.rms:
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        x = x * self.w if self.b is None else x * self.w + self.b
        return x.to(dtype)


# --- MLP ----------------------------------------------------------------------------------------
def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


ACTIVATION_FNS = {"gelu": F.gelu, "gelu_new": gelu_new, "relu": F.relu, "silu": F.silu}


class MLP(nn.Module):
    """Key/value memory: W_in's columns ask questions of the residual stream, W_out's rows write answers.

    Gated (SwiGLU) variant: the neuron's activation is act(x·W_gate) · (x·W_in), recorded at hook_post.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d, m = cfg.d_model, cfg.d_mlp
        self.gated = cfg.gated
        self.act = ACTIVATION_FNS[cfg.act]
        self.W_in = nn.Parameter(torch.empty(d, m))
        self.b_in = nn.Parameter(torch.zeros(m)) if cfg.mlp_bias else None
        if cfg.gated:
            self.W_gate = nn.Parameter(torch.empty(d, m))
            self.b_gate = nn.Parameter(torch.zeros(m)) if cfg.mlp_bias else None
            self.hook_pre_linear = HookPoint()
        else:
            self.W_gate = None
        self.W_out = nn.Parameter(torch.empty(m, d))
        self.b_out = nn.Parameter(torch.zeros(d)) if cfg.mlp_bias else None
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    @staticmethod
    def _linear(x, W, b):
        return x @ W if b is None else x @ W + b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            pre = self.hook_pre(self._linear(x, self.W_gate, self.b_gate))
            pre_linear = self.hook_pre_linear(self._linear(x, self.W_in, self.b_in))
            post = self.hook_post(self.act(pre) * pre_linear)
        else:
            pre = self.hook_pre(self._linear(x, self.W_in, self.b_in))
            post = self.hook_post(self.act(pre))
        return self._linear(post, self.W_out, self.b_out)


# --- block --------------------------------------------------------------------------------------
class Block(nn.Module):
    """One layer. Norm placement follows the seeds:

    * pre-LN:   x + f(LN(x))                     (GPT-2, Llama; stable, the modern default)
    * post-LN:  LN(x + f(x))                     (the original Transformer)
    * deepnorm: LN(α·x + f(x)), β-scaled init    (DeepNet: post-LN made trainable at depth)
    * parallel: x + attn(LN1 x) + mlp(LN2 x)     (GPT-NeoX / Pythia)
    """

    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.ln1, self.ln2 = Norm(cfg), Norm(cfg)
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x, positions, kv_cache=None, backend=None):
        cfg = self.cfg
        x = self.hook_resid_pre(x)
        if cfg.norm_placement == "pre":
            attn_out = self.hook_attn_out(self.attn(self.ln1(x), positions, kv_cache, backend))
            if cfg.parallel_residual:
                mlp_out = self.hook_mlp_out(self.mlp(self.ln2(x)))
                return self.hook_resid_post(x + attn_out + mlp_out)
            mid = self.hook_resid_mid(x + attn_out)
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mid)))
            return self.hook_resid_post(mid + mlp_out)
        # post-LN and DeepNorm: normalise after adding the sublayer to the (α-scaled) residual
        alpha = cfg.alpha
        attn_out = self.hook_attn_out(self.attn(x, positions, kv_cache, backend))
        mid = self.hook_resid_mid(self.ln1(alpha * x + attn_out))
        mlp_out = self.hook_mlp_out(self.mlp(mid))
        return self.hook_resid_post(self.ln2(alpha * mid + mlp_out))


def sinusoidal_table(n_ctx: int, d_model: int) -> torch.Tensor:
    """Vaswani et al.'s fixed table: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    position = torch.arange(n_ctx, dtype=torch.float64)[:, None]
    div = torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_ctx, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position / div)
    table[:, 1::2] = torch.cos(position / div)[:, : d_model // 2]
    return table  # float64; the model casts it to its dtype (a float32 round trip would cap float64 models)


class Embed(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens):
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.positional == "learned":
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        else:  # sinusoidal: a fixed table, saved with the weights so a checkpoint is self-contained
            self.register_buffer("W_pos", sinusoidal_table(cfg.n_ctx, cfg.d_model), persistent=False)

    def forward(self, positions):
        return self.W_pos[positions]


class Unembed(nn.Module):
    def __init__(self, cfg: DecoderConfig, embed: Embed):
        super().__init__()
        self._embed = [embed]  # a list keeps the tied embedding out of this module's parameters
        self.W_U_param = None if cfg.tie_embeddings else nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))

    @property
    def W_U(self) -> torch.Tensor:
        return self._embed[0].W_E.T if self.W_U_param is None else self.W_U_param

    def forward(self, x):
        return (x @ self.W_U).add_(self.b_U)  # in-place bias: one logits-sized tensor, not two


def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` from a `tokenizers.Tokenizer` or a `transformers` tokenizer (no special tokens added)."""
    if hasattr(tokenizer, "convert_tokens_to_ids"):  # transformers
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text).ids)


# --- the model ----------------------------------------------------------------------------------
class HookedDecoder(HookedRootModule):
    """A configurable decoder-only transformer whose every intermediate is hookable.

    >>> cfg = DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4)
    >>> model = HookedDecoder(cfg)
    >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
    >>> logits.shape, cache["blocks.0.attn.hook_pattern"].shape
    (torch.Size([1, 3, 50]), torch.Size([1, 4, 3, 3]))
    """

    def __init__(self, cfg: DecoderConfig, tokenizer: Any = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        if cfg.positional in ("learned", "sinusoidal"):
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([Block(cfg, layer) for layer in range(cfg.n_layers)])
        if cfg.final_norm:
            self.ln_final = Norm(cfg)
        self.unembed = Unembed(cfg, self.embed)
        self.init_weights()
        self.to(cfg.torch_dtype)
        self.setup()

    # --- initialisation ----------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 style normal(0, init_std); DeepNorm scales value/output/MLP weights by β (DeepNet)."""
        std, beta = self.cfg.init_std, self.cfg.beta
        nn.init.normal_(self.embed.W_E, std=std)
        if self.cfg.positional == "learned":
            nn.init.normal_(self.pos_embed.W_pos, std=std)
        if self.unembed.W_U_param is not None:
            nn.init.normal_(self.unembed.W_U_param, std=std)
        for block in self.blocks:
            nn.init.normal_(block.attn.W_Q, std=std)
            nn.init.normal_(block.attn.W_K, std=std)
            for W in (block.attn.W_V, block.attn.W_O, block.mlp.W_in, block.mlp.W_out):
                nn.init.normal_(W, std=std * beta)
            if block.mlp.W_gate is not None:
                nn.init.normal_(block.mlp.W_gate, std=std * beta)

    # --- input checks -------------------------------------------------------------------------
    def _as_tokens(self, tokens) -> torch.Tensor:
        if isinstance(tokens, (str, list)) and not (isinstance(tokens, list) and tokens and isinstance(tokens[0], int)):
            tokens = self.to_tokens(tokens)
        elif isinstance(tokens, list):
            tokens = torch.tensor([tokens])
        if not isinstance(tokens, torch.Tensor):
            raise InterpError(
                f"tokens must be a LongTensor [batch, pos], a list of ids, or text; got {type(tokens).__name__}."
            )
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise InterpError(f"tokens must hold integer token ids; got dtype {tokens.dtype}.")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise InterpError(f"tokens must have shape [batch, pos]; got shape {tuple(tokens.shape)}.")
        if tokens.shape[1] == 0 or tokens.shape[0] == 0:
            raise InterpError("tokens is empty: give at least one token (an empty prompt has nothing to predict from).")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            bad = lo if lo < 0 else hi
            raise InterpError(f"token id {bad} is out of range: ids must be in [0, {self.cfg.d_vocab - 1}] (d_vocab={self.cfg.d_vocab}).")
        return tokens.long().to(self.W_E.device)

    def _check_length(self, n_positions: int) -> None:
        if n_positions > self.cfg.n_ctx:
            raise InterpError(
                f"sequence of {n_positions} positions is longer than the model's context n_ctx={self.cfg.n_ctx}; "
                f"truncate the prompt (e.g. tokens[:, -{self.cfg.n_ctx}:]) or use a model with a longer context."
            )

    # --- forward ------------------------------------------------------------------------------
    def forward(
        self,
        tokens,
        return_type: str | None = "logits",
        attn_backend: str | None = None,
        kv_cache: KVCache | None = None,
    ):
        """Run the model. ``return_type``: "logits" | "loss" | "both" | None.

        The loss is the mean next-token cross-entropy (teacher forcing: position t predicts token t+1).
        ``attn_backend`` overrides ``cfg.attn_backend`` for this call.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise InterpError(f"return_type must be 'logits', 'loss', 'both' or None; got {return_type!r}.")
        tokens = self._as_tokens(tokens)
        past = 0 if kv_cache is None else kv_cache.length
        self._check_length(past + tokens.shape[1])
        positions = torch.arange(past, past + tokens.shape[1], device=tokens.device)
        x = self.hook_embed(self.embed(tokens))
        if self.cfg.positional in ("learned", "sinusoidal"):
            # [batch, pos, d_model] like TransformerLens, so ActivationCache.decompose_resid can stack it
            x = x + self.hook_pos_embed(self.pos_embed(positions)[None].repeat(tokens.shape[0], 1, 1))
        for block in self.blocks:
            x = block(x, positions, kv_cache, attn_backend)
        if self.cfg.final_norm:
            x = self.ln_final(x)
        logits = self.unembed(x)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss(logits, tokens)
        return loss if return_type == "loss" else (logits, loss)

    @staticmethod
    def loss(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy of logits [b, p, V] against tokens [b, p]."""
        if tokens.shape[1] < 2:
            raise InterpError("a loss needs at least 2 tokens per sequence (each position predicts the next).")
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)
        return nll if per_token else nll.mean()

    # --- caching -------------------------------------------------------------------------------
    def run_with_cache(self, *model_args, return_cache_object: bool = True, remove_batch_dim: bool = False,
                       lazy_patterns: bool = True, **kwargs):
        """TransformerLens' run_with_cache, returning an ``ActivationCache`` bound to this model.

        With ``lazy_patterns`` (the default) attention stays fused: the cache keeps each layer's rotated q, k
        and log-sum-exp and builds ``hook_pattern`` / ``hook_attn_scores`` exactly when first read, so caching
        a long context costs O(layers·n·d) instead of O(layers·heads·n²). ``lazy_patterns=False`` records
        patterns eagerly during the forward pass, as TransformerLens does.
        """
        names = kwargs.get("names_filter")
        for name in [names] if isinstance(names, str) else (names if isinstance(names, (list, tuple)) else []):
            self.check_hook_name(name)  # a typo would otherwise give a silently empty cache
        if return_cache_object and lazy_patterns:
            from interp.model.lazy_pattern import run_with_lazy_cache

            return run_with_lazy_cache(self, *model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not return_cache_object:
            return out, cache_dict
        return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    # --- hooks: unknown names get a clear error ----------------------------------------------
    def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False):
        pass

    def check_hook_name(self, name) -> None:
        """Raise a clear error for a hook name this model does not have (TransformerLens would KeyError)."""
        if isinstance(name, str) and name not in self.hook_dict:
            close = [n for n in self.hook_dict if n.split(".")[-1] == name.split(".")[-1]][:4]
            raise InterpError(
                f"unknown hook name {name!r}. Names follow TransformerLens, e.g. 'blocks.0.attn.hook_pattern'; "
                f"similar names here: {close or sorted(self.hook_dict)[:6]}. See model.hook_dict for all."
            )

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        self.check_hook_name(name)
        return super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def _enable_hook_with_name(self, name, hook, dir):
        # run_with_hooks / hooks() reach hook points through here, bypassing add_hook
        self.check_hook_name(name)
        return super()._enable_hook_with_name(name, hook, dir)

    # --- weights with TransformerLens names ------------------------------------------------------
    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E

    @property
    def W_pos(self) -> torch.Tensor:
        if self.cfg.positional not in ("learned", "sinusoidal"):
            raise InterpError(f"this model has positional={self.cfg.positional!r}: there is no W_pos table.")
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> torch.Tensor:
        return self.unembed.W_U

    @property
    def b_U(self) -> torch.Tensor:
        return self.unembed.b_U

    def _stack(self, get) -> torch.Tensor | None:
        parts = [get(block) for block in self.blocks]
        return None if parts[0] is None else torch.stack(parts)

    W_Q = property(lambda self: self._stack(lambda b: b.attn.W_Q))
    W_K = property(lambda self: self._stack(lambda b: b.attn.W_K))
    W_V = property(lambda self: self._stack(lambda b: b.attn.W_V))
    W_O = property(lambda self: self._stack(lambda b: b.attn.W_O))
    b_Q = property(lambda self: self._stack(lambda b: b.attn.b_Q))
    b_K = property(lambda self: self._stack(lambda b: b.attn.b_K))
    b_V = property(lambda self: self._stack(lambda b: b.attn.b_V))
    b_O = property(lambda self: self._stack(lambda b: b.attn.b_O))
    W_in = property(lambda self: self._stack(lambda b: b.mlp.W_in))
    W_gate = property(lambda self: self._stack(lambda b: b.mlp.W_gate))
    W_out = property(lambda self: self._stack(lambda b: b.mlp.W_out))
    b_in = property(lambda self: self._stack(lambda b: b.mlp.b_in))
    b_out = property(lambda self: self._stack(lambda b: b.mlp.b_out))

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    # --- what TransformerLens' ActivationCache asks of a model ---------------------------------
    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        """The unembedding direction(s) [d_model] or [n, d_model] of token id(s) or a token string."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        tokens = torch.as_tensor(tokens, device=self.device)
        return self.W_U[:, tokens].movedim(0, -1)

    def to_single_token(self, text: str) -> int:
        ids = self.to_tokens(text, prepend_bos=False)[0]
        if len(ids) != 1:
            raise InterpError(f"{text!r} is {len(ids)} tokens, not one: {self.to_str_tokens(ids)}.")
        return int(ids[0])

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """Sum of the attention-output and MLP-output biases written before ``layer`` (TransformerLens)."""
        total = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.W_E.dtype)
        for i in range(layer):
            block = self.blocks[i]
            if block.attn.b_O is not None:
                total = total + block.attn.b_O
            if include_mlp_biases and block.mlp.b_out is not None:
                total = total + block.mlp.b_out
        if mlp_input and layer < self.cfg.n_layers and self.blocks[layer].attn.b_O is not None:
            total = total + self.blocks[layer].attn.b_O
        return total

    # --- text in, text out -----------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            where = (self.cfg.source or {}).get("path")
            raise InterpError(
                f"text given, but this model{f' ({where})' if where else ''} has no tokenizer (no tokenizer.json), so "
                "it takes token ids only: pass a LongTensor [batch, pos], or put the tokenizer.json it was trained "
                "with beside its weights."
            )
        return self.tokenizer

    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None) -> torch.Tensor:
        """Text → LongTensor [batch, pos]. Lists are right-padded with the EOS id (pad never precedes text,
        so causal attention from real tokens never sees it)."""
        tok = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InterpError(f"text must be a string or a non-empty list of strings; got {text!r:.80}.")
        if prepend_bos is None:
            prepend_bos = self.cfg.bos_token_id is not None
        rows = []
        for t in texts:
            ids = encode_text(tok, t)
            if prepend_bos:
                ids = [self.cfg.bos_token_id] + list(ids)
            if not ids:
                raise InterpError("the prompt is empty: it encodes to zero tokens. Give some text.")
            rows.append(list(ids))
        width = max(len(r) for r in rows)
        pad = self.cfg.eos_token_id if self.cfg.eos_token_id is not None else 0
        out = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out.to(self.device)

    def to_string(self, tokens) -> str | list[str]:
        tok = self._need_tokenizer()
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        if tokens and isinstance(tokens[0], list):
            return [tok.decode(row) for row in tokens]
        return tok.decode(tokens)

    def to_str_tokens(self, tokens) -> list[str]:
        """Each token as the text it decodes to (text is tokenized first)."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens)[0]
        if isinstance(tokens, torch.Tensor):
            if tokens.ndim == 2:
                if tokens.shape[0] != 1:
                    raise InterpError(f"to_str_tokens takes one sequence; got a batch of {tokens.shape[0]}.")
                tokens = tokens[0]
            tokens = tokens.tolist()
        if self.tokenizer is None:
            return [f"<{t}>" for t in tokens]
        return [self.tokenizer.decode([t]) for t in tokens]

    # --- saving --------------------------------------------------------------------------------
    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        from interp.loading.checkpoint import save_checkpoint

        return save_checkpoint(self, folder, overwrite=overwrite)
