"""Tokenizers: characters (with <unk>) and byte-level BPE. Both save and load as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

UNK = "<unk>"


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_strings(self, ids: list[int]) -> list[str]: ...

    def to_dict(self) -> dict: ...


class CharTokenizer:
    """One token per character of the corpus; id 0 is <unk>, for characters never seen."""

    kind = "char"

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or UNK in chars:
            raise ValueError("CharTokenizer needs distinct characters, without <unk>")
        self.chars = list(chars)
        self.stoi = {ch: i + 1 for i, ch in enumerate(self.chars)}
        self.itos = [UNK] + self.chars

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(ch, 0) for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class BPETokenizer:
    """Byte-level BPE trained on the corpus with the `tokenizers` library.

    Byte-level means every string encodes (no <unk> needed) and decode(encode(s)) == s.
    """

    kind = "bpe"

    def __init__(self, tok):
        self._tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int = 512) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"BPE vocab_size must be at least 257 (256 bytes + <unk>), got {vocab_size}")
        tok = HFTokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[UNK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # train on lines so that the trainer never holds the whole corpus as one string
        tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.decode([i]) for i in ids]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self._tok.to_str())}


def tokenizer_from_dict(d: dict) -> CharTokenizer | BPETokenizer:
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(json.dumps(d["tokenizer"])))
    raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'char' or 'bpe')")


def build_tokenizer(kind: str, text: str, vocab_size: int = 512) -> CharTokenizer | BPETokenizer:
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise ValueError(f"unknown tokenizer {kind!r}: use 'char' or 'bpe'")


def save_tokenizer(tok, path: str | Path) -> None:
    Path(path).write_text(json.dumps(tok.to_dict(), ensure_ascii=False))


def load_tokenizer(path: str | Path) -> CharTokenizer | BPETokenizer:
    return tokenizer_from_dict(json.loads(Path(path).read_text()))
