"""``from interp import HookedTransformer``: TransformerLens' entry point, with TransformerLens' defaults.

A TransformerLens tutorial runs on interp by swapping one line::

    from transformer_lens import HookedTransformer   # before
    from interp import HookedTransformer             # after

    model = HookedTransformer.from_pretrained("gpt2")  # folds and centres the weights, as TL does

``from_pretrained`` processes the weights with TL's defaults (``fold_ln``, ``center_writing_weights``,
``center_unembed``, ``fold_value_biases`` on), so direct logit attributions, ablations and every cached activation
equal TL's; ``from_pretrained_no_processing`` keeps the source weights. ``interp.load`` is unchanged: it keeps the
weights as they are unless asked. The model is our :class:`~interp.model.transformer.HookedDecoder` (everything
interp offers works on it), with TL's tokenizer conventions (``set_tokenizer``) and ``to_tokens(truncate=True)``.
"""

from __future__ import annotations

from typing import Any

import torch

from interp.errors import InterpError
from interp.model.config import DTYPES
from interp.model.transformer import HookedDecoder

# from_pretrained arguments that need TransformerLens' own model registry or multi-device split: named, refused
_REGISTRY_ONLY = ("checkpoint_index", "checkpoint_value", "checkpoint_label", "first_n_layers")


def _dtype_name(dtype) -> str:
    for name, value in DTYPES.items():
        if dtype in (name, value):
            return name
    raise InterpError(f"dtype must be one of {list(DTYPES)} (or the torch dtype); got {dtype!r}.")


class HookedTransformer(HookedDecoder):
    """interp's model under TransformerLens' name: build it with :meth:`from_pretrained` (TL's defaults) or
    :meth:`from_pretrained_no_processing`; or ``HookedTransformer(DecoderConfig(...), tokenizer)`` for a fresh one."""

    def to_tokens(self, input, prepend_bos: bool | None = None, padding_side: str | None = None,
                  move_to_device: bool = True, truncate: bool = True) -> torch.Tensor:
        """As :meth:`HookedDecoder.to_tokens`, truncating to ``n_ctx`` by default (TL's default)."""
        return super().to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side,
                                 move_to_device=move_to_device, truncate=truncate)

    @classmethod
    def from_pretrained(cls, model_name: Any = None, fold_ln: bool = True, center_writing_weights: bool = True,
                        center_unembed: bool = True, refactor_factored_attn_matrices: bool = False,
                        checkpoint_index: int | None = None, checkpoint_value: int | None = None,
                        checkpoint_label: int | None = None, hf_model: Any = None,
                        device: str | torch.device | None = None, n_devices: int = 1, tokenizer: Any = None,
                        move_to_device: bool = True, fold_value_biases: bool = True,
                        default_prepend_bos: bool | None = None, default_padding_side: str | None = None,
                        dtype: str | torch.dtype = "float32", first_n_layers: int | None = None,
                        n_ctx: int | None = None, **from_pretrained_kwargs) -> HookedTransformer:
        """TransformerLens' ``HookedTransformer.from_pretrained``, same arguments and defaults.

        ``model_name``: what :func:`interp.load` takes (a zoo name, a local folder, a `transformers` hub id where
        a hub is reachable); ``hf_model``, a `transformers` model object, wins over it as in TL. Weights are cast
        to ``dtype`` (TL's default float32), then processed; steps that cannot be exact for the architecture
        (fold_ln on post-norm, center_unembed under a logit soft-cap) are skipped with a warning, as TL does.
        ``n_devices > 1`` → use ``interp.load(..., device_map=...)``; TL's checkpoint registry arguments and
        ``first_n_layers`` are refused; ``n_ctx`` may only shorten the context.
        """
        given = {"checkpoint_index": checkpoint_index, "checkpoint_value": checkpoint_value,
                 "checkpoint_label": checkpoint_label, "first_n_layers": first_n_layers}
        for name in _REGISTRY_ONLY:
            if given[name] is not None:
                raise InterpError(f"{name}: not supported by interp's from_pretrained (TransformerLens' model "
                                  f"registry); load the checkpoint's folder or transformers model instead.")
        if n_devices != 1:
            raise InterpError(f"n_devices must be 1 here; got {n_devices}. For a model over several devices use "
                              "interp.load(name, device_map='auto').")
        if from_pretrained_kwargs:
            raise InterpError(f"unknown from_pretrained arguments {sorted(from_pretrained_kwargs)}.")
        from interp.loading import load

        source = hf_model if hf_model is not None else model_name
        model = load(source, tokenizer=tokenizer, device=device if move_to_device else None)
        name = _dtype_name(dtype)
        model = model.to(DTYPES[name])
        model.cfg.dtype = name
        if n_ctx is not None:
            if not isinstance(n_ctx, int) or not 1 <= n_ctx <= model.cfg.n_ctx:
                raise InterpError(f"n_ctx must be an int in [1, {model.cfg.n_ctx}]; got {n_ctx!r}.")
            model.cfg.n_ctx = n_ctx
        if default_prepend_bos is not None:
            model.cfg.default_prepend_bos = default_prepend_bos
        if model.tokenizer is not None:
            model.set_tokenizer(model.tokenizer, default_padding_side=default_padding_side)
        model.process_weights(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                              center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                              refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        model.__class__ = cls  # the same module tree; this class only changes defaults (no new state)
        return model.eval()

    @classmethod
    def from_pretrained_no_processing(cls, model_name: Any = None, fold_ln: bool = False,
                                      center_writing_weights: bool = False, center_unembed: bool = False,
                                      refactor_factored_attn_matrices: bool = False, fold_value_biases: bool = False,
                                      dtype: str | torch.dtype = torch.float32, default_prepend_bos: bool | None = None,
                                      default_padding_side: str | None = None,
                                      **from_pretrained_kwargs) -> HookedTransformer:
        """TL's ``from_pretrained_no_processing``: :meth:`from_pretrained` with every processing step off."""
        return cls.from_pretrained(model_name, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                   center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                                   refactor_factored_attn_matrices=refactor_factored_attn_matrices, dtype=dtype,
                                   default_prepend_bos=default_prepend_bos,
                                   default_padding_side=default_padding_side, **from_pretrained_kwargs)
