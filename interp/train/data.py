"""Token files and training windows (seed 002: input and target are the same window shifted by one).

Storage. A corpus is tokenized once into a folder::

    meta.json    dtype, vocab size, eos id, tokens and documents per split, tokenizer hash
    train.bin    the training documents' tokens, each document followed by <|endoftext|>
    val.bin      the held-out documents, same layout

The ``.bin`` files are flat little-endian uint16 (uint32 when the vocabulary needs it) read through
``np.memmap``, so a 100 MB corpus costs page cache, not Python lists. Validation is held out *by
document*: a document is wholly in one split, so no validation text leaks into training, and keeping
the splits in separate files means no window can ever straddle the two.

Windows. Window ``i`` of a split covers tokens ``[i*stride, i*stride + context_length + 1)``; the input
is its first ``context_length`` tokens and the target its last ``context_length`` — target ``t`` is
input ``t+1`` (teacher forcing). ``stride < context_length`` overlaps windows (more, but correlated,
samples); ``stride == context_length`` tiles the split exactly once.

Batches. The training order is a function of ``(seed, step)`` alone — a fresh permutation of the
windows per epoch — so a resumed run sees exactly the batches an uninterrupted run would, without
saving a sampler state.

Repeated-span curriculum. Small models trained on plain text are slow to form induction heads
(attend to the token after an earlier occurrence of the current token, copy it). Mixing rows in which
a span of the row's own text is repeated later in the row makes that mechanism pay off early. With
probability ``repeat_prob`` a row gets one copy of a random span of its first part pasted further on
(the copy overwrites the text there); the rest of the row stays natural text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interp.errors import InterpError
from interp.io import atomic_path, atomic_write_text

META = "meta.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id: uint16 up to 65,536 tokens, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def is_val_document(index: int, key: str, val_fraction: float, seed: int) -> bool:
    """Deterministic document-level split: a hash of (seed, document key) decides, not its position.

    Hashing the content key (rather than drawing from an RNG in order) keeps a document in the same
    split when the corpus grows or is reordered.
    """
    h = hashlib.blake2b(f"{seed}:{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


def write_token_files(
    docs: Iterable[list[int] | np.ndarray],
    out_dir: str | Path,
    eos_id: int,
    vocab_size: int,
    val_fraction: float = 0.01,
    seed: int = 0,
    keys: Iterable[str] | None = None,
    extra_meta: dict | None = None,
) -> dict:
    """Stream tokenized documents into ``train.bin`` / ``val.bin`` (+ ``meta.json``), atomically.

    ``docs`` yields each document's token ids (without EOS; one is appended to each). ``keys``
    (default: the document's index) feed the split hash. Returns the meta dict.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InterpError(f"val_fraction must be in [0, 1); got {val_fraction!r}.")
    if not 0 <= eos_id < vocab_size:
        raise InterpError(f"eos_id must be in [0, {vocab_size - 1}]; got {eos_id}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    counts = {s: {"tokens": 0, "documents": 0} for s in SPLITS}
    val_docs: list[str] = []
    keys_iter = iter(keys) if keys is not None else None
    with (atomic_path(out_dir / "train.bin") as train_tmp, atomic_path(out_dir / "val.bin") as val_tmp,
          open(train_tmp, "wb") as f_train, open(val_tmp, "wb") as f_val):
        for i, ids in enumerate(docs):
            key = next(keys_iter) if keys_iter is not None else str(i)
            arr = np.asarray(ids, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise InterpError(f"document {key!r} has token ids outside [0, {vocab_size - 1}].")
            split = "val" if is_val_document(i, key, val_fraction, seed) else "train"
            np.append(arr, eos_id).astype(dtype).tofile(f_val if split == "val" else f_train)
            counts[split]["tokens"] += arr.size + 1
            counts[split]["documents"] += 1
            if split == "val":
                val_docs.append(key)
    meta = {
        "format": "interp-tokens-v1",
        "dtype": dtype.name,
        "vocab_size": int(vocab_size),
        "eos_id": int(eos_id),
        "val_fraction": val_fraction,
        "split_seed": seed,
        "splits": counts,
        "val_documents": val_docs,
        **(extra_meta or {}),
    }
    atomic_write_text(out_dir / META, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


class TokenData:
    """The memory-mapped splits of a token folder written by :func:`write_token_files`."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / META).is_file():
            raise InterpError(f"data folder must hold {META}, train.bin and val.bin (from `prepare`); "
                              f"no {META} in {str(folder)!r}.")
        self.folder = folder
        self.meta = json.loads((folder / META).read_text(encoding="utf-8"))
        self.dtype = np.dtype(self.meta["dtype"])
        self.eos_id = int(self.meta["eos_id"])
        self.vocab_size = int(self.meta["vocab_size"])

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise InterpError(f"split must be one of {list(SPLITS)}; got {name!r}.")
        path = self.folder / f"{name}.bin"
        n = path.stat().st_size // self.dtype.itemsize
        if n == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))


@dataclass(frozen=True)
class Windows:
    """Input/target windows over one split's token stream (any 1-D integer array, memmap included)."""

    tokens: np.ndarray
    context_length: int
    stride: int

    def __post_init__(self):
        if not isinstance(self.context_length, int) or self.context_length < 1:
            raise InterpError(f"context_length must be an integer >= 1; got {self.context_length!r}.")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise InterpError(f"stride must be an integer >= 1; got {self.stride!r}.")

    def __len__(self) -> int:
        # A window needs context_length + 1 tokens (its last target).
        span = self.context_length + 1
        n = len(self.tokens)
        return 0 if n < span else (n - span) // self.stride + 1

    def start(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise InterpError(f"window index must be in [0, {len(self) - 1}]; got {i}.")
        return i * self.stride

    def rows(self, indices: Iterable[int]) -> np.ndarray:
        """``[len(indices), context_length + 1]`` int64: each window plus its final target token."""
        span = self.context_length + 1
        return np.stack([np.asarray(self.tokens[self.start(int(i)): self.start(int(i)) + span], dtype=np.int64)
                         for i in indices])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = torch.from_numpy(self.rows([i])[0])
        return row[:-1], row[1:]


def split_rows(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [b, n+1] -> (inputs [b, n], targets [b, n]), target t = input t+1."""
    t = torch.from_numpy(np.ascontiguousarray(rows))
    return t[:, :-1], t[:, 1:]


def add_repeated_spans(rows: np.ndarray, rng: np.random.Generator, prob: float, min_span: int = 8,
                       max_span: int | None = None, random_frac: float = 0.0,
                       vocab: tuple[int, int] | None = None) -> np.ndarray:
    """Paste, in a random ``prob`` share of rows, a copy of one of the row's own spans further on.

    Span length is uniform in ``[min_span, max_span]`` (default: a quarter of the row); the source
    span starts anywhere that leaves room for the copy after it. In a ``random_frac`` share of those
    rows the source span is first overwritten with random token ids from ``vocab = (low, high)``:
    then only copying can predict the second occurrence (in text, bigram statistics help too), the
    purest signal for an induction head. Returns a new array.
    """
    if not 0.0 <= prob <= 1.0:
        raise InterpError(f"repeat_prob must be in [0, 1]; got {prob!r}.")
    if not 0.0 <= random_frac <= 1.0:
        raise InterpError(f"repeat_random_frac must be in [0, 1]; got {random_frac!r}.")
    if random_frac > 0 and vocab is None:
        raise InterpError("random_frac > 0 needs vocab=(low, high), the range of random token ids.")
    rows = rows.copy()
    n = rows.shape[1]
    hi = max_span if max_span is not None else n // 4
    hi = min(hi, n // 2)
    if hi < min_span or prob == 0.0:
        return rows
    chosen = rng.random(rows.shape[0]) < prob
    for r in np.flatnonzero(chosen):
        length = int(rng.integers(min_span, hi + 1))
        src = int(rng.integers(0, n - 2 * length + 1))
        dst = int(rng.integers(src + length, n - length + 1))
        if random_frac > 0 and rng.random() < random_frac:
            rows[r, src:src + length] = rng.integers(vocab[0], vocab[1], size=length)
        rows[r, dst:dst + length] = rows[r, src:src + length]
    return rows


class BatchSchedule:
    """The training batches as a pure function of ``step``: exact resume needs only the step.

    Epoch ``e`` visits the windows in ``permutation(seed, e)``; step ``s`` takes positions
    ``[s*batch_size, (s+1)*batch_size)`` of the concatenated epochs. The repeated-span augmentation of
    step ``s`` draws from its own generator seeded by ``(seed, s)``.
    """

    def __init__(self, windows: Windows, batch_size: int, seed: int = 0, repeat_prob: float = 0.0,
                 repeat_min_span: int = 8, repeat_max_span: int | None = None, repeat_random_frac: float = 0.0,
                 vocab: tuple[int, int] | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InterpError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
        if len(windows) == 0:
            raise InterpError(
                f"the training split has {len(windows.tokens)} tokens, fewer than one window of "
                f"context_length + 1 = {windows.context_length + 1}; use a shorter --context-length or more text.")
        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self.repeat_prob, self.repeat_min_span, self.repeat_max_span = repeat_prob, repeat_min_span, repeat_max_span
        self.repeat_random_frac, self.vocab = repeat_random_frac, vocab
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))}
        return self._perm_cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        n = len(self.windows)
        pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return np.array([self._perm(int(p // n))[int(p % n)] for p in pos], dtype=np.int64)

    def epoch(self, step: int) -> float:
        return step * self.batch_size / len(self.windows)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.windows.rows(self.indices(step))
        if self.repeat_prob > 0:
            rng = np.random.default_rng([self.seed, 1_000_003, step])
            rows = add_repeated_spans(rows, rng, self.repeat_prob, self.repeat_min_span, self.repeat_max_span,
                                      self.repeat_random_frac, self.vocab)
        return split_rows(rows)


def eval_batches(windows: Windows, batch_size: int, max_batches: int | None = None):
    """Deterministic validation batches: windows in order (use stride = context_length to tile)."""
    n = len(windows)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    for lo in range(0, n, batch_size):
        yield split_rows(windows.rows(range(lo, min(n, lo + batch_size))))


def prepare(
    corpus: str | Path,
    out_dir: str | Path,
    tokenizer_path: str | Path,
    vocab_size: int = 4096,
    val_fraction: float = 0.01,
    seed: int = 0,
) -> dict:
    """Tokenize a corpus (``.jsonl`` of ``{"text", "title"?, "source"?}`` or a ``.txt`` split on blank
    lines into documents) into a token folder, training the tokenizer first if ``tokenizer_path``
    does not exist yet."""
    from interp.tokenize import encode_documents, eos_id, load_tokenizer, save_tokenizer, train_tokenizer

    corpus = Path(corpus)
    if not corpus.is_file():
        raise InterpError(f"corpus must be an existing .jsonl or .txt file; got {str(corpus)!r}.")

    def documents():
        with open(corpus, encoding="utf-8") as f:
            if corpus.suffix == ".jsonl":
                for i, line in enumerate(f):
                    d = json.loads(line)
                    yield f"{d.get('source', '')}/{d.get('title', i)}", d["text"]
            else:
                for i, doc in enumerate(p for p in f.read().split("\n\n") if p.strip()):
                    yield str(i), doc

    from interp.progress import StepLine

    tokenizer_path = Path(tokenizer_path)
    if tokenizer_path.is_file():
        tok = load_tokenizer(tokenizer_path)
    else:
        with StepLine(f"prepare: training a BPE tokenizer ({vocab_size:,} tokens) on {corpus}"):
            tok = train_tokenizer((t for _, t in documents()), vocab_size=vocab_size)
        save_tokenizer(tok, tokenizer_path)
    keys = [k for k, _ in documents()]
    texts = (t for _, t in documents())
    tok_hash = hashlib.sha256(tokenizer_path.read_bytes()).hexdigest()
    out_dir = Path(out_dir)
    save_tokenizer(tok, out_dir / "tokenizer.json")  # the trainer reads the tokenizer from here
    with StepLine(f"prepare: encoding {len(keys):,} documents into {out_dir}"):
        return write_token_files(
            encode_documents(tok, texts), out_dir, eos_id=eos_id(tok), vocab_size=tok.get_vocab_size(),
            val_fraction=val_fraction, seed=seed, keys=keys,
            extra_meta={"corpus": str(corpus), "tokenizer": str(tokenizer_path), "tokenizer_sha256": tok_hash},
        )
