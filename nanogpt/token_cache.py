"""The token cache: a corpus tokenized once, streaming, kept on disk and read back memory-mapped.

`prepare` tokenizes a corpus of any size once: the text is read in chunks and never held whole; the tokens
(uint16, or uint32 for vocabularies over 65,535) and the tokenizer are kept in the cache directory, keyed by the
text's SHA-256 and the tokenizer settings, and read back memory-mapped. A file's size and times are checked before
its content is hashed again. One process builds an entry under a file lock while the others wait; every reuse
checks the entry (sizes, sampled checksums, ids within the vocabulary). `python -m nanogpt.cache` lists and cleans.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nanogpt.batches import TokenData
from nanogpt.errors import DataError
from nanogpt.files import cache_dir, write_json
from nanogpt.sources import Scan, ScannedText, Source, open_source
from nanogpt.tokenizer import (DEFAULT_BPE_VOCAB, DEFAULT_TOKENIZER, TOKENIZERS, Tokenizer, load_tokenizer, save_tokenizer,
                               token_dtype, tokenizer_from_dict)

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the stored tokens, their checks or the encoding change
CHECK_BLOCKS = 32  # blocks of a token file whose checksum a cache entry keeps and every reuse verifies
CHECK_BLOCK_BYTES = 1 << 16

# --- the layout: an entry directory per content hash and tokenizer, a lock and a build directory beside it ----


def tokens_dir() -> Path:
    """Where prepared tokens are cached: one entry directory per content hash and tokenizer."""
    return cache_dir() / "tokens"


def entry_dir(root: Path, sha256: str, tag: str) -> Path:
    return root / f"{sha256[:32]}-{tag}-v{CACHE_FORMAT}"


def entry_dirs(root: Path) -> Iterator[Path]:
    """Every entry directory under root, of any format (a complete entry holds meta.json), builds excluded."""
    for path in root.glob("*-v*") if root.is_dir() else []:
        if not path.name.startswith("."):
            yield path


def lock_path(entry: Path) -> Path:
    """The file lock of one cache entry, held while a process builds it."""
    return entry.parent / "locks" / f"{entry.name}.lock"


def build_dir(entry: Path, pid: int) -> Path:
    """Where process `pid` builds an entry before renaming it into place."""
    return entry.with_name(f".{entry.name}.{pid}.tmp")


def build_pid(path: Path) -> int | None:
    """The pid in a `build_dir`'s name; None for any other name."""
    stem, _, pid = path.name.removesuffix(".tmp").rpartition(".")
    return int(pid) if path.name.endswith(".tmp") and stem.startswith(".") and len(stem) > 1 and pid.isdecimal() else None


def build_dirs(root: Path) -> Iterator[tuple[Path, int]]:
    """(build directory, its builder's pid) under root: builds in progress, or left by killed processes."""
    for path in root.glob(".*.tmp") if root.is_dir() else []:
        if (pid := build_pid(path)) is not None and path.is_dir():
            yield path, pid


def tokenizer_tag(spec: dict) -> str:
    """A tokenizer's settings in a word: 'char', 'bpe512' (the cache key's tag, and what `nanogpt.cache` lists)."""
    return str(spec.get("kind", "?")) + "".join(str(v) for k, v in spec.items() if k not in ("kind", "tokenizer"))


# --- where the tokens go: the cache, or a temp dir for this run when the cache is not writable ------------------

class _FallbackRoot:
    """The private temp dir (removed at exit) this process's tokens go to when the cache is not writable. One per
    process, made when it is first needed: every later prepare() of the process (the next trial in a reused worker,
    the final training) finds the tokens there, and nothing hands a directory from one to the next."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def get(self, root: Path, reason: str) -> Path:
        if self.path is None:
            try:
                self.path = Path(tempfile.mkdtemp(prefix="nanogpt-tune-tokens-"))
            except OSError:
                raise DataError(f"the cache directory {root} is not writable ({reason}) and neither is the temp "
                                f"dir: set NANOGPT_TUNE_CACHE to a writable directory") from None
            atexit.register(shutil.rmtree, self.path, True)
            log.warning("the cache directory %s is not writable (%s): tokens go to %s for this run only; "
                        "set NANOGPT_TUNE_CACHE to a writable directory to keep them", root, reason, self.path)
        return self.path


_FALLBACK_ROOT = _FallbackRoot()


def _token_root() -> Path:
    """tokens_dir(), or a private temp dir (removed at exit) when that is not writable."""
    root = tokens_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
        return root
    except OSError as e:
        return _FALLBACK_ROOT.get(root, e.strerror or str(e))


def _mark_used(entry: Path) -> None:
    """meta.json's mtime is when the entry was last used: `python -m nanogpt.cache clean --older-than` reads it."""
    try:
        os.utime(entry / "meta.json")
    except OSError:  # a read-only cache is still read; its entries simply keep their old date
        pass


# --- lookup: an entry memory-mapped, and checked on every reuse ------------------------------------------------


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


def ids_problem(ids: np.ndarray, vocab_size: int) -> str | None:
    """Ids outside the vocabulary would index past the embedding table (one pass of numpy's max)."""
    top = int(ids.max()) if len(ids) else -1
    return f"id {top} in a vocabulary of {vocab_size}" if top >= vocab_size else None


def load_entry(entry: Path, quiet: bool = False) -> tuple[dict, np.ndarray, np.ndarray, Tokenizer] | None:
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
                problem = ids_problem(ids[-1], tok.vocab_size)
            if problem:
                break
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if problem:
        if not quiet:
            log.warning("the token cache entry %s is corrupt (%s): tokenizing again", entry, problem)
        return None
    return meta, ids[0], ids[1], tok


# --- build: tokenize into a directory beside the entry, then rename it into place ------------------------------


def _build_tokenizer(spec: dict, source: Source, scan: Scan) -> Tokenizer:
    if spec["kind"] == "given":
        return tokenizer_from_dict(spec["tokenizer"])
    settings = {k: v for k, v in spec.items() if k != "kind"}
    return TOKENIZERS[spec["kind"]].build(ScannedText(source, scan), **settings)


def _checked(ids: np.ndarray, tok: Tokenizer) -> np.ndarray:
    problem = ids_problem(ids, tok.vocab_size)
    if problem:  # a bug in an encoder: never cache it
        raise RuntimeError(f"the {tok.kind} tokenizer produced {problem}")
    return ids


def _build(entry: Path, source: Source, scan: Scan, spec: dict) -> None:
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


# --- prepare: look up, else build under the entry's lock -------------------------------------------------------


def _tokenizer_spec(tokenizer: str | Tokenizer, bpe_vocab_size: int) -> tuple[dict, str]:
    """The settings that decide the tokens, and their tag in the cache key."""
    if not isinstance(tokenizer, str):
        d = tokenizer.to_dict()
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
        return {"kind": "given", "tokenizer": d}, f"given-{digest}"
    if tokenizer not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {tokenizer!r}: use {' or '.join(map(repr, TOKENIZERS))}")
    spec = {"kind": tokenizer, **TOKENIZERS[tokenizer].settings(bpe_vocab_size)}
    return spec, tokenizer_tag(spec)


def _reads_characters(spec: dict) -> bool:
    return spec["kind"] in TOKENIZERS and TOKENIZERS[spec["kind"]].reads_characters


def prepare(
    dataset: str | None = None,
    data_file: str | Path | None = None,
    tokenizer: str | Tokenizer = DEFAULT_TOKENIZER,
    bpe_vocab_size: int = DEFAULT_BPE_VOCAB,
) -> tuple[TokenData, Tokenizer]:
    """Tokenize a built-in corpus, tiny Shakespeare or a text file once, and cache the tokens.

    `tokenizer` is a name in `nanogpt.tokenizer.TOKENIZERS` ("char"; "bpe", trained on the corpus, `bpe_vocab_size`
    tokens) or a tokenizer object (e.g. a checkpoint's, on resume). Safe when several processes prepare the same
    data at once: one tokenizes, the others wait and read its tokens."""
    from filelock import FileLock, Timeout

    t0 = time.perf_counter()
    spec, tag = _tokenizer_spec(tokenizer, bpe_vocab_size)
    source = open_source(dataset, data_file)
    root = _token_root()
    sha = source.remembered_sha(root)
    loaded = load_entry(entry_dir(root, sha, tag)) if sha else None
    built = False
    if loaded is None:
        scan = source.scan(root, want_chars=_reads_characters(spec))
        entry = entry_dir(root, scan.sha256, tag)
        loaded = load_entry(entry, quiet=sha == scan.sha256)  # the same text seen before under another name or time
        if loaded is None:
            lock_path(entry).parent.mkdir(exist_ok=True)
            lock = FileLock(str(lock_path(entry)))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("waiting for another process that is preparing %s", source.name)
                lock.acquire()
            try:
                loaded = load_entry(entry, quiet=True)
                if loaded is None:
                    _build(entry, source, scan, spec)
                    built, loaded = True, load_entry(entry)
                    if loaded is None:
                        raise DataError(f"could not read back the tokens just written to {entry}: "
                                        f"check the disk, or set NANOGPT_TUNE_CACHE elsewhere")
            finally:
                lock.release()
    meta, train, val, tok = loaded
    if not built:
        _mark_used(entry_dir(root, meta["sha256"], tag))
    data = TokenData(train=train, val=val, val_chars_per_token=meta["val_chars"] / max(1, len(val)),
                     dataset=source.name, from_cache=not built, prepare_s=time.perf_counter() - t0,
                     head=meta["head"])
    return data, tok
