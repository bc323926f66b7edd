"""Tokenized splits (`TokenData`) and the random batches training draws from them (`get_batch`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nanogpt.dataset import HEAD_CHARS, VAL_FRACTION, Dataset
from nanogpt.errors import DataError
from nanogpt.textfile import CHUNK_BYTES
from nanogpt.tokenizer import Tokenizer


@dataclass
class TokenData:
    """A tokenized train/val split, ready to batch.

    Read-only numpy arrays (uint16, or uint32 past 65,535 tokens), memory-mapped from the cache
    when `nanogpt.token_cache.prepare` made them: Ray's object store holds one copy per node and trials read it in
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
    """Tokenize a Dataset held in memory (no cache): the same ids as `nanogpt.token_cache.prepare`."""
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
