"""BPE on text without whitespace: words are cut into bounded pieces before the tokenizers library sees them,
so training and encoding take linear time, and every encoder still gives the library's own ids."""

import random
import time

import numpy as np
import pytest

from nanogpt.dataset import load_dataset
from nanogpt.token_cache import prepare
from nanogpt import tokenizer as T
from nanogpt.tokenizer import MAX_WORD_BYTES, BPETokenizer


def _no_whitespace(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("acgt") for _ in range(n))


@pytest.mark.parametrize("chunk", [5, 97, 1 << 20])
def test_bpe_cuts_long_words_into_bounded_pieces_and_every_encoder_agrees(monkeypatch, chunk):
    rng = random.Random(1)
    runs = [_no_whitespace(700, 2), "9" * 900, "\u00e9" * 300, "x" * 256, "y" * 257, "!?" * 400, "<unk>" * 3]
    text = " ".join(rng.choice(runs) + rng.choice([" ", "\n", "", "  "]) for _ in range(40))
    tok = BPETokenizer.train(text, 400)
    pieces = tok._tok.pre_tokenizer.pre_tokenize_str("a" * 10_000 + " caf\u00e9 " + "7" * 600)
    assert max(len(p) for p, _ in pieces) <= MAX_WORD_BYTES
    assert [end for _, (_, end) in pieces[:-1]] == [start for _, (start, _) in pieces[1:]]  # nothing dropped
    assert pieces[-1][1][1] == 10_000 + 6 + 600
    monkeypatch.setattr(T, "_PIECE_CHARS", 64)
    enc = tok.stream_encoder()
    ids = np.concatenate([enc.feed(text[i : i + chunk]) for i in range(0, len(text), chunk)] + [enc.finish()])
    assert ids.tolist() == tok.encode(text)
    assert tok.decode(ids.tolist()) == text


def test_bpe_on_a_file_without_whitespace_prepares_in_linear_time(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "dna.txt"
    f.write_text(_no_whitespace(300_000, 3))
    t0 = time.perf_counter()
    data, tok = prepare(None, f, "bpe", 512)
    assert time.perf_counter() - t0 < 20  # quadratic before: 100 KB took 14 s here, 300 KB minutes
    ds = load_dataset(None, f)
    assert data.train.tolist() == tok.encode(ds.train_text) and data.val.tolist() == tok.encode(ds.val_text)
    assert tok.decode(data.train.tolist()) == ds.train_text
