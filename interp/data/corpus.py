"""Streaming corpora: documents from files, folders, JSONL/Parquet, `datasets` datasets or memory, as token windows.

Three steps, each lazy:

1. :class:`Corpus` yields *raw* documents in a fixed order (a ``str`` or 1-D token ids): a text file (one
   document, or several split on ``doc_sep``), a folder (every text file a document; JSONL/Parquet files
   their rows), a JSONL or Parquet file (one row, field ``text_field``, per document; read by `datasets`
   in streaming mode), a saved `datasets` folder (``load_from_disk``), a `datasets` ``Dataset`` /
   ``IterableDataset`` (a hub id where a hub is reachable: ``datasets.load_dataset(..., streaming=True)``
   and pass the result), or in-memory texts / token tensors. ``fingerprint()`` hashes the raw content, so a
   checkpoint or a cached result can tell whether it belongs to this corpus before anything is tokenized.
2. :func:`tokenized` tokenizes them in a background thread (``tokenizers`` encodes batches in Rust
   without holding the GIL), so the next documents are ready while the model runs.
3. :func:`document_windows` cuts one document into windows of at most ``seq_len`` tokens that never
   cross into another document. Consecutive windows of a long document overlap by ``overlap`` tokens;
   the overlap is context only (not *scored*), so every token is scored exactly once and, past the
   first window, with at least ``overlap`` tokens of its own document before it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from interp.errors import InterpError

__all__ = ["Corpus", "Window", "as_corpus", "check_text_file", "document_windows", "read_text_file", "tokenized"]

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")


# --- text files: the one check that a file is text, shared by every front end --------------------------------

_HEAD = 1 << 16  # bytes of a text file checked before a scan starts (the rest is checked as it is read)


def _check_text(data: bytes, path, flag: str, final: bool) -> None:
    """Refuse bytes that are not UTF-8 text: a NUL byte (binary files have them; text never does) or an invalid
    UTF-8 sequence. ``final=False``: ``data`` is a head, which may end inside a character."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise InterpError(f"{flag}: {str(path)!r} is a binary file (a NUL byte at byte {nul}), not UTF-8 text; "
                          "give a text, JSONL or Parquet file.")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError as e:
        raise InterpError(f"{flag}: {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); give a text, "
                          "JSONL or Parquet file (or convert it: iconv -t UTF-8).") from None


def check_text_file(path, flag: str = "corpus") -> None:
    """Fail now, in one line, if ``path`` does not start like UTF-8 text (a binary file, another encoding): its
    first 64 KiB are read, so a scan is refused before the model loads rather than after minutes of garbage."""
    with open(path, "rb") as f:
        _check_text(f.read(_HEAD), path, flag, final=False)


def read_text_file(path, flag: str = "corpus") -> str:
    """The whole text of ``path``, refusing binary / non-UTF-8 files the same way everywhere."""
    data = Path(path).read_bytes()
    _check_text(data, path, flag, final=True)
    return data.decode("utf-8")


class Corpus:
    """An ordered, re-iterable stream of raw documents (``str`` or 1-D ``LongTensor``).

    Build one with :func:`as_corpus` (or the ``from_*`` constructors). ``n_chars`` / ``n_tokens`` are size
    hints for a progress bar's ETA when known up front (``None`` otherwise).
    """

    def __init__(self, docs: Callable[[], Iterable], *, description: str, fingerprint: Callable[[], str] | None = None,
                 n_chars: int | None = None, n_tokens: int | None = None):
        self._docs = docs
        self._fingerprint = fingerprint
        self.description = description
        self.n_chars, self.n_tokens = n_chars, n_tokens

    def __iter__(self) -> Iterator:
        return iter(self._docs())

    def __repr__(self) -> str:
        return f"Corpus({self.description})"

    def fingerprint(self) -> str:
        """sha256 of the raw documents (text bytes or token ids) in order: one pass over the source."""
        if self._fingerprint is not None:
            return self._fingerprint()
        h = hashlib.sha256()
        for doc in self:
            if isinstance(doc, str):
                b = doc.encode("utf-8", "surrogatepass")
                h.update(b"s" + len(b).to_bytes(8, "little") + b)
            else:
                t = torch.as_tensor(doc).to("cpu", torch.long).contiguous()
                h.update(b"t" + t.numel().to_bytes(8, "little") + t.numpy().tobytes())
        return h.hexdigest()

    # --- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_memory(cls, items) -> Corpus:
        """Texts, token id lists / 1-D tensors (one document each) or 2-D tensors (one document per row)."""
        docs: list = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                docs.append(item)
                continue
            t = item if isinstance(item, torch.Tensor) else torch.as_tensor(item)
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.ndim not in (1, 2):
                raise InterpError(
                    f"corpus[{i}]: expected a string or integer token ids of shape [pos] or [batch, pos]; "
                    f"given dtype={t.dtype}, shape={tuple(t.shape)}")
            t = t.detach().to("cpu", torch.long)
            docs.extend([t] if t.ndim == 1 else list(t))
        n_chars = sum(len(d) for d in docs if isinstance(d, str))
        n_tok = None if any(isinstance(d, str) for d in docs) else sum(len(d) for d in docs)
        return cls(lambda: docs, description=f"{len(docs)} documents in memory", n_chars=n_chars or None,
                   n_tokens=n_tok)

    @classmethod
    def from_path(cls, path, *, text_field: str = "text", doc_sep: str | None = None, split: str = "train") -> Corpus:
        """A text / JSONL / Parquet file, a folder of them, or a saved `datasets` folder."""
        from interp.io import check_input_path

        p = check_input_path(path, "corpus")  # a regular file or a folder: a FIFO or device would never end
        if p.is_dir():
            if any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
                import datasets

                ds = datasets.load_from_disk(str(p))
                return cls.from_dataset(ds, text_field=text_field, split=split)
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES + TABLE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise InterpError(f"corpus: folder {str(p)!r} holds no {'/'.join(TEXT_SUFFIXES + TABLE_SUFFIXES)} files")
        else:
            files = [p]
        for f in files:
            if f.suffix.lower() not in TEXT_SUFFIXES + TABLE_SUFFIXES:
                raise InterpError(f"corpus: {str(f)!r} is not a text ({'/'.join(TEXT_SUFFIXES)}), JSONL or Parquet file")
            if f.suffix.lower() != ".parquet":  # text and JSON lines are UTF-8 text: a binary file is refused now
                check_text_file(f)

        def docs():
            for f in files:
                yield from _file_docs(f, text_field, doc_sep)

        def fingerprint():  # file bytes in order, plus how they are split: cheaper than decoding rows
            h = hashlib.sha256(json.dumps([text_field, doc_sep]).encode())
            for f in files:
                h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode() + b"\0")
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
            return h.hexdigest()

        n_chars = sum(f.stat().st_size for f in files)  # bytes: close enough for an ETA
        return cls(docs, description=f"{p} ({len(files)} file{'s' * (len(files) != 1)})", fingerprint=fingerprint,
                   n_chars=n_chars)

    @classmethod
    def from_dataset(cls, ds, *, text_field: str = "text", split: str = "train") -> Corpus:
        """A `datasets` ``Dataset``, ``IterableDataset`` or ``DatasetDict`` (``split`` picks one)."""
        import datasets

        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            if split not in ds:
                raise InterpError(f"split: must be one of {sorted(ds)}; given {split!r}")
            ds = ds[split]
        cols = ds.column_names
        if cols is not None and text_field not in cols:
            raise InterpError(f"text_field: the dataset's columns are {cols}; given {text_field!r}")
        fp = getattr(ds, "_fingerprint", None)
        return cls(lambda: _rows(ds, text_field), description=f"datasets {type(ds).__name__}",
                   fingerprint=(lambda: f"datasets:{fp}:{text_field}") if fp else None)


def _rows(ds, field: str):
    """The documents of a `datasets` dataset's rows. A streaming dataset's reader is closed when we stop early:
    one left open until exit can abort the interpreter at shutdown (pyarrow's threads)."""
    rows = iter(ds)
    try:
        for i, row in enumerate(rows):
            yield _row_doc(row, field, i)
    finally:
        _close(rows)


def _close(iterator) -> None:
    """Close a generator/reader we may leave before its end (a no-op for one that has no ``close``)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _row_doc(row: dict, field: str, i: int = 0):
    if field not in row:
        raise InterpError(f"text_field: row {i} has no field {field!r}; its fields are {sorted(row)}")
    v = row[field]
    if isinstance(v, str):
        return v
    try:  # a pre-tokenized column (e.g. input_ids): a list / array of integers
        t = None if isinstance(v, (int, float, dict)) or v is None else torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.ndim != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise InterpError(f"text_field: row {i}'s field {field!r} holds {type(v).__name__} ({str(v)[:40]!r}), not "
                          "text or a list of token ids; give the column that holds the text (--text-field)")
    return t.to(torch.long)


def _file_docs(f: Path, text_field: str, doc_sep: str | None):
    suffix = f.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = read_text_file(f)
        yield from ([text] if doc_sep is None else [d for d in text.split(doc_sep) if d.strip()])
        return
    import datasets

    kind = "parquet" if suffix == ".parquet" else "json"
    log = logging.getLogger("datasets")  # its JSON reader logs a parse error before raising: we say it in one line
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield from _rows(datasets.load_dataset(kind, data_files=str(f), split="train", streaming=True), text_field)
    except InterpError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow's parse errors name neither the file nor the fix
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InterpError(f"corpus: could not read {str(f)!r} as {'Parquet' if kind == 'parquet' else 'JSON lines'} "
                          f"({reason}); fix the file or give another one.") from None
    finally:
        log.setLevel(level)


def as_corpus(source, *, text_field: str = "text", doc_sep: str | None = None, split: str = "train") -> Corpus:
    """Anything a scan takes -> :class:`Corpus`.

    * a :class:`Corpus` (returned as is); a ``pathlib.Path`` (file or folder, see :meth:`Corpus.from_path`);
    * a `datasets` dataset (or dict of splits);
    * a ``str`` (one text document), a list of texts and/or token ids, a ``LongTensor`` ``[n, pos]`` (one
      document per row), or any other iterable of those (read once, into memory).

    >>> c = as_corpus(["one document", "another"])
    >>> list(c), c.n_chars
    (['one document', 'another'], 19)
    """
    if isinstance(source, Corpus):
        return source
    if isinstance(source, Path):
        return Corpus.from_path(source, text_field=text_field, doc_sep=doc_sep, split=split)
    try:
        import datasets

        if isinstance(source, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict,
                               datasets.IterableDatasetDict)):
            return Corpus.from_dataset(source, text_field=text_field, split=split)
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    if isinstance(source, (str, torch.Tensor)):
        source = [source]
    if not isinstance(source, Iterable):
        raise InterpError(
            "corpus: expected a path, a datasets dataset, a string, a list of strings or token ids, or a "
            f"LongTensor [n, pos]; given {type(source).__name__}")
    corpus = Corpus.from_memory(list(source))
    return corpus


# --- tokenizing in the background ------------------------------------------------------------------------


def _encoder(model):
    """docs (list of str) -> list of id lists, the way ``model.to_tokens`` encodes (BOS when configured)."""
    tok = getattr(model, "tokenizer", None)
    bos = getattr(model.cfg, "bos_token_id", None)

    def encode(texts: list[str]) -> list[list[int]]:
        if tok is None:
            raise InterpError("corpus: text needs a model with a tokenizer (model.tokenizer is None); "
                              "pass token ids instead")
        if hasattr(tok, "encode_batch") and not hasattr(tok, "convert_tokens_to_ids"):  # `tokenizers`
            ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        else:  # a transformers tokenizer
            ids = [list(tok.encode(t, add_special_tokens=False)) for t in texts]
        return [([bos] if bos is not None else []) + list(i) for i in ids]

    return encode


def tokenized(model, corpus: Corpus, *, select: Callable[[int], bool] | None = None, batch_docs: int = 64,
              prefetch: int = 256, stats: dict | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(index, ids)`` for the corpus's documents, tokenized in a background thread (ids: 1-D ``LongTensor``).

    ``index`` numbers the non-empty raw documents (an empty string or id list gets no number), so it is
    known without tokenizing; ``select(index)`` (default: all) picks the documents to tokenize, which is
    how a rank tokenizes only its own shards. Ids are checked against ``d_vocab``. ``stats`` (a dict), when
    given, is kept up to date with ``docs`` (non-empty documents seen), ``chars`` (raw characters of the
    selected ones) and ``tokens`` (ids produced), which a progress bar turns into an ETA.
    """
    encode = _encoder(model)
    d_vocab = int(model.cfg.d_vocab)
    out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    _END = object()
    stats = {} if stats is None else stats
    for key in ("docs", "chars", "tokens"):
        stats.setdefault(key, 0)

    def emit(i: int, t: torch.Tensor) -> bool:
        if t.numel() == 0:
            return True
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= d_vocab:
            raise InterpError(f"corpus document {i}: token ids must be in [0, d_vocab={d_vocab}); "
                              f"given range [{lo}, {hi}]")
        stats["tokens"] += t.numel()
        while not stop.is_set():
            try:
                out.put((i, t), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        docs = None
        try:
            pending: list[tuple[int, str]] = []

            def flush() -> bool:
                ok = True
                for (i, _), ids in zip(pending, encode([text for _, text in pending])):
                    ok = ok and emit(i, torch.tensor(ids, dtype=torch.long))
                pending.clear()
                return ok

            index = 0
            docs = iter(corpus)
            for doc in docs:
                if stop.is_set():
                    return
                if len(doc) == 0:
                    continue
                i, index = index, index + 1
                stats["docs"] = index
                if select is not None and not select(i):
                    continue
                if isinstance(doc, str):
                    stats["chars"] += len(doc)
                    pending.append((i, doc))
                    if len(pending) >= batch_docs and not flush():
                        return
                    continue
                if pending and not flush():  # keep document order across text and token items
                    return
                if not emit(i, torch.as_tensor(doc, dtype=torch.long).reshape(-1)):
                    return
            if pending:
                flush()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread, which re-raises it
            out.put(e)
            return
        finally:  # a streaming reader left open when we stop early can abort the interpreter at exit
            _close(docs)
        out.put(_END)

    thread = threading.Thread(target=work, name="interp-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# --- windows ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Tokens ``doc_tokens[offset : offset + len(tokens)]`` of document ``doc``; positions from ``scored_from``
    on are scored (earlier ones are overlap: context the previous window already scored)."""

    doc: int
    offset: int
    tokens: torch.Tensor
    scored_from: int


def document_windows(doc: int, tokens: torch.Tensor, seq_len: int, overlap: int = 0) -> list[Window]:
    """Cut one document into windows of at most ``seq_len`` tokens, each scoring a disjoint span.

    The first window scores all its tokens; each later one starts ``overlap`` tokens before the first
    token it scores, so together they score every token exactly once and no token past the first window
    is scored with less than ``overlap`` tokens of context.

    >>> ws = document_windows(0, torch.arange(10), seq_len=4, overlap=2)
    >>> [(w.offset, w.tokens.tolist(), w.scored_from) for w in ws]
    [(0, [0, 1, 2, 3], 0), (2, [2, 3, 4, 5], 2), (4, [4, 5, 6, 7], 2), (6, [6, 7, 8, 9], 2)]
    """
    if not 0 <= overlap < seq_len:
        raise InterpError(f"overlap: must be an int in [0, seq_len={seq_len}); given {overlap!r}")
    n = len(tokens)
    out = [Window(doc, 0, tokens[:seq_len], 0)]
    scored_end = min(n, seq_len)
    while scored_end < n:
        start = scored_end - overlap
        out.append(Window(doc, start, tokens[start:start + seq_len], overlap))
        scored_end = min(n, start + seq_len)
    return out
