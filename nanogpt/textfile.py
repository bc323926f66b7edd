"""UTF-8 text files: checked (exists, not empty, not binary, valid UTF-8, each error saying where), and read whole
or streamed in chunks cut between characters, with progress lines for inputs worth waiting on."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from nanogpt.errors import DataError

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 20  # text read and encoded at a time
PROGRESS_MIN_BYTES = 16 << 20  # smaller inputs prepare in about a second: no progress lines


def _binary_error(path: Path, pos: int) -> DataError:
    return DataError(f"data file {path} looks binary (it contains NUL bytes, the first at byte {pos}): "
                     f"give --data-file a UTF-8 text file")


def _utf8_error(path: Path, pos: int, byte: int, line: int) -> DataError:
    return DataError(
        f"data file {path} is not UTF-8: invalid byte 0x{byte:02x} at byte {pos} (line {line}); "
        f"convert it, e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`"
    )


def empty_error(path: Path) -> DataError:
    return DataError(f"data file {path} is empty: give --data-file a file with text in it")


def check_file(path: Path) -> None:
    """The path names a regular file."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist: check the path given to --data-file")
    if not path.is_file():
        raise DataError(f"data file {path} is not a regular file: give --data-file a text file")


def read_text_file(path: str | Path) -> str:
    """The whole file as one string (small files; `nanogpt.token_cache.prepare` streams any size)."""
    path = Path(path)
    check_file(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise empty_error(path)
    if (nul := raw.find(b"\x00")) >= 0:
        raise _binary_error(path, nul)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, e.start, raw[e.start], raw[: e.start].count(b"\n") + 1) from None


class Progress:
    """MB done and MB/s on this module's logger, about once a second, for inputs worth waiting on."""

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


def _complete_prefix(b: bytes) -> int:
    """Length of the longest prefix of b that does not end inside a UTF-8 character."""
    for k in range(1, min(4, len(b)) + 1):
        c = b[-k]
        if c & 0xC0 != 0x80:  # not a continuation byte: the last character starts here
            need = 2 if 0xC0 <= c < 0xE0 else 3 if 0xE0 <= c < 0xF0 else 4 if 0xF0 <= c < 0xF8 else 1
            return len(b) - k if need > k else len(b)
    return len(b)  # only continuation bytes: invalid, and the decoder says where


def read_chunks(path: Path, progress: Progress | None = None) -> Iterator[tuple[bytes, str]]:
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


def line_batches(chunks: Iterator[str]) -> Iterator[list[str]]:
    """The lines of the text, str.splitlines(keepends=True) as if on the whole: a chunk's last line
    waits for the next chunk ("\\r" then "\\n" is one line end)."""
    carry = ""
    for text in chunks:
        lines = (carry + text).splitlines(keepends=True)
        carry = lines.pop() if lines else ""
        if lines:
            yield lines
    if carry:
        yield [carry]
