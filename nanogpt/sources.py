"""What the token cache reads: a text file (streamed, its hash remembered by path, size and times) or a corpus made
in code, each scanned once for its content hash, length, first characters and (for a character tokenizer) the
characters it holds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanogpt.dataset import HEAD_CHARS, Dataset, builtin_dataset, locate, train_chars
from nanogpt.errors import DataError
from nanogpt.files import write_json
from nanogpt.textfile import CHUNK_BYTES, Progress, check_file, empty_error, line_batches, read_chunks
from nanogpt.tokenizer import MAX_CODE_POINT, code_points


@dataclass
class Scan:
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

    def result(self) -> Scan:
        return Scan(self.h.hexdigest(), self.n_chars, self.head, self.seen)


class FileSource:
    """A text file: read in chunks; its first 90% trains (nanoGPT's split)."""

    def __init__(self, path: Path, name: str):
        check_file(path)
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

    def scan(self, root: Path, want_chars: bool) -> Scan:
        before = self._stat()
        sc = _Scanner(want_chars)
        progress = Progress(f"checking {self.name}", self.n_bytes)
        nonblank = False
        for raw, text in read_chunks(self.path, progress):
            nonblank = nonblank or bool(raw.strip())
            sc.add(text, raw)
        progress.end()
        if not nonblank:
            raise empty_error(self.path)
        if self._stat() != before:
            raise self._changed()
        scan = sc.result()
        write_json(self._index_path(root), {"path": str(self.path.resolve()), "stat": before, "sha256": scan.sha256})
        self.stat = before
        return scan

    def n_train_chars(self, scan: Scan) -> int:
        return train_chars(scan.n_chars)

    def chunks(self, what: str) -> Iterator[str]:
        progress = Progress(f"{what} {self.name}", self.n_bytes)
        for _, text in read_chunks(self.path, progress):
            yield text
        progress.end()

    def check_unchanged(self) -> None:
        if self._stat() != self.stat:
            raise self._changed()

    def describe_source(self) -> str:
        return str(self.path.resolve())

    def _changed(self) -> DataError:
        return DataError(f"data file {self.path} changed while it was being read: run again once it is written")


class TextSource:
    """A corpus made in code: its document split decides train and validation."""

    def __init__(self, dataset: Dataset):
        self.ds, self.name = dataset, dataset.name

    def remembered_sha(self, root: Path) -> str | None:
        return None  # made in code in milliseconds: hashed every time

    def scan(self, root: Path, want_chars: bool) -> Scan:
        sc = _Scanner(want_chars)
        sc.h.update(f"built-in corpus {self.name}, train then val\n".encode())
        sc.add(self.ds.train_text)
        sc.h.update(b"\x00")  # where validation starts is part of the content
        sc.add(self.ds.val_text)
        return sc.result()

    def n_train_chars(self, scan: Scan) -> int:
        return len(self.ds.train_text)

    def chunks(self, what: str) -> Iterator[str]:
        for text in (self.ds.train_text, self.ds.val_text):
            for i in range(0, len(text), CHUNK_BYTES):
                yield text[i : i + CHUNK_BYTES]

    def check_unchanged(self) -> None:
        pass

    def describe_source(self) -> str:
        return f"built-in {self.name}"


Source = FileSource | TextSource


def open_source(dataset: str | None, data_file: str | Path | None) -> Source:
    """The data set `nanogpt.dataset.locate` names, to stream."""
    name, path = locate(dataset, data_file)
    return TextSource(builtin_dataset(name)) if path is None else FileSource(path, name)


class ScannedText:
    """A source's text as its scan saw it: what a tokenizer is built from (a `nanogpt.tokenizer.TrainingText`)."""

    def __init__(self, source: Source, scan: Scan):
        self.source, self.scan = source, scan

    def characters(self) -> list[str]:
        return [chr(c) for c in np.flatnonzero(self.scan.seen)]  # code point order = sorted(set(text))

    def line_batches(self, what: str) -> Iterator[list[str]]:
        return line_batches(self.source.chunks(what))
