"""One run per results directory: a lock beside RESULTS_DIR/NAME, held by a search for its whole run.

The lock file `RESULTS_DIR/.NAME.lock` says who holds it: {"pid", "host", "since"}. A second run of the name,
a new search or a --resume, is refused with one line while the first one runs.

- A local directory: the file is also an flock held by the running process. The kernel lets go of it when
  the process ends, however it ends (killed, out of memory), so a stale lock is simply free: the next run
  takes it over and writes itself in.
- A URI (s3://, gs://, file://): object stores have no locks, so the file alone is the lock. It is stale when
  its process is gone; on the same host that is checked (the pid no longer runs); a lock from another host is
  refused with the path to delete once its process is known to be gone. Two runs starting in the same second
  can both pass (an object store offers no atomic create to pyarrow): the lock is read back after writing,
  which narrows that window, and docs/reliability.md says so.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nanogpt.errors import UserError


class SearchInUse(UserError):
    """Another process runs a search of this name."""


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "token": uuid.uuid4().hex}


def _in_use(name: str, holder: dict | None, hint: str = "") -> SearchInUse:
    if not holder:  # the holder is writing the file this very moment
        return SearchInUse(f"{name} is in use by another process{hint}")
    return SearchInUse(f"{name} is in use by process {holder.get('pid')} on {holder.get('host')} "
                       f"since {holder.get('since')}{hint}")


def _parse(text: str) -> dict | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def pid_alive(pid) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False  # a garbled lock file names no process
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(holder: dict | None) -> bool:
    """A lock whose process is gone: checked on this host; from another host it cannot be told."""
    return holder is not None and holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid"))


@contextmanager
def hold_local(path: Path, name: str) -> Iterator[None]:
    """Hold RESULTS_DIR/.NAME.lock (an flock) for the block; SearchInUse if another process holds it."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write the lock file {path} ({e.strerror}): the results directory must be "
                            f"writable; choose another with --results-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise _in_use(name, _parse(_read(path))) from None
            raise UserError(f"cannot lock {path} ({e.strerror}): the file system of --results-dir has no file locks; "
                            f"choose another --results-dir") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # before letting go: a waiting run then opens a new file
        os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


@contextmanager
def hold_uri(fs, path: str, uri: str, name: str) -> Iterator[None]:
    """Hold the lock file at a URI (pyarrow file system `fs`, `path` on it) for the block."""
    import pyarrow.fs

    def read() -> dict | None:
        try:
            with fs.open_input_stream(path) as f:
                return _parse(f.read().decode(errors="replace"))
        except (FileNotFoundError, OSError):
            return None

    holder = read() if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound else None
    if holder is not None and not _stale(holder):
        other_host = holder.get("host") != socket.gethostname()
        raise _in_use(name, holder, f" (if that process is gone, delete {uri})" if other_host else "")
    mine = _holder()
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(mine).encode())
    if (read() or {}).get("token") != mine["token"]:  # another run wrote its own in between
        raise _in_use(name, read())
    try:
        yield
    finally:
        if (read() or {}).get("token") == mine["token"]:
            fs.delete_file(path)
