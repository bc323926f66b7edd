"""Ray's saved experiment state, kept whole for --resume: a copy of each snapshot, made atomically.

Ray writes its snapshot (experiment_state-*.json, the searcher's and the callbacks' state) into a staging directory,
then copies it over the previous one in the results directory, file by file and in place. A search killed during
that copy (SIGKILL, a crash, the machine lost) leaves a file cut short, and Ray cannot resume from it. `StateCopy`
copies each new snapshot from the staging directory, once Ray has written it, into RESULTS_DIR/NAME/.ray-state/N
(a whole directory renamed into place); `restore_state_copy` puts the newest copy back when --resume finds Ray's own
files cut off. Local searches only: a URI search's state lives at the URI. Before a --resume, `check_ray_state`
refuses Ray state that is cut off or corrupt (walked, never unpickled), unless that copy can be put back.
"""

from __future__ import annotations

import json
import logging
import os
import pickletools
import re
import shutil
from pathlib import Path

from ray import tune

from nanogpt.errors import UserError
from nanogpt.files import DISK_ERRNOS, write_failed
from tune.binding import THIS_SEARCH

log = logging.getLogger(__name__)

STATE_COPY = ".ray-state"
STAGED = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "callback-states-*.pkl")
# Ray's saved state, newest of each: what Tuner.restore reads (the trials, the searcher, the callbacks)
RAY_STATE = (*STAGED, "tuner.pkl")


class StateCopy(tune.Callback):
    """After each step of Ray's loop and at the end (its snapshot, when it takes one, is written by then), copies a
    new snapshot."""

    def __init__(self, experiment_dir: str | Path):
        self.experiment_dir = str(experiment_dir)
        self._copied: tuple | None = None

    def __setstate__(self, state: dict) -> None:  # restored by Ray: the results directory where it is now
        self.__dict__.update(state, experiment_dir=str(THIS_SEARCH.run.dir), _copied=None)

    def on_step_end(self, iteration, trials, **info):
        if trials:
            staging = Path(trials[0].storage.experiment_driver_staging_path)
            self._copied = copy_state(staging, Path(self.experiment_dir), self._copied)

    def on_experiment_end(self, trials, **info):  # after Ray's last snapshot, which follows its last step
        self.on_step_end(None, trials)


def copy_state(staging: Path, exp: Path, copied: tuple | None) -> tuple | None:
    """Copy the snapshot in `staging` into exp/.ray-state/N unless it is the one `copied` names; returns what it
    names now. Older copies are removed once the new one is in place."""
    files = sorted(f for pattern in STAGED for f in staging.glob(pattern))
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    if not files or stamp == copied:
        return copied
    root = exp / STATE_COPY
    tmp = root / f".partial-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        numbers = _copies(root)
        tmp.rename(root / str(max(numbers, default=0) + 1))
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise write_failed(e.filename or tmp, e) from None
        raise
    for n in numbers:
        shutil.rmtree(root / str(n), ignore_errors=True)
    return stamp


def _copies(root: Path) -> list[int]:
    return [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []


def restore_state_copy(exp: Path) -> Path | None:
    """Put the newest copy of Ray's snapshot back into `exp` (each file replaced atomically), and set aside (as
    NAME.cut) the state files of a later run that the copy does not hold, so that Ray reads the copy's set whole. The
    copy's directory, or None when there is none."""
    numbers = _copies(exp / STATE_COPY)
    if not numbers:
        return None
    copy = exp / STATE_COPY / str(max(numbers))
    for f in sorted(copy.iterdir()):
        tmp = exp / f".{f.name}.restoring"
        shutil.copyfile(f, tmp)
        os.replace(tmp, exp / f.name)
    newest = max(_stamp(f.name) for f in copy.iterdir())
    for pattern in STAGED:  # each run of a search names its files by its start; Ray reads the newest of each kind
        for f in exp.glob(pattern):
            if _stamp(f.name) > newest:
                f.rename(f.with_name(f.name + ".cut"))
    return copy


_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


def _stamp(name: str) -> str:
    m = _STAMP.search(name)
    return m.group(0) if m else ""


def check_ray_state(exp: Path) -> None:
    """Refuse to resume from Ray state that was cut off mid-write (a full disk, a kill during Ray's copy), unless the
    search's own whole copy of it (restore_state_copy) can be put back. Ray would log the error and start the
    experiment over with the restored searcher: old trials rerun as new ones and Optuna trials left RUNNING."""
    try:
        _check_ray_files(exp)
    except UserError:
        copy = restore_state_copy(exp)
        if copy is None:
            raise
        log.warning("Ray's saved state in %s was cut off (the search was stopped while Ray wrote it): resuming from "
                    "the search's copy of Ray's last whole snapshot (%s)", exp, copy)
        _check_ray_files(exp)


def _check_ray_files(exp: Path) -> None:
    for pattern in RAY_STATE:
        files = sorted(exp.glob(pattern))
        if not files:
            continue
        try:
            data = files[-1].read_bytes()
            if data[:1] == b"\x80":  # a pickle (search_gen_state-*.json too), walked without unpickling
                if not any(op.name == "STOP" for op, _, _ in pickletools.genops(data)):
                    raise ValueError("no STOP opcode")
            else:
                json.loads(data)
        except (OSError, ValueError) as e:
            raise UserError(f"{files[-1]} is cut off or corrupt ({str(e).splitlines()[0][:80]}): Ray cannot resume "
                            f"{exp.name} from it without running trials twice; its finished trials are intact "
                            f"(python -m tune.report {exp}): continue with a new search under another --name") from None
