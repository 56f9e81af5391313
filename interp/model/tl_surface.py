"""The rest of TransformerLens' ``HookedTransformer`` surface: circuits, labels, tokenizer, state dicts, streaming.

A mixin of :class:`interp.model.transformer.HookedDecoder`, so a TransformerLens tutorial finds the names it calls
(``model.OV``, ``model.all_composition_scores("Q")``, ``model.load_state_dict(tl_model.state_dict())``, ...)
with TL's signatures and meaning. The arithmetic lives elsewhere: weight processing in
:mod:`interp.model.processing`, sampling in :mod:`interp.generate`; what is here adapts names and shapes.

Only ``transformer_lens``' ``FactoredMatrix`` and ``utilities.composition_scores`` are used, which TL 3.x and
4.x both ship.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from interp.errors import InterpError

# TransformerLens state-dict names that differ from ours: TL's grouped-query attention stores the shared key/value
# heads as _W_K/_W_V (ours are W_K/W_V, already [n_kv_heads, ...]); the unembedding is W_U (ours W_U_param, since a
# tied model reads W_E.T instead).
_TL_RENAMES = {"attn._W_K": "attn.W_K", "attn._W_V": "attn.W_V", "attn._b_K": "attn.b_K", "attn._b_V": "attn.b_V",
               "unembed.W_U": "unembed.W_U_param"}
# TL buffers that are not weights (its causal mask, the -inf fill, rotary tables): rebuilt here, never loaded
_TL_BUFFERS = ("attn.mask", "attn.IGNORE", "attn.rotary_sin", "attn.rotary_cos")
COMPOSITION_MODES = ("Q", "K", "V")


class TransformerLensSurfaceMixin:
    """HookedTransformer's remaining public methods; see each for the TL behaviour it reproduces."""

    # --- circuits ------------------------------------------------------------------------------------------
    def _per_query_head(self, get) -> torch.Tensor:
        """A stacked key/value weight [n_layers, n_heads, ...]: grouped kv heads repeated for the heads that read
        them, as TL's GroupedQueryAttention exposes W_K / W_V."""
        return torch.stack([get(b.attn).repeat_interleave(b.attn.group, dim=0) for b in self.blocks])

    @property
    def QK(self):
        """W_Q·W_Kᵀ of every head as a ``FactoredMatrix`` [n_layers, n_heads, d_model, d_model] (TL's ``model.QK``)."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_Q, self._per_query_head(lambda a: a.W_K).transpose(-2, -1))

    @property
    def OV(self):
        """W_V·W_O of every head as a ``FactoredMatrix`` [n_layers, n_heads, d_model, d_model] (TL's ``model.OV``)."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self._per_query_head(lambda a: a.W_V), self.W_O)

    @property
    def W_E_pos(self) -> torch.Tensor:
        """[d_vocab + n_ctx, d_model]: W_E stacked on W_pos, TL's overcomplete basis for full QK / OV circuits."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    def all_composition_scores(self, mode: str) -> torch.Tensor:
        """Q-, K- or V-composition score of every (earlier head, later head) pair [L1, H1, L2, H2] (Elhage et
        al. 2021; TL's definition): the earlier head's OV against the later one's QK (Q), QKᵀ (K) or OV (V);
        zero unless the first head's layer is strictly earlier."""
        from transformer_lens.utilities import composition_scores

        if mode not in COMPOSITION_MODES:
            raise InterpError(f"mode must be one of {list(COMPOSITION_MODES)}; got {mode!r}.")
        right = {"Q": lambda: self.QK, "K": lambda: self.QK.T, "V": lambda: self.OV}[mode]()
        scores = composition_scores(self.OV, right, broadcast_dims=True)
        layers = torch.arange(self.cfg.n_layers, device=scores.device)
        earlier = layers[:, None, None, None] < layers[None, None, :, None]
        return torch.where(earlier, scores, torch.zeros_like(scores))

    def all_head_labels(self) -> list[str]:
        """["L0H0", "L0H1", ...]: every head's label, layer-major (TL's)."""
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    @property
    def n_params_total(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_pos_offset(self, past_kv_cache, batch_size: int) -> int:
        """Positions already in ``past_kv_cache`` (0 without one): where new tokens' positions start (TL's)."""
        if past_kv_cache is None:
            return 0
        return past_kv_cache.length

    def mps(self):
        """The model on Apple's GPU (TL's ``mps()``)."""
        return self.to("mps")

    def loss_fn(self, logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy, TL's ``loss_fn`` argument order (our :meth:`loss`)."""
        return self.loss(logits, tokens.to(logits.device), per_token=per_token, attention_mask=attention_mask)

    # --- the tokenizer, as TransformerLens sets it --------------------------------------------------------
    def set_tokenizer(self, tokenizer, default_padding_side: str | None = None) -> None:
        """Use ``tokenizer`` the way TL's ``set_tokenizer`` does: a copy whose ``encode`` / ``__call__`` prepend
        BOS (TL's ``get_tokenizer_with_bos``, so ``model.tokenizer.encode(" John")`` is ``[bos, id]`` as in a TL
        tutorial), padding on ``default_padding_side`` (else the tokenizer's, else "right"), and EOS standing in
        for a missing pad or BOS token. ``to_tokens`` is unaffected (it adds BOS itself, per ``prepend_bos``)."""
        from interp.model.text import PADDING_SIDES, _check_choice
        from interp.tokenize import as_transformers_tokenizer

        _check_choice("default_padding_side", default_padding_side, PADDING_SIDES)
        tok = as_transformers_tokenizer(tokenizer, self.cfg.bos_token_id, self.cfg.eos_token_id)
        if tok is None or not hasattr(tok, "encode") or not hasattr(tok, "decode"):
            raise InterpError(f"tokenizer must be a transformers tokenizer or a tokenizers.Tokenizer; "
                              f"got {type(tokenizer).__name__}.")
        tok = copy.deepcopy(tok)  # the caller's tokenizer keeps its own settings, as TL's reload does
        if tok.eos_token is None:
            tok.eos_token = "<|endoftext|>"
        for name in ("pad_token", "bos_token"):
            if getattr(tok, name) is None:
                setattr(tok, name, tok.eos_token)
        if hasattr(tok, "add_bos_token") and not tok.add_bos_token and self.cfg.original_architecture not in (
                "OlmoForCausalLM", "OlmoeForCausalLM", "Olmo2ForCausalLM"):  # TL leaves OLMo's alone
            tok.add_bos_token = True  # transformers rebuilds the post-processor, as a reload with it would
        tok.padding_side = default_padding_side or getattr(tok, "padding_side", None) or "right"
        self.tokenizer = tok

    # --- weight processing on state dicts (TL's individual steps) -------------------------------------------
    def _processed_state_dict(self, state_dict: dict | None, **steps) -> dict:
        """``state_dict`` (TL or our names; None: this model's) after the chosen processing steps, computed on a
        scratch copy of this model: TL's step methods take and return state dicts and leave the model alone."""
        # the function's steps are all off unless chosen (the method's default to TL's)
        from interp.model.processing import process_weights

        scratch = copy.deepcopy(self)
        if state_dict is not None:
            scratch.load_state_dict(state_dict)
        return process_weights(scratch, **steps).tl_state_dict()

    def fold_layer_norm(self, state_dict: dict | None = None, fold_biases: bool = True,
                        center_weights: bool = True) -> dict:
        """TL's ``fold_layer_norm``: the state dict with every pre-norm's gain (and LayerNorm bias) folded into
        the weights that read it. ``fold_biases`` / ``center_weights`` are accepted for TL's signature; as TL's
        loader does, LayerNorm folds its bias and centres, RMSNorm (which has neither to fold) does not."""
        return self._processed_state_dict(state_dict, fold_ln=True)

    def center_writing_weights(self, state_dict: dict | None = None) -> dict:
        """TL's ``center_writing_weights``: weights writing to the residual stream lose their mean over d_model."""
        return self._processed_state_dict(state_dict, center_writing_weights=True)

    def center_unembed(self, state_dict: dict | None = None) -> dict:
        """TL's ``center_unembed``: W_U and b_U lose their mean over the vocabulary."""
        return self._processed_state_dict(state_dict, center_unembed=True)

    def fold_value_biases(self, state_dict: dict | None = None) -> dict:
        """TL's ``fold_value_biases``: b_V moves into b_O (pattern rows sum to 1)."""
        return self._processed_state_dict(state_dict, fold_value_biases=True)

    def refactor_factored_attn_matrices(self, state_dict: dict | None = None) -> dict:
        """TL's ``refactor_factored_attn_matrices``: W_Q, W_K, W_V, W_O refactored by SVD of W_QK and W_OV."""
        return self._processed_state_dict(state_dict, refactor_factored_attn_matrices=True)

    def process_weights_(self, fold_ln: bool = True, center_writing_weights: bool = True, center_unembed: bool = True,
                         refactor_factored_attn_matrices: bool = False):
        """TL's in-place ``process_weights_`` (value biases folded too, as TL's does); returns the model."""
        return self.process_weights(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                    center_unembed=center_unembed, fold_value_biases=True,
                                    refactor_factored_attn_matrices=refactor_factored_attn_matrices)

    def load_and_process_state_dict(self, state_dict: dict, fold_ln: bool = True, center_writing_weights: bool = True,
                                    center_unembed: bool = True, fold_value_biases: bool = True,
                                    refactor_factored_attn_matrices: bool = False):
        """Load an unprocessed state dict (TL's or ours), then apply TL's processing (TL's defaults)."""
        self.load_state_dict(state_dict)
        return self.process_weights(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                    center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                                    refactor_factored_attn_matrices=refactor_factored_attn_matrices)

    # --- state dicts with TransformerLens' names ------------------------------------------------------------
    def tl_state_dict(self) -> dict:
        """``state_dict()`` with TL's names (``unembed.W_U``, present even when tied, as in TL)."""
        out = {k: v for k, v in self.state_dict().items() if k != "unembed.W_U_param"}
        out["unembed.W_U"] = self.W_U.detach() if self.unembed.W_U_param is None else self.unembed.W_U_param
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that also takes a TransformerLens ``HookedTransformer.state_dict()``
        (strictly): TL names are mapped to ours and TL's non-weight buffers (causal mask, IGNORE, rotary
        tables) are dropped. A TL ``unembed.W_U`` that differs from a tied model's W_Eᵀ unties it (TL never
        ties; its processing centres W_U alone)."""
        ours = {}
        for key, value in state_dict.items():
            if key.endswith(_TL_BUFFERS):
                continue
            for tl_name, name in _TL_RENAMES.items():
                if key.endswith(tl_name):
                    key = key[: -len(tl_name)] + name
            ours[key] = value
        W_U = ours.get("unembed.W_U_param")
        if W_U is not None and self.unembed.W_U_param is None:
            W_E = ours.get("embed.W_E", self.W_E)
            if torch.equal(W_U.to(W_E), W_E.T):
                del ours["unembed.W_U_param"]
            else:
                self.unembed.W_U_param = nn.Parameter(torch.empty(self.cfg.d_model, self.cfg.d_vocab, dtype=W_E.dtype,
                                                                   device=self.W_E.device))
                self.cfg.tie_embeddings = False
        return super().load_state_dict(ours, strict=strict, assign=assign)

    # --- streaming generation ---------------------------------------------------------------------------------
    def generate_stream(self, input="", max_new_tokens: int = 10, max_tokens_per_yield: int = 25,
                        stop_at_eos: bool = True, eos_token_id: int | None = None, do_sample: bool = True,
                        top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0,
                        freq_penalty: float = 0.0, use_past_kv_cache: bool = True, prepend_bos: bool | None = None,
                        padding_side: str | None = None, return_type: str | None = "input", verbose: bool = True,
                        seed: int | None = None):
        """TL's ``generate_stream``: token tensors as they are sampled, in chunks. The first chunk holds the prompt
        and the first new tokens (up to ``max_tokens_per_yield`` columns in all), each later one up to
        ``max_tokens_per_yield`` new tokens; concatenated they are what ``generate(..., return_type="tokens")``
        returns. Yields tensors whatever ``return_type`` says, as TL's does."""
        from interp.generate import generate_steps

        if not isinstance(max_tokens_per_yield, int) or max_tokens_per_yield < 1:
            raise InterpError(f"max_tokens_per_yield must be a positive integer; got {max_tokens_per_yield!r}.")
        from interp.model.text import is_text

        tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side) if is_text(input) \
            else self._as_tokens(input)
        sent = 0  # columns already yielded
        steps = generate_steps(self, tokens, max_new_tokens, temperature if do_sample else 0.0, top_k, top_p, None,
                               seed, stop_at_eos, eos_token_id, use_past_kv_cache, freq_penalty, None, verbose)
        out = tokens
        for out in steps:
            if out.shape[1] > tokens.shape[1] and out.shape[1] - sent >= max_tokens_per_yield:
                yield out[:, sent:]
                sent = out.shape[1]
        if out.shape[1] > sent and out.shape[1] > tokens.shape[1]:
            yield out[:, sent:]
