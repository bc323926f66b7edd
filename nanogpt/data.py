"""Text corpora, train/val splits and batches.

Built-in corpora are generated in code (no download). `shakespeare` is tiny Shakespeare,
downloaded once into a cache and checked by SHA-256. Any UTF-8 text file works too.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from nanogpt.corpora import BUILTIN_CORPORA
from nanogpt.errors import UserError

log = logging.getLogger(__name__)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
VAL_FRACTION = 0.1
_SPLIT_SEED = 1337  # built-in corpora are split the same way on every machine


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


def read_text_file(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist: check the path given to --data-file")
    if not path.is_file():
        raise DataError(f"data file {path} is not a regular file: give --data-file a text file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {path} is empty: give --data-file a file with text in it")
    if b"\x00" in raw[:65536]:
        raise DataError(f"data file {path} looks binary (it contains NUL bytes): give --data-file a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"data file {path} is not UTF-8: invalid byte 0x{raw[e.start]:02x} at byte {e.start} (line {line}); "
            f"convert it, e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`"
        ) from None


def load_dataset(name: str | None = None, data_file: str | Path | None = None) -> Dataset:
    """A built-in corpus by name, tiny Shakespeare, or any UTF-8 text file."""
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
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or use --data-file PATH")
    train, val = _split_docs(BUILTIN_CORPORA[name]())
    return Dataset(name=name, train_text=train, val_text=val)


# --- tokens and batches -------------------------------------------------------------------


@dataclass
class TokenData:
    """A tokenized train/val split, ready to batch. Plain tensors: cheap to ship to Ray trials."""

    train: torch.Tensor  # (N_train,) int64
    val: torch.Tensor  # (N_val,) int64
    val_chars_per_token: float  # for bits per character
    dataset: str

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


def tokenize(dataset: Dataset, tokenizer) -> TokenData:
    train = torch.tensor(tokenizer.encode(dataset.train_text), dtype=torch.long)
    val = torch.tensor(tokenizer.encode(dataset.val_text), dtype=torch.long)
    chars_per_token = len(dataset.val_text) / max(1, len(val))
    return TokenData(train=train, val=val, val_chars_per_token=chars_per_token, dataset=dataset.name)


def get_batch(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x is (B, T) tokens, y the same windows shifted by one (next-token targets)."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    windows = data.unfold(0, block_size + 1, 1)[ix]  # (B, T+1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def default_prompts(name: str, text: str = "") -> list[str]:
    """Prompts that show what a model learned from this data set (`text`: the corpus, for files)."""
    prompts = {
        "counting": ["Number 7 comes before", "Number 1234 comes before"],
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
