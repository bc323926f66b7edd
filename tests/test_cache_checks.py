"""Token cache entries are checked: ids against the vocabulary when an entry is built, its size and checksum
(sampled blocks) and its ids when it is reused. A corrupt entry is said once and tokenized again."""

import logging

import numpy as np
import pytest

from nanogpt.token_cache import CACHE_FORMAT, CHECK_BLOCKS, CHECK_BLOCK_BYTES, prepare, sampled_crc


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entry(cache):
    (entry,) = [p for p in (cache / "tokens").iterdir() if p.name.endswith(f"-v{CACHE_FORMAT}")]
    return entry


def _patch(path, pos, value):
    ids = np.memmap(path, dtype=np.uint16, mode="r+")
    ids[pos] = value
    ids.flush()
    del ids


@pytest.mark.parametrize("where", ["start", "end"])
def test_cache_entry_with_ids_outside_the_vocabulary_is_not_reused(tmp_path, cache, caplog, where):
    f = tmp_path / "c.txt"
    f.write_text("hello world, hello tokens\n" * 400)
    first, tok = prepare(None, f, "char")
    expected = np.array(first.train)  # a copy: the prepared tokens are a view of the entry's file
    train = _entry(cache) / "train.bin"
    _patch(train, 0 if where == "start" else -1, 60000)  # same size, an id far past the 13-token vocabulary
    with caplog.at_level(logging.WARNING, logger="nanogpt.token_cache"):
        again, tok2 = prepare(None, f, "char")
    assert int(again.train.max()) < tok2.vocab_size
    assert np.array_equal(again.train, expected) and not again.from_cache
    assert len([r for r in caplog.records if "is corrupt" in r.message]) == 1, caplog.text


def test_cache_entry_changed_within_the_vocabulary_is_caught_by_its_checksum(tmp_path, cache, caplog):
    f = tmp_path / "c.txt"
    f.write_text("hello world, hello tokens\n" * 400)
    first, _ = prepare(None, f, "char")
    expected = np.array(first.train)
    train = _entry(cache) / "train.bin"
    _patch(train, 3, (int(expected[3]) + 1) % 5)  # another valid id
    with caplog.at_level(logging.WARNING, logger="nanogpt.token_cache"):
        again, _ = prepare(None, f, "char")
    assert np.array_equal(again.train, expected) and not again.from_cache
    assert "does not match its checksum" in caplog.text


def test_sampled_checksum_reads_only_blocks_of_a_large_file(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(CHECK_BLOCKS * CHECK_BLOCK_BYTES * 4))
    before = sampled_crc(big)
    data = bytearray(big.read_bytes())
    data[-1] = 1  # the last block is always among those read
    big.write_bytes(bytes(data))
    assert sampled_crc(big) != before


def test_building_an_entry_refuses_ids_outside_the_vocabulary(tmp_path, cache, monkeypatch):
    from nanogpt.tokenizer import CharTokenizer

    f = tmp_path / "c.txt"
    f.write_text("hello world\n" * 100)
    real = CharTokenizer.encode_array
    monkeypatch.setattr(CharTokenizer, "encode_array", lambda self, text: real(self, text) + 1000)  # a broken encoder
    with pytest.raises(RuntimeError, match="produced id"):
        prepare(None, f, "char")
    assert not (cache / "tokens").exists() or not [p for p in (cache / "tokens").iterdir() if p.name.endswith("-v2")]


def test_a_build_directory_names_its_builder():
    """`python -m nanogpt.cache clean` finds builds left by killed processes by the name build_dir gives them."""
    from pathlib import Path

    from nanogpt.token_cache import build_dir, build_pid, entry_dir

    entry = entry_dir(Path("/c/tokens"), "ab" * 32, "bpe512")
    assert build_pid(build_dir(entry, 4242)) == 4242
    for other in (entry, entry.with_name(".x.tmp"), entry.with_name(f".{entry.name}.12a.tmp"), Path("/c/locks")):
        assert build_pid(other) is None, other
