"""Our own checkpoints: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``). Never pickles."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interp.errors import InterpError
from interp.io import atomic_path, atomic_write_text
from interp.model.config import DTYPES, DecoderConfig
from interp.model.transformer import HookedDecoder
from interp.tokenize import backend_tokenizer
from interp.zoo import CONFIG, TOKENIZER, WEIGHTS, is_interp_checkpoint  # noqa: F401  (re-exported)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or one clear error if it is empty, truncated or not safetensors."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # they name neither the file nor the fix
        size = path.stat().st_size if path.exists() else 0
        raise InterpError(f"{path}: cannot read the weights ({size} bytes; {str(e).strip() or type(e).__name__}); "
                          "the file is empty, truncated or not safetensors — copy or save it again.") from None


def check_finite(named_tensors, source: str) -> None:
    """Refuse weights holding NaN or inf, naming the tensors: every analysis downstream would be silently nan."""
    bad = []
    for name, t in named_tensors:
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            bad.append(f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)")
    if bad:
        raise InterpError(f"{source}: non-finite weights (NaN or inf) in {', '.join(bad[:6])}"
                          f"{' ...' if len(bad) > 6 else ''}; the checkpoint is corrupt — retrain or restore it.")


def save_checkpoint(model: HookedDecoder, folder: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Write config.json, model.safetensors and (if attached) tokenizer.json, each atomically.

    Refuses to replace an existing checkpoint unless ``overwrite=True``.
    """
    folder = Path(folder)
    if (folder / WEIGHTS).exists() and not overwrite:
        raise InterpError(f"{folder / WEIGHTS} already exists; pass overwrite=True to replace it.")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", dtype or t.dtype).contiguous() for name, t in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "interp"})
    cfg = model.cfg.to_dict()
    cfg["source"] = {k: v for k, v in cfg.get("source", {}).items() if k != "path"}  # where it was loaded from is not part of it
    if dtype is not None:
        cfg["dtype"] = {v: k for k, v in DTYPES.items()}[dtype]
    atomic_write_text(folder / CONFIG, json.dumps(cfg, indent=2) + "\n")
    tok = backend_tokenizer(model.tokenizer)  # the `tokenizers.Tokenizer` inside model.tokenizer
    if tok is not None and hasattr(tok, "to_str"):
        atomic_write_text(folder / TOKENIZER, tok.to_str(pretty=True))
    return folder


def empty_model(cfg: DecoderConfig, tokenizer=None) -> HookedDecoder:
    """A HookedDecoder whose parameters are allocated but not initialised (they are about to be loaded).

    Built on the meta device, so no time goes into a random initialisation that would be overwritten. The
    non-persistent buffers (computed, never saved: the sinusoidal table) are recomputed here, since
    ``to_empty`` leaves them as garbage.
    """
    from interp.model.transformer import sinusoidal_table

    with torch.device("meta"):
        model = HookedDecoder(cfg, tokenizer=tokenizer)
    model = model.to_empty(device="cpu")
    if cfg.positional == "sinusoidal":
        model.pos_embed.W_pos = sinusoidal_table(cfg.n_ctx, cfg.d_model).to(cfg.torch_dtype)
    unknown = [name for name, _ in model.named_buffers() if name != "pos_embed.W_pos"]
    if unknown:  # a new computed buffer must be recomputed above, or it would hold garbage
        raise InterpError(f"empty_model does not know how to recompute the buffers {unknown[:4]}.")
    return model


def load_state(model: HookedDecoder, state: dict[str, torch.Tensor], source: str) -> HookedDecoder:
    """Copy ``state`` into ``model``, naming any missing, unexpected or wrong-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InterpError(
            f"{source}: weights do not match the config. Missing tensors: {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}; unexpected tensors: {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}."
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InterpError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)} but the config needs "
                f"{tuple(expected[name].shape)}."
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model


def load_checkpoint(folder: str | Path, device: str | torch.device | None = None) -> HookedDecoder:
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise InterpError(f"{folder} is not an interp checkpoint: {name} is missing.")
    cfg = DecoderConfig.load(folder / CONFIG)
    cfg.source = {**cfg.source, "path": str(folder.resolve())}  # lets tools save artefacts (e.g. a tuned lens) beside it
    tokenizer = None
    if (folder / TOKENIZER).is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
    model = empty_model(cfg, tokenizer)
    state = read_weights(folder / WEIGHTS)
    check_finite(state.items(), str(folder / WEIGHTS))
    load_state(model, state, str(folder / WEIGHTS))
    model.eval()
    return model.to(device) if device is not None else model
