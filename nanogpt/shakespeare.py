"""Tiny Shakespeare: downloaded once into the cache directory and checked by SHA-256."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from nanogpt.errors import DataError
from nanogpt.files import cache_dir

log = logging.getLogger(__name__)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


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
