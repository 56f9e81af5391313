"""Text in, text out, the way TransformerLens does it: BOS, padding, attention masks, ``generate``.

A mixin of :class:`interp.model.transformer.HookedDecoder`, kept apart from the model's arithmetic.
The conventions are TransformerLens' (its ``TransformerBridge`` is the reference the parity tests run):

* ``model.tokenizer`` is a `transformers` ``PreTrainedTokenizerFast`` (a bare `tokenizers.Tokenizer`
  assigned to it is wrapped), so ``tok(text)``, ``tok.decode(t, skip_special_tokens=True)`` and
  ``tok.bos_token_id`` work as TransformerLens users expect.
* BOS: ``prepend_bos=None`` means ``cfg.default_prepend_bos`` (GPT-2 and Llama prepend, GPT-NeoX and Qwen2
  do not, as in TransformerLens); ``True``/``False`` overrides it wherever text is taken.
* Batches of texts are padded with the pad token (EOS) on ``padding_side`` (the tokenizer's, "right" by
  default). Right padding needs no mask: a real token never attends to a later pad under the causal mask.
  Left padding (what generation uses) does, and the forward pass builds it, with positions counted from
  each row's first real token — exactly TransformerLens' ``get_attention_mask`` / ``get_offset_position_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
from transformer_lens.utilities import get_attention_mask, get_offset_position_ids

from interp.errors import InterpError
from interp.tokenize import as_transformers_tokenizer

PADDING_SIDES = ("left", "right")


def _check_choice(name: str, value, allowed) -> None:
    if value is not None and value not in allowed:
        raise InterpError(f"{name} must be one of {list(allowed)} or None; got {value!r}.")


def _check_flag(name: str, value) -> None:
    if value is not None and not isinstance(value, bool):
        raise InterpError(f"{name} must be True, False or None; got {value!r}.")


def is_text(x) -> bool:
    """A string, or a non-empty list/tuple of strings (TransformerLens takes either sequence)."""
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, str) for t in x))


def position_ids(attention_mask: torch.Tensor, n_new: int) -> torch.Tensor:
    """Positions [batch, n_new] of the last ``n_new`` columns of a 0/1 mask [batch, past + n_new]: each
    row counts from its first attended token (TransformerLens' get_offset_position_ids)."""
    return get_offset_position_ids(attention_mask.shape[1] - n_new, attention_mask.long())


class TextMixin:
    """Tokenizer, BOS and padding handling shared by every text-taking method of the model."""

    # --- the tokenizer ---------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.__dict__.get("_tokenizer")

    @tokenizer.setter
    def tokenizer(self, tok) -> None:
        self.__dict__["_tokenizer"] = as_transformers_tokenizer(tok, self.cfg.bos_token_id, self.cfg.eos_token_id)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            where = (self.cfg.source or {}).get("path")
            raise InterpError(
                f"text given, but this model{f' ({where})' if where else ''} has no tokenizer (no tokenizer.json), so "
                "it takes token ids only: pass a LongTensor [batch, pos], or put the tokenizer.json it was trained "
                "with beside its weights."
            )
        return self.tokenizer

    @property
    def bos_token_id(self) -> int:
        """The id prepended as BOS: the config's, else the tokenizer's, else EOS (as TransformerLens)."""
        tok = self.tokenizer
        for i in (self.cfg.bos_token_id, getattr(tok, "bos_token_id", None), self.cfg.eos_token_id,
                  getattr(tok, "eos_token_id", None)):
            if i is not None:
                return int(i)
        raise InterpError("prepend_bos=True, but this model has no BOS or EOS token id (cfg.bos_token_id is None); "
                          "pass prepend_bos=False or set model.cfg.bos_token_id.")

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for i in (getattr(tok, "pad_token_id", None), self.cfg.eos_token_id):
            if i is not None:
                return int(i)
        return 0

    def _padding_side(self, padding_side: str | None) -> str:
        _check_choice("padding_side", padding_side, PADDING_SIDES)
        return padding_side or getattr(self.tokenizer, "padding_side", None) or "right"

    def _prepend_bos(self, prepend_bos: bool | None) -> bool:
        _check_flag("prepend_bos", prepend_bos)
        return self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos

    # --- text -> tokens ---------------------------------------------------------------------------
    def to_tokens(self, input: str | Sequence[str], prepend_bos: bool | None = None, padding_side: str | None = None,
                  move_to_device: bool = True, truncate: bool = False) -> torch.Tensor:
        """Text → LongTensor [batch, pos] (TransformerLens' signature).

        ``prepend_bos`` None uses ``cfg.default_prepend_bos``. Lists are padded with the pad token (EOS) on
        ``padding_side`` (None: the tokenizer's side, "right"). ``truncate=True`` keeps the first ``n_ctx``
        tokens; by default a too-long text is refused by the forward pass instead of cut silently.
        """
        tok = self._need_tokenizer()
        if not is_text(input):
            raise InterpError(f"input must be a string or a non-empty list/tuple of strings; got {input!r:.80}.")
        texts = [input] if isinstance(input, str) else list(input)
        bos, side = self._prepend_bos(prepend_bos), self._padding_side(padding_side)
        rows = []
        for text in texts:
            ids = list(tok.encode(text, add_special_tokens=False))
            ids = ([self.bos_token_id] if bos else []) + ids
            if not ids:
                raise InterpError("the prompt is empty: it encodes to zero tokens. Give some text.")
            rows.append(ids[: self.cfg.n_ctx] if truncate else ids)
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            if side == "right":
                out[i, : len(r)] = torch.tensor(r)
            else:
                out[i, width - len(r):] = torch.tensor(r)
        return out.to(self.device) if move_to_device else out

    def padding_mask(self, tokens: torch.Tensor, prepend_bos: bool | None = None,
                     padding_side: str | None = None) -> torch.Tensor:
        """0/1 mask [batch, pos] of the real (non-pad) tokens of ``tokens`` padded on ``padding_side``
        (TransformerLens' get_attention_mask: only the leading/trailing run of pad ids is padding)."""
        bos = self._prepend_bos(prepend_bos)
        # TL's function reads only these three fields, so token ids need no tokenizer
        ids = SimpleNamespace(pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id if bos else None,
                              padding_side=self._padding_side(padding_side))
        return get_attention_mask(ids, torch.as_tensor(tokens), bos, ids.padding_side)

    # --- tokens -> text ---------------------------------------------------------------------------
    def to_string(self, tokens) -> str | list[str]:
        """Decode token ids ([pos] → str, [batch, pos] → list[str]); special tokens are kept."""
        tok = self._need_tokenizer()
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        if isinstance(tokens, int):  # a 0-d tensor or a single id
            tokens = [tokens]
        if tokens and isinstance(tokens[0], list):
            return [tok.decode(row, clean_up_tokenization_spaces=False) for row in tokens]
        return tok.decode(tokens, clean_up_tokenization_spaces=False)

    def to_str_tokens(self, input, prepend_bos: bool | None = None, padding_side: str | None = None) -> list:
        """Each token as the text it decodes to. Text is tokenized first (with ``prepend_bos``); a list of
        texts gives one list per text, as in TransformerLens."""
        if isinstance(input, (list, tuple)) and input and isinstance(input[0], str):
            return [self.to_str_tokens(t, prepend_bos, padding_side) for t in input]
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)[0]
        if isinstance(input, torch.Tensor):
            if input.ndim == 2:
                if input.shape[0] != 1:
                    raise InterpError(f"to_str_tokens takes one sequence; got a batch of {input.shape[0]}.")
                input = input[0]
            input = input.reshape(-1).tolist()
        if self.tokenizer is None:
            return [f"<{t}>" for t in input]
        return [self.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in input]

    def to_single_token(self, string: str) -> int:
        ids = self.to_tokens(string, prepend_bos=False)[0]
        if len(ids) != 1:
            raise InterpError(f"{string!r} is {len(ids)} tokens, not one: {self.to_str_tokens(ids)}.")
        return int(ids[0])

    def to_single_str_token(self, int_token: int) -> str:
        return self.to_str_tokens(torch.tensor([int(int_token)]))[0]

    def get_token_position(self, single_token, input, mode: str = "first", prepend_bos: bool | None = None,
                           padding_side: str | None = None) -> int:
        """Position of ``single_token`` (id or one-token string) in ``input`` (text or tokens)."""
        _check_choice("mode", mode, ("first", "last"))
        tokens = self.to_tokens(input, prepend_bos, padding_side) if isinstance(input, str) else input
        tokens = torch.as_tensor(tokens).reshape(-1) if torch.as_tensor(tokens).ndim < 2 else tokens
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise InterpError(f"get_token_position takes one sequence; got a batch of {tokens.shape[0]}.")
            tokens = tokens[0]
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        where = (tokens == token).nonzero().reshape(-1)
        if len(where) == 0:
            raise InterpError(f"token {token} ({self.to_str_tokens(torch.tensor([token]))[0]!r}) is not in the input.")
        return int(where[0] if mode == "first" else where[-1])

    # --- generation ---------------------------------------------------------------------------------
    def generate(self, input="", max_new_tokens: int = 10, stop_at_eos: bool = True, eos_token_id: int | None = None,
                 do_sample: bool = True, top_k: int | None = None, top_p: float | None = None,
                 temperature: float = 1.0, freq_penalty: float = 0.0, use_past_kv_cache: bool = True,
                 prepend_bos: bool | None = None, padding_side: str | None = None, return_type: str | None = "input",
                 verbose: bool = True, seed: int | None = None, min_p: float | None = None):
        """Sample a continuation (TransformerLens' signature; our KV-cached :func:`interp.generate.generate`).

        Text in gives text out (``return_type="input"``; "str" or "tokens" force one). A list of texts is left
        padded, with an attention mask, so every row continues from its own last token. ``do_sample=False``
        (or ``temperature=0``) is greedy and equals `transformers`' ``generate`` token for token.
        ``freq_penalty`` subtracts ``freq_penalty * count`` from the logit of each token already in the row.
        ``verbose`` shows a progress bar. ``seed`` (ours) makes sampling reproducible.
        """
        from interp.generate import generate as generate_tokens

        _check_choice("return_type", return_type, ("input", "str", "tokens"))
        text_in = is_text(input)
        mask = None
        if text_in:
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side="left")
            if tokens.shape[0] > 1:
                mask = self.padding_mask(tokens, prepend_bos, "left")
        else:
            tokens = self._as_tokens(input)
            if padding_side is not None:
                mask = self.padding_mask(tokens, prepend_bos, padding_side)
        out = generate_tokens(
            self, tokens, max_new_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
            top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, stop_at_eos=stop_at_eos, eos_token_id=eos_token_id,
            use_kv_cache=use_past_kv_cache, freq_penalty=freq_penalty, attention_mask=mask, verbose=verbose,
        )
        if return_type == "tokens" or (return_type == "input" and not text_in):
            return out
        texts = [self._need_tokenizer().decode(row, skip_special_tokens=True) for row in out]
        return texts[0] if isinstance(input, str) or len(texts) == 1 else texts
