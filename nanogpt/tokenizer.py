"""Tokenizers: characters (with <unk>) and byte-level BPE. Both save and load as JSON.

Besides `encode` (a list of ids), each has `stream_encoder()`: text fed in chunks of any size comes
out as numpy id arrays, token for token what `encode` gives for the whole text, without a Python
int per character. A corpus of any size is tokenized that way (nanogpt.token_cache).

A tokenizer is one entry of `TOKENIZERS` (its name -> its class): `--tokenizer`'s choices, building one for a
corpus (the class's `settings` and `build`) and loading a saved one (`from_dict`) all read the table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from nanogpt.errors import DataError
from nanogpt.files import write_json

UNK = "<unk>"
MIN_BPE_VOCAB = 257  # a byte-level BPE holds the 256 bytes and <unk> before any merge
DEFAULT_TOKENIZER = "char"  # nanoGPT's shakespeare_char
DEFAULT_BPE_VOCAB = 512
MAX_CODE_POINT = 0x10FFFF
_SUB = 1 << 18  # ids gathered per numpy call: the index casts stay in cache
MAX_WORD_BYTES = 256  # a BPE pre-token's longest piece (tokenizer.BPETokenizer.train_from_iterator)


def bpe_vocab_problem(vocab_size: int) -> str | None:
    """None if a byte-level BPE can have this many tokens, else what the size must be."""
    return None if vocab_size >= MIN_BPE_VOCAB else f"at least {MIN_BPE_VOCAB} (256 bytes + <unk>)"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype for token ids: uint16 up to 65,535 tokens, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def code_points(text: str) -> np.ndarray:
    """(len(text),) uint32 code points."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class StreamEncoder(Protocol):
    def feed(self, text: str) -> np.ndarray: ...

    def finish(self) -> np.ndarray: ...


class TrainingText(Protocol):
    """What a tokenizer is built from: a corpus's text, streamed (the token cache never holds it whole)."""

    def characters(self) -> list[str]:
        """Every distinct character, in code point order (only for a class whose `reads_characters` is set)."""
        ...

    def line_batches(self, what: str) -> Iterator[list[str]]:
        """The text's str.splitlines(keepends=True) in batches; `what` names the pass in progress lines."""
        ...


class TextInMemory:
    """A TrainingText held as one string (small corpora: tests, a dry run)."""

    def __init__(self, text: str):
        self.text = text

    def characters(self) -> list[str]:
        return sorted(set(self.text))

    def line_batches(self, what: str) -> Iterator[list[str]]:
        # lines, so that the trainer never holds the whole corpus as one string
        return iter([self.text.splitlines(keepends=True)])


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def stream_encoder(self) -> StreamEncoder: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_strings(self, ids: list[int]) -> list[str]: ...

    def to_dict(self) -> dict: ...

    def hf_tokenizer_json(self) -> str: ...


class CharTokenizer:
    """One token per character of the corpus; id 0 is <unk>, for characters never seen."""

    kind = "char"
    reads_characters = True  # build reads the characters the corpus holds
    exports = ("hf", "nanogpt")  # nanoGPT's meta.pkl maps characters: it holds this one alone

    def __init__(self, chars: list[str]):
        if not isinstance(chars, list):
            raise ValueError(f"CharTokenizer needs a list of characters, not {type(chars).__name__}")
        for ch in chars:
            if not (isinstance(ch, str) and len(ch) == 1) or "\ud800" <= ch <= "\udfff":
                raise ValueError(f"CharTokenizer's characters must each be one Unicode character (no lone "
                                 f"surrogate), not {json.dumps(ch)[:40]}")
        if len(set(chars)) != len(chars) or UNK in chars:
            raise ValueError("CharTokenizer needs distinct characters, without <unk>")
        self.chars = list(chars)
        self.stoi = {ch: i + 1 for i, ch in enumerate(self.chars)}
        self.itos = [UNK] + self.chars
        self._lut: np.ndarray | None = None  # code point -> id, built on first encode_array

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls.build(TextInMemory(text))

    @staticmethod
    def settings(vocab_size: int) -> dict:
        """The settings that decide the tokens: none, the corpus decides (`vocab_size` is BPE's)."""
        return {}

    @classmethod
    def build(cls, text: TrainingText) -> "CharTokenizer":
        return cls(text.characters())

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(ch, 0) for ch in text]

    def encode_array(self, text: str) -> np.ndarray:
        """encode(text) as a numpy array, vectorised over code points."""
        if self._lut is None:
            # 0 (<unk>) for every character outside the vocabulary
            self._lut = np.zeros(MAX_CODE_POINT + 1, dtype=token_dtype(self.vocab_size))
            self._lut[code_points("".join(self.chars))] = np.arange(1, self.vocab_size)
        # ASCII text needs no UTF-32 copy: its bytes are its code points
        cps = np.frombuffer(text.encode("ascii"), np.uint8) if text.isascii() else code_points(text)
        out = np.empty(len(cps), dtype=self._lut.dtype)
        for i in range(0, len(cps), _SUB):
            np.take(self._lut, cps[i : i + _SUB], out=out[i : i + _SUB])
        return out

    def stream_encoder(self) -> StreamEncoder:
        return _CharStream(self)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    def hf_tokenizer_json(self) -> str:
        """tokenizer.json for the `tokenizers` library (nanogpt.export): a word-level vocabulary with our ids
        (<unk> at 0), every character its own piece, pieces joined back without spaces."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer(models.WordLevel({s: i for i, s in enumerate(self.itos)}, unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")  # one piece per code point
        tok.decoder = decoders.Fuse()
        return tok.to_str()

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(d.get("chars"))


class _CharStream:
    """One token per character: every chunk encodes on its own."""

    def __init__(self, tok: CharTokenizer):
        self.tok = tok

    def feed(self, text: str) -> np.ndarray:
        return self.tok.encode_array(text)

    def finish(self) -> np.ndarray:
        return np.empty(0, dtype=token_dtype(self.tok.vocab_size))


class BPETokenizer:
    """Byte-level BPE trained on the corpus with the `tokenizers` library.

    Byte-level means every string encodes (no <unk> needed) and decode(encode(s)) == s.
    """

    kind = "bpe"
    reads_characters = False
    exports = ("hf",)

    def __init__(self, tok):
        self._tok = tok
        self._word_cache: _WordCache | None = None

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> "BPETokenizer":
        return cls.build(TextInMemory(text), vocab_size)

    @staticmethod
    def settings(vocab_size: int) -> dict:
        """The settings that decide the tokens (`vocab_size`: --bpe-vocab-size)."""
        if problem := bpe_vocab_problem(vocab_size):
            raise DataError(f"--bpe-vocab-size must be {problem}, got {vocab_size}")
        return {"vocab_size": vocab_size}

    @classmethod
    def build(cls, text: TrainingText, vocab_size: int) -> "BPETokenizer":
        return cls.train_from_iterator(text.line_batches("training BPE on"), vocab_size)

    @classmethod
    def train_from_iterator(cls, batches: Iterable[list[str]], vocab_size: int = DEFAULT_BPE_VOCAB) -> "BPETokenizer":
        """Train on batches of lines: the corpus's str.splitlines(keepends=True), in any batches."""
        from tokenizers import Regex
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if problem := bpe_vocab_problem(vocab_size):
            raise ValueError(f"BPE vocab_size must be {problem}, got {vocab_size}")
        tok = HFTokenizer(models.BPE(unk_token=UNK))
        # GPT-2's byte-level words, then each word cut into pieces of at most MAX_WORD_BYTES: the library's trainer
        # and encoder take time quadratic in a word's length, and text without whitespace (a DNA sequence, a
        # minified file, base64) is one word of megabytes. Part of the saved tokenizer: encoding cuts the same way.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.ByteLevel(add_prefix_space=False),
            pre_tokenizers.Split(Regex(f".{{1,{MAX_WORD_BYTES}}}"), behavior="isolated"),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[UNK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        _allow_parallelism()
        tok.train_from_iterator(batches, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_pieces(self, pieces: list[str]) -> np.ndarray:
        """The concatenated ids of the pieces (each cut where the pre-tokenizer splits anyway).

        ASCII text is split into words by `_ASCII_WORDS` and each distinct word is encoded once by
        the library (BPE never merges across words); the rest (non-ASCII characters with the ASCII
        up to the nearest cut points, and "<unk>") goes to the library's batch encoding, on its Rust
        threads. Both give the library's ids for the whole text; the first is several times faster."""
        segments = [seg for p in pieces for seg in ([(p, True)] if p.isascii() else _segments(p))]
        segments = [(t, fast and UNK not in t) for t, fast in segments]
        by_library = iter(self._library([t for t, fast in segments if not fast]))
        out = [self._words.encode(t) if fast else next(by_library) for t, fast in segments]
        return np.concatenate(out) if out else np.empty(0, token_dtype(self.vocab_size))

    def _library(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        _allow_parallelism()
        dtype = token_dtype(self.vocab_size)
        return [np.array(e.ids, dtype=dtype) for e in self._tok.encode_batch_fast(texts)]

    @property
    def _words(self) -> "_WordCache":
        if self._word_cache is None:
            self._word_cache = _WordCache(self)
        return self._word_cache

    def stream_encoder(self) -> StreamEncoder:
        return _BPEStream(self)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.decode([i]) for i in ids]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self._tok.to_str())}

    def hf_tokenizer_json(self) -> str:
        """tokenizer.json for the `tokenizers` library (nanogpt.export): the library's own."""
        return json.dumps(json.loads(self._tok.to_str()), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        if not isinstance(d.get("tokenizer"), dict):
            raise ValueError('a BPE tokenizer needs "tokenizer": the tokenizers library\'s JSON object')
        return cls(HFTokenizer.from_str(json.dumps(d["tokenizer"])))


# Cut points where the byte-level pre-tokenizer (GPT-2's regex) splits anyway, whatever comes before
# or after: between a printable ASCII character and "\n" + printable ASCII (a new line that starts
# with no indent), or before " " + an ASCII letter that follows a printable ASCII character. BPE
# never merges across pre-tokens, so encoding the pieces apart gives the ids of the whole text.
# Neither cut falls inside "<unk>" (matched as a special token before pre-tokenizing).
_CUT = re.compile(r"(?<=[!-~]\n)(?=[!-~])|(?<=[!-~])(?= [A-Za-z])")
_PIECE_CHARS = 1 << 16  # piece size for encode_batch: enough pieces for every Rust thread


_W = r"\t\n\x0b\x0c\r "  # what \s matches among ASCII characters in the library's regex
# The byte-level pre-tokenizer's regex (GPT-2's: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
# ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+) on ASCII text, where \p{L} is [A-Za-z] and \p{N} [0-9]: the
# same words, found by Python's re (tests compare it with the library's own pre-tokenizer).
_ASCII_WORDS = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_W}A-Za-z0-9]+|[{_W}]+(?![^{_W}])|[{_W}]+")
_MAX_WORDS = 1 << 22  # distinct words remembered before the cache starts over


class _WordCache:
    """Distinct words -> their ids (by the library, once per word), gathered with numpy."""

    def __init__(self, tok: BPETokenizer):
        self.tok, self.dtype = tok, token_dtype(tok.vocab_size)
        self.index: dict[str, int] = {}
        self.n_ids = 0  # flat[:n_ids] holds every known word's ids, one word after another
        self.flat = np.empty(1 << 16, self.dtype)
        self.starts = np.empty(1 << 14, np.int64)  # [:len(index)] where each word's ids start in flat
        self.lens = np.empty(1 << 14, np.int64)

    def encode(self, text: str) -> np.ndarray:
        words = _ASCII_WORDS.findall(text)
        new = set(words).difference(self.index)
        if len(self.index) + len(new) > _MAX_WORDS:
            self.__init__(self.tok)
            new = set(words)
        if new:
            self._add(list(new))
        wid = np.fromiter(map(self.index.__getitem__, words), dtype=np.int64, count=len(words))
        lens, starts = self.lens[wid], self.starts[wid]
        ends = np.cumsum(lens)
        # output position k of word j reads flat[starts[j] + k - (ends[j] - lens[j])]
        pos = np.repeat(starts - (ends - lens), lens) + np.arange(ends[-1] if len(ends) else 0)
        return self.flat[pos]

    def _add(self, words: list[str]) -> None:
        ids = self.tok._library(words)
        lens = np.array([len(x) for x in ids], dtype=np.int64)
        n_words, n_ids = len(self.index), self.n_ids + int(lens.sum())
        # grown by doubling: appending costs O(1) per id, not a copy of everything known
        self.flat = _ensure(self.flat, n_ids)
        self.starts, self.lens = _ensure(self.starts, n_words + len(words)), _ensure(self.lens, n_words + len(words))
        self.flat[self.n_ids : n_ids] = np.concatenate(ids)
        self.starts[n_words : n_words + len(words)] = self.n_ids + np.cumsum(lens) - lens
        self.lens[n_words : n_words + len(words)] = lens
        self.n_ids = n_ids
        for w in words:
            self.index[w] = len(self.index)


def _ensure(a: np.ndarray, n: int) -> np.ndarray:
    if n <= len(a):
        return a
    grown = np.empty(max(n, 2 * len(a)), a.dtype)
    grown[: len(a)] = a
    return grown


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _segments(piece: str) -> Iterator[tuple[str, bool]]:
    """(text, all ASCII) segments of a piece, cut at `_CUT` points: each run of non-ASCII characters
    goes with the ASCII around it up to the nearest cut points (searched 512 characters back)."""
    pos = 0
    for m in _NON_ASCII.finditer(piece):
        if m.start() < pos:
            continue  # inside the segment just made (cut points have ASCII on both sides)
        lo = pos
        for c in _CUT.finditer(piece, max(pos, m.start() - 512), m.start()):
            lo = c.start()
        hi = _CUT.search(piece, m.end())
        hi = hi.start() if hi else len(piece)
        if lo > pos:
            yield piece[pos:lo], True
        yield piece[lo:hi], False
        pos = hi
    if pos < len(piece):
        yield piece[pos:], True


class _BPEStream:
    """Splits the stream at safe cut points into pieces and encodes them in batches."""

    def __init__(self, tok: BPETokenizer):
        self.tok, self.carry = tok, ""

    def feed(self, text: str) -> np.ndarray:
        s, pieces, start = self.carry + text, [], 0
        while True:
            m = _CUT.search(s, start + _PIECE_CHARS)
            if m is None:
                break
            pieces.append(s[start : m.start()])
            start = m.start()
        self.carry = s[start:]  # held until a cut point follows it
        return self.tok.encode_pieces(pieces)

    def finish(self) -> np.ndarray:
        rest, self.carry = self.carry, ""
        return self.tok.encode_pieces([rest] if rest else [])


def _allow_parallelism() -> None:
    """Keep the tokenizers library's Rust threads on, and silent when Ray later starts processes.

    Unset, the library warns in every forked child (Ray's process launches) and turns its threads off."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


# name (the saved `kind`) -> class. A class has `kind`; `reads_characters` (its build needs the corpus's characters,
# which the token cache gathers while hashing); `settings(vocab_size)`, the settings that decide its tokens (checked);
# `build(text, **settings)` from a TrainingText; `from_dict`/`to_dict`; and the Tokenizer protocol.
TOKENIZERS: dict[str, type] = {"char": CharTokenizer, "bpe": BPETokenizer}


def tokenizer_from_dict(d: dict) -> CharTokenizer | BPETokenizer:
    """The tokenizer a saved JSON object describes; one that is not a tokenizer of ours is a ValueError saying why
    (checked here, where every saved tokenizer is read: nothing built from it fails later)."""
    if not isinstance(d, dict):
        raise ValueError("a tokenizer is a JSON object")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r} (expected one of {', '.join(TOKENIZERS)})")
    return TOKENIZERS[kind].from_dict(d)


def save_tokenizer(tok, path: str | Path) -> None:
    write_json(path, tok.to_dict())


def load_tokenizer(path: str | Path) -> CharTokenizer | BPETokenizer:
    return tokenizer_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
