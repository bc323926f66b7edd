"""Tokenizers (char with <unk>, byte-level BPE, JSON) and data (corpora, splits, errors, download, batches)."""

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli
from nanogpt.batches import get_batch, tokenize
from nanogpt.dataset import load_dataset
from nanogpt.errors import DataError
from pathlib import Path
from nanogpt.shakespeare import shakespeare_path
from nanogpt.token_cache import prepare
from nanogpt.errors import UserError
from nanogpt.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, save_tokenizer, tokenizer_from_dict


def test_char_tokenizer_round_trip_and_unk(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == len(set("hello world")) + 1
    assert tok.decode(tok.encode("hello world")) == "hello world"
    ids = tok.encode("hellø!")
    assert ids[-2:] == [0, 0] and tok.decode(ids) == "hell<unk><unk>"
    save_tokenizer(tok, tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.encode("hello") == tok.encode("hello") and again.vocab_size == tok.vocab_size


def test_bpe_round_trip_and_json(tmp_path):
    text = "the cat sat on the mat. the dog sat on the log. " * 50
    tok = BPETokenizer.train(text, vocab_size=300)
    assert 257 <= tok.vocab_size <= 300
    s = "the cat 🐈 ate ß!"  # never seen: byte-level BPE still round-trips exactly
    assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode("the cat sat on the mat")) < len("the cat sat on the mat")  # merges learned
    save_tokenizer(tok, tmp_path / "b.json")
    assert load_tokenizer(tmp_path / "b.json").encode(s) == tok.encode(s)


def test_tokenizer_errors():
    with pytest.raises(ValueError):
        tokenizer_from_dict({"kind": "nope"})
    with pytest.raises(ValueError):
        BPETokenizer.train("abc", vocab_size=100)


@pytest.mark.parametrize("name", ["counting", "abc", "stories", "code", "mixed"])
def test_builtin_corpora(name):
    ds = load_dataset(name)
    assert len(ds.train_text) > 9 * len(ds.val_text) * 0.8 > 0
    assert load_dataset(name).val_text == ds.val_text  # deterministic


def test_mixed_validation_holds_every_pattern():
    ds = load_dataset("mixed")
    assert len(ds.text) > 50_000  # about 96,000 characters
    for pattern in ("Number ", "B1", "had a pet", "print("):
        assert pattern in ds.val_text, pattern
    assert "def add_numbers" in ds.val_text


def test_file_errors(tmp_path):
    cases = {
        "missing.txt": (None, "does not exist"),
        "empty.txt": (b"", "empty"),
        "binary.bin": (b"\x00\x01" * 50, "binary"),
        "late_nul.txt": (b"a" * 100_000 + b"\x00", "at byte 100000"),  # the whole file is checked
        "latin1.txt": (b"abc\ncaf\xe9", "byte 7 (line 2)"),
    }
    for name, (content, needle) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=None) as e:
            load_dataset(data_file=tmp_path / name)
        assert needle in str(e.value), (name, str(e.value))
    with pytest.raises(DataError, match="--data-file"):
        load_dataset("nope")
    (tmp_path / "ok.txt").write_text("x" * 100)
    with pytest.raises(DataError, match="not both"):
        load_dataset("counting", data_file=tmp_path / "ok.txt")


def test_too_short_for_block_size(tmp_path):
    (tmp_path / "s.txt").write_text("abcdefghij" * 10)
    ds = load_dataset(data_file=tmp_path / "s.txt")
    td = tokenize(ds, CharTokenizer.from_text(ds.text))
    td.check_block_size(8)
    with pytest.raises(DataError, match="needs at least 65"):
        td.check_block_size(64)


def test_get_batch():
    data = torch.arange(100)
    x, y = get_batch(data, 8, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)
    x2, _ = get_batch(data, 8, 4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    # compact numpy tokens (what prepare and tokenize give): the same windows, widened to int64
    for dtype in (np.uint16, np.uint32):
        ids = np.arange(100, dtype=dtype)
        ids.flags.writeable = False
        xn, yn = get_batch(ids, 8, 4, torch.Generator().manual_seed(0))
        assert xn.dtype == yn.dtype == torch.int64 and torch.equal(xn, x) and torch.equal(yn, y)


def test_shakespeare_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="--data-file"):
        shakespeare_path(url="http://127.0.0.1:9/input.txt")


def test_shakespeare_wrong_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fake.txt"
    fake.write_text("not shakespeare")
    with pytest.raises(DataError, match="SHA-256"):
        shakespeare_path(url=fake.as_uri())
    assert not (tmp_path / "cache" / "tinyshakespeare.txt").exists()


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt").is_file(),
                    reason="no local copy of tiny Shakespeare")
def test_shakespeare_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path))
    src = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"
    path = shakespeare_path(url=src.as_uri())
    assert len(path.read_text()) == 1_115_394
    assert shakespeare_path(url="http://127.0.0.1:9/") == path  # cached and verified: no download


def test_cache_list_and_clean(tmp_path, monkeypatch, capsys):
    """`python -m nanogpt.cache`: lists the entries with their source and last use; `clean --older-than` removes
    only the stale ones (a later run tokenizes again), `--all` the rest, and a build left by a dead process."""
    import os
    import time

    from nanogpt import cache

    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path))
    f = tmp_path / "mine.txt"
    f.write_text("hello world\n" * 200)
    prepare("counting")
    prepare(data_file=f)
    found = cache.entries()
    assert {e.source for e in found} == {"built-in counting", str(f.resolve())}
    assert cache.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "built-in counting" in out and "2 entries" in out

    stale = next(e for e in found if e.source == "built-in counting")
    old = time.time() - 10 * 86400
    os.utime(stale.path / "meta.json", (old, old))
    assert prepare(data_file=f)[0].from_cache  # a hit marks its entry used now
    dead = tmp_path / "tokens" / f".{stale.path.name}.999999999.tmp"  # no such pid
    dead.mkdir()
    (dead / "train.bin").write_bytes(b"\0" * 10)

    assert cache.main(["clean", "--older-than", "7"]) == 0
    assert "1 entries removed" in capsys.readouterr().out
    assert [e.source for e in cache.entries()] == [str(f.resolve())] and not dead.exists()
    assert not prepare("counting")[0].from_cache  # tokenized again

    assert cache.main(["clean", "--all"]) == 0
    assert cache.entries() == []
    for argv, msg in ((["clean"], "clean needs --older-than DAYS or --all"),
                      (["clean", "--older-than", "-1"], "--older-than must be a number of days >= 0")):
        with pytest.raises(UserError, match=msg):
            cache.main(argv)
    proc = run_cli("nanogpt.cache", "clean", env={"NANOGPT_TUNE_CACHE": str(tmp_path)})
    assert_one_line_error(proc, "clean needs --older-than DAYS or --all")
    assert proc.returncode == 2
