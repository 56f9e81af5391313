"""Byte-level BPE: exact round trip on arbitrary Unicode, and an explainer whose bytes add up to the text."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from interp.errors import InterpError
from interp.tokenize import (
    EOS_TOKEN,
    byte_to_unicode,
    decode,
    encode,
    eos_id,
    explain_tokenization,
    load_tokenizer,
    readable_token,
    save_tokenizer,
    token_bytes,
    train_tokenizer,
)

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_corpus.txt"


@pytest.fixture(scope="module")
def tok():
    docs = FIXTURE.read_text(encoding="utf-8").split("\n\n")
    return train_tokenizer(docs, vocab_size=400)


# Any Unicode scalar value (surrogates are not valid in UTF-8, so they cannot be in a text).
unicode_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=150, deadline=None)
@given(text=unicode_text)
def test_round_trip_random_unicode(tok, text):
    assert decode(tok, encode(tok, text)) == text


@settings(max_examples=60, deadline=None)
@given(text=unicode_text)
def test_explainer_bytes_concatenate_to_the_utf8_text(tok, text):
    # Independent of the tokenizer's own decoder: our byte table must reproduce the UTF-8 encoding.
    df = explain_tokenization(tok, text)
    assert b"".join(bytes.fromhex(h) for h in df["bytes"]) == text.encode("utf-8")
    assert list(df["token_id"]) == encode(tok, text)


def test_round_trip_chinese_whitespace_and_eos(tok):
    for text in ["今天天气真好啊", "天王盖地虎\n\t  宝塔镇河妖  ", " leading space", "tabs\tand\r\nCRLF", "😀🇨🇳",
                 f"one{EOS_TOKEN}two"]:
        assert decode(tok, encode(tok, text)) == text


def test_eos_is_a_single_special_token(tok):
    assert eos_id(tok) == 0
    ids = encode(tok, f"In the beginning{EOS_TOKEN}Emma")
    assert ids.count(0) == 1


def test_byte_table_matches_tokenizers_alphabet():
    table = byte_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    # printable ASCII stands for itself
    assert all(table[b] == chr(b) for b in range(ord("!"), ord("~") + 1))


def test_explainer_columns_and_spans(tok):
    text = "Emma Woodhouse 今天"
    df = explain_tokenization(tok, text)
    assert list(df.columns) == ["position", "token_id", "token", "bytes", "start", "end", "text_span"]
    assert list(df["position"]) == list(range(len(df)))
    for row in df.itertuples():
        assert row.text_span == text[row.start:row.end]
        assert row.text_span.encode("utf-8").find(bytes.fromhex(row.bytes)) >= 0
    # a 3-byte Chinese character split across tokens shows its fragments as <0x..>
    frag = readable_token("今".encode()[:2])
    assert frag == "<0xE4><0xBB>"
    assert readable_token("今".encode()) == "今"


def test_save_load_and_token_bytes(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path)
    assert again.get_vocab_size() == tok.get_vocab_size()
    assert encode(again, "the Lord said") == encode(tok, "the Lord said")
    assert token_bytes(tok, eos_id(tok)) == EOS_TOKEN.encode()
    assert path.is_file()


def test_bad_arguments_name_themselves(tok):
    with pytest.raises(InterpError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(InterpError, match="token_id"):
        token_bytes(tok, 10**6)
    with pytest.raises(InterpError, match="text"):
        explain_tokenization(tok, b"bytes")


def test_token_labels_name_the_character_each_byte_piece_belongs_to(tok):
    from interp.tokenize import token_labels

    jin, tian = "今".encode(), "天".encode()
    # independent reference: the pieces are the UTF-8 bytes of the characters, cut by hand
    assert token_labels([jin[:1], jin[1:], tian]) == ["今₀", "今₁", "天"]
    assert token_labels([jin[:2], jin[2:] + tian, b" a"]) == ["今₀", "今₁天", " a"]
    assert token_labels([b"\xff", jin[:1]]) == ["<0xFF>", "<0xE4>"]  # not UTF-8 / never completed
    df = explain_tokenization(tok, "今天天气真好啊")
    assert "\ufffd" not in "".join(df.token)
    # every character of the text appears in the label of each token that holds a byte of it
    for row in df.itertuples():
        for ch in row.text_span:
            assert ch in row.token
