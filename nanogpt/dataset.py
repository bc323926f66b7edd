"""Data sets by name: a built-in corpus, tiny Shakespeare, or any UTF-8 text file, and its train/validation split.

`locate` is the one place a name or a file becomes a data set; `load_dataset` holds a small one as strings, and
`nanogpt.token_cache.prepare` streams one of any size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from nanogpt.corpora import BUILTIN_CORPORA
from nanogpt.errors import DataError
from nanogpt.shakespeare import shakespeare_path
from nanogpt.textfile import read_text_file

VAL_FRACTION = 0.1
_SPLIT_SEED = 1337  # built-in corpora are split the same way on every machine
HEAD_CHARS = 4096  # the corpus's first characters, kept for default prompts
DEFAULT_DATASET = "mixed"
DATASETS = sorted([*BUILTIN_CORPORA, "shakespeare"])


@dataclass
class Dataset:
    name: str
    train_text: str
    val_text: str

    @property
    def text(self) -> str:
        return self.train_text + self.val_text


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


def train_chars(n_chars: int) -> int:
    """nanoGPT's split for a plain text: its first 90% of characters train, the last 10% validate."""
    return int(n_chars * (1 - VAL_FRACTION))


def split_text(text: str) -> tuple[str, str]:
    n = train_chars(len(text))
    return text[:n], text[n:]


def locate(name: str | None = None, data_file: str | Path | None = None) -> tuple[str, Path | None]:
    """(the data set's name, its text file), the file None for a corpus made in code. Downloads tiny Shakespeare
    the first time it is asked for."""
    if data_file is not None:
        if name is not None:
            raise DataError("give either --dataset or --data-file, not both")
        return Path(data_file).name, Path(data_file)
    name = name or DEFAULT_DATASET
    if name == "shakespeare":
        return name, shakespeare_path()
    if name not in BUILTIN_CORPORA:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or use --data-file PATH")
    return name, None


def builtin_dataset(name: str) -> Dataset:
    """A corpus made in code, each group of documents split 90/10 by document."""
    train, val = _split_docs(BUILTIN_CORPORA[name]())
    return Dataset(name=name, train_text=train, val_text=val)


def load_dataset(name: str | None = None, data_file: str | Path | None = None) -> Dataset:
    """A built-in corpus by name, tiny Shakespeare, or any UTF-8 text file, as strings (small corpora;
    `nanogpt.token_cache.prepare` tokenizes any size without holding the text)."""
    name, path = locate(name, data_file)
    if path is None:
        return builtin_dataset(name)
    train, val = split_text(read_text_file(path))
    return Dataset(name=name, train_text=train, val_text=val)


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
