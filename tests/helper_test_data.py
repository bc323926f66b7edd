"""Data: built-in corpora, splits, file errors, tiny Shakespeare's download and cache, batches."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt.data import (
    SHAKESPEARE_SHA256,
    DataError,
    TokenData,
    get_batch,
    load_dataset,
    shakespeare_path,
)

BUILTIN = ["counting", "abc", "stories", "code", "mixed"]
SHAKESPEARE_COPY = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


# --- built-in corpora ---------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_corpus_loads_and_splits(name):
    ds = load_dataset(name)
    assert ds.name == name
    assert ds.train_text and ds.val_text
    assert 0.05 < len(ds.val_text) / len(ds.text) < 0.2  # about 10% validates
    assert ds.text == ds.train_text + ds.val_text


def test_default_dataset_is_mixed():
    assert load_dataset().name == "mixed"


def test_mixed_is_big_and_validation_holds_every_pattern():
    ds = load_dataset("mixed")
    assert len(ds.text) > 100_000
    val_lines = ds.val_text.splitlines()
    assert any(line.startswith("Number ") for line in val_lines)
    assert any(re.fullmatch(r"A(\d+)B\1C\1\.", line) for line in val_lines)
    assert "had a pet" in ds.val_text
    assert "def " in ds.val_text or "print(" in ds.val_text


def test_builtin_split_is_deterministic_across_processes():
    ds = load_dataset("mixed")
    assert load_dataset("mixed") == ds
    # another interpreter, another hash seed: the same split (set or dict order must not leak in)
    code = "import hashlib; from nanogpt.data import load_dataset; print(hashlib.sha256(load_dataset('mixed').val_text.encode()).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(ds.val_text.encode()).hexdigest()


def test_unknown_dataset_points_to_data_file():
    with pytest.raises(DataError, match="--data-file") as e:
        load_dataset("nope")
    assert "unknown dataset" in str(e.value) and "counting" in str(e.value)


# --- text files ----------------------------------------------------------------------------


def test_data_file_loads_and_splits_90_10(tmp_path):
    text = "".join(f"line {i} ünïcode\n" for i in range(100))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    ds = load_dataset(data_file=tmp_path / "t.txt")
    assert ds.name == "t.txt" and ds.text == text
    assert len(ds.train_text) == int(len(text) * 0.9)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_dataset(data_file=tmp_path / "missing.txt")
    assert "--data-file" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"  \n\n\t "])
def test_empty_data_file(tmp_path, content):
    (tmp_path / "e.txt").write_bytes(content)
    with pytest.raises(DataError, match="empty"):
        load_dataset(data_file=tmp_path / "e.txt")


def test_binary_data_file(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"ELF\x00\x01\x02" * 50)
    with pytest.raises(DataError, match="binary.*NUL"):
        load_dataset(data_file=tmp_path / "b.bin")


def test_non_utf8_data_file_names_the_byte_and_line(tmp_path):
    raw = "first line\nsecond café".encode("latin-1")  # é is 0xe9, invalid UTF-8 here
    (tmp_path / "l.txt").write_bytes(raw)
    with pytest.raises(DataError) as e:
        load_dataset(data_file=tmp_path / "l.txt")
    msg = str(e.value)
    assert "not UTF-8" in msg
    assert f"byte {raw.index(0xE9)}" in msg and "line 2" in msg and "0xe9" in msg
    assert "iconv" in msg


def test_dataset_and_data_file_together(tmp_path):
    (tmp_path / "t.txt").write_text("some text " * 20)
    with pytest.raises(DataError, match="not both"):
        load_dataset("counting", data_file=tmp_path / "t.txt")


def test_directory_as_data_file(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        load_dataset(data_file=tmp_path)


# --- tokens and batches ----------------------------------------------------------------------


def test_check_block_size_says_the_minimum():
    td = TokenData(train=torch.arange(100), val=torch.arange(10), val_chars_per_token=1.0, dataset="tiny")
    td.check_block_size(9)  # 10 validation tokens hold one 9 + 1 window
    with pytest.raises(DataError, match="needs at least 11") as e:
        td.check_block_size(10)
    assert "validation" in str(e.value) and "tiny" in str(e.value)
    with pytest.raises(DataError, match="training split has 100 tokens, needs at least 129"):
        td.check_block_size(128)


def test_get_batch_shapes_and_shift():
    data = torch.arange(50) * 3  # distinct, so every window is identifiable
    x, y = get_batch(data, block_size=8, batch_size=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == y.dtype == torch.long
    for row_x, row_y in zip(x, y):
        start = int(row_x[0]) // 3
        assert torch.equal(row_x, data[start : start + 8])
        assert torch.equal(row_y, data[start + 1 : start + 9])  # the next token at every position


def test_get_batch_reaches_every_window():
    data = torch.arange(20)
    x, _ = get_batch(data, block_size=4, batch_size=2000, generator=torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == set(range(16))  # 0 .. len - block_size - 1, the last full window included


def test_get_batch_is_deterministic_per_generator():
    data = torch.arange(1000)
    a = get_batch(data, 16, 8, torch.Generator().manual_seed(3))
    b = get_batch(data, 16, 8, torch.Generator().manual_seed(3))
    c = get_batch(data, 16, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# --- tiny Shakespeare -------------------------------------------------------------------------


def test_shakespeare_offline_says_use_data_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="--data-file"):
        shakespeare_path(url="http://127.0.0.1:9/")  # nothing listens on the discard port
    assert not (tmp_path / "tinyshakespeare.txt").exists()
    assert not (tmp_path / "tinyshakespeare.part").exists()


def test_shakespeare_wrong_content_is_refused_and_not_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(cache))
    fake = tmp_path / "fake.txt"
    fake.write_text("First Citizen:\nnot quite\n")
    with pytest.raises(DataError, match="SHA-256") as e:
        shakespeare_path(url=fake.as_uri())
    assert "--data-file" in str(e.value)
    # nothing but the lock file is left: no partial download, no unverified copy
    assert {p.name for p in cache.iterdir()} <= {"tinyshakespeare.txt.lock"}


@pytest.mark.skipif(not SHAKESPEARE_COPY.is_file(), reason=f"no local copy at {SHAKESPEARE_COPY}")
def test_shakespeare_is_downloaded_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path))
    path = shakespeare_path(url=SHAKESPEARE_COPY.as_uri())
    assert path.parent == tmp_path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHAKESPEARE_SHA256
    mtime = path.stat().st_mtime_ns
    assert shakespeare_path(url="http://127.0.0.1:9/") == path  # verified cache: no second download
    assert path.stat().st_mtime_ns == mtime
    monkeypatch.setenv("NANOGPT_TUNE_SHAKESPEARE_URL", "http://127.0.0.1:9/")
    ds = load_dataset("shakespeare")
    assert len(ds.text) == 1_115_394 and ds.text.startswith("First Citizen:")
