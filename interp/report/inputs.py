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
    "check_prompts_fit",
    "context_length",
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
        from interp.io import path_stat

        path_stat(p, "--model")  # a name too long or a link loop: one line, not an OSError
        if p.exists() and not p.is_dir():
            raise InterpError(f"model: {spec!r} is a file; give a model folder (config.json + weights) or a zoo name.")
        # Anything spelled like a path must exist here; only a bare "org/name" may mean a hub id.
        looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
        if looks_like_path and not p.exists():
            raise InterpError(f"model: no folder {spec!r}; give an existing model folder or a zoo name.")
        if p.exists():
            spec = str(p)
    from interp.progress import StepLine

    with StepLine(f"loading model {spec if spec is not None else 'default'}"):  # seconds to a minute
        model = interp.load(spec, device=device)
    model.eval()
    model._interp_folder = _model_folder(spec)  # where its held-out text (the default neuron corpus) lives
    return attach_byte_tokenizer(model)


# Where a model folder's config.json states its context length: ours (n_ctx) and transformers' spellings.
_CONTEXT_KEYS = ("n_ctx", "max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def context_length(spec) -> int | None:
    """The context length of the model ``spec`` names, read from its folder's config.json without loading it
    (None where that is unknown: a hub id, a folder without a readable config)."""
    import json

    folder = _model_folder(None if isinstance(spec, str) and spec.strip().lower() in ("", "default") else spec)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (TypeError, OSError, ValueError):
        return None
    config = {**config.get("text_config", {}), **config} if isinstance(config, dict) else {}
    n = next((config[k] for k in _CONTEXT_KEYS if isinstance(config.get(k), int) and config[k] > 0), None)
    return int(n) if n else None


def check_prompts_fit(spec, prompts, name: str = "prompt") -> None:
    """Refuse a prompt longer than the model's context *before* the model loads (that takes seconds to minutes).

    Counts with the folder's tokenizer.json, special tokens left out, so a prompt refused here is too long
    however the model adds them; :func:`encode_prompt` checks the exact count once the model is loaded."""
    n_ctx = context_length(spec)
    folder = _model_folder(None if isinstance(spec, str) and spec.strip().lower() in ("", "default") else spec)
    if n_ctx is None or folder is None or not (folder / "tokenizer.json").is_file():
        return
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - an unreadable tokenizer is reported by the loader, with its reason
        return
    for prompt in prompts:
        if isinstance(prompt, str) and prompt.strip() and len(prompt) <= MAX_PROMPT_CHARS:
            n = len(tok.encode(prompt, add_special_tokens=False).ids)
            if n > n_ctx:
                raise InterpError(too_long(name, n_ctx, n, folder) + " (checked before loading the model).")


def too_long(name: str, n_ctx: int, n_tokens: int, folder: Path | None) -> str:
    """The refusal of a prompt of ``n_tokens`` > ``n_ctx``: the limit, and a zoo model that reads it, if one shares
    the tokenizer.json of the model ``folder``."""
    longer = _zoo_model_reading(n_tokens, folder / "tokenizer.json") if folder is not None else None
    fix = f"Shorten it, or use a longer-context model of the same tokenizer: --model {longer}" if longer else "Shorten it"
    return f"{name}: the model reads at most n_ctx={n_ctx} tokens; the prompt is {n_tokens} tokens. {fix}"


def _zoo_model_reading(n_tokens: int, tokenizer: Path) -> str | None:
    """The shortest-context zoo model that reads ``n_tokens`` tokens with the very same tokenizer.json (so the
    count holds for it too), e.g. docs-bible-austen-2l-2k for a long prompt to the default model; else None."""
    from interp.zoo import ZOO, zoo_models

    try:
        wanted = tokenizer.read_bytes()
    except OSError:
        return None
    fits = []
    for name in zoo_models():
        n_ctx = context_length(ZOO / name)
        tok = ZOO / name / "tokenizer.json"
        if n_ctx is not None and n_ctx >= n_tokens and tok.is_file() and tok.read_bytes() == wanted:
            fits.append((n_ctx, name))
    return min(fits)[1] if fits else None


def _model_folder(spec) -> Path | None:
    from interp.zoo import ZOO, default_model_name

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
# How each front end names the corpus arguments in its messages (the dashboard passes its own labels).
CORPUS_FLAGS = {"corpus": "--corpus", "split": "--corpus-split", "field": "--corpus-field"}
HUB_PREFIX = "hf:"


def read_corpus(model, corpus="default", *, split: str | None = None, field: str | None = None,
                flags: dict | None = None):
    """The corpus neuron pages scan, as ``(name, interp.data.Corpus)``; None when there is none.

    ``corpus`` is ``"default"`` (the model folder's held-out text ``heldout.txt``, text the model was not
    trained on: None when the folder has none), a path (a text file, a JSONL / Parquet file, a folder of
    them, or a ``save_to_disk`` `datasets` folder), ``hf:NAME[:CONFIG][:SPLIT]`` (a hub dataset, streamed;
    only where a hub is reachable), a `datasets` ``Dataset`` / ``DatasetDict``, an :class:`interp.data.Corpus`,
    or what this function returned (passed through). Only ``"default"`` needs ``model``.
    ``split`` picks a split of a dataset dict (needed when it has more than one) and ``field`` the text
    column of a table (default ``text``). Every source is read by :func:`interp.data.as_corpus`; what does
    not fit (a missing file, split or column, a source with no text) is an :class:`InterpError` naming the
    argument (``flags``: the names a front end shows), what exists and what was given.
    """
    from interp.data.corpus import TABLE_SUFFIXES, Corpus

    f = {**CORPUS_FLAGS, **(flags or {})}
    if corpus is None:
        return None
    if isinstance(corpus, Corpus):
        return corpus.description, corpus
    if isinstance(corpus, tuple) and len(corpus) == 2 and isinstance(corpus[1], Corpus):
        return corpus  # already read (a front end checks the corpus before it loads the model)
    if _is_dataset(corpus):
        return _dataset_corpus(corpus, f"datasets {type(corpus).__name__}", split, field, f)
    if isinstance(corpus, str) and corpus == "default":
        folder = getattr(model, "_interp_folder", None)
        path = Path(folder) / HELDOUT if folder is not None else None
        if path is None or not path.is_file():
            return None
        _no_table_options(f"{path.parent.name}/{HELDOUT}", "a text file", split, field, f)
        return f"{path.parent.name}/{HELDOUT} (held-out text)", Corpus.from_path(path)
    if isinstance(corpus, str) and corpus.startswith(HUB_PREFIX):
        return _hub_corpus(corpus, split, field, f)
    path = Path(corpus).expanduser()
    from interp.io import path_stat

    if path_stat(path, f["corpus"]) is None:
        raise InterpError(f"{f['corpus']}: no such file or folder {str(corpus)!r} (give a text, JSONL or Parquet "
                          f"file, a folder of them, a saved datasets folder, {HUB_PREFIX}NAME[:CONFIG]:SPLIT or 'default').")
    if path.is_dir() and any((path / m).is_file() for m in ("dataset_dict.json", "dataset_info.json", "state.json")):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - a damaged folder: say which, in one line
            raise InterpError(f"{f['corpus']}: {str(path)!r} is not a readable saved datasets folder "
                              f"({_first_line(e)})") from None
        return _dataset_corpus(ds, str(corpus), split, field, f)
    from interp.data.corpus import read_text_file
    from interp.io import check_input_path

    check_input_path(path, f["corpus"])  # a FIFO or device would block or never end
    if path.is_file() and path.suffix.lower() not in TABLE_SUFFIXES:
        _no_table_options(path.name, "a text file", split, field, f)
        text = read_text_file(path, f["corpus"])
        if not text.strip():
            raise InterpError(f"{f['corpus']}: {str(corpus)!r} is empty; give a file with text to scan.")
        return path.name, Corpus.from_memory([text])  # one document, as the default held-out text
    kind = "a folder of files" if path.is_dir() else "one table"
    _no_table_options(str(corpus), kind, split, None, f)
    if path.is_file():
        _check_table_field(path, field or "text", f)
    try:
        corpus_ = Corpus.from_path(path, text_field=field or "text")
    except InterpError as e:
        raise InterpError(f"{f['corpus']}: {str(e).removeprefix('corpus: ')}") from None
    name = str(corpus) + ("" if field is None else f" (field {field!r})")
    return name, _nonempty(corpus_, name, f)


def _is_dataset(obj) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(obj, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict,
                            datasets.IterableDatasetDict))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _no_table_options(name: str, kind: str, split, field, f: dict) -> None:
    """A split or column asked of a source that has none would be silently ignored: refuse it."""
    if split is not None:
        raise InterpError(f"{f['split']}: {name} is {kind}, which has no splits; given {split!r}")
    if field is not None:
        raise InterpError(f"{f['field']}: {name} is {kind}, which has no columns; given {field!r}")


def _check_table_field(path: Path, field: str, f: dict) -> None:
    """The column exists in a JSONL / Parquet file (its first row: `datasets` reads it streaming)."""
    import datasets

    kind = "parquet" if path.suffix.lower() == ".parquet" else "json"
    if kind == "parquet":
        _check_parquet_field(path, field, f)
        return
    rows = None
    try:
        rows = iter(datasets.load_dataset(kind, data_files=str(path), split="train", streaming=True))
        first = next(rows, None)
    except Exception as e:  # noqa: BLE001 - a malformed file: one line naming it
        raise InterpError(f"{f['corpus']}: could not read {str(path)!r} as {kind} ({_first_line(e)})") from None
    finally:
        getattr(rows, "close", lambda: None)()  # left open until exit, pyarrow's reader can abort the interpreter
    if first is None:
        raise InterpError(f"{f['corpus']}: {str(path)!r} has no rows; give a table with text to scan.")
    if field not in first:
        raise InterpError(f"{f['field']}: {str(path)!r} has columns {sorted(first)}; given {field!r}")


def _check_parquet_field(path: Path, field: str, f: dict) -> None:
    """A Parquet file's columns and row count from its footer alone: no reader threads are started (a streaming
    `datasets` reader left behind by an error could abort the interpreter at exit)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(str(path))
    except Exception as e:  # noqa: BLE001 - a malformed file: one line naming it
        raise InterpError(f"{f['corpus']}: could not read {str(path)!r} as parquet ({_first_line(e)})") from None
    if meta.num_rows == 0:
        raise InterpError(f"{f['corpus']}: {str(path)!r} has no rows; give a table with text to scan.")
    columns = meta.schema.to_arrow_schema().names
    if field not in columns:
        raise InterpError(f"{f['field']}: {str(path)!r} has columns {sorted(columns)}; given {field!r}")


def _dataset_corpus(ds, label: str, split, field, f: dict):
    """A `datasets` dataset (or dict of splits) as ``(name, Corpus)``, its split and text column checked."""
    import datasets

    from interp.data.corpus import Corpus

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = sorted(ds)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in ds:
            given = "none" if split is None else repr(split)
            raise InterpError(f"{f['split']}: {label} has splits {splits}; given {given}")
        ds, label = ds[split], f"{label} [{split}]"
    elif split is not None and str(getattr(ds, "split", None) or "") != split:
        own = getattr(ds, "split", None)
        raise InterpError(f"{f['split']}: {label} is one dataset{f' (split {str(own)!r})' if own else ''}, not a "
                          f"dict of splits; given {split!r}")
    field = field or "text"
    cols = ds.column_names
    if cols is not None:
        if field not in cols:
            raise InterpError(f"{f['field']}: {label}'s columns are {cols}; given {field!r}")
        feat = (ds.features or {}).get(field)
        if isinstance(feat, datasets.Value) and feat.dtype not in ("string", "large_string"):
            raise InterpError(f"{f['field']}: column {field!r} of {label} holds {feat.dtype}, not text or token ids; "
                              f"its columns are {cols}")
    name = f"{label} (field {field!r})"
    return name, _nonempty(Corpus.from_dataset(ds, text_field=field), name, f)


def _hub_corpus(spec: str, split, field, f: dict):
    """``hf:NAME[:CONFIG][:SPLIT]``: a hub dataset streamed through `datasets` (no download of the whole)."""
    import datasets

    parts = spec[len(HUB_PREFIX):].split(":")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise InterpError(f"{f['corpus']}: spell a hub dataset {HUB_PREFIX}NAME[:CONFIG][:SPLIT]; given {spec!r}")
    name, config, own = parts[0], parts[1] if len(parts) == 3 else None, parts[-1] if len(parts) > 1 else None
    if own is not None and split is not None and own != split:
        raise InterpError(f"{f['split']}: {spec!r} names split {own!r} already; given {split!r}")
    split = own or split
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad config or split: one line
        raise InterpError(f"{f['corpus']}: could not open hub dataset {name!r}"
                          f"{f' config {config!r}' if config else ''}{f' split {split!r}' if split else ''} "
                          f"({_first_line(e)})") from None
    return _dataset_corpus(ds, f"{HUB_PREFIX}{name}" + (f":{config}" if config else ""), split, field, f)


def _nonempty(corpus, name: str, f: dict):
    """``corpus`` if it has a non-empty document (read up to the first one), else an error naming it."""
    docs = iter(corpus)
    try:
        found = any(len(doc) for doc in docs)
    except InterpError as e:  # a row without the field, a bad token column
        raise InterpError(f"{f['field']}: {name}: {str(e).split(': ', 1)[-1]}") from None
    finally:
        getattr(docs, "close", lambda: None)()  # stop a streaming reader now, not at exit
    if not found:
        raise InterpError(f"{f['corpus']}: {name} holds no text to scan (every document is empty)")
    return corpus


def model_label(spec: str | None) -> str:
    """How a model spec is shown to people (``None`` -> the default's name)."""
    if spec in (None, "", "default"):
        from interp.zoo import default_model_name

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
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: undecodable bytes smuggled in (surrogateescape)
        raise InterpError(f"{name}: not valid Unicode text (a lone surrogate {prompt[e.start]!r} at character "
                          f"{e.start}); pass text decoded from UTF-8.") from None
    tokens = model.to_tokens(prompt)  # a model without a tokenizer says so (it takes token ids only)
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[1] > n_ctx:
        folder = model.cfg.source.get("path") if isinstance(model.cfg.source, dict) else None
        raise InterpError(too_long(name, n_ctx, tokens.shape[1], Path(folder) if folder else None) + ".")
    return tokens[:1]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file, one per line; blank lines and lines starting with ``#`` are skipped."""
    from interp.data.corpus import read_text_file
    from interp.io import check_input_path

    lines = read_text_file(check_input_path(path, "--prompts", folder=False), "--prompts").splitlines()
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
    if getattr(cfg, "path", "native") == "universal":  # transformers' modules, wrapped (interp.loading.universal)
        kinds = dict.fromkeys(cfg.layer_kinds)
        arch = [(f"universal path ({cfg.architecture}: {', '.join(kinds)} layers; neuron, superposition and "
                 "patching sections need a native family)")]
    else:
        arch = [cfg.norm, f"{cfg.norm_placement}-norm", cfg.act + (" (gated)" if cfg.gated else ""),
                f"{cfg.positional} positions"]
    if cfg.parallel_residual and getattr(cfg, "path", "native") != "universal":
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
