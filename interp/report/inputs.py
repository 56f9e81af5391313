"""What every front end (CLI, probe scripts, reports, dashboard) does before an analyzer runs.

One place loads a model from a user's spelling of it, checks a prompt and turns it into token ids,
so all front ends accept the same inputs and reject bad ones with the same one-line message.

A model without a tokenizer (the random stand-in that ``interp.load()`` gives until a trained model
ships) would make every text prompt an error. When its vocabulary covers the 256 byte values, we
attach a byte tokenizer (token id = UTF-8 byte) so prompts still work and tokens still read as text;
``model_summary`` says so, so nobody mistakes it for a trained tokenizer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from interp.errors import InterpError

__all__ = [
    "MAX_PROMPT_CHARS",
    "attach_byte_tokenizer",
    "cap_count",
    "check_device",
    "encode_prompt",
    "load_model",
    "model_label",
    "model_summary",
    "read_corpus",
    "read_prompts",
    "resolve_index",
    "str_tokens",
]

# A prompt longer than this is almost surely a pasted file; refuse before tokenizing it.
MAX_PROMPT_CHARS = 20_000


def byte_tokenizer():
    """A `tokenizers.Tokenizer` whose ids are the UTF-8 bytes of the text (no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from interp.tokenize import byte_to_unicode

    table = byte_to_unicode()
    tok = Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def attach_byte_tokenizer(model):
    """Give the random byte-level stand-in (``random-tiny``) its byte tokenizer (in place); returns the model.

    Only that model: a trained checkpoint saved without its tokenizer.json would turn text into garbage ids
    under a byte tokenizer, so it stays tokenizer-less and text input fails with a message saying so."""
    if (getattr(model, "tokenizer", None) is None and int(model.cfg.d_vocab) >= 256
            and str(model.cfg.name).startswith("random-tiny")):
        model.tokenizer = byte_tokenizer()
        model._interp_byte_tokenizer = True
    return model


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """``device`` if this machine has it; otherwise one clear error (before any model is loaded)."""
    if device is None or str(device).strip() == "":
        return None
    try:
        dev = torch.device(str(device).strip())
    except (RuntimeError, ValueError):
        raise InterpError(f"{flag}: {device!r} is not a torch device; use cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InterpError(f"{flag} {device}: CUDA is not available here (torch {torch.__version__}, "
                              f"{'a CPU-only build' if torch.version.cuda is None else 'no GPU visible'}); use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InterpError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered 0..{torch.cuda.device_count() - 1}.")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InterpError(f"{flag} {device}: Apple's MPS is not available on this machine; use --device cpu.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InterpError(f"{flag} {device}: interp runs on cpu, cuda or mps; given {dev.type!r}.")
    return str(dev)


def resolve_index(value: int | None, size: int, flag: str, what: str) -> int | None:
    """A layer/head index as Python reads it (−1 = the last), returned non-negative so labels show the real
    index; out of range is an error naming the range and the model's size (``check_index`` does the check)."""
    if value is None:
        return None
    from interp.analysis._inputs import check_index

    return check_index(f"{flag} (the model has {size} {what})", value, size)


def cap_count(value: int, limit: int, flag: str, what: str) -> int:
    """``min(value, limit)``, saying so on stderr when it caps: a silently shorter table reads as a bug."""
    if value > limit:
        print(f"interp: note: {flag} {value} is more than the {limit} {what}; showing all {limit}.", file=sys.stderr)
        return limit
    return value


def load_model(spec: str | Path | None = None, device: str | None = None):
    """``interp.load(spec)`` for a front end: ``None``/``""``/``"default"`` is the shipped default model.

    Unknown names and paths raise :class:`InterpError` (from ``interp.load``) naming what was given.
    """
    import interp

    device = check_device(device)

    if isinstance(spec, str) and spec.strip().lower() in ("", "default"):
        spec = None
    if isinstance(spec, (str, Path)):
        spec = str(spec).strip()
        p = Path(spec).expanduser()
        if p.exists() and not p.is_dir():
            raise InterpError(f"model: {spec!r} is a file; give a model folder (config.json + weights) or a zoo name.")
        # Anything spelled like a path must exist here; only a bare "org/name" may mean a hub id.
        looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
        if looks_like_path and not p.exists():
            raise InterpError(f"model: no folder {spec!r}; give an existing model folder or a zoo name.")
        if p.exists():
            spec = str(p)
    model = interp.load(spec, device=device)
    model.eval()
    model._interp_folder = _model_folder(spec)  # where its held-out text (the default neuron corpus) lives
    return attach_byte_tokenizer(model)


def _model_folder(spec) -> Path | None:
    from interp.loading import ZOO, default_model_name

    if spec is None:
        return ZOO / default_model_name()
    if isinstance(spec, (str, Path)):
        p = Path(spec).expanduser()
        if p.is_dir():
            return p
        if (ZOO / str(spec)).is_dir():
            return ZOO / str(spec)
    return None


HELDOUT = "heldout.txt"


def read_corpus(model, corpus: str | Path | None = "default") -> tuple[str, str] | None:
    """The text neuron pages scan, as ``(name, text)``; None when there is none.

    ``"default"``: the model folder's held-out text (``heldout.txt``, text the model was not trained
    on), or None when the folder has none. Otherwise a UTF-8 text file; a missing or unreadable file is
    an :class:`InterpError` naming it.
    """
    if corpus is None:
        return None
    if isinstance(corpus, str) and corpus == "default":
        folder = getattr(model, "_interp_folder", None)
        path = Path(folder) / HELDOUT if folder is not None else None
        if path is None or not path.is_file():
            return None
        return f"{path.parent.name}/{HELDOUT} (held-out text)", path.read_text(encoding="utf-8")
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise InterpError(f"--corpus: no such text file {str(corpus)!r} (give a UTF-8 .txt file, or 'default').")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InterpError(f"--corpus: {str(corpus)!r} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    if not text.strip():
        raise InterpError(f"--corpus: {str(corpus)!r} is empty; give a file with text to scan.")
    return path.name, text


def model_label(spec: str | None) -> str:
    """How a model spec is shown to people (``None`` -> the default's name)."""
    if spec in (None, "", "default"):
        from interp.loading import default_model_name

        return f"default ({default_model_name()})"
    return str(spec)


def encode_prompt(model, prompt: str, *, name: str = "prompt") -> torch.Tensor:
    """Check ``prompt`` and return its ids ``LongTensor [1, pos]``.

    Empty, whitespace-only, over-long (more tokens than ``n_ctx``) and non-text prompts raise
    :class:`InterpError` naming the limit and what was given.
    """
    if not isinstance(prompt, str):
        raise InterpError(f"{name}: expected text; given {type(prompt).__name__}.")
    if not prompt.strip():
        raise InterpError(f"{name}: expected non-empty text; given {prompt!r}.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InterpError(f"{name}: at most {MAX_PROMPT_CHARS} characters; given {len(prompt)}.")
    tokens = model.to_tokens(prompt)  # a model without a tokenizer says so (it takes token ids only)
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[1] > n_ctx:
        raise InterpError(
            f"{name}: the model reads at most n_ctx={n_ctx} tokens; the prompt is {tokens.shape[1]} tokens. Shorten it."
        )
    return tokens[:1]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file, one per line; blank lines and lines starting with ``#`` are skipped."""
    p = Path(path)
    if not p.is_file():
        raise InterpError(f"--prompts: no such file {str(path)!r}.")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InterpError(f"--prompts: {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    prompts = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise InterpError(f"--prompts: {str(path)!r} holds no prompts (one per line; # starts a comment).")
    return prompts


def str_tokens(model, tokens: torch.Tensor) -> list[str]:
    """Display strings of one sequence of ids (from the analyzers' shared helper)."""
    from interp.analysis._inputs import str_tokens as _str_tokens

    return _str_tokens(model, tokens.reshape(-1))


def n_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def model_summary(model) -> dict:
    """The configuration a reader needs to interpret the analyses, as an ordered dict of display values."""
    cfg = model.cfg
    tok = getattr(model, "tokenizer", None)
    if getattr(model, "_interp_byte_tokenizer", False):
        tok_desc = "none shipped: text is read as UTF-8 bytes (id = byte value)"
    elif tok is None:
        tok_desc = "none (token ids only)"
    else:
        from interp.tokenize import backend_tokenizer

        tok = backend_tokenizer(tok)  # describe the `tokenizers` model, not the transformers wrapper
        size = tok.get_vocab_size() if hasattr(tok, "get_vocab_size") else len(tok)
        tok_desc = f"{type(tok).__name__}, {size} tokens"
    arch = [cfg.norm, f"{cfg.norm_placement}-norm", cfg.act + (" (gated)" if cfg.gated else ""),
            f"{cfg.positional} positions"]
    if cfg.parallel_residual:
        arch.append("parallel residual")
    if cfg.n_kv_heads != cfg.n_heads:
        arch.append(f"{cfg.n_kv_heads} kv heads")
    return {
        "name": str(cfg.name),
        "parameters": n_parameters(model),
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "n_heads": int(cfg.n_heads),
        "d_head": int(cfg.d_head),
        "d_mlp": int(cfg.d_mlp),
        "d_vocab": int(cfg.d_vocab),
        "n_ctx": int(cfg.n_ctx),
        "architecture": ", ".join(arch),
        "tokenizer": tok_desc,
        "dtype": str(cfg.dtype),
    }
