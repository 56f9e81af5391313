"""Our own checkpoints: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``). Never pickles."""

from __future__ import annotations

import json
import math
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


def read_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` from ``tokenizer.json``, or one clear error naming the file (empty, not JSON, not a
    tokenizer), instead of the Rust parser's exception."""
    from tokenizers import Tokenizer

    from interp.io import check_input_path

    check_input_path(path, "model", folder=False)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for every parse error
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InterpError(f"{path}: not a readable tokenizer.json ({reason}); copy it again from where the model "
                          "came from, or remove it (the model then has no tokenizer).") from None


def estimate_parameters(cfg: DecoderConfig) -> int:
    """Parameters a :class:`HookedDecoder` of ``cfg`` holds, from the config alone (nothing is built): the big
    matrices exactly, biases and norm gains closely. Cheap enough to run before anything is allocated."""
    d, n_layers = int(cfg.d_model), int(cfg.n_layers)
    heads = int(cfg.n_heads) + 2 * int(cfg.n_kv_heads)  # q, k, v
    attn = d * int(cfg.d_head) * heads + int(cfg.n_heads) * int(cfg.d_head) * d + int(cfg.d_head) * heads + d
    mats = 3 if cfg.gated else 2

    def mlp(width: int) -> int:
        return mats * d * width + 2 * width + d

    dense = mlp(int(cfg.d_mlp))
    n_moe = 0 if not cfg.n_experts else n_layers if cfg.moe_layers is None else len(cfg.moe_layers)
    moe = int(cfg.n_experts) * (mlp(int(cfg.d_expert or cfg.d_mlp)) + d)
    if cfg.d_shared_expert:
        moe += mlp(int(cfg.d_shared_expert)) + d
    embed = int(cfg.d_vocab) * d * (1 if cfg.tie_embeddings else 2) + int(cfg.d_vocab)
    pos = (int(cfg.n_ctx) + int(cfg.pos_offset)) * d if cfg.positional in ("learned", "sinusoidal") else 0
    return n_layers * (attn + 4 * d) + n_moe * moe + (n_layers - n_moe) * dense + embed + pos + 2 * d


def check_config_fits(cfg: DecoderConfig, source: str, copies: int = 2) -> None:
    """Refuse, before anything is allocated, a config whose model will not fit in free CPU memory (``copies``:
    the weights as read plus the model they are copied into). A config.json saying ``n_layers: 1000000`` or
    ``d_vocab: 1e9`` is refused in one line, with the estimate, instead of a minutes-long build or a crash."""
    from interp.loading.families import check_memory, estimate_bytes

    n = estimate_parameters(cfg)
    extra = int(cfg.n_ctx) * int(cfg.d_model) * 8 * 2 if cfg.positional == "sinusoidal" else 0  # float64 table
    check_memory(copies * estimate_bytes(n, cfg.torch_dtype) + extra, "cpu",
                 f"{source}: this config ({_count(n)} parameters in {cfg.dtype})",
                 "check its sizes (d_model, d_vocab, n_ctx, n_layers ...) or use a machine with more memory")


def stored_parameters(path: Path) -> int | None:
    """Values held by a safetensors file, from its header alone (no tensor is read); None if unreadable."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 - not a mapping
    except Exception:  # noqa: BLE001 - a damaged file: read_weights says what is wrong with it
        return None


def check_config_matches_weights(cfg: DecoderConfig, config: Path, weights: Path) -> None:
    """Refuse a config.json describing a far larger model than model.safetensors holds (an edited or swapped
    config): it would be built, maybe for minutes and gigabytes, only to fail on the first tensor's shape."""
    stored = stored_parameters(weights)
    if stored is None:
        return
    expected = estimate_parameters(cfg)
    if cfg.positional == "sinusoidal":  # computed, never stored
        expected -= int(cfg.n_ctx) * int(cfg.d_model)
    if expected > 1.25 * stored + 10_000:
        raise InterpError(f"{config}: describes a model of about {_count(expected)} parameters but {weights.name} "
                          f"holds {_count(stored)}; they do not belong together — restore config.json or the weights.")


def _count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


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
    from interp.io import check_input_path, path_stat

    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if path_stat(folder / name, "model", follow=False) is None:
            raise InterpError(f"{folder} is not an interp checkpoint: {name} is missing.")
        check_input_path(folder / name, "model", folder=False)  # a folder, link loop or FIFO: one line
    cfg = DecoderConfig.load(folder / CONFIG)
    cfg.source = {**cfg.source, "path": str(folder.resolve())}  # lets tools save artefacts (e.g. a tuned lens) beside it
    check_config_matches_weights(cfg, folder / CONFIG, folder / WEIGHTS)
    check_config_fits(cfg, str(folder / CONFIG))
    tokenizer = None
    if path_stat(folder / TOKENIZER, "model", follow=False) is not None:
        tokenizer = read_tokenizer(folder / TOKENIZER)
    model = empty_model(cfg, tokenizer)
    state = read_weights(folder / WEIGHTS)
    check_finite(state.items(), str(folder / WEIGHTS))
    load_state(model, state, str(folder / WEIGHTS))
    model.eval()
    return model.to(device) if device is not None else model
