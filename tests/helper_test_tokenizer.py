"""Tokenizers: characters with <unk>, byte-level BPE, JSON save/load, the factory functions."""

import json

import pytest

from nanogpt.tokenizer import (
    UNK,
    BPETokenizer,
    CharTokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)

CORPUS = "Number 7 comes before 8.\nAlice had a pet cat. The cat ran in the park.\nprint(result)\n" * 40


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=300)


def test_char_round_trip_and_vocab_size():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == len(set("hello world")) + 1  # + <unk>
    ids = tok.encode("hello world")
    assert len(ids) == 11 and 0 not in ids
    assert tok.decode(ids) == "hello world"
    assert tok.decode(tok.encode("lol, ")) == "lol<unk> "
    assert tok.token_strings(tok.encode("he")) == ["h", "e"]


def test_char_unseen_characters_are_unk():
    tok = CharTokenizer.from_text("abc")
    assert tok.itos[0] == UNK
    assert tok.encode("aZß€😀\x00b") == [tok.stoi["a"], 0, 0, 0, 0, 0, tok.stoi["b"]]
    assert tok.encode("") == []
    assert tok.decode(tok.encode("xyz")) == UNK * 3


def test_char_rejects_duplicates_and_unk():
    with pytest.raises(ValueError):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError):
        CharTokenizer(["a", UNK])


def test_char_json_round_trip(tmp_path):
    tok = CharTokenizer.from_text("héllo wörld\n\t\"'")
    save_tokenizer(tok, tmp_path / "tok.json")
    assert json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))["kind"] == "char"
    again = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(again, CharTokenizer)
    assert again.vocab_size == tok.vocab_size and again.itos == tok.itos
    text = "wörld héllo ?"
    assert again.encode(text) == tok.encode(text)


def test_bpe_trains_to_the_asked_size_and_merges(bpe):
    assert 257 <= bpe.vocab_size <= 300
    assert bpe.vocab_size > 257  # it learned merges on top of the 256 bytes and <unk>
    line = "Alice had a pet cat."
    assert len(bpe.encode(line)) < len(line)


@pytest.mark.parametrize("text", ["Alice had a pet cat.", "Zß€ 😀 日本語\n\ttabs  and  spaces ", "", " leading space"])
def test_bpe_round_trip_is_exact_even_for_unseen_unicode(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_save_load_gives_identical_ids(bpe, tmp_path):
    save_tokenizer(bpe, tmp_path / "bpe.json")
    again = load_tokenizer(tmp_path / "bpe.json")
    assert isinstance(again, BPETokenizer) and again.vocab_size == bpe.vocab_size
    for text in (CORPUS[:200], "Zß€ 😀 unseen", "print(result)"):
        assert again.encode(text) == bpe.encode(text)
        assert again.decode(again.encode(text)) == text


def test_bpe_rejects_a_vocab_smaller_than_the_bytes():
    with pytest.raises(ValueError, match="257"):
        BPETokenizer.train(CORPUS, vocab_size=100)


def test_build_tokenizer(bpe):
    assert isinstance(build_tokenizer("char", "abc"), CharTokenizer)
    assert build_tokenizer("char", "abc").vocab_size == 4
    assert isinstance(build_tokenizer("bpe", CORPUS, 280), BPETokenizer)
    with pytest.raises(ValueError, match="wordpiece"):
        build_tokenizer("wordpiece", "abc")


@pytest.mark.parametrize("d", [{"kind": "sentencepiece"}, {}, {"kind": None}])
def test_tokenizer_from_dict_rejects_unknown_kinds(d):
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict(d)
