"""The token cache: what it holds, and removing what is no longer used.

    python -m nanogpt.cache [list]
    python -m nanogpt.cache clean --older-than DAYS
    python -m nanogpt.cache clean --all

`nanogpt.token_cache.prepare` keeps each corpus's tokens under NANOGPT_TUNE_CACHE/tokens (default
~/.cache/nanogpt-tune): one entry per content hash and tokenizer, as large as the corpus's tokens (2 bytes a
token below 65,536 ids). An entry's "last used" is when a run last read it. Removing an entry costs only the
tokenizing the next run that needs it does again; a running search keeps the tokens it has already read (its
files stay readable until it closes them, and Ray holds its own copy). Searches' mirrors (`mirrors/`, for
--results-dir URIs) are results, not cache: this command does not touch them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nanogpt.cli import run_main
from nanogpt.errors import UserError
from nanogpt.token_cache import build_dirs, entry_dirs, lock_path, tokenizer_tag, tokens_dir


@dataclass
class Entry:
    path: Path
    source: str
    tokenizer: str
    tokens: int
    size: int  # bytes on disk
    last_used: float  # seconds since the epoch


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def entries(root: Path | None = None) -> list[Entry]:
    """Every complete entry, least recently used first."""
    root = root or tokens_dir()
    found = []
    for path in entry_dirs(root):
        meta_path = path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            last_used = meta_path.stat().st_mtime
        except (OSError, ValueError):
            continue  # not an entry (or one being replaced right now)
        found.append(Entry(path=path, source=meta.get("source", "(unknown: cached before sources were recorded)"),
                           tokenizer=tokenizer_tag(meta.get("tokenizer", {})),
                           tokens=int(meta.get("n_train", 0)) + int(meta.get("n_val", 0)), size=_size(path),
                           last_used=last_used))
    return sorted(found, key=lambda e: e.last_used)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _abandoned_builds(root: Path) -> list[Path]:
    """Temp dirs of builds whose process is gone (killed mid-tokenizing)."""
    return [path for path, pid in build_dirs(root) if not _pid_alive(pid)]


def clean(older_than_days: float | None, root: Path | None = None) -> tuple[list[Entry], int]:
    """Remove the entries not used for `older_than_days` days (None: all), and builds left by killed processes.
    Returns the entries removed and the bytes freed."""
    root = root or tokens_dir()
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else float("inf")
    removed, freed = [], 0
    for e in entries(root):
        if e.last_used < cutoff:
            shutil.rmtree(e.path)
            lock_path(e.path).unlink(missing_ok=True)
            removed.append(e)
            freed += e.size
    for path in _abandoned_builds(root):
        freed += _size(path)
        shutil.rmtree(path, ignore_errors=True)
    return removed, freed


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _age(t: float) -> str:
    days = (time.time() - t) / 86400
    return f"{days:.1f} days ago" if days >= 1 else f"{days * 24:.1f} hours ago"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanogpt.cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("list", help="the entries, least recently used first (the default)")
    c = sub.add_parser("clean", help="remove entries")
    which = c.add_mutually_exclusive_group()
    which.add_argument("--older-than", type=float, metavar="DAYS", help="entries not used for DAYS days")
    which.add_argument("--all", action="store_true", help="every entry")
    args = p.parse_args(argv)
    root = tokens_dir()

    if args.command == "clean":
        if args.older_than is None and not args.all:
            raise UserError("clean needs --older-than DAYS or --all: say which entries to remove")
        if args.older_than is not None and not args.older_than >= 0:
            raise UserError(f"--older-than must be a number of days >= 0, got {args.older_than}")
        removed, freed = clean(None if args.all else args.older_than, root)
        for e in removed:
            print(f"removed {e.path.name}  {e.source}, {e.tokenizer}, last used {_age(e.last_used)}")
        print(f"{len(removed)} entries removed, {_mb(freed)} freed in {root}")
        return 0

    found = entries(root)
    for e in found:
        print(f"{e.path.name}  {_mb(e.size):>12}  {e.tokens:>14,} tokens  {e.tokenizer:<8} last used "
              f"{_age(e.last_used):<16} {e.source}")
    print(f"{len(found)} entries, {_mb(sum(e.size for e in found))} in {root}")
    return 0


if __name__ == "__main__":
    run_main(main)
