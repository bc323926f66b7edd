"""Files written whole or not at all, and a write that fails for want of space said in one line.

Every file the project writes for later reading (checkpoints, tokenizers, search.json, outcomes.json, the token
cache's meta.json) goes through `replace_atomically`: written beside its place under a temporary name, then
renamed over it. A reader in another process, or a run after a crash or a full disk, sees the old file or the
new one, never half of one. `cache_dir` is where downloads, tokens, compile records and results mirrors are kept.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from nanogpt.errors import UserError


def cache_dir() -> Path:
    """NANOGPT_TUNE_CACHE, default ~/.cache/nanogpt-tune."""
    return Path(os.environ.get("NANOGPT_TUNE_CACHE", Path.home() / ".cache" / "nanogpt-tune")).expanduser()


# what a write can fail with that the user fixes (space, quota, a read-only or failing disk), not our code
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}
# the same, as a trial's error.txt or an exception's text says it
DISK_ERROR_TEXT = re.compile(r"\[Errno (?:%s)\]|No space left on device|Disk quota exceeded|Read-only file system"
                             % "|".join(str(n) for n in sorted(DISK_ERRNOS)))


class WriteFailed(UserError):
    """A file could not be written for want of space (or a read-only or failing disk)."""


def write_failed(path: str | Path, e: OSError) -> WriteFailed:
    reason = e.strerror or str(e)
    full = " (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return WriteFailed(f"could not write {path}: {reason}{full}")


@contextmanager
def replace_atomically(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it replaces `path` when the block ends without error.
    On an error the old file stays as it was, and a disk error (DISK_ERRNOS) becomes WriteFailed naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in DISK_ERRNOS:
            raise write_failed(path, e) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with replace_atomically(path) as f:
        f.write(data)


def write_json(path: str | Path, obj, indent: int | None = None) -> None:
    """Written whole or not at all: readers in other processes never see half a file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, json.dumps(obj, ensure_ascii=False, indent=indent).encode())
