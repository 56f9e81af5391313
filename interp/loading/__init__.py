"""Loading: our checkpoints, `transformers` model objects and folders, and the shipped zoo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError
from interp.loading.checkpoint import check_finite, is_interp_checkpoint, load_checkpoint, save_checkpoint
from interp.loading.hf import from_hf_model
from interp.zoo import DEFAULT_MODEL, ZOO, default_model_name, zoo_models


def random_tiny_model():
    """A small randomly initialised model (named as such): the stand-in until a trained one ships."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(0)
    cfg = DecoderConfig(d_vocab=256, n_ctx=128, d_model=64, n_layers=2, n_heads=4, positional="rotary",
                        name="random-tiny (randomly initialised, untrained)")
    return HookedDecoder(cfg).eval()


def load(source: Any = None, device: str | torch.device | None = None, tokenizer: Any = None, *,
         fold_ln: bool = False, center_writing_weights: bool = False, center_unembed: bool = False,
         fold_value_biases: bool = False, refactor_factored_attn_matrices: bool = False,
         device_map=None, max_memory: dict | None = None, offload_folder=None):
    """Load a model, optionally with TransformerLens' weight processing.

    * ``load()`` — the default model of the shipped zoo (``models/``).
    * ``load("name")`` — ``models/<name>``.
    * ``load("path/to/folder")`` — our checkpoint (config.json + model.safetensors) or a `transformers`
      ``save_pretrained`` folder of a family in interp.loading.families.FAMILIES.
    * ``load(hf_model)`` — a `transformers` model object.
    * ``load("org/model")`` — a hub id, through `transformers`' own download (needs a reachable hub).

    ``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases`` and
    ``refactor_factored_attn_matrices`` are TransformerLens' processing steps with TL's meaning
    (interp.model.processing). They are off by default, so the weights and
    every hook are exactly the source model's; switch them on (as TL's ``from_pretrained`` does) before
    using TL's ``decompose_resid(apply_ln=True)`` / ``logit_attrs`` — those warn on an unfolded model.

    A model larger than one device: ``device_map="auto"`` (with ``max_memory``, e.g. ``{0: "20GiB",
    1: "20GiB", "cpu": "64GiB"}``) or a dict ``{"embed": 0, "blocks.0": 0, ..., "blocks.40": "cpu",
    "ln_final": "disk", "unembed": 1}`` places blocks with `accelerate` (``offload_folder`` holds
    ``"disk"`` weights); hooks and caches work across the devices (see :mod:`interp.loading.placement`).
    """
    steps = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights, "center_unembed": center_unembed,
             "fold_value_biases": fold_value_biases, "refactor_factored_attn_matrices": refactor_factored_attn_matrices}
    if device_map is not None:
        if device is not None:
            raise InterpError("device: give either device or device_map, not both")
        from interp.loading.placement import dispatch

        model = load(source, tokenizer=tokenizer, **steps)  # processed before placement, on one device
        return dispatch(model.eval(), device_map, max_memory=max_memory, offload_folder=offload_folder)
    if max_memory is not None or offload_folder is not None:
        raise InterpError("max_memory / offload_folder: only used with device_map (e.g. device_map='auto')")
    model = _load(source, device, tokenizer)
    return model.process_weights(**steps) if any(steps.values()) else model


def _load(source: Any, device, tokenizer):
    if source is None:
        name = default_model_name()
        if name == DEFAULT_MODEL and DEFAULT_MODEL not in zoo_models():
            model = random_tiny_model()
            return model.to(device) if device is not None else model
        source = name
    if isinstance(source, torch.nn.Module):
        model = from_hf_model(source, tokenizer=tokenizer)
        check_finite(model.named_parameters(), type(source).__name__)
        return model.to(device or next(source.parameters()).device)
    if not isinstance(source, (str, Path)):
        raise InterpError(f"load() takes a zoo name, a folder path or a transformers model; got {type(source).__name__}.")
    path = Path(source)
    if not path.exists() and (ZOO / str(source)).exists():
        path = ZOO / str(source)
    if path.is_dir():
        if is_interp_checkpoint(path):
            return load_checkpoint(path, device=device)
        if (path / "config.json").is_file():
            return _load_hf_folder(str(path), device, tokenizer)
        raise InterpError(f"{path} holds neither an interp checkpoint nor a transformers model (no config.json).")
    if path.exists():
        raise InterpError(f"{path} is a file; load() needs a model folder (config.json + weights).")
    if isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/")):
        return _load_hf_folder(source, device, tokenizer)  # a hub id
    raise InterpError(
        f"no model called {str(source)!r}: not a folder, and not in the zoo {zoo_models() or '(empty)'} at {ZOO}."
    )


def _load_hf_folder(name_or_path: str, device, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    if Path(name_or_path, "config.json").is_file():
        from interp.io import read_json

        read_json(Path(name_or_path, "config.json"))  # a broken file: one line, not transformers' tracebacks
    hf_config = AutoConfig.from_pretrained(name_or_path)
    _check_folder_fits(hf_config, name_or_path)
    hf = AutoModelForCausalLM.from_pretrained(name_or_path, dtype="auto")
    if tokenizer is None and Path(name_or_path, "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer  # the folder's own tokenizer class and special tokens

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    elif tokenizer is None and Path(name_or_path, "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(name_or_path, "tokenizer.json")))
    model = from_hf_model(hf, tokenizer=tokenizer)
    check_finite(model.named_parameters(), name_or_path)
    return model.to(device) if device is not None else model


def _check_folder_fits(hf_config, name: str) -> None:
    """Refuse, before allocating, a model whose two copies (transformers' and ours) exceed free memory."""
    from transformers import AutoModelForCausalLM

    from interp.loading.families import check_memory, estimate_bytes, family_of

    arch = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    family_of(arch, hf_config)  # an unsupported architecture is refused before anything is built
    with torch.device("meta"):  # shapes only: counts the parameters without allocating them
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    n_params = sum(p.numel() for p in skeleton.parameters())
    dtype = getattr(hf_config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    check_memory(2 * estimate_bytes(n_params, dtype), "cpu",
                 f"{name} ({arch}, {n_params / 1e6:.0f}M parameters in {dtype}, two copies while converting)")


__all__ = ["default_model_name", "from_hf_model", "load", "load_checkpoint", "save_checkpoint", "zoo_models"]
