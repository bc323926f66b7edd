"""Reliability costs: BPE on text without whitespace, and the checks of a token cache hit.

    python -m benchmarks.reliability [--sizes 100,300,2000] [--before-timeout 150] [--cache-gb 1]

- BPE without whitespace: prepare a file of random "acgt" (one word of the whole file) with a 512-token BPE,
  training and encoding, in a fresh process: the byte-level pre-tokenizer alone (before: the library gets
  whole words; stopped after --before-timeout s) against ours (words cut into MAX_WORD_BYTES pieces).
- Cache hit: a synthetic entry of --cache-gb GB of uint16 tokens (written under a temp dir, removed), read by
  nanogpt.token_cache.load_entry with its checks (size, sampled-block CRC-32, ids against the vocabulary) and
  with the checks skipped (before), alternating, three rounds each; the file is in the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, md_table, stamp, write_section

# Runs in a fresh process: train a BPE tokenizer on the file and encode it, as prepare does; prints seconds.
BPE = r"""
import json, sys, time
from nanogpt import tokenizer as T
from nanogpt.textfile import line_batches
path, cut = sys.argv[1], sys.argv[2] == "1"
text = open(path).read()
t0 = time.perf_counter()
if cut:
    tok = T.BPETokenizer.train_from_iterator(line_batches(iter([text])), 512)
else:  # before: the byte-level pre-tokenizer alone, as BPETokenizer trained until issue 18
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE(unk_token=T.UNK))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(line_batches(iter([text])), trainer=trainers.BpeTrainer(
        vocab_size=512, special_tokens=[T.UNK], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = T.BPETokenizer(hf)
t1 = time.perf_counter()
enc = tok.stream_encoder()
n = len(enc.feed(text)) + len(enc.finish())
print(json.dumps({"train_s": t1 - t0, "encode_s": time.perf_counter() - t1, "tokens": n}))
"""


def bpe_row(path: Path, cut: bool, timeout: float) -> dict | None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        out = subprocess.run([sys.executable, "-c", BPE, str(path), "1" if cut else "0"], capture_output=True,
                             text=True, timeout=timeout, env=env, cwd=ROOT, check=True).stdout
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out.strip().splitlines()[-1])


def bpe_without_whitespace(sizes_kb: list[int], before_timeout: float, tmp: Path) -> str:
    import random

    rows = []
    for kb in sizes_kb:
        path = tmp / f"acgt-{kb}k.txt"
        rng = random.Random(kb)
        path.write_text("".join(rng.choice("acgt") for _ in range(kb * 1000)))
        before = bpe_row(path, cut=False, timeout=before_timeout)
        after = bpe_row(path, cut=True, timeout=600)
        shown = (f"{before['train_s']:.1f} + {before['encode_s']:.1f}" if before
                 else f"did not finish in {before_timeout:.0f}")
        total_before = before["train_s"] + before["encode_s"] if before else None
        total_after = after["train_s"] + after["encode_s"]
        rows.append([f"{kb:,} KB", shown, f"{after['train_s']:.1f} + {after['encode_s']:.1f}",
                     f"{total_before / total_after:.1f}x" if total_before else f"> {before_timeout / total_after:.0f}x"])
        print(rows[-1], flush=True)
    return md_table(["no-whitespace file", "before: train + encode, s", "after: train + encode, s", "speed-up"], rows)


def cache_hit(gb: float, tmp: Path) -> str:
    import numpy as np

    from nanogpt import token_cache as C
    from nanogpt.files import write_json
    from nanogpt.tokenizer import CharTokenizer, save_tokenizer

    entry = tmp / "entry"
    entry.mkdir()
    n = int(gb * 1e9) // 2
    block = np.random.default_rng(0).integers(0, 24, 1 << 24, dtype=np.uint16)
    with open(entry / "train.bin", "wb") as f:
        for i in range(0, n, len(block)):
            block[: min(len(block), n - i)].tofile(f)
    (entry / "val.bin").write_bytes(b"")
    save_tokenizer(CharTokenizer([chr(97 + i) for i in range(23)]), entry / "tokenizer.json")
    crc = {"train": C.sampled_crc(entry / "train.bin"), "val": C.sampled_crc(entry / "val.bin")}
    write_json(entry / "meta.json", {"format": C.CACHE_FORMAT, "dtype": "uint16", "n_train": n, "n_val": 0,
                                     "crc": crc})
    real_crc, real_ids = C.sampled_crc, C.ids_problem
    times = {"checked": [], "unchecked": []}
    C.load_entry(entry)  # the file into the page cache
    for _ in range(3):
        for kind in ("unchecked", "checked"):
            if kind == "unchecked":  # before: the size check alone
                C.sampled_crc = lambda path: crc[path.stem]
                C.ids_problem = lambda ids, vocab: None
            t0 = time.perf_counter()
            assert C.load_entry(entry) is not None
            times[kind].append(time.perf_counter() - t0)
            C.sampled_crc, C.ids_problem = real_crc, real_ids
    print(times, flush=True)
    return md_table(["cache hit of " + f"{gb:g} GB of tokens", "best of 3, ms", "all, ms"],
                    [[k, f"{min(v) * 1e3:.1f}", ", ".join(f"{t * 1e3:.1f}" for t in v)] for k, v in
                     (("before: size check only", times["unchecked"]),
                      ("after: size + sampled CRC-32 + ids < vocab", times["checked"]))])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="100,300,2000", help="no-whitespace files, KB")
    p.add_argument("--before-timeout", type=float, default=150.0)
    p.add_argument("--cache-gb", type=float, default=1.0)
    args = p.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        bpe = bpe_without_whitespace([int(s) for s in args.sizes.split(",")], args.before_timeout, Path(d))
        hit = cache_hit(args.cache_gb, Path(d))
    write_section("Reliability costs (benchmarks/reliability.py)", f"""{stamp()} Load average at the start:
{load[0]:.1f} (a 2-core machine shared with other sessions: absolute times are noisy, compare within a row).

BPE (512 tokens) on a file of random `acgt` without whitespace, prepared as `nanogpt.token_cache.prepare` does
(training, then the stream encoder), each in a fresh process. Before: the byte-level pre-tokenizer alone, so
the whole file is one word for the library; after: words cut into pieces of at most 256 bytes.

{bpe}

A token cache hit of {args.cache_gb:g} GB (uint16 ids, in the page cache): `load_entry` with its checks
against the size check alone.

{hit}
""")


if __name__ == "__main__":
    main()
