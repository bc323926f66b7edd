"""Text corpora, train/val splits, tokens and batches.

Built-in corpora are generated in code (no download). `shakespeare` is tiny Shakespeare,
downloaded once into a cache and checked by SHA-256. Any UTF-8 text file works too.

`prepare` tokenizes a corpus of any size once, streaming: the text is read in chunks and never
held whole; the tokens (uint16, or uint32 for vocabularies over 65,535) and the tokenizer are
kept in the cache directory, keyed by the text's SHA-256 and the tokenizer settings, and read
back memory-mapped. A file's size and times are checked before its content is hashed again.
"""

from __future__ import annotations

import atexit
import hashlib
import http.client
import json
import logging
import os
import random
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanogpt.corpora import BUILTIN_CORPORA
from nanogpt.errors import UserError
from nanogpt.files import write_json  # noqa: F401 (the cache and tune.progress write through it)
from nanogpt.tokenizer import (
    MAX_CODE_POINT,
    MIN_BPE_VOCAB,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    code_points,
    load_tokenizer,
    save_tokenizer,
    token_dtype,
    tokenizer_from_dict,
)

log = logging.getLogger(__name__)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
VAL_FRACTION = 0.1
_SPLIT_SEED = 1337  # built-in corpora are split the same way on every machine
CHUNK_BYTES = 16 << 20  # text read and encoded at a time
PROGRESS_MIN_BYTES = 16 << 20  # smaller inputs prepare in about a second: no progress lines
CACHE_FORMAT = 2  # bump when the stored tokens, their checks or the encoding change
CHECK_BLOCKS = 32  # blocks of a token file whose checksum a cache entry keeps and every reuse verifies
CHECK_BLOCK_BYTES = 1 << 16
HEAD_CHARS = 4096  # the corpus's first characters, kept for default prompts


class DataError(UserError):
    """Bad or unavailable data. The message says what to do."""


@dataclass
class Dataset:
    name: str
    train_text: str
    val_text: str

    @property
    def text(self) -> str:
        return self.train_text + self.val_text


DATASETS = sorted([*BUILTIN_CORPORA, "shakespeare"])


def _split_docs(groups: dict[str, list[str]]) -> tuple[str, str]:
    """Stratified document split: every kind of document lands in validation too."""
    rng = random.Random(_SPLIT_SEED)
    train, val = [], []
    for docs in groups.values():
        docs = list(docs)
        rng.shuffle(docs)
        n_val = max(1, round(len(docs) * VAL_FRACTION))
        val += docs[:n_val]
        train += docs[n_val:]
    rng.shuffle(train)
    rng.shuffle(val)
    return "".join(train), "".join(val)


def split_text(text: str) -> tuple[str, str]:
    """nanoGPT's split for a plain text: the first 90% trains, the last 10% validates."""
    n = int(len(text) * (1 - VAL_FRACTION))
    return text[:n], text[n:]


# --- tiny Shakespeare ---------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("NANOGPT_TUNE_CACHE", Path.home() / ".cache" / "nanogpt-tune")).expanduser()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shakespeare_path(url: str | None = None) -> Path:
    """Path of the cached tiny Shakespeare, downloading it once. Safe when several processes ask at once."""
    from filelock import FileLock

    url = url or os.environ.get("NANOGPT_TUNE_SHAKESPEARE_URL", SHAKESPEARE_URL)
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data cache {root} ({e.strerror}); set NANOGPT_TUNE_CACHE to a writable directory") from None
    path = root / "tinyshakespeare.txt"
    with FileLock(str(path) + ".lock"):
        if path.exists() and _sha256(path) == SHAKESPEARE_SHA256:
            return path
        tmp = path.with_suffix(".part")
        log.info("downloading tiny Shakespeare from %s", url)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                tmp.write_bytes(r.read())
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            tmp.unlink(missing_ok=True)
            reason = getattr(e, "reason", e)
            raise DataError(
                f"could not download tiny Shakespeare from {url} ({reason}); if you are offline, "
                f"use --data-file PATH with a local copy of tinyshakespeare.txt"
            ) from None
        got = _sha256(tmp)
        if got != SHAKESPEARE_SHA256:
            tmp.unlink(missing_ok=True)
            raise DataError(
                f"downloaded tiny Shakespeare has SHA-256 {got[:12]}..., expected {SHAKESPEARE_SHA256[:12]}...; "
                f"the file at {url} is not the expected one: use --data-file PATH with a local copy"
            )
        os.replace(tmp, path)
        return path


# --- text files ---------------------------------------------------------------------------


def _binary_error(path: Path, pos: int) -> DataError:
    return DataError(f"data file {path} looks binary (it contains NUL bytes, the first at byte {pos}): "
                     f"give --data-file a UTF-8 text file")


def _utf8_error(path: Path, pos: int, byte: int, line: int) -> DataError:
    return DataError(
        f"data file {path} is not UTF-8: invalid byte 0x{byte:02x} at byte {pos} (line {line}); "
        f"convert it, e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`"
    )


def _empty_error(path: Path) -> DataError:
    return DataError(f"data file {path} is empty: give --data-file a file with text in it")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file {path} does not exist: check the path given to --data-file")
    if not path.is_file():
        raise DataError(f"data file {path} is not a regular file: give --data-file a text file")


def read_text_file(path: str | Path) -> str:
    """The whole file as one string (small files; `prepare` streams any size)."""
    path = Path(path)
    _check_file(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise _empty_error(path)
    if (nul := raw.find(b"\x00")) >= 0:
        raise _binary_error(path, nul)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, e.start, raw[e.start], raw[: e.start].count(b"\n") + 1) from None


def _complete_prefix(b: bytes) -> int:
    """Length of the longest prefix of b that does not end inside a UTF-8 character."""
    for k in range(1, min(4, len(b)) + 1):
        c = b[-k]
        if c & 0xC0 != 0x80:  # not a continuation byte: the last character starts here
            need = 2 if 0xC0 <= c < 0xE0 else 3 if 0xE0 <= c < 0xF0 else 4 if 0xF0 <= c < 0xF8 else 1
            return len(b) - k if need > k else len(b)
    return len(b)  # only continuation bytes: invalid, and the decoder says where


def _read_chunks(path: Path, progress: _Progress | None = None) -> Iterator[tuple[bytes, str]]:
    """(raw bytes, text) chunks of a UTF-8 file, cut between characters. Bad bytes are a DataError
    that says where, whichever chunk they fall in."""
    pos, carry = 0, b""  # pos: file offset of carry's first byte
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_BYTES)
            raw = carry + block if carry else block
            if not block:
                break
            cut = _complete_prefix(raw)
            raw, carry = raw[:cut], raw[cut:]
            yield raw, _decode(path, raw, pos)
            pos += len(raw)
            if progress:
                progress.add(len(raw))
    if carry:  # the file ends inside a character
        _decode(path, carry, pos)


def _decode(path: Path, raw: bytes, pos: int) -> str:
    if (nul := raw.find(b"\x00")) >= 0:
        raise _binary_error(path, pos + nul)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = pos + e.start
        with open(path, "rb") as f:
            line = sum(b.count(b"\n") for b in _blocks(f, at)) + 1
        raise _utf8_error(path, at, raw[e.start], line) from None


def _blocks(f, n: int) -> Iterator[bytes]:
    while n > 0 and (b := f.read(min(n, CHUNK_BYTES))):
        n -= len(b)
        yield b


def load_dataset(name: str | None = None, data_file: str | Path | None = None) -> Dataset:
    """A built-in corpus by name, tiny Shakespeare, or any UTF-8 text file, as strings (small corpora;
    `prepare` tokenizes any size without holding the text)."""
    if data_file is not None:
        if name is not None:
            raise DataError("give either --dataset or --data-file, not both")
        text = read_text_file(data_file)
        train, val = split_text(text)
        return Dataset(name=Path(data_file).name, train_text=train, val_text=val)
    name = name or "mixed"
    if name == "shakespeare":
        text = shakespeare_path().read_text(encoding="utf-8")
        train, val = split_text(text)
        return Dataset(name="shakespeare", train_text=train, val_text=val)
    if name not in BUILTIN_CORPORA:
        raise _unknown_dataset(name)
    train, val = _split_docs(BUILTIN_CORPORA[name]())
    return Dataset(name=name, train_text=train, val_text=val)


def _unknown_dataset(name: str) -> DataError:
    return DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or use --data-file PATH")


# --- tokens and batches -------------------------------------------------------------------


@dataclass
class TokenData:
    """A tokenized train/val split, ready to batch.

    Read-only numpy arrays (uint16, or uint32 past 65,535 tokens), memory-mapped from the cache
    when `prepare` made them: Ray's object store holds one copy per node and trials read it in
    place (zero-copy), and `get_batch` converts only the batch to int64."""

    train: np.ndarray  # (N_train,) token ids
    val: np.ndarray  # (N_val,)
    val_chars_per_token: float  # for bits per character
    dataset: str
    from_cache: bool = False  # prepare found the tokens in the cache: nothing was tokenized
    prepare_s: float = 0.0  # seconds prepare took, cache look-up included
    head: str = ""  # the corpus's first characters (default prompts for a file)

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold at least one full (block_size + 1)-token window."""
        need = block_size + 1
        for split, ids in (("training", self.train), ("validation", self.val)):
            if len(ids) < need:
                total = int(need / VAL_FRACTION) if split == "validation" else int(need / (1 - VAL_FRACTION))
                raise DataError(
                    f"data set {self.dataset} is too short for block_size {block_size}: its {split} split has "
                    f"{len(ids)} tokens, needs at least {need} (about {total} tokens in all); "
                    f"use more text or a smaller block size"
                )

    def describe(self) -> str:
        """What preparing took, for the entry points' "data: ..." line."""
        tokens = f"{len(self.train):,} train / {len(self.val):,} val tokens ({self.train.dtype})"
        if self.from_cache:
            return f"{self.dataset}, {tokens}: used the cache ({self.prepare_s:.1f} s)"
        return f"{self.dataset}, {tokens}: tokenized in {self.prepare_s:.1f} s, cached for the next run"


def _encode_text(tokenizer: Tokenizer, text: str) -> np.ndarray:
    enc = tokenizer.stream_encoder()
    parts = [enc.feed(text[i : i + CHUNK_BYTES]) for i in range(0, len(text), CHUNK_BYTES)] + [enc.finish()]
    ids = np.concatenate(parts)
    ids.flags.writeable = False
    return ids


def tokenize(dataset: Dataset, tokenizer: Tokenizer) -> TokenData:
    """Tokenize a Dataset held in memory (no cache): the same ids as `prepare`."""
    train, val = _encode_text(tokenizer, dataset.train_text), _encode_text(tokenizer, dataset.val_text)
    chars_per_token = len(dataset.val_text) / max(1, len(val))
    return TokenData(train=train, val=val, val_chars_per_token=chars_per_token, dataset=dataset.name,
                     head=dataset.train_text[:HEAD_CHARS])


def get_batch(
    data: np.ndarray | torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x is (B, T) tokens, y the same windows shifted by one (next-token targets).

    Only the batch is gathered and widened to int64: the corpus stays in its compact dtype."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    if isinstance(data, torch.Tensor):
        windows = data.unfold(0, block_size + 1, 1)[ix]  # (B, T+1)
    else:
        idx = ix.numpy()[:, None] + np.arange(block_size + 1)  # (B, T+1)
        windows = torch.from_numpy(data[idx].astype(np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


# --- prepare: tokenize once, streaming, cached ------------------------------------------------


class _Progress:
    """MB done and MB/s on the nanogpt.data logger, about once a second, for inputs worth waiting on."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.done = what, total, 0
        self.on = total >= PROGRESS_MIN_BYTES
        self.t0 = self.last = time.perf_counter()

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.on and now - self.last >= 1.0:
            self.last = now
            log.info("%s: %.0f of %.0f MB, %.0f MB/s", self.what, self.done / 1e6, self.total / 1e6,
                     self.done / 1e6 / (now - self.t0))

    def end(self) -> None:
        if self.on:
            dt = time.perf_counter() - self.t0
            log.info("%s: %.0f MB in %.1f s, %.0f MB/s", self.what, self.total / 1e6, dt, self.total / 1e6 / max(dt, 1e-9))


@dataclass
class _Scan:
    """What one pass over the text tells: content hash, length, first characters, characters seen."""

    sha256: str
    n_chars: int
    head: str
    seen: np.ndarray | None  # (MAX_CODE_POINT + 1,) bool, for the char tokenizer


class _Scanner:
    def __init__(self, want_chars: bool):
        self.h = hashlib.sha256()
        self.n_chars, self.head = 0, ""
        self.seen = np.zeros(MAX_CODE_POINT + 1, dtype=bool) if want_chars else None

    def add(self, text: str, raw: bytes | None = None) -> None:
        self.h.update(raw if raw is not None else text.encode("utf-8"))
        self.n_chars += len(text)
        if len(self.head) < HEAD_CHARS:
            self.head += text[: HEAD_CHARS - len(self.head)]
        if self.seen is not None:
            cps = np.frombuffer(text.encode("ascii"), np.uint8) if text.isascii() else code_points(text)
            for i in range(0, len(cps), 1 << 18):
                self.seen[cps[i : i + (1 << 18)]] = True

    def result(self) -> _Scan:
        return _Scan(self.h.hexdigest(), self.n_chars, self.head, self.seen)


class _FileSource:
    """A text file: read in chunks; its first 90% trains (nanoGPT's split)."""

    def __init__(self, path: Path, name: str):
        _check_file(path)
        self.path, self.name = path, name
        self.n_bytes = path.stat().st_size
        self.stat: dict | None = None  # size and times when scanned

    def _stat(self) -> dict:
        st = self.path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}

    def _index_path(self, root: Path) -> Path:
        return root / "files" / (hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:32] + ".json")

    def remembered_sha(self, root: Path) -> str | None:
        """The content hash recorded for this path, if its size and times have not changed since."""
        try:
            rec = json.loads(self._index_path(root).read_text())
        except (OSError, ValueError):
            return None
        return rec.get("sha256") if rec.get("stat") == self._stat() else None

    def scan(self, root: Path, want_chars: bool) -> _Scan:
        before = self._stat()
        sc = _Scanner(want_chars)
        progress = _Progress(f"checking {self.name}", self.n_bytes)
        nonblank = False
        for raw, text in _read_chunks(self.path, progress):
            nonblank = nonblank or bool(raw.strip())
            sc.add(text, raw)
        progress.end()
        if not nonblank:
            raise _empty_error(self.path)
        if self._stat() != before:
            raise self._changed()
        scan = sc.result()
        write_json(self._index_path(root), {"path": str(self.path.resolve()), "stat": before, "sha256": scan.sha256})
        self.stat = before
        return scan

    def n_train_chars(self, scan: _Scan) -> int:
        return int(scan.n_chars * (1 - VAL_FRACTION))

    def chunks(self, what: str) -> Iterator[str]:
        progress = _Progress(f"{what} {self.name}", self.n_bytes)
        for _, text in _read_chunks(self.path, progress):
            yield text
        progress.end()

    def check_unchanged(self) -> None:
        if self._stat() != self.stat:
            raise self._changed()

    def describe_source(self) -> str:
        return str(self.path.resolve())

    def _changed(self) -> DataError:
        return DataError(f"data file {self.path} changed while it was being read: run again once it is written")


class _TextSource:
    """A corpus made in code: its document split decides train and validation."""

    def __init__(self, dataset: Dataset):
        self.ds, self.name = dataset, dataset.name

    def remembered_sha(self, root: Path) -> str | None:
        return None  # made in code in milliseconds: hashed every time

    def scan(self, root: Path, want_chars: bool) -> _Scan:
        sc = _Scanner(want_chars)
        sc.h.update(f"built-in corpus {self.name}, train then val\n".encode())
        sc.add(self.ds.train_text)
        sc.h.update(b"\x00")  # where validation starts is part of the content
        sc.add(self.ds.val_text)
        return sc.result()

    def n_train_chars(self, scan: _Scan) -> int:
        return len(self.ds.train_text)

    def chunks(self, what: str) -> Iterator[str]:
        for text in (self.ds.train_text, self.ds.val_text):
            for i in range(0, len(text), CHUNK_BYTES):
                yield text[i : i + CHUNK_BYTES]

    def check_unchanged(self) -> None:
        pass

    def describe_source(self) -> str:
        return f"built-in {self.name}"


def _source(dataset: str | None, data_file: str | Path | None) -> _FileSource | _TextSource:
    if data_file is not None:
        if dataset is not None:
            raise DataError("give either --dataset or --data-file, not both")
        return _FileSource(Path(data_file), Path(data_file).name)
    dataset = dataset or "mixed"
    if dataset == "shakespeare":
        return _FileSource(shakespeare_path(), "shakespeare")
    if dataset not in BUILTIN_CORPORA:
        raise _unknown_dataset(dataset)
    return _TextSource(load_dataset(dataset))


def _line_batches(chunks: Iterator[str]) -> Iterator[list[str]]:
    """The lines of the text, str.splitlines(keepends=True) as if on the whole: a chunk's last line
    waits for the next chunk ("\r" then "\n" is one line end)."""
    carry = ""
    for text in chunks:
        lines = (carry + text).splitlines(keepends=True)
        carry = lines.pop() if lines else ""
        if lines:
            yield lines
    if carry:
        yield [carry]


_fallback_root: Path | None = None


def tokens_dir() -> Path:
    """Where prepared tokens are cached: one entry directory per content hash and tokenizer."""
    return cache_dir() / "tokens"


def lock_path(entry: Path) -> Path:
    """The file lock of one cache entry, held while a process builds it."""
    return entry.parent / "locks" / f"{entry.name}.lock"


def build_dir(entry: Path, pid: int) -> Path:
    """Where process `pid` builds an entry before renaming it into place (`nanogpt.cache` reads this name)."""
    return entry.with_name(f".{entry.name}.{pid}.tmp")


def _token_root() -> Path:
    """tokens_dir(), or a private temp dir (removed at exit) when that is not writable."""
    global _fallback_root
    root = tokens_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
        return root
    except OSError as e:
        reason = e.strerror or str(e)
    if _fallback_root is None:
        try:
            _fallback_root = Path(tempfile.mkdtemp(prefix="nanogpt-tune-tokens-"))
        except OSError:
            raise DataError(f"the cache directory {root} is not writable ({reason}) and neither is the temp dir: "
                            f"set NANOGPT_TUNE_CACHE to a writable directory") from None
        atexit.register(shutil.rmtree, _fallback_root, True)
        log.warning("the cache directory %s is not writable (%s): tokens go to %s for this run only; "
                    "set NANOGPT_TUNE_CACHE to a writable directory to keep them", root, reason, _fallback_root)
    return _fallback_root


def _mark_used(entry: Path) -> None:
    """meta.json's mtime is when the entry was last used: `python -m nanogpt.cache clean --older-than` reads it."""
    try:
        os.utime(entry / "meta.json")
    except OSError:  # a read-only cache is still read; its entries simply keep their old date
        pass


def _map(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if n == 0:
        ids = np.empty(0, dtype)
        ids.flags.writeable = False
        return ids
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", shape=(n,)))  # a plain read-only ndarray view


def sampled_crc(path: Path) -> int:
    """CRC-32 of the file's size and of CHECK_BLOCKS blocks spread evenly over it (the first and the last among
    them; all of a small file). A cache hit reads a few MB whatever the size, where a full checksum reads it all."""
    size = path.stat().st_size
    crc = zlib.crc32(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        if size <= CHECK_BLOCKS * CHECK_BLOCK_BYTES:
            return zlib.crc32(f.read(), crc)
        step = (size - CHECK_BLOCK_BYTES) / (CHECK_BLOCKS - 1)
        for i in range(CHECK_BLOCKS):
            f.seek(int(i * step))
            crc = zlib.crc32(f.read(CHECK_BLOCK_BYTES), crc)
    return crc


def _ids_problem(ids: np.ndarray, vocab_size: int) -> str | None:
    """Ids outside the vocabulary would index past the embedding table (one pass of numpy's max)."""
    top = int(ids.max()) if len(ids) else -1
    return f"id {top} in a vocabulary of {vocab_size}" if top >= vocab_size else None


def _load_entry(entry: Path, quiet: bool = False) -> tuple[dict, np.ndarray, np.ndarray, Tokenizer] | None:
    """A complete cache entry, memory-mapped and checked (sizes, sampled checksums, ids within the vocabulary);
    None if it is missing, partial, of another format, or fails a check (logged unless `quiet`: it is rebuilt)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        dtype, tok = np.dtype(meta["dtype"]), load_tokenizer(entry / "tokenizer.json")
        ids, problem = [], None
        for split in ("train", "val"):
            path, n = entry / f"{split}.bin", meta[f"n_{split}"]
            if path.stat().st_size != n * dtype.itemsize:
                problem = f"{path.name} is {path.stat().st_size:,} bytes, not {n * dtype.itemsize:,}"
            elif sampled_crc(path) != meta["crc"][split]:
                problem = f"{path.name} does not match its checksum"
            else:
                ids.append(_map(path, dtype, n))
                problem = _ids_problem(ids[-1], tok.vocab_size)
            if problem:
                break
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if problem:
        if not quiet:
            log.warning("the token cache entry %s is corrupt (%s): tokenizing again", entry, problem)
        return None
    return meta, ids[0], ids[1], tok


def _build_tokenizer(spec: dict, source, scan: _Scan) -> Tokenizer:
    if spec["kind"] == "given":
        return tokenizer_from_dict(spec["tokenizer"])
    if spec["kind"] == "char":
        return CharTokenizer([chr(c) for c in np.flatnonzero(scan.seen)])  # code point order = sorted(set(text))
    return BPETokenizer.train_from_iterator(_line_batches(source.chunks("training BPE on")), spec["vocab_size"])


def _checked(ids: np.ndarray, tok: Tokenizer) -> np.ndarray:
    problem = _ids_problem(ids, tok.vocab_size)
    if problem:  # a bug in an encoder: never cache it
        raise RuntimeError(f"the {tok.kind} tokenizer produced {problem}")
    return ids


def _build(entry: Path, source, scan: _Scan, spec: dict) -> None:
    """Tokenize the source into a temp dir beside the entry, then rename it into place."""
    tok = _build_tokenizer(spec, source, scan)
    tmp = build_dir(entry, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        n_train = source.n_train_chars(scan)
        encoders = {"train": tok.stream_encoder(), "val": tok.stream_encoder()}
        with open(tmp / "train.bin", "wb") as f_train, open(tmp / "val.bin", "wb") as f_val:
            files, done = {"train": f_train, "val": f_val}, 0
            for text in source.chunks("tokenizing"):
                cut = min(len(text), max(0, n_train - done))  # char n_train starts validation
                done += len(text)
                if cut:
                    _checked(encoders["train"].feed(text[:cut] if cut < len(text) else text), tok).tofile(f_train)
                if cut < len(text):
                    _checked(encoders["val"].feed(text[cut:]), tok).tofile(f_val)
            for split, enc in encoders.items():
                _checked(enc.finish(), tok).tofile(files[split])
        source.check_unchanged()
        dtype = token_dtype(tok.vocab_size)
        meta = {
            "format": CACHE_FORMAT,
            "dtype": dtype.name,
            "n_train": (tmp / "train.bin").stat().st_size // dtype.itemsize,
            "n_val": (tmp / "val.bin").stat().st_size // dtype.itemsize,
            "val_chars": scan.n_chars - n_train,
            "head": scan.head,
            "sha256": scan.sha256,
            "crc": {split: sampled_crc(tmp / f"{split}.bin") for split in ("train", "val")},
            "tokenizer": {k: v for k, v in spec.items() if k != "tokenizer"},
            "source": source.describe_source(),  # for `python -m nanogpt.cache list`
        }
        save_tokenizer(tok, tmp / "tokenizer.json")
        write_json(tmp / "meta.json", meta)
        shutil.rmtree(entry, ignore_errors=True)  # a partial entry left by a killed process
        os.rename(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_spec(tokenizer: str | Tokenizer, bpe_vocab_size: int) -> tuple[dict, str]:
    """The settings that decide the tokens, and their tag in the cache key."""
    if not isinstance(tokenizer, str):
        d = tokenizer.to_dict()
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
        return {"kind": "given", "tokenizer": d}, f"given-{digest}"
    if tokenizer == "char":
        return {"kind": "char"}, "char"
    if tokenizer == "bpe":
        if bpe_vocab_size < MIN_BPE_VOCAB:
            raise DataError(f"--bpe-vocab-size must be at least {MIN_BPE_VOCAB} (256 bytes + <unk>), got {bpe_vocab_size}")
        return {"kind": "bpe", "vocab_size": bpe_vocab_size}, f"bpe{bpe_vocab_size}"
    raise DataError(f"unknown tokenizer {tokenizer!r}: use 'char' or 'bpe'")


def prepare(
    dataset: str | None = None,
    data_file: str | Path | None = None,
    tokenizer: str | Tokenizer = "char",
    bpe_vocab_size: int = 512,
) -> tuple[TokenData, Tokenizer]:
    """Tokenize a built-in corpus, tiny Shakespeare or a text file once, and cache the tokens.

    `tokenizer` is "char", "bpe" (trained on the corpus, `bpe_vocab_size` tokens) or a tokenizer
    object (e.g. a checkpoint's, on resume). Safe when several processes prepare the same data at
    once: one tokenizes, the others wait and read its tokens."""
    from filelock import FileLock, Timeout

    t0 = time.perf_counter()
    spec, tag = _tokenizer_spec(tokenizer, bpe_vocab_size)
    source = _source(dataset, data_file)
    root = _token_root()

    def entry_of(sha: str) -> Path:
        return root / f"{sha[:32]}-{tag}-v{CACHE_FORMAT}"

    sha = source.remembered_sha(root)
    loaded = _load_entry(entry_of(sha)) if sha else None
    built = False
    if loaded is None:
        scan = source.scan(root, want_chars=spec["kind"] == "char")
        entry = entry_of(scan.sha256)
        loaded = _load_entry(entry, quiet=sha == scan.sha256)  # the same text seen before under another name or time
        if loaded is None:
            lock_path(entry).parent.mkdir(exist_ok=True)
            lock = FileLock(str(lock_path(entry)))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("waiting for another process that is preparing %s", source.name)
                lock.acquire()
            try:
                loaded = _load_entry(entry, quiet=True)
                if loaded is None:
                    _build(entry, source, scan, spec)
                    built, loaded = True, _load_entry(entry)
                    if loaded is None:
                        raise DataError(f"could not read back the tokens just written to {entry}: "
                                        f"check the disk, or set NANOGPT_TUNE_CACHE elsewhere")
            finally:
                lock.release()
    meta, train, val, tok = loaded
    if not built:
        _mark_used(entry_of(meta["sha256"]))
    data = TokenData(train=train, val=val, val_chars_per_token=meta["val_chars"] / max(1, len(val)),
                     dataset=source.name, from_cache=not built, prepare_s=time.perf_counter() - t0,
                     head=meta["head"])
    return data, tok


def default_prompts(name: str, text: str = "") -> list[str]:
    """Prompts that show what a model learned from this data set (`text`: the corpus, for files)."""
    prompts = {
        "counting": ["Number 7 comes before", "Number 456 comes before"],  # numbers below 1,000 (corpora)
        "abc": ["A7B7", "A321B"],
        "stories": ["Alice had a pet", "Once upon a time"],
        "code": ["def add_numbers(a, b):\n", "for i in range("],
        "mixed": ["Number 7 comes before", "A12B12", "Emma had a pet", "x = 3\nif x"],
        "shakespeare": ["ROMEO:", "First Citizen:\n"],
    }
    if name in prompts:
        return prompts[name]
    first_line = text.lstrip().split("\n", 1)[0]
    return [first_line[:24] or "\n"]
