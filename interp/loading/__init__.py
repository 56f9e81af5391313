"""Loading: our checkpoints, `transformers` model objects and folders, and the shipped zoo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError, OutOfMemoryRefusal
from interp.loading.checkpoint import (
    WEIGHTS,
    check_finite,
    is_interp_checkpoint,
    load_checkpoint,
    read_tokenizer,
    save_checkpoint,
)
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
         device_map=None, max_memory: dict | None = None, offload_folder=None, path: str = "auto"):
    """Load a model, optionally with TransformerLens' weight processing.

    * ``load()`` — the default model of the shipped zoo (``models/``).
    * ``load("name")`` — ``models/<name>``.
    * ``load("path/to/folder")`` — our checkpoint (config.json + model.safetensors) or a `transformers`
      ``save_pretrained`` folder of a family in interp.loading.families.FAMILIES.
    * ``load(hf_model)`` — a `transformers` model object.
    * ``load("org/model")`` — a hub id, through `transformers`' own download (needs a reachable hub).

    A `transformers` model opens on one of two paths (``model.cfg.path`` says which): **native** — its
    family has a row in interp.loading.families.FAMILIES, the weights are converted into a HookedDecoder
    (fused/lazy attention, weight processing, every analyzer); **universal** — any other causal LM
    (attention, state-space, recurrent, hybrid) is wrapped with TransformerLens hook names
    (:mod:`interp.loading.universal`; ``model.capabilities`` lists what it offers). ``path="auto"`` (the
    default) takes native where a row exists and converts, universal otherwise; ``path="native"`` or
    ``path="universal"`` forces one (e.g. to compare them).

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
    if path not in PATHS:
        raise InterpError(f"path must be one of {list(PATHS)}; got {path!r}.")
    if device_map is not None:
        if path == "universal":
            raise InterpError("device_map: the universal path wraps the transformers model as it is; place it with "
                              "transformers' own from_pretrained(device_map=...) and pass the model to interp.load.")
        if device is not None:
            raise InterpError("device: give either device or device_map, not both")
        from interp.loading.placement import dispatch

        model = load(source, tokenizer=tokenizer, **steps)  # processed before placement, on one device
        return dispatch(model.eval(), device_map, max_memory=max_memory, offload_folder=offload_folder)
    if max_memory is not None or offload_folder is not None:
        raise InterpError("max_memory / offload_folder: only used with device_map (e.g. device_map='auto')")
    model = _load(source, device, tokenizer, path)
    return model.process_weights(**steps) if any(steps.values()) else model


PATHS = ("auto", "native", "universal")


def _open_hf(hf, tokenizer, path: str, where: str):
    """A `transformers` model on the native path where its family converts, else (or if asked) the universal one."""
    from interp.loading.families import FAMILIES
    from interp.loading.universal import from_hf_universal, refusal

    arch = type(hf).__name__
    refused = None
    if path != "universal" and arch in FAMILIES:
        try:
            model = from_hf_model(hf, tokenizer=tokenizer)
            check_finite(model.named_parameters(), where)
            return model
        except InterpError as err:
            if path == "native" or isinstance(err, OutOfMemoryRefusal):
                raise
            refused = str(err)  # a setting the native model lacks: the universal path runs HF's own modules
    elif path == "native":
        raise InterpError(refusal(arch, "it has no native family row (path='native'; path='auto' wraps it instead)"))
    return from_hf_universal(hf, tokenizer=tokenizer, native_refusal=refused)


def _load(source: Any, device, tokenizer, path: str = "auto"):
    if source is None:
        name = default_model_name()
        if name == DEFAULT_MODEL and DEFAULT_MODEL not in zoo_models():
            model = random_tiny_model()
            return model.to(device) if device is not None else model
        source = name
    if isinstance(source, torch.nn.Module):
        model = _open_hf(source, tokenizer, path, type(source).__name__)
        return model.to(device or next(source.parameters()).device)
    if not isinstance(source, (str, Path)):
        raise InterpError(f"load() takes a zoo name, a folder path or a transformers model; got {type(source).__name__}.")
    from interp.io import path_stat

    folder = Path(source)
    path_stat(folder, "model")  # a name too long or a link loop: one line here, not an OSError below
    if not folder.exists() and (ZOO / str(source)).exists():
        folder = ZOO / str(source)
    if folder.is_dir():
        if os.path.lexists(folder / WEIGHTS):  # a folder, a link loop or a FIFO named model.safetensors: one line
            from interp.io import check_input_path

            check_input_path(folder / WEIGHTS, "model", folder=False)
        if is_interp_checkpoint(folder):
            if path == "universal":
                raise InterpError(f"path='universal': {folder} is an interp checkpoint, which always opens natively.")
            return load_checkpoint(folder, device=device)
        if (folder / "config.json").is_file():
            return _load_hf_folder(str(folder), device, tokenizer, path)
        raise InterpError(f"{folder} holds neither an interp checkpoint nor a transformers model (no config.json).")
    if folder.exists():
        raise InterpError(f"{folder} is a file; load() needs a model folder (config.json + weights).")
    if isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/")):
        return _load_hf_folder(source, device, tokenizer, path)  # a hub id
    raise InterpError(
        f"no model called {str(source)!r}: not a folder, and not in the zoo {zoo_models() or '(empty)'} at {ZOO}."
    )


def _load_hf_folder(name_or_path: str, device, tokenizer, path: str = "auto"):
    from transformers import AutoConfig, AutoModelForCausalLM

    if Path(name_or_path, "config.json").is_file():
        from interp.io import read_json

        raw = read_json(Path(name_or_path, "config.json"))  # a broken file: one line, not transformers' tracebacks
        # sizes first, from the raw JSON: transformers' config object alone builds per-layer lists (10^8 layers:
        # minutes and gigabytes before anything could be checked)
        _check_fits(_hf_parameters_lower_bound(raw.get("text_config") or raw), _raw_dtype(raw), name_or_path,
                    (raw.get("architectures") or [raw.get("model_type", "?")])[0])
    hf_config = AutoConfig.from_pretrained(name_or_path)
    _check_folder_fits(hf_config, name_or_path, path)
    hf = AutoModelForCausalLM.from_pretrained(name_or_path, dtype="auto")
    if tokenizer is None and Path(name_or_path, "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer  # the folder's own tokenizer class and special tokens

        if Path(name_or_path, "tokenizer.json").exists():
            read_tokenizer(Path(name_or_path, "tokenizer.json"))  # a damaged file: one line, not a Rust error
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise InterpError(f"{name_or_path}: cannot read its tokenizer ({type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:200]}); fix or remove the tokenizer "
                              "files.") from None
    elif tokenizer is None and Path(name_or_path, "tokenizer.json").is_file():
        tokenizer = read_tokenizer(Path(name_or_path, "tokenizer.json"))
    model = _open_hf(hf, tokenizer, path, name_or_path)
    return model.to(device) if device is not None else model


def _check_folder_fits(hf_config, name: str, path: str = "auto") -> None:
    """Refuse, before allocating, a model that will not fit: two copies (transformers' and ours) on the native
    path, one on the universal path (it wraps transformers' copy)."""
    from transformers import AutoModelForCausalLM

    from interp.loading.families import FAMILIES, check_memory, estimate_bytes, family_of
    from interp.loading.universal import refusal

    arch = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    copies = 2 if path != "universal" and arch in FAMILIES else 1
    if path == "native":
        family_of(arch, hf_config)  # an architecture without a row is refused before anything is built
    dtype = getattr(hf_config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    # a lower bound from the config's sizes first: building even a meta skeleton of 10^6 layers takes minutes
    _check_fits(_hf_parameters_lower_bound(hf_config.get_text_config().to_dict()), dtype, name, arch, copies)
    try:
        with torch.device("meta"):  # shapes only: counts the parameters without allocating them
            skeleton = AutoModelForCausalLM.from_config(hf_config)
    except ValueError:  # transformers has no causal-LM class for this config (encoder-decoder, encoder, ...)
        raise InterpError(refusal(arch, "transformers has no causal-LM class for its config")) from None
    n_params = sum(p.numel() for p in skeleton.parameters())
    check_memory(copies * estimate_bytes(n_params, dtype), "cpu",
                 f"{name} ({arch}, {n_params / 1e6:.0f}M parameters in {dtype}, "
                 f"{'two copies while converting' if copies == 2 else 'wrapped'})")


# the names transformers' configs give the sizes (the first one present is used)
_HF_SIZES = {"hidden": ("hidden_size", "n_embd", "d_model", "hidden_dim", "model_dim"),
             "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
             "vocab": ("vocab_size", "padded_vocab_size"),
             "inner": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")}


def _hf_parameters_lower_bound(config: dict) -> int:
    """At least this many parameters (embeddings, query/output and MLP matrices) by a transformers config's
    sizes (a ``config.json`` dict); 0 where it does not use the usual names."""
    def size(key: str) -> int:
        for name in _HF_SIZES[key]:
            v = config.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                return int(v)
        return 0

    h = size("hidden")
    return size("vocab") * h + size("layers") * (2 * h * h + 2 * h * size("inner"))


def _raw_dtype(config: dict) -> torch.dtype:
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _check_fits(low: int, dtype: torch.dtype, name: str, arch: str, copies: int = 1) -> None:
    from interp.loading.families import check_memory, estimate_bytes

    check_memory(copies * estimate_bytes(low, dtype), "cpu",
                 f"{name} ({arch}, at least {low / 1e6:.0f}M parameters by its config.json"
                 f"{', two copies while converting' if copies == 2 else ''})", "check its sizes (hidden_size, num_hidden_layers, vocab_size ...) or use a machine "
                 "with more memory")


__all__ = ["default_model_name", "from_hf_model", "load", "load_checkpoint", "save_checkpoint", "zoo_models"]
