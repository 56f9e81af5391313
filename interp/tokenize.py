"""Byte-level BPE: train a tokenizer on a corpus, and explain how a text is cut into tokens.

Seed 003 walks through BPE: start from single symbols, repeatedly merge the most frequent adjacent
pair, and keep the merges as the vocabulary. We let Hugging Face `tokenizers` do the counting and
merging (it is fast and well tested) and choose the *byte-level* variant (GPT-2's): the base
alphabet is the 256 byte values, so every UTF-8 string — English, code, Chinese, emoji — has a
tokenization and decodes back exactly. No normalizer runs (NFC/NFKC or lower-casing would break the
exact round trip).

Documents are separated by the special token ``<|endoftext|>`` (seed 002's EOS): the model learns
where a text ends, and the trainer never lets attention context pretend two documents are one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from interp.errors import InterpError

EOS_TOKEN = "<|endoftext|>"


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table of byte-level BPE (GPT-2's scheme).

    Byte-level BPE stores each token as a string of printable stand-in characters, one per byte:
    bytes that are already printable Latin-1 characters stand for themselves, the other 68 (control
    bytes, space, ...) are shifted to code points 256, 257, ... in byte order. Inverting this table
    gives each token's raw bytes.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer (ByteLevel pre-tokenizer and decoder, no normalizer)."""
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the first word of a text keeps its exact bytes (round trip);
    # use_regex=True: split on GPT-2's word/number/punctuation pattern before merging.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    length: int | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train byte-level BPE on ``texts`` (an iterable of documents) with ``<|endoftext|>`` as id 0.

    ``vocab_size`` counts the 256 byte symbols and the special token, so it must exceed 257.
    """
    if not isinstance(vocab_size, int) or vocab_size < 258:
        raise InterpError(f"vocab_size must be an integer >= 258 (256 bytes + <|endoftext|> + 1 merge); "
                          f"got {vocab_size!r}.")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise InterpError(f"min_frequency must be an integer >= 1; got {min_frequency!r}.")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        # All 256 bytes are in the vocabulary even if the corpus never uses some of them.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def backend_tokenizer(tokenizer) -> Tokenizer:
    """The `tokenizers.Tokenizer` doing the work: ``tokenizer`` itself, or the one a `transformers` fast
    tokenizer wraps (``model.tokenizer`` is such a wrapper; see :func:`as_transformers_tokenizer`)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def as_transformers_tokenizer(tokenizer, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """Wrap a `tokenizers.Tokenizer` in `transformers`' ``PreTrainedTokenizerFast`` (what TransformerLens users
    and its utilities call: ``tok(text)``, ``tok.decode(tensor, skip_special_tokens=True)``, ``bos_token_id``).

    The special tokens are the ids the model's config names; as in TransformerLens, BOS falls back to EOS and
    padding uses EOS. A `transformers` tokenizer (or None) is returned unchanged.
    """
    if tokenizer is None or not isinstance(tokenizer, Tokenizer):
        return tokenizer
    from transformers import PreTrainedTokenizerFast

    def piece(i):
        return tokenizer.id_to_token(int(i)) if i is not None else None

    eos = piece(eos_token_id)
    bos = piece(bos_token_id) or eos
    special = {k: v for k, v in (("eos_token", eos), ("bos_token", bos), ("pad_token", eos)) if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **special)


def eos_id(tokenizer: Tokenizer) -> int:
    tokenizer = backend_tokenizer(tokenizer)
    i = tokenizer.token_to_id(EOS_TOKEN)
    if i is None:
        raise InterpError(f"tokenizer has no {EOS_TOKEN!r} special token; train it with train_tokenizer().")
    return i


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write tokenizer.json atomically (a `transformers` wrapper writes the tokenizer it wraps)."""
    from interp.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, backend_tokenizer(tokenizer).to_str(pretty=True))
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise InterpError(f"tokenizer path must be a tokenizer.json file or a folder holding one; got {str(path)!r}.")
    return Tokenizer.from_file(str(path))


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` (no special tokens added)."""
    return backend_tokenizer(tokenizer).encode(text, add_special_tokens=False).ids


def decode(tokenizer: Tokenizer, ids: Iterable[int]) -> str:
    """Exact inverse of :func:`encode` (special tokens are kept, so ``<|endoftext|>`` survives)."""
    return backend_tokenizer(tokenizer).decode(list(ids), skip_special_tokens=False)


def encode_documents(tokenizer: Tokenizer, docs: Iterable[str], batch_size: int = 256) -> Iterator[list[int]]:
    """Token ids per document, encoded in batches (tokenizers parallelises a batch in Rust)."""
    tokenizer = backend_tokenizer(tokenizer)
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_size:
            yield from (e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        yield from (e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False))


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The raw bytes a token stands for (special tokens: their UTF-8 spelling)."""
    tokenizer = backend_tokenizer(tokenizer)
    piece = tokenizer.id_to_token(int(token_id))
    if piece is None:
        raise InterpError(f"token_id must be in [0, {tokenizer.get_vocab_size() - 1}]; got {token_id}.")
    added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    if piece in added:
        return piece.encode("utf-8")
    table = _unicode_to_byte()
    return bytes(table[c] for c in piece)


def readable_token(raw: bytes) -> str:
    """A token as text: its UTF-8 decoding, with bytes of an incomplete character shown as <0xAB>.

    One Chinese character is three bytes; BPE may cut it between tokens, and such a fragment is not
    text on its own.
    """
    out, i = [], 0
    while i < len(raw):
        for j in range(min(len(raw), i + 4), i, -1):  # longest valid UTF-8 character starting at i
            try:
                out.append(raw[i:j].decode("utf-8"))
                i = j
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(f"<0x{raw[i]:02X}>")
            i += 1
    return "".join(out)


_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _utf8_length(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with byte ``lead`` (0 if it cannot start one)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def token_labels(pieces: list[bytes]) -> list[str]:
    r"""Display labels for consecutive tokens given their raw bytes: the one helper every table and figure uses.

    A byte-level tokenizer may cut a multi-byte character (one Chinese character is three bytes)
    across tokens; decoded one by one, each piece is "\ufffd". Read together, the pieces still spell
    the character, so each piece is labelled with the character it belongs to and its piece number:
    "今" cut in three is "今₀", "今₁", "今₂", and a token holding the end of "今" and all of "天" is
    "今₂天". Bytes that are not UTF-8 at all show as ``<0xAB>``; a lone token with part of a character
    (no neighbours to complete it) shows its bytes the same way.

    >>> token_labels([b"\xe4\xbb", b"\x8a\xe5\xa4\xa9", b"!"])
    ['今₀', '今₁天', '!']
    >>> token_labels([b"\xe4"])
    ['<0xE4>']
    """
    data = b"".join(pieces)
    bounds, start = [], 0
    for p in pieces:
        bounds.append((start, start + len(p)))
        start += len(p)
    chars = []  # (start, end, text or None for a byte that is no character)
    i = 0
    while i < len(data):
        n = _utf8_length(data[i])
        try:
            text = data[i:i + n].decode("utf-8") if n and i + n <= len(data) else None
        except UnicodeDecodeError:
            text = None
        n = n if text is not None else 1
        chars.append((i, i + n, text))
        i += n
    labels, c = [], 0
    for a, b in bounds:
        while c < len(chars) and chars[c][1] <= a:
            c += 1
        out, j = [], c
        while j < len(chars) and chars[j][0] < b:
            cs, ce, text = chars[j]
            if text is None:
                out.append(f"<0x{data[cs]:02X}>")
            elif cs >= a and ce <= b:
                out.append(text)
            else:  # this token holds a piece of the character: which piece (0-based, in token order)?
                piece = sum(1 for x, y in bounds if x < ce and y > cs and x < a)
                out.append(text + str(piece).translate(_SUBSCRIPT))
            j += 1
        labels.append("".join(out))
    return labels


def sequence_labels(tokenizer, ids: Iterable[int]) -> list[str] | None:
    """:func:`token_labels` of a sequence of ids, or None when ``tokenizer`` is not byte-level BPE."""
    ids = [int(i) for i in ids]
    try:
        return token_labels([token_bytes(tokenizer, i) for i in ids])
    except (KeyError, AttributeError, TypeError, InterpError):
        return None


def explain_tokenization(tokenizer: Tokenizer, text: str) -> pd.DataFrame:
    """How ``text`` is cut into tokens (seed 003's walk-through), one row per token.

    Columns: ``position``, ``token_id``, ``token`` (readable text from :func:`token_labels`: a
    character split across tokens shows in each piece with its piece number, "今₀", "今₁"), ``bytes`` (hex, space-separated), ``start``/``end`` (character
    offsets into ``text``) and ``text_span`` (``text[start:end]``; a character cut across tokens
    appears in the span of each piece).
    """
    if not isinstance(text, str):
        raise InterpError(f"text must be a str; got {type(text).__name__}.")
    tokenizer = backend_tokenizer(tokenizer)
    enc = tokenizer.encode(text, add_special_tokens=False)
    # `tokenizers` reports offsets into the string; byte-level pieces of one character share it.
    raws = [token_bytes(tokenizer, tid) for tid in enc.ids]
    labels = token_labels(raws)
    rows = []
    for pos, (tid, (start, end)) in enumerate(zip(enc.ids, enc.offsets)):
        raw = raws[pos]
        rows.append({
            "position": pos,
            "token_id": tid,
            "token": labels[pos],
            "bytes": raw.hex(" "),
            "start": start,
            "end": end,
            "text_span": text[start:end],
        })
    return pd.DataFrame(rows, columns=["position", "token_id", "token", "bytes", "start", "end", "text_span"])


def main(argv: list[str] | None = None) -> int:
    """Train a tokenizer on a corpus.jsonl (from scripts/build_corpus.py): ``python -m interp.tokenize``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m interp.tokenize", description="Train a byte-level BPE tokenizer.")
    ap.add_argument("corpus", help="corpus.jsonl (one {'text': ...} per line) or a .txt file (one document)")
    ap.add_argument("--out", required=True, help="path of the tokenizer.json to write")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--min-frequency", type=int, default=2)
    args = ap.parse_args(argv)

    def docs() -> Iterator[str]:
        with open(args.corpus, encoding="utf-8") as f:
            if args.corpus.endswith(".jsonl"):
                for line in f:
                    yield json.loads(line)["text"]
            else:
                yield f.read()

    tok = train_tokenizer(docs(), vocab_size=args.vocab_size, min_frequency=args.min_frequency, show_progress=True)
    save_tokenizer(tok, args.out)
    print(f"vocab {tok.get_vocab_size()} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
