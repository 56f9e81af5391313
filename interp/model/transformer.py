"""The HookedDecoder: embed → blocks → final norm → unembed, with TransformerLens hook points.

Read top to bottom like nanoGPT's model.py: norms, MLP, block, embeddings, then the model. Every
intermediate a researcher may want passes through a ``HookPoint`` named exactly as in TransformerLens, so
``run_with_hooks``, ``run_with_cache`` and TransformerLens' ``ActivationCache`` methods work unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from interp.errors import InterpError
from interp.model.attention import Attention, KVCache
from interp.model.config import DecoderConfig
from interp.model.gated_hooks import (
    SETTER,
    GatedHooksMixin,
    attention_input,
    gated_flag,
    mlp_input,
    register_gated_block_hooks,
)
from interp.model.hook_names import CheckedHookNamesMixin, similar_hook_names
from interp.model.mlp import MLP, MoE, gelu_new  # noqa: F401  (gelu_new: kept importable from here)
from interp.model.norm import Norm
from interp.model.processing import InterpActivationCache, process_weights
from interp.model.text import TextMixin, is_text, position_ids
from interp.model.tl_surface import TransformerLensSurfaceMixin


# --- block --------------------------------------------------------------------------------------
class Block(nn.Module):
    """One layer. Norm placement follows the seeds and the families:

    * pre-LN:   x + f(LN(x))                     (GPT-2, Llama; stable, the modern default)
    * post-LN:  LN(x + f(x))                     (the original Transformer)
    * deepnorm: LN(α·x + f(x)), β-scaled init    (DeepNet: post-LN made trainable at depth)
    * sandwich: x + LN_post(f(LN(x)))            (Gemma 2/3: ln1/ln1_post, ln2/ln2_post)
    * sublayer_post: x + LN_post(f(x))           (OLMo 2: only ln1_post/ln2_post)
    * parallel: x + attn(LN1 x) + mlp(LN2 x)     (GPT-NeoX / Pythia; with shared_norm one LN: GPT-J, Phi)

    ``residual_multiplier`` scales each sublayer's output before it joins the residual (Granite); the
    hooks hook_attn_out / hook_mlp_out see the scaled value, so resid_mid = resid_pre + attn_out holds.

    Only hook points the computation passes through are registered (a parallel block has no resid_mid).
    The gated ones (``hook_attn_in``, ``hook_q/k/v_input``, ``hook_mlp_in``) exist while their
    ``cfg.use_*`` flag is on: see :mod:`interp.model.gated_hooks`.
    """

    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        placement = cfg.norm_placement
        if placement != "sublayer_post":
            self.ln1 = Norm(cfg, learned=not cfg.norm_folded)
            if not cfg.shared_norm:
                self.ln2 = Norm(cfg, learned=not cfg.norm_folded)
        if placement in ("sandwich", "sublayer_post"):
            self.ln1_post, self.ln2_post = Norm(cfg), Norm(cfg)
        self.attn = Attention(cfg, layer)
        self.mlp = MoE(cfg) if cfg.is_moe(layer) else MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        if not cfg.parallel_residual:
            self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        register_gated_block_hooks(self)

    def _scaled(self, out, post: str | None):
        """A sublayer's output as it joins the residual: post-normed (sandwich, sublayer_post), then scaled."""
        if post is not None:
            out = getattr(self, post)(out)
        m = self.cfg.residual_multiplier
        return out if m == 1.0 else out * m

    def forward(self, x, positions, kv_cache=None, backend=None, key_mask=None):
        cfg = self.cfg
        x = self.hook_resid_pre(x)
        placement = cfg.norm_placement
        pre_norm = placement in ("pre", "sandwich")
        post1, post2 = ("ln1_post", "ln2_post") if placement in ("sandwich", "sublayer_post") else (None, None)
        # the attention reads ln1(x) (pre, sandwich) or x itself (post, deepnorm, sublayer_post), through the
        # gated per-head inputs when they are on
        h = attention_input(self, x, self.ln1 if pre_norm else None)
        attn_out = self.hook_attn_out(self._scaled(self.attn(h, positions, kv_cache, backend, key_mask), post1))
        if placement in ("post", "deepnorm"):  # normalise after adding the sublayer to the (α-scaled) residual
            alpha = cfg.alpha
            mid = self.hook_resid_mid(self.ln1(alpha * x + attn_out))
            mlp_out = self.hook_mlp_out(self._scaled(self.mlp(mlp_input(self, mid)), None))
            return self.hook_resid_post(self.ln2(alpha * mid + mlp_out))
        if cfg.parallel_residual:
            if cfg.shared_norm:  # one norm feeds both sublayers (GPT-J, Phi, Falcon-7B, Cohere): reuse ln1(x)
                shared = isinstance(h, torch.Tensor) and not cfg.use_hook_mlp_in
                mlp_h = h if shared else self.ln1(mlp_input(self, x))
            else:
                mlp_h = self.ln2(mlp_input(self, x))
            mlp_out = self.hook_mlp_out(self._scaled(self.mlp(mlp_h), None))
            return self.hook_resid_post(x + attn_out + mlp_out)
        mid = self.hook_resid_mid(x + attn_out)
        m_in = mlp_input(self, mid)
        mlp_out = self.hook_mlp_out(self._scaled(self.mlp(self.ln2(m_in) if pre_norm else m_in), post2))
        return self.hook_resid_post(mid + mlp_out)


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
        if cfg.positional == "learned":  # OPT's table has pos_offset extra rows in front
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx + cfg.pos_offset, cfg.d_model))
        else:  # sinusoidal: a fixed table, saved with the weights so a checkpoint is self-contained
            self.register_buffer("W_pos", sinusoidal_table(cfg.n_ctx, cfg.d_model), persistent=False)

        self.offset = cfg.pos_offset

    def forward(self, positions):
        return self.W_pos[positions + self.offset]


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


# --- the model ----------------------------------------------------------------------------------
class HookedDecoder(TextMixin, TransformerLensSurfaceMixin, GatedHooksMixin, CheckedHookNamesMixin,
                    HookedRootModule):
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
        if cfg.embed_norm:
            self.embed_ln = Norm(cfg)  # Bloom's word_embeddings_layernorm (TransformerLens: embed_ln)
        self.blocks = nn.ModuleList([Block(cfg, layer) for layer in range(cfg.n_layers)])
        if cfg.final_norm:
            self.ln_final = Norm(cfg, learned=not cfg.norm_folded)
        self.unembed = Unembed(cfg, self.embed)
        self.hook_unembed = HookPoint()  # the logits (TransformerLens 4's name for the unembed output)
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
            for name, W in block.attn.named_parameters(recurse=False):  # W_Q, W_K (+ latent attention's) and
                if name.startswith("W_"):  # W_V, W_O, these two scaled by DeepNorm's beta
                    nn.init.normal_(W, std=std * (beta if name in ("W_V", "W_O") else 1.0))
            mlps = [block.mlp]
            if isinstance(block.mlp, MoE):
                nn.init.normal_(block.mlp.W_router, std=std)
                mlps = list(block.mlp.experts) + ([block.mlp.shared_expert] if block.mlp.shared_expert else [])
                if block.mlp.shared_expert is not None and block.mlp.W_shared_gate is not None:
                    nn.init.normal_(block.mlp.W_shared_gate, std=std)
            for mlp in mlps:
                for W in (mlp.W_in, mlp.W_out) + ((mlp.W_gate,) if mlp.W_gate is not None else ()):
                    nn.init.normal_(W, std=std * beta)

    # --- input checks -------------------------------------------------------------------------
    def _as_tokens(self, tokens) -> torch.Tensor:
        if is_text(tokens) or isinstance(tokens, str):
            tokens = self.to_tokens(tokens)
        elif isinstance(tokens, (list, tuple)):
            tokens = torch.tensor([list(tokens)])
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
        return tokens.long().to(self.device)

    def _check_length(self, n_positions: int) -> None:
        if n_positions > self.cfg.n_ctx:
            raise InterpError(
                f"sequence of {n_positions} positions is longer than the model's context n_ctx={self.cfg.n_ctx}; "
                f"truncate the prompt (e.g. tokens[:, -{self.cfg.n_ctx}:]) or use a model with a longer context."
            )

    # --- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        attn_backend: str | None = None,
        kv_cache: KVCache | None = None,
    ):
        """Run the model on tokens [batch, pos] (or text). ``return_type``: "logits" | "loss" | "both" | None.

        The keywords are HookedTransformer's: the loss is the mean next-token cross-entropy (teacher forcing:
        position t predicts token t+1), per position with ``loss_per_token`` ([batch, pos - 1]). Text is
        tokenized with ``prepend_bos`` / ``padding_side`` (see :mod:`interp.model.text`); a left-padded batch
        of texts gets its padding mask, and ``attention_mask`` [batch, past + pos] (1 = real token) can be
        given for token input. Masked positions are left out of the loss. ``labels`` [batch, pos] are explicit
        targets for the loss (default: the tokens; -100 = ignore), as in TransformerBridge. ``stop_at_layer=k``
        returns the residual stream entering block k (negative k counts from the end); ``start_at_layer=k`` takes
        that residual [batch, pos, d_model] as ``input`` and runs blocks k.. (a loss then needs ``labels``).
        ``attn_backend`` overrides ``cfg.attn_backend`` for this call; ``kv_cache`` continues a cached prefix.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise InterpError(f"return_type must be 'logits', 'loss', 'both' or None; got {return_type!r}.")
        start, stop = self._layer_range(start_at_layer, stop_at_layer)
        if start_at_layer is not None:
            tokens = None
            x = self._as_residual(input)
        elif is_text(input):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
            if attention_mask is None and tokens.shape[0] > 1 and self._padding_side(padding_side) == "left":
                attention_mask = self.padding_mask(tokens, prepend_bos, "left")
        else:
            tokens = self._as_tokens(input)
        shape = tuple((x if tokens is None else tokens).shape[:2])
        device = self.device
        past = 0 if kv_cache is None else kv_cache.length
        self._check_length(past + shape[1])
        attention_mask = self._check_mask(attention_mask, shape, past)
        positions = self._positions(shape, past, attention_mask)
        key_mask = None if attention_mask is None else attention_mask.bool()  # pads are hidden from every query
        cfg = self.cfg
        if tokens is not None:
            x = self.get_residual(self._embed_tokens(tokens), past, attention_mask=attention_mask,
                                  return_shortformer_pos_embed=False)
        for block in self.blocks[start:stop]:
            x = block(x, positions, kv_cache, attn_backend, key_mask)
        if stop_at_layer is not None:
            return x
        if cfg.final_norm:
            x = self.ln_final(x)
        # hook_unembed: the unembedding's output, before a family's logit scale or soft-cap (as the bridge's, which
        # hooks the lm_head module; the same as the logits for every family without them)
        logits = self.hook_unembed(self.unembed(x))
        if cfg.logit_scale != 1.0:  # Cohere's logit_scale, Granite's 1 / logits_scaling
            logits = logits * cfg.logit_scale
        if cfg.final_softcap is not None:  # Gemma 2: c * tanh(logits / c)
            logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        mask = None if attention_mask is None else attention_mask[:, past:]
        if labels is None and tokens is None:
            raise InterpError("a loss from start_at_layer needs labels=<token ids [batch, pos]> (there are no tokens).")
        if labels is not None and (not isinstance(labels, torch.Tensor) or tuple(labels.shape) != shape):
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise InterpError(f"labels must be a LongTensor shaped like the tokens {list(shape)}; got {got}.")
        targets = tokens if labels is None else labels.to(device).long()
        loss = self.loss(logits, targets, per_token=loss_per_token, attention_mask=mask)
        return loss if return_type == "loss" else (logits, loss)

    # --- the first residual stream (TransformerLens' input_to_embed / get_residual) -----------------
    def _positions(self, shape, past: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Positions of ``shape = (batch, pos)`` new tokens after ``past`` cached ones: [pos], or [batch, pos]
        with padding, where each row counts from its first real token."""
        if attention_mask is None:
            return torch.arange(past, past + shape[1], device=self.device)
        return position_ids(attention_mask, shape[1])

    def _embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The token embedding as it joins the residual stream (through ``hook_embed``)."""
        cfg = self.cfg
        x = self.embed(tokens)
        if cfg.embed_multiplier != 1.0:  # Gemma's sqrt(d_model), Granite's multiplier (in the model dtype)
            x = x * torch.tensor(cfg.embed_multiplier, dtype=x.dtype)
        if cfg.embed_norm:  # Bloom; normalises the token embedding, as TransformerLens' Embed (post_embedding_ln)
            x = self.embed_ln(x)
        return self.hook_embed(x)  # what joins the residual stream, so decompose_resid adds up

    def get_residual(self, embed: torch.Tensor, pos_offset: int = 0, prepend_bos: bool | None = None,
                     attention_mask: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                     return_shortformer_pos_embed: bool = True, device=None):
        """``embed`` [batch, pos, d_model] plus the positional embedding (learned / sinusoidal tables; rotary
        and no-position models add nothing), TransformerLens' signature. ``pos_offset``: tokens already cached;
        ``attention_mask`` [batch, pos_offset + pos] counts each row's positions from its first real token.
        With ``return_shortformer_pos_embed`` returns ``(residual, None)`` as TL does (no shortformer here)."""
        residual = embed
        if self.cfg.positional in ("learned", "sinusoidal"):
            pos = self.pos_embed(self._positions(embed.shape[:2], pos_offset, attention_mask))
            # [batch, pos, d_model] like TransformerLens, so ActivationCache.decompose_resid can stack it
            residual = embed + self.hook_pos_embed(pos if pos.ndim == 3 else pos[None].repeat(embed.shape[0], 1, 1))
        return (residual, None) if return_shortformer_pos_embed else residual

    def input_to_embed(self, input, prepend_bos: bool | None = None, padding_side: str | None = None,
                       attention_mask: torch.Tensor | None = None, past_kv_cache: KVCache | None = None):
        """Text or tokens → ``(residual, tokens, shortformer_pos_embed=None, attention_mask)``, the stream
        entering block 0, as TransformerLens' ``input_to_embed``; feed it to ``forward(residual,
        start_at_layer=0)``. A left-padded batch of texts gets its padding mask, as in ``forward``."""
        tokens = self._as_tokens(input) if not is_text(input) else \
            self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        if attention_mask is None and tokens.shape[0] > 1 and is_text(input) and self._padding_side(padding_side) == "left":
            attention_mask = self.padding_mask(tokens, prepend_bos, "left")
        past = 0 if past_kv_cache is None else past_kv_cache.length
        self._check_length(past + tokens.shape[1])
        attention_mask = self._check_mask(attention_mask, tokens, past)
        residual = self.get_residual(self._embed_tokens(tokens), past, attention_mask=attention_mask,
                                     return_shortformer_pos_embed=False)
        return residual, tokens, None, attention_mask

    def _layer_range(self, start_at_layer, stop_at_layer) -> tuple[int, int]:
        """Blocks [start, stop) to run; negative layers count from the end, as in TransformerLens."""
        n = self.cfg.n_layers
        bounds = []
        for name, value, default in (("start_at_layer", start_at_layer, 0), ("stop_at_layer", stop_at_layer, n)):
            if value is None:
                bounds.append(default)
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not -n <= value <= n:
                raise InterpError(f"{name} must be an int in [{-n}, {n}] (n_layers={n}); got {value!r}.")
            bounds.append(value % n if value < 0 else value)
        return bounds[0], bounds[1]

    def _as_residual(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 3 or x.shape[-1] != self.cfg.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InterpError(f"with start_at_layer, input must be the residual stream [batch, pos, "
                              f"d_model={self.cfg.d_model}] (floating point); got {got}.")
        return x.to(self.device, self.W_E.dtype)

    def _check_mask(self, attention_mask, tokens, past: int) -> torch.Tensor | None:
        """A 0/1 mask [batch, past + pos] on the model's device, or None when every token is real.
        ``tokens``: the token tensor, or just its (batch, pos) shape."""
        if attention_mask is None:
            return None
        shape = tokens.shape if isinstance(tokens, torch.Tensor) else tokens
        expected = (shape[0], past + shape[1])
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != expected:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise InterpError(f"attention_mask must be a 0/1 tensor of shape [batch, past + pos] = {list(expected)}; "
                              f"got {got}.")
        mask = attention_mask.to(self.device)
        if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise InterpError("attention_mask must hold only 0 (padding) and 1 (real token).")
        return None if bool(mask.all()) else mask.long()

    @staticmethod
    def loss(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token cross-entropy of logits [b, p, V] against tokens [b, p], in fp32 (TransformerLens' formula).

        A prediction from or of a masked (padding) position, or of a target -100, counts 0 and is left out of
        the mean; ``per_token`` gives [b, p - 1].
        """
        if tokens.shape[1] < 2:
            raise InterpError("a loss needs at least 2 tokens per sequence (each position predicts the next).")
        targets = tokens[:, 1:]
        valid = targets != -100
        if attention_mask is not None:
            valid = valid & attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1).masked_fill(~valid, 0.0)
        return nll if per_token else nll.sum() / valid.sum()

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
        if self._padded_call(model_args, kwargs):
            lazy_patterns = False  # the lazy rebuild knows the causal mask only, not padding
        if return_cache_object and lazy_patterns:
            from interp.model.lazy_pattern import run_with_lazy_cache

            return run_with_lazy_cache(self, *model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not return_cache_object:
            return out, cache_dict
        return out, InterpActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    def process_weights(self, fold_ln: bool = True, center_writing_weights: bool = True, center_unembed: bool = True,
                        fold_value_biases: bool = True, refactor_factored_attn_matrices: bool = False):
        """TransformerLens' weight processing in place (see interp.model.processing); TL's defaults.

        Log-probabilities stay the same; afterwards TL's ``decompose_resid(apply_ln=True)`` / ``logit_attrs``
        add up to the logits. Returns the model.
        """
        return process_weights(self, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                               center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                               refactor_factored_attn_matrices=refactor_factored_attn_matrices)

    def _padded_call(self, args, kwargs) -> bool:
        """Will this forward call run with a padding mask?"""
        if kwargs.get("attention_mask") is not None:
            return True
        text = args[0] if args else kwargs.get("input")
        side = args[4] if len(args) > 4 else kwargs.get("padding_side")
        return isinstance(text, (list, tuple)) and len(text) > 1 and is_text(text) and self._padding_side(side) == "left"

    # --- hooks: unknown names get a clear error ----------------------------------------------
    def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False):
        pass

    def check_hook_name(self, name) -> None:
        """Raise a clear error for a hook name this model does not have (TransformerLens would KeyError)."""
        if isinstance(name, str) and name not in self.hook_dict:
            flag = gated_flag(name)
            if flag is not None and not getattr(self.cfg, flag):
                raise InterpError(f"hook {name!r} is off: call model.{SETTER[flag]}(True) first (as in TransformerLens).")
            raise InterpError(
                f"unknown hook name {name!r}. Names follow TransformerLens, e.g. 'blocks.0.attn.hook_pattern'; "
                f"similar names here: {similar_hook_names(self.hook_dict, name)}. See model.hook_dict for all."
            )

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

    def _stack_unless(self, get, why_not: str | None):
        """Stacked weights, or one line saying why this model has none of that kind."""
        if why_not:
            raise InterpError(why_not)
        return self._stack(get)

    def _dense_attn(self, get):
        return self._stack_unless(get, self.cfg.kv_lora_rank is not None and (
            "this model uses multi-head latent attention (DeepSeek V3): keys and values come from a normed latent, "
            "so there is no per-head W_K/W_V (nor W_Q with q_lora_rank). Read blocks[l].attn.W_KV_a, W_K_b, W_V_b "
            "(and W_Q_a, W_Q_b), or the cached hook_q/hook_k/hook_v."))

    def _dense_mlp(self, get):
        return self._stack_unless(get, self.cfg.has_moe and (
            "this model's MLPs are mixtures of experts: there is no stacked W_in/W_gate/W_out/b_in/b_out. "
            "Read one expert's weights as model.blocks[l].mlp.experts[e].W_in (and .W_gate, .W_out)."))

    W_Q = property(lambda self: self._dense_attn(lambda b: b.attn.W_Q))
    W_K = property(lambda self: self._dense_attn(lambda b: b.attn.W_K))
    W_V = property(lambda self: self._dense_attn(lambda b: b.attn.W_V))
    W_O = property(lambda self: self._stack(lambda b: b.attn.W_O))
    b_Q = property(lambda self: self._stack(lambda b: b.attn.b_Q))
    b_K = property(lambda self: self._stack(lambda b: b.attn.b_K))
    b_V = property(lambda self: self._stack(lambda b: b.attn.b_V))
    b_O = property(lambda self: self._stack(lambda b: b.attn.b_O))
    W_in = property(lambda self: self._dense_mlp(lambda b: b.mlp.W_in))
    W_gate = property(lambda self: self._dense_mlp(lambda b: b.mlp.W_gate))
    W_out = property(lambda self: self._dense_mlp(lambda b: b.mlp.W_out))
    b_in = property(lambda self: self._dense_mlp(lambda b: b.mlp.b_in))
    b_out = property(lambda self: self._dense_mlp(lambda b: b.mlp.b_out))

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device, or its execution device when placed by a device map."""
        placed = getattr(self, "input_device", None)  # set by interp.loading.placement.dispatch
        return placed if placed is not None else self.embed.W_E.device

    # --- what TransformerLens' ActivationCache asks of a model ---------------------------------
    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        """The unembedding direction(s) [d_model] or [n, d_model] of token id(s) or a token string."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        tokens = torch.as_tensor(tokens, device=self.device)
        return self.W_U[:, tokens].movedim(0, -1)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """Sum of the attention-output and MLP-output biases written before ``layer`` (TransformerLens)."""
        total = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.W_E.dtype)
        for i in range(layer):
            block = self.blocks[i]
            if block.attn.b_O is not None:
                total = total + block.attn.b_O
            if include_mlp_biases and getattr(block.mlp, "b_out", None) is not None:
                total = total + block.mlp.b_out
        if mlp_input and layer < self.cfg.n_layers and self.blocks[layer].attn.b_O is not None:
            total = total + self.blocks[layer].attn.b_O
        return total * self.cfg.residual_multiplier  # what the sublayers add is their output times it

    # --- saving --------------------------------------------------------------------------------
    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        from interp.loading.checkpoint import save_checkpoint

        return save_checkpoint(self, folder, overwrite=overwrite)
